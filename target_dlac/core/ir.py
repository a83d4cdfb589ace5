"""Small helpers over the TVM 0.27 Relax API, in one place.

TVM 0.27 renamed much of what older docs show (StructInfo -> ``.ty``,
``relax.Constant`` -> ``tvm.ir.GenericConst``, ``name_hint`` -> ``name``); the
passes use these helpers instead of touching the renamed API directly.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from typing import Iterator

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from target_dlac.core.errors import DlacError

GenericConst = tvm.ir.GenericConst
IntImm = tvm.ir.prim.expr.IntImm


def op_name(expr) -> str | None:
    """``'relax.nn.conv2d'`` for a call to a Relax op, else ``None``."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def is_call(expr, *names: str) -> bool:
    return op_name(expr) in names


def is_const(expr) -> bool:
    return isinstance(expr, GenericConst)


def const_np(expr) -> np.ndarray:
    """NumPy value of a constant."""
    return expr.value.numpy()


def make_const(value, dtype: str) -> relax.Expr:
    """A Relax constant with an explicit dtype (``relax.const`` narrows int64/float64)."""
    return relax.const(np.array(value, dtype=dtype, order="C"), dtype)     # keeps rank 0


def shape_of(expr) -> tuple[int, ...] | None:
    """Static shape of a tensor-typed expression, ``None`` when not static."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(s) for s in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def dtype_of(expr) -> str:
    return str(expr.ty.dtype.dtype)


def attrs_to_dict(attrs) -> dict:
    """Op attributes as a plain dict (0.27 attrs have no ``.keys()``)."""
    if attrs is None:
        return {}
    out = {}
    for f in type(attrs).__tvm_ffi_type_info__.fields:
        v = getattr(attrs, f.name)
        if isinstance(v, (tvm_ffi.Array, list, tuple)):
            v = [int(e) if isinstance(e, IntImm) else e for e in v]
        elif isinstance(v, IntImm):
            v = int(v)
        out[f.name] = v
    return out


def ints(values) -> list[int]:
    return [int(v) for v in values]


def iter_bindings(func: relax.Function) -> Iterator[relax.VarBinding]:
    """Every binding of a function body, in order (which is topological)."""
    body = func.body
    if isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            yield from block.bindings


def relax_functions(mod: tvm.IRModule):
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            yield gv, func


def rename_var(var: relax.Var, name: str) -> relax.Var:
    """A fresh variable of the same kind and type as ``var`` with a new name."""
    cls = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
    return cls(name, var.ty)


def cleanup(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop alias and dead bindings (CanonicalizeBindings + DeadCodeElimination)."""
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.transform.DeadCodeElimination()(mod)


def binding_map(func: relax.Function) -> dict:
    """``{var: bound value}`` for every binding of ``func``."""
    return {b.var: b.value for b in iter_bindings(func)}


def use_counts(func: relax.Function) -> Counter:
    """How many times each variable is referenced in ``func`` (output included)."""
    counts: Counter = Counter()

    @relax.expr_functor.visitor
    class _Uses(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] += 1

        def visit_dataflow_var_(self, var):
            counts[var] += 1

    _Uses().visit_expr(func)
    return counts


def call_users(func: relax.Function) -> dict:
    """``{var: [binding vars whose call takes var as an argument]}``, in binding order."""
    users: dict = {}
    for b in iter_bindings(func):
        if isinstance(b.value, relax.Call):
            for arg in b.value.args:
                users.setdefault(arg, []).append(b.var)
    return users


def module_pass(name: str):
    """Make a TVM module pass named ``name`` from a pure ``fn(mod) -> mod``.

    The result composes with ``tvm.transform.Sequential``; ``fn`` must not
    change its input module (mutator-based passes build a new one).
    """
    def wrap(fn):
        def _transform(mod, ctx):
            return fn(mod)
        return tvm.ir.transform.module_pass(_transform, opt_level=0, name=name)
    return wrap


def map_functions(mod: tvm.IRModule, fn) -> tvm.IRModule:
    """A copy of ``mod`` with ``fn(func)`` applied to each non-composite Relax function."""
    out = mod.clone()
    for gv, func in list(relax_functions(mod)):
        if func.attrs is not None and "Composite" in func.attrs:
            continue
        out[gv] = fn(func)
    return out


def emit_like(builder, var: relax.Var, expr, name: str | None = None) -> relax.Var:
    """Emit ``expr`` as a binding of the same kind as ``var``.

    Inside a dataflow block a plain ``Var`` is a block output (the function's
    result); re-emitting it as a ``DataflowVar`` would leave the function
    returning a variable that no longer exists outside the block.
    """
    name = name or var.name
    if isinstance(var, relax.DataflowVar) or not builder.current_block_is_dataflow():
        return builder.emit(expr, name_hint=name)
    return builder.emit_output(expr, name_hint=name)


def substitute_constants(mod: tvm.IRModule, func: relax.Function, consts: dict) -> relax.Function:
    """``func`` with every use of a variable in ``consts`` replaced by its constant and
    the variable's binding dropped (a folded computation)."""

    @relax.expr_functor.mutator
    @carries_errors
    class _Substitute(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in consts:
                super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return consts.get(var, var)

        def visit_dataflow_var_(self, var):
            return consts.get(var, var)

    return mutate(_Substitute(mod), func)


# ---- mutators that keep dlac's errors -------------------------------------------------
# A Python exception raised inside a PyExprMutator callback crosses TVM's FFI and comes
# back as a plain RuntimeError; the pass's DlacError (naming the layer) would be lost.
_carried = threading.local()


def carries_errors(cls):
    """Class decorator, applied under ``@relax.expr_functor.mutator``: a :class:`DlacError`
    raised in one of the class's ``visit_*`` callbacks is kept aside, and :func:`mutate`
    raises it again (with its type and message) once the visit unwinds."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("visit_") and callable(fn):
            setattr(cls, name, _carrying(fn))
    return cls


def _carrying(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlacError as e:
            if getattr(_carried, "error", None) is None:
                _carried.error = e
            raise
    return wrapper


def mutate(mutator, expr):
    """``mutator.visit_expr(expr)``, re-raising a :class:`DlacError` of its callbacks
    (see :func:`carries_errors`) as itself."""
    _carried.error = None
    try:
        return mutator.visit_expr(expr)
    except Exception:
        err, _carried.error = getattr(_carried, "error", None), None
        if err is not None:
            raise err from None
        raise
    finally:
        _carried.error = None
