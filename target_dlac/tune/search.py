"""Search strategies over a :class:`~target_dlac.tune.space.ScheduleSpace`, behind one interface:

    search(space, cost_fn, strategy, *, trials=None, time_budget=None, patience=None,
           seed=0, on_trial=None) -> SearchResult

``cost_fn(schedule) -> number`` (lower is better), e.g. ``layer_cycles(...)["total"]``.

Rules common to all strategies:

* a *trial* is one call of ``cost_fn`` on a schedule not evaluated before in this run
  (costs are memoized: revisiting a schedule costs no trial);
* the default schedule (``space.default()``) is always trial 0, whatever the budgets, so
  the result is never worse than the default;
* budgets (any combination; checked before each further trial): ``trials`` = total
  number of trials (including the default), ``time_budget`` = wall seconds since the
  start, ``patience`` = stop once ``patience`` consecutive trials brought no strict
  improvement of the best cost;
* ``on_trial(i, schedule, cost)`` is called after each trial (``i`` from 0);
* for a given ``seed`` (and no time budget hit) the run is deterministic.

Pruning (``bound_fn``, a lower bound of ``cost_fn``, e.g.
:func:`costmodel.cycles_lower_bound`): a trial whose bound shows it cannot change the
run is recorded as pruned (cost ``None`` in the history, counted in ``pruned``)
without calling ``cost_fn``: exhaustive / random when the bound is at least the best
cost; anneal when the bound is above the current cost (so the acceptance draw ``u``
happens either way) and at least ``current * (1 - T ln u)``, the cost below which the
proposal would be accepted.  The run is otherwise the same as without ``bound_fn``:
the same trials, schedules, decisions and result (tested); a pruned schedule met again
is costed exactly then.

``stopped_because``: ``"exhausted"`` (exhaustive: every valid schedule evaluated;
random / anneal: no unevaluated schedule found in a bounded number of draws / steps),
``"proved"`` (best_first: every schedule not costed has a bound at least the best
cost, so the best is the space's optimum), ``"trials"``, ``"time_budget"`` or
``"patience"``.

Strategies:

* ``best_first`` (model-guided; needs ``bound_fn``, the default of ``dlac tune``): the
  bound of every valid schedule first (cheap: no instruction stream), then exact costs
  in increasing bound order, stopping once the next bound reaches the best cost found.
  Without a budget cut it returns the exhaustive optimum, usually after a few dozen
  exact costs; with ``trials`` it costs the ``trials`` most promising schedules.

* ``exhaustive``: every valid schedule of the space in grid order (after the default);
* ``random``: valid schedules drawn by :meth:`ScheduleSpace.random` (duplicates skipped);
* ``anneal``: simulated annealing over :meth:`ScheduleSpace.neighbors`, starting from the
  default.  Each step proposes a random neighbor of the current schedule; a better one is
  always accepted, a worse one with probability ``exp(-d / T)`` where
  ``d = (new - current) / current`` is the *relative* cost increase (so the temperature is
  independent of the layer's cycle scale).  The temperature decays geometrically with the
  trial count ``i``: ``T(i) = T0 * (T1 / T0) ** (i / N)``, ``T0 = 0.05`` (a 5% worse
  schedule is accepted with probability 1/e at the start), ``T1 = 0.001``, ``N = trials``
  (``DEFAULT_TRIALS`` if no trial budget).  A proposal already evaluated costs no trial; after 30
  such steps in a row, or when the current schedule has no neighbor, the walk restarts
  from the best schedule so far (every other restart: from a random valid schedule).
  Random / anneal with no budget at all run ``DEFAULT_TRIALS`` (200) trials, as ``dlac tune``.
"""

from __future__ import annotations

import math
import random as _random
import time
from dataclasses import dataclass, field

from target_dlac.codegen.schedule import Schedule
from target_dlac.tune.space import ScheduleSpace

STRATEGIES = ("exhaustive", "random", "anneal", "best_first")
T0, T1 = 0.05, 0.001
#: trials of random / anneal without a budget (also ``dlac tune --trials``' default)
DEFAULT_TRIALS = 200
STALE_STEPS = 30
_MISSING = object()


@dataclass
class SearchResult:
    best_schedule: Schedule
    best_cost: float
    trials_used: int
    history: list = field(default_factory=list)     # [(schedule, cost or None: pruned)]
    stopped_because: str = ""
    pruned: int = 0                                 # trials pruned by the bound


class _Stop(Exception):
    def __init__(self, why: str):
        self.why = why


