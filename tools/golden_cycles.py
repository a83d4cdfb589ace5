#!/usr/bin/env python
"""Golden whole-model cycle table: exact cycle counts of a few model x mode x machine pairs.

Each case compiles a model with dlac, builds its binary for a machine, runs it once in
the ISA interpreter on a fixed input and records the run's cycles (total, compute,
load and store stalls), every layer's cycles and lower bound, the instruction count and,
for the all-integer pipeline, a SHA-256 of the output bytes (bit-exact by contract).  The
table is checked in (``tests/golden/cycles.json``); ``tests/e2e/test_golden_cycles.py`` checks
that every number is still exactly what the table says, so a change that moves both the
interpreter and the cost model the same way is seen.

    python tools/golden_cycles.py            # compare with the table, say what moved (exit 1 if anything)
    python tools/golden_cycles.py --write    # regenerate the table after an intended change

Models: the bundled pretrained MNIST CNN (real weights) in five quantization / activation
modes, and a small ResNet with random weights (seeded) on the default machine and on a
smaller one.  Floating-point outputs are not hashed (their last bits may differ between
CPUs).  Cycles depend on which activations are zero (``act_skip``): the float cases run on
machines that skip none, whose cycles do not depend on the values; the integer cases skip
zero activations (``column`` and ``pe``: their zeros are exact, the same on every CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TABLE = os.path.join(ROOT, "tests", "golden", "cycles.json")

#: a machine smaller than the default: 8 x 16 PEs, 64 KiB weight and input buffers
SMALL = {"pe_rows": 8, "pe_cols": 16, "wgt_buf_kib": 64, "inp_buf_kib": 64}

#: the default machine without zero-activation skipping (float cases: see the docstring)
DENSE = {"act_skip": "none"}

#: case name -> (model, quantization (CLI names), activations, machine overrides)
CASES = {
    "mnist/ternary/fp32/default": ("mnist", {"quant": "ternary"}, "fp32", DENSE),
    "mnist/cluster4/int8/default": ("mnist", {"quant": "cluster", "cluster_size": 4}, "int8", {}),
    "mnist/cluster4/int8/pe": ("mnist", {"quant": "cluster", "cluster_size": 4}, "int8", {"act_skip": "pe"}),
    "mnist/int4/fp16/default": ("mnist", {"quant": "int4"}, "fp16", DENSE),
    "mnist/swis2/fp32/default": ("mnist", {"quant": "swis", "swis_shifts": 2.0}, "fp32", DENSE),
    "mnist/none/fp32/default": ("mnist", {"quant": "none"}, "fp32", DENSE),
    "resnet_small/ternary/fp32/default": ("resnet_small", {"quant": "ternary"}, "fp32", DENSE),
    "resnet_small/ternary/fp32/small": ("resnet_small", {"quant": "ternary"}, "fp32", dict(SMALL, **DENSE)),
    "resnet_small/int8/int8/small": ("resnet_small", {"quant": "int8"}, "int8", SMALL),
}


def _model(name: str):
    import numpy as np
    import torch

    if name == "mnist":
        from compiler.datasets import mnist_cnn, mnist_test

        x, _ = mnist_test(limit=9)
        return mnist_cnn(), x[:1].astype(np.float32), x[1:9].reshape(8, 1, 1, 28, 28).astype(np.float32)
    from compiler.models import randomize_bn, small_resnet

    torch.manual_seed(0)
    model = randomize_bn(small_resnet(num_classes=10), seed=1).eval()
    rng = np.random.default_rng(0)
    return model, rng.standard_normal((1, 3, 16, 16)).astype(np.float32), \
        rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32)


def _config(q: dict):
    from compiler.cli import QUANT_WEIGHTS
    from compiler.config import QuantConfig

    weights, cluster = QUANT_WEIGHTS[q["quant"]]          # as `dlac compile --quant` does
    return QuantConfig(weights=weights, cluster_size=q.get("cluster_size", cluster),
                       swis_shifts=q.get("swis_shifts", 3.0))


def run_case(name: str) -> dict:
    import numpy as np
    import torch

    from compiler import compile_model
    from compiler.build import build_program
    from target_dlac.sim.interpreter import run
    from target_dlac.isa.machine import Machine

    model_name, quant, activations, machine = CASES[name]
    model, x, calib = _model(model_name)
    result = compile_model(model, (torch.from_numpy(x),), config=_config(quant))
    mach = Machine(**machine)
    inputs = {result.input_names[0]: x}
    prog = build_program(result, mach, reference=False, activations=activations,
                         calib={result.input_names[0]: calib} if activations == "int8" else None)
    outs, rep = run(prog, inputs)
    row = {"instructions": len(prog.insns), "cycles": dict(rep.cycles),
           "layers": [[l.name, l.cycles, l.lower_bound_cycles] for l in rep.layers]}
    if activations == "int8":
        row["output_sha256"] = hashlib.sha256(
            b"".join(np.ascontiguousarray(outs[k]).tobytes() for k in sorted(outs))).hexdigest()
    return row


def compute(names=None) -> dict:
    out = {}
    for name in names or CASES:
        print(f"  {name}", file=sys.stderr, flush=True)
        out[name] = run_case(name)
    return out


def differences(old: dict, new: dict) -> list[str]:
    """What moved between two tables, one line per number."""
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            lines.append(f"{name}: {'added' if a is None else 'removed'}")
            continue
        for k in ("instructions", "output_sha256"):
            if a.get(k) != b.get(k):
                lines.append(f"{name}: {k} {a.get(k)} -> {b.get(k)}")
        for k in sorted(set(a["cycles"]) | set(b["cycles"])):
            if a["cycles"].get(k) != b["cycles"].get(k):
                lines.append(f"{name}: cycles.{k} {a['cycles'].get(k)} -> {b['cycles'].get(k)}")
        if len(a["layers"]) != len(b["layers"]):
            lines.append(f"{name}: {len(a['layers'])} layers -> {len(b['layers'])}")
        for la, lb in zip(a["layers"], b["layers"]):
            if la != lb:
                lines.append(f"{name}: layer {la[0]} cycles/bound {la[1]}/{la[2]} -> "
                             f"{lb[0]} {lb[1]}/{lb[2]}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"write the table to {os.path.relpath(TABLE, ROOT)}")
    args = ap.parse_args(argv)
    new = compute()
    if args.write:
        from target_dlac.core.atomic import atomic_write_text

        os.makedirs(os.path.dirname(TABLE), exist_ok=True)
        atomic_write_text(TABLE, json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"wrote {os.path.relpath(TABLE, ROOT)} ({len(new)} cases)")
        return 0
    with open(TABLE) as f:
        old = json.load(f)
    moved = differences(old, new)
    for line in moved:
        print(line)
    print(f"{len(new)} cases: " + (f"{len(moved)} number(s) moved" if moved else "every number as in the table"))
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
