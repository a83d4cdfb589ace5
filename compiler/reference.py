"""The TVM CPU reference of a compile-time module: the stage's Relax module with its
dLAC regions inlined back (:func:`passes.partition.unpartition`), built with
``tvm.compile(mod, "llvm")`` and run on ``relax.VirtualMachine``
(:class:`target_dlac.sim.cpu_build.CpuBuild`).

Every numeric result of dlac is checked against this build of the same graph.
"""

from __future__ import annotations

import numpy as np

from target_dlac.sim.cpu_build import CpuBuild


class Reference(CpuBuild):
    """A compiled module, callable on NumPy inputs; returns a list of NumPy outputs."""

    def __init__(self, mod):
        from passes.partition import unpartition

        super().__init__(unpartition(mod), "reference")


def run_reference(mod, inputs) -> list[np.ndarray]:
    """Build ``mod`` for the CPU and run it once on ``inputs`` (array, list or dict)."""
    return Reference(mod)(inputs)
