"""Hostile-but-valid binaries (issue 11): the race check is O(n log n).

50,000 loads without a barrier (one unit idle), or a load unit running 20,000 instructions
ahead of the compute unit, are checked in seconds (the quadratic check took minutes), with
the verdicts of a brute-force reference.  Every binary is well formed (``to_bytes``), so only
the limits of ``target_dlac/isa/limits.py`` stand between it and hours of interpretation.
NumPy only.  (Budgets: test_hostile_budgets.py; tables and machines: test_hostile_bounds.py.)
"""

from __future__ import annotations

import random

import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.sim import timeline
from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.sim.interpreter import run
from target_dlac.binary.program import Program
from target_dlac.sim.timeline import Timeline
from tests.isa_programs import load, store
from tests.security.bounds_helpers import FAST_S, _alu, _program, _timed


# ---- the race check ----------------------------------------------------------------------------

def _loads(n: int) -> bytes:
    """``n`` LOADs, no barrier, no token: the compute and store units stay idle."""
    return to_bytes(_program(load("INP", (4 * i) % 65536, (4 * i) % 4096, 4) for i in range(n)))


def test_50k_loads_without_barriers_are_checked_in_seconds():
    p = from_bytes(_loads(50_000))          # 1.6 MB; the quadratic check took 6 min 16 s
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 50_002


def _run_ahead(n: int, race_at: int | None = None) -> Program:
    """``n`` LOADs into distinct INP words, then ``n`` ALUs on the compute unit reading an
    INP word no load writes: the loads end long after the ALUs start, so every load stays
    live for every ALU (a list scan is n^2).  ``race_at``: one more ALU reads the word of
    load ``race_at`` without a token."""
    insns = [load("INP", 4 * i, (4 * i) % 4096, 4) for i in range(n)]
    insns += [_alu(200_000, 4 * (i % 60_000)) for i in range(n)]
    if race_at is not None:
        insns.append(_alu(4 * race_at, 0))
    return _program(insns)


def test_load_unit_far_ahead_is_checked_in_seconds():
    p = from_bytes(to_bytes(_run_ahead(20_000)))
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 40_002


@pytest.mark.slow
def test_loads_at_descending_addresses_are_checked_in_seconds():
    """One ALU and one STORE first, so the compute and store units look at the load unit's
    accesses; then 60,000 one-byte LOADs, each below the last: every one lands at the front
    of the coverage maps (a flat sorted list would move all of them each time)."""
    insns = [_alu(0, 0), store("ACC", 8, 0, 1)]
    insns += [load("INP", 262_143 - i, 4095 - i % 4096, 1) for i in range(60_000)]
    p = from_bytes(to_bytes(_program(insns)))
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 60_004


def test_late_race_is_still_found_and_named():
    p = _run_ahead(20_000, race_at=12_345)
    with pytest.raises(ExecutionError, match="race on INP") as ei:
        run(p, {})
    e = ei.value
    assert e.pc == 40_000 and "pc 12345 (load) writes it" in str(e), str(e)
    assert "\n" not in str(e)


def _brute_force_race(live, pc, unit, start, accesses):
    """The old quadratic check: the first access of this instruction that overlaps a live
    access of another unit (one of them writing) ending after ``start``, and the first such
    live access; ``(pc, earlier pc)`` or ``None``."""
    for mem, lo, hi, w in accesses:
        if hi <= lo:
            continue
        for e_mem, e_lo, e_hi, e_end, e_unit, e_w, e_pc in live:
            if e_mem == mem and e_unit != unit and (w or e_w) and lo < e_hi and e_lo < hi and start < e_end:
                return pc, e_pc
    return None


UNIT_BASE = {"load": 1 << 20, "compute": 2 << 20, "store": 3 << 20}
NEIGHBOURS = {"load": (None, "compute"), "compute": ("load", "store"), "store": ("compute", None)}


@pytest.mark.parametrize("seed", range(40))
def test_race_verdicts_match_brute_force(seed, monkeypatch):
    """Random timelines (tokens, barriers, costs, overlapping accesses), timed by a timeline
    without the race check: the coverage maps refuse exactly the instruction the brute-force
    check refuses, naming the same earlier pc, and accept everything else (odd seeds with
    one-segment blocks, so the maps' blocks split, span and empty all the time)."""
    if seed % 2:
        monkeypatch.setattr(timeline, "_BLOCK", 1)
    rng = random.Random(seed)
    checked, timing = Timeline(True), Timeline(False)
    pending = dict.fromkeys([("load", "compute"), ("compute", "load"), ("compute", "store"),
                             ("store", "compute")], 0)
    own, span = rng.choice([0.9, 0.99, 0.999]), rng.choice([64, 4096])
    live = []
    for pc in range(rng.randrange(50, 1500)):
        if rng.random() < 0.02 and not any(pending.values()):
            unit, deps, acc = "barrier", (0, 0, 0, 0), []
        else:
            unit = rng.choice(list(NEIGHBOURS))
            prev, nxt = NEIGHBOURS[unit]
            pp = int(prev is not None and pending[(prev, unit)] > 0 and rng.random() < 0.9)
            pn = int(nxt is not None and pending[(nxt, unit)] > 0 and rng.random() < 0.9)
            hp = int(prev is not None and rng.random() < 0.7)
            hn = int(nxt is not None and rng.random() < 0.7)
            for flag, key, d in ((pp, (prev, unit), -1), (pn, (nxt, unit), -1), (hp, (unit, prev), 1),
                                 (hn, (unit, nxt), 1)):
                if flag:
                    pending[key] += d
            deps, acc = (pp, pn, hp, hn), []
            for _ in range(rng.randrange(4)):
                lo = rng.randrange(span) + (UNIT_BASE[unit] if rng.random() < own else 0)
                acc.append((rng.choice(["DRAM", "INP", "ACC"]), lo, lo + rng.randrange(17),
                            rng.random() < 0.4))
        cost = rng.choice([0, 1, 5, 50])
        slot = timing.step(pc, unit, deps, cost, (), f"insn {pc}")
        want = None if unit == "barrier" else _brute_force_race(live, pc, unit, slot.start, acc)
        if want is not None:
            with pytest.raises(ExecutionError, match="race on") as ei:
                checked.step(pc, unit, deps, cost, acc, f"insn {pc}")
            assert ei.value.pc == pc and f"but pc {want[1]} (" in str(ei.value), (want, str(ei.value))
            return
        assert checked.step(pc, unit, deps, cost, acc, f"insn {pc}") == slot
        if unit == "barrier":
            live = []
        else:
            live += [(mem, lo, hi, slot.end, unit, w, pc) for mem, lo, hi, w in acc if hi > lo]
