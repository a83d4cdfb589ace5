"""A layer's weights as the codegen tiles them: block sizes under any tiling, the
filters' non-zero counts per tile, and the filter-to-PE order.

Used by the codegen (packing, schedule fitting), the analytic cost model and the
autotuner; built once per layer (the non-zero counts are cumulated over input
channels once, so any tile's counts are a subtraction).
"""

from __future__ import annotations

import functools

import numpy as np

from target_dlac.core.plan import WeightFormat
from target_dlac.isa.blocks import swis_block_bytes, swis_filter_bytes, swis_groups, ternary_block_bytes
from target_dlac.isa.formats import facts
from target_dlac.codegen.schedule import ConvShape, Schedule, ranges, weight_tiles


def _pad4(n):
    return (n + 3) // 4 * 4


def order_by_counts(counts: np.ndarray, how: str) -> np.ndarray:
    """Filter order on the PE columns: as given, or by count (largest first, stable)."""
    if how == "as_is":
        return np.arange(len(counts))
    return np.argsort(-np.asarray(counts), kind="stable")


def pe_order(tile: np.ndarray, how: str) -> np.ndarray:
    """PE order of the filters of a weight tile (by non-zero count for ``sorted``)."""
    return order_by_counts(np.count_nonzero(tile.reshape(tile.shape[0], -1), axis=1), how)


def _legacy_format(w: np.ndarray, ternary: bool, swis) -> WeightFormat:
    """The format of a ``LayerWeights`` built without one (the old signature, kept for the
    callers that pass only ``ternary`` / ``swis``): dense blocks by their array's dtype."""
    if swis is not None:
        return WeightFormat.SWIS
    if ternary:
        return WeightFormat.TERNARY
    return WeightFormat.INT8 if w.dtype == np.int8 else WeightFormat.FLOAT32


