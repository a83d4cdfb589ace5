#!/usr/bin/env python
"""Activation zero-skip benchmark: what skipping zero activations (machine parameter
``act_skip``: ``none`` / ``column`` / ``pe``) buys on the MNIST CNN and on ResNet-18/34,
in fp32 and fp16 activations, against the paper's numbers.

For each model and activation type the same compiled graph is built for the three
granularities and every image is run on each (interleaved, after one untimed warm-up run
per granularity), giving:

1. per conv / dense layer on dLAC: the non-zero weight fraction, ``act_density``,
   ``speedup_weights``, and ``speedup_acts`` / ``speedup_total`` for ``column`` and
   ``pe`` (mean of the per-image ratios); ``stall``: the share of the layer's ``pe``
   cycles the compute unit waited on loads / stores; ``ideal a``: 1 / act_density;
   ``DRAM cap``: dense cycles over the layer's least DRAM time (no skipping beats it);
2. per granularity: min / median / max total cycles over the images, the mean
   dense-equivalent TFLOP/s and TFLOP/s/mm^2 (paper: 1 TFLOP/s/mm^2 fp32, ~2 fp16), and
   the interpreter's fastest and median wall time per image (goal: ``column``, the
   default, within 1.3x of ``none`` on ResNet-18; the fastest run is the one least
   disturbed by other load on the host);
3. the Cnvlutin check: ``speedup_acts`` of the MNIST CNN's ReLU-fed convs
   (conv_layers.3, conv_layers.6) on real test images, against Cnvlutin's 1.37x;
4. the outputs of ``none`` / ``column`` / ``pe`` compared bit for bit on every image
   (exit 1 if any differ);
5. where a gap to the paper comes from, as measured: the data (random weights and
   random-normal inputs; the MNIST CNN), the default machine (its dense peak and the
   dense schedule's utilization) or the mechanism (achieved against ideal speed-ups).

Data: MNIST CNN = the pretrained digit-recognizer-py weights on the first ``--images``
real MNIST test images; ResNet-18/34 = torchvision architectures with random weights
(``weights=None``, torch seed 0, BN statistics randomized) on random-normal N(0, 1) inputs
(torch seed 1000 + i); all ternary with the default QuantConfig().  ``--trained DIR``
adds the DIR/*.pt2 MNIST CNNs (quantization options from the ``compile_args`` of the .json
log next to each; ``--trained-activations int8`` calibrates on the .calib.npz next to it)
as extra MNIST rows.

    python tools/bench/act_skip.py [--models mnist,resnet18,resnet34] [--images 200]
        [--resnet-images 2] [--size 224] [--activations fp32,fp16] [--repeat 1] [--trained DIR]
        [--trained-images 100] [--trained-activations fp32] [--json OUT]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:              # tools.zoo, compiler, target_dlac from this checkout
    sys.path.insert(0, _ROOT)

MODELS = ("mnist", "resnet18", "resnet34")
GRANULARITIES = ("none", "column", "pe")
ACTIVATIONS = ("fp32", "fp16", "int8")
#: the MNIST CNN's convs whose input comes after a ReLU (Cnvlutin check)
RELU_FED_MNIST = ("conv_layers.3", "conv_layers.6")
PAPER = {"layer_speedup": (1.8, 5.0), "tflops_per_mm2": {"fp32": 1.0, "fp16": 2.0, "int8": None},
         "cnvlutin_speedup": 1.37}


def _mean(xs):
    return sum(xs) / len(xs)


def _mmm(xs) -> dict:
    return {"min": min(xs), "median": float(statistics.median(xs)), "max": max(xs)}


def _layer_numbers(rep) -> list[dict]:
    """The numbers of one run kept per conv / dense layer on dLAC (layers with a conv
    instruction: ``act_density`` is set)."""
    return [{"name": l.name, "op": l.op, "precision": l.precision, "act_density": l.act_density,
             "w_density": l.issued_macs / l.dense_macs if l.dense_macs else 1.0,
             "speedup_weights": l.speedup_weights, "speedup_acts": l.speedup_acts,
             "speedup_total": l.speedup_total, "cycles": l.cycles, "dense_cycles": l.dense_cycles,
             "stall": (l.load_stall + l.store_stall) / l.cycles if l.cycles else 0.0}
            for l in rep.layers if l.act_density is not None and not l.on_host]


def _run_numbers(rep, machine, acts: str) -> dict:
    """One run's network numbers, with ``tflops_per_mm2`` split into the machine's dense
    peak x the dense schedule's utilization x the zero-skip speed-up (an identity)."""
    dense_cycles = sum(l.dense_cycles for l in rep.layers)
    dense_macs = sum(l.dense_macs for l in rep.layers)
    from target_dlac.isa.area import area_mm2

    rate = machine.pes * machine.lanes_for("float16" if acts == "fp16" else "float32")
    peak_mm2 = 2 * rate * machine.clock_mhz * 1e6 / area_mm2(machine) / 1e12     # the modelled area
    return {"cycles": rep.cycles["total"], "tflops_equiv": rep.tflops_equiv,
            "tflops_per_mm2": rep.tflops_per_mm2, "peak_tflops_per_mm2": peak_mm2,
            "dense_utilization": dense_macs / (rate * dense_cycles) if dense_cycles else 0.0,
            "net_speedup": dense_cycles / rep.cycles["total"] if rep.cycles["total"] else 1.0}


