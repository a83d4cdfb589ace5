"""Benchmark: design-space sweep rate of ResNet-18 (torchvision resnet18, 224x224, default
compile options, default schedules): builds the model once, then sweeps >= 1,000 machine
configurations single-process and in a process pool; prints configurations per second.

    .venv/bin/python tools/bench/sweep_rate.py [--jobs 2] [--points 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GRID = {"pe_rows": [8, 16, 32, 64], "pe_cols": [16, 32, 64, 128], "wgt_buf_kib": [64, 128, 256, 512],
        "inp_buf_kib": [64, 128, 256, 512], "dram_bytes_per_cycle": [16, 32, 64, 128]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--single", type=int, default=100, help="points of the single-process rate")
    a = ap.parse_args(argv)
    import torch

    from compiler import sweep
    from compiler.pipeline import compile_model
    from compiler.sweep_run import header_of, run_sweep
    from target_dlac.isa.machine import Machine
    from tools.zoo import import_torchvision

    tv = import_torchvision()
    t0 = time.monotonic()
    net = tv.models.resnet18().eval()
    result = compile_model(net, (torch.randn(1, 3, 224, 224),))
    layers = {(): sweep.sweep_layers(result)}
    t_build = time.monotonic() - t0
    base = Machine().to_dict()
    pts = sweep.points(GRID, a.points, seed=0)
    print(f"model built once: {t_build:.1f} s, {len(layers[()])} conv/dense layers")
    quiet = lambda s: None  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        for p in pts[:a.single]:
            sweep.evaluate(layers[()], base, p[1])
        dt1 = time.monotonic() - t0
        print(f"single process: {a.single} points in {dt1:.2f} s = {a.single / dt1:,.1f} configurations/s")
        h = header_of("resnet18", {}, GRID, a.points, 0, base, len(pts), {})
        t0 = time.monotonic()
        _, done = run_sweep(os.path.join(d, "s.jsonl"), h, pts, layers, base, jobs=a.jobs, say=quiet)
        dt = time.monotonic() - t0
    bad = sum(r["status"] != "ok" for r in done.values())
    print(f"pool of {a.jobs}: {len(done)} points ({bad} invalid) in {dt:.1f} s = "
          f"{len(done) / dt:,.1f} configurations/s (incl. worker start-up and the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
