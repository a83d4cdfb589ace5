#!/usr/bin/env python
"""The fake-quantized training model on torchvision models as shipped (random weights, random
normal inputs): does its exact evaluation equal the compiled dLAC binary bit for bit?

For each model and configuration: ``compiler.train.qat.prepare`` with int8 activations,
calibration on 4 inputs, the exact integer forward on 4 more; then ``dlac compile`` of the
exported model (same config, same calibration inputs), and the binary in the interpreter
and its TVM reference on the same 4 inputs.  A model ``prepare`` refuses is listed with its
one-line reason.

    python tools/qat_torchvision.py [--size 32] [--models resnet18 mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_1", "vgg11", "shufflenet_v2_x0_5")


def configs():
    from compiler.config import QuantConfig

    return [("ternary", QuantConfig(), 8), ("int4 N=4, 4-bit acts", QuantConfig(weights="int4", cluster_size=4), 4),
            ("SWIS S=2, 4-bit acts", QuantConfig(weights="swis", swis_shifts=2.0), 4)]


def check(model, x, cfg, bits) -> str:
    import torch

    from compiler import compile_model
    from compiler.build import build_program
    from compiler.reference import Reference
    from compiler.train.qat import QatSpec, prepare
    from target_dlac.sim.host import HostRunner, reference_module
    from target_dlac.sim.interpreter import Interpreter

    qm = prepare(model, x[:1], QatSpec(quant=cfg, activations="int8", act_bits=bits)).eval()
    qm.calibrate([x[:4]])
    with torch.no_grad():
        want = qm(x[4:]).numpy()
    r = compile_model(qm.export(), (x[:1],), config=cfg)
    prog = build_program(r, activations="int8", calib={"x": x[:4].numpy()}, act_bits=bits)
    ref, interp = Reference(reference_module(prog)), Interpreter(prog)
    host = HostRunner(prog) if prog.host is not None else None
    equal = 0
    for i in range(len(want)):
        xi = x[4 + i:5 + i].numpy()
        got = interp.run({"x": xi}, host)[0]["output_0"]
        equal += bool(np.array_equal(got[0], want[i]) and np.array_equal(got, ref(xi)[0]))
    return f"{equal}/{len(want)} equal"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    a = ap.parse_args(argv)
    import torch

    from target_dlac.core.errors import DlacError
    from tools.zoo import import_torchvision

    tv = import_torchvision()
    print(f"| model | {' | '.join(name for name, _, _ in configs())} |")
    print("|---|" + "---|" * len(configs()))
    for name in a.models:
        torch.manual_seed(0)
        model = getattr(tv.models, name)(num_classes=10).eval()
        x = torch.randn(8, 3, a.size, a.size)
        cells = []
        for _, cfg, bits in configs():
            t0 = time.perf_counter()
            try:
                cells.append(f"{check(model, x, cfg, bits)} ({time.perf_counter() - t0:.0f} s)")
            except DlacError as e:
                cells.append(f"refused: {str(e)[:120]}")
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