def _dram_floors(program) -> dict:
    """``{layer name: cycles}``: the least DRAM time of each layer on the program's machine
    (its minimum bytes read, or written, over ``dram_bytes_per_cycle``: separate channels),
    whatever the schedule and the zeros skipped."""
    from target_dlac.binary.layer_meta import layer_table

    bw = program.machine.dram_bytes_per_cycle
    return {l.name: max(l.min_dram_bytes - l.min_write_bytes, l.min_write_bytes) / bw
            for l in layer_table(program.meta)}


def _aggregate_layers(per_gran: dict, floors: dict) -> list[dict]:
    """Per layer: means over the images of each granularity's per-image ratios, and the
    DRAM cap: dense cycles over the layer's DRAM floor (no skipping beats it)."""
    rows = []
    for i, l0 in enumerate(per_gran["none"][0]["layers"]):
        dense = _mean([r["layers"][i]["dense_cycles"] for r in per_gran["none"]])
        floor = floors.get(l0["name"], 0)
        row = {"name": l0["name"], "op": l0["op"], "precision": l0["precision"],
               "w_density": l0["w_density"], "dram_cap": dense / floor if floor else float("inf")}
        for g, runs in per_gran.items():
            ls = [r["layers"][i] for r in runs]
            row[g] = {k: _mean([l[k] for l in ls]) for k in
                      ("act_density", "speedup_weights", "speedup_acts", "speedup_total", "stall")}
            row[g]["cycles"] = _mmm([l["cycles"] for l in ls])
            row[g]["dense_cycles"] = _mean([l["dense_cycles"] for l in ls])
        rows.append(row)
    return rows


def _weighted(rows, gran: str, key: str, names=None) -> float:
    """Network-level speed-up of one mechanism over ``rows`` (optionally only ``names``):
    sum of dense cycles over the sum of dense cycles / speed-up (cycle-weighted).  ``key``
    ``w_density`` / ``act_density``: the ideal one, every zero skipped (1 / density)."""
    sel = [r for r in rows if names is None or r["name"] in names]
    d = sum(r[gran]["dense_cycles"] for r in sel)

    def speedup(r):
        return 1 / r["w_density"] if key == "w_density" else \
            1 / r[gran][key] if key == "act_density" else r[gran][key]
    return d / sum(r[gran]["dense_cycles"] / speedup(r) for r in sel) if sel else 1.0


