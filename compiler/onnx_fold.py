"""Constants of an ONNX graph, settled before TVM's importer sees it (used by
:func:`compiler.onnx_rewrite.prepare_graph`).

* :func:`strip_initializer_inputs`: initializers that are also listed as graph inputs (the
  IR < 4 convention, and Brevitas / Caffe2 exports) are constants, not inputs; the model's
  real inputs are the rest.
* :func:`static_shapes`: ONNX shape inference (with data propagation) on the stripped
  graph, with the input shapes dlac compiles for.
* :func:`fold_constants`: every node of a closed list of cheap ops (:data:`FOLDABLE`: shape
  arithmetic, ``ConstantOfShape``, ``Expand``, element-wise math, views) whose inputs are
  all constants is evaluated by ONNX's own reference engine
  (``onnx.reference.ReferenceEvaluator``) and replaced by an initializer; so is ``Shape`` /
  ``Size`` of a value whose shape is static.  The work is bounded: each op of the list costs
  about one pass over its inputs and output, and every output's size is computed from its
  constant inputs *before* it is evaluated: one over :data:`FOLD_MAX_TENSOR_BYTES`, or all
  of them together over :data:`FOLD_MAX_BYTES`, is a :class:`ModelLoadError` naming the
  node.  Quantize / dequantize nodes (a pre-quantized model's weights) are never folded,
  nor a ``Clip`` feeding a ``DequantizeLinear`` (QCDQ), nor a node producing a graph
  output.
"""

from __future__ import annotations

import math

from target_dlac.core.errors import ModelLoadError

#: one folded tensor may hold at most this many bytes (the dLAC DRAM image is 1 GiB)
FOLD_MAX_TENSOR_BYTES = 1 << 30
#: all folded tensors together at most this many bytes (a protobuf message's limit)
FOLD_MAX_BYTES = (2 << 30) - 1

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp",
    "Log", "Floor", "Ceil", "Round", "Sign", "Relu", "Clip", "Min", "Max", "Sum", "Mean",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "Where", "Sigmoid", "Tanh", "Erf", "BitShift", "IsNaN", "IsInf",
})
#: ops whose output is no larger than their inputs together (views, slices, reductions)
_SHRINKING = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice",
    "Concat", "Split", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
    "ArgMax", "ArgMin", "GatherElements", "Shape", "Size", "Constant",
})
#: the ops that are folded when their inputs are all constants
FOLDABLE = _ELEMENTWISE | _SHRINKING | {
    "Cast", "CastLike", "NonZero", "ConstantOfShape", "Expand", "Tile", "Range", "Gather", "Pad"}

_NUMERIC = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "INT16", "INT32", "INT64",
            "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def strip_initializer_inputs(model) -> None:
    """Drop from ``model.graph.input`` (in place) every entry that names an initializer;
    raise the IR version to 4, the first that allows initializers outside the inputs."""
    inits = {t.name for t in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)


