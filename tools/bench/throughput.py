#!/usr/bin/env python
"""Throughput of the dLAC interpreter vs PyTorch eager, onnxruntime and the TVM reference.

Times, side by side in one run, on the bundled MNIST CNN (real test images, compiled
as ``compiler/demo.py`` does: QuantConfig(), build_program) and on torchvision-shaped
ResNet-18 at 224x224 (randomized BatchNorm, random inputs, compiled as
``tools/bench/interpreter_resnet18.py`` does):

* PyTorch eager (``torch.set_num_threads(--threads)``, no_grad) at batch 1 and each
  ``--batches`` size;
* onnxruntime on the float model exported by ``torch.onnx.export`` (ir_version 10,
  ``intra_op_num_threads=--threads``) at the same batches;
* the TVM reference of the binary (``reference_runner``), one call per image;
* the dLAC interpreter: ``Interpreter.run`` per image (batch 1) and
  ``target_dlac.sim.batch.run_batch`` at each ``--batches`` size (cycles always counted).

Each engine is warmed up once, then timed over all the images in one pass.  The
batched interpreter's predictions and per-input cycles are asserted equal to the
batch-1 run's (the script fails loudly otherwise).  A batch larger than the image count
runs as one batch of all images.  Columns: ``t/eager`` = seconds per image / PyTorch
eager's at the same batch (the goals want <= 3); ``x interp1`` = speedup over the
batch-1 interpreter.  Then the goal lines of issue 17 with PASS/MISS.

    python tools/bench/throughput.py [--images 10000] [--r18-images 64] [--skip-r18]
        [--batches 1,8,32,128] [--threads 2] [--ref-images N] [--profile] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shlex
import sys
import time
import warnings

os.environ.setdefault("TVM_NUM_THREADS", "2")    # before TVM loads; --threads overrides

import numpy as np

EAGER, ORT, REF, INTERP, BATCHED = "pytorch-eager", "onnxruntime", "tvm-reference", "interp", "interp-batch"
#: the batched interpreter in ``--threads`` processes (``dlac eval --jobs``: the same cores
#: as PyTorch's threads; the interpreter runs BLAS single-threaded)
PROCS = "interp-procs"
#: issue 17's goals: MNIST 10k images under this many seconds, within GOAL_X of eager
MNIST_GOAL_S, GOAL_X = 10.0, 3.0


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import tvm

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "tvm": tvm.__version__}


def _chunks(n: int, b: int):
    return [(lo, min(n, lo + b)) for lo in range(0, n, b)]


def _row(engine: str, batch: int, images: int, seconds: float, **extra) -> dict:
    return {"engine": engine, "batch": batch, "images": images, "seconds": seconds,
            "images_per_s": images / seconds if seconds > 0 else float("inf"), **extra}


def _preds(out: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(out).reshape(n, -1).argmax(1)


def _profile(fn, label: str, echo) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    text = f"== cProfile, top 15 by tottime: {label}\n" + buf.getvalue().strip()
    echo(text)
    return text


def _torch_rows(model, X, shape, sizes, threads, echo) -> tuple[list, np.ndarray]:
    """PyTorch eager at each batch size; returns (rows, batch-1 predictions)."""
    import torch

    torch.set_num_threads(threads)
    n, rows, pred1 = len(X), [], None
    with torch.no_grad():
        for b in sizes:
            xs = [torch.from_numpy(X[lo:hi].reshape((-1,) + shape[1:])) for lo, hi in _chunks(n, b)]
            model(xs[0])                                    # warm-up
            t0 = time.perf_counter()
            outs = [model(x) for x in xs]
            rows.append(_row(EAGER, b, n, time.perf_counter() - t0))
            if b == 1:
                pred1 = _preds(torch.cat(outs).numpy(), n)
            echo(f"  {EAGER} batch {b}: {rows[-1]['images_per_s']:,.1f} images/s", flush=True)
    return rows, pred1


def _ort_rows(model, X, shape, sizes, threads, echo) -> list:
    """onnxruntime on the float model (dynamic batch axis, ir_version 10)."""
    import onnx
    import onnxruntime as ort
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():                      # the TorchScript exporter's deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(X[0].copy()),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    n, rows = len(X), []
    for b in sizes:
        xs = [np.ascontiguousarray(X[lo:hi].reshape((-1,) + shape[1:])) for lo, hi in _chunks(n, b)]
        sess.run(None, {"x": xs[0]})                         # warm-up
        t0 = time.perf_counter()
        for x in xs:
            sess.run(None, {"x": x})
        rows.append(_row(ORT, b, n, time.perf_counter() - t0))
        echo(f"  {ORT} batch {b}: {rows[-1]['images_per_s']:,.1f} images/s", flush=True)
    return rows


def _ref_row(program, X, limit, echo) -> tuple[dict, np.ndarray]:
    from target_dlac.sim.host import reference_runner

    runner = reference_runner(program)
    n = len(X) if limit is None else min(limit, len(X))
    runner({"x": X[0]})                                     # warm-up
    t0 = time.perf_counter()
    outs = [runner({"x": X[i]})[0] for i in range(n)]
    row = _row(REF, 1, n, time.perf_counter() - t0)
    echo(f"  {REF} batch 1: {row['images_per_s']:,.1f} images/s ({n} images)", flush=True)
    return row, _preds(np.stack(outs), n)


def _ref_batch_row(program, X, n, batch, pred1, echo) -> dict | None:
    """The REF graph built for ``batch`` inputs with its outer loops threaded (what
    ``dlac eval --reference`` runs); asserts its predictions equal the batch-1 graph's."""
    from target_dlac.sim.host import batch_reference_runner

    t0 = time.perf_counter()
    runner = batch_reference_runner(program, batch)
    if runner is None:
        echo(f"  {REF} batch {batch}: the graph cannot be rebatched", flush=True)
        return None
    build = time.perf_counter() - t0
    batch = runner.batch                                    # (halved to fit the graph's work bound)
    runner({"x": X[:batch]})                                # warm-up
    t0 = time.perf_counter()
    outs = runner({"x": X[:n]})[0]
    row = _row(REF, batch, n, time.perf_counter() - t0, build_s=build)
    if not np.array_equal(_preds(outs, n), pred1):
        raise AssertionError(f"the batch-{batch} reference predicts differently from the batch-1 one")
    echo(f"  {REF} batch {batch}: {row['images_per_s']:,.1f} images/s ({n} images; built in {build:.1f} s)",
         flush=True)
    return row


