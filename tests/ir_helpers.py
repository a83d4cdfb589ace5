"""Relax IR helpers of the tests."""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import relax

from target_dlac.core.ir import op_name, relax_functions


def op_histogram(mod: tvm.IRModule) -> Counter:
    """Count of Relax op calls over every function of ``mod`` (local functions included)."""
    counts: Counter = Counter()

    @relax.expr_functor.visitor
    class _Counter(relax.PyExprVisitor):
        def visit_call_(self, call):
            name = op_name(call)
            if name:
                counts[name.replace("relax.", "")] += 1
            super().visit_call_(call)

    visitor = _Counter()
    for _, func in relax_functions(mod):
        visitor.visit_expr(func)
    return counts
