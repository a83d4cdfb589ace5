"""One layer's schedule search, as a worker runs it (local pool or Dask).

:class:`LayerJob` is what a worker receives (the layer's shape, weights and epilogue
facts, no codegen objects); :func:`tune_layer` searches the layer's
:class:`~target_dlac.tune.space.ScheduleSpace` with the cost model and returns the
outcome as a dict (the tuning-log record's fields).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class LayerJob:
    """What :func:`tune_layer` needs of a :class:`ConvLayer` (shipped to the workers
    instead of the layer: unpickling a ``ConvLayer`` imports the codegen, hence TVM)."""
    shape: object           # ConvShape
    weights: object         # LayerWeights
    has_scale: bool
    #: ``{pxshift: ratio}`` of the layer's conv steps left with zero activations skipped,
    #: measured on sample inputs (:mod:`target_dlac.tune.act_stats`); ``None``: dense activations
    live_ratio: dict | None = None

    @classmethod
    def of(cls, layer, live_ratio: dict | None = None) -> LayerJob:
        return cls(layer.shape, layer.weights, layer.has_scale, live_ratio)


def tune_layer(layer, machine, strategy, trials, time_budget, patience, seed):
    """Search one layer (a :class:`LayerJob`; runs in a worker process) for the least
    cycles the cost model predicts: the expected cycles over its ``live_ratio`` when it has
    one (zero activations skipped), else the cycles with dense activations.  Returns a
    dict of the outcome."""
    from target_dlac.tune import costmodel
    from target_dlac.tune.search import search
    from target_dlac.tune.space import ScheduleSpace

    t0 = time.perf_counter()
    ratio = getattr(layer, "live_ratio", None)          # a ConvLayer has none: dense activations
    space = ScheduleSpace(layer.shape, machine, layer.weights.max_bytes)

    def cost(s):
        return costmodel.layer_cycles(layer.shape, s, machine, layer.weights, has_scale=layer.has_scale,
                                      live_ratio=ratio)["total"]

    bounds: dict = {}

    def bound(s):           # the bound does not depend on the loop order or double buffering
        k = (s.f_tile, s.c_tile, s.h_tile, s.w_tile, s.pe_order, s.pxshift)
        if k not in bounds:
            bounds[k] = costmodel.cycles_lower_bound(layer.shape, s, machine, layer.weights,
                                                     has_scale=layer.has_scale, live_ratio=ratio)
        return bounds[k]

    res = search(space, cost, strategy, trials=trials, time_budget=time_budget, patience=patience,
                 seed=seed, bound_fn=bound)
    bound = costmodel.layer_lower_bound(layer.shape, res.best_schedule, machine, layer.weights,
                                        has_scale=layer.has_scale, skipped_acts=ratio is not None)
    return {"schedule": res.best_schedule.to_dict(), "cycles": int(res.best_cost),
            "default_cycles": int(res.history[0][1]), "lower_bound": int(bound),
            "trials": res.trials_used, "pruned": res.pruned, "stopped": res.stopped_because,
            "seconds": time.perf_counter() - t0}
