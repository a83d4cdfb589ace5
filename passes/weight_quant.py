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
    nch = flat.shape[0]
    if cluster < 0:
        raise ValueError(f"cluster size {cluster} must be >= 0")
    n = max(1, nch if cluster == 0 else min(cluster, nch))          # filters per cluster
    full = nch - nch % n                     # the clusters of n filters; then a shorter last one
    parts = [_quantize_clusters(flat[lo:hi], n if lo == 0 else hi - lo, kind, factor)
             for lo, hi in ((0, full), (full, nch)) if hi > lo]
    q = np.concatenate([p[0] for p in parts])
    scale = np.concatenate([p[1] for p in parts]).astype(np.float32)
    return np.moveaxis(q.reshape(w64.shape), 0, axis), scale


def _quantize_clusters(flat: np.ndarray, n: int, kind: str, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale per filter)`` of ``flat`` ``[F, K]`` (float64) in clusters of ``n``
    consecutive filters (``F`` a multiple of ``n``): each cluster's reductions run over one
    row of ``(F / n, n * K)``, so its weights are summed in their own order."""
    rows = np.abs(flat).reshape(flat.shape[0] // n, -1)
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
        q = np.clip(np.rint(flat / np.repeat(scale_cl, n)[:, None]), -qmax, qmax).astype(np.int8)
    return q, np.repeat(scale_cl, n)


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """``scale * q`` broadcast along ``axis``, in float32 (the fake-quantized weights)."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)).astype(np.float32)