def run_case(case: dict, acts: str, repeat: int = 1) -> dict:
    """Build ``case``'s compiled graph for each granularity in ``acts`` activations, run
    every image on each (``repeat`` times, interleaved, for the wall times; the numbers are
    the first run's), and return the aggregated numbers (``mismatches``: images whose
    outputs differ between the granularities)."""
    import numpy as np

    from compiler.build import build_program
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.interpreter import Interpreter

    progs, interps, machines = {}, {}, {}
    t0 = time.perf_counter()
    for g in GRANULARITIES:
        machines[g] = Machine(act_skip=g)
        progs[g] = build_program(case["result"], machines[g], reference=False, activations=acts,
                                 calib=case.get("calib") if acts == "int8" else None)
        host = None
        if progs[g].meta.get("host_ops"):
            from target_dlac.sim.host import HostRunner
            host = HostRunner(progs[g])
        interps[g] = (Interpreter(progs[g]), host)
    build_s = time.perf_counter() - t0
    name = case["input_name"]
    images = case["images"]
    for g in GRANULARITIES:                     # warm-up (NumPy, caches); not timed
        it, host = interps[g]
        it.run({name: images[0]}, host)
    per_gran = {g: [] for g in GRANULARITIES}
    wall = {g: [] for g in GRANULARITIES}
    mismatches = []
    for i, x in enumerate(images):
        outs = {}
        for k in range(repeat):
            for g in GRANULARITIES:
                it, host = interps[g]
                t = time.perf_counter()
                o, rep = it.run({name: x}, host)
                wall[g].append(time.perf_counter() - t)
                if k == 0:
                    outs[g] = o
                    per_gran[g].append({"layers": _layer_numbers(rep), **_run_numbers(rep, machines[g], acts)})
        ref = outs["none"]
        for g in GRANULARITIES[1:]:
            if set(outs[g]) != set(ref) or not all(np.array_equal(outs[g][k], ref[k]) for k in ref):
                mismatches.append({"image": i, "act_skip": g})
    nets = {}
    for g, runs in per_gran.items():
        nets[g] = {k: _mean([r[k] for r in runs]) for k in
                   ("tflops_equiv", "tflops_per_mm2", "peak_tflops_per_mm2", "dense_utilization", "net_speedup")}
        nets[g]["cycles"] = _mmm([r["cycles"] for r in runs])
        nets[g]["wall_s"] = _mmm(wall[g])
        nets[g]["wall_vs_none"] = statistics.median(wall[g]) / statistics.median(wall["none"])
        nets[g]["wall_min_vs_none"] = min(wall[g]) / min(wall["none"])
    return {"model": case["model"], "label": case["label"], "data": case["data"],
            "activations": acts, "images": len(images), "build_s": build_s,
            "layers": _aggregate_layers(per_gran, _dram_floors(progs["none"])), "network": nets, "mismatches": mismatches}


def _torchvision_case(model: str, size: int, n: int) -> dict:
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.models import randomize_bn
    from tools.zoo import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    net = randomize_bn(getattr(tv.models, model)(weights=None)).eval()
    images = [torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1000 + i)).numpy()
              for i in range(n)]
    result = compile_model(net, (torch.from_numpy(images[0]),), config=QuantConfig())
    return {"model": model, "label": f"{model} {size}x{size}", "result": result, "images": images,
            "input_name": result.input_names[0],
            "data": f"random weights (torchvision weights=None, seed 0, BN randomized), "
                    f"{n} random-normal N(0,1) inputs (seeds 1000..{999 + n})"}


def _mnist_images(n: int):
    from compiler.datasets import mnist_test

    x, _ = mnist_test(n)
    return [x[i:i + 1] for i in range(len(x))]


def _mnist_case(n: int) -> dict:
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.datasets import mnist_cnn

    images = _mnist_images(n)
    result = compile_model(mnist_cnn(), (torch.from_numpy(images[0].copy()),), config=QuantConfig())
    return {"model": "mnist", "label": "mnist-cnn", "result": result, "images": images,
            "input_name": result.input_names[0],
            "data": f"pretrained digit-recognizer-py weights, the first {len(images)} real MNIST test images"}


