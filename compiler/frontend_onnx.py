"""ONNX frontend: an ``.onnx`` file or an in-memory ``ModelProto``."""

from __future__ import annotations

import os
import re
import warnings

from .errors import ModelLoadError, NotOnnxError, UnsupportedOpError
from .frontend_common import ImportedModel, finalize, match_shapes, tensor_hash
from .oplist import ONNX_OPS


def load_onnx(path: str | os.PathLike):
    """Parse an ONNX file, refusing anything that is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise NotOnnxError("file is empty", where=path)
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise NotOnnxError(f"not an ONNX model (protobuf parse failed: {e})", where=path) from None
    if not model.graph.node and not model.graph.input:
        raise NotOnnxError("parsed as protobuf but holds no ONNX graph (no nodes, no inputs)", where=path)
    return model


def _check_nodes(model, label: str) -> None:
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{node.domain}::{node.op_type}", node.name or f"#{i}",
                                     "custom op domain")
        if node.op_type not in ONNX_OPS:
            raise UnsupportedOpError(node.op_type, node.name or f"#{i}", f"in {label}")


def _input_shapes(model, given: dict) -> dict[str, tuple[int, ...]]:
    inits = {t.name for t in model.graph.initializer}
    declared = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        declared[inp.name] = None if not tt.HasField("shape") else [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tt.shape.dim]
    return match_shapes(given, declared)


def _scope_name(node) -> str:
    """``/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0``."""
    parts: list[str] = []
    for seg in node.name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        elif seg:
            parts.append(seg)
    return ".".join(parts)


def _param_display(model) -> dict[str, str]:
    """Source name of each weight initializer, keyed as TVM names the parameter."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in inits:
            continue
        display = w
        if w.startswith("onnx::") or not w.strip():
            display = (_scope_name(node) or node.name or w) + ".weight"
        for key in (w, w.split("::")[-1], re.sub(r"[^0-9A-Za-z_]", "_", w)):
            out[key] = display
    return out


def from_onnx(model_or_path, input_shapes: dict | None = None) -> ImportedModel:
    """Import an ONNX model; ``input_shapes`` fixes dynamic input dimensions."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    if isinstance(model_or_path, onnx.ModelProto):
        model, label = model_or_path, "<ModelProto>"
    else:
        label = os.fspath(model_or_path)
        model = load_onnx(label)
    _check_nodes(model, label)
    shapes = _input_shapes(model, input_shapes)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ModelLoadError(f"invalid ONNX model: {first}", where=label) from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = tvm_from_onnx(model, shape_dict=shapes, opset=opset, keep_params_in_input=True)
    except Exception as e:
        text = str(e).strip().splitlines()
        raise ModelLoadError(f"TVM's ONNX importer failed: {type(e).__name__}: "
                             f"{text[-1] if text else ''}", where=label) from None
    h = tensor_hash(model.SerializeToString(deterministic=True))
    return finalize(mod, _param_display(model), {}, "onnx", h)
