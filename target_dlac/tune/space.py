"""The schedule space of one layer: the candidate :class:`~target_dlac.codegen.schedule.Schedule`
objects the autotuner (:mod:`target_dlac.tune.search`) chooses from.

The grid (``k`` = number of tiles, ``max_splits`` = 4 by default):

* ``f_tile``: multiples of ``pe_cols`` up to ``F`` (at most ``max_splits`` of them, the
  largest ones: every PE column busy) and the even splits ``ceil(F / k)``, ``k = 1..max_splits``;
* ``c_tile``: the even splits ``ceil(C / k)``; SWIS layers: those rounded up to a multiple
  of 4 (or ``C``); depthwise layers: fixed at ``min(f_tile, C)`` (the codegen ignores it,
  each filter reads its own channel);
* ``h_tile`` / ``w_tile``: the even splits ``ceil(OH / k)`` / ``ceil(OW / k)``;
* ``order``: ``spatial_outer``, ``filter_outer``; ``double_buffer``: on, off;
* ``pxshift`` (PE-array mapping, :meth:`Machine.pe_grid`): 0 (16 pixel rows x 32
  filter columns), and for small output planes (fewer than ``SMALL_PLANE_ROWS *
  pe_rows`` pixels) also the middle and the largest shift (4 x 128, 1 x 512);
* grouped convolutions (``groups`` = G): the same grid over one group, ``F / G`` filters
  and ``C / G`` input channels (a tile never straddles two groups);
* ``pe_order``: ``as_is``, ``sorted`` for ternary and SWIS layers (by non-zero or shift
  count); only ``sorted`` for dense layers, where the filter order changes no cost.  A
  third filter-to-PE assignment, greedy balanced bins (largest filter first onto the
  least-loaded PE column), is left out on purpose: a TACC (SACC) costs the sum over
  consecutive groups of ``pe_cols`` filters of the group's largest count (step count),
  which the sorted order minimizes over every permutation, so balanced bins can only tie
  or lose (``tests/tune/test_costmodel.py::test_sorted_pe_order_is_optimal``
  checks both claims).

The default schedule's own tile sizes are added to each list, so the default is always
a point of the space (exhaustive search never misses it).  With ``max_splits = 4`` a
conv layer has at most about 8 x 4 x 4 x 4 x 2 x 2 x 2 (~4 000) raw combinations (x 3
PE mappings on small planes), small enough to search exhaustively with the analytic
cost model and its bound (seconds per layer).  Every schedule this class offers (iteration, :meth:`random`, :meth:`neighbors`,
:meth:`default`) passed :func:`schedule.check`; invalid ones are never handed out, so
they are never costed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from target_dlac.isa.cycles import ceil_div
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import MAX_DIM, ORDERS, PE_ORDERS, ConvShape, Schedule, default_schedule, even_splits, fits


#: PE mappings other than the classic one (pxshift 0) are offered for output planes of
#: fewer than this many rows of pixels per PE row (e.g. 14x14 and 7x7 on 16 rows): there a
#: tile's pixels fill the 16 pixel rows poorly (49 pixels take 4 passes of 16), while a
#: large plane fills them whatever the mapping.
SMALL_PLANE_ROWS = 16


class ScheduleSpace:
    """Candidate schedules of ``shape`` on ``machine`` (``wbytes(f_tile, c_tile)`` = the
    largest weight block, e.g. ``LayerWeights(w, ternary, depthwise).max_bytes``).
    See the module docstring for the grid."""

    def __init__(self, shape: ConvShape, machine: Machine, wbytes, max_splits: int = 4):
        self.shape, self.machine, self.wbytes = shape, machine, wbytes
        self._default = default_schedule(shape, machine, wbytes)
        d = self._default
        F, C = min(shape.fg, MAX_DIM), min(shape.cg, MAX_DIM)        # grouped: of one group
        pc = machine.pe_cols
        mult = [pc * j for j in range(1, F // pc + 1)][-max_splits:]
        self.f_opts = sorted(set(mult) | set(even_splits(F, max_splits)) | {d.f_tile})
        if shape.depthwise:
            self.c_opts = None                      # c_tile = min(f_tile, C)
        elif shape.swis:
            self.c_opts = sorted({min(C, ceil_div(v, 4) * 4) for v in even_splits(C, max_splits)}
                                 | {d.c_tile})
        else:
            self.c_opts = sorted(set(even_splits(C, max_splits)) | {d.c_tile})
        self.h_opts = sorted(set(even_splits(min(shape.oh, MAX_DIM), max_splits)) | {d.h_tile})
        self.w_opts = sorted(set(even_splits(min(shape.ow, MAX_DIM), max_splits)) | {d.w_tile})
        self.order_opts = list(ORDERS)
        self.db_opts = [False, True]
        self.pe_opts = list(PE_ORDERS) if shape.ternary or shape.swis else [d.pe_order]
        top = machine.max_pxshift
        small = shape.oh * shape.ow < SMALL_PLANE_ROWS * machine.pe_rows
        self.px_opts = sorted({0, top // 2, top}) if small else [0]
        self._valid: dict[Schedule, bool] = {}

    # ---------------------------------------------------------------- basics
    def _lists(self) -> list[list]:
        return [self.f_opts, self.c_opts or [None], self.h_opts, self.w_opts, self.order_opts,
                self.db_opts, self.pe_opts, self.px_opts]

    def size(self) -> int:
        """Number of raw (not yet validated) combinations of the grid."""
        n = 1
        for lst in self._lists():
            n *= len(lst)
        return n

    def valid(self, s: Schedule) -> bool:
        """``schedule.check`` passes (memoized)."""
        ok = self._valid.get(s)
        if ok is None:
            ok = self._valid[s] = fits(self.shape, s, self.machine, self.wbytes)
        return ok

    def _make(self, f, c, h, w, order, db, pe, px=0) -> Schedule:
        if self.c_opts is None:
            c = min(f, self.shape.c)
        return Schedule(f, c, h, w, order=order, double_buffer=db, pe_order=pe, pxshift=px)

    def default(self) -> Schedule:
        """The greedy default (:func:`schedule.default_schedule`)."""
        return self._default

    def __iter__(self):
        """Valid schedules of the grid, lazily, in grid order."""
        for combo in itertools.product(*self._lists()):
            s = self._make(*combo)
            if self.valid(s):
                yield s

    def __contains__(self, s: Schedule) -> bool:
        return self.valid(s)

    # ---------------------------------------------------------------- sampling
    def random(self, rng, tries: int = 1000) -> Schedule | None:
        """A uniformly drawn grid point that is valid, by rejection (at most ``tries``
        draws); ``None`` if none of the draws was valid."""
        lists = self._lists()
        for _ in range(tries):
            s = self._make(*(rng.choice(lst) for lst in lists))
            if self.valid(s):
                return s
        return None

    def neighbors(self, s: Schedule, rng=None) -> list[Schedule]:
        """Valid schedules that differ from ``s`` in one dimension by one step: a tile size
        moved to the next smaller / larger grid value (the nearest ones when ``s``'s value is
        off the grid), or a categorical dimension switched.  Shuffled with ``rng`` if given."""
        out = []
        sh = self.shape
        for name, lst in (("f_tile", self.f_opts), ("c_tile", self.c_opts),
                          ("h_tile", self.h_opts), ("w_tile", self.w_opts)):
            if lst is None:
                continue
            v = getattr(s, name)
            lower = [x for x in lst if x < v]
            higher = [x for x in lst if x > v]
            for x in ([lower[-1]] if lower else []) + ([higher[0]] if higher else []):
                n = replace(s, **{name: x})
                if name == "f_tile" and self.c_opts is None:
                    n = replace(n, c_tile=min(x, sh.c))
                out.append(n)
        for name, lst in (("order", self.order_opts), ("double_buffer", self.db_opts),
                          ("pe_order", self.pe_opts), ("pxshift", self.px_opts)):
            for x in lst:
                if x != getattr(s, name):
                    out.append(replace(s, **{name: x}))
        out = [n for n in dict.fromkeys(out) if n != s and self.valid(n)]
        if rng is not None:
            rng.shuffle(out)
        return out
