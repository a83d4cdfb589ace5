"""ONNX frontend: an ``.onnx`` file or an in-memory ``ModelProto``."""

from __future__ import annotations

import os
import re
import stat
import warnings

from target_dlac.core.errors import ModelLoadError, NotOnnxError, UnsupportedOpError
from compiler.frontend_common import ImportedModel, finalize, match_shapes, tensor_hash
from compiler.oplist import ONNX_OPS


def load_onnx(path: str | os.PathLike):
    """Parse an ONNX file, refusing anything that is not one.  Tensors kept in external
    data files are read here, from the model's own directory (:func:`inline_external_data`),
    so nothing later resolves them against the working directory."""
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
    inline_external_data(model, path, budget=ONNX_MAX_BYTES - len(data))
    return model


#: at most this many bytes of model and external data (a protobuf message cannot be larger)
ONNX_MAX_BYTES = (2 << 30) - 1

#: bits per element of the ONNX types narrower than a byte (packed)
_SUBBYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2,
                 "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}


def _graph_tensors(graph, scope: str = ""):
    """(description, TensorProto) of every tensor a graph holds: initializers, sparse
    initializers, tensor attributes of its nodes, and those of its subgraphs."""
    for t in graph.initializer:
        yield f"{scope}initializer {t.name!r}", t
    for st in graph.sparse_initializer:
        yield f"{scope}sparse initializer {st.values.name!r} (values)", st.values
        yield f"{scope}sparse initializer {st.values.name!r} (indices)", st.indices
    yield from _node_tensors(graph.node, scope)


def _node_tensors(nodes, scope: str = ""):
    for i, node in enumerate(nodes):
        where = f"{scope}node {node.name or f'#{i}'} ({node.op_type})"
        for a in node.attribute:
            if a.HasField("t"):
                yield f"{where} attribute {a.name!r}", a.t
            for t in a.tensors:
                yield f"{where} attribute {a.name!r}", t
            if a.HasField("sparse_tensor"):
                yield f"{where} attribute {a.name!r} (values)", a.sparse_tensor.values
                yield f"{where} attribute {a.name!r} (indices)", a.sparse_tensor.indices
            for st in a.sparse_tensors:
                yield f"{where} attribute {a.name!r} (values)", st.values
                yield f"{where} attribute {a.name!r} (indices)", st.indices
            if a.HasField("g"):
                yield from _graph_tensors(a.g, f"{where} subgraph {a.name!r}: ")
            for g in a.graphs:
                yield from _graph_tensors(g, f"{where} subgraph {a.name!r}: ")


def _all_tensors(model):
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(f.node, f"function {f.name!r}: ")


