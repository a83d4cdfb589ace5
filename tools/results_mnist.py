#!/usr/bin/env python
"""Accuracy of every weight-quantization mode of dlac on the MNIST test set with the
pretrained CNN of digit-recognizer-py, with fp32 and with int8 (all-integer)
activations; per mode also the share of multiplies replaced by accumulations and
the dLAC interpreter's cycles per image (docs/results.md).

    python tools/results_mnist.py --json results_mnist.json

Data split: the LAST ``--calib`` (200) test images calibrate the int8 activation
exponents; accuracy is measured on the first ``--limit`` images (at most the other
9,800), so calibration and evaluation never share an image.

Accuracy: the TVM CPU reference build of each graph at batch ``--batch`` (fp32
activations: the ``fold`` stage; int8 activations: the integer graph in the REF
section of a batch-``--batch`` program).  Cycles: a batch-1 program in the
interpreter.  Agreement: that batch-1 program's predictions on the first ``--agree``
evaluation images against the reference's.

Each (config, activations) pair is one task; ``--jobs`` worker processes (default 2)
run them, since the reference build of the unscheduled graph uses one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from target_dlac.sim.host import reference_module

import numpy as np
import torch

ACTS = ("fp32", "int8")


def configs():
    """(name, QuantConfig, activation pipelines) of each table row."""
    from compiler.config import QuantConfig as Q

    both = ACTS
    return [
        # fp32 weights with int8 activations is the int8 row: the int8 pipeline gives every
        # float layer int8 weights with one scale per filter
        ("fp32 weights (reference)", Q(weights="fp32"), ("fp32",)),
        ("int8 weights, per filter", Q(weights="int8"), both),
        ("ternary N=1 (per filter)", Q(weights="ternary", cluster_size=1), both),
        ("ternary N=4", Q(weights="ternary", cluster_size=4), both),
        ("ternary N=16", Q(weights="ternary", cluster_size=16), both),
        ("ternary N=64", Q(weights="ternary", cluster_size=64), both),
        ("4-bit N=4", Q(weights="int4", cluster_size=4), both),
        ("SWIS S=2", Q(weights="swis", swis_shifts=2), both),
        ("SWIS S=3", Q(weights="swis", swis_shifts=3), both),
    ]


def reference_logits(ref, x: np.ndarray, batch: int) -> np.ndarray:
    from compiler.evaluate import batched_logits
    return batched_logits(ref, x, batch)


def run_pipeline(act, r1, rb, xe, ye, xcal, args) -> dict:
    """Accuracy (reference at batch ``args.batch``), interpreter cycles and agreement
    (batch-1 program) of one compiled config under activation pipeline ``act``."""

    from compiler.build import build_program
    from compiler.reference import Reference
    from target_dlac.sim.interpreter import Interpreter

    row: dict = {}
    t0 = time.perf_counter()
    if act == "fp32":
        ref = Reference(rb.reference_module("fold"))
        prog1 = build_program(r1, reference=False)
    elif act == "int8":
        progb = build_program(rb, activations="int8", calib={"x": xcal})
        ref = Reference(reference_module(progb))
        prog1 = build_program(r1, activations="int8", calib={"x": xcal}, reference=False)
    else:
        raise ValueError(f"activations {act!r}; expected one of {ACTS}")
    t1 = time.perf_counter()
    logits = reference_logits(ref, xe, args.batch)
    pred = logits.argmax(1)
    t2 = time.perf_counter()
    interp = Interpreter(prog1, check_races=False)
    n = min(args.agree, len(xe))
    ipred, cycles, exact, maxdiff = [], [], 0, 0.0
    for i in range(n):
        out, rep = interp.run({"x": xe[i:i + 1]})
        lo = out["output_0"][0]
        ipred.append(int(lo.argmax()))
        cycles.append(int(rep.cycles["total"]))
        exact += int(np.array_equal(lo, logits[i]))
        maxdiff = max(maxdiff, float(np.abs(lo - logits[i]).max()))
    t3 = time.perf_counter()
    row.update(accuracy=float((pred == ye).mean()), images=len(ye),
               agree=int(np.sum(np.array(ipred) == pred[:n])), agree_of=n,
               exact_logits=exact, max_logit_diff=maxdiff,
               cycles=cycles[0] if cycles else None,
               cycles_min=min(cycles, default=None), cycles_max=max(cycles, default=None),
               instructions=len(prog1.insns),
               build_s=t1 - t0, reference_s=t2 - t1, interpreter_s=t3 - t2)
    return row


# ---- one task: a config under one activation pipeline (run in a worker process) -------
_W: dict = {}       # per-process state: model and data, loaded once


def init_worker(limit: int, calib: int, tvm_threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(tvm_threads)    # before compiler.reference is imported
    torch.set_num_threads(tvm_threads)
    from compiler.datasets import mnist_cnn, mnist_test

    x, y = mnist_test()
    n_eval = len(x) - calib
    _W.update(model=mnist_cnn(), xe=x[:limit], ye=y[:limit], xcal=x[n_eval:])


def run_task(name, cfg, act, args, t0) -> tuple:
    """Compile ``cfg`` at batch 1 and ``args.batch`` and measure pipeline ``act``.
    Returns ``(name, act, config facts, row)``; errors come back as tracebacks."""
    from compiler.pipeline import compile_model

    xe, ye, xcal = _W["xe"], _W["ye"], _W["xcal"]
    try:
        t1 = time.perf_counter()
        r1 = compile_model(_W["model"], (torch.from_numpy(xe[:1].copy()),), config=cfg)
        ex = xe[:args.batch]
        if len(ex) < args.batch:
            ex = np.concatenate([ex, np.zeros((args.batch - len(ex), *ex.shape[1:]), ex.dtype)])
        rb = compile_model(_W["model"], (torch.from_numpy(ex.copy()),), config=cfg)
        compile_s = time.perf_counter() - t1
    except Exception:  # noqa: BLE001 - a failing mode is reported with its traceback
        err = traceback.format_exc()
        _log(t0, f"{name}: COMPILE FAILED\n{err}")
        return name, act, {"error": err}, None
    t = r1.totals()
    c = r1.cluster_counts()
    facts = {"replaced_share": t["replaced_share"], "dense_macs": t["dense_macs"],
             "cluster_counts": {"n": c["n"], "replaced_share": c["replaced_share"]},
             "layers": [{"name": i.name, "op": i.op, "precision": i.precision, "why": i.reason}
                        for i in r1.layers]}
    try:
        row = run_pipeline(act, r1, rb, xe, ye, xcal, args)
        row["compile_s"] = compile_s
        _log(t0, f"{name:<26} {act}-act {100 * row['accuracy']:6.2f}%  cycles/img {row['cycles']:>9,}  "
                 f"agree {row['agree']}/{row['agree_of']}  (compile {compile_s:.0f} s, "
                 f"build {row['build_s']:.0f} s, reference {row['reference_s']:.0f} s, "
                 f"interpreter {row['interpreter_s']:.0f} s)")
    except Exception:  # noqa: BLE001 - a failing mode is reported with its traceback
        row = {"error": traceback.format_exc()}
        _log(t0, f"{name}: {act} activations FAILED\n{row['error']}")
    return name, act, facts, row


def _log(t0: float, msg: str) -> None:
    print(f"  [{time.time() - t0:6.0f} s] {msg}", flush=True)


def run_all(tasks, args, t0) -> list:
    """Run ``(name, cfg, act)`` tasks, ``args.jobs`` at a time; results in task order."""
    if args.jobs == 1:
        init_worker(args.limit, args.calib, os.cpu_count() or 1)
        return [run_task(*task, args, t0) for task in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=init_worker,
                             initargs=(args.limit, args.calib, threads)) as pool:
        futures = [pool.submit(run_task, *task, args, t0) for task in tasks]
        results = []
        for (name, _, act), fut in zip(tasks, futures):
            try:
                results.append(fut.result())
            except Exception:  # noqa: BLE001 - the worker died (e.g. a crash inside TVM)
                err = traceback.format_exc()
                _log(t0, f"{name}: {act} activations: WORKER FAILED\n{err}")
                results.append((name, act, {}, {"error": err}))
        return results


def _cell(entry, act, fmt):
    r = entry.get(act)
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return fmt(r)


def format_table(entries, torch_acc, images) -> str:
    head = ("| config | accuracy, fp32 act | accuracy, int8 act | multiplies replaced (as executed) "
            "| papers.md §2 counting | cycles/image, fp32 act | cycles/image, int8 act "
            "| interpreter = reference, fp32 / int8 act |")
    lines = [head, "|" + "---|" * 8]
    for e in entries:
        if "error" in e:
            lines.append(f"| {e['name']} | compile error | | | | | | |")
            continue
        acc = lambda r: f"{100 * r['accuracy']:.2f}%"
        cyc = lambda r: f"{r['cycles']:,}" + ("" if r["cycles_min"] == r["cycles_max"] else
                                              f" ({r['cycles_min']:,}-{r['cycles_max']:,})")
        agr = lambda r: f"{r['agree']}/{r['agree_of']}" + (f" ({r['exact_logits']} bit-exact)"
                                                           if r["exact_logits"] else "")
        cc = e["cluster_counts"]
        ternary = any(layer["precision"] == "ternary" for layer in e["layers"])
        count = f"{100 * cc['replaced_share']:.1f}%" + (f" (n={cc['n']})" if ternary else "")
        lines.append(f"| {e['name']} | {_cell(e, 'fp32', acc)} | {_cell(e, 'int8', acc)} "
                     f"| {100 * e['replaced_share']:.1f}% | {count} "
                     f"| {_cell(e, 'fp32', cyc)} | {_cell(e, 'int8', cyc)} "
                     f"| {_cell(e, 'fp32', agr)} / {_cell(e, 'int8', agr)} |")
    lines.append(f"| PyTorch float model | {100 * torch_acc:.2f}% | | | | | | |")
    return "\n".join(lines) + f"\n\n({images} evaluation images)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=9800,
                    help="evaluation images, the first N of the test set (max 10000 - --calib)")
    ap.add_argument("--calib", type=int, default=200, help="calibration images (the last N)")
    ap.add_argument("--agree", type=int, default=200,
                    help="images on which the interpreter is compared with the reference")
    ap.add_argument("--batch", type=int, default=100, help="batch of the reference builds")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (the TVM reference build runs on one core)")
    ap.add_argument("--only", help="run only the configs whose name contains this")
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    from target_dlac.core.atomic import atomic_write_text
    from compiler.datasets import mnist_cnn, mnist_test

    t0 = time.time()
    x, y = mnist_test()
    n_eval = len(x) - args.calib
    if not 0 < args.limit <= n_eval:
        ap.error(f"--limit must be in 1..{n_eval} (the last {args.calib} images calibrate)")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    ye = y[:args.limit]
    with torch.no_grad():
        pred = mnist_cnn()(torch.from_numpy(x[:args.limit])).argmax(1).numpy()
    torch_acc = float((pred == ye).mean())
    print(f"{len(ye)} evaluation images (test[0:{len(ye)}]), calibration test[{n_eval}:{len(x)}], "
          f"{args.jobs} job(s); PyTorch float {100 * torch_acc:.2f}%", flush=True)

    tasks = [(name, cfg, act) for name, cfg, acts in configs()
             if not args.only or args.only in name for act in acts]
    entries: dict = {}
    for name, act, facts, row in run_all(tasks, args, t0):
        e = entries.setdefault(name, {"name": name,
                                      "config": next(c for n, c, _ in tasks if n == name).to_dict()})
        if "error" in facts:
            e["error"] = facts["error"]
            continue
        e.update(facts)
        e[act] = row
    entries = list(entries.values())
    total = time.time() - t0
    print(format_table(entries, torch_acc, len(ye)))
    print(f"total {total:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(_summary(args, entries, torch_acc, len(ye), n_eval, total),
                                                indent=2))
    failed = [e["name"] for e in entries if "error" in e or any("error" in (e.get(a) or {}) for a in ACTS)]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _summary(args, entries, torch_acc, images, n_eval, seconds) -> dict:
    return {"images": images, "eval_split": f"test[0:{images}]",
            "calib_split": f"test[{n_eval}:{n_eval + args.calib}]", "batch": args.batch,
            "agree_images": args.agree, "jobs": args.jobs, "torch_float": torch_acc, "seconds": seconds,
            "rows": entries}


if __name__ == "__main__":
    sys.exit(main())