class LayerWeights:
    """``w``: OIHW weights as the codegen stores them (ternary int8, SWIS int16 with its
    decomposition ``swis``, or dense float32 / int8) in weight format ``fmt`` (the layer
    plan's; ``ternary`` and ``swis`` must agree with it).  ``groups``: a grouped
    convolution's groups (``w`` is ``[F, C / G, KH, KW]``; filter tiles lie within a group,
    :func:`schedule.filter_tiles`)."""

    def __init__(self, w: np.ndarray, ternary: bool, depthwise: bool, swis=None, *,
                 fmt: WeightFormat | None = None, groups: int = 1):
        self.w, self.ternary, self.depthwise, self.swis = w, ternary, depthwise, swis
        self.groups = int(groups)
        if self.groups < 1 or w.shape[0] % self.groups:
            raise ValueError(f"{w.shape[0]} filters do not split into {groups} groups")
        self.fmt = WeightFormat(fmt) if fmt is not None else _legacy_format(w, ternary, swis)
        if (self.fmt is WeightFormat.TERNARY) != bool(ternary) or \
                (self.fmt is WeightFormat.SWIS) != (swis is not None):
            raise ValueError(f"weight format {self.fmt} disagrees with ternary={ternary}, "
                             f"swis={'given' if swis is not None else None}")
        self.bytes_per_weight = facts(self.fmt).bytes_per_weight      # dense blocks
        self._largest: dict = {}
        self._blocks: dict = {}

    @functools.cached_property
    def _cum(self) -> np.ndarray:
        """``[F, C + 1]`` prefix sums over input channels of each filter's non-zero weights
        (int32 when every count fits: half the memory of a 25088 x 4096 dense layer's)."""
        w = self.w
        dt = np.int32 if w.size < 2 ** 31 else np.int64
        cum = np.zeros((w.shape[0], w.shape[1] + 1), dt)
        np.cumsum(np.count_nonzero(w.reshape(w.shape[0], w.shape[1], -1), axis=2), axis=1, dtype=dt,
                  out=cum[:, 1:])
        return cum

    @functools.cached_property
    def _cum2(self) -> np.ndarray:
        """``[F + 1, C + 1]`` prefix sums over filters and input channels."""
        cum2 = np.zeros((self._cum.shape[0] + 1, self._cum.shape[1]), self._cum.dtype)
        np.cumsum(self._cum, axis=0, out=cum2[1:])
        return cum2

    def tile_counts(self, f: tuple, c: tuple) -> np.ndarray:
        """Non-zero weights of filters ``f0:f1`` over input channels ``c0:c1``."""
        (f0, f1), (c0, c1) = f, c
        return self._cum[f0:f1, c1] - self._cum[f0:f1, c0]

    def block_bytes(self, f: tuple, c: tuple) -> int:
        """Bytes of the packed weight block of filters ``f`` x input channels ``c``."""
        (f0, f1), (c0, c1) = f, c
        kh, kw = self.w.shape[2:]
        if self.swis is not None:
            return swis_block_bytes(self.swis.counts[f0:f1], swis_groups(c1 - c0, kh, kw))
        if self.ternary:
            return ternary_block_bytes(f1 - f0, int(self.tile_counts(f, c).sum()))
        return (f1 - f0) * (c1 - c0) * kh * kw * self.bytes_per_weight

    def max_bytes(self, f_t: int, c_t: int) -> int:
        """The largest block of any tile of ``f_t`` filters x ``c_t`` input channels (the
        ``wbytes`` of :func:`schedule.check`; memoized)."""
        got = self._largest.get((f_t, c_t))
        if got is None:
            got = self._largest[(f_t, c_t)] = self._max_bytes(f_t, c_t)
        return got

    def _filter_bounds(self, f_t: int) -> np.ndarray:
        """Boundaries of the filter tiles of ``f_t`` filters (grouped: within each group)."""
        F = self.w.shape[0]
        fg = F // self.groups
        one = np.minimum(np.arange(0, fg + f_t, f_t), fg)[:len(ranges(fg, f_t)) + 1]
        if self.groups == 1:
            return one
        return np.concatenate([[0]] + [g * fg + one[1:] for g in range(self.groups)])

    def _max_bytes(self, f_t: int, c_t: int) -> int:
        F, C = self.w.shape[:2]
        kh, kw = self.w.shape[2:]
        c_t = C if self.depthwise else min(c_t, C)
        if not self.ternary and self.swis is None:       # dense: a full tile is the largest
            return min(f_t, F // self.groups) * c_t * kh * kw * self.bytes_per_weight
        fb = self._filter_bounds(f_t)
        cb = np.minimum(np.arange(0, C + c_t, c_t), C)[:len(ranges(C, c_t)) + 1]
        nf = np.diff(fb)[:, None]
        if self.swis is not None:        # per filter tile, the sum of its filters' record bytes
            best = 0
            for g in {swis_groups(int(c), kh, kw) for c in np.diff(cb)}:
                per = np.array([swis_filter_bytes(int(s), g) for s in self.swis.counts])
                cum = np.concatenate([[0], per.cumsum()])
                best = max(best, int((_pad4(nf[:, 0]) + _pad4(2 * nf[:, 0]) + cum[fb[1:]] - cum[fb[:-1]]).max()))
            return best
        p = self._cum2           # non-zeros of every (filter tile, channel tile) at once
        nnz = (p[np.ix_(fb[1:], cb[1:])] - p[np.ix_(fb[:-1], cb[1:])] - p[np.ix_(fb[1:], cb[:-1])]
               + p[np.ix_(fb[:-1], cb[:-1])]).astype(np.int64)      # only the tile corners
        size = 4 * nf + _pad4(2 * nf) + _pad4(2 * nnz) + _pad4((nnz + 3) // 4)     # ternary_block_bytes
        return int(size.max())

    def blocks(self, shape: ConvShape, s: Schedule) -> dict:
        """``{(fi, ci): (bytes, steps counts or None)}`` of the blocks packed under ``s``:
        ternary blocks carry their filters' non-zero counts, SWIS blocks their filters'
        shift counts, in PE order; dense blocks ``None`` (memoized on the tiling and PE
        order; treat the result as read-only)."""
        key = (shape, s.f_tile, s.c_tile, s.pe_order)
        got = self._blocks.get(key)
        if got is None:
            got = self._blocks[key] = self._make_blocks(shape, s)
        return got

    def block_masks(self, shape: ConvShape, s: Schedule) -> dict:
        """``{(fi, ci): (order, mask)}`` of each ternary block under ``s``: ``order[j]`` the
        tile filter on PE column ``j``, ``mask`` ``[F_t, K]`` its non-zero weights in PE
        order, ``K`` = the tile's channels x kernel positions (depthwise: the kernel
        positions) in the order a conv instruction reads them (for the cost of skipping zero
        activations, :func:`target_dlac.isa.actskip.step_matrix`)."""
        out = {}
        for fi, ci, fr, cr in weight_tiles(shape, s):
            tile = self.w[fr[0]:fr[1]] if self.depthwise else self.w[fr[0]:fr[1], cr[0]:cr[1]]
            order = order_by_counts(self.tile_counts(fr, cr), s.pe_order)
            out[(fi, ci)] = (order, (tile.reshape(tile.shape[0], -1) != 0)[order])
        return out

    def _make_blocks(self, shape: ConvShape, s: Schedule) -> dict:
        out = {}
        for fi, ci, fr, cr in weight_tiles(shape, s):
            counts = None
            if self.swis is not None:          # a SWIS filter's shift count, the same for every c tile
                counts = np.asarray(self.swis.counts, np.int64)[fr[0]:fr[1]]
            elif self.ternary:
                counts = self.tile_counts(fr, cr)
            if counts is not None:
                counts = counts[order_by_counts(counts, s.pe_order)]
            out[(fi, ci)] = (self.block_bytes(fr, cr), counts)
        return out
