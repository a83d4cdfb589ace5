#!/usr/bin/env python
"""How well the cost model predicts zero-activation skipping (issue 15): per layer, the
expected cycles from statistics measured on calibration images (``live_ratio``,
:mod:`target_dlac.tune.act_stats`) against the interpreter's mean cycles over held-out
images, on the default schedules and on the schedules ``dlac tune --calib`` picks with
those statistics.

Models: the MNIST CNN (ternary, real test images: calibration = images 9,000-9,063,
held-out = the first ``--images``) and torchvision ResNet-18 (random weights, ternary,
random-normal inputs: labelled as such; ``--size``).

    python tools/bench/act_predict.py [--images 300] [--resnet-images 4] [--size 112] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def evaluate(name, result, calib: dict, held: list, granularity: str, echo=print) -> dict:
    import numpy as np

    from compiler.build import build_program
    from compiler.tune import act_ratios, tune_model
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.interpreter import Interpreter
    from target_dlac.tune.costmodel import layer_cycles
    from target_dlac.codegen.schedule import ConvShape, Schedule
    from compiler.tune import collect_layers

    m = Machine(act_skip=granularity)
    t0 = time.perf_counter()
    ratios = act_ratios(result, m, calib)
    layers = {t.name: t.layer for t in collect_layers(result, m)}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "log.jsonl"
        tune_model(result, m, log, jobs=2, act_ratios=ratios)
        for kind, prog in (("default", build_program(result, m, reference=False)),
                           ("tuned", build_program(result, m, reference=False, tuning_log=log))):
            it = Interpreter(prog)
            runs = [it.run(inputs)[1] for inputs in held]
            rows = []
            for meta in prog.meta["layers"]:
                if meta["name"] not in layers or "schedule" not in meta:
                    continue
                layer = layers[meta["name"]]
                sched = Schedule.from_dict(meta["schedule"])
                pred = layer_cycles(layer.shape, sched, m, layer.weights, has_scale=layer.has_scale,
                                    live_ratio=ratios.get(meta["name"]))["total"]
                got = [next(l for l in r.layers if l.name == meta["name"]).cycles for r in runs]
                mean = float(np.mean(got))
                rows.append({"layer": meta["name"], "pxshift": sched.pxshift, "predicted": pred,
                             "interpreter_mean": mean, "interpreter_min": min(got), "interpreter_max": max(got),
                             "error_pct": 100 * (pred - mean) / mean})
            out[kind] = rows
    errs = [abs(r["error_pct"]) for k in out for r in out[k]]
    echo(f"\n== {name}, act_skip = {granularity}: {len(held)} held-out inputs "
         f"({time.perf_counter() - t0:.0f} s); |error| mean {np.mean(errs):.2f}%, max {max(errs):.2f}%")
    echo(f"{'schedules':<9} {'layer':<22} {'px':>2} {'predicted':>10} {'interp mean':>11} {'min':>8} {'max':>8} {'error':>7}")
    for kind, rows in out.items():
        for r in rows:
            echo(f"{kind:<9} {r['layer'][:22]:<22} {r['pxshift']:>2} {r['predicted']:>10,} "
                 f"{r['interpreter_mean']:>11,.0f} {r['interpreter_min']:>8,} {r['interpreter_max']:>8,} "
                 f"{r['error_pct']:>+6.2f}%")
    return {"model": name, "act_skip": granularity, "held_out": len(held), **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="held-out MNIST test images")
    ap.add_argument("--resnet-images", type=int, default=4, help="held-out random-normal ResNet-18 inputs")
    ap.add_argument("--size", type=int, default=112, help="ResNet-18 input size")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    import numpy as np
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.datasets import mnist_cnn, mnist_test
    from tools.zoo import import_torchvision

    torch.set_num_threads(2)
    report = []
    x, _ = mnist_test(10000)
    mnist = compile_model(mnist_cnn(), (torch.from_numpy(x[:1].copy()),), config=QuantConfig())
    held = [{"x": x[i:i + 1]} for i in range(args.images)]
    for g in ("column", "pe"):
        report.append(evaluate("MNIST CNN (real test images)", mnist, {"x": x[9000:9064]}, held, g))
    tv = import_torchvision()
    torch.manual_seed(0)
    rn = tv.models.resnet18(weights=None).eval()
    rng = np.random.default_rng(0)
    s = args.size
    xs = rng.standard_normal((args.resnet_images + 4, 1, 3, s, s)).astype(np.float32)
    res = compile_model(rn, (torch.from_numpy(xs[0]),), config=QuantConfig())
    name = res.imported.input_names[0] if hasattr(res, "imported") else "x"
    calib = {name: xs[args.resnet_images:]}
    held = [{name: xs[i]} for i in range(args.resnet_images)]
    report.append(evaluate(f"ResNet-18 {s}x{s} (random weights, random-normal inputs)", res, calib, held, "column"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