def _trained_cases(folder: str, n: int) -> list[dict]:
    """One case per ``folder/*.pt2``: compiled with the quantization options of the
    ``compile_args`` in the .json log next to it (its ``--activations`` is replaced by the
    benchmark's; ``--activations int8`` uses the ``.calib.npz`` next to it)."""
    from compiler.arrays_io import _load_npz
    from compiler.cli_common import _quant_config
    from compiler.cli_model import compile_cmd
    from compiler.pipeline import compile_model
    from target_dlac.core.errors import ConfigError

    paths = sorted(glob.glob(os.path.join(folder, "*.pt2")))
    if not paths:
        raise ConfigError(f"--trained {folder}: no .pt2 files there")
    images = _mnist_images(n)
    cases = []
    for pt2 in paths:
        base = pt2[:-len(".pt2")]
        try:
            with open(base + ".json") as f:
                args = json.load(f)["compile_args"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"no readable compile_args in {base}.json ({type(e).__name__}: {e})") from None
        p = compile_cmd.make_context("compile", [pt2, *args]).params
        cfg = _quant_config(p["quant"], p["granularity"], p["cluster_size"], p["precisions"],
                            p["act_precisions"], p["swis_shifts"], p["swis_consecutive"], p["keep_first"],
                            p["keep_last"], p["relu_thresholds"])
        result = compile_model(pt2, config=cfg)
        calib = _load_npz(base + ".calib.npz", "--calib") if os.path.exists(base + ".calib.npz") else None
        cases.append({"model": "mnist", "label": f"trained:{os.path.basename(base)}", "result": result,
                      "images": images, "input_name": result.input_names[0], "calib": calib,
                      "data": f"trained sparse MNIST CNN {pt2} (compile args {' '.join(args)}), "
                              f"the first {len(images)} real MNIST test images"})
    return cases


def print_case(r: dict) -> None:
    """The per-layer and per-granularity tables of one (model, activations) result."""
    print(f"\n== {r['label']} | activations {r['activations']} | {r['images']} image(s) | {r['data']}")
    print(f"{'layer':<22} {'prec':<8} {'w dens':>6} {'a dens':>6} {'w x':>5} | {'column a x':>10} "
          f"{'tot x':>6} | {'pe a x':>6} {'tot x':>6} {'stall':>5} | {'ideal a':>7} {'DRAM cap':>8}")
    for l in r["layers"]:
        c, p = l["column"], l["pe"]
        d = c["act_density"]
        print(f"{l['name'][:22]:<22} {l['precision'][:8]:<8} {l['w_density']:>6.3f} {d:>6.3f} "
              f"{c['speedup_weights']:>5.2f} | {c['speedup_acts']:>10.2f} {c['speedup_total']:>6.2f} | "
              f"{p['speedup_acts']:>6.2f} {p['speedup_total']:>6.2f} {p['stall']:>5.0%} | "
              f"{1 / d if d else float('inf'):>7.2f} {l['dram_cap']:>8.2f}")
    print(f"{'act_skip':<8} {'cycles min':>11} {'median':>11} {'max':>11} {'TFLOP/s':>8} {'TF/s/mm2':>9} "
          f"{'peak/mm2':>9} {'dense util':>10} {'net x':>6} {'wall s min':>10} {'median':>7} {'vs none':>13}")
    for g, n in r["network"].items():
        cy = n["cycles"]
        print(f"{g:<8} {cy['min']:>11,} {cy['median']:>11,.0f} {cy['max']:>11,} {n['tflops_equiv']:>8.3f} "
              f"{n['tflops_per_mm2']:>9.3f} {n['peak_tflops_per_mm2']:>9.3f} {n['dense_utilization']:>10.3f} "
              f"{n['net_speedup']:>6.2f} {n['wall_s']['min']:>10.3f} {n['wall_s']['median']:>7.3f} "
              f"{n['wall_min_vs_none']:>5.2f} / {n['wall_vs_none']:.2f}")
    if r["mismatches"]:
        print(f"OUTPUTS DIFFER between granularities: {r['mismatches'][:5]}")


