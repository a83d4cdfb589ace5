"""Per-layer schedule tuning of a compiled model (``dlac tune``).

:func:`collect_layers` reads every conv / dense layer of the partition stage and its
layer plan (:func:`target_dlac.codegen.composites.conv_layers`: shapes and weights, nothing
lowered or packed) as a :class:`target_dlac.codegen.composites.ConvLayer` with its
tuning-log key.
:func:`tune_model` searches each layer's :class:`ScheduleSpace` with the analytic cost
model (:func:`costmodel.layer_cycles`) and appends one record per layer to the log
(:mod:`target_dlac.tune.tuning_log`).  Layers run in parallel in a local process pool, or on
a Dask distributed cluster (``dask=ADDRESS``; each search is sequential); only the
parent process writes the log.  A layer whose key
already has a record is skipped: rerunning an interrupted tune continues where it
stopped.  Every weight format is tuned: dense (``MAC``), ternary (``TACC``) and SWIS
(``SACC``) layers alike.
:func:`target_dlac.tune.tuning_log.schedule_resolver` gives the codegen the best logged schedule of each layer
(:func:`compiler.build.build_program` with ``tuning_log``).

Failures (issue 11, "Workers"):

* the local pool's workers die with the parent process (Linux: ``PR_SET_PDEATHSIG``;
  everywhere: a watchdog thread that exits once the parent is gone), so a ``kill -9``
  of ``dlac tune`` leaves no worker searching on;
* on Dask, the workers first run an import probe (a function shipped by value, so a
  worker without dlac can run it and report why it cannot import dlac) within
  :data:`compiler.tune_dask.DASK_WORKER_TIMEOUT`; the searches then run only on the workers that passed
  it.  If every worker that passed is lost, the tuner waits up to the same timeout for
  a new one (it probes workers that join) and then fails; a lost scheduler fails at
  once.  Each failure is one :class:`DlacError` line (distributed's own log messages are
  silenced while the tuner talks to the cluster); the layers finished so far are in
  the log, and a rerun resumes;
* a logged record is checked for plausibility before it is used (resuming here,
  :func:`~target_dlac.tune.tuning_log.schedule_resolver` when compiling): see :mod:`target_dlac.tune.tuning_log`; an
  implausible record is an error naming the file, the line and the layer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from target_dlac.core.text import printable

from target_dlac.core.errors import ConfigError
from target_dlac.tune.layer_search import LayerJob, tune_layer

PARENT_POLL = 0.5           # seconds between a pool worker's looks at its parent


@dataclass
class TuneLayer:
    layer: object           # target_dlac.codegen.composites.ConvLayer
    key: dict               # its tuning-log key

    @property
    def name(self) -> str:
        return self.layer.name


def collect_layers(result, machine) -> list[TuneLayer]:
    """The conv / dense layers of ``result``'s partition stage, in program order, with
    their tuning-log keys: read from the partitioned composites and the layer plan
    (:func:`target_dlac.codegen.composites.conv_layers`), nothing lowered or packed."""
    from target_dlac.codegen.composites import conv_layers
    from target_dlac.tune.tuning_log import conv_layer_key

    mh = machine.hash()
    return [TuneLayer(layer, conv_layer_key(layer, mh))
            for layer in conv_layers(result.stages["partition"], result.plan)]


def untuned_layers(result) -> list[str]:
    """One line per dLAC composite with multiplies that the tuner does not search (it has no
    schedule space for them; the codegen uses its default schedule): activation x activation
    matmuls, and conv / dense composites the lowering refuses (they run on the host)."""
    from target_dlac.codegen.composites import Unlowerable, composite_calls, parse

    out = []
    for var, fn in composite_calls(result.stages["partition"]):
        kind = str(fn.attrs["Composite"]).removeprefix("dlac.")
        if kind == "matmul":
            out.append(f"{printable(var)}: activation x activation matmul (default schedule; "
                       "not in the tuner's schedule space)")
        elif kind.startswith(("conv2d", "dense")):
            try:
                parse(fn, result.plan)
            except Unlowerable as e:
                out.append(f"{printable(var)}: {kind} runs on the host ({e})")
    return out


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
               dask: str | None = None, dask_timeout: float | None = None,
               act_ratios: dict | None = None) -> list[dict]:
    """Tune every conv / dense layer of ``result`` (a :class:`CompileResult` through the
    partition stage) on ``machine``, appending one record per newly tuned layer to
    ``log_path``.  ``time_budget`` is per layer (seconds).  ``progress(row, done, total)`` is
    called as each layer is done.  ``trials`` per layer: ``None`` gives random / anneal
    :data:`target_dlac.tune.search.DEFAULT_TRIALS` (as ``dlac tune``) and lets exhaustive /
    best_first end by themselves.  Layers are searched in parallel: in a local
    process pool of ``jobs`` workers, or on the Dask distributed cluster whose scheduler
    is at ``dask``; each search is sequential and seeded, so the records are the same
    either way (only the parent process writes the log).  ``dask_timeout``: seconds (default
    :data:`compiler.tune_dask.DASK_WORKER_TIMEOUT`) to wait for a first worker, for each worker's import
    probe, and for a usable worker once all were lost.  A logged record of a layer must
    be plausible (:func:`tuning_log.check_records`, :func:`tuning_log.check_for_layer`),
    else :class:`tuning_log.TuningLogError` before anything is tuned.  Returns one row per
    layer, in program order: ``layer, op, precision, status ("tuned" | "from log"),
    default_cycles, tuned_cycles, trials, lower_bound (None: not in the
    record), note``.  ``act_ratios``: ``{layer name: {pxshift: ratio}}`` measured on sample
    inputs (:func:`act_ratios`); with it the search minimizes the expected cycles with zero
    activations skipped, else the cycles with dense activations."""
    from target_dlac.tune import tuning_log
    from target_dlac.tune.search import STRATEGIES

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    layers = collect_layers(result, machine)
    logged = tuning_log.load(log_path)
    tuning_log.check_records(logged)
    done = tuning_log.best(logged)
    rows: list = [None] * len(layers)
    todo: dict = {}             # key_str -> [layer indices] (identical layers tuned once)

    def emit(i, row):
        rows[i] = row
        if progress:
            progress(row, sum(r is not None for r in rows), len(rows))

    for i, layer in enumerate(layers):
        k = tuning_log.key_str(layer.key)
        if k in done:
            tuning_log.check_for_layer(logged, done[k], layer.layer, machine)
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

    def job(i: int) -> LayerJob:
        return LayerJob.of(layers[i].layer, (act_ratios or {}).get(layers[i].name))

    jobs = jobs or os.cpu_count() or 1
    if dask is None and (jobs <= 1 or len(todo) <= 1):
        for k, idx in todo.items():
            finish(k, tune_layer(job(idx[0]), *args))
        return rows
    if not todo:
        return rows
    calls = {k: (job(idx[0]), *args) for k, idx in todo.items()}
    if dask is not None:
        from compiler.tune_dask import DASK_WORKER_TIMEOUT, dask_results

        timeout = DASK_WORKER_TIMEOUT if dask_timeout is None else dask_timeout
        names = {k: layers[idx[0]].name for k, idx in todo.items()}
        for k, out in dask_results(dask, calls, names, timeout):
            finish(k, out)
        return rows
    for k, out in _pool_results(calls, jobs):
        finish(k, out)
    return rows


def act_ratios(result, machine, calib: dict, limit: int | None = None, progress=None) -> dict:
    """``{layer name: {pxshift: ratio}}``: the conv steps each layer keeps with the machine's
    zero-activation skipping, measured on the samples of ``calib`` (as ``dlac compile
    --calib`` takes them; the first ``limit``) in the interpreter on the default schedules
    (:func:`target_dlac.tune.act_stats.live_ratios`)."""
    from compiler.build import build_program, calib_samples
    from target_dlac.tune.act_stats import live_ratios

    prog = build_program(result, machine, reference=False)
    return live_ratios(prog, calib_samples(prog, calib, limit), progress=progress)


# ------------------------------------------------------------------ local pool workers

def _pool_results(calls: dict, jobs: int):
    """Run ``tune_layer(*calls[k])`` for every ``k`` in a local pool of at most ``jobs``
    worker processes (which die with this process: :func:`_pool_worker_init`); yield
    ``(k, outcome)`` as each one finishes."""
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(calls))), initializer=_pool_worker_init,
                             initargs=(os.getpid(),)) as pool:
        futs = {pool.submit(tune_layer, *a): k for k, a in calls.items()}
        try:
            for fut in as_completed(futs):
                yield futs[fut], fut.result()
        except BaseException:       # a failure, an interrupt: start no further search
            for fut in futs:
                fut.cancel()
            raise


def _pool_worker_init(parent: int) -> None:
    """Initializer of the local pool's worker processes: die with the parent (``parent``:
    its pid).  Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the worker
    when the parent dies); everywhere: a daemon thread that exits the worker once its
    parent process changed (polled every :data:`PARENT_POLL` s)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    ppid = os.getppid()
    if ppid != parent and not _alive(parent):       # the parent died before the prctl
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(ppid,), name="dlac-watch-parent",
                     daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True         # exists, not ours to signal
    return True


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(PARENT_POLL)
        if os.getppid() != ppid:        # reparented: the parent is gone
            os._exit(1)


