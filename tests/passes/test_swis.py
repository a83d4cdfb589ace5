"""SWIS (papers.md section 3, arXiv 2103.01308) weight decomposition, scheduling and
timing vs pure-Python references written from the formulas in the passes/swis.py
docstring (nearest snap with ties to the smaller magnitude; least MSE++ with ties
to the first set in itertools.combinations order)."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations, pairwise, product

import numpy as np
import pytest

from passes.swis import (NO_SHIFT, decompose, groups_view, quantize_magnitudes, representable,
                         schedule_shift_counts, shift_sets, snap_magnitude_table, swis_quantize,
                         ungroup)
from tests.passes.swis_reference import decode_group, encode_group


# ----------------------------------------------------------------------------- references

def ref_decompose(group, s, consecutive=False, alpha=1):
    """Loop-by-loop: every candidate set, every subset sum, nearest snap; least MSE++."""
    if consecutive:
        cands = [tuple(range(o, o + s)) for o in range(8 - s + 1)]
    else:
        cands = list(combinations(range(8), s))
    best = None
    for st in cands:
        reps = sorted({sum(1 << sh for sh, b in zip(st, bits) if b)
                       for bits in product((0, 1), repeat=s)})
        snapped = []
        for v in group:
            r = min(reps, key=lambda r: (abs(abs(v) - r), r))     # ties: smaller magnitude
            snapped.append(r if v >= 0 else -r)
        e = [int(v) - x for v, x in zip(group, snapped)]
        cost = Fraction(alpha) * sum(e) ** 2 + sum(x * x for x in e)
        cost /= len(group)
        if best is None or cost < best[0]:                         # ties: first set
            best = (cost, st, snapped)
    return best


def random_groups(rng, n):
    """Groups of 4 of several kinds: uniform, Gaussian-like, small values (many snap ties), edge cases."""
    parts = [rng.integers(-255, 256, (n, 4)),
             np.clip(np.rint(rng.standard_normal((n, 4)) * 60), -255, 255),
             rng.integers(-12, 13, (n, 4)),
             np.array([[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0], [6, -6, 12, -12],
                       [255, -255, 255, -255], [-128, 127, 64, -1]])]
    return np.concatenate(parts).astype(np.int16)


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- quantization, groups

def test_quantize_magnitudes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    w[2] = 0
    q, scale = quantize_magnitudes(w)
    assert q.dtype == np.int16 and scale.dtype == np.float32 and scale.shape == (6,)
    assert scale[2] == 1.0 and not q[2].any()
    for c in (0, 1, 3, 4, 5):
        assert np.abs(q[c]).max() == 255
        assert np.isclose(scale[c], np.abs(w[c]).max() / 255)
        np.testing.assert_array_equal(q[c], np.rint(w[c] / scale[c]))
    q1, s1 = quantize_magnitudes(np.moveaxis(w, 0, 1), axis=1)
    np.testing.assert_array_equal(q1, np.moveaxis(q, 0, 1))
    np.testing.assert_array_equal(s1, scale)


@pytest.mark.parametrize("shape", [(3, 8, 3, 3), (2, 6, 3, 3), (4, 10), (3, 5, 1, 2)])
def test_groups_view_layout_and_inverse(shape):
    rng = np.random.default_rng(1)
    q = rng.integers(-255, 256, shape).astype(np.int16)
    g = groups_view(q)
    f, c = shape[:2]
    cg = -(-c // 4)
    kpos = int(np.prod(shape[2:], dtype=int))
    assert g.shape == (f, kpos * cg, 4)
    for idx in np.ndindex(*shape):
        fi, ci, k = idx[0], idx[1], np.ravel_multi_index(idx[2:], shape[2:]) if len(shape) > 2 else 0
        assert g[fi, k * cg + ci // 4, ci % 4] == q[idx]
    assert (g != 0).sum() == (q != 0).sum()                      # the padding is zeros
    np.testing.assert_array_equal(ungroup(g, shape), q)
    qt = np.moveaxis(q, 0, 1)
    np.testing.assert_array_equal(groups_view(qt, axis=1), g)
    np.testing.assert_array_equal(ungroup(g, qt.shape, axis=1), qt)


def test_representable_and_snap_ties():
    np.testing.assert_array_equal(representable((0, 2)), [0, 1, 4, 5])
    np.testing.assert_array_equal(representable(()), [0])
    assert representable(range(8)).tolist() == list(range(256))
    t = snap_magnitude_table((2, 3))                             # {0, 4, 8, 12}
    assert t[6] == 4 and t[10] == 8 and t[2] == 0 and t[7] == 8 and t[255] == 12
    assert len(shift_sets(3)) == 56 and len(shift_sets(3, consecutive=True)) == 6


# ----------------------------------------------------------------------------- decomposition

@pytest.mark.parametrize("consecutive", [False, True], ids=["swis", "swis_c"])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_decompose_matches_bruteforce(s, consecutive):
    rng = np.random.default_rng(10 + s)
    groups = random_groups(rng, 40)
    sets, snapped, mse = decompose(groups, s, consecutive)
    assert sets.shape == (len(groups), s) and sets.dtype == np.uint8
    assert snapped.dtype == np.int16 and mse.dtype == np.float64
    for i, grp in enumerate(groups.tolist()):
        cost, st, snap = ref_decompose(grp, s, consecutive)
        assert tuple(sets[i].tolist()) == st, (grp, sets[i], st)
        assert snapped[i].tolist() == snap
        assert mse[i] == float(cost)


def test_decompose_set_ties_pick_first():
    groups = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]])
    sets, _, mse = decompose(groups, 1)
    # 3: {1} -> 2 and {2} -> 4 both cost 0.5; the first in combinations order wins
    assert sets[:, 0].tolist() == [0, 0, 1, 1]
    assert mse.tolist() == [0, 0, 0, 0.5]
    sets2, _, _ = decompose(groups[:1], 3)
    assert sets2[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("alpha", [0, 0.5, 3])
def test_decompose_alpha_and_group_size(alpha):
    rng = np.random.default_rng(3)
    groups = random_groups(rng, 15)
    sets, snapped, mse = decompose(groups, 2, alpha=alpha)
    for i, grp in enumerate(groups.tolist()):
        cost, st, snap = ref_decompose(grp, 2, alpha=Fraction(alpha))
        assert tuple(sets[i].tolist()) == st and snapped[i].tolist() == snap
        assert mse[i] == pytest.approx(float(cost), abs=1e-12)
    g8 = rng.integers(-255, 256, (15, 8))                        # M = 8: the unpacked path
    sets, snapped, mse = decompose(g8, 2, alpha=alpha)
    for i, grp in enumerate(g8.tolist()):
        cost, st, snap = ref_decompose(grp, 2, alpha=Fraction(alpha))
        assert tuple(sets[i].tolist()) == st and snapped[i].tolist() == snap
        assert mse[i] == pytest.approx(float(cost), abs=1e-12)


@pytest.fixture(scope="module")
def layer():
    w = np.random.default_rng(7).standard_normal((64, 64, 3, 3)).astype(np.float32)
    q, scale = quantize_magnitudes(w)
    return w, q, scale, groups_view(q)


def test_encode_decode_round_trip_and_representable(layer):
    _, _, _, g = layer
    for s in (1, 3, 5):
        sets, snapped, _ = decompose(g, s)
        signs, masks = encode_group(snapped, sets)               # vectorized over [F, G]
        assert signs.shape == g.shape and masks.shape == g.shape + (s,)
        np.testing.assert_array_equal(decode_group(signs, masks, sets), snapped)
        for f, gi in [(0, 0), (3, 17), (63, g.shape[1] - 1)]:
            sg, mk = encode_group(snapped[f, gi], sets[f, gi])  # one group
            np.testing.assert_array_equal(decode_group(sg, mk, sets[f, gi]), snapped[f, gi])
        rng = np.random.default_rng(s)
        for f, gi in zip(rng.integers(0, g.shape[0], 200), rng.integers(0, g.shape[1], 200)):
            reps = set(representable(sets[f, gi]).tolist())
            assert all(abs(int(v)) in reps for v in snapped[f, gi])
    signs, masks = encode_group(np.array([5, -4, 0, 1]), np.array([0, 2]))
    assert signs.tolist() == [False, True, False, False]
    assert masks.astype(int).tolist() == [[1, 1], [0, 1], [0, 0], [1, 0]]
    with pytest.raises(ValueError):
        encode_group(np.array([2, 0, 0, 0]), np.array([0, 2]))


def test_eight_shifts_is_exact(layer):
    w, q, _, g = layer
    _, snapped, mse = decompose(g, 8)
    np.testing.assert_array_equal(snapped, g)
    assert not mse.any()
    r = swis_quantize(w, 8)
    np.testing.assert_array_equal(r.values, q)
    assert r.mse == 0 and (r.counts == 8).all()


def test_error_falls_with_shifts_and_swis_c_is_worse(layer):
    _, _, _, g = layer
    totals, sq = [], []
    for s in range(1, 9):
        _, snapped, mse = decompose(g, s)
        _, _, mse_c = decompose(g, s, consecutive=True)
        assert (mse_c >= mse).all()                              # SWIS-C's candidates are a subset
        totals.append(mse.sum())
        sq.append(float(((g - snapped).astype(np.float64) ** 2).sum()))
    assert all(a >= b for a, b in pairwise(totals))
    assert all(a >= b for a, b in pairwise(sq))
    assert totals[-1] == 0 and totals[0] > 20 * totals[2]


# ----------------------------------------------------------------------------- scheduling

def test_schedule_lowers_cheapest_first():
    zero = np.zeros(4)
    counts, order = schedule_shift_counts({3: zero, 2: np.array([5., 1., 3., 2.])}, 2.5, pe_cols=1)
    assert counts.tolist() == [3, 2, 3, 2]                       # filters 1 and 3 are the cheapest
    assert order.tolist() == [1, 3, 0, 2]                        # stable sort by count
    # a filter is lowered twice when its second step is still the cheapest
    costs = {3: zero, 2: np.array([0.1, 1., 1., 1.]), 1: np.array([0.3, 9., 9., 9.])}
    counts, _ = schedule_shift_counts(costs, 2.5, pe_cols=1)
    assert counts.tolist() == [1, 3, 3, 3]
    # equal costs: the lowest filter index goes first
    counts, _ = schedule_shift_counts({3: zero, 2: zero}, 2.75, pe_cols=1)
    assert counts.tolist() == [2, 3, 3, 3]
    with pytest.raises(ValueError):
        schedule_shift_counts({2: zero}, 2.5, pe_cols=1)         # no costs at ceil(target)
    with pytest.raises(ValueError):
        schedule_shift_counts({3: zero}, 2.5, pe_cols=1)         # cannot go lower


def test_schedule_raise_within_pe_groups():
    costs = {3: np.zeros(6), 2: np.array([1., 9., 1., 9., 1., 9.])}
    before, _ = schedule_shift_counts(costs, 2.5, pe_cols=1)
    assert before.tolist() == [2, 3, 2, 3, 2, 3]
    counts, order = schedule_shift_counts(costs, 2.5, pe_cols=4)
    assert order.tolist() == [0, 2, 4, 1, 3, 5]
    assert counts.tolist() == [3] * 6                            # group {0,2,4,1} -> 3; the rest 3
    assert counts.mean() > 2.5                                   # the documented overshoot


@pytest.mark.parametrize("target", [1.0, 1.7, 2.5, 3.0, 4.25, 7.9])
def test_schedule_random_costs(target):
    rng = np.random.default_rng(int(target * 100))
    f, pe = 100, 8
    base = np.sort(rng.random((9, f)) * 100, axis=0)[::-1]       # cost falls with S
    costs = {s: base[s] for s in range(1, 9)}
    before, _ = schedule_shift_counts(costs, target, pe_cols=1)
    assert before.mean() <= target + 1e-12
    assert before.mean() > target - 1 / f                        # no filter is lowered needlessly
    assert before.min() >= 1 and before.max() <= 8
    counts, order = schedule_shift_counts(costs, target, pe_cols=pe)
    assert sorted(order.tolist()) == list(range(f))
    assert (counts >= before).all() and counts.min() >= 1 and counts.max() <= 8
    in_order = counts[order]
    for start in range(0, f, pe):
        assert len(set(in_order[start:start + pe].tolist())) == 1
    np.testing.assert_array_equal(order, np.argsort(before, kind="stable"))
    # costs a_f * 4^-S with a_f in [1, 3]: a second step down never beats a first one,
    # so a fractional target mixes exactly its floor and ceil
    a = 1 + 2 * rng.random(f)
    convex = {s: a * 4.0 ** -s for s in range(1, 9)}
    mixed, _ = schedule_shift_counts(convex, target, pe_cols=1)
    lo, hi = int(np.floor(target)), int(np.ceil(target))
    assert set(mixed.tolist()) == ({lo, hi} if lo != hi else {lo})
    if lo != hi:
        assert (mixed == lo).sum() == int(np.ceil((hi - target) * f - 1e-9))
        assert a[mixed == lo].max() <= a[mixed == hi].min()     # the cheapest filters went down


def test_swis_quantize_fractional(layer):
    w, _, scale, g = layer
    r = swis_quantize(w, 2.5, pe_cols=8)
    assert set(np.unique(r.counts).tolist()) <= {2, 3} and r.mean_count_scheduled <= 2.5
    assert r.mean_count >= r.mean_count_scheduled
    for start in range(0, 64, 8):
        assert len(set(r.counts[r.pe_order[start:start + 8]].tolist())) == 1
    np.testing.assert_array_equal(r.scale, scale)
    decs = {s: decompose(g, s) for s in (2, 3)}
    vg = groups_view(r.values)
    for f in range(64):
        s = int(r.counts[f])
        np.testing.assert_array_equal(r.filter_shifts(f), decs[s][0][f])
        np.testing.assert_array_equal(vg[f], decs[s][1][f])
        assert (r.shifts[f, :, s:] == NO_SHIFT).all()
    np.testing.assert_array_equal(r.weights, (r.values * r.scale[:, None, None, None]).astype(np.float32))
    assert r.mse == pytest.approx(r.group_mse.sum()) and r.target == 2.5
    rt = swis_quantize(np.ascontiguousarray(w.reshape(64, -1).T), 2.5, axis=1, pe_cols=8)
    np.testing.assert_array_equal(rt.counts, swis_quantize(w.reshape(64, -1), 2.5, pe_cols=8).counts)
    with pytest.raises(ValueError):
        swis_quantize(w, 9)


# ----------------------------------------------------------------------------- headline effect

def test_swis_beats_bit_truncation(layer):
    """SWIS at 3 shifts vs keeping the top 3 bits of each magnitude (paper: 69.1% vs 30.8%)."""
    w, q, scale, _ = layer
    mag = np.abs(q.astype(np.int64))
    msb = np.floor(np.log2(mag.reshape(64, -1).max(axis=1)))     # 7: each channel's max is 255
    keep = ((1 << (msb + 1).astype(np.int64)) - (1 << (msb - 2).astype(np.int64)))[:, None, None, None]
    trunc = (np.sign(q) * (mag & keep)).astype(np.float32) * scale[:, None, None, None]
    err_trunc = rel_err(trunc, w)
    r = swis_quantize(w, 3)
    err_swis = rel_err(r.weights, w)
    rc = swis_quantize(w, 3, consecutive=True)
    assert err_swis < 0.5 * err_trunc                          # 0.077 vs 0.223 here
    assert err_swis <= rel_err(rc.weights, w) < err_trunc
