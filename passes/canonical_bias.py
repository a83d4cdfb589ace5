"""CanonicalBias: give every layer exactly one bias add, in one form.

Rewrites each layer ``L`` (conv2d / dense with a constant weight) so that it is
followed by ``add(L, b)`` where ``b`` is a constant of shape ``(1, C, 1, 1)``
(conv2d) or ``(1, N)`` (dense), the layer output first.  An existing add of a
per-channel or scalar constant (either operand order, any broadcast-equivalent
shape such as ONNX's ``(C, 1, 1)``) becomes that form; a layer without one
gets a zero bias.

Legal: the add is value-preserving (a broadcast constant is reshaped to an
equivalent shape; a zero bias adds 0.0).  A constant add that is not
per-channel (it varies along another axis) is left alone and a zero bias is
inserted before it.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from target_dlac.core.ir import carries_errors, mutate, emit_like, binding_map, call_users, const_np, dtype_of, is_call, is_const, make_const, map_functions, \
    module_pass, shape_of, use_counts
from passes.layers import channel_shape, layer_op, per_channel_vector


def _plan(func):
    """``(existing, missing)``: bias-add binding var -> (layer var, bias vector); layers lacking one."""
    values, uses, users = binding_map(func), use_counts(func), call_users(func)
    existing, missing = {}, {}
    for var, value in values.items():
        if not layer_op(value):
            continue
        out_shape = shape_of(value)
        channels = out_shape[1]          # NCHW conv2d and 2-D dense both keep channels on axis 1
        vector = None
        sole_user = users[var][0] if uses[var] == 1 and var in users else None
        if sole_user is not None and is_call(values[sole_user], "relax.add"):
            add_var = sole_user
            a, b = values[add_var].args
            other = b if a.same_as(var) else a
            if is_const(other) and dtype_of(other) == dtype_of(value):
                vector = per_channel_vector(const_np(other), out_shape, channels)
            if vector is not None:
                existing[add_var] = (var, vector)
        if vector is None:
            missing[var] = channels
    return existing, missing


def _canon_func(mod, func):
    existing, missing = _plan(func)

    @relax.expr_functor.mutator
    @carries_errors
    class _Canon(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var in existing:
                layer_var, vec = existing[binding.var]
                x = self.visit_expr(layer_var)
                bias = make_const(vec.reshape(channel_shape(len(shape_of(layer_var)), vec.size)),
                                  dtype_of(layer_var))
                new = emit_like(self.builder_, binding.var, relax.op.add(x, bias))
                self.set_var_remap(binding.var, new)
                return
            super().visit_var_binding_(binding)
            if binding.var in missing:
                rank = len(shape_of(binding.var))
                zero = make_const(np.zeros(channel_shape(rank, missing[binding.var]), np.float64),
                                  dtype_of(binding.var))
                acc = self.visit_expr(binding.var)
                biased = emit_like(self.builder_, binding.var, relax.op.add(acc, zero),
                                   binding.var.name + "_bias")
                self.set_var_remap(binding.var, biased)

    return mutate(_Canon(mod), func)


def canonical_bias(mod):
    return map_functions(mod, lambda f: _canon_func(mod, f))


CanonicalBias = module_pass("dlac.CanonicalBias")(canonical_bias)
