"""FoldScales: one per-channel epilogue per layer.

Rewrites, for every layer ``L`` followed by its canonical bias add and any
chain of per-channel constant ``multiply`` / ``add`` ops (e.g. an unfused
batch-norm imported as Mul + Add), the whole chain into a single epilogue:

* quantized layers (weights ``alpha * q`` from QuantizeWeights, ``q`` ternary,
  4-bit or 8-bit): ``acc = conv2d(x, q)`` then ``y = acc * scale + bias`` with
  ``scale = alpha * m`` and ``bias = b * m + c`` (``m``/``c`` the composed
  chain), so the weight scale, the bias and any batch-norm left over become
  one multiply-add per output channel after the integer-weight accumulation;
* full-precision layers: the chain's scale goes into the weights
  (``W * m``) and the epilogue is ``y = acc + bias``.

Legal when each link of the chain has no other user (the intermediate values
are not needed) and each constant is per-channel along axis 1; the split of a
quantized weight into ``(q, alpha)`` must reproduce it bit for bit (checked):
given by QuantizeWeights, or recovered for ternary weights holding one
magnitude per output channel.
Requires CanonicalBias (every layer has its bias add).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from target_dlac.core.errors import QuantizationError

from target_dlac.core.ir import carries_errors, mutate, emit_like, binding_map, call_users, const_np, dtype_of, is_call, is_const, make_const, map_functions, \
    module_pass, shape_of, use_counts
from passes.layers import channel_shape, find_layers, per_channel_vector, rebuild, scale_out_channels
from passes.twn import split_ternary
from passes.weight_quant import dequantize


def _chain(layer, values, uses, users):
    """Bias add and following per-channel affine ops of ``layer``: (vars, scale, bias)."""
    out_shape = shape_of(layer.call)
    channels = out_shape[1]
    scale = np.ones(channels)
    bias = np.zeros(channels)
    chain, end = [], layer.var
    first = True
    while uses[end] == 1 and len(users.get(end, [])) == 1:
        nxt = users[end][0]
        value = values[nxt]
        if not is_call(value, "relax.add", "relax.multiply"):
            break
        a, b = value.args
        const = b if a.same_as(end) else a
        if not is_const(const):
            break
        vec = per_channel_vector(const_np(const), out_shape, channels)
        if vec is None or shape_of(nxt) != out_shape:
            break
        if is_call(value, "relax.add"):
            bias = bias + vec
        else:
            if first:
                break          # the canonical bias add comes first
            scale, bias = scale * vec, bias * vec
        first = False
        chain.append(nxt)
        end = nxt
    if not chain:
        raise QuantizationError("layer has no bias add; run CanonicalBias before FoldScales",
                                where=f"layer {layer.name}")
    return chain, scale, bias


def _split(layer, decomp: dict):
    """``(q, alpha)`` of a quantized layer, checked to reproduce its weights exactly."""
    w = layer.weight
    if layer.name in decomp:
        q, alpha = decomp[layer.name]
        if q.shape == w.shape and np.array_equal(dequantize(q, alpha, layer.out_axis), w):
            return q, alpha
        raise QuantizationError("the weights are not scale * q for the given decomposition",
                                where=f"layer {layer.name}")
    split = split_ternary(w, layer.out_axis)
    if split is None:
        raise QuantizationError("weights are not ternary with one scale per output channel",
                                where=f"layer {layer.name}")
    return split


def _fold_func(mod, func, quantized: set[str], decomp: dict):
    values, uses, users = binding_map(func), use_counts(func), call_users(func)
    plans, skip = {}, set()
    for layer in find_layers(func):
        chain, scale, bias = _chain(layer, values, uses, users)
        plans[layer.var] = (layer, chain[-1], scale, bias)
        skip.update(chain)
    ends = {end: lv for lv, (_, end, _, _) in plans.items()}
    epilogue_scale: dict = {}     # layer name -> per-channel scale (None for fp32 layers)

    @relax.expr_functor.mutator
    @carries_errors
    class _Fold(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            var = binding.var
            if var in plans:
                return self._layer(binding)
            if var in ends:
                return self._epilogue(binding, plans[ends[var]])
            if var in skip:
                return None
            return super().visit_var_binding_(binding)

        def _layer(self, binding):
            layer, _, scale, bias = plans[binding.var]
            w = layer.weight
            if layer.name in quantized:
                q, alpha = _split(layer, decomp)
                new_w, ep_scale = q.astype(np.float32), alpha.astype(np.float64) * scale
            else:
                new_w, ep_scale = scale_out_channels(w, scale, layer.out_axis), None
            call = rebuild(layer.call, self.visit_expr(layer.call.args[0]),
                           make_const(new_w, dtype_of(layer.call.args[1])))
            new = emit_like(self.builder_, binding.var, call, layer.name)
            self.set_var_remap(binding.var, new)
            epilogue_scale[layer.name] = ep_scale

        def _epilogue(self, binding, plan):
            layer, _, _, bias = plan
            acc = self.visit_expr(layer.var)
            rank = len(shape_of(layer.call))
            dt = dtype_of(layer.call)
            ep_scale = epilogue_scale[layer.name]
            y = acc
            if ep_scale is not None:
                y = relax.op.multiply(y, make_const(ep_scale.reshape(channel_shape(rank, ep_scale.size)), dt))
            y = relax.op.add(y, make_const(bias.reshape(channel_shape(rank, bias.size)), dt))
            new = emit_like(self.builder_, binding.var, y)
            self.set_var_remap(binding.var, new)

    return mutate(_Fold(mod), func)


def fold_scales(mod, quantized=frozenset()):
    """``quantized``: the layers QuantizeWeights quantized, either a set of names (ternary
    weights, split by magnitude) or its ``{name: (q, scale)}`` decompositions."""
    decomp = quantized if isinstance(quantized, dict) else {}
    return map_functions(mod, lambda f: _fold_func(mod, f, set(quantized), decomp))


def FoldScales(quantized=frozenset()):  # noqa: N802 - TVM pass naming
    """FoldScales as a TVM module pass."""
    return module_pass("dlac.FoldScales")(lambda mod: fold_scales(mod, quantized))
