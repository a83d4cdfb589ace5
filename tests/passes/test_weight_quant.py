"""passes.weight_quant.quantize_weight: clusters of N consecutive filters, each with its own
scale, against a plain per-cluster computation of the formulas in its docstring."""

from __future__ import annotations

import numpy as np
import pytest

from passes.weight_quant import quantize_weight


def _per_cluster(w, kind, n, factor=0.7):
    """The docstring's formulas, one cluster at a time (filters on axis 0)."""
    flat = np.abs(w.reshape(w.shape[0], -1).astype(np.float64))
    sizes = [n] * (len(flat) // n) + ([len(flat) % n] if len(flat) % n else []) if n else [len(flat)]
    scales, start = [], 0
    for size in sizes:
        a = flat[start:start + size]
        if kind == "ternary":
            sel = a[a > factor * a.mean()]
            s = sel.mean() if sel.size else 0.0
        else:
            s = a.max() / {"int4": 7, "int8": 127}[kind] if a.max() > 0 else 1.0
        scales += [s] * size
        start += size
    return np.asarray(scales, np.float32)


@pytest.mark.parametrize("kind", ["ternary", "int4", "int8"])
@pytest.mark.parametrize("filters,n", [(6, 4), (33, 16), (10, 4), (12, 4), (5, 0), (3, 8), (7, 1)])
def test_clusters_of_n_filters(kind, filters, n):
    """Including a shorter last cluster (6 filters in clusters of 4 are [4, 2], not [3, 3])."""
    w = np.random.default_rng(filters * 10 + n).standard_normal((filters, 3, 3, 3)).astype(np.float32)
    w[0] *= 5.0                           # cluster 0 has a distinctly larger scale
    q, scale = quantize_weight(w, 0, kind, n)
    assert np.array_equal(scale, _per_cluster(w, kind, n))
    assert q.dtype == np.int8 and q.shape == w.shape
    w_t = np.moveaxis(w, 0, 1)            # the output axis elsewhere gives the same result
    q_t, scale_t = quantize_weight(w_t, 1, kind, n)
    assert np.array_equal(scale_t, scale) and np.array_equal(np.moveaxis(q_t, 1, 0), q)
