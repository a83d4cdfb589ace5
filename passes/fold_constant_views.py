"""FoldConstantViews: compute shape-only ops (and two selections) on constants in NumPy.

Rewrites ``reshape``, ``permute_dims``, ``expand_dims``, ``squeeze`` and
``astype`` whose input is a constant into the resulting constant.  This turns
``matmul(x, permute_dims(W))`` (how torch ``linear`` and ONNX ``Gemm`` import)
into a dense op with a pre-transposed ``(K, N)`` weight, and ONNX's
``reshape(bias)`` into a plain bias constant.  ``isnan`` and ``where`` whose
inputs are all constants fold too: ONNX ``Clip`` imports its bounds as
``where(isnan(b), -inf, b)``, a constant once ``b`` is an initializer.

Legal: always; these ops only move, re-type or select constant data.  Done in NumPy
because TVM's FoldConstant JIT-compiles each folded expression (~10 s on
ResNet-18).
"""

from __future__ import annotations

import numpy as np

from target_dlac.core.ir import attrs_to_dict, const_np, dtype_of, ints, is_const, iter_bindings, make_const, \
    map_functions, module_pass, op_name, shape_of, substitute_constants


def _fold(call, x: np.ndarray) -> np.ndarray | None:
    """Value of view op ``call`` applied to constant input ``x``, or ``None``."""
    name = op_name(call)
    a = attrs_to_dict(call.attrs)
    if name == "relax.reshape":
        shape = shape_of(call)
        return None if shape is None else x.reshape(shape)
    if name == "relax.permute_dims":
        axes = a.get("axes")
        return np.transpose(x, None if axes is None else ints(axes))
    if name == "relax.expand_dims":
        out = x
        for ax in sorted(ints(a["axis"])):
            out = np.expand_dims(out, ax)
        return out
    if name == "relax.squeeze":
        axis = a.get("axis")
        return np.squeeze(x, None if axis is None else tuple(ints(axis)))
    if name == "relax.astype":
        return x.astype(dtype_of(call))
    return None


#: element-wise ops folded when every input is a constant
_SELECT = {"relax.isnan": np.isnan, "relax.where": np.where}


def _plan(func) -> dict:
    """``{var: constant}`` for bindings that fold (chains included)."""
    folded: dict = {}
    for b in iter_bindings(func):
        value = b.value
        if is_const(value):
            folded[b.var] = value
            continue
        if op_name(value) is None or not value.args:
            continue
        select = _SELECT.get(op_name(value))
        if select is not None:
            args = [folded.get(a, a) for a in value.args]
            if all(is_const(a) for a in args):
                folded[b.var] = make_const(np.asarray(select(*(const_np(a) for a in args))),
                                           dtype_of(value))
            continue
        src = value.args[0]
        src = folded.get(src, src)
        if not is_const(src):
            continue
        out = _fold(value, const_np(src))
        if out is not None:
            folded[b.var] = make_const(out, dtype_of(value))
    return folded


def _fold_func(mod, func):
    folded = _plan(func)
    return substitute_constants(mod, func, folded) if folded else func


def fold_constant_views(mod):
    return map_functions(mod, lambda f: _fold_func(mod, f))


FoldConstantViews = module_pass("dlac.FoldConstantViews")(fold_constant_views)
