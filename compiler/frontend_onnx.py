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


#: QOperator-format quantized ops (onnxruntime QuantFormat.QOperator): no TVM converter
_QOPERATOR = re.compile(r"^(QLinear\w+|QGemm|ConvInteger|MatMulInteger)$")
_QOPERATOR_HINT = ("a QOperator-format quantized model; quantize it in QDQ format instead "
                   "(onnxruntime quantize_static(..., quant_format=QuantFormat.QDQ))")


def _check_nodes(model, label: str) -> None:
    for i, node in enumerate(model.graph.node):
        hint = f"; {_QOPERATOR_HINT}" if _QOPERATOR.match(node.op_type) else ""
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{node.domain}::{node.op_type}", node.name or f"#{i}",
                                     "custom op domain" + hint)
        if node.op_type not in ONNX_OPS:
            raise UnsupportedOpError(node.op_type, node.name or f"#{i}", f"in {label}{hint}")


_FLOAT_TYPES = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")
_FLOAT_MATH = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")   # every input a float


def _check_dataflow(model, label: str) -> None:
    """Every node input is a graph input, an initializer or an earlier node's output, the
    inputs of float arithmetic (conv, matmul, batch norm) are floats, and the graph inputs
    hold numbers: otherwise a :class:`ModelLoadError` naming the node and the value (a
    missing initializer, a cycle or a node out of order, an int64 weight, a string input).
    Runs before TVM's importer, whose errors for these would be less direct."""
    from onnx import TensorProto

    g = model.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    producer = {o: (j, n) for j, n in enumerate(g.node) for o in n.output}
    dtypes = {t.name: t.data_type for t in g.initializer}
    dtypes.update({i.name: i.type.tensor_type.elem_type for i in g.input
                   if i.type.HasField("tensor_type") and i.name not in dtypes})
    for i, node in enumerate(g.node):
        where = f"node {node.name or f'#{i}'} ({node.op_type})"
        for name in node.input:
            if name in known:
                continue
            if name not in producer:
                raise ModelLoadError(f"{where} reads {name!r}, which is neither a graph input, an "
                                     "initializer nor any node's output (a missing initializer?)",
                                     where=label)
            j, other = producer[name]
            what = "a cycle" if _reaches(g.node, i, j, producer) else "nodes out of topological order"
            raise ModelLoadError(f"{where} reads {name!r}, produced by the later node "
                                 f"{other.name or f'#{j}'} ({other.op_type}): {what}", where=label)
        known.update(node.output)
        if node.op_type in _FLOAT_MATH:
            for name in node.input:
                et = dtypes.get(name)
                if et is not None and TensorProto.DataType.Name(et) not in _FLOAT_TYPES:
                    raise ModelLoadError(f"{where}: input {name!r} is "
                                         f"{TensorProto.DataType.Name(et).lower()}, expected a float type",
                                         where=label)
    for inp in g.input:
        et = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else None
        if et is None or TensorProto.DataType.Name(et) in ("STRING", "UNDEFINED", "COMPLEX64", "COMPLEX128"):
            kind = "not a tensor" if et is None else TensorProto.DataType.Name(et).lower()
            raise ModelLoadError(f"graph input {inp.name!r} has element type {kind}; dLAC takes "
                                 "numeric tensors", where=label)


def _reaches(nodes, start: int, target: int, producer: dict) -> bool:
    """Does node ``start``'s output flow (through later-listed producers) into node
    ``target``'s inputs, i.e. does ``target`` depend on ``start``?"""
    seen, todo = set(), [target]
    while todo:
        j = todo.pop()
        if j == start:
            return True
        if j in seen:
            continue
        seen.add(j)
        todo.extend(producer[n][0] for n in nodes[j].input if n in producer)
    return False


def _input_shapes(model, given: dict, label: str = "<ModelProto>") -> dict[str, tuple[int, ...]]:
    inits = {t.name for t in model.graph.initializer}
    declared = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        if tt.HasField("shape") and any(d.HasField("dim_value") and d.dim_value == 0 for d in tt.shape.dim):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            raise ModelLoadError(f"input {inp.name!r} has a zero-size dimension {dims}: empty tensors "
                                 "are not supported", where=label)
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


#: ONNX ops between a pre-quantized weight initializer and its layer (QDQ / QCDQ)
_WEIGHT_CHAIN_OPS = ("DequantizeLinear", "QuantizeLinear", "Clip")


def _param_display(model) -> dict[str, str]:
    """Source name of each weight initializer, keyed as TVM names the parameter."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = node.input[1]
        # a pre-quantized weight: look through its (Q ->) (Clip ->) DQ chain to the initializer
        quantized = False
        while w not in inits and w in producer and producer[w].op_type in _WEIGHT_CHAIN_OPS:
            quantized = True
            w = producer[w].input[0]
        if w not in inits:
            continue
        display = w.removesuffix("_quantized") if quantized else w
        if w.startswith("onnx::") or not w.strip():
            display = (_scope_name(node) or node.name or w) + ".weight"
        for key in (w, w.split("::")[-1], re.sub(r"[^0-9A-Za-z_]", "_", w)):
            out[key] = display
    return out


_TOPI_MINMAX = re.compile(r"^(maximum|minimum)\d*$")


def _tensor_sig(ty):
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return str(ty.dtype.dtype), tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def _topi_minmax_to_relax(mod):
    """ONNX ``Clip`` (opset >= 11) imports as ``call_tir`` of TOPI ``maximum`` /
    ``minimum`` PrimFuncs, which dlac cannot place; rewrite each into the Relax
    op of the same name and meaning (element-wise, broadcasting).  (Its bounds come
    through ``where(isnan(b), ±inf, b)``, which FoldConstantViews folds when ``b`` is
    an initializer.)"""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(call_tir)):
                return call
            gv, args = call.args[0], call.args[1]
            m = _TOPI_MINMAX.match(getattr(gv, "name_hint", ""))
            if m is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
                return call
            new = self.builder_.normalize(ops[m.group(1)](*args.fields))
            return new if _tensor_sig(new.ty) == _tensor_sig(call.ty) is not None else call

    rw = _Rewrite(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rw.builder_.update_func(gv, rw.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rw.builder_.get())


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
    _check_dataflow(model, label)
    shapes = _input_shapes(model, input_shapes, label)
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
        mod = _topi_minmax_to_relax(mod)
    except Exception as e:
        text = str(e).strip().splitlines()
        raise ModelLoadError(f"TVM's ONNX importer failed: {type(e).__name__}: "
                             f"{text[-1] if text else ''}", where=label) from None
    h = tensor_hash(model.SerializeToString(deterministic=True))
    return finalize(mod, _param_display(model), {}, "onnx", h)
