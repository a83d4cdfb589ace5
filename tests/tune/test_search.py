"""Schedule space (:mod:`target_dlac.tune.space`) and search strategies (:mod:`target_dlac.tune.search`).

(a) A synthetic cost with a known optimum over the real space of a small layer (grid
distance to a chosen target schedule): exhaustive finds it exactly, random and anneal
within a generous budget; patience / trial / time budgets stop as documented; runs are
deterministic per seed.
(b) Real ternary conv layers with the analytic cost model: the exhaustive optimum is no
worse than the default, annealing with 200 trials is within 2% of it, and every
evaluated schedule passes ``schedule.check``.  (The 7x7 layer uses ``max_splits=3`` so
that its exhaustive run stays within the test's time budget; the tiniest tiles are the
slowest to cost and never the best.)
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest

from target_dlac.codegen.layer_weights import LayerWeights
from target_dlac.tune.costmodel import layer_cycles
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import ConvShape, Schedule, check, default_schedule
from target_dlac.tune.search import search
from target_dlac.tune.space import ScheduleSpace

M = Machine()


def _conv(c, hw, f, k=3, p=1):
    o = hw + 2 * p - k + 1
    return ConvShape(1, c, hw, hw, f, k, k, 1, 1, (p, p, p, p), o, o)


def _ternary(shape, seed, density=0.5):
    rng = np.random.default_rng(seed)
    w = rng.choice(np.array([-1, 1], np.int8), size=(shape.f, shape.c, shape.kh, shape.kw))
    return (w * (rng.random(w.shape) < density)).astype(np.int8)


def _space(shape, w, **kw):
    return ScheduleSpace(shape, M, LayerWeights(w, True, False).max_bytes, **kw)


# ------------------------------------------------------------------ (a) synthetic

SMALL = _conv(32, 28, 32)
W_SMALL = _ternary(SMALL, 1)


def _distance_cost(space: ScheduleSpace, target: Schedule):
    """Grid-index distance to ``target`` (0 exactly there)."""
    def idx(lst, v):
        return lst.index(v)

    def cost(s: Schedule) -> float:
        d = 0
        for name, lst in (("f_tile", space.f_opts), ("c_tile", space.c_opts),
                          ("h_tile", space.h_opts), ("w_tile", space.w_opts)):
            d += abs(idx(lst, getattr(s, name)) - idx(lst, getattr(target, name)))
        d += (s.order != target.order) + (s.double_buffer != target.double_buffer) \
            + (s.pe_order != target.pe_order)
        return float(d)
    return cost


@pytest.fixture(scope="module")
def synth():
    space = _space(SMALL, W_SMALL)
    target = Schedule(16, 11, 7, 14, order="filter_outer", double_buffer=False, pe_order="as_is")
    check(SMALL, target, M, space.wbytes)
    assert target != space.default()
    return space, target, _distance_cost(space, target)


def test_space_grid(synth):
    space, _, _ = synth
    assert space.f_opts == [8, 11, 16, 32] and space.c_opts == [8, 11, 16, 32]
    assert space.h_opts == space.w_opts == [7, 10, 14, 28]
    assert space.size() == 4 ** 4 * 8
    valid = list(space)
    assert 0 < len(valid) <= space.size() and space.default() in valid
    for s in valid[::50]:
        check(SMALL, s, M, space.wbytes)
    d = space.default()
    assert d == default_schedule(SMALL, M, space.wbytes)
    import random
    rng = random.Random(0)
    for s in space.neighbors(d, rng):
        check(SMALL, s, M, space.wbytes)
        diff = [k for k in s.to_dict() if getattr(s, k) != getattr(d, k)]
        assert len(diff) == 1
    assert space.random(rng) in valid


def test_exhaustive_finds_known_optimum(synth):
    space, target, cost = synth
    r = search(space, cost, "exhaustive")
    assert r.best_schedule == target and r.best_cost == 0
    assert r.stopped_because == "exhausted" and r.trials_used == len(list(space))
    assert r.history[0][0] == space.default()


@pytest.mark.parametrize("strategy,trials", [("random", 2000), ("anneal", 300)])
def test_random_and_anneal_find_known_optimum(synth, strategy, trials):
    space, target, cost = synth
    r = search(space, cost, strategy, trials=trials, patience=None, seed=3)
    assert r.best_schedule == target and r.best_cost == 0, (strategy, r.best_cost, r.trials_used)
    at = next(i for i, (_, c) in enumerate(r.history) if c == 0)
    print(f"{strategy}: optimum found at trial {at} of {r.trials_used} ({r.stopped_because})")


def test_budgets(synth):
    space, _, cost = synth
    flat = search(space, lambda s: 1.0, "random", patience=5)
    assert flat.stopped_because == "patience" and flat.trials_used == 6   # default + 5 without gain
    r = search(space, cost, "anneal", trials=10)
    assert r.stopped_because == "trials" and r.trials_used == 10
    r = search(space, cost, "exhaustive", trials=25)
    assert r.stopped_because == "trials" and r.trials_used == 25

    def slow(s):
        time.sleep(0.02)
        return cost(s)
    t = time.monotonic()
    r = search(space, slow, "exhaustive", time_budget=0.2)
    # stops on the budget long before the 2048 schedules; a loaded machine only slows trials
    assert r.stopped_because == "time_budget" and 1 <= r.trials_used <= 12
    assert time.monotonic() - t < 5.0
    # the default is evaluated even with no budget left
    r = search(space, cost, "random", trials=0)
    assert r.trials_used == 1 and r.best_schedule == space.default()


def test_on_trial_and_determinism(synth):
    space, _, cost = synth
    seen = []
    r = search(space, cost, "anneal", trials=50, seed=7, on_trial=lambda i, s, c: seen.append((i, s, c)))
    assert [i for i, _, _ in seen] == list(range(50))
    assert [(s, c) for _, s, c in seen] == r.history
    for strategy in ("random", "anneal"):
        a = search(space, cost, strategy, trials=60, seed=11)
        b = search(space, cost, strategy, trials=60, seed=11)
        c = search(space, cost, strategy, trials=60, seed=12)
        assert a.history == b.history and a.best_schedule == b.best_schedule
        assert a.history != c.history
    # never worse than the default
    for strategy in ("random", "anneal", "exhaustive"):
        r = search(space, cost, strategy, trials=20, seed=1)
        assert r.best_cost <= cost(space.default())


# ------------------------------------------------------------------ (b) real layers

REAL = {
    "t32_3x3_28": (_conv(32, 28, 32), {}),
    "mnist_64_128_7": (_conv(64, 7, 128), {"max_splits": 3}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_layer_exhaustive_vs_anneal(name):
    shape, kw = REAL[name]
    w = _ternary(shape, zlib.crc32(name.encode()), density=0.5)
    space = _space(shape, w, **kw)
    evaluated = []

    def cost(s):
        check(shape, s, M, space.wbytes)           # raises if an invalid schedule is costed
        evaluated.append(s)
        return layer_cycles(shape, s, M, w)["total"]

    default = cost(space.default())
    t = time.monotonic()
    ex = search(space, cost, "exhaustive")
    t_ex = time.monotonic() - t
    t = time.monotonic()
    an = search(space, cost, "anneal", trials=200, seed=0)
    t_an = time.monotonic() - t
    print(f"\n{name}: grid {space.size()} raw; default {default} cycles; exhaustive {ex.best_cost} "
          f"({ex.trials_used} trials, {t_ex:.1f} s, {ex.best_schedule}); anneal {an.best_cost} "
          f"({an.trials_used} trials, {t_an:.2f} s, {an.best_cost / ex.best_cost - 1:+.2%})")
    assert ex.stopped_because == "exhausted" and ex.best_cost <= default
    assert an.trials_used <= 200 and an.best_cost <= default
    assert an.best_cost <= 1.02 * ex.best_cost
    assert len(evaluated) == 1 + ex.trials_used + an.trials_used


# ------------------------------------------------------------------ (c) pruning by the bound

@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["exhaustive", "random", "anneal"])
def test_pruning_by_the_bound_changes_no_result(strategy):
    """``bound_fn`` (``costmodel.cycles_lower_bound``) is never above the exact cost, and a
    search pruned by it returns what the unpruned search returns: the same best schedule
    and cost, the same trials, the same schedules in the same order (anneal: the same
    accept / reject decisions), with fewer calls of the exact cost."""
    from target_dlac.tune.costmodel import cycles_lower_bound

    shape = _conv(32, 28, 32)
    w = _ternary(shape, 5, density=0.4)
    space = _space(shape, w, max_splits=3)
    calls = {"exact": 0}

    def cost(s):
        calls["exact"] += 1
        c = layer_cycles(shape, s, M, w)["total"]
        assert cycles_lower_bound(shape, s, M, w) <= c, s
        return c

    def bound(s):
        return cycles_lower_bound(shape, s, M, w)

    kw = {} if strategy == "exhaustive" else {"trials": 120, "seed": 4}
    plain = search(space, cost, strategy, **kw)
    n_plain, calls["exact"] = calls["exact"], 0
    pruned = search(space, cost, strategy, bound_fn=bound, **kw)
    assert (pruned.best_schedule, pruned.best_cost, pruned.trials_used, pruned.stopped_because) == \
        (plain.best_schedule, plain.best_cost, plain.trials_used, plain.stopped_because)
    assert [s for s, _ in pruned.history] == [s for s, _ in plain.history]
    for (_, a), (_, b) in zip(pruned.history, plain.history):
        assert a is None or a == b
    assert pruned.pruned == sum(c is None for _, c in pruned.history) > 0
    assert calls["exact"] < n_plain
    print(f"\n{strategy}: {pruned.trials_used} trials, {pruned.pruned} pruned, exact cost "
          f"{calls['exact']} calls vs {n_plain}")


@pytest.mark.slow
def test_best_first_finds_the_exhaustive_optimum_with_few_exact_costs():
    """Model-guided best-first (bounds first, exact costs in bound order) returns the
    exhaustive optimum's cost, says it proved it, and costs a fraction of the space."""
    from target_dlac.tune.costmodel import cycles_lower_bound

    shape = _conv(48, 14, 96)
    w = _ternary(shape, 11, density=0.45)
    space = _space(shape, w, max_splits=3)

    def cost(s):
        return layer_cycles(shape, s, M, w)["total"]

    def bound(s):
        return cycles_lower_bound(shape, s, M, w)

    ex = search(space, cost, "exhaustive")
    bf = search(space, cost, "best_first", bound_fn=bound)
    assert bf.best_cost == ex.best_cost and bf.stopped_because == "proved"
    assert bf.trials_used < ex.trials_used / 4, (bf.trials_used, ex.trials_used)
    capped = search(space, cost, "best_first", bound_fn=bound, trials=3)
    assert capped.trials_used == 3 and capped.stopped_because == "trials"
    with pytest.raises(ValueError, match="bound_fn"):
        search(space, cost, "best_first")


def test_best_first_on_synthetic_known_optimum(synth):
    space, target, cost = synth
    r = search(space, cost, "best_first", bound_fn=lambda s: cost(s) / 2)
    assert r.best_schedule == target and r.best_cost == 0 and r.stopped_because == "proved"
