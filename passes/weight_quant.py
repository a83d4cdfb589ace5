"""Weight quantizers with scales shared per cluster of N filters (papers.md sections 1-2).

Filters (output channels) are grouped into consecutive clusters of ``n`` (``n = 1``: one
scale per filter, ``n = 0``: the whole layer is one cluster).  Inside cluster ``c``:

* ``ternary`` (TWN applied per cluster): ``D_c = factor * mean|W_c|`` (factor 0.7),
  ``t = sign(W) * (|W| > D_c)``, ``a_c = mean(|W_i| for |W_i| > D_c)``;
* ``int4``: ``s_c = max|W_c| / 7``, ``q = clip(rint(W / s_c), -7, 7)``;
* ``int8``: ``s_c = max|W_c| / 127``, ``q = clip(rint(W / s_c), -127, 127)``.

Each returns ``(q, scale)``: ``q`` int8 of the weight's shape, ``scale`` float32 with one
entry per output channel (the cluster's scale repeated), so ``W ~ scale * q``.  A cluster
of zeros gets scale 0 (ternary) or 1 with ``q = 0`` (int4/int8).  Pure NumPy, no TVM.
"""

from __future__ import annotations

import numpy as np

KINDS = ("ternary", "int4", "int8")
QMAX = {"int4": 7, "int8": 127}


def _clusters(nch: int, n: int) -> np.ndarray:
    """Cluster index of each output channel (``n = 0``: one cluster)."""
    if n < 0:
        raise ValueError(f"cluster size {n} must be >= 0")
    return np.zeros(nch, np.int64) if n == 0 else np.arange(nch) // n


def quantize_weight(w: np.ndarray, axis: int = 0, kind: str = "ternary", cluster: int = 1,
                    factor: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    if kind not in KINDS:
        raise ValueError(f"weight kind {kind!r}; expected one of {KINDS}")
    w64 = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    flat = w64.reshape(w64.shape[0], -1)
    cid = _clusters(flat.shape[0], cluster)
    ncl = int(cid.max()) + 1
    a = np.abs(flat)
    if flat.shape[0] % ncl == 0:        # equal clusters (the usual case): one vectorized pass
        return _equal_clusters(flat, a, ncl, cid, kind, factor, w64.shape, axis)
    q = np.zeros(flat.shape, np.int8)
    scale_cl = np.zeros(ncl)
    for c in range(ncl):
        rows = cid == c
        ac = a[rows]
        if kind == "ternary":
            delta = factor * ac.mean()
            mask = ac > delta
            scale_cl[c] = ac[mask].mean() if mask.any() else 0.0
            q[rows] = (np.sign(flat[rows]) * mask).astype(np.int8)
        else:
            qmax = QMAX[kind]
            top = ac.max()
            s = top / qmax if top > 0 else 1.0
            scale_cl[c] = s
            q[rows] = np.clip(np.rint(flat[rows] / s), -qmax, qmax).astype(np.int8)
    scale = scale_cl[cid].astype(np.float32)
    return np.moveaxis(q.reshape(w64.shape), 0, axis), scale


def _equal_clusters(flat, a, ncl, cid, kind, factor, shape, axis):
    """:func:`quantize_weight` when every cluster has the same number of filters: the same
    formulas, each reduction over a cluster's weights as one row of ``(ncl, -1)``."""
    rows = a.reshape(ncl, -1)
    if kind == "ternary":
        delta = factor * rows.mean(axis=1)
        mask = rows > delta[:, None]
        count = mask.sum(axis=1)
        scale_cl = np.where(count > 0, (rows * mask).sum(axis=1) / np.maximum(count, 1), 0.0)
        q = (np.sign(flat) * mask.reshape(flat.shape)).astype(np.int8)
    else:
        qmax = QMAX[kind]
        top = rows.max(axis=1)
        scale_cl = np.where(top > 0, top / qmax, 1.0)
        q = np.clip(np.rint(flat / scale_cl[cid][:, None]), -qmax, qmax).astype(np.int8)
    scale = scale_cl[cid].astype(np.float32)
    return np.moveaxis(q.reshape(shape), 0, axis), scale


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """``scale * q`` broadcast along ``axis``, in float32 (the fake-quantized weights)."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)).astype(np.float32)