def _interp_rows(program, X, sizes, profile, echo) -> tuple[list, dict, list]:
    """The interpreter at batch 1 and batched; asserts the batched runs equal batch 1."""
    from target_dlac.sim.batch import batch_cap, run_batch
    from target_dlac.sim.interpreter import Interpreter

    interp, n, out_name = Interpreter(program, check_races=False), len(X), program.outputs[0].name
    interp.run({"x": X[0]})                                 # warm-up (NumPy/BLAS, weight cache)
    t0 = time.perf_counter()
    runs = [interp.run({"x": X[i]}) for i in range(n)]
    row1 = _row(INTERP, 1, n, time.perf_counter() - t0)
    out1 = np.stack([o[out_name] for o, _ in runs])
    cyc1 = np.array([r.cycles["total"] for _, r in runs], np.int64)
    pred1 = _preds(out1, n)
    rows, checks, profiles = [row1], {"pred1": pred1, "cycles": cyc1}, []
    echo(f"  {INTERP} batch 1: {row1['images_per_s']:,.1f} images/s", flush=True)
    run_batch(interp, {"x": X[:1]}, batch=1)                # warm-up of the batched path
    for b in sizes:
        chunk = batch_cap(program, b)
        t0 = time.perf_counter()
        outs, rep = run_batch(interp, {"x": X}, batch=b)
        secs = time.perf_counter() - t0
        ob = outs[out_name]
        pred = _preds(ob, n)
        bad = np.flatnonzero(pred != pred1)
        if len(bad):
            raise AssertionError(f"batched interpreter (batch {b}) predicts differently from batch 1 on "
                                 f"{len(bad)} of {n} inputs (first: input {bad[0]}: {pred[bad[0]]} vs "
                                 f"{pred1[bad[0]]})")
        cyc = np.asarray(rep.cycles["total"], np.int64)
        if not np.array_equal(cyc, cyc1):
            k = int(np.flatnonzero(cyc != cyc1)[0])
            raise AssertionError(f"batched interpreter (batch {b}): input {k} takes {cyc[k]:,} cycles, "
                                 f"{cyc1[k]:,} at batch 1")
        diff = float(np.abs(ob.reshape(out1.shape).astype(np.float64) - out1).max())
        rows.append(_row(BATCHED, b, n, secs, chunk=chunk, max_abs_diff_vs_batch1=diff,
                         cycles_mean=float(cyc.mean()), cycles_min=int(cyc.min()), cycles_max=int(cyc.max())))
        echo(f"  {BATCHED} batch {b} (chunks of {chunk}): {rows[-1]['images_per_s']:,.1f} images/s, "
             f"outputs max |diff| vs batch 1 {diff:.3g}", flush=True)
    if profile:
        best = max(rows[1:] or rows, key=lambda r: r["images_per_s"])
        k = min(n, best.get("chunk", 1))
        profiles.append(_profile(lambda: [interp.run({"x": X[i]}) for i in range(k)],
                                 f"interpreter batch 1, {k} image(s)", echo))
        profiles.append(_profile(lambda: run_batch(interp, {"x": X[:k]}, batch=best["batch"]),
                                 f"run_batch, batch {best['batch']}, {k} image(s)", echo))
    return rows, checks, profiles


