"""Helpers of the hostile-but-valid binary tests (tests/security/test_hostile_races.py,
test_hostile_budgets.py, test_hostile_bounds.py): a timed refusal check and small programs.
"""

from __future__ import annotations

import time

import pytest

from target_dlac.core.errors import BinaryFormatError
from target_dlac.binary.container import from_bytes
from target_dlac.isa.encoding import ALU_OPS, Insn
from target_dlac.isa.machine import Machine
from target_dlac.binary.program import Program
from tests.isa_programs import HALT, SYNC, Dram, fields


#: Wall-clock bound of each check (generous: 2 shared cores; the attacks took minutes).
FAST_S = 15.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _refused(data: bytes, *needles) -> BinaryFormatError:
    """``data`` is refused at load, quickly, in one line containing every needle."""
    def load():
        with pytest.raises(BinaryFormatError) as ei:
            from_bytes(data)
        return ei.value
    e, secs = _timed(load)
    msg = str(e)
    assert secs < FAST_S, (secs, msg)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return e


def _program(insns, machine=Machine(), dram_bytes=None, consts=bytes(4096), **meta) -> Program:
    """``insns`` then SYNC, HALT; ``consts`` at DRAM address 0; one 4-element output."""
    d = Dram()
    d.const(consts)
    d.tensor("y", "output", (4,))
    p = d.program(list(insns) + [SYNC, HALT], machine)
    if dram_bytes is not None:
        p.meta["dram_bytes"] = dram_bytes
    p.meta.update(meta)
    return p


def _alu(a, dst, n=1, **deps):
    return Insn("ALU", fields("ALU", a=a, b=a, op=ALU_OPS.index("relu"), dst=dst, n=n), **deps)


def _pool(**kw):
    return Insn("POOL", fields("POOL", **kw))
