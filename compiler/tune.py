"""Per-layer schedule tuning of a compiled model (``dlac tune``).

:func:`collect_layers` walks the partition stage with the codegen (float32 program,
default schedules) and takes every conv / dense layer it met
(:class:`target_dlac.codegen.ConvLayer`) with its tuning-log key.
:func:`tune_model` searches each layer's :class:`ScheduleSpace` with the analytic cost
model (:func:`costmodel.layer_cycles`) and appends one record per layer to the log
(:mod:`target_dlac.tuning_log`).  Layers run in parallel in a local process pool, or on
a Dask distributed cluster (``dask=ADDRESS``; each search is sequential); only the
parent process writes the log.  A layer whose key
already has a record is skipped: rerunning an interrupted tune continues where it
stopped.  SWIS layers are skipped (the cost model does not model ``SACC``).
:func:`schedule_resolver` gives the codegen the best logged schedule of each layer
(:func:`compiler.build.build_program` with ``tuning_log``).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from .errors import ConfigError, DlacError

DASK_CONNECT_TIMEOUT = "10s"


@dataclass
class TuneLayer:
    layer: object           # target_dlac.codegen.ConvLayer
    key: dict               # its tuning-log key

    @property
    def name(self) -> str:
        return self.layer.name


def collect_layers(result, machine) -> list[TuneLayer]:
    """The conv / dense layers of ``result``'s partition stage, in program order, with
    their tuning-log keys."""
    from target_dlac.codegen import Codegen
    from target_dlac.tuning_log import conv_layer_key

    from .build import _codegen_args

    cg = Codegen(result.stages["partition"], machine, **_codegen_args(result, None, None))
    cg.generate()
    mh = machine.hash()
    return [TuneLayer(layer, conv_layer_key(layer, mh)) for layer in cg.conv_layers]


def tune_layer(layer, machine, strategy, trials, time_budget, patience, seed):
    """Search one layer (a :class:`ConvLayer`; runs in a worker process).  Returns a dict
    of the outcome."""
    from target_dlac import costmodel
    from target_dlac.search import search
    from target_dlac.space import ScheduleSpace

    t0 = time.perf_counter()
    space = ScheduleSpace(layer.shape, machine, layer.weights.max_bytes)

    def cost(s):
        return costmodel.layer_cycles(layer.shape, s, machine, layer.weights,
                                      has_scale=layer.has_scale)["total"]

    bounds: dict = {}

    def bound(s):           # the bound does not depend on the loop order or double buffering
        k = (s.f_tile, s.c_tile, s.h_tile, s.w_tile, s.pe_order, s.pxshift)
        if k not in bounds:
            bounds[k] = costmodel.cycles_lower_bound(layer.shape, s, machine, layer.weights,
                                                     has_scale=layer.has_scale)
        return bounds[k]

    res = search(space, cost, strategy, trials=trials, time_budget=time_budget, patience=patience,
                 seed=seed, bound_fn=bound)
    bound = costmodel.layer_lower_bound(layer.shape, res.best_schedule, machine, layer.weights,
                                        has_scale=layer.has_scale)
    return {"schedule": res.best_schedule.to_dict(), "cycles": int(res.best_cost),
            "default_cycles": int(res.history[0][1]), "lower_bound": int(bound),
            "trials": res.trials_used, "pruned": res.pruned, "stopped": res.stopped_because,
            "seconds": time.perf_counter() - t0}


def _row(t: TuneLayer, status, rec=None, note=""):
    row = {"layer": t.name, "op": t.layer.op, "precision": t.layer.precision, "status": status,
           "default_cycles": None, "tuned_cycles": None, "trials": 0, "lower_bound": None,
           "note": note}
    if rec is not None:
        row.update(default_cycles=rec["default_cycles"], tuned_cycles=rec["cycles"],
                   trials=rec["trials"], schedule=rec["schedule"])
        b = rec.get("lower_bound")
        row["lower_bound"] = b if isinstance(b, int) and not isinstance(b, bool) and b > 0 else None
    return row


def tune_model(result, machine, log_path, strategy: str = "best_first", trials: int | None = None,
               time_budget: float | None = None, patience: int | None = None,
               jobs: int | None = None, progress=None, seed: int = 0,
               dask: str | None = None) -> list[dict]:
    """Tune every conv / dense layer of ``result`` (a :class:`CompileResult` through the
    partition stage) on ``machine``, appending one record per newly tuned layer to
    ``log_path``.  ``time_budget`` is per layer (seconds).  ``progress(row, done, total)`` is
    called as each layer is done (or skipped).  Layers are searched in parallel: in a local
    process pool of ``jobs`` workers, or on the Dask distributed cluster whose scheduler
    is at ``dask``; each search is sequential and seeded, so the records are the same
    either way (only the parent process writes the log).  Returns one row per layer, in program order:
    ``layer, op, precision, status ("tuned" | "from log" | "skipped"), default_cycles,
    tuned_cycles, trials, lower_bound (None: not in the record), note``."""
    from target_dlac import tuning_log
    from target_dlac.search import STRATEGIES

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    layers = collect_layers(result, machine)
    done = tuning_log.best(tuning_log.load(log_path))
    rows: list = [None] * len(layers)
    todo: dict = {}             # key_str -> [layer indices] (identical layers tuned once)

    def emit(i, row):
        rows[i] = row
        if progress:
            progress(row, sum(r is not None for r in rows), len(rows))

    for i, layer in enumerate(layers):
        k = tuning_log.key_str(layer.key)
        if layer.layer.shape.swis:
            emit(i, _row(layer, "skipped", note="SWIS: the cost model does not model SACC"))
        elif k in done:
            emit(i, _row(layer, "from log", done[k]))
        else:
            todo.setdefault(k, []).append(i)

    def finish(k, out):
        first = layers[todo[k][0]]
        rec = {"key": first.key, "schedule": out["schedule"], "cycles": out["cycles"],
               "default_cycles": out["default_cycles"], "lower_bound": out["lower_bound"],
               "trials": out["trials"],
               "strategy": strategy, "time": time.time(), "layer": first.name}
        tuning_log.append(log_path, rec)
        for j, i in enumerate(todo[k]):
            emit(i, _row(layers[i], "tuned" if j == 0 else "from log", rec,
                         note=f"stopped: {out['stopped']}, {out['seconds']:.1f} s"))

    args = (machine, strategy, trials, time_budget, patience, seed)
    jobs = jobs or os.cpu_count() or 1
    if dask is None and (jobs <= 1 or len(todo) <= 1):
        for k, idx in todo.items():
            finish(k, tune_layer(layers[idx[0]].layer, *args))
        return rows
    with contextlib.ExitStack() as stack:
        if dask is not None:
            pool = stack.enter_context(_dask_executor(dask))
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(jobs, len(todo))))
        futs = {pool.submit(tune_layer, layers[idx[0]].layer, *args): k for k, idx in todo.items()}
        for fut in as_completed(futs):
            k = futs[fut]
            try:
                out = fut.result()
            except Exception as e:          # a worker's failure, named by its layer
                if dask is None:
                    raise
                raise DlacError(f"layer {layers[todo[k][0]].name}: the Dask worker failed: "
                                f"{type(e).__name__}: {e} (every worker needs dlac installed)") from e
            finish(k, out)
    return rows


@contextlib.contextmanager
def _dask_executor(address: str):
    """A ``concurrent.futures`` executor over the Dask distributed cluster whose scheduler
    is at ``address`` (``tcp://host:port`` or ``host:port``)."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--dask needs the 'distributed' package: pip install 'distributed'") from None
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None
    try:
        yield client.get_executor()
    finally:
        client.close()


def schedule_resolver(records, machine):
    """``(resolve, counts)``: ``resolve(ConvLayer)`` gives the schedule of the best record
    whose key matches the layer (``None``: keep the default), for the codegen's
    ``schedules``; ``counts`` = ``{"tuned_layers", "layers"}`` as the codegen asks."""
    from target_dlac import tuning_log

    best = tuning_log.best(records)
    mh = machine.hash()
    counts = {"tuned_layers": 0, "layers": 0}

    def resolve(layer):
        counts["layers"] += 1
        rec = None if layer.shape.swis else best.get(tuning_log.key_str(tuning_log.conv_layer_key(layer, mh)))
        if rec is None:
            return None
        counts["tuned_layers"] += 1
        return tuning_log.parse_schedule(rec["schedule"])

    return resolve, counts


def format_table(rows: list[dict]) -> str:
    """The closing table of ``dlac tune``: per layer the default and tuned cycles, the
    speedup, the layer's lower bound (:func:`costs.lower_bound` under the tuned schedule)
    and the tuned cycles as % of it, the trials used and the status."""
    lines = [f"{'layer':<28} {'op':<9} {'prec':<8} {'default':>11} {'tuned':>11} {'speedup':>8} "
             f"{'bound':>11} {'%bound':>7} {'trials':>7}  status"]
    tot_d = tot_t = tot_b = 0
    for r in rows:
        d, t, b = r["default_cycles"], r["tuned_cycles"], r.get("lower_bound")
        if d is None:
            lines.append(f"{r['layer']:<28} {r['op']:<9} {r['precision']:<8} {'-':>11} {'-':>11} "
                         f"{'-':>8} {'-':>11} {'-':>7} {'-':>7}  {r['status']} ({r['note']})")
            continue
        tot_d, tot_t, tot_b = tot_d + d, tot_t + t, tot_b + (b or 0)
        bound = f"{b:>11,} {100 * t / b:>6.0f}%" if b else f"{'-':>11} {'-':>7}"
        lines.append(f"{r['layer']:<28} {r['op']:<9} {r['precision']:<8} {d:>11,} {t:>11,} "
                     f"{d / t if t else 1.0:>7.2f}x {bound} {r['trials']:>7}  {r['status']}")
    if tot_t:
        lines.append(f"{'total':<28} {'':<9} {'':<8} {tot_d:>11,} {tot_t:>11,} {tot_d / tot_t:>7.2f}x "
                     f"{tot_b:>11,}")
    return "\n".join(lines)