def format_table(rows: list[dict]) -> str:
    """The closing table of ``dlac tune``: per layer the default and tuned cycles, the
    speedup, the layer's lower bound (:func:`cycles.lower_bound` under the tuned schedule)
    and the tuned cycles as % of it, the trials used and the status."""
    lines = [f"{'layer':<28} {'op':<9} {'prec':<8} {'default':>11} {'tuned':>11} {'speedup':>8} "
             f"{'bound':>11} {'%bound':>7} {'trials':>7}  status"]
    tot_d = tot_t = tot_b = 0
    for r in rows:
        d, t, b = r["default_cycles"], r["tuned_cycles"], r.get("lower_bound")
        if d is None:
            lines.append(f"{printable(r['layer']):<28} {r['op']:<9} {r['precision']:<8} {'-':>11} {'-':>11} "
                         f"{'-':>8} {'-':>11} {'-':>7} {'-':>7}  {r['status']} ({r['note']})")
            continue
        tot_d, tot_t, tot_b = tot_d + d, tot_t + t, tot_b + (b or 0)
        bound = f"{b:>11,} {100 * t / b:>6.0f}%" if b else f"{'-':>11} {'-':>7}"
        lines.append(f"{printable(r['layer']):<28} {r['op']:<9} {r['precision']:<8} {d:>11,} {t:>11,} "
                     f"{d / t if t else 1.0:>7.2f}x {bound} {r['trials']:>7}  {r['status']}")
    if tot_t:
        lines.append(f"{'total':<28} {'':<9} {'':<8} {tot_d:>11,} {tot_t:>11,} {tot_d / tot_t:>7.2f}x "
                     f"{tot_b:>11,}")
    return "\n".join(lines)
