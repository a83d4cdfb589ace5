"""SWIS weight math: Shared Weight bIt Sparsity (Li, Romaszkan, Graening, Gupta,
arXiv 2103.01308; papers.md section 3).  Pure NumPy functions, no TVM.

Quantization.  Weights are first quantized symmetrically per output channel to
sign-magnitude integers with 8 magnitude bits::

    scale_c = max|w_c| / 255            (a zero channel gets scale 1 and q = 0)
    q       = rint(w / scale_c)         in [-255, 255]

Groups.  A group is M (= 4) consecutive input channels of one filter at one
kernel position (``groups_view``; the input channels are zero-padded up to a
multiple of M, and zeros are always representable, so padding costs nothing).

Decomposition.  A group shares S bit positions ("shifts") ``s_0 < ... < s_{S-1}``
out of 0..7; each weight keeps a sign bit and one mask bit per shift::

    w_i = sign_i * sum_j m_i[j] * 2^(s_j)

so the representable magnitudes are the 2^S subset sums of ``{2^s_j}``
(``representable``).  For every candidate shift set (all C(8, S) sets, or for
SWIS-C the 8 - S + 1 consecutive sets ``{o, ..., o + S - 1}``), each weight's
magnitude is snapped to the nearest representable magnitude, keeping its sign,
and the set with the least

    MSE++ = (1/M) * [alpha * (sum_i e_i)^2 + sum_i e_i^2],   e_i = q_i - snapped_i

is kept (alpha = 1, the paper's untuned value).  Tie rules:

* snapping: a magnitude exactly half-way between two representable magnitudes
  snaps to the **smaller** one (towards zero);
* shift sets: among sets with equal MSE++ the **first** in
  ``itertools.combinations(range(8), S)`` order (for SWIS-C: the smallest
  offset ``o``) wins.

Note that MSE++ need not fall monotonically with S for a single group (a
finer set removes error per weight, but the signed errors may stop cancelling);
in practice, summed over a layer, it falls steeply.  SWIS-C's error is never
below SWIS's for the same S (its candidates are a subset).

Scheduling.  Filters that run together on the PE array (``pe_cols`` filters
side by side) must share a shift count.  ``schedule_shift_counts`` starts every
filter at ``ceil(target)`` and greedily lowers, one step at a time, the filter
whose next lower count increases its summed MSE++ the least (ties: lowest filter
index) until ``mean(counts) <= target``; filters are then sorted by count
(stable) into the PE order and bucketed into PE groups of ``pe_cols``
consecutive filters.  In a mixed group every filter takes the group's **max**
count: that costs no extra time (the group runs max-count passes anyway) and
only improves accuracy, but it means the final average count can exceed the
target slightly (``SwisResult.mean_count`` vs ``mean_count_scheduled``).

Timing and storage (the machine's side: ``target_dlac.isa.cycles`` costs SACC, and
``target_dlac.isa.blocks`` packs the groups).  A PE group takes one pass per shift on a
single-shift PE and ``ceil(S/2)`` passes on a double-shift PE, for each of its weight
groups.  Storage is about ``1 + S + 3*S/M`` bits per weight (sign, S mask bits, and S
3-bit shift values shared by M weights).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from functools import cache
from itertools import combinations

import numpy as np

from target_dlac.isa.formats import SWIS_BITS, SWIS_GROUP, SWIS_MAX_MAGNITUDE
from target_dlac.isa.machine import DEFAULT

BITS = SWIS_BITS         # magnitude bits of the sign-magnitude weight (8)
QMAX = SWIS_MAX_MAGNITUDE   # 255
M = SWIS_GROUP           # weights per group (4)
NO_SHIFT = 255           # padding value in SwisResult.shifts for filters with fewer shifts


# ----------------------------------------------------------------------------- quantization

def quantize_magnitudes(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization to 8 magnitude bits plus a sign.

    Returns ``(q, scale)``: ``q`` int16 of ``w``'s shape in [-255, 255],
    ``scale`` float32 of length ``w.shape[axis]`` with ``scale = max|w_c| / 255``
    (1.0 for an all-zero channel, whose ``q`` is 0); ``w ~ scale * q``.
    """
    w = np.asarray(w)
    wm = np.moveaxis(w.astype(np.float64, copy=False), axis, 0)
    flat = wm.reshape(wm.shape[0], -1)
    amax = np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(flat.shape[0])
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.rint(flat / scale.astype(np.float64)[:, None])
    q = np.clip(q, -QMAX, QMAX).astype(np.int16)
    return np.moveaxis(q.reshape(wm.shape), 0, axis), scale


