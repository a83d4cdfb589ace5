"""The *layer* view of a graph: weighted ops (conv2d, dense) and their epilogue.

A layer is a binding ``name = conv2d(x, W)`` or ``name = matmul(x, W)`` with a
constant weight (``W`` is OIHW for conv2d, pre-transposed ``(K, N)`` for
dense).  Its variable name is the layer name given at import (NameLayers);
every dlac pass keeps that name on the weighted op it rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from target_dlac.core.ir import carries_errors, mutate, attrs_to_dict, const_np, emit_like, is_call, is_const, iter_bindings, map_functions, shape_of


@dataclass
class Layer:
    var: relax.Var
    call: relax.Call
    op: str                    # "conv2d" or "dense"

    @property
    def name(self) -> str:
        return self.var.name

    @property
    def weight(self) -> np.ndarray:
        return const_np(self.call.args[1])

    @property
    def out_axis(self) -> int:
        """Axis of the weight that indexes output channels."""
        return 0 if self.op == "conv2d" else 1

    @property
    def out_channels(self) -> int:
        return int(shape_of(self.call.args[1])[self.out_axis])

    @property
    def attrs(self) -> dict:
        return attrs_to_dict(self.call.attrs)

    def dense_macs(self) -> int:
        """Multiply-accumulates of the layer with every weight counted (zeros too)."""
        out = shape_of(self.call)
        w = shape_of(self.call.args[1])
        if self.op == "conv2d":
            n, _, ho, wo = out
            return n * ho * wo * int(np.prod(w))       # per output pixel: Cout * Cin/g * kh * kw
        return int(np.prod(out[:-1])) * w[0] * w[1]      # rows * K * N


def layer_op(call) -> str | None:
    """``'conv2d'`` / ``'dense'`` when ``call`` is a weighted op with a constant weight."""
    if not isinstance(call, relax.Call) or len(call.args) < 2 or not is_const(call.args[1]):
        return None
    if is_call(call, "relax.nn.conv2d"):
        a = attrs_to_dict(call.attrs)
        if a.get("data_layout") == "NCHW" and a.get("kernel_layout") == "OIHW":
            return "conv2d"
        return None
    if is_call(call, "relax.matmul"):
        w = shape_of(call.args[1])
        x = shape_of(call.args[0])
        if w is not None and len(w) == 2 and x is not None and len(x) == 2:
            return "dense"
    return None


def find_layers(func: relax.Function) -> list[Layer]:
    """Layers of ``func`` in binding (topological) order."""
    out = []
    for b in iter_bindings(func):
        op = layer_op(b.value)
        if op:
            out.append(Layer(b.var, b.value, op))
    return out


def channel_shape(rank: int, channels: int, axis: int = 1) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector for an output of ``rank`` dims."""
    shape = [1] * rank
    shape[axis if axis >= 0 else rank + axis] = channels
    return tuple(shape)


def scale_out_channels(w: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``w`` (float64) with output channel ``i`` (along ``axis``) multiplied by ``scale[i]``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    return w.astype(np.float64) * np.asarray(scale, dtype=np.float64).reshape(shape)


def per_channel_vector(c: np.ndarray, out_shape: tuple, channels: int) -> np.ndarray | None:
    """The per-channel vector of constant ``c`` broadcast against ``out_shape`` (channel axis 1),
    or ``None`` when ``c`` varies along another axis."""
    rank = len(out_shape)
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def rebuild(call: relax.Call, x, weight, out_dtype: str | None = None) -> relax.Call:
    """The layer op ``call`` with new input/weight (and optionally a new ``out_dtype``)."""
    a = attrs_to_dict(call.attrs)
    out_dtype = out_dtype or str(a.get("out_dtype") or "") or None
    if is_call(call, "relax.nn.conv2d"):
        return relax.op.nn.conv2d(x, weight, strides=a["strides"], padding=a["padding"],
                                  dilation=a["dilation"], groups=a["groups"],
                                  data_layout=a["data_layout"], kernel_layout=a["kernel_layout"],
                                  out_layout=a.get("out_layout") or None, out_dtype=out_dtype)
    return relax.op.matmul(x, weight, out_dtype=out_dtype)


def replace_weights(mod, names, new_weight):
    """Rewrite every layer whose name is in ``names`` to use another constant weight.

    ``new_weight(layer) -> (weight_expr, out_dtype or None)``.  The layer keeps its
    input, attributes and variable name; the module is not changed in place.
    """
    def per_func(func):
        layers = {l.var: l for l in find_layers(func) if l.name in names}
        if not layers:
            return func

        @relax.expr_functor.mutator
        @carries_errors
        class _Replace(relax.PyExprMutator):
            def visit_var_binding_(self, binding):
                layer = layers.get(binding.var)
                if layer is None:
                    return super().visit_var_binding_(binding)
                weight, out_dtype = new_weight(layer)
                call = rebuild(layer.call, self.visit_expr(layer.call.args[0]), weight, out_dtype)
                self.set_var_remap(binding.var, emit_like(self.builder_, binding.var, call, layer.name))

        return mutate(_Replace(mod), func)

    return map_functions(mod, per_func)
