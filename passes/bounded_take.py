"""BoundedTake: a ``take`` in ``fast`` mode whose indices are computed becomes ``clip`` mode.

``relax.take(data, indices, axis, mode="fast")`` does no bounds check: an index outside
``[0, dim)`` reads outside ``data``.  torch.export imports ``torch.roll`` and advanced
indexing (Swin's shifted windows) as ``take`` in ``fast`` mode with indices computed by
``arange`` / ``add`` / ``floor_mod``, which neither the loader of a binary's HOST / REF
graph nor the compiler can check before the run (constant indices are checked when the
graph is loaded).  This pass rewrites each such ``take`` to ``mode="clip"``, so a graph
dlac compiles, the TVM CPU reference and the host ops never read outside an operand.

Legal: for indices in ``[0, dim)`` (all indices of a valid model: ``fast`` is undefined
for any other) ``clip`` gives the same values; an index out of range reads the nearest
edge element instead of arbitrary memory.  ``take`` with constant indices, or in
``clip`` / ``wrap`` mode, is left alone.
"""

from __future__ import annotations

import tvm
from tvm import relax

from target_dlac.core.ir import carries_errors, is_call, is_const, map_functions, module_pass, mutate


def _bound(func):
    @relax.expr_functor.mutator
    @carries_errors
    class _Bound(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if is_call(call, "relax.take") and call.attrs is not None and str(call.attrs.mode) == "fast" \
                    and not is_const(call.args[1]):
                attrs = tvm.ir.make_node("relax.attrs.TakeAttrs", axis=call.attrs.axis, mode="clip")
                return relax.Call(call.op, call.args, attrs, call.ty_args)
            return call

    return mutate(_Bound(), func)


def bounded_take(mod):
    return map_functions(mod, _bound)


BoundedTake = module_pass("dlac.BoundedTake")(bounded_take)
