"""TWN ternarization vs an independent, loop-by-loop NumPy implementation of the
formulas in papers.md section 1 (threshold 0.7 * mean|W|, scale = mean of the
magnitudes above it)."""

from __future__ import annotations

import numpy as np
import pytest

from passes.twn import dequantize, split_ternary, ternarize


def twn_reference(w: np.ndarray, axis: int, per_filter: bool):
    """Straightforward loops, written from the paper's formulas."""
    w = np.moveaxis(w.astype(np.float64), axis, 0)
    t = np.zeros(w.shape, dtype=np.int8)
    alpha = np.zeros(w.shape[0])
    groups = [[f] for f in range(w.shape[0])] if per_filter else [list(range(w.shape[0]))]
    for g in groups:
        vals = np.concatenate([w[f].ravel() for f in g])
        delta = 0.7 * np.mean(np.abs(vals))
        kept = [abs(v) for v in vals if abs(v) > delta]
        a = sum(kept) / len(kept) if kept else 0.0
        for f in g:
            flat = w[f].ravel()
            t[f] = np.array([(1 if v > 0 else -1) if abs(v) > delta else 0 for v in flat],
                            dtype=np.int8).reshape(w[f].shape)
            alpha[f] = a
    return np.moveaxis(t, 0, axis), alpha


@pytest.mark.parametrize("shape,axis", [((8, 4, 3, 3), 0), ((16, 3, 1, 1), 0), ((20, 12), 1)])
@pytest.mark.parametrize("granularity", ["filter", "layer"])
def test_ternarize_matches_reference(shape, axis, granularity):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.1, 2.0)
    t, alpha = ternarize(w, axis, granularity)
    t_ref, a_ref = twn_reference(w, axis, granularity == "filter")
    assert t.dtype == np.int8 and set(np.unique(t)) <= {-1, 0, 1}
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(alpha, a_ref, rtol=1e-6)
    if granularity == "layer":
        assert np.all(alpha == alpha[0])


def test_zero_filter_has_zero_scale():
    w = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
    w[2] = 0
    t, alpha = ternarize(w)
    assert alpha[2] == 0 and not t[2].any()
    assert np.all(alpha[[0, 1, 3]] > 0)


def test_bn_scale_commutes_with_per_filter_ternarization():
    """Ternarizing BN-folded weights per filter == ternarizing raw weights and putting the
    BN scale in the epilogue (the legality argument of TernarizeWeights)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    s = np.array([0.5, -1.5, 2.0, 0.25, -0.75, 3.0])
    t_raw, a_raw = ternarize(w)
    t_fold, a_fold = ternarize((w * s.reshape(-1, 1, 1, 1)).astype(np.float32))
    np.testing.assert_array_equal(t_fold, t_raw * np.sign(s).reshape(-1, 1, 1, 1).astype(np.int8))
    np.testing.assert_allclose(a_fold, a_raw * np.abs(s), rtol=1e-5)


def test_split_ternary_round_trip_is_exact():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 7)).astype(np.float32)
    t, alpha = ternarize(w, axis=1)
    wq = dequantize(t, alpha, axis=1)
    t2, a2 = split_ternary(wq, axis=1)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(dequantize(t2, a2, 1), wq)


def test_split_ternary_refuses_non_ternary():
    w = np.array([[0.5, -0.5, 0.0], [0.3, 0.2, -0.3]], dtype=np.float32)   # row 1: two magnitudes
    assert split_ternary(w, axis=0) is None
