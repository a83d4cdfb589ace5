#!/usr/bin/env python
"""The autotuner on every ResNet-18 conv / dense layer (ternary, 224x224): tuned vs the
greedy default vs the exhaustive optimum of the schedule space.

Compiles torchvision-shaped ResNet-18 (default QuantConfig: ternary, first/last layer
fp32), then in the same run:

1. ``dlac tune``'s engine (:func:`compiler.tune.tune_model`, strategy ``--strategy``,
   ``--trials`` per layer, ``--jobs`` local processes) on a fresh log: the wall time
   of tuning the whole network (goal: within 60 s on 2 cores);
2. the exhaustive search of each distinct layer's space (the baseline: the optimum of
   the space), in a pool of ``--jobs`` processes; ``--exhaustive-limit N`` skips
   layers whose space has more than N valid schedules (0: no limit);
3. compiles the network with the tuning log and runs it in the interpreter: the
   tuned cycles the cost model predicted must be the interpreter's.

Prints per layer: default, tuned and optimal cycles, the tuned/optimal gap, the
speedup over the default, the lower bound and trials; then the goals: tuned within 2%
of the optimum, >= 1.2x fewer cycles than the default on average (mean of the
per-layer ratios; the whole-network ratio is printed too), all layers within 60 s.

    python tools/bench/tune_resnet18.py [--strategy best_first|anneal|random] [--trials N]
                                        [--jobs 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from target_dlac.tune.search import DEFAULT_TRIALS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--trials", type=int, default=None,
                    help=f"per layer (default: {DEFAULT_TRIALS} for anneal / random)")
    ap.add_argument("--strategy", default="best_first")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exhaustive-limit", type=int, default=0, metavar="N",
                    help="skip the exhaustive baseline on spaces of more than N valid schedules")
    ap.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    args = ap.parse_args(argv)
    if args.trials is None and args.strategy in ("anneal", "random"):
        args.trials = DEFAULT_TRIALS

    import numpy as np
    import torch

    from compiler import QuantConfig, compile_model
    from target_dlac.core.atomic import atomic_write_text
    from compiler.build import build_program
    from compiler.models import randomize_bn, resnet18
    from compiler.tune import collect_layers, tune_model
    from target_dlac.tune.layer_search import tune_layer
    from target_dlac.tune import tuning_log
    from target_dlac.sim.interpreter import run
    from target_dlac.isa.machine import Machine
    from target_dlac.tune.space import ScheduleSpace

    machine = Machine()
    cmd = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else repr(argv)
    print(f"command: {cmd}")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"Python {platform.python_version()}, NumPy {np.__version__}")
    torch.manual_seed(0)
    model = randomize_bn(resnet18()).eval()
    x = torch.randn(1, 3, args.size, args.size)
    result = compile_model(model, (x,), config=QuantConfig())

    # 1. the tuner, timed over the whole network
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.jsonl")
        t0 = time.perf_counter()
        rows = tune_model(result, machine, log, strategy=args.strategy, trials=args.trials,
                          jobs=args.jobs, seed=args.seed)
        tune_s = time.perf_counter() - t0
        print(f"tuned {len(rows)} layers ({sum(r['status'] == 'tuned' for r in rows)} distinct) "
              f"with {args.strategy}, {args.trials} trials per layer, {args.jobs} jobs: "
              f"{tune_s:.1f} s wall", flush=True)
        # 3. compile with the log: the interpreter's cycles are the cost model's
        prog = build_program(result, machine, tuning_log=log, reference=False)
        _, rep = run(prog, {"x": x.numpy()})
        _, rep0 = run(build_program(result, machine, reference=False), {"x": x.numpy()})
    interp = {l.name: l.cycles for l in rep.layers}
    mismatches = [r["layer"] for r in rows if r["tuned_cycles"] is not None
                  and interp.get(r["layer"]) != r["tuned_cycles"]]

    # 2. the exhaustive baseline per distinct layer
    layers = collect_layers(result, machine)
    distinct: dict = {}
    for t in layers:
        distinct.setdefault(tuning_log.key_str(t.key), t)
    todo = {}
    for k, t in distinct.items():
        n_valid = sum(1 for _ in ScheduleSpace(t.layer.shape, machine, t.layer.weights.max_bytes))
        if not args.exhaustive_limit or n_valid <= args.exhaustive_limit:
            todo[k] = t
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {k: pool.submit(tune_layer, t.layer, machine, "exhaustive", None, None, None, 0)
                for k, t in todo.items()}
        exh = {k: (f.result()["cycles"], f.result()["trials"], f.result()["seconds"])
               for k, f in futs.items()}
    exh_s = time.perf_counter() - t0
    key_of = {t.name: tuning_log.key_str(t.key) for t in layers}

    print(f"\n{'layer':<24} {'prec':<8} {'default':>9} {'tuned':>9} {'optimum':>9} {'gap':>6} "
          f"{'speedup':>8} {'bound':>9} {'%bound':>7} {'trials':>6} {'space':>6} {'exh s':>6}")
    per_layer = []
    for r in rows:
        d, t, b = r["default_cycles"], r["tuned_cycles"], r["lower_bound"]
        e = exh.get(key_of[r["layer"]])
        opt = e[0] if e else None
        gap = (t / opt - 1) if opt else None
        per_layer.append({"layer": r["layer"], "precision": r["precision"], "default": d, "tuned": t,
                          "optimum": opt, "gap": gap, "speedup": d / t, "lower_bound": b,
                          "trials": r["trials"], "space": e[1] if e else None,
                          "exhaustive_s": e[2] if e else None, "status": r["status"]})
        opt_s = f"{opt:,}" if opt is not None else "-"
        gap_s = f"{100 * gap:.1f}%" if gap is not None else "-"
        print(f"{r['layer'][:24]:<24} {r['precision']:<8} {d:>9,} {t:>9,} {opt_s:>9} {gap_s:>6} "
              f"{d / t:>7.2f}x {b:>9,} {100 * t / b:>6.0f}% {r['trials']:>6} "
              f"{e[1] if e else '-':>6} {e[2] if e else 0:>6.1f}")
    tot_d = sum(p["default"] for p in per_layer)
    tot_t = sum(p["tuned"] for p in per_layer)
    gaps = [p["gap"] for p in per_layer if p["gap"] is not None]
    mean_speedup = statistics.mean(p["speedup"] for p in per_layer)
    print(f"{'total':<24} {'':<8} {tot_d:>9,} {tot_t:>9,}")
    print(f"\nwhole network (interpreter): default schedules {rep0.cycles['total']:,} cycles, tuned "
          f"{rep.cycles['total']:,} cycles ({rep0.cycles['total'] / rep.cycles['total']:.3f}x); "
          f"cost model = interpreter on {len(rows) - len(mismatches)} of {len(rows)} layers")
    print(f"exhaustive baseline: {len(exh)} distinct layers, {sum(e[1] for e in exh.values()):,} "
          f"schedules, {exh_s:.1f} s wall ({args.jobs} jobs)")
    goals = {
        "within 2% of the exhaustive optimum": (max(gaps) <= 0.02 if gaps else None,
                                                f"max gap {100 * max(gaps):.2f}% over {len(gaps)} layers"
                                                if gaps else "no exhaustive baseline"),
        ">= 1.2x fewer cycles than the default on average": (
            mean_speedup >= 1.2, f"mean per-layer {mean_speedup:.3f}x, whole network {tot_d / tot_t:.3f}x"),
        "all layers tuned within 60 s": (tune_s <= 60, f"{tune_s:.1f} s on {args.jobs} jobs"),
    }
    for name, (ok, what) in goals.items():
        print(f"goal {name}: {'met' if ok else 'MISSED' if ok is False else 'n/a'} ({what})")
    if mismatches:
        print(f"COST MODEL != INTERPRETER on {mismatches}")
    if args.json:
        data = {"command": cmd, "trials": args.trials, "strategy": args.strategy, "jobs": args.jobs,
                "tune_s": tune_s, "exhaustive_s": exh_s, "layers": per_layer,
                "total_default": tot_d, "total_tuned": tot_t, "mean_speedup": mean_speedup,
                "max_gap": max(gaps) if gaps else None,
                "interpreter_default_cycles": rep0.cycles["total"],
                "interpreter_tuned_cycles": rep.cycles["total"], "mismatches": mismatches,
                "goals": {k: v[0] for k, v in goals.items()}}
        atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
