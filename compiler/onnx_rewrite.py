"""ONNX graph rewrites before TVM's importer (used by :func:`compiler.frontend_onnx.from_onnx`):
:func:`prepare_graph` works on a copy of the model and

1. drops initializers from the graph inputs and folds the constant subgraphs
   (:mod:`compiler.onnx_fold`);
2. replaces inference-mode ``Dropout`` by ``Identity`` (a training-mode one, or one whose
   mask is read, is refused naming the node);
3. rewrites the variadic ``Sum`` as a chain of ``Add`` (TVM imports ``Sum`` as
   ``stack`` + ``sum``, which would put residual additions on the host);
4. decomposes ``LRN`` into ops dLAC places, on a static input shape ``(N, C, ...)``::

       sq  = Mul(x, x)
       win = AveragePool(Reshape(sq, (N, 1, C, S)), kernel (size, 1),
                         pads (floor((size-1)/2), 0, ceil((size-1)/2), 0), count_include_pad)
       y   = Div(x, Pow(Add(Mul(Reshape(win, shape(x)), alpha), bias), beta))

   with ``S`` the product of the spatial dimensions: the average over the channel
   window times ``alpha`` is ONNX's ``alpha / size * sum``, with the window the ONNX
   spec's (TVM's own converter pads ``size // 2`` on both sides and uses
   ``avg_pool3d``, which dLAC does not place).
5. unrolls ``LSTM`` and ``GRU`` over their static sequence (:mod:`compiler.onnx_rnn`):
   one ``MatMul`` per direction for the input gates of all steps, one per step for the
   recurrent gates (dLAC dense layers), the gate non-linearities and state updates as
   element-wise ops; TVM's importer has no converter for either.

6. writes ``Tile`` with constant repeats as ``Concat`` of copies along each repeated axis
   (TVM imports it as a TIR function, which no host graph holds);
7. turns small ``int64`` initializers (shapes, axes, repeats, pads, indices) into ``Constant``
   nodes (:func:`int64_constants`): TVM's importer takes ``keep_params_in_input`` initializers
   as run-time parameters, so an ``Expand`` / ``Tile`` whose shape is an initializer would
   import as a dynamic shape (``tensor_to_shape`` + ``match_cast``), which nothing places;
   as a ``Constant`` it imports static.  Weights (float, or int8 for QDQ) stay initializers.

Before all of these, :func:`brevitas_weight_names` names a Brevitas export's quantized weights
after their modules, and :func:`rewrite_qonnx` replaces QONNX ``Quant`` / ``BipolarQuant``
nodes (Brevitas ``export_qonnx``) by standard ONNX ops (QCDQ where exact).
"""

from __future__ import annotations

from target_dlac.core.errors import ModelLoadError
from compiler.onnx_fold import fold_constants, static_shapes, strip_initializer_inputs
from compiler.onnx_rnn import unroll_rnn


