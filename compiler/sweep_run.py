"""Running a sweep (``dlac sweep``): compile each compile-option combination once, then
evaluate the points in a local process pool (or on a Dask cluster), appending records to
the sweep file as chunks finish, and rewrite the file sorted by id at the end.

Contract: :func:`run_sweep` returns ``(header, records by id)``; records already in the
output file (same header) are not evaluated again.  The layers of every compile-option
combination ship to each worker once (the pool initializer), points travel in chunks.
Limits: the layers of a combination are planned for the base machine (SWIS filter
groups follow its ``pe_cols``); tuned schedules are not applied (``schedules: "default"``).
"""

from __future__ import annotations

import os
import time

from compiler import sweep, sweep_file

#: points per task sent to a worker, at most
CHUNK = 64
#: seconds between progress lines
PROGRESS_S = 1.0


def header_of(model: str, compile_opts: dict, params: dict, sample, seed, base: dict, n: int,
              layers_modelled: dict) -> dict:
    return {"kind": sweep_file.KIND, "version": sweep_file.VERSION, "model": model, "compile": compile_opts,
            "params": params, "mode": "random" if sample is not None else "grid",
            "seed": seed if sample is not None else None, "schedules": "default", "base_machine": base,
            "points": n, "layers_modelled": layers_modelled}


def compile_combos(model, pts, compile_opts: dict, build, say) -> dict:
    """``{compile key: [SweepLayer]}`` for the compile-option combinations of ``pts``;
    ``build(options) -> CompileResult`` compiles one (``options``: ``compile_opts`` with the
    point's compile params)."""
    out: dict = {}
    for _, p in pts:
        key = sweep.compile_key(p)
        if key in out:
            continue
        opts = {**compile_opts, **dict(key)}
        t0 = time.monotonic()
        result = build(opts)
        out[key] = sweep.sweep_layers(result, opts.get("activations", "fp32"))
        say(f"  compiled {model} with {dict(key) or 'the default options'}: {len(out[key])} conv/dense "
            f"layers, {time.monotonic() - t0:.1f} s")
    return out


def _chunks(todo: list, jobs: int) -> list[list]:
    size = max(1, min(CHUNK, len(todo) // (jobs * 8) or 1))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _local(state: dict, chunks: list, jobs: int):
    if jobs == 1 or len(chunks) == 1:
        for c in chunks:
            yield sweep.evaluate_chunk(c, state)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: the parent holds TVM (threads); a forked child of it is not safe
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=sweep.init_worker,
                             initargs=(state,)) as ex:
        futs = [ex.submit(sweep.evaluate_chunk, c) for c in chunks]
        for f in as_completed(futs):
            yield f.result()


def _dask(state: dict, chunks: list, address: str, timeout: float):
    from compiler import tune_dask

    calls = {i: (c, state) for i, c in enumerate(chunks)}
    names = {i: f"points {c[0][0]}..{c[-1][0]}" for i, c in enumerate(chunks)}
    words = tune_dask.Wording(item="", task="chunk",
                              progress="{done} of {total} chunk(s) were written; rerun to resume")
    for _, recs in tune_dask.dask_results(address, calls, names, timeout, fn=sweep.evaluate_chunk,
                                          words=words):
        yield recs


def run_sweep(out: str, header: dict, pts: list, layers: dict, base: dict, *, jobs: int | None = None,
              dask: str | None = None, dask_timeout: float = 60.0, table=None, say=print,
              stop_after: int | None = None) -> tuple[dict, dict]:
    """Evaluate ``pts`` into ``out`` (resuming it); ``stop_after``: return after that many
    new records without finishing the file (tests: an interruption)."""
    done = sweep_file.resume(out, header)
    todo = [(i, p) for i, p in pts if i not in done]
    if done:
        say(f"  resuming {out}: {len(done)} of {len(pts)} points already there")
    jobs = max(1, jobs or os.cpu_count() or 1)
    state = {"layers": layers, "base": base, "table": table}
    chunks = _chunks(todo, jobs)
    f = sweep_file.start(out, header, resumed=os.path.exists(out) and os.path.getsize(out) > 0)
    t0, new, shown = time.monotonic(), 0, 0.0
    try:
        gen = _dask(state, chunks, dask, dask_timeout) if dask else _local(state, chunks, jobs)
        for recs in gen:
            sweep_file.append(f, recs)
            for r in recs:
                done[r["id"]] = r
            new += len(recs)
            dt = time.monotonic() - t0
            if dt - shown >= PROGRESS_S or len(done) == len(pts):
                shown = dt
                say(f"  {len(done)}/{len(pts)} points, {new / dt if dt > 0 else 0:,.0f} points/s")
            if stop_after is not None and new >= stop_after:
                return header, done
    finally:
        f.close()
    sweep_file.finish(out, header, done)
    return header, done
