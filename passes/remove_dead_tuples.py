"""RemoveDeadTuples: drop tuple outputs nobody reads, and alias bindings.

Rewrites ``t = (a, zeros_like(a)); y = t[0]`` (how torch.export's max-pool
imports) and ``bn = batch_norm(...); y = bn[0]`` leftovers into direct uses,
then removes bindings whose value is never used (CanonicalizeBindings, then
DeadCodeElimination).

Legal: always; only unused values and pure aliases are removed.
"""

from __future__ import annotations

from target_dlac.core.ir import cleanup, module_pass


def remove_dead_tuples(mod):
    return cleanup(mod)


RemoveDeadTuples = module_pass("dlac.RemoveDeadTuples")(remove_dead_tuples)