def _procs_row(program, X, batch, jobs, checks, echo) -> dict:
    """The batched interpreter over ``jobs`` processes (:func:`compiler.eval_run.evaluate`,
    what ``dlac eval --jobs`` runs; its time includes starting the workers); asserts every
    input's prediction and cycles equal batch 1's."""
    import tempfile

    from compiler.eval_data import Dataset
    from compiler.eval_run import evaluate
    from target_dlac.binary.container import write_program

    classes = int(program.outputs[0].shape[-1])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.dlac")
        write_program(path, program)
        ds = Dataset(X, np.zeros(len(X), np.int64), "bench", classes)
        rep = evaluate(path, ds, batch=batch, jobs=jobs)
    pred = np.asarray(rep["per_image"]["pred"])
    cyc = np.asarray(rep["per_image"]["cycles"], np.int64)
    if not (np.array_equal(pred, checks["pred1"]) and np.array_equal(cyc, checks["cycles"])):
        raise AssertionError(f"the interpreter in {jobs} processes disagrees with batch 1")
    row = _row(PROCS, batch, len(X), rep["seconds"], jobs=jobs, chunks=rep["chunks"])
    echo(f"  {PROCS} batch {batch} x {jobs} processes: {row['images_per_s']:,.1f} images/s", flush=True)
    return row


def bench_model(name, model, X, labels, program, batches, args, echo) -> dict:
    """Every engine on ``X`` ((N,) + the binary's input shape); returns the model's numbers."""
    shape = tuple(program.inputs[0].shape)
    n = len(X)
    sizes = sorted({min(b, n) for b in batches})            # a batch above N runs all N at once
    echo(f"\n== {name}: {n:,} images of shape {shape}, batches {sizes}", flush=True)
    rows, eager_pred = _torch_rows(model, X, shape, sorted({1, *sizes}), args.threads, echo)
    rows += _ort_rows(model, X, shape, sorted({1, *sizes}), args.threads, echo)
    ref_row, ref_pred = _ref_row(program, X, args.ref_images, echo)
    rows.append(ref_row)
    rb = _ref_batch_row(program, X, ref_row["images"], max(sizes), ref_pred, echo)
    rows += [rb] if rb else []
    irows, checks, profiles = _interp_rows(program, X, sizes, args.profile, echo)
    rows += irows
    if args.threads > 1:
        top = max(irows[1:] or irows, key=lambda r: r["images_per_s"])
        rows.append(_procs_row(program, X, top["batch"], args.threads, checks, echo))
    eager = {r["batch"]: r for r in rows if r["engine"] == EAGER}
    interp1 = next(r for r in rows if r["engine"] == INTERP)
    for r in rows:
        e = eager.get(r["batch"])
        r["t_over_eager"] = e["images_per_s"] / r["images_per_s"] if e else None
        r["x_interp1"] = r["images_per_s"] / interp1["images_per_s"]
    best = max((r for r in rows if r["engine"] in (INTERP, BATCHED, PROCS)), key=lambda r: r["images_per_s"])
    pred1, nref = checks["pred1"], ref_row["images"]
    agree = {"eager": int((pred1 == eager_pred).sum()), "reference": int((pred1[:nref] == ref_pred).sum()),
             "reference_images": nref}
    acc = None
    if labels is not None:
        acc = {"interp": float((pred1 == labels).mean()), "eager": float((eager_pred == labels).mean()),
               "reference": float((ref_pred == labels[:nref]).mean())}
    cyc = checks["cycles"]
    return {"model": name, "images": n, "input_shape": list(shape), "batches": sizes, "rows": rows,
            "best_interp": {"engine": best["engine"], "batch": best["batch"]}, "agree_top1": agree,
            "accuracy": acc, "profiles": profiles,
            "cycles": {"mean": float(cyc.mean()), "min": int(cyc.min()), "max": int(cyc.max())}}


