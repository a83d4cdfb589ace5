"""The timeline: three in-order units (load, compute, store) joined by dependency-token
queues, and a race check on every memory access.

Each instruction runs on its unit once that unit is free and every token it pops is
available; a token carries the cycle at which its producer finished.  ``SYNC``,
``HOST`` and ``HALT`` are barriers: they start when all units have drained.  The
total cycle count is therefore the end of a timeline, not a sum of costs.

The race check makes the timeline honest: if two instructions on different units
touch overlapping bytes of a buffer (or DRAM), at least one writing, the one later
in program order must start after the earlier one ends; otherwise the tokens do not
order them and the program is refused (:class:`ExecutionError` naming both pcs).  The
check is O(log n) per access, amortized (:class:`_Coverage`), whatever the program: one
unit idle or far ahead of another costs nothing extra.  Instruction queues are assumed
deep enough that fetch never stalls.

:class:`Replay` is the one way instructions are placed on a timeline: each costed by a
cost function (:func:`cycles.cost`, or :func:`dense_cost` for the dense-equivalent
timeline), the compute cycles and load stalls summed.  The interpreter places every
instruction it executes on two replays (the real one, race-checked, and the
dense-equivalent one); the analytic cost model (:mod:`target_dlac.tune.costmodel`) replays
a layer's instructions on one (:func:`replay`), so its cycles equal the interpreter's by
construction.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass

from target_dlac.core.errors import ExecutionError

from target_dlac.isa import cycles
from target_dlac.isa.encoding import Insn, disassemble


def _error(msg: str, *, pc: int, insn) -> ExecutionError:
    """The error for instruction ``insn`` (disassembled only now, when it is needed)."""
    return ExecutionError(msg, pc=pc, insn=disassemble(insn) if isinstance(insn, Insn) else insn)

UNITS = ("load", "compute", "store")
_PREV = {"load": None, "compute": "load", "store": "compute"}
_NEXT = {"load": "compute", "compute": "store", "store": None}
_OTHERS = {u: tuple(o for o in UNITS if o != u) for u in UNITS}


@dataclass
class Slot:
    start: int
    end: int
    load_stall: int = 0     # compute waited for a load token
    store_stall: int = 0    # compute waited for a store token


class Timeline:
    def __init__(self, check_races: bool = True, record: bool = False):
        """``record``: keep every placed step in :attr:`steps` (pc, unit, start, end,
        accesses, instruction), so a run's race verdict can be compared with another's
        (:meth:`signature`) or checked afterwards (:meth:`check_steps`)."""
        self.free = dict.fromkeys(UNITS, 0)
        self.steps: list | None = [] if record else None
        self.fifo = {(a, b): deque() for a in UNITS for b in UNITS if _NEXT[a] == b or _PREV[a] == b}
        self.check_races = check_races
        # race check: per memory, the accesses since the last barrier in program order
        # (lo, hi, start, end, unit, is_write, pc); and per (memory, unit seen, unit looking,
        # looking access writes) the _Coverage map of what may collide, built on first use
        self.live: dict[str, list] = {}
        self.views: dict[tuple, _Coverage] = {}
        self._prune_at: dict[str, int] = {}

    @property
    def now(self) -> int:
        return max(self.free.values())

    def _pop(self, src: str, dst: str, pc: int, text: str) -> int:
        q = self.fifo[(src, dst)]
        if not q:
            raise _error(f"pops a {src}->{dst} token but none was pushed before it in "
                                 "program order (the program would deadlock)", pc=pc, insn=text)
        return q.popleft()

    def step(self, pc: int, unit: str, deps: tuple, cost: int, accesses, text="") -> Slot:
        """Place one instruction; ``deps`` = (pop_prev, pop_next, push_prev, push_next),
        ``accesses`` = [(memory, lo, hi, is_write)]; ``text`` is the instruction (an
        :class:`Insn`, disassembled only for an error message) or its text."""
        pop_prev, pop_next, push_prev, push_next = deps
        if unit == "barrier":
            if any(deps):
                raise _error("barrier instructions carry no dependency tokens", pc=pc, insn=text)
            left = [f"{a}->{b}" for (a, b), q in self.fifo.items() if q]
            if left:
                raise _error(f"unconsumed tokens at a barrier ({', '.join(left)}): the queues "
                                     "are out of step", pc=pc, insn=text)
            start = self.now
            end = start + cost
            self._barrier(end)
            if self.steps is not None:
                self.steps.append((pc, unit, start, end, (), text))
            return Slot(start, end)
        ready = self.free[unit]
        t_prev = t_next = 0
        for flag, other, kind in ((pop_prev, _PREV[unit], "prev"), (pop_next, _NEXT[unit], "next")):
            if not flag:
                continue
            if other is None:
                raise _error(f"the {unit} queue has no {kind} queue to pop from", pc=pc, insn=text)
            t = self._pop(other, unit, pc, text)
            if kind == "prev":
                t_prev = t
            else:
                t_next = t
        start = max(ready, t_prev, t_next)
        slot = Slot(start, start + cost)
        if unit == "compute" and start > ready:
            if t_prev >= t_next:
                slot.load_stall = start - ready
            else:
                slot.store_stall = start - ready
        if self.check_races:
            self._check(pc, unit, slot, accesses, text)
        if self.steps is not None:
            self.steps.append((pc, unit, slot.start, slot.end, tuple(accesses), text))
        self.free[unit] = slot.end
        for flag, other, kind in ((push_prev, _PREV[unit], "prev"), (push_next, _NEXT[unit], "next")):
            if not flag:
                continue
            if other is None:
                raise _error(f"the {unit} queue has no {kind} queue to push to", pc=pc, insn=text)
            self.fifo[(unit, other)].append(slot.end)
        return slot

    def _barrier(self, end: int):
        self.free = dict.fromkeys(UNITS, end)
        self.live.clear()
        self.views.clear()
        self._prune_at.clear()

    def signature(self) -> list:
        """What decides the race verdict of the recorded run: every step's unit, cycles and
        accesses (two runs with equal signatures have the same verdict)."""
        return [st[:5] for st in self.steps]

    @classmethod
    def check_steps(cls, steps: list) -> None:
        """The race check of recorded ``steps``, afterwards: the same verdict and the same
        error (naming the same pcs) as checking while placing them."""
        tl = cls(True)
        for pc, unit, start, end, accesses, text in steps:
            if unit == "barrier":
                tl._barrier(end)
                continue
            tl._check(pc, unit, Slot(start, end), accesses, text)
            tl.free[unit] = end

    def _check(self, pc, unit, slot, accesses, text):
        """Refuse the first access that overlaps a live access of another unit (one of them
        writing) which ends after ``slot.start``.  Each access is checked against
        :class:`_Coverage` maps, so the check costs O(log n) per access (amortized) however
        far one unit runs ahead of another or however long a unit stays idle."""
        start, end = slot.start, slot.end
        others = _OTHERS[unit]
        views = self.views
        for mem, lo, hi, write in accesses:
            if hi <= lo:
                continue
            log = self.live.get(mem)
            if log is None:
                log = self.live[mem] = []
            for other in others:
                key = (mem, other, unit, write)
                cover = views.get(key)
                if cover is None:        # first look of ``unit`` at ``other``'s accesses
                    cover = views[key] = _Coverage()
                    for e in log:
                        if e[4] == other and (write or e[5]):
                            cover.add(e[0], e[1], e[3])
                if cover and cover.hit(lo, hi, start):
                    self._race(mem, lo, hi, write, unit, start, log, pc, text)
            log.append((lo, hi, start, end, unit, write, pc))
            for other in others:
                cover = views.get((mem, unit, other, True))       # seen by a writer: every access
                if cover is not None:
                    cover.add(lo, hi, end)
                if write:
                    cover = views.get((mem, unit, other, False))  # seen by a reader: the writes
                    if cover is not None:
                        cover.add(lo, hi, end)
            if len(log) > self._prune_at.get(mem, _PRUNE_MIN):
                self._prune(mem)

    def _prune(self, mem):
        """Drop the accesses that ended before every unit's free cycle (no later access can
        race with them); amortized O(1) per access."""
        horizon = min(self.free.values())
        log = self.live[mem] = [e for e in self.live[mem] if e[3] > horizon]
        self._prune_at[mem] = max(_PRUNE_MIN, 2 * len(log))

    def _race(self, mem, lo, hi, write, unit, start, log, pc, text):
        """The error for a race the coverage maps found: the first earlier access in program
        order that the access ``[lo, hi)`` collides with (an O(n) scan, once per run)."""
        for e_lo, e_hi, _, e_end, e_unit, e_write, e_pc in log:
            if e_unit != unit and (write or e_write) and lo < e_hi and e_lo < hi and start < e_end:
                raise _error(
                    f"race on {mem}[{max(lo, e_lo)}:{min(hi, e_hi)}]: {'written' if write else 'read'} "
                    f"from cycle {start}, but pc {e_pc} ({e_unit}) {'writes' if e_write else 'reads'} "
                    f"it until cycle {e_end}; a dependency token is missing", pc=pc, insn=text)
        raise AssertionError("coverage map and access log disagree")       # pragma: no cover


def dense_cost(ins: Insn, m, counts=None) -> int:
    """The cost of ``ins`` with every weight issued: a ``TACC`` / ``SACC`` costed as a
    ``MAC`` (:func:`cycles.dense_cycles`), any other instruction as :func:`cycles.cost`."""
    if ins.op in ("TACC", "SACC"):
        return cycles.dense_cycles(ins, m)
    return cycles.cost(ins, m, counts)


class Replay:
    """Instructions placed in program order on a :class:`Timeline`, each costed by
    ``cost_fn(ins, machine, counts)`` (default :func:`cycles.cost`); ``compute`` and
    ``load_stall`` sum the compute unit's busy cycles and load stalls so far.
    ``check_races`` / ``record``: as :class:`Timeline`."""

    def __init__(self, machine, cost_fn=cycles.cost, *, check_races: bool = False,
                 record: bool = False):
        self.m, self.cost_fn = machine, cost_fn
        self.timeline = Timeline(check_races, record)
        self.compute = self.load_stall = 0

    def place(self, pc: int, ins: Insn, counts=None, accesses=(), cost: int | None = None) -> tuple[int, Slot]:
        """Cost ``ins`` (``counts``: its weight block's per-filter counts, for ``TACC`` /
        ``SACC``; ``cost``: its cycles when the caller has them, e.g. from the activations
        it read) and place it; ``accesses`` as :meth:`Timeline.step`.  Returns
        ``(cycles, slot)``."""
        cyc = self.cost_fn(ins, self.m, counts) if cost is None else cost
        slot = self.timeline.step(pc, ins.unit, (ins.pop_prev, ins.pop_next, ins.push_prev, ins.push_next),
                                  cyc, accesses, ins)
        if ins.unit == "compute":
            self.compute += cyc
        self.load_stall += slot.load_stall
        return cyc, slot

    def totals(self) -> dict:
        """``{"total", "compute", "load_stall", "store_stall"}`` of what was placed (the
        split of a run report's cycles: the store stall is the rest)."""
        total = self.timeline.now
        return {"total": total, "compute": self.compute, "load_stall": self.load_stall,
                "store_stall": max(0, total - self.compute - self.load_stall)}


def replay(steps, machine, cost_fn=cycles.cost) -> Replay:
    """A :class:`Replay` (race check off) of ``steps``, ``(pc, ins, counts)`` in program order."""
    r = Replay(machine, cost_fn)
    for pc, ins, counts in steps:
        r.place(pc, ins, counts)
    return r


#: An access log is first pruned when it holds this many entries.
_PRUNE_MIN = 1024


#: Segments per block of a :class:`_Coverage` map (a block splits at twice this many).
_BLOCK = 256


class _Coverage:
    """What one unit sees of another unit's live accesses to one memory (all of them, or its
    writes only): the bytes they cover, as sorted disjoint segments ``[lo, hi)``, each with
    the end cycle of the latest access covering it.

    ``add`` is called in program order, and a unit's accesses end in program order, so a new
    access ends no earlier than any segment: it replaces what it covers (at most two
    segments are cut, the rest disappear).  ``hit`` is asked by the viewing unit, whose start
    cycles never decrease, so a segment that ended at or before one of them is dead for
    good: ``hit`` deletes the dead segments it meets and stops at the first live one (a
    race).  Every segment is created once and deleted at most once.

    The segments are kept in blocks of at most ``2 * _BLOCK`` (``last``: the end address of
    each block's last segment), so a call costs O(log n) to find its place plus O(_BLOCK +
    n / _BLOCK) of list moves, not O(n); over a run, O(n log n) amortized in practice."""

    __slots__ = ("los", "his", "ends", "last")

    def __init__(self):
        self.los: list[list[int]] = []
        self.his: list[list[int]] = []
        self.ends: list[list[int]] = []
        self.last: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.last)

    def _span(self, lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Positions ``(block, index)`` of the first segment overlapping ``[lo, hi)`` and just
        past the last one (equal if none overlaps)."""
        nb = len(self.last)
        b = bisect_right(self.last, lo)             # first block ending after lo
        if b == nb:
            return (b, 0), (b, 0)
        i = bisect_right(self.his[b], lo)
        first = (b, i)
        while True:
            los = self.los[b]
            j = bisect_left(los, hi, i)
            if j < len(los) or b + 1 == nb:
                return first, (b, j)
            b, i = b + 1, 0

    def _cut(self, first: tuple[int, int], past: tuple[int, int]) -> None:
        (b0, i0), (b1, i1) = first, past
        if b0 == b1:
            for lists in (self.los, self.his, self.ends):
                del lists[b0][i0:i1]
        else:
            for lists in (self.los, self.his, self.ends):
                del lists[b0][i0:]
                del lists[b1][:i1]
                del lists[b0 + 1:b1]
            del self.last[b0 + 1:b1]
            self._refresh(b0 + 1)
        self._refresh(b0)

    def _refresh(self, b: int) -> None:
        """Drop block ``b`` if it is empty, else note its last segment's end address."""
        if b >= len(self.last):
            return
        if self.los[b]:
            self.last[b] = self.his[b][-1]
        else:
            del self.los[b], self.his[b], self.ends[b], self.last[b]

    def _insert(self, pieces: list[tuple[int, int, int]]) -> None:
        """Insert sorted segments that overlap none of the map's."""
        lo = pieces[0][0]
        b = bisect_right(self.last, lo)
        if b == len(self.last):
            if not self.last:
                self.los.append([])
                self.his.append([])
                self.ends.append([])
                self.last.append(0)
            b = len(self.last) - 1
            i = len(self.los[b])
        else:
            i = bisect_right(self.his[b], lo)
        los, his, ends = self.los[b], self.his[b], self.ends[b]
        los[i:i] = [p[0] for p in pieces]
        his[i:i] = [p[1] for p in pieces]
        ends[i:i] = [p[2] for p in pieces]
        self.last[b] = his[-1]
        if len(los) > 2 * _BLOCK:                   # split the block in two
            h = len(los) // 2
            self.los[b + 1:b + 1] = [los[h:]]
            self.his[b + 1:b + 1] = [his[h:]]
            self.ends[b + 1:b + 1] = [ends[h:]]
            del los[h:], his[h:], ends[h:]
            self.last[b:b + 1] = [his[-1], self.his[b + 1][-1]]

    def add(self, lo: int, hi: int, end: int) -> None:
        """Cover ``[lo, hi)`` until cycle ``end`` (no earlier than any segment's)."""
        first, past = self._span(lo, hi)
        pieces = [(lo, hi, end)]
        if first != past:
            (b0, i0), (b1, i1) = first, past
            if i1 == 0:
                b1, i1 = b1 - 1, len(self.los[b1 - 1])
            if self.los[b0][i0] < lo:               # the first segment keeps its left part
                pieces.insert(0, (self.los[b0][i0], lo, self.ends[b0][i0]))
            if self.his[b1][i1 - 1] > hi:           # the last one its right part
                pieces.append((hi, self.his[b1][i1 - 1], self.ends[b1][i1 - 1]))
            self._cut(first, past)
        self._insert(pieces)

    def hit(self, lo: int, hi: int, start: int) -> bool:
        """Does a segment overlapping ``[lo, hi)`` end after ``start``?  (Deletes the
        overlapping segments that do not: they are dead for every later query.)"""
        first, past = self._span(lo, hi)
        if first == past:
            return False
        (b0, i0), (b1, i1) = first, past
        for b in range(b0, b1 + 1):
            ends = self.ends[b]
            a, z = (i0 if b == b0 else 0), (i1 if b == b1 else len(ends))
            if a < z and max(ends[a:z]) > start:
                return True
        self._cut(first, past)
        return False
