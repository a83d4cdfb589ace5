"""Ternary weight math (TWN, Li & Liu 2016; as used by dLAC, papers.md section 1).

For a group of weights ``W`` (one output filter, or the whole layer):

    delta = factor * mean(|W|)            (factor = 0.7)
    t     = sign(W) * (|W| > delta)       in {-1, 0, +1}
    alpha = mean(|W_i| for |W_i| > delta)  (0 when no weight passes)

and ``W ~ alpha * t``.  Pure NumPy functions, no TVM.
"""

from __future__ import annotations

import numpy as np

from passes.weight_quant import dequantize, quantize_weight

__all__ = ["ternarize", "dequantize", "split_ternary"]


def ternarize(w: np.ndarray, axis: int = 0, granularity: str = "filter",
              factor: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Ternarize ``w`` with one scale per index of ``axis`` (``"filter"``) or one in all.

    Returns ``(t, alpha)``: ``t`` int8 of ``w``'s shape, ``alpha`` float32 of
    length ``w.shape[axis]`` (the per-layer scale repeated for ``"layer"``).
    The clustered form is :func:`passes.weight_quant.quantize_weight`.
    """
    if granularity not in ("filter", "layer"):
        raise ValueError(f"granularity {granularity!r}")
    return quantize_weight(w, axis, "ternary", 1 if granularity == "filter" else 0, factor)


def split_ternary(wq: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Recover ``(t, alpha)`` from fake-quantized ternary weights, or ``None``.

    Legal only when every output channel holds a single non-zero magnitude;
    the split is then exact (``dequantize(t, alpha) == wq`` bit for bit).
    """
    w = np.moveaxis(np.asarray(wq, dtype=np.float32), axis, 0)
    groups = w.reshape(w.shape[0], -1)
    alpha = np.abs(groups).max(axis=1)
    safe = np.where(alpha > 0, alpha, 1.0).astype(np.float32)
    t = groups / safe[:, None]
    if not np.all(np.isin(t, (-1.0, 0.0, 1.0))):
        return None
    t8 = np.moveaxis(t.astype(np.int8).reshape(w.shape), 0, axis)
    alpha = alpha.astype(np.float32)
    if not np.array_equal(dequantize(t8, alpha, axis), np.asarray(wq, dtype=np.float32)):
        return None
    return t8, alpha
