"""The interpreter's memories: DRAM and the on-chip buffers (INP, WGT, ACC), one copy per
input of a batch (``banks[memory]``: ``[n, bytes]``), and their checked accessors.

:class:`Memories` is a mixin of :class:`target_dlac.sim.interpreter.Interpreter`.  Every
access is bounds-checked and recorded in ``acc`` (memory, start, end, writes) for the race
check; an error names the pc, the instruction and the buffer.  A run starts on zeroed
memories with the constants at the start of DRAM, as a fresh machine would; a run of the
same batch size reuses the last run's arrays and zeroes only the bytes the program reads
before it writes them (:class:`Memories`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

import numpy as np

from target_dlac.core.errors import ExecutionError
from target_dlac.isa.limits import MAX_DRAM_BYTES
from target_dlac.sim.kernels import F32

ROW_ALIGN = 64             # bytes: each input's copy of a memory starts on this boundary
#: A strided DMA write of more rows is traced as writing nothing (what is read there later
#: counts as read before written, and is zeroed between runs: safe, and the trace's work
#: per instruction stays small).
TRACE_ROWS = 64
#: A trace whose ranges in one memory grow past this many gives up: every later run zeroes
#: what the last one wrote (bounds the trace's work and memory for any program).
TRACE_RANGES = 4096


class Ranges:
    """Disjoint, sorted byte ranges ``[a, b)`` of one memory."""

    def __init__(self):
        self.lo: list[int] = []
        self.hi: list[int] = []

    def add(self, a: int, b: int):
        if a >= b:
            return
        i, j = bisect_left(self.hi, a), bisect_right(self.lo, b)
        if i < j:
            a, b = min(a, self.lo[i]), max(b, self.hi[j - 1])
        self.lo[i:j], self.hi[i:j] = [a], [b]

    def gaps(self, a: int, b: int) -> list[tuple[int, int]]:
        """The parts of ``[a, b)`` no range covers."""
        out, i = [], bisect_right(self.hi, a)
        while i < len(self.lo) and self.lo[i] < b and a < b:
            if self.lo[i] > a:
                out.append((a, self.lo[i]))
            a = max(a, self.hi[i])
            i += 1
        return out + [(a, b)] * (a < b)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.lo, self.hi))


class Memories:
    """The memories and accessors (see the module docstring).

    A run that reuses the last run's memories zeroes only the bytes that the program reads
    before it writes them (``_fresh``: found by tracing the first run's accesses; the
    addresses are the instruction fields', the same every run), so that it sees what a
    fresh machine would; every other byte it reads it has written first, and every byte the
    last run wrote it writes again.  A program with ``HOST`` ops (which read and write DRAM
    outside the trace), or one whose trace grows past :data:`TRACE_RANGES` ranges, zeroes
    everything the last run wrote."""

    # ---- memory ------------------------------------------------------------------------
    @property
    def mem(self) -> dict:
        """The first input's memories (``DRAM``, ``INP``, ``WGT``, ``ACC``) as byte arrays."""
        return {k: v[0] for k, v in self.banks.items()}

    def _reset(self, n: int = 1):
        """``banks[memory]``: ``[n, bytes]``, one zeroed copy per input of the batch (DRAM
        starting with the constants)."""
        m = self.m
        if not 0 < self.p.dram_bytes <= MAX_DRAM_BYTES:      # (validation refuses it in a file)
            raise ExecutionError(f"the program's {self.p.dram_bytes}-byte DRAM image is not in "
                                 f"(0, {MAX_DRAM_BYTES}] (limits.MAX_DRAM_BYTES)")
        sizes = {"DRAM": self.p.dram_bytes, "INP": m.inp_bytes, "WGT": m.wgt_bytes, "ACC": m.acc_bytes}
        consts = np.frombuffer(self.p.constants, np.uint8)
        banks = getattr(self, "banks", None)
        fresh = self._fresh         # the bytes read before written, once known
        if banks is not None and len(banks["DRAM"]) == n:      # the last run's: what it wrote zeroed
            for k, (lo, hi) in self._dirty.items():
                for a, b in [(lo, hi)] if fresh is None else fresh[k]:
                    a, b = max(a, lo), min(b, hi)
                    if a < b:
                        banks[k][:, a:b] = 0
            lo, hi = self._dirty["DRAM"]
            if lo < len(consts) and lo < hi:
                banks["DRAM"][:, :len(consts)] = consts
        else:
            self.banks = None           # (the last run's go before the new ones are made)
            try:
                banks = {k: np.zeros((n, -(-v // ROW_ALIGN) * ROW_ALIGN), np.uint8)[:, :v]
                         for k, v in sizes.items()}
            except MemoryError:
                raise ExecutionError(f"cannot allocate {n} copies of the program's memories "
                                     f"({sum(sizes.values()):,} bytes each) on this host") from None
            banks["DRAM"][:, :len(consts)] = consts
        self.banks = banks
        self._dirty = {k: [v, 0] for k, v in sizes.items()}     # the byte range each run writes
        traced = fresh is None and not self._give_up and not any(i.op == "HOST" for i in self.p.insns)
        self._trace = {k: (Ranges(), Ranges()) for k in sizes} if traced else None   # (written, read first)
        self._rows = None       # (memory, start, row bytes, rows, stride) of a strided DMA write
        if traced and len(consts):
            self._trace["DRAM"][0].add(0, len(consts))      # (restored after a run that wrote them)
        self._same = [(0, m.wgt_bytes)]     # WGT ranges equal in every input's copy (sorted, disjoint)

    def _same_rows(self, mem: str, lo: int, hi: int) -> bool:
        """Are bytes ``[lo, hi)`` of ``mem`` known equal in every input's copy?  DRAM's
        constants are until a run writes them; WGT ranges are while only such bytes were
        loaded into them (:meth:`_set_same`); nothing else is tracked.  A copy from such a
        range reads one row, and a weight block in one is not compared across the batch."""
        if mem == "DRAM":
            d_lo, d_hi = self._dirty["DRAM"]
            return hi <= len(self.p.constants) and (hi <= d_lo or lo >= d_hi or d_lo >= d_hi)
        if mem == "WGT":
            return any(a <= lo and hi <= b for a, b in self._same)
        return False

    def _set_same(self, lo: int, hi: int, same: bool):
        """Record WGT bytes ``[lo, hi)`` as equal in every row (``same``: only row 0 holds
        them, the other rows' are stale) or not (first copying row 0 of what was equal to
        every row, so that a write to part of the range leaves the rest right)."""
        kept = []
        bank = self.banks["WGT"]
        for a, b in self._same:
            if b <= lo or a >= hi:
                kept.append((a, b))
            else:
                if not same:
                    bank[1:, max(a, lo):min(b, hi)] = bank[0, max(a, lo):min(b, hi)]
                kept += [(a, lo)] * (a < lo) + [(hi, b)] * (b > hi)
        if same:
            kept.append((lo, hi))
        merged: list = []
        for a, b in sorted(kept):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._same = merged

    def _note_accesses(self):
        """After an instruction: widen the written ranges by its writes (``acc``) and, while
        the first run is traced, record the bytes it read that nothing had written."""
        trace, rows = self._trace, self._rows
        self._rows = None
        for mem, a, b, write in self.acc:
            if write:
                self._wrote(mem, a, b)
            if trace is None:
                continue
            written, first = trace[mem]
            if write and rows is not None and rows[:2] == (mem, a):     # a strided copy: its rows
                for r in range(rows[3] if rows[3] <= TRACE_ROWS else 0):
                    written.add(a + r * rows[4], a + r * rows[4] + rows[2])
            elif write:
                written.add(a, b)
            else:
                for x, y in written.gaps(a, b):
                    first.add(x, y)
            if len(written.lo) > TRACE_RANGES or len(first.lo) > TRACE_RANGES:
                self._trace = trace = None      # (and no later run traces)
                self._give_up = True

    def _end_trace(self):
        """A run ended well: what its trace found holds for every later run."""
        if self._trace is not None:
            self._fresh = {k: first.pairs() for k, (_, first) in self._trace.items()}
            self._trace = None

    def _wrote(self, mem: str, lo: int, hi: int):
        d = self._dirty[mem]
        d[0], d[1] = min(d[0], lo), max(d[1], hi)

    def _span(self, mem: str, lo: int, nbytes: int, what: str) -> tuple[int, int]:
        size = self.banks[mem].shape[1]
        if lo < 0 or nbytes < 0 or lo + nbytes > size:
            raise ExecutionError(f"{what} [{lo}, {lo + nbytes}) is outside {mem} ({size} bytes)",
                                 pc=self.pc, insn=self.text)
        if lo % 4 and what != "DMA":
            raise ExecutionError(f"{what} address {lo} in {mem} is not 4-byte aligned",
                                 pc=self.pc, insn=self.text)
        return lo, lo + nbytes

    def _arr(self, mem: str, lo: int, shape: tuple, dtype, what: str) -> np.ndarray:
        """``[n, *shape]``: the batch's views of ``shape`` elements at ``mem[lo]``."""
        dtype = np.dtype(dtype)
        a, b = self._span(mem, lo, math.prod(shape) * dtype.itemsize, what)
        self.acc.append((mem, a, b, False))
        bank = self.banks[mem]
        if mem == "WGT" and len(bank) > 1 and self._same_rows(mem, a, b):    # row 0's, read-only
            return np.broadcast_to(bank[:1, a:b].view(dtype).reshape((1,) + tuple(shape)),
                                   (len(bank),) + tuple(shape))
        return bank[:, a:b].view(dtype).reshape((len(bank),) + tuple(shape))

    def _f32(self, mem: str, lo: int, shape: tuple, what: str) -> np.ndarray:
        return self._arr(mem, lo, shape, F32, what)

    def _put(self, mem: str, lo: int, value: np.ndarray, what: str):
        """Write ``value`` ``[n, ...]`` (one row per input) at ``mem[lo]``."""
        bank = self.banks[mem]
        value = np.ascontiguousarray(value).reshape(len(bank), -1)
        a, b = self._span(mem, lo, value.nbytes // len(bank), what)
        self.acc.append((mem, a, b, True))
        if mem == "WGT":
            self._set_same(a, b, False)     # (before the write: it copies row 0 of what was equal)
        bank[:, a:b] = value.view(np.uint8)

    def _out(self, mem: str, lo: int, shape: tuple, dtype, what: str) -> np.ndarray:
        """``[n, *shape]``: writable views of ``mem[lo]`` for a kernel to write its result
        in place (checked and recorded as :meth:`_put`'s write; not WGT, whose rows may be
        shared)."""
        if mem == "WGT":
            raise ValueError("kernels write WGT with _put")
        dtype = np.dtype(dtype)
        a, b = self._span(mem, lo, math.prod(shape) * dtype.itemsize, what)
        self.acc.append((mem, a, b, True))
        bank = self.banks[mem]
        return bank[:, a:b].view(dtype).reshape((len(bank),) + tuple(shape))

    def _write_inputs(self, arrays: dict):
        """Copy each input (``(n,) + shape``) into its rows of DRAM."""
        dram = self.banks["DRAM"]
        for t in self.p.inputs:
            a = np.ascontiguousarray(arrays[t.name], dtype=t.dtype)
            dram[:, t.addr:t.addr + t.nbytes] = a.reshape(len(dram), -1).view(np.uint8)
            self._wrote("DRAM", t.addr, t.addr + t.nbytes)
            if self._trace is not None:
                self._trace["DRAM"][0].add(t.addr, t.addr + t.nbytes)

    def _read(self, t) -> np.ndarray:
        """Output tensor ``t`` of every input: ``(n,) + shape``."""
        raw = self.banks["DRAM"][:, t.addr:t.addr + t.nbytes]
        return raw.view(np.dtype(t.dtype).newbyteorder("<")).reshape((len(raw),) + tuple(t.shape)).copy()