def static_shapes(model, input_shapes: dict) -> dict[str, tuple[int, ...]]:
    """``{value name: static shape}`` from ONNX shape inference on a copy of ``model``
    whose graph inputs carry ``input_shapes``; values whose shape is not fully known are
    left out (an empty dict if inference fails)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for inp in probe.graph.input:
        shape = input_shapes.get(inp.name)
        if shape is not None and inp.type.HasField("tensor_type"):
            dims = inp.type.tensor_type.shape
            del dims.dim[:]
            for d in shape:
                dims.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a best effort; no shapes, no shape folding
        return {}
    out = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for name, shape in input_shapes.items():
        out[name] = tuple(int(d) for d in shape)
    return out


def _itemsize(arrays, default: int = 8) -> int:
    sizes = [a.dtype.itemsize for a in arrays if a is not None]
    return max(sizes) if sizes else default


def _broadcast(shapes) -> tuple[int, ...]:
    import numpy as np

    return tuple(np.broadcast_shapes(*[tuple(int(d) for d in s) for s in shapes]))


def _as_shape(a) -> tuple[int, ...]:
    vals = [int(v) for v in a.reshape(-1)]
    if any(v < 0 for v in vals):
        raise ValueError(f"negative dimension in {vals}")
    return tuple(vals)


def output_bytes(node, ins: list) -> int:
    """An upper bound of the bytes ``node``'s outputs take, from its constant inputs
    ``ins`` (NumPy arrays, None for absent optional inputs), computed without
    evaluating it.  Raises ValueError when the inputs make no sense for the op."""
    from onnx import helper, numpy_helper

    op, real = node.op_type, [a for a in ins if a is not None]
    total_in = sum(a.size for a in real)
    if op == "ConstantOfShape":
        value = _attr(node, "value")
        size = numpy_helper.to_array(value).dtype.itemsize if value is not None else 4
        return math.prod(_as_shape(ins[0])) * size
    if op == "Expand":
        return math.prod(_broadcast([ins[0].shape, _as_shape(ins[1])])) * ins[0].dtype.itemsize
    if op == "Tile":
        reps = _as_shape(ins[1])
        return math.prod(d * r for d, r in zip(ins[0].shape, reps)) * ins[0].dtype.itemsize
    if op == "Range":
        start, limit, delta = (float(a.reshape(-1)[0]) for a in ins[:3])
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            raise ValueError("Range with a zero or non-finite delta")
        return max(0, math.ceil((limit - start) / delta)) * ins[0].dtype.itemsize
    if op == "Gather":
        data, idx = ins[0], ins[1]
        axis = int(_attr(node, "axis", 0))
        dim = data.shape[axis] if -data.ndim <= axis < data.ndim else 0
        per = data.size // dim if dim else 0
        return idx.size * per * data.dtype.itemsize
    if op == "Pad":
        pads = _attr(node, "pads")
        pads = list(pads) if pads is not None else [int(v) for v in ins[1].reshape(-1)]
        r = ins[0].ndim
        if len(pads) < 2 * r:
            return total_in * _itemsize(real)
        return math.prod(max(0, d + pads[i] + pads[i + r]) for i, d in enumerate(ins[0].shape)) \
            * ins[0].dtype.itemsize
    if op in _ELEMENTWISE:
        return math.prod(_broadcast([a.shape for a in real])) * _itemsize(real) if real else 0
    if op in ("Cast", "CastLike"):
        to = _attr(node, "to")
        size = helper.tensor_dtype_to_np_dtype(to).itemsize if to is not None else _itemsize(real)
        return total_in * max(size, 1)
    if op == "NonZero":
        return total_in * max(1, real[0].ndim) * 8 if real else 0
    if op == "Constant":
        return 0                      # its value is already in memory, parsed with the model
    return total_in * _itemsize(real)       # _SHRINKING


def _evaluate(node, ins: list, opsets: list) -> list:
    """Run one node on NumPy inputs with ONNX's reference engine."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    feeds, vinfo = {}, []
    for k, (name, a) in enumerate(zip(node.input, ins)):
        if a is None or not name:
            continue
        key = f"in{k}"
        feeds[key] = a
        vinfo.append(helper.make_tensor_value_info(
            key, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    n = onnx.NodeProto()
    n.CopyFrom(node)
    del n.input[:]
    n.input.extend(f"in{k}" if (a is not None and name) else ""
                   for k, (name, a) in enumerate(zip(node.input, ins)))
    del n.output[:]
    n.output.extend(f"out{k}" if o else "" for k, o in enumerate(node.output))
    outs = [helper.make_value_info(f"out{k}", onnx.TypeProto()) for k, o in enumerate(node.output) if o]
    g = helper.make_graph([n], "fold", vinfo, outs)
    m = helper.make_model(g, opset_imports=list(opsets))
    m.ir_version = 10
    res = ReferenceEvaluator(m).run(None, feeds)
    return list(res)


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            out.setdefault(name, []).append(n)
    return out


def fold_constants(model, label: str, shapes: dict | None = None,
                   max_tensor: int = FOLD_MAX_TENSOR_BYTES, budget: int = FOLD_MAX_BYTES) -> int:
    """Fold the constant nodes of ``model`` (in place; see the module docstring) and drop
    the initializers nothing reads any more.  ``shapes``: static value shapes (from
    :func:`static_shapes`) for ``Shape`` / ``Size``.  Returns the number of nodes folded."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    g = model.graph
    shapes = shapes or {}
    inits = {t.name: t for t in g.initializer}
    arrays: dict[str, object] = {}
    outputs = {o.name for o in g.output}
    consumers = _consumers(g)
    opsets = [o for o in model.opset_import]

    def value(name):
        if name not in arrays:
            t = inits[name]
            if TensorProto.DataType.Name(t.data_type) not in _NUMERIC:
                raise KeyError(name)
            arrays[name] = numpy_helper.to_array(t)
        return arrays[name]

    keep, spent, folded = [], 0, 0
    for i, node in enumerate(g.node):
        where = f"node {node.name or f'#{i}'} ({node.op_type})"
        names = [n for n in node.input if n]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type in FOLDABLE
                    and not any(o in outputs for o in node.output)
                    and not any(a.HasField("g") or a.graphs for a in node.attribute)
                    and not (node.op_type == "Clip" and any(
                        c.op_type == "DequantizeLinear" for o in node.output
                        for c in consumers.get(o, ()))))
        ins = None
        if foldable and node.op_type in ("Shape", "Size") and names and names[0] in shapes \
                and names[0] not in inits:
            shape = shapes[names[0]]
            if node.op_type == "Size":
                result = [np.array(math.prod(shape), dtype=np.int64)]
            else:
                r = len(shape)
                start, end = int(_attr(node, "start", 0)), _attr(node, "end")
                end = r if end is None else int(end)
                s, e = (max(0, min(r, v + r if v < 0 else v)) for v in (start, end))
                result = [np.array(shape[s:e], dtype=np.int64)]
        elif foldable and all(n in inits for n in names):
            try:
                ins = [value(n) if n else None for n in node.input]
            except KeyError:
                keep.append(node)
                continue
            try:
                need = output_bytes(node, ins)
            except (ValueError, IndexError, TypeError, KeyError, AttributeError) as e:
                raise ModelLoadError(f"{where}: cannot fold its constant inputs: {e}", where=label) from None
            if need > max_tensor:
                raise ModelLoadError(f"{where}: its constant output would take {need:,} bytes, over "
                                     f"dlac's limit of {max_tensor:,} bytes for one folded tensor",
                                     where=label)
            if spent + need > budget:
                raise ModelLoadError(f"{where}: folding it would bring the model's folded constants "
                                     f"to {spent + need:,} bytes, over dlac's limit of {budget:,}",
                                     where=label)
            try:
                result = _evaluate(node, ins, opsets)
            except Exception as e:  # noqa: BLE001 - the reference engine's errors, one line
                text = str(e).strip().splitlines()
                raise ModelLoadError(f"{where}: cannot fold its constant inputs: {type(e).__name__}: "
                                     f"{text[-1] if text else ''}"[:400], where=label) from None
        else:
            keep.append(node)
            continue
        produced = [(o, np.asarray(r)) for o, r in zip(node.output, result) if o]
        if any(a.dtype.kind not in "biuf" for _, a in produced):
            keep.append(node)             # strings, objects: not dLAC data; left to the importer
            continue
        spent += sum(a.nbytes for _, a in produced)
        if spent > budget or any(a.nbytes > max_tensor for _, a in produced):
            raise ModelLoadError(f"{where}: its folded output is over dlac's size limits", where=label)
        for o, a in produced:
            arrays[o] = a
            inits[o] = _add_initializer(g, o, a)
        folded += 1
    if not folded:
        return 0
    del g.node[:]
    g.node.extend(keep)
    read = {n for node in g.node for n in node.input} | outputs | _subgraph_reads(g)
    for k in reversed([k for k, t in enumerate(g.initializer) if t.name not in read]):
        del g.initializer[k]
    for k in reversed([k for k, v in enumerate(g.value_info) if v.name in inits]):
        del g.value_info[k]
    return folded


def _add_initializer(graph, name: str, a):
    """Append ``a`` to ``graph.initializer`` as ``name`` (its bytes copied once)."""
    from onnx import helper

    t = graph.initializer.add()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(a.dtype)
    t.dims.extend(int(d) for d in a.shape)
    t.raw_data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    return t


def _subgraph_reads(graph) -> set[str]:
    names = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names.update(n for sn in sub.node for n in sn.input)
                names |= _subgraph_reads(sub)
    return names
