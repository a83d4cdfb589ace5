"""ONNX frontend: an ``.onnx`` file or an in-memory ``ModelProto``.

The file is read by :mod:`compiler.onnx_load` (external data from the model's own
directory), the graph checked by :mod:`compiler.onnx_checks`, its constants folded and the
ops TVM imports badly rewritten by :mod:`compiler.onnx_rewrite` (initializers listed as
inputs, ``ConstantOfShape`` / shape arithmetic, ``Dropout``, ``Sum``, ``LRN``), then
imported by TVM's ONNX importer; this module names the weights after their source and
rewrites what the importer leaves that dlac cannot place."""

from __future__ import annotations

import os
import re
import warnings

from target_dlac.core.errors import ModelLoadError
from compiler.frontend_common import ImportedModel, finalize, tensor_hash
from compiler.onnx_checks import _check_dataflow, _check_nodes, _empty_initializers, _input_shapes
from compiler.onnx_load import ONNX_MAX_BYTES, inline_external_data, load_onnx  # noqa: F401 - re-exported
from compiler.onnx_rewrite import prepare_graph


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


def _param_display(model) -> dict[str, str | list[str]]:
    """Source name of each weight initializer, keyed as TVM names the parameter (a list of
    names, one per use, for a weight several layers share)."""
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
    # a weight the exporter shared between layers (b.weight = Identity(a.weight)): one name
    # per use, in graph order, so each layer keeps its own name (passes/name_layers.py)
    users: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            w = own = node.input[1]
            while w not in inits and w in producer and producer[w].op_type == "Identity":
                w = producer[w].input[0]
            if w in inits:
                if own.startswith("onnx::") or not own.strip():
                    own = (_scope_name(node) or node.name or w) + ".weight"
                users.setdefault(w, []).append(own)
    for w, names in users.items():
        if len(names) > 1:
            for key in (w, w.split("::")[-1], re.sub(r"[^0-9A-Za-z_]", "_", w)):
                out[key] = names
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
        inline_external_data(model, None)     # refuses external data: no directory to read it from
    else:
        label = os.fspath(model_or_path)
        model = load_onnx(label)
    _check_nodes(model, label)
    _check_dataflow(model, label)
    model = _empty_initializers(model, label)
    shapes = _input_shapes(model, input_shapes, label)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ModelLoadError(f"invalid ONNX model: {first}", where=label) from None
    h = tensor_hash(model.SerializeToString(deterministic=True))
    model = _empty_initializers(prepare_graph(model, label, shapes), label)
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
    return finalize(mod, _param_display(model), {}, "onnx", h)
