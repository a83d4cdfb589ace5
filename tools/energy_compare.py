#!/usr/bin/env python
"""Energy per inference by weight precision: fp32 vs ternary vs int8 vs SWIS weights, in
fp32 and int8 activations, on the MNIST CNN and ResNet-18 (issue 16's energy goal).

Each case is compiled with ``QuantConfig(weights=W)`` (the default keeps the first and last
layers in fp32, as ``dlac compile`` does), built for the default machine and run in the ISA
interpreter; the energy is the interpreter's (``docs/isa.md`` "Energy model"), per
inference, averaged over the images.  Printed per case: total energy and its split
(compute / on-chip / DRAM / static), pJ per dense-equivalent MAC, TOPS/W, EDP, cycles, the
compute energy of the conv / dense instructions alone (``conv compute``; the JSON also
has each action's share, ``action_pj``), and the ratios
against fp32 weights in the same activation type: ``compute x`` (all arithmetic),
``conv x`` (the conv arithmetic: what accumulating instead of multiplying buys) and
``total x``.

Data: the MNIST CNN (pretrained digit-recognizer-py weights) on the first ``--images`` real
MNIST test images, int8 calibration on the next 32; ResNet-18 (torchvision architecture,
random weights, BN statistics randomized, seed 0) on ``--resnet-images`` random-normal
224x224 inputs, int8 calibration on 2 more.

    python tools/energy_compare.py [--models mnist,resnet18] [--weights fp32,ternary,int8,swis]
        [--activations fp32,int8] [--images 20] [--resnet-images 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

WEIGHTS = ("fp32", "ternary", "int8", "swis")
ACTS = ("fp32", "int8")
CONV_OPS = ("MAC", "TACC", "SACC")


def _model(name: str, n: int):
    import numpy as np
    import torch

    if name == "mnist":
        from compiler.datasets import mnist_cnn, mnist_test

        x, _ = mnist_test(n + 32)
        return mnist_cnn(), [x[i:i + 1] for i in range(n)], x[n:n + 32]
    from compiler.models import randomize_bn
    from tools.zoo import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    net = randomize_bn(tv.models.resnet18(weights=None)).eval()
    rng = np.random.default_rng(1000)
    xs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(n + 2)]
    return net, xs[:n], np.concatenate(xs[n:])


def run_case(model: str, weights: str, acts: str, net, images, calib) -> dict:
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from target_dlac.isa import energy
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.interpreter import Interpreter

    t0 = time.perf_counter()
    result = compile_model(net, (torch.from_numpy(images[0]),), config=QuantConfig(weights=weights))
    name = result.input_names[0]
    prog = build_program(result, Machine(), reference=False, activations=acts,
                         calib={name: calib} if acts == "int8" else None)
    it = Interpreter(prog)
    sums: dict = {}
    conv = 0.0
    cyc = 0
    by_action: dict = {}
    prices = energy.DEFAULT_TABLE.prices(prog.machine)
    for x in images:
        _, rep = it.run({name: x})
        for k in ("total",) + energy.PARTS:
            sums[k] = sums.get(k, 0.0) + rep.extra["energy_pj"][k]
        cyc += rep.cycles["total"]
        conv += sum(c * prices[a] for a, c in rep.extra["conv_actions"].items()
                    if a in energy.COMPUTE_ACTIONS)
        for a, c in rep.extra["actions"].items():
            by_action[a] = by_action.get(a, 0.0) + c * prices[a]
    n = len(images)
    e = {k: v / n for k, v in sums.items()}
    dense = rep.extra["dense_macs"]
    secs = prog.machine.seconds(cyc / n)
    return {"model": model, "weights": weights, "activations": acts, "images": n,
            "energy_pj": e, "conv_compute_pj": conv / n,
            "action_pj": {a: v / n for a, v in sorted(by_action.items()) if v}, "cycles": cyc / n, "dense_macs": dense,
            **energy.efficiency(e, dense, secs), "seconds": time.perf_counter() - t0}


def ratios(rows: list[dict]) -> None:
    """Add ``compute_x`` / ``conv_x`` / ``total_x``: fp32 weights' energy over the row's, same
    model and activation type."""
    base = {(r["model"], r["activations"]): r for r in rows if r["weights"] == "fp32"}
    for r in rows:
        b = base.get((r["model"], r["activations"]))
        if b is None:
            continue
        r["compute_x"] = b["energy_pj"]["compute"] / r["energy_pj"]["compute"]
        r["conv_x"] = b["conv_compute_pj"] / r["conv_compute_pj"] if r["conv_compute_pj"] else None
        r["total_x"] = b["energy_pj"]["total"] / r["energy_pj"]["total"]


def table(rows: list[dict]) -> str:
    head = (f"{'model':<9} {'weights':<8} {'acts':<5} {'total uJ':>9} {'compute':>8} {'on-chip':>8} "
            f"{'DRAM':>8} {'static':>8} {'conv cmp':>9} {'pJ/MAC':>7} {'TOPS/W':>7} {'EDP J*s':>9} "
            f"{'cmp x':>6} {'conv x':>6} {'tot x':>6}")
    out = [head]
    for r in rows:
        e = r["energy_pj"]
        uj = lambda v: f"{v / 1e6:.4g}"  # noqa: E731
        x = lambda k: "" if r.get(k) is None else f"{r[k]:.2f}"  # noqa: E731
        out.append(f"{r['model']:<9} {r['weights']:<8} {r['activations']:<5} {uj(e['total']):>9} "
                   f"{uj(e['compute']):>8} {uj(e['onchip']):>8} {uj(e['dram']):>8} {uj(e['static']):>8} "
                   f"{uj(r['conv_compute_pj']):>9} {r['pj_per_mac']:>7.3g} {r['tops_per_w']:>7.3g} "
                   f"{r['edp_js']:>9.3g} {x('compute_x'):>6} {x('conv_x'):>6} {x('total_x'):>6}")
    out.append("energies in uJ per inference (the interpreter's, default machine and energy table); "
               "conv cmp: arithmetic of the conv / dense instructions; x: fp32 weights' energy over the "
               "row's (same model, same activations)")
    return "\n".join(out)


def _list(value: str, allowed, what: str) -> list[str]:
    got = [v for v in value.split(",") if v]
    bad = [v for v in got if v not in allowed]
    if bad or not got:
        raise SystemExit(f"energy_compare: --{what} {value!r}: choose from {', '.join(allowed)}")
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mnist,resnet18")
    ap.add_argument("--weights", default=",".join(WEIGHTS))
    ap.add_argument("--activations", default=",".join(ACTS))
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--resnet-images", type=int, default=1)
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args(argv)
    models = _list(a.models, ("mnist", "resnet18"), "models")
    weights = _list(a.weights, WEIGHTS, "weights")
    acts = _list(a.activations, ACTS, "activations")
    rows = []
    for model in models:
        net, images, calib = _model(model, a.images if model == "mnist" else a.resnet_images)
        for w in weights:
            for act in acts:
                r = run_case(model, w, act, net, images, calib)
                rows.append(r)
                print(f"  {model} {w} {act}: {r['energy_pj']['total'] / 1e6:.4g} uJ "
                      f"({r['seconds']:.1f} s)", file=sys.stderr, flush=True)
    ratios(rows)
    print(table(rows))
    if a.json:
        from target_dlac.core.atomic import atomic_write_text

        atomic_write_text(a.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