class _Run:
    """Memoized evaluation with the budgets and the best-so-far."""

    def __init__(self, cost_fn, trials, time_budget, patience, on_trial, bound_fn=None):
        self.cost_fn, self.trials, self.time_budget = cost_fn, trials, time_budget
        self.bound_fn, self.pruned = bound_fn, 0
        self.patience, self.on_trial = patience, on_trial
        self.start = time.monotonic()
        self.cache: dict[Schedule, float] = {}
        self.history: list = []
        self.best, self.best_cost, self.since_best = None, math.inf, 0

    def _budget_left(self):
        n = len(self.history)
        if self.trials is not None and n >= self.trials:
            raise _Stop("trials")
        if self.time_budget is not None and time.monotonic() - self.start >= self.time_budget:
            raise _Stop("time_budget")
        if self.patience is not None and self.since_best >= self.patience:
            raise _Stop("patience")

    def evaluate(self, s: Schedule, force: bool = False, prune_at: float | None = None,
                 bound: float | None = None):
        """The cost of ``s`` (a trial unless cached).  With ``prune_at``, and a bound
        (given, or ``bound_fn(s)``) of at least ``prune_at``, the trial is recorded as
        pruned (cost ``None``) without calling ``cost_fn``."""
        got = self.cache.get(s, _MISSING)
        if got is None:                      # pruned before: cost it now (no new trial)
            got = self.cache[s] = self.cost_fn(s)
            if got < self.best_cost:
                self.best, self.best_cost = s, got
        if got is not _MISSING:
            return got
        if not force:
            self._budget_left()
        i = len(self.history)
        if prune_at is not None and self.bound_fn is not None:
            if bound is None:
                bound = self.bound_fn(s)
            if bound >= prune_at:
                self.cache[s] = None
                self.history.append((s, None))
                self.pruned += 1
                self.since_best += 1
                if self.on_trial is not None:
                    self.on_trial(i, s, None)
                return None
        c = self.cost_fn(s)
        self.cache[s] = c
        self.history.append((s, c))
        if c < self.best_cost:
            self.best, self.best_cost, self.since_best = s, c, 0
        else:
            self.since_best += 1
        if self.on_trial is not None:
            self.on_trial(i, s, c)
        return c


def search(space: ScheduleSpace, cost_fn, strategy: str = "anneal", *, trials: int | None = None,
           time_budget: float | None = None, patience: int | None = None, seed: int = 0,
           on_trial=None, bound_fn=None) -> SearchResult:
    """Search ``space`` for the schedule of least ``cost_fn`` (see the module docstring;
    ``bound_fn``: a lower bound of ``cost_fn`` for pruning)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    if strategy == "best_first" and bound_fn is None:
        raise ValueError("best_first needs bound_fn (a lower bound of cost_fn)")
    if strategy not in ("exhaustive", "best_first") and trials is None and time_budget is None \
            and patience is None:
        trials = DEFAULT_TRIALS
    rng = _random.Random(seed)
    run = _Run(cost_fn, trials, time_budget, patience, on_trial, bound_fn)
    run.evaluate(space.default(), force=True)
    why = "exhausted"
    try:
        if strategy == "exhaustive":
            for s in space:
                run.evaluate(s, prune_at=run.best_cost)
        elif strategy == "random":
            _random_search(space, run, rng)
        elif strategy == "best_first":
            why = _best_first(space, run)
        else:
            _anneal(space, run, rng, trials or DEFAULT_TRIALS)
    except _Stop as stop:
        why = stop.why
    return SearchResult(run.best, run.best_cost, len(run.history), run.history, why, run.pruned)


def _best_first(space: ScheduleSpace, run: _Run) -> str:
    """Every valid schedule's bound, then exact costs in increasing bound order (ties: grid
    order) until the next bound reaches the best cost: "proved" (no schedule left can be
    better: the space's optimum), or a budget stops it first."""
    bounds = []
    for i, s in enumerate(space):
        if run.time_budget is not None and time.monotonic() - run.start >= run.time_budget:
            raise _Stop("time_budget")
        bounds.append((run.bound_fn(s), i, s))
    bounds.sort(key=lambda t: (t[0], t[1]))
    for b, _, s in bounds:
        if b >= run.best_cost:
            return "proved"
        run.evaluate(s)
    return "proved"


def _random_search(space: ScheduleSpace, run: _Run, rng) -> None:
    dups = 0
    while dups < 200:
        s = space.random(rng)
        if s is None:
            return
        if s in run.cache:
            dups += 1
            continue
        dups = 0
        run.evaluate(s, prune_at=run.best_cost)


def _anneal(space: ScheduleSpace, run: _Run, rng, n: int) -> None:
    cur = space.default()
    cur_cost = run.cache[cur]
    stale = restarts = 0
    max_restarts = 100
    while True:
        nbrs = space.neighbors(cur)
        if stale >= STALE_STEPS or not nbrs:
            restarts += 1
            if restarts > max_restarts:
                return
            nxt = run.best if restarts % 2 else (space.random(rng) or run.best)
            cur, cur_cost, stale = nxt, run.evaluate(nxt), 0
            continue
        cand = rng.choice(nbrs)
        fresh = cand not in run.cache
        u = None
        if fresh and run.bound_fn is not None and cur_cost > 0:
            b = run.bound_fn(cand)
            if b > cur_cost:        # worse for sure: the acceptance draw happens either way
                u = rng.random()
                temp = T0 * (T1 / T0) ** min(1.0, (len(run.history) + 1) / n)
                # accepted iff u < exp(-d / temp), i.e. cost < cur_cost * (1 - temp * ln u)
                limit = cur_cost * (1 - temp * math.log(u)) if u > 0 else math.inf
                if run.evaluate(cand, prune_at=limit * (1 + 1e-9) + 1, bound=b) is None:
                    stale = restarts = 0
                    continue
        c = run.evaluate(cand)
        stale = 0 if fresh else stale + 1
        if fresh:
            restarts = 0
        temp = T0 * (T1 / T0) ** min(1.0, len(run.history) / n)
        d = (c - cur_cost) / cur_cost if cur_cost > 0 else c - cur_cost
        if d <= 0 or (u if u is not None else rng.random()) < math.exp(-d / temp):
            cur, cur_cost = cand, c
