"""The timeline: three in-order units (load, compute, store) joined by dependency-token
queues, and a race check on every memory access.

Each instruction runs on its unit once that unit is free and every token it pops is
available; a token carries the cycle at which its producer finished.  ``SYNC``,
``HOST`` and ``HALT`` are barriers: they start when all units have drained.  The
total cycle count is therefore the end of a timeline, not a sum of costs.

The race check makes the timeline honest: if two instructions on different units
touch overlapping bytes of a buffer (or DRAM), at least one writing, the one later
in program order must start after the earlier one ends; otherwise the tokens do not
order them and the program is refused (:class:`ExecutionError` naming both pcs).
Instruction queues are assumed deep enough that fetch never stalls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from compiler.errors import ExecutionError

from .isa import Insn, disassemble


def _error(msg: str, *, pc: int, insn) -> ExecutionError:
    """The error for instruction ``insn`` (disassembled only now, when it is needed)."""
    return ExecutionError(msg, pc=pc, insn=disassemble(insn) if isinstance(insn, Insn) else insn)

UNITS = ("load", "compute", "store")
_PREV = {"load": None, "compute": "load", "store": "compute"}
_NEXT = {"load": "compute", "compute": "store", "store": None}


@dataclass
class Slot:
    start: int
    end: int
    load_stall: int = 0     # compute waited for a load token
    store_stall: int = 0    # compute waited for a store token


class Timeline:
    def __init__(self, check_races: bool = True):
        self.free = dict.fromkeys(UNITS, 0)
        self.fifo = {(a, b): deque() for a in UNITS for b in UNITS if _NEXT[a] == b or _PREV[a] == b}
        self.check_races = check_races
        self.live: dict[str, list] = {}

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
            self.free = dict.fromkeys(UNITS, end)
            self.live.clear()
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
        self.free[unit] = slot.end
        for flag, other, kind in ((push_prev, _PREV[unit], "prev"), (push_next, _NEXT[unit], "next")):
            if not flag:
                continue
            if other is None:
                raise _error(f"the {unit} queue has no {kind} queue to push to", pc=pc, insn=text)
            self.fifo[(unit, other)].append(slot.end)
        return slot

    def _check(self, pc, unit, slot, accesses, text):
        horizon = min(self.free.values())
        for mem, lo, hi, write in accesses:
            if hi <= lo:
                continue
            entries = self.live.setdefault(mem, [])
            keep = []
            for e in entries:
                e_lo, e_hi, e_start, e_end, e_unit, e_write, e_pc = e
                if e_end <= horizon:
                    continue
                keep.append(e)
                if e_unit != unit and (write or e_write) and lo < e_hi and e_lo < hi and slot.start < e_end:
                    raise _error(
                        f"race on {mem}[{max(lo, e_lo)}:{min(hi, e_hi)}]: {'written' if write else 'read'} "
                        f"from cycle {slot.start}, but pc {e_pc} ({e_unit}) {'writes' if e_write else 'reads'} "
                        f"it until cycle {e_end}; a dependency token is missing", pc=pc, insn=text)
            keep.append((lo, hi, slot.start, slot.end, unit, write, pc))
            self.live[mem] = keep
