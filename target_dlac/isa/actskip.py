"""Zero-activation skipping: the steps a conv instruction's PEs take once zero activations
are skipped as well as zero weights (machine parameter ``act_skip``; ``docs/isa.md``
"Activation zero-skip").

A conv instruction computes its tile's output pixels in *passes* of ``R x L`` pixels
(``R`` = the mapping's pixel rows, ``L`` = lanes for the activation type), in row-major
order of the tile: pass ``i``, PE row ``r``, lane ``l`` computes pixel
``i*R*L + r*L + l``.  In each pass every PE column walks its filter's weights (TACC: the
non-zeros; MAC: every weight; SACC: every 4-channel weight group, each for its shift
passes), one weight per *step*; each PE of the column multiplies the step's weight by
the activation its pixels read at that weight's position (channel, kernel row, kernel
column).  A step is *live* for a unit when any of the activations the unit reads at it
is non-zero (zero padding is zero):

* ``column``: the unit is the PE column: a step is skipped when all ``R x L`` pixels of
  the pass read zero at it (one zero flag per activation, OR-ed over the column);
* ``pe``: the unit is the PE: a PE skips a step when its ``L`` lanes read zero, and the
  array starts the next pass when its slowest PE is done.

:func:`step_matrix` gives ``steps[f, i]``, the steps filter ``f`` (PE column) takes in
pass ``i`` (``pe``: its slowest PE's); :func:`cycles.steps_cycles` turns them into cycles
(``compute_setup + sum_i sum_g max_{f in g} steps[f, i]`` over the groups ``g`` of filters
that run together).  Without zero activations ``steps[f, i]`` is the filter's static step
count in every pass, and the cycles are :func:`cycles.sparse_cycles` /
:func:`cycles.dense_cycles` exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from target_dlac.isa import cycles
from target_dlac.isa.encoding import Insn
from target_dlac.isa.formats import SWIS_GROUP
from target_dlac.isa.machine import Machine


def windows(x: np.ndarray, f: dict) -> np.ndarray:
    """``[..., c, kh*kw, oh*ow]``: the values each output pixel of a conv instruction (fields
    ``f``) reads from its padded input tile ``x`` ``[..., c, h + pt + pb, w + pl + pr]``
    (leading axes: a batch of inputs)."""
    kh, kw, sh, sw, oh, ow = f["kh"], f["kw"], f["sh"], f["sw"], f["oh"], f["ow"]
    lead = x.shape[:-2]
    if kh == 1 and kw == 1:
        return x[..., :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw].reshape(lead + (1, oh * ow))
    win = sliding_window_view(x, (kh, kw), axis=(-2, -1))[..., ::sh, ::sw, :, :][..., :oh, :ow, :, :]
    d = win.ndim
    win = win.transpose(tuple(range(d - 4)) + (d - 2, d - 1, d - 4, d - 3))
    return np.ascontiguousarray(win).reshape(lead + (kh * kw, oh * ow))


#: Largest tap matrix (elements) :func:`window_counts` makes for one product; larger tiles
#: take the rows and the columns in two products.
TAP_ELEMENTS = 1 << 18


def _taps(size: int, k: int, stride: int, out: int) -> np.ndarray:
    """float32 ``[size, k]``: ``t[i, q] = 1`` when kernel position ``q`` of some of ``out``
    output pixels (``stride`` apart) reads input index ``i`` along one axis."""
    t = np.zeros((size, k), np.float32)
    for q in range(k):
        t[q:q + (out - 1) * stride + 1:stride, q] = 1
    return t


@functools.lru_cache(maxsize=128)
def _tap_matrix(h: int, w: int, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int, dt) -> tuple:
    """The read-only tap matrices of :func:`window_counts`: ``(kron(rows, cols),)`` when it
    has at most :data:`TAP_ELEMENTS` entries, else ``(rows, cols)``."""
    rows, cols = _taps(h, kh, sh, oh).astype(dt), _taps(w, kw, sw, ow).astype(dt)
    out = (np.kron(rows, cols),) if h * w * kh * kw <= TAP_ELEMENTS else (rows, cols)
    for t in out:
        t.flags.writeable = False
    return out


def window_counts(nzx: np.ndarray, f: dict) -> np.ndarray:
    """int64 ``[..., c*kh*kw]``: at each weight position, how many of a conv instruction's
    output pixels read a non-zero, from the flags ``nzx`` (bool ``[..., c, h', w']``, the
    padded input tile's ``x != 0``): ``row_counts(windows(x, f) != 0)`` without the windows.
    ``count[c, (ky, kx)] = sum_(i, j) nzx[c, i, j] R[i, ky] C[j, kx]`` with the 0 / 1 tap
    matrices ``R`` (rows) and ``C`` (columns): one BLAS product with ``kron(R, C)``, or two
    for a large tile; exact (sums of at most ``oh*ow`` ones: float32 below 2^24 of them,
    else float64)."""
    kh, kw, sh, sw, oh, ow = f["kh"], f["kw"], f["sh"], f["sw"], f["oh"], f["ow"]
    lead, (h, w) = nzx.shape[:-3], nzx.shape[-2:]
    if h * w == 1:                  # a 1x1 tile (a dense layer): its flags
        return nzx.reshape(lead + (-1,)).astype(np.int64)
    dt = np.float32 if oh * ow < 1 << 24 else np.float64
    taps = _tap_matrix(h, w, kh, kw, sh, sw, oh, ow, dt)
    if len(taps) == 1:
        got = nzx.reshape(-1, h * w).astype(dt) @ taps[0]
    else:
        part = nzx.reshape(-1, w).astype(dt) @ taps[1]                              # [L*h, kw]
        part = np.ascontiguousarray(part.reshape(-1, h, kw).transpose(0, 2, 1)).reshape(-1, h)
        got = (part @ taps[0]).reshape(-1, kw, kh).transpose(0, 2, 1)                # [L, kh, kw]
    return got.astype(np.int64).reshape(lead + (-1,))


def _batched(nz: np.ndarray, core: int) -> tuple[np.ndarray, bool]:
    """``nz`` with one leading batch axis (``core``: the dimensions of one input), and
    whether it had none."""
    if nz.ndim == core:
        return nz[None], True
    if nz.ndim != core + 1:
        raise ValueError(f"expected {core} or {core + 1} dimensions, got shape {nz.shape}")
    return nz, False


def unit_live(nz: np.ndarray, rows: int, lanes: int, granularity: str) -> np.ndarray:
    """``live[..., k, i, u]``: whether unit ``u`` of pass ``i`` reads a non-zero at weight
    position ``k``, from ``nz[..., k, p]`` (activation at position ``k`` of output pixel ``p``
    non-zero).  ``column``: one unit per pass; ``pe``: ``rows`` units (a PE row's ``lanes``
    pixels)."""
    if granularity not in ("column", "pe"):
        raise ValueError(f"no activation skipping granularity {granularity!r}")
    lead = nz.shape[:-2]
    k, p = nz.shape[-2:]
    per_pass = rows * lanes
    npass = -(-p // per_pass)
    units, width = (1, per_pass) if granularity == "column" else (rows, lanes)
    if npass == 1 and units == 1:   # one pass: its pixels' OR
        return (nz[..., 0] if p == 1 else nz.any(axis=-1)).reshape(lead + (k, 1, 1))
    pad = npass * per_pass - p
    if pad:
        nz = np.concatenate([nz, np.zeros(lead + (k, pad), bool)], axis=-1)
    flags = np.ascontiguousarray(nz).reshape(lead + (k, npass * units, width))
    if width == 1:
        live = flags[..., 0]
    elif width % 8 == 0:        # OR the unit's flags 8 at a time (a bool is one byte)
        words = flags.view(np.uint64)
        acc = words[..., 0]
        for j in range(1, width // 8):
            acc = acc | words[..., j]
        live = acc != 0
    else:
        live = flags.any(axis=-1)
    return live.reshape(lead + (k, npass, units))


def _group_flags(nz: np.ndarray) -> np.ndarray:
    """SACC: ``[..., groups * kh*kw, oh*ow]`` flags of the weight groups (4 consecutive
    channels at one kernel position, the last zero-padded) in which a pixel reads a non-zero."""
    lead = nz.shape[:-3]
    c, kk, p = nz.shape[-3:]
    groups = -(-c // SWIS_GROUP)
    if groups * SWIS_GROUP != c:
        nz = np.concatenate([nz, np.zeros(lead + (groups * SWIS_GROUP - c, kk, p), bool)], axis=-3)
    return nz.reshape(lead + (groups, SWIS_GROUP, kk, p)).any(axis=-3).reshape(lead + (groups * kk, p))


def row_counts(flags: np.ndarray) -> np.ndarray:
    """The ``True`` entries of each row of a ``[..., K, P]`` bool array (int64, ``[..., K]``),
    counted 8 flags per machine word where NumPy has ``bitwise_count`` (a bool is one byte,
    0 or 1)."""
    p = flags.shape[-1]
    if not hasattr(np, "bitwise_count") or p < 64:
        return flags.sum(axis=-1, dtype=np.int64)
    pad = (-p) % 8
    if pad:
        flags = np.concatenate([flags, np.zeros(flags.shape[:-1] + (pad,), bool)], axis=-1)
    words = np.ascontiguousarray(flags).view(np.uint64)
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def count_matrix(wnz: np.ndarray) -> np.ndarray:
    """``[F + 1, K]`` float32: TACC's non-zero weights ``wnz`` (PE order) and a row of ones,
    the left operand of :func:`step_matrix`'s one product (a caller may keep it per block)."""
    out = np.ones((wnz.shape[0] + 1, wnz.shape[1]), np.float32)
    out[:-1] = wnz
    return out


def _count(w: np.ndarray, live: np.ndarray) -> np.ndarray:
    """``sum_k w[f, k] * live[..., k, i, u]`` for 0/1 float32 ``w`` ``[F, K]`` (exact:
    float32 sums of at most 2^24 ones)."""
    lead = live.shape[:-3]
    k, npass, units = live.shape[-3:]
    m = math.prod(lead)
    if npass * units == 1:      # one pass: [batch, K] @ w.T, no transposed copy
        out = live.reshape(m, k).astype(np.float32) @ w.T
        return out.reshape(lead + (len(w), 1, 1))
    # one product for the whole batch ([K, batch * passes * units]; NumPy's broadcast matmul
    # of a matrix over a stack does not call the BLAS): exact in any order, counts of ones
    cols = np.ascontiguousarray(live.reshape(m, k, -1).transpose(1, 0, 2), dtype=np.float32)
    out = (w @ cols.reshape(k, -1)).reshape(len(w), m, -1).transpose(1, 0, 2)
    return out.reshape(lead + (len(w), npass, units))


def useful_steps(ins: Insn, nz: np.ndarray, wnz: np.ndarray | None = None,
                 shift_passes: np.ndarray | None = None, order: np.ndarray | None = None,
                 wcol: np.ndarray | None = None, per_k: np.ndarray | None = None):
    """PE steps no mechanism can skip: one per (pixel, issued weight) whose activation is
    non-zero (TACC: non-zero weights only; SACC: per live 4-channel group, the filter's
    shift passes).  A layer's lower bound counts these (:func:`cycles.lower_bound`).
    ``wcol``: TACC's non-zero weights per position, ``wnz.sum(axis=0)``, and ``per_k``,
    :func:`row_counts` of the batch's ``nz`` ``[n, c*kh*kw]``, if the caller has them.
    ``nz`` ``[c, kh*kw, oh*ow]`` gives an int; a batch ``[n, c, kh*kw, oh*ow]`` an int64
    array ``[n]``."""
    nz, single = _batched(nz, 3)
    n, c, kk, p = nz.shape
    if per_k is None:                                     # [n, K] pixels reading a non-zero
        per_k = row_counts(nz.reshape(n, c * kk, p))
    if ins.f["depthwise"]:
        per_k = per_k.reshape(n, c, kk)[:, order if order is not None else slice(None)]
        got = (per_k * (wnz != 0)).sum(axis=(1, 2)) if wnz is not None else per_k.sum(axis=(1, 2))
    elif ins.op == "TACC":
        got = per_k @ ((wnz != 0).sum(axis=0, dtype=np.int64) if wcol is None else wcol)
    elif ins.op == "MAC":
        got = ins.f["f"] * per_k.sum(axis=1)
    else:
        got = int(np.asarray(shift_passes, np.int64).sum()) * _group_flags(nz).sum(axis=(1, 2), dtype=np.int64)
    got = np.asarray(got, np.int64)
    return int(got[0]) if single else got


def step_matrix(ins: Insn, nz: np.ndarray, rows: int, lanes: int, granularity: str,
                wnz: np.ndarray | None = None, shift_passes: np.ndarray | None = None,
                order: np.ndarray | None = None, wmat: np.ndarray | None = None) -> tuple:
    """``(total, acts)``: ``[F, passes]`` step counts of a conv instruction with zero
    activations skipped, with its weights as issued (``total``: TACC skips zero weights
    too) and with every weight issued (``acts``: the activations' part alone, costed as a
    MAC).  ``nz``: ``[c, kh*kw, oh*ow]`` non-zero flags of the activations each output
    pixel reads (the instruction's padded input windows); a batch ``[n, c, kh*kw, oh*ow]``
    gives ``[n, F, passes]`` counts.  ``wnz``: TACC's ``[F, K]``
    non-zero weights (bool, or 0 / 1) (``K = c*kh*kw``, depthwise ``kh*kw``), ``None`` for MAC and SACC;
    ``shift_passes``: SACC's per-filter shift passes ``ceil(S_f / swis_shifts_per_pass)``.
    Filters are in PE order (``wnz``, ``shift_passes`` and the result: consecutive rows run
    together); ``order[j]``, the filter on PE column ``j``, puts a depthwise TACC's
    channels in that order too (MAC keeps the filters in accumulator order).  ``wmat``:
    :func:`count_matrix` of ``wnz``, if the caller has it."""
    nz, single = _batched(nz, 3)
    total, acts = _step_matrix(ins, nz, rows, lanes, granularity, wnz, shift_passes, order, wmat)
    return (total[0], acts[0]) if single else (total, acts)


def _step_matrix(ins, nz, rows, lanes, granularity, wnz, shift_passes, order, wmat) -> tuple:
    """:func:`step_matrix` of a batch ``nz`` ``[n, c, kh*kw, oh*ow]``: ``[n, F, passes]``."""
    f = ins.f
    nf = f["f"]
    n, c, kk, p = nz.shape
    if f["depthwise"]:
        if order is not None:
            nz = nz[:, order]
        live = unit_live(nz.reshape(n, c * kk, p), rows, lanes, granularity).reshape(n, c, kk, -1)
        acts = live.sum(axis=2, dtype=np.int64)                       # [n, F, passes * units]
        npass = -(-p // (rows * lanes))
        acts = acts.reshape(n, nf, npass, -1)
        if wnz is None:
            total = acts
        else:
            total = np.einsum("fk,nfkq->nfq", (wnz != 0).astype(np.int64), live.astype(np.int64))
            total = total.reshape(n, nf, npass, -1)
        return total.max(axis=3), acts.max(axis=3)
    live = unit_live(nz.reshape(n, c * kk, p), rows, lanes, granularity)  # [n, K, passes, units]
    if ins.op == "TACC":        # one product: the filters' live non-zeros, and (last row) all live positions
        both = _count(count_matrix(wnz) if wmat is None else wmat, live)
        both = both[..., 0] if both.shape[3] == 1 else both.max(axis=3)
        both = both.astype(np.int64)
        return both[:, :nf], np.broadcast_to(both[:, nf:nf + 1], (n, nf, both.shape[2]))
    per = live.sum(axis=1, dtype=np.int64)                            # [n, passes, units]
    acts = np.broadcast_to((per[..., 0] if per.shape[2] == 1 else per.max(axis=2))[:, None, :],
                           (n, nf, live.shape[2]))
    if ins.op == "MAC":
        return acts, acts
    # SACC: a weight group (4 consecutive channels at one kernel position) is live when any
    # of its channels is; each live group costs the filter's shift passes
    glive = unit_live(_group_flags(nz), rows, lanes, granularity)
    per_pass = glive.sum(axis=1, dtype=np.int64).max(axis=2)          # [n, passes]
    return np.asarray(shift_passes, np.int64)[None, :, None] * per_pass[:, None, :], acts


def conv_steps(ins: Insn, m: Machine, nz: np.ndarray, counts, order: np.ndarray | None = None,
               wnz: np.ndarray | None = None, wmat: np.ndarray | None = None) -> tuple:
    """:func:`step_matrix` of a conv instruction on machine ``m``: its mapping's pixel rows,
    its activation type's lanes, ``m.act_skip``, and (SACC) the shift passes of its block's
    ``counts``; ``order`` / ``wnz`` / ``wmat``: a TACC block's PE order, non-zero mask and
    :func:`count_matrix` (the interpreter's and the cost model's one way in)."""
    shifts = cycles.shift_passes(m, counts) if ins.op == "SACC" else None
    return step_matrix(ins, nz, cycles.grid(ins, m)[0], cycles.lanes(ins, m), m.act_skip,
                       wnz if ins.op == "TACC" else None, shifts, order, wmat)
