"""Checks of an ONNX graph before TVM's importer sees it (used by
:func:`compiler.frontend_onnx.from_onnx`): every op known, the dataflow well formed, float
arithmetic on floats, no empty tensors (empty Concat inputs dropped), the input shapes
static or given.  Each refusal names the node or the input."""

from __future__ import annotations

import re

from target_dlac.core.errors import ModelLoadError, UnsupportedOpError
from compiler.frontend_common import match_shapes
from compiler.oplist import ONNX_OPS
from compiler.onnx_rewrite import QONNX_DOMAINS, QONNX_OPS


#: QOperator-format quantized ops (onnxruntime QuantFormat.QOperator): no TVM converter
_QOPERATOR = re.compile(r"^(QLinear\w+|QGemm|ConvInteger|MatMulInteger)$")
_QOPERATOR_HINT = ("a QOperator-format quantized model; quantize it in QDQ format instead "
                   "(onnxruntime quantize_static(..., quant_format=QuantFormat.QDQ))")
#: onnxruntime quantize_dynamic's activation quantizer: a scale computed at every run
_DYNAMIC_HINT = ("dynamic quantization (onnxruntime quantize_dynamic) computes each activation "
                 "scale at run time, and dLAC's fixed-point activations have static exponents: "
                 "quantize statically in QDQ format (onnxruntime quantize_static(..., "
                 "quant_format=QuantFormat.QDQ)), or give dlac the float model to quantize")


def _check_nodes(model, label: str) -> None:
    for i, node in enumerate(model.graph.node):
        hint = f"; {_QOPERATOR_HINT}" if _QOPERATOR.match(node.op_type) else ""
        if node.op_type == "DynamicQuantizeLinear" and node.domain in ("", "ai.onnx"):
            raise UnsupportedOpError(node.op_type, node.name or f"#{i}", f"in {label}; {_DYNAMIC_HINT}")
        if node.domain in QONNX_DOMAINS:       # rewritten into standard ops (rewrite_qonnx)
            if node.op_type in QONNX_OPS:
                continue
            raise UnsupportedOpError(f"{node.domain}::{node.op_type}", node.name or f"#{i}",
                                     f"QONNX op that dlac does not rewrite (it rewrites "
                                     f"{' and '.join(QONNX_OPS)} into standard ONNX ops)")
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
