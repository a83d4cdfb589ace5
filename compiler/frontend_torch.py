"""PyTorch frontends: a live ``nn.Module`` (through ``torch.export``) or a saved
``torch.export`` program (``.pt2``).

A ``.pt2`` file is data, and dlac loads it without running any code from it.
``torch.export.load`` does not give that guarantee (torch 2.13): it unpickles
weights and constants with ``weights_only=False``, unpickles opaque constants with
``pickle.loads``, falls back to ``weights_only=False`` when the example inputs fail a
``weights_only=True`` load (and for the legacy archive formats), loads AOTInductor
shared libraries found in the archive, and evaluates strings from ``models/*.json``:
symbolic shape expressions (``sympy.sympify``, which is ``eval``), value names pasted
into the Python source of the FX graph module, guard code compiled into a function,
and pytree contexts whose ``__enum__`` entries import any module.  :func:`load_pt2`
(:mod:`compiler.pt2_archive`) reads the archive itself instead and refuses, naming the file and
the archive member, whatever it cannot load as plain data.
"""

from __future__ import annotations

import os
import warnings

from target_dlac.core.errors import ExportError, ModelLoadError, UnsupportedOpError
from compiler.frontend_common import ImportedModel, finalize, first_line, weights_hash
from compiler.pt2_archive import load_pt2




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
        raise ModelLoadError(f"TVM could not import the exported program: {first_line(e)}",
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
        raise ExportError(f"torch.export failed: {first_line(e)}", where=f"module {label}") from None
    return _convert(ep, input_shapes, "torch", f"module {label}")


def from_pt2(path: str | os.PathLike, input_shapes: dict | None = None) -> ImportedModel:
    """Import a program saved with ``torch.export.save``, without running code from it
    (:func:`load_pt2`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    ep = load_pt2(path)
    return _convert(ep, input_shapes, "pt2", path)