def goals(res: dict) -> list[dict]:
    """Issue 17's goal lines from the measured numbers."""
    out = []
    for name, m in res.items():
        rows = m["rows"]
        best = next(r for r in rows if (r["engine"], r["batch"]) == (m["best_interp"]["engine"],
                                                                       m["best_interp"]["batch"]))
        x = best["t_over_eager"]
        if name == "mnist":
            s10k = 10000 / best["images_per_s"]
            how = "measured" if m["images"] == 10000 else f"projected from {m['images']:,} images"
            out.append({"goal": f"MNIST CNN 10,000 images through the interpreter (cycles included) "
                                f"under {MNIST_GOAL_S:g} s", "value": s10k, "pass": s10k < MNIST_GOAL_S,
                        "detail": f"{s10k:.1f} s ({how}; {best['engine']} batch {best['batch']})"})
            out.append({"goal": f"MNIST CNN interpreter within {GOAL_X:g}x of PyTorch eager at the same batch",
                        "value": x, "pass": x <= GOAL_X,
                        "detail": f"{x:.1f}x at batch {best['batch']}"})
        else:
            out.append({"goal": f"ResNet-18 224x224 interpreter at its best batch at most {GOAL_X:g}x "
                                f"PyTorch eager per image (same batch)", "value": x, "pass": x <= GOAL_X,
                        "detail": f"{x:.1f}x at batch {best['batch']} ({best['engine']})"})
    return out


def table(res: dict) -> str:
    lines = [f"{'model':<9} {'engine':<14} {'batch':>5} {'images':>7} {'seconds':>9} {'images/s':>10} "
             f"{'t/eager':>8} {'x interp1':>9}"]
    for name, m in res.items():
        bi = m["best_interp"]
        for r in m["rows"]:
            star = "*" if (r["engine"], r["batch"]) == (bi["engine"], bi["batch"]) else " "
            te = f"{r['t_over_eager']:.2f}" if r["t_over_eager"] is not None else "-"
            lines.append(f"{name:<9} {r['engine']:<14} {r['batch']:>5} {r['images']:>7,} {r['seconds']:>9.3f} "
                         f"{r['images_per_s']:>10,.1f} {te:>8} {r['x_interp1']:>8.2f}{star}")
    lines.append("t/eager: seconds per image / PyTorch eager's at the same batch; x interp1: images/s / "
                 "the batch-1 interpreter's; * best interpreter batch")
    return "\n".join(lines)


def _mnist(args, machine, echo):
    import torch

    from compiler.build import build_program
    from compiler.config import QuantConfig
    from compiler.datasets import mnist_cnn, mnist_test
    from compiler.pipeline import compile_model

    model = mnist_cnn().eval()
    x, y = mnist_test(args.images)
    t0 = time.perf_counter()
    result = compile_model(model, (torch.from_numpy(x[:1].copy()),), config=QuantConfig())
    program = build_program(result, machine)
    echo(f"MNIST CNN compiled in {time.perf_counter() - t0:.1f} s ({len(program.insns)} instructions)")
    X = np.ascontiguousarray(x.reshape((len(x),) + tuple(program.inputs[0].shape)), np.float32)
    return model, X, y, program