def summary(results: list[dict]) -> list[str]:
    """The comparisons with the paper and Cnvlutin, and where the gaps come from."""
    lines = ["", "== against the paper (all numbers measured above; means of per-image ratios)"]
    for r in results:
        tern = [l for l in r["layers"] if l["precision"] == "ternary"]
        sparse_in = [l for l in r["layers"] if l["column"]["act_density"] < 0.999]
        tag = f"{r['label']} {r['activations']}"
        for g in ("column", "pe"):
            tot = sorted(l[g]["speedup_total"] for l in tern)
            if tot and r["model"] == "resnet34":
                lo, hi = PAPER["layer_speedup"]
                lines.append(f"{tag} {g}: per-layer speed-up over {len(tot)} ternary layers "
                             f"{tot[0]:.2f}x .. median {statistics.median(tot):.2f}x .. {tot[-1]:.2f}x "
                             f"(paper, ResNet-34: {lo:g}x-{hi:g}x)")
        want = PAPER["tflops_per_mm2"][r["activations"]]
        n = r["network"]
        lines.append(f"{tag}: TFLOP/s/mm^2 none {n['none']['tflops_per_mm2']:.3f}, column "
                     f"{n['column']['tflops_per_mm2']:.3f}, pe {n['pe']['tflops_per_mm2']:.3f}"
                     + (f" (paper {want:g})" if want else ""))
        if r["model"] == "mnist":
            names = [l["name"] for l in r["layers"] if l["name"] in RELU_FED_MNIST]
            if names:
                parts = []
                for g in ("column", "pe"):
                    per = _mean([l[g]["speedup_acts"] for l in r["layers"] if l["name"] in names])
                    parts.append(f"{g} {per:.2f}x (cycle-weighted {_weighted(r['layers'], g, 'speedup_acts', names):.2f}x)")
                lines.append(f"{tag}: Cnvlutin check, speedup_acts of {'+'.join(names)}: "
                             f"{', '.join(parts)} (Cnvlutin: {PAPER['cnvlutin_speedup']}x)")
        # where the gap comes from
        if tern:
            wd = _mean([l["w_density"] for l in tern])
            lines.append(f"  data/weights: ternary layers' mean non-zero weight fraction {wd:.3f} (ideal "
                         f"weight skip {_weighted(tern, 'none', 'w_density'):.2f}x); mechanism: achieved "
                         f"{_weighted(tern, 'none', 'speedup_weights'):.2f}x (cycle-weighted)")
        if sparse_in:
            ad = _mean([l["column"]["act_density"] for l in sparse_in])
            lines.append(f"  data/activations: mean input density of the {len(sparse_in)} layers with zeros in "
                         f"their input {ad:.3f} (ideal activation skip "
                         f"{_weighted(sparse_in, 'column', 'act_density'):.2f}x); mechanism: achieved column "
                         f"{_weighted(sparse_in, 'column', 'speedup_acts'):.2f}x, pe "
                         f"{_weighted(sparse_in, 'pe', 'speedup_acts'):.2f}x (cycle-weighted; windows "
                         f"also read zero padding)")
        capped = [l for l in tern if l["dram_cap"] < PAPER["layer_speedup"][0]]
        if tern:
            lines.append(f"  machine/DRAM: {len(capped)} of {len(tern)} ternary layers cannot reach "
                         f"{PAPER['layer_speedup'][0]:g}x on this machine (dense cycles / DRAM floor < "
                         f"{PAPER['layer_speedup'][0]:g}; median cap "
                         f"{statistics.median(l['dram_cap'] for l in tern):.2f}x); with pe, "
                         f"{sum(l['pe']['stall'] > 0.5 for l in tern)} spend over half their cycles "
                         f"waiting on loads / stores (the default machine's schedule)")
        p = n["pe"]
        if want:
            lines.append(f"  machine: dense peak {p['peak_tflops_per_mm2']:.3f} TFLOP/s/mm^2 x dense "
                         f"utilization {p['dense_utilization']:.3f} -> the paper's {want:g} needs a "
                         f"{want / (p['peak_tflops_per_mm2'] * p['dense_utilization']):.2f}x net speed-up; "
                         f"measured column {n['column']['net_speedup']:.2f}x, pe {p['net_speedup']:.2f}x")
        if r["model"] == "resnet18":
            w = n["column"]["wall_min_vs_none"]
            lines.append(f"  interpreter wall time (fastest run / median run) column/none {w:.2f}x / "
                         f"{n['column']['wall_vs_none']:.2f}x, pe/none {n['pe']['wall_min_vs_none']:.2f}x / "
                         f"{n['pe']['wall_vs_none']:.2f}x (goal: the default, column, within 1.3x: "
                         f"{'met' if w <= 1.3 else 'missed'} on the fastest runs)")
    return lines


