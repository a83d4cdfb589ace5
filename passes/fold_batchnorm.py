"""FoldBatchNorm: fold inference batch-norm into the preceding layer, in NumPy.

Rewrites ``batch_norm(L)[0]`` where ``L`` is a layer (conv2d/dense with a
constant weight), optionally followed by a constant bias add, into the layer
with weight ``W * s`` and bias ``(b - mean) * s + beta`` where
``s = gamma / sqrt(var + eps)`` (per output channel, computed in float64).

Legal when the layer's output (and its bias add) has no other user, so the
unscaled value is not needed elsewhere, and BN normalizes the channel axis.
A batch-norm that cannot be folded becomes ``x * s + t`` with constant
per-channel ``s, t`` (still one epilogue for the fold stage to merge).  So does
one after a layer named in ``keep`` (pre-quantized layers: folding would destroy
the model's integer weights; FoldScales moves ``s`` into the epilogue scale).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from target_dlac.core.ir import carries_errors, mutate, emit_like, attrs_to_dict, binding_map, const_np, dtype_of, is_call, is_const, make_const, \
    map_functions, module_pass, shape_of, use_counts
from passes.layers import Layer, channel_shape, layer_op, rebuild, scale_out_channels


def _bn_params(call):
    a = attrs_to_dict(call.attrs)
    g, beta, mean, var = (const_np(e).astype(np.float64) for e in call.args[1:5])
    if not a.get("scale", True):
        g = np.ones_like(g)
    if not a.get("center", True):
        beta = np.zeros_like(beta)
    s = g / np.sqrt(var + float(a["epsilon"]))
    return s, beta - mean * s, int(a["axis"])


def _plan(func, keep=frozenset()):
    """Find foldable batch-norms: ``{getitem var: (layer var, layer call, bias or None, bn call)}``;
    layers named in ``keep`` are not folded into."""
    values, uses = binding_map(func), use_counts(func)
    plan, standalone = {}, {}
    for var, value in values.items():
        if not (isinstance(value, relax.TupleGetItem) and value.index == 0):
            continue
        bn = values.get(value.tuple_value)
        if not is_call(bn, "relax.nn.batch_norm") or not all(is_const(e) for e in bn.args[1:5]):
            continue
        if uses[value.tuple_value] != 1:
            continue
        src, bias = bn.args[0], None
        src_val = values.get(src)
        if is_call(src_val, "relax.add") and uses[src] == 1:
            a, b = src_val.args
            layer_var, bias = (a, b) if is_const(b) else (b, a)
            if is_const(bias) and layer_var in values and layer_op(values[layer_var]):
                src, src_val = layer_var, values[layer_var]
            else:
                bias = None
        rank = len(shape_of(bn.args[0]))
        axis = int(attrs_to_dict(bn.attrs)["axis"]) % rank
        if src_val is not None and layer_op(src_val) and uses[src] == 1 and axis == 1 \
                and src.name not in keep:
            plan[var] = (src, src_val, bias, bn)
        else:
            standalone[var] = bn
    return plan, standalone


def _fold_func(mod, func, keep=frozenset()):
    plan, standalone = _plan(func, keep)
    if not plan and not standalone:
        return func

    @relax.expr_functor.mutator
    @carries_errors
    class _Folder(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var in plan:
                return self._fold(binding)
            if binding.var in standalone:
                return self._affine(binding)
            return super().visit_var_binding_(binding)

        def _emit_as(self, binding, expr):
            new = emit_like(self.builder_, binding.var, expr)
            self.set_var_remap(binding.var, new)

        def _fold(self, binding):
            layer_var, call, bias, bn = plan[binding.var]
            s, t, _ = _bn_params(bn)
            layer = Layer(layer_var, call, layer_op(call))
            w = scale_out_channels(layer.weight, s, layer.out_axis)
            b = t if bias is None else (const_np(bias).astype(np.float64).reshape(-1) * s + t)
            new_call = rebuild(call, self.visit_expr(call.args[0]), make_const(w, dtype_of(call.args[1])))
            acc = emit_like(self.builder_, layer_var, new_call)
            rank = len(shape_of(call))
            self._emit_as(binding, relax.op.add(acc, make_const(b.reshape(channel_shape(rank, b.size)),
                                                                  dtype_of(call))))

        def _affine(self, binding):
            bn = standalone[binding.var]
            s, t, axis = _bn_params(bn)
            x = self.visit_expr(bn.args[0])
            rank = len(shape_of(bn.args[0]))
            shape = channel_shape(rank, s.size, axis)
            dt = dtype_of(bn.args[0])
            self._emit_as(binding, relax.op.add(relax.op.multiply(x, make_const(s.reshape(shape), dt)),
                                                make_const(t.reshape(shape), dt)))

    return mutate(_Folder(mod), func)


def fold_batchnorm(mod, keep=frozenset()):
    """``keep``: layer (variable) names whose weights must not change."""
    return map_functions(mod, lambda f: _fold_func(mod, f, frozenset(keep)))


FoldBatchNorm = module_pass("dlac.FoldBatchNorm")(fold_batchnorm)
