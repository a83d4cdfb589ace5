"""PyTorch frontends: a live ``nn.Module`` (through ``torch.export``) or a saved
``torch.export`` program (``.pt2``)."""

from __future__ import annotations

import os
import warnings

from .errors import ExportError, ModelLoadError, UnsupportedOpError
from .frontend_common import ImportedModel, finalize, weights_hash


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _convert(ep, input_shapes, source: str, label: str) -> ImportedModel:
    from tvm.relax.frontend.torch import from_exported_program

    sig = ep.graph_signature
    display = dict(sig.inputs_to_parameters)
    display.update(sig.inputs_to_buffers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:  # TVM's importer reports unsupported aten ops this way
        msg = str(e)
        if "Unsupported function type" in msg:
            ops = msg.split("[", 1)[-1].split("]", 1)[0]
            raise UnsupportedOpError(ops.strip("'\" "), label, "TVM's torch importer has no converter") from None
        raise ModelLoadError(f"TVM could not import the exported program: {_first_line(e)}",
                             where=label) from None
    state = ep.state_dict
    h = weights_hash(state[k].detach().cpu().numpy() for k in sorted(state))
    return finalize(mod, display, input_shapes or {}, source, h)


def from_torch(module, example_inputs, input_shapes: dict | None = None) -> ImportedModel:
    """Import ``module`` traced with ``example_inputs`` (a tensor or a tuple of them)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    label = type(module).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module.eval(), tuple(example_inputs))
    except Exception as e:
        raise ExportError(f"torch.export failed: {_first_line(e)}", where=f"module {label}") from None
    return _convert(ep, input_shapes, "torch", f"module {label}")


def from_pt2(path: str | os.PathLike, input_shapes: dict | None = None) -> ImportedModel:
    """Import a program saved with ``torch.export.save``."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(path)
    except Exception as e:
        raise ModelLoadError(f"not a torch.export program (.pt2): {_first_line(e)}", where=path) from None
    return _convert(ep, input_shapes, "pt2", path)
