#!/usr/bin/env python
"""Model zoo: torchvision architectures (``weights=None``, random weights; BN statistics
randomized so the folds are not identities) compiled by dlac in ternary mode with fp32
activations and in the all-integer mode (int8 activations), run on the ISA interpreter
and compared with the TVM CPU reference of the same quantized graph (the REF graph in
the binary): max relative error for fp32 activations, exact equality for int8.

    python tools/zoo.py [--models resnet18,resnet34,resnet50,mobilenet_v2] [--size 224]
                        [--modes ternary,int8] [--json FILE]

Needs torchvision 0.28.0 (``pip install --no-deps torchvision==0.28.0 pillow``; the
Makefile's ``zoo`` target installs it).  torchvision's import needs a C++ op library
that its wheel does not carry; :func:`import_torchvision` stubs the module that registers
it (we only build architectures, never call those ops).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
MODES = ("ternary", "int8")


def import_torchvision():
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision
    return torchvision


def run_model(name: str, size: int, modes=MODES, calib_samples: int = 2, seed: int = 0) -> list[dict]:
    """Compile, run and check ``name`` in each mode; one result row per mode."""
    import numpy as np
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.models import randomize_bn
    from target_dlac.sim.host import HostRunner, reference_outputs
    from target_dlac.sim.interpreter import run
    from target_dlac.isa.machine import Machine

    tv = import_torchvision()
    torch.manual_seed(seed)
    model = randomize_bn(getattr(tv.models, name)(weights=None)).eval()
    x = torch.randn(1, 3, size, size)
    xn = x.numpy()
    t0 = time.perf_counter()
    result = compile_model(model, (x,), config=QuantConfig())
    compile_s = time.perf_counter() - t0
    rows = []
    for mode in modes:
        t0 = time.perf_counter()
        if mode == "int8":
            calib = {"x": np.random.default_rng(seed + 1).standard_normal(
                (calib_samples, 3, size, size)).astype(np.float32)}
            prog = build_program(result, Machine(), activations="int8", calib=calib)
        else:
            prog = build_program(result, Machine())
        codegen_s = time.perf_counter() - t0
        host = HostRunner(prog) if prog.meta.get("host_ops") else None
        t0 = time.perf_counter()
        outs, rep = run(prog, {"x": xn}, host_runner=host)
        interp_s = time.perf_counter() - t0
        ref = reference_outputs(prog, {"x": xn})[0]
        out = outs["output_0"]
        err = float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
        rows.append({"model": name, "size": size, "mode": mode, "max_rel_err": err,
                     "exact": bool(np.array_equal(out, ref)), "interpreter_s": interp_s,
                     "compile_s": compile_s, "codegen_s": codegen_s, "cycles": rep.cycles["total"],
                     "host_ops": len(prog.meta.get("host_ops", [])), "instructions": len(prog.insns)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'model':<14} {'mode':<8} {'max rel err':>12} {'exact':>6} {'interp s':>9} {'cycles':>12} "
          f"{'host ops':>8}")
    for name in args.models.split(","):
        for r in run_model(name, args.size, args.modes.split(",")):
            rows.append(r)
            print(f"{r['model']:<14} {r['mode']:<8} {r['max_rel_err']:>12.3e} {str(r['exact']):>6} "
                  f"{r['interpreter_s']:>9.2f} {r['cycles']:>12,} {r['host_ops']:>8}", flush=True)
    bad = [r for r in rows if (r["mode"] == "int8" and not r["exact"]) or r["max_rel_err"] > 1e-4]
    if args.json:
        from target_dlac.core.atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    if bad:
        print(f"MISMATCH: {[(r['model'], r['mode']) for r in bad]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
