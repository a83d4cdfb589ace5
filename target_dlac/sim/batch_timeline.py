"""The timelines of a batch of inputs at once: :class:`BatchReplay` places each instruction
for all N inputs of a batched run in one step, with NumPy arrays of cycles (one entry per
input) where :class:`target_dlac.sim.timeline.Timeline` keeps integers.

The rules are the timeline's (:mod:`target_dlac.sim.timeline`): three in-order units joined
by dependency-token queues, ``SYNC`` / ``HOST`` / ``HALT`` barriers, compute stalls charged
to the load queue when its token came last.  Only the costs differ between inputs (zero
activations skipped); the instruction stream, and so the token discipline, is the same for
all, and the interpreter checks it, with the race check, on the first input's
:class:`~target_dlac.sim.timeline.Replay` before this one places the instruction.  So this
class checks nothing: it is arithmetic on arrays, and ``tests/sim/test_batch.py`` asserts
that it gives every input the cycles of a single run.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from target_dlac.sim.timeline import _NEXT, _PREV, UNITS


class BatchReplay:
    """N timelines placed together; :meth:`totals` gives each input's cycle split."""

    def __init__(self, n: int):
        self.n = n
        self.free = {u: np.zeros(n, np.int64) for u in UNITS}
        self.fifo = {(a, b): deque() for a in UNITS for b in UNITS if _NEXT[a] == b or _PREV[a] == b}
        self.compute = np.zeros(n, np.int64)
        self.load_stall = np.zeros(n, np.int64)

    def place(self, ins, cost) -> np.ndarray:
        """Place ``ins`` at ``cost`` cycles (an int, or an ``[n]`` array); returns its end
        cycles ``[n]``."""
        unit = ins.unit
        if unit == "barrier":
            end = np.maximum.reduce([self.free[u] for u in UNITS]) + cost
            for u in UNITS:
                self.free[u] = end
            return end
        ready = self.free[unit]
        t_prev = self.fifo[(_PREV[unit], unit)].popleft() if ins.pop_prev else 0
        t_next = self.fifo[(_NEXT[unit], unit)].popleft() if ins.pop_next else 0
        start = np.maximum(np.maximum(ready, t_prev), t_next)
        end = start + cost
        if unit == "compute":
            self.compute += cost
            if ins.pop_prev:            # a stall is the load queue's when its token came last
                self.load_stall += np.where(np.greater_equal(t_prev, t_next), start - ready, 0)
        self.free[unit] = end
        if ins.push_prev:
            self.fifo[(unit, _PREV[unit])].append(end)
        if ins.push_next:
            self.fifo[(unit, _NEXT[unit])].append(end)
        return end

    def totals(self) -> dict:
        """``{"total", "compute", "load_stall", "store_stall"}``: int64 arrays ``[n]`` (as
        :meth:`target_dlac.sim.timeline.Replay.totals` per input)."""
        total = np.maximum.reduce([self.free[u] for u in UNITS])
        return {"total": total, "compute": self.compute.copy(), "load_stall": self.load_stall.copy(),
                "store_stall": np.maximum(0, total - self.compute - self.load_stall)}
