"""The evaluation of ``dlac eval``: a labelled dataset through a binary in the ISA interpreter.

Work is split into chunks of consecutive images (:func:`plan_chunks`); each chunk runs as
one :func:`target_dlac.sim.batch.run_batch` call (``--batch`` inputs per interpreter pass)
in this process (``jobs=1``), in a local process pool (``jobs=J``, spawn context; the pool
initializer loads the binary once per worker process) or on a Dask cluster (``dask=ADDR``,
or ``"local"`` for a ``LocalCluster`` of 2 single-threaded workers; each task carries the
binary's bytes and its sha256, and a worker parses it once: a module-global cache keyed by
the sha256).  Chunk results are put back in dataset order, and a batched run gives every
input the outputs and cycles of its single run, so predictions, logits and cycles are
identical however the work is split (``tests/compiler/test_eval.py``).

With ``reference=True`` each chunk also runs the binary's TVM reference, built once per
worker for the chunk's size with its outer loops threaded
(:func:`target_dlac.sim.host.batch_reference_runner`; image by image with
:func:`~target_dlac.sim.host.reference_runner` for a graph that cannot be rebatched); a
pool's workers share the cores (``TVM_NUM_THREADS`` = cores / jobs).
:func:`evaluate` returns the report (schema: docs/eval.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time

import numpy as np

from target_dlac.core.errors import ConfigError

#: per-worker cache: sha256 -> {"program", "interp", "host", "ref", "lock"}
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
#: chunks per worker a parallel run aims at (load balance and progress), at least
CHUNKS_PER_WORKER = 4


def _entry(sha: str, blob: bytes | None = None, path: str | None = None) -> dict:
    """The cached binary of ``sha`` in this process, loaded from ``blob`` or ``path`` the
    first time (the bytes are checked against ``sha``)."""
    with _CACHE_LOCK:
        hit = _CACHE.get(sha)
        if hit is not None:
            return hit
        if blob is None:
            if path is None:
                raise ConfigError(f"worker has no binary {sha[:16]} loaded and was sent none")
            with open(path, "rb") as f:
                blob = f.read()
        if hashlib.sha256(blob).hexdigest() != sha:
            raise ConfigError(f"the binary's bytes do not match its sha256 {sha[:16]} (changed on disk?)")
        from target_dlac.binary.container import from_bytes
        from target_dlac.sim.interpreter import Interpreter

        program = from_bytes(blob)
        host = None
        if program.host is not None:
            from target_dlac.sim.host import HostRunner

            host = HostRunner(program)
        hit = {"program": program, "interp": Interpreter(program, check_races=True), "host": host,
               "ref": None, "lock": threading.Lock()}
        _CACHE[sha] = hit
        return hit


def init_worker(sha: str, path: str, tvm_threads: int | None = None) -> None:
    """Process-pool initializer: load the binary once in this worker (``tvm_threads``: its
    share of the cores for TVM's thread pool, set before TVM is imported)."""
    if tvm_threads:
        os.environ["TVM_NUM_THREADS"] = str(tvm_threads)
    _entry(sha, path=path)


def eval_chunk(sha: str, blob: bytes | None, lo: int, x: np.ndarray, batch: int, reference: bool) -> dict:
    """Run images ``x`` (dataset items ``lo..``) through the cached binary ``sha``: their
    logits (``(n, classes)`` float64 as the output dtype gives them), per-input cycles and
    energy, and (``reference``) the TVM reference's logits."""
    from target_dlac.sim.batch import run_batch

    e = _entry(sha, blob)
    prog = e["program"]
    t_in, t_out = prog.inputs[0], prog.outputs[0]
    with e["lock"]:             # one Interpreter per binary: chunks of a worker's threads take turns
        outs, rep = run_batch(e["interp"], {t_in.name: x}, batch=batch, host_runner=e["host"])
        out = {"lo": lo, "n": len(x), "logits": outs[t_out.name].reshape(len(x), -1),
               "cycles": {k: np.asarray(v, np.int64) for k, v in rep.cycles.items()},
               "energy_pj": {k: np.asarray(v, np.float64) for k, v in rep.energy_pj.items()},
               "ref_logits": None}
        if reference:
            out["ref_logits"] = _reference_logits(e, x, batch)
    return out


def _reference_logits(e: dict, x: np.ndarray, batch: int) -> np.ndarray:
    """The TVM reference's logits of ``x``: the REF graph built once per worker for
    ``batch`` inputs with its outer loops threaded
    (:func:`target_dlac.sim.host.batch_reference_runner`), or, for a graph that cannot be
    rebatched, the batch-1 graph image by image."""
    from target_dlac.sim.host import batch_reference_runner, reference_runner

    prog = e["program"]
    name = (prog.meta.get("input_names") or [prog.inputs[0].name])[0]
    if e["ref"] is None:
        batch = min(batch, len(x))          # the size of this worker's chunks (a last one is padded)
        runner = batch_reference_runner(prog, batch)
        e["ref"] = ("batch", runner) if runner is not None else ("single", reference_runner(prog))
    kind, runner = e["ref"]
    if kind == "single":
        return np.stack([np.asarray(runner({name: x[i]})[0]).reshape(-1) for i in range(len(x))])
    return np.asarray(runner({name: x})[0]).reshape(len(x), -1)


def plan_chunks(n: int, cap: int, workers: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``0..n``: at most ``cap`` images each, and (with several
    workers) small enough that every worker gets about :data:`CHUNKS_PER_WORKER` of them."""
    size = cap if workers <= 1 else max(1, min(cap, -(-n // (workers * CHUNKS_PER_WORKER))))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


# ------------------------------------------------------------------ where the chunks run

def _run_local(sha, blob, x, chunks, batch, reference):
    for lo, hi in chunks:
        yield eval_chunk(sha, blob, lo, x[lo:hi], batch, reference)


def _run_pool(sha, path, x, chunks, batch, reference, jobs):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: the parent may hold TVM (threads); a forked child of it is not safe
    with ProcessPoolExecutor(min(jobs, len(chunks)), mp_context=mp.get_context("spawn"),
                             initializer=init_worker,
                             initargs=(sha, path, max(1, (os.cpu_count() or 1) // jobs))) as ex:
        futs = [ex.submit(eval_chunk, sha, None, lo, x[lo:hi], batch, reference) for lo, hi in chunks]
        for f in as_completed(futs):
            yield f.result()


def _run_dask(sha, blob, x, chunks, batch, reference, address, timeout):
    from compiler import tune_dask

    words = tune_dask.Wording(item="", task="chunk", progress="{done} of {total} chunk(s) were evaluated",
                              none="")
    calls = {i: (sha, blob, lo, x[lo:hi], batch, reference) for i, (lo, hi) in enumerate(chunks)}
    names = {i: f"images {lo}..{hi - 1}" for i, (lo, hi) in enumerate(chunks)}
    for _, out in tune_dask.dask_results(address, calls, names, timeout, fn=eval_chunk, words=words):
        yield out


class _LocalCluster:
    """``--dask local``: a ``distributed.LocalCluster`` of 2 single-threaded worker processes."""

    def __enter__(self):
        try:
            import distributed
        except ImportError:
            raise ConfigError("--dask needs the 'distributed' package: pip install 'distributed'") from None
        from compiler.tune_dask import _quiet_dask_logs

        self._quiet = _quiet_dask_logs()
        self._quiet.__enter__()
        self.cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                                dashboard_address=None, processes=True)
        return self.cluster.scheduler_address

    def __exit__(self, *exc):
        try:
            self.cluster.close()
        finally:
            self._quiet.__exit__(*exc)
        return False


# ------------------------------------------------------------------ metrics

def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per row (the first of equal maxima, as ``argmax``)."""
    return np.argmax(logits, axis=1)


def topk_hits(logits: np.ndarray, y: np.ndarray, k: int = 5) -> np.ndarray:
    """Whether each label is among its row's ``k`` highest scores (ties: lower class first)."""
    order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]
    return (order == y[:, None]).any(axis=1)


def _stats(c: np.ndarray) -> dict:
    c = np.asarray(c, np.float64)
    return {"mean": float(c.mean()), "min": int(c.min()), "max": int(c.max()), "std": float(c.std())}


def metrics(logits, y, cycles, energy, ref_logits=None) -> dict:
    """The report's figures (no timings) from per-image results in dataset order."""
    classes = logits.shape[1]
    pred = top1(logits)
    rep = {"images": int(len(y)), "classes": int(classes), "accuracy": float((pred == y).mean()),
           "correct": int((pred == y).sum()),
           "top5": float(topk_hits(logits, y).mean()) if classes > 5 else None,
           "cycles": _stats(cycles["total"]),
           "cycles_parts_mean": {k: float(np.mean(v)) for k, v in cycles.items() if k != "total"},
           "energy_pj": {"mean": float(np.mean(energy["total"])),
                         "parts_mean": {k: float(np.mean(v)) for k, v in energy.items() if k != "total"}},
           "nonfinite_outputs": int((~np.isfinite(logits)).any(axis=1).sum()),
           "logits_sha256": hashlib.sha256(np.ascontiguousarray(logits).tobytes()).hexdigest(),
           "reference": None}
    if ref_logits is not None:
        rpred = top1(ref_logits)
        both = np.isfinite(logits) & np.isfinite(ref_logits)
        rep["reference"] = {
            "runner": "tvm-llvm", "accuracy": float((rpred == y).mean()),
            "top5": float(topk_hits(ref_logits, y).mean()) if classes > 5 else None,
            "agree": int((rpred == pred).sum()), "agreement": float((rpred == pred).mean()),
            "max_abs_logit_diff": float(np.abs(logits - ref_logits)[both].max()) if both.any() else None,
            "nonfinite_mismatches": int((np.isfinite(logits) != np.isfinite(ref_logits)).sum())}
    rep["per_image"] = {"pred": pred.tolist(), "cycles": [int(c) for c in cycles["total"]]}
    return rep


# ------------------------------------------------------------------ the evaluation

def evaluate(binary: str, ds, *, batch: int | None = None, jobs: int = 1, dask: str | None = None,
             dask_timeout: float = 60.0, reference: bool = False, progress=None) -> dict:
    """Evaluate the binary at path ``binary`` on ``ds`` (:class:`compiler.eval_data.Dataset`);
    ``progress(images done, images)`` after each chunk.  Returns the report (docs/eval.md)."""
    from target_dlac.binary.container import from_bytes
    from target_dlac.sim.batch import batch_cap

    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected at least 1")
    if dask and jobs != 1:
        raise ConfigError("--jobs and --dask both choose where the work runs: give one of them")
    with open(binary, "rb") as f:
        blob = f.read()
    sha = hashlib.sha256(blob).hexdigest()
    program = from_bytes(blob)
    cap = batch_cap(program, batch)
    n = len(ds)
    workers = 2 if dask == "local" else (jobs if not dask else 8)
    chunks = plan_chunks(n, cap, workers)
    x = ds.x
    parts: dict = {}
    done = 0
    with _LocalCluster() if dask == "local" else contextlib.nullcontext() as local_addr:
        t0 = time.perf_counter()            # after a LocalCluster started
        if dask:
            gen = _run_dask(sha, blob, x, chunks, cap, reference, local_addr or dask, dask_timeout)
        elif jobs > 1 and len(chunks) > 1:
            gen = _run_pool(sha, os.path.abspath(binary), x, chunks, cap, reference, jobs)
        else:
            gen = _run_local(sha, blob, x, chunks, cap, reference)
        for out in gen:
            parts[out["lo"]] = out
            done += out["n"]
            if progress:
                progress(done, n)
    seconds = time.perf_counter() - t0
    order = [parts[lo] for lo, _ in chunks]
    logits = np.concatenate([p["logits"] for p in order])
    cycles = {k: np.concatenate([p["cycles"][k] for p in order]) for k in order[0]["cycles"]}
    energy = {k: np.concatenate([p["energy_pj"][k] for p in order]) for k in order[0]["energy_pj"]}
    ref = np.concatenate([p["ref_logits"] for p in order]) if reference else None
    rep = metrics(logits, ds.y, cycles, energy, ref)
    rep.update(seconds=seconds, images_per_s=n / seconds if seconds > 0 else None, batch=cap,
               chunks=len(chunks), jobs=jobs, dask=dask,
               binary={"path": binary, "sha256": sha, "instructions": len(program.insns)},
               data={"source": ds.source, "sha256": ds.sha256, "images": n,
                     "preprocessing": ds.preprocessing})
    rep["per_image"] = rep.pop("per_image")            # the long lists last
    rep["_logits"], rep["_ref_logits"] = logits, ref      # for callers; not written to JSON
    return rep
