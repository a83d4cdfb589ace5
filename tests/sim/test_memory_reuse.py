"""A run on reused memories sees what a fresh machine would: the bytes a program reads
before it writes them read zero on every run, though the run before wrote them later
(:class:`target_dlac.sim.memory.Memories`: only those bytes are zeroed between runs).
Oracle: a fresh interpreter, and the zeros a fresh machine reads.  NumPy only."""

from __future__ import annotations

import numpy as np
import pytest

from target_dlac.sim.interpreter import Interpreter
from target_dlac.sim.memory import Ranges
from tests.isa_programs import HALT, Dram, load, store


def _program():
    d = Dram()
    x = d.tensor("x", "input", (4,))
    out = {k: d.tensor(k, "output", (4,)) for k in ("acc_first", "inp_first", "acc_last", "gap")}
    insns = [
        load("INP", 0, x.addr, 16),
        store("ACC", 0, out["acc_first"].addr, 16),        # ACC[0:16] not written yet: zeros
        store("INP", 64, out["inp_first"].addr, 16),       # INP[64:80] not written yet: zeros
        load("INP", 64, x.addr, 16),                       # ... written now (stale next run)
        load("ACC", 0, x.addr, 16),
        store("ACC", 0, out["acc_last"].addr, 16),
        load("INP", 128, x.addr, 4, y=2, sram_stride=8),   # bytes 132..136 are a gap
        store("INP", 128, out["gap"].addr, 16),           # (and 140..144, never written)
        load("INP", 132, x.addr, 4),                       # the gap written after it was read
        HALT,
    ]
    return d.program(insns)


@pytest.mark.parametrize("n", [1, 3])
def test_reused_memories_read_as_fresh(n):
    prog = _program()
    it = Interpreter(prog, check_races=False)
    rng = np.random.default_rng(0)
    for run in range(3):
        x = (rng.standard_normal((n, 4)) + 5).astype(np.float32)     # no zeros
        got, _ = it.run_batch({"x": x})
        fresh = Interpreter(prog, check_races=False)
        want, _ = fresh.run_batch({"x": x})
        for k in want:
            assert np.array_equal(got[k], want[k]), (run, k)
        assert not got["acc_first"].any() and not got["inp_first"].any()
        assert np.array_equal(got["acc_last"], x)
        gap = got["gap"].view(np.uint8).reshape(n, 16)
        assert not gap[:, 4:8].any() and np.array_equal(gap[:, :4], x.view(np.uint8).reshape(n, 16)[:, :4])
        for mem in it.banks:
            assert np.array_equal(it.banks[mem], fresh.banks[mem]), (run, mem)
    assert it._fresh["ACC"] == [(0, 16)] and it._fresh["INP"] == [(64, 80), (132, 136), (140, 144)]


def test_ranges_gaps_and_merges():
    r = Ranges()
    for a, b in [(10, 20), (30, 40), (20, 25), (50, 50)]:
        r.add(a, b)
    assert r.pairs() == [(10, 25), (30, 40)]
    assert r.gaps(0, 45) == [(0, 10), (25, 30), (40, 45)]
    assert r.gaps(12, 24) == [] and r.gaps(40, 40) == []


def _runs_as_fresh(prog, runs=3, n=2):
    it = Interpreter(prog, check_races=False)
    rng = np.random.default_rng(1)
    for _ in range(runs):
        x = (rng.standard_normal((n,) + tuple(prog.inputs[0].shape)) + 5).astype(np.float32)
        got, _ = it.run_batch({"x": x})
        want, _ = Interpreter(prog, check_races=False).run_batch({"x": x})
        for k in want:
            assert np.array_equal(got[k], want[k]), k
    return it


def test_a_long_strided_copy_is_traced_as_writing_nothing():
    """A strided DMA write of more than TRACE_ROWS rows is not traced row by row: what is
    read there counts as read before written (zeroed between runs), and the runs stay fresh."""
    from target_dlac.sim.memory import TRACE_ROWS

    d = Dram()
    x = d.tensor("x", "input", (8,))
    out = d.tensor("out", "output", (2 * (TRACE_ROWS + 1),))
    rows = TRACE_ROWS + 1
    insns = [load("INP", 0, x.addr, 4, y=rows, dram_stride=0, sram_stride=8),   # gaps at 4..8, 12..16, ...
             store("INP", 0, out.addr, 8 * rows), load("INP", 4, x.addr, 4), HALT]
    it = _runs_as_fresh(d.program(insns))
    assert it._fresh["INP"] == [(0, 8 * rows)]      # the whole copy, gaps and rows


def test_a_trace_with_too_many_ranges_gives_up():
    """A program that writes more disjoint ranges than TRACE_RANGES (a crafted one) is not
    traced: every later run zeroes what the last one wrote, as before tracing existed."""
    from target_dlac.sim.memory import TRACE_RANGES

    d = Dram()
    x = d.tensor("x", "input", (8,))
    out = d.tensor("out", "output", (4,))
    copies = TRACE_RANGES // 64 + 2
    insns = [load("INP", 256 * i, x.addr, 1, y=64, dram_stride=0, sram_stride=2) for i in range(copies)]
    insns += [store("INP", 1, out.addr, 16), load("INP", 1, x.addr, 16), HALT]
    it = _runs_as_fresh(d.program(insns))
    assert it._fresh is None and it._give_up
