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
"""

from __future__ import annotations

from target_dlac.core.errors import ModelLoadError
from compiler.onnx_fold import fold_constants, static_shapes, strip_initializer_inputs


def prepare_graph(model, label: str, input_shapes: dict | None = None):
    """A copy of ``model`` rewritten as the module docstring says."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
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
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    return out


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