def prepare_graph(model, label: str, input_shapes: dict | None = None):
    """A copy of ``model`` rewritten as the module docstring says."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    brevitas_weight_names(out)          # 0. (Brevitas' names, QONNX quantizers: see above)
    rewrite_qonnx(out, label)
    strip_initializer_inputs(out)
    shapes = static_shapes(out, input_shapes or {})
    fold_constants(out, label, shapes)
    g = out.graph
    names = _Names(g)
    new_nodes, inits = [], []
    for i, node in enumerate(g.node):
        where = f"node {node.name or f'#{i}'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
        elif node.op_type == "Dropout":
            new_nodes.append(_dropout(node, g, where, label))
        elif node.op_type == "Sum":
            new_nodes.extend(_sum(node, names))
        elif node.op_type == "LRN":
            nodes, consts = _lrn(node, shapes, names, where, label)
            new_nodes.extend(nodes)
            inits.extend(consts)
        elif node.op_type == "Tile" and _initializer(g, node.input[1]) is not None:
            new_nodes.extend(_tile(node, g, names))
        elif node.op_type in ("LSTM", "GRU"):
            nodes, consts = unroll_rnn(node, g, shapes, names, _attr, where, label)
            new_nodes.extend(nodes)
            inits.extend(consts)
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    int64_constants(out)
    return out


#: int64 initializers up to this many elements become Constant nodes (:func:`int64_constants`)
INT64_CONSTANT_MAX = 4096


def int64_constants(model) -> None:
    """Replace each ``int64`` initializer of at most :data:`INT64_CONSTANT_MAX` elements by a
    ``Constant`` node of the same name and value (in place), placed first in the graph."""
    import math

    from onnx import TensorProto, helper

    g = model.graph
    keep, consts = [], []
    for t in g.initializer:
        if t.data_type == TensorProto.INT64 and math.prod(t.dims) <= INT64_CONSTANT_MAX:
            consts.append(helper.make_node("Constant", [], [t.name], name=f"{t.name}_const", value=t))
        else:
            keep.append(t)
    if not consts:
        return
    nodes = consts + list(g.node)
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)


class _Names:
    """Fresh value and node names that collide with nothing in the graph."""

    def __init__(self, graph):
        self.used = {n for node in graph.node for n in list(node.input) + list(node.output)}
        self.used |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.used |= {node.name for node in graph.node}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _initializer(graph, name: str):
    for t in graph.initializer:
        if t.name == name:
            return t
    return None


def _tile(node, graph, names) -> list:
    """``Tile`` with constant repeats as one ``Concat`` of copies per repeated axis (TVM
    imports a constant ``Tile`` as a TIR function, which no host graph may hold)."""
    from onnx import helper, numpy_helper

    reps = [int(r) for r in numpy_helper.to_array(_initializer(graph, node.input[1])).reshape(-1)]
    cur, out = node.input[0], []
    todo = [(axis, r) for axis, r in enumerate(reps) if r != 1]
    if not todo or any(r < 1 for _, r in todo):        # identity, or empty: TVM's own converter
        return [node]
    for k, (axis, r) in enumerate(todo):
        dst = node.output[0] if k == len(todo) - 1 else names(f"{node.output[0]}_tile{axis}")
        out.append(helper.make_node("Concat", [cur] * r, [dst], name=names(f"{node.name or 'tile'}_{axis}"),
                                    axis=axis))
        cur = dst
    return out


def _dropout(node, graph, where: str, label: str):
    """``Identity(x)`` for an inference-mode Dropout (its ratio does not matter)."""
    from onnx import helper, numpy_helper

    if len(node.output) > 1 and node.output[1]:
        mask = node.output[1]
        read = any(mask in n.input for n in graph.node) or any(o.name == mask for o in graph.output)
        if read:
            raise ModelLoadError(f"{where}: its mask output {mask!r} is read; dlac compiles for "
                                 "inference, where Dropout has no mask", where=label)
    if len(node.input) > 2 and node.input[2]:
        t = _initializer(graph, node.input[2])
        if t is None:
            raise ModelLoadError(f"{where}: training_mode {node.input[2]!r} is not a constant; "
                                 "dlac compiles for inference (training_mode false)", where=label)
        if bool(numpy_helper.to_array(t).reshape(-1)[0]):
            raise ModelLoadError(f"{where}: training_mode is true; dlac compiles for inference "
                                 "(training_mode false)", where=label)
    return helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)


def _sum(node, names) -> list:
    """``Sum(a, b, c)`` -> ``Add(Add(a, b), c)``; ``Sum(a)`` -> ``Identity(a)``."""
    from onnx import helper

    ins = list(node.input)
    base = node.name or node.output[0]
    if len(ins) == 1:
        return [helper.make_node("Identity", ins, [node.output[0]], name=node.name)]
    out, acc = [], ins[0]
    for k, b in enumerate(ins[1:], start=1):
        last = k == len(ins) - 1
        res = node.output[0] if last else names(f"{node.output[0]}__sum{k}")
        out.append(helper.make_node("Add", [acc, b], [res],
                                    name=node.name if last else names(f"{base}/add{k}")))
        acc = res
    return out


def _lrn(node, shapes: dict, names, where: str, label: str):
    """The decomposition of the module docstring: (nodes, new initializers)."""
    import math

    import numpy as np
    from onnx import helper, numpy_helper

    x, y = node.input[0], node.output[0]
    shape = shapes.get(x)
    if shape is None or len(shape) < 3:
        got = "not static" if shape is None else f"{list(shape)}"
        raise ModelLoadError(f"{where}: its input {x!r} has shape {got}; dlac decomposes LRN "
                             "on a static (N, C, ...) input of rank 3 or more", where=label)
    size = int(_attr(node, "size", 0))
    if size < 1:
        raise ModelLoadError(f"{where}: size {size} is not positive", where=label)
    alpha = float(_attr(node, "alpha", 1e-4))
    beta = float(_attr(node, "beta", 0.75))
    bias = float(_attr(node, "bias", 1.0))
    n, c, s = shape[0], shape[1], math.prod(shape[2:])
    base = node.name or y

    def v(tag):
        return names(f"{y}__lrn_{tag}")

    def const(tag, arr):
        t = numpy_helper.from_array(np.asarray(arr), v(tag))
        consts.append(t)
        return t.name

    consts: list = []
    sq, r, pooled, back, scaled, shifted, den = (v(t) for t in
                                                 ("sq", "r", "win", "back", "scaled", "shifted", "den"))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    nodes = [
        helper.make_node("Mul", [x, x], [sq], name=names(f"{base}/sq")),
        helper.make_node("Reshape", [sq, const("shape4", np.array([n, 1, c, s], np.int64))], [r],
                         name=names(f"{base}/to_window")),
        helper.make_node("AveragePool", [r], [pooled], name=names(f"{base}/window"),
                         kernel_shape=[size, 1], pads=[lo, 0, hi, 0], strides=[1, 1],
                         count_include_pad=1),
        helper.make_node("Reshape", [pooled, const("shape", np.array(shape, np.int64))], [back],
                         name=names(f"{base}/from_window")),
        helper.make_node("Mul", [back, const("alpha", np.float32(alpha))], [scaled],
                         name=names(f"{base}/alpha")),
        helper.make_node("Add", [scaled, const("bias", np.float32(bias))], [shifted],
                         name=names(f"{base}/bias")),
        helper.make_node("Pow", [shifted, const("beta", np.float32(beta))], [den],
                         name=names(f"{base}/beta")),
        helper.make_node("Div", [x, den], [y], name=node.name or names(f"{base}/div")),
    ]
    return nodes, consts


# ------------------------------------------------------------------ QONNX (Brevitas export_qonnx)

#: the domains QONNX's quantizers come in (QONNX's; FINN's and Brevitas' older names)
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
#: the QONNX ops :func:`rewrite_qonnx` replaces by standard ONNX ops
QONNX_OPS = ("Quant", "BipolarQuant")
_ROUNDING = {"ROUND": "Round", "CEIL": "Ceil", "FLOOR": "Floor"}


def rewrite_qonnx(model, label: str) -> None:
    """Replace (in place) every QONNX ``Quant`` / ``BipolarQuant`` node by standard ONNX ops.

    Semantics, from QONNX's ``docs/qonnx-custom-ops/quant_op.md`` and its reference
    implementation ``src/qonnx/custom_op/general/quant.py`` (``quant``, ``min_int``,
    ``max_int``, ``resolve_rounding_mode``) and ``bipolar_quant.py``
    (github.com/fastmachinelearning/qonnx)::

        Quant(x, scale, zero_point, bitwidth; signed=1, narrow=0, rounding_mode="ROUND"):
            lo = signed ? -2^(b-1) + narrow : 0
            hi = signed ? 2^(b-1) - 1       : 2^b - 1 - narrow
            y  = (round(clamp(x / scale + zero_point, lo, hi)) - zero_point) * scale
            (b = 1 and signed: the integer is +1 where x / scale + zero_point >= 0, else -1)
        rounding_mode: ROUND = half to even (np.round), CEIL, FLOOR
        BipolarQuant(x, scale):  y = (x >= 0 ? 1 : -1) * scale

    ``scale``, ``zero_point`` and ``bitwidth`` must be constants (initializers or
    ``Constant`` nodes; a scale broadcasts against ``x``, e.g. ``(C, 1, 1, 1)`` per output
    channel).  When ``zero_point`` is 0, ``b <= 8``, the rounding is ``ROUND`` and the scale
    is per tensor or along one axis, the node becomes ``QuantizeLinear`` (int8 if signed,
    else uint8; scale flattened to 1-D with ``axis``) -> ``Clip(lo, hi)`` (when narrower than
    the type) -> ``DequantizeLinear``, exactly the QCDQ form Brevitas' ``export_onnx_qcdq``
    writes, which dlac folds into the model's own integer weights
    (:mod:`passes.fold_prequantized`).  That is exact: ``QuantizeLinear`` is
    ``saturate(round_half_even(x / scale) + 0)`` and clamping commutes with rounding to the
    integer bounds.  Otherwise it becomes the formula above in float ops (``Div``, ``Add``,
    ``Clip``, ``Round`` / ``Ceil`` / ``Floor``, ``Sub``, ``Mul``; ``GreaterOrEqual`` +
    ``Where`` for bipolar), which the ONNX constant folding evaluates on weights.  A non-constant
    parameter, a non-integer or non-positive bit width, or another rounding mode is a
    :class:`ModelLoadError` naming the node.  Legal: the ops compute the QONNX semantics."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    if not any(n.domain in QONNX_DOMAINS for n in g.node):
        return
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.attribute
                   and n.attribute[0].name == "value"})
    ranks = {t.name: len(t.dims) for t in g.initializer}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in list(g.input) + list(g.value_info)
                  if v.type.tensor_type.HasField("shape")})
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    names = _Names(g)
    new_nodes = []
    for i, node in enumerate(g.node):
        if node.domain not in QONNX_DOMAINS or node.op_type not in QONNX_OPS:
            new_nodes.append(node)
            continue
        where = f"node {node.name or f'#{i}'} ({node.op_type})"
        base, y = node.name or node.output[0], node.output[0]

        def v(tag):
            return names(f"{y}__{tag}")

        def const(tag, arr):
            t = numpy_helper.from_array(np.asarray(arr), v(tag))
            g.initializer.append(t)
            return t.name

        def op(kind, ins, out=None, **attrs):
            out = out or v(kind.lower())
            new_nodes.append(helper.make_node(kind, ins, [out], name=names(f"{base}/{kind}"), **attrs))
            return out

        need = 2 if node.op_type == "BipolarQuant" else 4
        if len(node.input) != need or not all(node.input):
            raise ModelLoadError(f"{where}: has {len(node.input)} inputs, QONNX {node.op_type} takes "
                                 f"{need}", where=label)
        params = []
        for pos, what in enumerate(("scale", "zero point", "bit width")[:len(node.input) - 1]):
            name = node.input[pos + 1]
            if name not in consts:
                raise ModelLoadError(f"{where}: its {what} {name!r} is not a constant; dlac rewrites "
                                     "QONNX quantizers with constant parameters", where=label)
            params.append(consts[name].astype(np.float32))
        x = node.input[0]
        if node.op_type == "BipolarQuant":
            ge = op("GreaterOrEqual", [x, const("zero", np.float32(0))])
            sign = op("Where", [ge, const("one", np.float32(1)), const("minus_one", np.float32(-1))])
            op("Mul", [sign, const("scale", params[0])], y)
            continue
        scale, zp, bits = params
        bv = bits.reshape(-1)
        if bits.size != 1 or not np.isfinite(bv[0]) or bv[0] != np.floor(bv[0]) or not 1 <= bv[0] <= 32:
            raise ModelLoadError(f"{where}: bit width {bv.tolist()[:4]} is not one integer in [1, 32]",
                                 where=label)
        b = int(bv[0])
        signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
        mode = _attr(node, "rounding_mode", b"ROUND")
        mode = (mode.decode() if isinstance(mode, bytes) else str(mode)).upper()
        if mode not in _ROUNDING:
            raise ModelLoadError(f"{where}: rounding_mode {mode!r} is not one of "
                                 f"{', '.join(_ROUNDING)}", where=label)
        lo = -(2 ** (b - 1)) + narrow if signed else 0
        hi = 2 ** (b - 1) - 1 if signed else 2 ** b - 1 - narrow
        along = [d for d, n in enumerate(scale.shape) if n != 1]
        rank = ranks.get(x)
        axis = None if scale.size == 1 else (along[0] + rank - scale.ndim if len(along) == 1
                                             and rank is not None and rank >= scale.ndim else False)
        if (np.all(zp == 0) and b <= 8 and mode == "ROUND" and not (signed and b == 1)
                and axis is not False and (axis is None or opset >= 13)
                and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            npty = np.int8 if signed else np.uint8
            s = const("scale", scale.reshape(-1) if axis is not None else scale.reshape(()))
            z = const("zero_point", np.zeros(scale.size if axis is not None else (), npty))
            ax = {} if axis is None else {"axis": axis}
            q = op("QuantizeLinear", [x, s, z], **ax)
            info = np.iinfo(npty)
            if (lo, hi) != (info.min, info.max):
                q = op("Clip", [q, const("lo", npty(lo)), const("hi", npty(hi))])
            op("DequantizeLinear", [q, s, z], y, **ax)
            continue
        s, z = const("scale", scale), const("zero_point", zp)
        t = op("Add", [op("Div", [x, s]), z])
        if signed and b == 1:
            t = op("Where", [op("GreaterOrEqual", [t, const("zero", np.float32(0))]),
                             const("one", np.float32(1)), const("minus_one", np.float32(-1))])
        else:
            t = op(_ROUNDING[mode], [op("Clip", [t, const("lo", np.float32(lo)), const("hi", np.float32(hi))])])
        op("Mul", [op("Sub", [t, z]), s], y)
    del g.node[:]
    g.node.extend(new_nodes)
    if not any(n.domain in QONNX_DOMAINS for n in g.node):
        keep = [o for o in model.opset_import if o.domain not in QONNX_DOMAINS]
        del model.opset_import[:]
        model.opset_import.extend(keep)


def brevitas_weight_names(model) -> None:
    """Brevitas' dynamo exports name a quantized layer's float weight after the aten op
    that made it (``slice_1``), while its quantizer's scale keeps the module path
    (``c1.weight_quant.export_handler.lifted_tensor_4``).  Rename (in place) each weight
    initializer that only a ``QuantizeLinear`` or QONNX ``Quant`` reads, with a scale named
    so, to ``<module>.weight`` when that name is free: the layers are then named after their
    modules (``c1``).  Names only, so legal always."""
    import re

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for name in set(n.input):
            readers[name] = readers.get(name, 0) + 1
    used = set(readers) | set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    renames = {}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "Quant") or len(n.input) < 2:
            continue
        w = n.input[0]
        m = re.match(r"^([A-Za-z_][\w.]*)\.weight_quant\.", n.input[1])
        if m is None or w not in inits or readers.get(w) != 1 or ".weight" in w or w in renames:
            continue
        new = f"{m.group(1)}.weight"
        if new not in used:
            renames[w] = new
            used.add(new)
    if not renames:
        return
    for t in g.initializer:
        t.name = renames.get(t.name, t.name)
    for i in g.input:
        i.name = renames.get(i.name, i.name)
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in renames:
                n.input[k] = renames[name]
