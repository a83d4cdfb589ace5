"""Turn whatever the user hands over into an :class:`ImportedModel`.

Accepted: a ``torch.nn.Module`` (with example inputs), an ``onnx.ModelProto``,
a path to ``.onnx`` or ``.pt2``, or ``file.py:factory`` where ``factory()``
returns ``(module, example_inputs)``.

What runs code, and what does not:

- ``file.py:factory`` is code, by design: dlac imports ``file.py`` and calls
  ``factory()``, exactly as ``python file.py`` would run it, with your permissions.
  Compile a factory file only if you would run it.
- ``.pt2`` is data: dlac loads it without running any code from it (no unpickling
  beyond plain tensors, no eval of its expressions, no shared libraries; see
  :func:`compiler.pt2_archive.load_pt2`), and refuses, naming the archive member,
  what it cannot load that way.
- ``.onnx`` is data: a protobuf, with external data read only from files inside the
  model's own directory (:func:`compiler.onnx_load.inline_external_data`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from target_dlac.core.errors import ConfigError, ModelLoadError
from compiler.frontend_common import ImportedModel


def load_factory(spec: str):
    """Run ``factory`` from ``file.py:factory``; returns ``(module, example_inputs)``.  The
    file's folder is on ``sys.path`` while the file is imported and ``factory()`` runs."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ConfigError(f"expected FILE.py:FACTORY, got {spec!r}")
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    mod_name = f"_dlac_factory_{abs(hash(os.path.abspath(path)))}"
    with _folder_on_path(os.path.dirname(os.path.abspath(path))):
        return _run_factory(path, name, mod_name)


@contextlib.contextmanager
def _folder_on_path(folder: str):
    """``folder`` first on ``sys.path`` while the factory file is imported and its factory
    runs (so it can import a module next to it, also lazily), removed after; a folder that
    was already on ``sys.path`` stays where it was."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:      # the factory removed it itself
                pass


def _run_factory(path: str, name: str, mod_name: str):
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    # The factory's code is the user's: anything it raises, SystemExit included (a
    # sys.exit(0) would otherwise end dlac with success and nothing written), is an
    # error naming it.  Only Ctrl-C stays an interrupt.  (os._exit cannot be caught.)
    try:
        module_spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise ModelLoadError(f"importing the factory file failed: {_raised(e, 'the file')}", where=path) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelLoadError(f"no callable named '{name}'", where=path)
    try:
        result = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001
        raise ModelLoadError(f"'{name}()' raised {_raised(e)}", where=path) from None
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelLoadError(f"'{name}()' must return (module, example_inputs)", where=path)
    import torch

    if not isinstance(result[0], torch.nn.Module):
        raise ModelLoadError(f"'{name}()' returned a {type(result[0]).__name__} where a "
                             "torch.nn.Module was expected", where=path)
    return result


def _raised(e: BaseException, what: str = "a factory") -> str:
    """``Type: first line of the message`` (one line, for the CLI)."""
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r}) ({what} must not exit)"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _keep_example(imported: ImportedModel, example) -> None:
    """The factory's example inputs as NumPy arrays by input name, in
    ``imported.extra["example_inputs"]`` (the compile report's damage runs on them), when
    they are one tensor per input of the imported graph's shapes."""
    import torch

    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if len(example) != len(imported.input_names) or not all(isinstance(t, torch.Tensor) for t in example):
        return
    arrays = {n: t.detach().cpu().numpy() for n, t in zip(imported.input_names, example)}
    if all(tuple(a.shape) == tuple(imported.input_shapes[n]) for n, a in arrays.items()):
        imported.extra["example_inputs"] = arrays


def load_model(model, example_inputs=None, input_shapes: dict | None = None) -> ImportedModel:
    if isinstance(model, ImportedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if path.endswith(".onnx"):
            from compiler.frontend_onnx import from_onnx
            return from_onnx(path, input_shapes)
        if path.endswith(".pt2"):
            from compiler.frontend_torch import from_pt2
            return from_pt2(path, input_shapes)
        if ".py:" in path:
            module, example = load_factory(path)
            from compiler.frontend_torch import from_torch
            imported = from_torch(module, example, input_shapes)
            _keep_example(imported, example)
            return imported
        raise ConfigError(f"don't know how to load {path!r}: expected .onnx, .pt2 or FILE.py:FACTORY")
    type_name = f"{type(model).__module__}.{type(model).__name__}"
    if type_name.startswith("onnx") and type(model).__name__ == "ModelProto":
        from compiler.frontend_onnx import from_onnx
        return from_onnx(model, input_shapes)
    from compiler.frontend_torch import from_torch
    if example_inputs is None:
        raise ConfigError("a torch module needs example_inputs")
    return from_torch(model, example_inputs, input_shapes)