def _csv(value: str, allowed, what: str, ap) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        ap.error(f"{what} {value!r}: expected a comma-separated list of {', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--images", type=int, default=200, help="MNIST test images (default 200)")
    ap.add_argument("--resnet-images", type=int, default=2, help="random inputs per ResNet (default 2)")
    ap.add_argument("--size", type=int, default=224, help="ResNet input size (default 224)")
    ap.add_argument("--activations", default="fp32,fp16")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each image (default 1)")
    ap.add_argument("--trained", metavar="DIR", help="add DIR/*.pt2 trained MNIST CNNs as rows")
    ap.add_argument("--trained-images", type=int, default=100)
    ap.add_argument("--trained-activations", default="fp32")
    ap.add_argument("--json", metavar="OUT", help="write every number to OUT as JSON")
    args = ap.parse_args(argv)
    models = _csv(args.models, MODELS, "--models", ap)
    acts = _csv(args.activations, ACTIVATIONS[:2], "--activations", ap)
    tacts = _csv(args.trained_activations, ACTIVATIONS, "--trained-activations", ap)
    for opt in ("images", "resnet_images", "trained_images", "repeat"):
        if not 1 <= getattr(args, opt) <= 10000:
            ap.error(f"--{opt.replace('_', '-')} {getattr(args, opt)}: expected 1..10000")
    if not 32 <= args.size <= 512:
        ap.error(f"--size {args.size}: expected 32..512")
    if args.trained and not os.path.isdir(args.trained):
        ap.error(f"--trained {args.trained}: not a directory")

    from target_dlac.core.atomic import atomic_write_text
    from target_dlac.core.errors import DlacError
    from dataclasses import replace

    from target_dlac.isa.area import area_mm2
    from target_dlac.isa.machine import Machine

    m = Machine()
    print(f"machine: {m.pe_rows}x{m.pe_cols} PEs, {m.lanes} fp32 lane(s), {m.clock_mhz:g} MHz, "
          f"{m.area_mm2:g} mm^2 (area model: none {area_mm2(replace(m, act_skip='none')):.3f}, column "
          f"{area_mm2(m):.3f}, pe {area_mm2(replace(m, act_skip='pe')):.3f}), "
          f"{m.dram_bytes_per_cycle} B/cycle DRAM; act_skip none/column/pe; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    t_all = time.perf_counter()
    results = []
    try:
        plan = []
        for model in models:
            t0 = time.perf_counter()
            case = _mnist_case(args.images) if model == "mnist" else \
                _torchvision_case(model, args.size, args.resnet_images)
            plan.append((case, acts, time.perf_counter() - t0))
        if args.trained:
            plan += [(c, tacts, 0.0) for c in _trained_cases(args.trained, args.trained_images)]
        for case, case_acts, compile_s in plan:
            for a in case_acts:
                if a == "int8" and case.get("calib") is None:
                    raise DlacError(f"{case['label']}: --activations int8 needs a .calib.npz next to it")
                r = run_case(case, a, args.repeat)
                r["compile_s"] = compile_s
                results.append(r)
                print_case(r)
                sys.stdout.flush()
            case.pop("result")
    except DlacError as e:
        print(f"act_skip: error: {e}", file=sys.stderr)
        return 1
    for line in summary(results):
        print(line)
    bad = [(r["label"], r["activations"], r["mismatches"]) for r in results if r["mismatches"]]
    total_s = time.perf_counter() - t_all
    print(f"\noutputs identical for act_skip none/column/pe on every image: {'yes' if not bad else 'NO'}; "
          f"{total_s:.0f} s in all")
    if args.json:
        data = {"argv": sys.argv[1:] if argv is None else list(argv), "machine": m.to_dict(),
                "paper": PAPER, "results": results, "seconds": total_s}
        atomic_write_text(args.json, json.dumps(data, indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    if bad:
        print(f"act_skip: error: outputs differ between granularities: {bad[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
