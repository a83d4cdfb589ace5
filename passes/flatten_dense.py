"""FlattenDense: a linear layer on an N-D input becomes a 2-D dense layer between reshapes.

Rewrites every binding ``y = matmul(x, W)`` where ``W`` is a constant of rank 2 ``(F, N)``
and ``x`` has a static shape ``(d0, ..., dk, F)`` of rank 3 or more (an ONNX ``MatMul`` on
``[B, T, F]``, a ``torch.nn.Linear`` on a sequence as some exporters write it) into::

    x2 = reshape(x, (M, F))              # M = d0 * ... * dk
    y  = matmul(x2, W)                   # the layer: a 2-D dense, same name, same out_dtype
    y' = reshape(y, (d0, ..., dk, N))

When ``y``'s only use is ``add(y, c)`` (either operand order) of a constant ``c`` that
varies only along the last axis (``(N,)``, ``(1, N)``, ``(1, 1, N)``, a scalar, ...), that
add moves inside, as ``add(y, c')`` with ``c'`` the ``(1, N)`` broadcast of ``c``, and the
reshape comes after it: CanonicalBias then sees the dense layer's bias (on dLAC, in the
epilogue) instead of a host add on the N-D tensor.

The layer keeps its variable name (the layer identifier of NameLayers), so the layer plan
finds it.  Legal: ``matmul`` of a rank >= 3 tensor with a rank-2 matrix multiplies each row
of the last axis by the matrix independently (NumPy ``matmul`` broadcasting), which is
exactly the 2-D product of the rows stacked as ``(M, F)``; reshapes of a contiguous
tensor only rename positions, and a bias that is the same for every row commutes with them.
Dynamic shapes, rank-1/2 inputs and non-constant or non-2-D right operands (activation x
activation products such as attention scores) are left alone.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from target_dlac.core.ir import binding_map, call_users, carries_errors, const_np, dtype_of, emit_like, \
    is_call, is_const, make_const, map_functions, module_pass, mutate, shape_of, use_counts


def _flattenable(value) -> bool:
    if not is_call(value, "relax.matmul") or not is_const(value.args[1]):
        return False
    w, x = shape_of(value.args[1]), shape_of(value.args[0])
    return w is not None and len(w) == 2 and x is not None and len(x) >= 3 and x[-1] == w[0]


def _row_bias(c: np.ndarray, n: int) -> np.ndarray | None:
    """``c`` as a ``(1, n)`` row when it is the same for every row of an ``(..., n)`` tensor."""
    if c.ndim > 0 and (any(d != 1 for d in c.shape[:-1]) or c.shape[-1] not in (1, n)):
        return None
    return np.broadcast_to(c.reshape(-1), (n,)).reshape(1, n)


def _plan(func):
    """``{matmul var: bias-add var or None}``, ``{bias-add var: (matmul var, (1, N) bias)}``."""
    values, uses, users = binding_map(func), use_counts(func), call_users(func)
    layers, adds = {}, {}
    for var, value in values.items():
        if not _flattenable(value):
            continue
        layers[var] = None
        sole = users[var][0] if uses[var] == 1 and var in users else None
        if sole is None or not is_call(values[sole], "relax.add"):
            continue
        a, b = values[sole].args
        other = b if a.same_as(var) else a
        if other.same_as(var) or not is_const(other) or dtype_of(other) != dtype_of(value) \
                or shape_of(values[sole]) != shape_of(value):
            continue
        row = _row_bias(const_np(other), shape_of(value)[-1])
        if row is not None:
            layers[var] = sole
            adds[sole] = (var, row)
    return layers, adds


def _flatten_func(mod, func):
    layers, adds = _plan(func)
    if not layers:
        return func

    @relax.expr_functor.mutator
    @carries_errors
    class _Flatten(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            var = binding.var
            if var in layers:
                call = binding.value
                x = self.visit_expr(call.args[0])
                xs = shape_of(call.args[0])
                flat = self.builder_.emit(relax.op.reshape(x, (math.prod(xs[:-1]), xs[-1])),
                                          name_hint=f"{var.name}_rows")
                dense = self.builder_.emit(relax.Call(call.op, [flat, call.args[1]], call.attrs),
                                           name_hint=var.name)
                if layers[var] is None:
                    self.set_var_remap(var, emit_like(self.builder_, var,
                                                      relax.op.reshape(dense, shape_of(var)),
                                                      f"{var.name}_nd"))
                else:
                    self._dense[var] = dense
                return
            if var in adds:
                layer_var, row = adds[var]
                bias = make_const(row, dtype_of(var))
                added = self.builder_.emit(relax.op.add(self._dense[layer_var], bias),
                                           name_hint=f"{var.name}_rows")
                self.set_var_remap(var, emit_like(self.builder_, var,
                                                  relax.op.reshape(added, shape_of(var))))
                return
            super().visit_var_binding_(binding)

    mutator = _Flatten(mod)
    mutator._dense = {}
    return mutate(mutator, func)


def flatten_dense(mod):
    """The rewrite of the module docstring, on every Relax function of ``mod``."""
    return map_functions(mod, lambda f: _flatten_func(mod, f))


FlattenDense = module_pass("dlac.FlattenDense")(flatten_dense)