def dequantize(values: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """``scale * values`` broadcast along ``axis``, float32."""
    shape = [1] * values.ndim
    shape[axis] = -1
    return (values.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)).astype(np.float32)


# ----------------------------------------------------------------------------- groups

def groups_view(q: np.ndarray, axis: int = 0, m: int = M) -> np.ndarray:
    """Group weights into ``[F, G, M]``: M consecutive input channels at one kernel position.

    ``q`` is OIHW ``[F, C, KH, KW]`` (any number of kernel dims) or dense
    ``[F, K]``, with the output channel on ``axis`` (moved first).  Input
    channels are zero-padded up to a multiple of ``m``.  Group index
    ``g = kpos * ceil(C/m) + c // m`` (kernel positions in C order).
    """
    q = np.moveaxis(np.asarray(q), axis, 0)
    if q.ndim < 2:
        raise ValueError(f"weights need an output and an input channel axis, got shape {q.shape}")
    f, c = q.shape[:2]
    t = np.moveaxis(q, 1, -1)                      # [F, *K, C]
    cp = -(-c // m) * m
    if cp != c:
        pad = [(0, 0)] * (t.ndim - 1) + [(0, cp - c)]
        t = np.pad(t, pad)
    return np.ascontiguousarray(t).reshape(f, -1, m)


def ungroup(groups: np.ndarray, shape: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """Inverse of ``groups_view``: ``[F, G, M]`` back to ``shape`` (output channel on ``axis``)."""
    shape = tuple(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(axis))
    f, c, kdims = moved[0], moved[1], moved[2:]
    m = groups.shape[-1]
    cp = -(-c // m) * m
    t = groups.reshape(f, *kdims, cp)[..., :c]     # [F, *K, C]
    return np.ascontiguousarray(np.moveaxis(np.moveaxis(t, -1, 1), 0, axis))


# ----------------------------------------------------------------------------- shift sets

def representable(shifts) -> np.ndarray:
    """Sorted unique subset sums of ``{2^s : s in shifts}`` (including 0 for the empty subset)."""
    sums = np.zeros(1, dtype=np.int64)
    for s in np.asarray(shifts, dtype=np.int64).ravel():
        sums = np.concatenate([sums, sums + (1 << int(s))])
    return np.unique(sums)


def shift_sets(s: int, consecutive: bool = False) -> np.ndarray:
    """Candidate sets ``[K, S]`` uint8 in tie-break order (combinations order / offset order)."""
    if not 0 <= s <= BITS:
        raise ValueError(f"shift count {s} outside 0..{BITS}")
    if consecutive:
        sets = [tuple(range(o, o + s)) for o in range(BITS - s + 1)]
    else:
        sets = list(combinations(range(BITS), s))
    return np.array(sets, dtype=np.uint8).reshape(len(sets), s)


def snap_magnitude_table(shifts) -> np.ndarray:
    """``table[a]`` = nearest representable magnitude to ``a`` in 0..255 (ties: the smaller)."""
    reps = representable(shifts)
    a = np.arange(QMAX + 1, dtype=np.int64)
    # argmin returns the first minimum; reps is ascending, so ties go to the smaller magnitude
    return reps[np.abs(a[:, None] - reps[None, :]).argmin(axis=1)]


@cache
def _tables(s: int, consecutive: bool):
    """(sets [K,S] uint8, signed-error table [K, 511] int64 indexed by q + 255)."""
    sets = shift_sets(s, consecutive)
    q = np.arange(-QMAX, QMAX + 1, dtype=np.int64)
    err = np.empty((len(sets), q.size), dtype=np.int64)
    for k, st in enumerate(sets):
        snapped = np.sign(q) * snap_magnitude_table(st)[np.abs(q)]
        err[k] = q - snapped
    sets.setflags(write=False)
    err.setflags(write=False)
    return sets, err


# Packed per-weight table entry: e * 2^PACK + e^2.  |e| <= 254, so over a group of
# four sum(e^2) <= 258064 < 2^18 and |sum e| * 2^18 < 2^31: one int32 add gives both sums.
_PACK = 18
_CHUNK = 4096   # groups per block: the [block, K] working arrays stay in cache


def decompose(groups: np.ndarray, s: int, consecutive: bool = False,
              alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best shift set per group by exhaustive search (module docstring for the rules).

    ``groups`` ``[..., M]`` signed integers in [-255, 255] (usually ``[F, G, M]``).
    Returns ``(shift_sets [..., S] uint8, snapped [..., M] int16, mse [...] float64)``
    where ``mse`` is the group's MSE++.  All candidate sets are scored at once per
    block of groups; ``argmin`` returns the first minimum, i.e. the first set in
    candidate order, which is the documented tie rule.
    """
    g = np.asarray(groups)
    if g.size and (g.min() < -QMAX or g.max() > QMAX):
        raise ValueError("group values must lie in [-255, 255]")
    lead, m = g.shape[:-1], g.shape[-1]
    sets, err = _tables(int(s), bool(consecutive))
    idx = g.reshape(-1, m).astype(np.intp) + QMAX               # [N, M] table rows
    n = idx.shape[0]
    packed_ok = m <= 4
    int_alpha = float(alpha).is_integer() and 0 <= alpha <= 1000 and packed_ok
    if packed_ok:
        table = np.ascontiguousarray(((err << _PACK) + err * err).astype(np.int32).T)  # [511, K]
    else:
        table = np.ascontiguousarray(err.T)
    best_k = np.empty(n, dtype=np.intp)
    best_cost = np.empty(n, dtype=np.float64)
    lo_mask = (1 << _PACK) - 1
    for start in range(0, n, _CHUNK):
        ix = idx[start:start + _CHUNK].T                         # [M, c]
        if packed_ok:
            tot = table[ix].sum(axis=0, dtype=np.int32)          # [c, K]
            se = tot >> _PACK                                    # sum of errors (arithmetic shift)
            cost = tot & lo_mask                                 # sum of squared errors
            se *= se
            if int_alpha:
                cost += int(alpha) * se                          # < 2^31 for alpha <= 1000
            else:
                cost = cost + float(alpha) * se
        else:
            e = table[ix]                                        # [M, c, K] int64
            cost = float(alpha) * e.sum(axis=0).astype(np.float64) ** 2 + (e * e).sum(axis=0)
        k = cost.argmin(axis=1)                                  # first minimum wins ties
        best_k[start:start + _CHUNK] = k
        best_cost[start:start + _CHUNK] = np.take_along_axis(cost, k[:, None], axis=1)[:, 0]
    e = err[best_k[:, None], idx]                                # [N, M] chosen signed errors
    snapped = (g.reshape(-1, m).astype(np.int64) - e).astype(np.int16)
    return (sets[best_k].reshape(*lead, sets.shape[1]),
            snapped.reshape(*lead, m),
            (best_cost / m).reshape(lead))


# ----------------------------------------------------------------------------- scheduling

def _greedy_lower(costs_by_count: dict[int, np.ndarray], target: float) -> np.ndarray:
    """Counts after greedy lowering from ceil(target) until mean(counts) <= target."""
    costs = {int(k): np.asarray(v, dtype=np.float64) for k, v in costs_by_count.items()}
    start = math.ceil(target - 1e-9)
    if start not in costs:
        raise ValueError(f"no costs for the starting count {start} (= ceil(target {target}))")
    f = costs[start].shape[0]
    counts = np.full(f, start, dtype=np.int64)
    budget = math.floor(target * f + 1e-9)       # sum(counts) <= target * F
    need = int(counts.sum()) - budget
    heap = []

    def push(i):
        c = int(counts[i])
        if c - 1 in costs and c - 1 >= 0:
            heapq.heappush(heap, (float(costs[c - 1][i] - costs[c][i]), i))

    for i in range(f):
        push(i)
    while need > 0:
        if not heap:
            raise ValueError(f"cannot reach an average of {target} with counts {sorted(costs)}")
        _, i = heapq.heappop(heap)
        counts[i] -= 1
        need -= 1
        push(i)
    return counts


def _raise_to_group_max(counts: np.ndarray, pe_cols: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(counts, kind="stable")
    c = counts[order]
    f = c.size
    ngroups = -(-f // pe_cols)
    padded = np.concatenate([c, np.full(ngroups * pe_cols - f, c.min() if f else 0, c.dtype)])
    gmax = padded.reshape(ngroups, pe_cols).max(axis=1)
    final = np.empty_like(counts)
    final[order] = np.repeat(gmax, pe_cols)[:f]
    return final, order


def schedule_shift_counts(costs_by_count: dict[int, np.ndarray], target: float,
                          pe_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-filter shift counts for a layer whose average count should be ``target``.

    ``costs_by_count[S][f]`` is filter ``f``'s summed MSE++ at S shifts.  Every
    filter starts at ``ceil(target)``; the filter whose next lower count (which
    must be a key of ``costs_by_count``) adds the least cost is lowered, one step
    at a time (ties: lowest filter index), until ``mean(counts) <= target``.
    The PE order is the filters sorted by count (stable); each PE group of
    ``pe_cols`` consecutive filters in that order is then raised to its max
    count, so the returned average can exceed ``target`` slightly.

    Returns ``(counts [F] int64, pe_order [F] intp)``: ``pe_order[p]`` is the
    filter at PE position ``p``.
    """
    if pe_cols < 1:
        raise ValueError("pe_cols must be >= 1")
    return _raise_to_group_max(_greedy_lower(costs_by_count, target), pe_cols)


# ----------------------------------------------------------------------------- whole layer

@dataclass
class SwisResult:
    weights: np.ndarray        # dequantized float32, shape of the input: scale * values
    values: np.ndarray         # snapped integers int16 in [-255, 255], shape of the input
    scale: np.ndarray          # float32 [F] per output channel
    counts: np.ndarray         # int64 [F] final shift count per filter (after the PE-group raise)
    pe_order: np.ndarray       # intp [F]: filter at each PE position
    shifts: np.ndarray         # uint8 [F, G, max(counts)] per group, padded with NO_SHIFT
    group_mse: np.ndarray      # float64 [F, G] MSE++ per group
    mse: float                 # total MSE++ (sum over groups)
    target: float
    mean_count: float          # mean(counts), may exceed target after the raise
    mean_count_scheduled: float  # mean count after the greedy lowering, <= target
    m: int = M

    def filter_shifts(self, f: int) -> np.ndarray:
        """``[G, counts[f]]`` shift sets of filter ``f``."""
        return self.shifts[f, :, : int(self.counts[f])]


def swis_quantize(w: np.ndarray, S_target: float, axis: int = 0, consecutive: bool = False,
                  pe_cols: int = DEFAULT.pe_cols, s_max: int = BITS, *, m: int = M, alpha: float = 1.0,
                  s_min: int | None = None) -> SwisResult:
    """SWIS (or SWIS-C) quantization of one layer's weights at an average of ``S_target`` shifts.

    Decompositions are computed for counts ``s_min .. ceil(S_target)``; ``s_min``
    defaults to ``floor(S_target)`` (so a fractional target mixes its floor and
    ceil, an integer one uses that count only).  Pass a smaller ``s_min`` to let
    the greedy scheduler go further down on cheap filters.
    """
    if not 1 <= S_target <= s_max <= BITS:
        raise ValueError(f"need 1 <= S_target ({S_target}) <= s_max ({s_max}) <= {BITS}")
    w = np.asarray(w)
    q, scale = quantize_magnitudes(w, axis)
    g = groups_view(q, axis, m)
    hi = math.ceil(S_target - 1e-9)
    lo = math.floor(S_target + 1e-9) if s_min is None else int(s_min)
    lo = max(0, min(lo, hi))
    decs = {s: decompose(g, s, consecutive, alpha) for s in range(lo, hi + 1)}
    costs = {s: d[2].sum(axis=1) for s, d in decs.items()}
    scheduled = _greedy_lower(costs, S_target)
    counts, order = _raise_to_group_max(scheduled, pe_cols)
    f, ng, _ = g.shape
    smax = int(counts.max()) if f else 0
    shifts = np.full((f, ng, smax), NO_SHIFT, dtype=np.uint8)
    snapped = np.zeros_like(g, dtype=np.int16)
    gmse = np.zeros((f, ng))
    for s, (sets, vals, mse) in decs.items():
        sel = counts == s
        if sel.any():
            shifts[sel, :, :s] = sets[sel]
            snapped[sel] = vals[sel]
            gmse[sel] = mse[sel]
    values = ungroup(snapped, w.shape, axis)
    return SwisResult(weights=dequantize(values, scale, axis), values=values, scale=scale,
                      counts=counts, pe_order=order, shifts=shifts, group_mse=gmse,
                      mse=float(gmse.sum()), target=float(S_target),
                      mean_count=float(counts.mean()) if f else 0.0,
                      mean_count_scheduled=float(scheduled.mean()) if f else 0.0, m=m)