def _tensor_nbytes(t) -> int | None:
    """Bytes of ``t``'s data (from its dims and element type), or None if unknown."""
    from onnx import TensorProto, helper

    numel = 1
    for d in t.dims:
        if d < 0:
            return None
        numel *= d
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in TensorProto.DataType.values() else None
    if name is None or name in ("UNDEFINED", "STRING"):
        return None
    if name in _SUBBYTE_BITS:
        return (numel * _SUBBYTE_BITS[name] + 7) // 8
    try:
        return numel * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def inline_external_data(model, path: str | None, budget: int = ONNX_MAX_BYTES) -> None:
    """Replace every external-data reference of ``model`` by the bytes it names.

    A location is resolved against the directory of the model file ``path`` and must
    stay inside it: no absolute path, no ``..``, no symbolic link leading out of it,
    and a regular file; ``offset`` and ``length`` must lie within the file, and
    ``length`` must be the tensor's size.  At most ``budget`` bytes in all.  A model
    with no file (``path`` None, an in-memory ``ModelProto``) has no directory: an
    external reference is refused.  Each refusal is a :class:`ModelLoadError` naming
    the tensor and the location."""
    from onnx import TensorProto

    label = path or "<ModelProto>"
    base = os.path.realpath(os.path.dirname(os.path.abspath(path))) if path else None
    total = 0
    for what, t in _all_tensors(model):
        if not (t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")

        def bad(msg, loc=loc, what=what):
            return ModelLoadError(f"{what}: external data location {loc[:200]!r} {msg}", where=label)

        if base is None:
            raise bad("cannot be resolved: an in-memory ModelProto has no directory; load the "
                      "model from its file")
        parts = re.split(r"[/\\]", loc)
        if not loc or "\0" in loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) \
                or re.match(r"^[A-Za-z]:", loc):
            raise bad("is not a relative file name")
        if ".." in parts:
            raise bad("leads out of the model's directory ('..')")
        target = os.path.realpath(os.path.join(base, *[p for p in parts if p not in ("", ".")]))
        if os.path.commonpath([base, target]) != base:
            raise bad("leads out of the model's directory (through a symbolic link)")
        try:
            st = os.stat(target)
        except OSError:
            raise bad(f"names no file in the model's directory {base}") from None
        if not stat.S_ISREG(st.st_mode):
            raise bad("is not a regular file")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise bad(f"has a non-integer offset or length ({info.get('offset')!r}, "
                      f"{info.get('length')!r})") from None
        need = _tensor_nbytes(t)
        if need is None:
            raise bad(f"holds a tensor of type {t.data_type} and dims {list(t.dims)}, whose size "
                      "is not known")
        if length is None:
            length = need
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise bad(f"asks for {length} bytes at offset {offset}, beyond the file's {st.st_size} bytes")
        if length != need:
            raise bad(f"holds {length} bytes, the tensor (dims {list(t.dims)}) needs {need}")
        total += length
        if total > budget:
            raise bad(f"brings the external data past dlac's limit of {budget} bytes")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise bad("could not be read in full")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


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


#: (op, input position) where an empty initializer is a legitimate "not given" value
_EMPTY_OK = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_INT_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")


def _empty_initializers(model, label: str):
    """Zero-element initializers: dropped from a ``Concat`` along whose axis they are
    empty (they add nothing to it); refused, naming the node, anywhere else a float one
    is an operand (dLAC has no empty tensors; an integer one is a shape or index list,
    and Resize's ``roi`` / ``scales`` may be empty).  Returns the model (a modified copy
    of it if a Concat input was dropped)."""
    import onnx
    from onnx import TensorProto

    g = model.graph
    empty = {t.name: t for t in g.initializer if any(d == 0 for d in t.dims)}
    if not empty:
        return model
    drops = {}
    for i, node in enumerate(g.node):
        where = f"node {node.name or f'#{i}'} ({node.op_type})"
        keep = list(node.input)
        if node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            keep = [n for n in node.input if not (n in empty and _empty_along(empty[n], axis))]
            if not keep:
                raise ModelLoadError(f"{where}: every input is an empty initializer "
                                     f"({', '.join(repr(n) for n in node.input)}); its output "
                                     "would be an empty tensor, which dLAC does not support",
                                     where=label)
            if len(keep) != len(node.input):
                drops[i] = keep
        for pos, name in enumerate(keep):
            t = empty.get(name)
            if t is None or (node.op_type, pos) in _EMPTY_OK \
                    or TensorProto.DataType.Name(t.data_type) in _INT_TYPES:
                continue
            raise ModelLoadError(f"{where} reads the empty initializer {name!r} (dims "
                                 f"{list(t.dims)}): zero-element tensors are not supported",
                                 where=label)
    if not drops:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, keep in drops.items():
        del out.graph.node[i].input[:]
        out.graph.node[i].input.extend(keep)
    used = _names_read(out.graph) | {o.name for o in out.graph.output}
    unused = [t for t in out.graph.initializer if t.name in empty and t.name not in used]
    for t in unused:
        out.graph.initializer.remove(t)
    gone = {t.name for t in unused}
    stale = [i for i in out.graph.input if i.name in gone]
    for i in stale:
        out.graph.input.remove(i)
    return out


def _empty_along(t, axis) -> bool:
    r = len(t.dims)
    return axis is not None and -r <= axis < r and t.dims[axis] == 0


def _names_read(graph) -> set[str]:
    """Every value name a node of ``graph`` or of any of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= _names_read(sub)
    return names


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