def _r18(args, machine, echo):
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.models import randomize_bn, resnet18

    torch.manual_seed(0)
    model = randomize_bn(resnet18()).eval()
    t0 = time.perf_counter()
    result = compile_model(model, (torch.randn(1, 3, 224, 224),), config=QuantConfig())
    program = build_program(result, machine)
    echo(f"ResNet-18 compiled in {time.perf_counter() - t0:.1f} s ({len(program.insns):,} instructions)")
    shape = tuple(program.inputs[0].shape)
    X = np.random.default_rng(0).standard_normal((args.r18_images,) + shape, dtype=np.float32)
    return model, X, None, program


def main(argv=None, echo=print) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000, help="MNIST test images (default 10000)")
    ap.add_argument("--r18-images", type=int, default=64, help="random ResNet-18 inputs (default 64)")
    ap.add_argument("--skip-r18", action="store_true", help="MNIST only")
    ap.add_argument("--batches", default="1,8,32,128", help="batch sizes (default 1,8,32,128)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch / onnxruntime / TVM threads")
    ap.add_argument("--ref-images", type=int, default=None,
                    help="time the TVM reference on the first N images only (default: all)")
    ap.add_argument("--profile", action="store_true", help="cProfile top 15 of batch-1 and best batched runs")
    ap.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    args = ap.parse_args(argv)
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected comma-separated positive integers")
    if not batches or min(batches) < 1 or args.images < 1 or args.r18_images < 1 or args.threads < 1:
        ap.error("--batches, --images, --r18-images and --threads must be positive")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    from target_dlac.core.atomic import atomic_write_text
    from target_dlac.isa.machine import Machine

    machine = Machine()
    cmd = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else repr(argv)
    vers = _versions()
    host = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": args.threads, "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
            "loadavg_start": os.getloadavg()}
    echo(f"command: {cmd}")
    echo(f"host: {host['cpu']}, {host['cpus']} logical CPUs, {args.threads} threads (torch, onnxruntime, "
         f"TVM_NUM_THREADS={host['tvm_num_threads']}); " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    echo("load average at start: " + " ".join(f"{v:.2f}" for v in host["loadavg_start"])
         + ("  (WARNING: a busy machine; the timings are not clean)" if host["loadavg_start"][0] > 0.5 else ""))
    echo(f"dLAC machine: {machine.clock_mhz:g} MHz, {machine.pe_rows}x{machine.pe_cols} PEs, "
         f"act_skip {machine.act_skip}, hash {machine.hash()[:12]}", flush=True)

    t_all = time.perf_counter()
    res = {}
    for name, load in (("mnist", _mnist), ("resnet18", _r18)):
        if name == "resnet18" and args.skip_r18:
            continue
        model, X, y, program = load(args, machine, echo)
        res[name] = bench_model(name, model, X, y, program, batches, args, echo)
        m = res[name]
        echo(f"  top-1 agreement of the batch-1 interpreter: eager {m['agree_top1']['eager']}/{m['images']}, "
             f"TVM reference {m['agree_top1']['reference']}/{m['agree_top1']['reference_images']}"
             + (f"; accuracy interp {100 * m['accuracy']['interp']:.2f}%, eager "
                f"{100 * m['accuracy']['eager']:.2f}%" if m["accuracy"] else "")
             + f"; cycles per image {m['cycles']['mean']:,.0f}")
    gl = goals(res)
    echo("\n" + table(res))
    echo("\ngoals (issue 17):")
    for g in gl:
        echo(f"  [{'PASS' if g['pass'] else 'MISS'}] {g['goal']}: {g['detail']}")
    host["loadavg_end"] = os.getloadavg()
    echo(f"benchmark finished in {time.perf_counter() - t_all:.0f} s; load average at the end "
         + " ".join(f"{v:.2f}" for v in host["loadavg_end"]))
    if args.json:
        data = {"command": cmd, "host": host, "versions": vers, "machine_hash": machine.hash(),
                "batches": batches, "models": res, "goals": gl}
        atomic_write_text(args.json, json.dumps(data, indent=1, default=float) + "\n")
        echo(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
