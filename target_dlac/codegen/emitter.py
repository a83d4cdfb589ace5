"""From data dependencies to dependency tokens and one instruction stream.

A lowering describes one layer as three in-order queues with the data each
instruction waits for:

* a load waits until the compute instruction that last read the slot it overwrites
  has finished (``free_after``, a compute index);
* a compute instruction waits for the last load of its operands (``after_load``)
  and, when it starts a new accumulator slot, for the store that emptied that slot
  (``after_store``);
* a store waits for the compute instruction that produced its tile (``after_ex``).

:meth:`Segment.finish` turns these into token bits.  Tokens are FIFO counters, so each
queue pops only when its requirement grows past the previous one (a running
maximum): the k-th pop then matches the k-th push, and in-order units make every
earlier requirement hold too.  The three queues are merged into one program order
in which every producer precedes its consumer, then ``SYNC`` closes the segment.
A compute instruction may carry a ``tag`` (e.g. the weight block it reads); the
:class:`Lowered` result keeps the tags beside the instructions, in program order.
"""

from __future__ import annotations

from dataclasses import dataclass

from target_dlac.isa.encoding import Insn


@dataclass
class _Load:
    insn: Insn
    free_after: int


@dataclass
class _Ex:
    insn: Insn
    after_load: int
    after_store: int
    tag: object = None


@dataclass
class _Store:
    insn: Insn
    after_ex: int


class Segment:
    def __init__(self):
        self.lds: list[_Load] = []
        self.exs: list[_Ex] = []
        self.sts: list[_Store] = []

    def load(self, fields: dict, free_after: int = -1) -> int:
        self.lds.append(_Load(Insn("LOAD", dict(fields)), free_after))
        return len(self.lds) - 1

    def compute(self, insn: Insn, after_load: int = -1, after_store: int = -1, tag=None) -> int:
        self.exs.append(_Ex(insn, after_load, after_store, tag))
        return len(self.exs) - 1

    def store(self, fields: dict, after_ex: int) -> int:
        self.sts.append(_Store(Insn("STORE", dict(fields)), after_ex))
        return len(self.sts) - 1

    def _tokens(self):
        def link(consumers, req_of, producers, pop_attr, push_attr):
            best = -1
            for c in consumers:
                r = req_of(c)
                if r > best:
                    setattr(c.insn, pop_attr, 1)
                    setattr(producers[r].insn, push_attr, 1)
                    best = r

        link(self.exs, lambda e: e.after_load, self.lds, "pop_prev", "push_next")
        link(self.lds, lambda l: l.free_after, self.exs, "pop_next", "push_prev")
        link(self.sts, lambda s: s.after_ex, self.exs, "pop_prev", "push_next")
        link(self.exs, lambda e: e.after_store, self.sts, "pop_next", "push_prev")

    def finish(self) -> Lowered:
        """Token bits set; one program order; ``SYNC`` at the end."""
        self._tokens()
        out: list[Insn] = []
        tags: list = []
        li = si = 0

        def put(insn, tag=None):
            out.append(insn)
            tags.append(tag)

        for j, ex in enumerate(self.exs):
            while li < len(self.lds) and li <= ex.after_load:
                ld = self.lds[li]
                assert ld.free_after < j, "a load overwrites data its own consumer still needs"
                put(ld.insn)
                li += 1
            assert ex.after_store < si, "a compute instruction waits for a store not yet issued"
            put(ex.insn, ex.tag)
            while si < len(self.sts) and self.sts[si].after_ex <= j:
                put(self.sts[si].insn)
                si += 1
        for ld in self.lds[li:]:
            put(ld.insn)
        for st in self.sts[si:]:
            put(st.insn)
        put(Insn("SYNC"))
        return Lowered(out, tags)


class Lowered(list):
    """A segment's instructions in program order (a ``list`` of :class:`Insn`), with
    ``tags``: for each instruction, the tag its lowering gave it (:meth:`Segment.compute`),
    ``None`` for the others."""

    def __init__(self, insns=(), tags=None):
        super().__init__(insns)
        self.tags = [None] * len(self) if tags is None else list(tags)


class SlotSet:
    """Round-robin slots of one buffer region, remembering what each holds, which load
    filled it and which compute instruction last read it."""

    def __init__(self, base: int, size: int, count: int):
        self.base, self.size, self.count = base, size, count
        self.keys = [None] * count
        self.filled_by = [-1] * count
        self.last_use = [-1] * count
        self.next = 0

    def addr(self, slot: int) -> int:
        return self.base + slot * self.size

    def find(self, key):
        for i, k in enumerate(self.keys):
            if k == key:
                return i
        return None

    def take(self, key) -> tuple[int, int]:
        """Claim the next slot for ``key``; returns (slot, compute index it must wait for)."""
        slot = self.next
        self.next = (self.next + 1) % self.count
        free_after = self.last_use[slot]
        self.keys[slot], self.filled_by[slot], self.last_use[slot] = key, -1, -1
        return slot, free_after

    def use(self, slot: int, ex: int):
        self.last_use[slot] = max(self.last_use[slot], ex)
