#!/usr/bin/env python
"""Wall time of one MNIST fine-tuning epoch of the bundled CNN (issue 14 goal: under 60 s
on 2 cores), against PyTorch eager training of the float model measured in the same run.

Each configuration trains one epoch with ``compiler.train.loop.train`` (55,000 training
images, batch 128, Adam, 2 threads) from the pretrained float CNN; the time is split into
the training steps and the end-of-epoch calibration + validation on 5,000 images.  The
baseline is a plain eager loop over the same images with the float model (same batch size,
optimizer and threads).  ``--limit`` trains on fewer images (the per-epoch figure is then
scaled to 55,000 and marked so).

    python tools/bench/train_epoch.py [--limit N] [--only ternary-int8 ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FULL = 55_000


def configs():
    from compiler.config import QuantConfig as Q

    return {
        "ternary-int8": ("ternary, all layers, int8 activations", Q.all_ternary(), "int8", 8),
        "ternary-fp32": ("ternary, all layers, fp32 activations", Q.all_ternary(), "fp32", 8),
        "ternary-n64-int8": ("ternary N=64, int8 activations", Q(weights="ternary", cluster_size=64), "int8", 8),
        "int4-int8": ("4-bit N=4, int8 activations", Q(weights="int4", cluster_size=4), "int8", 8),
        "swis-int8": ("SWIS S=2, int8 activations", Q(weights="swis", swis_shifts=2.0), "int8", 8),
        "ternary-act4": ("ternary, 4-bit activations", Q(), "int8", 4),
    }


def eager_epoch(x, y, batch: int, threads: int) -> float:
    """Seconds of one epoch of plain PyTorch eager training of the float CNN."""
    import torch
    import torch.nn.functional as F

    from compiler.datasets import mnist_cnn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = mnist_cnn().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    order = torch.randperm(len(y)).numpy()
    t0 = time.perf_counter()
    for i in range(0, len(y), batch):
        idx = order[i:i + batch]
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="training images (default: all 55,000)")
    ap.add_argument("--only", nargs="*", help=f"configurations: {', '.join(configs())}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    import torch

    from compiler.datasets import mnist_cnn
    from compiler.train.data import mnist_split
    from compiler.train.loop import TrainOptions, train
    from compiler.train.qat import QatSpec, prepare

    split = mnist_split(limit=a.limit, test=False)
    n = len(split.y_train)
    scale = FULL / n
    note = "" if n == FULL else f" (measured on {n:,} images, scaled to {FULL:,})"
    base = eager_epoch(split.x_train, split.y_train, 128, a.threads) * scale
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {a.threads} threads")
    print(f"PyTorch eager, float CNN: {base:.1f} s per epoch{note}")
    rows = {"baseline_eager_s": base, "images": n, "configs": {}}
    print(f"{'configuration':<42} {'steps s':>8} {'val s':>6} {'epoch s':>8} {'x eager':>8} {'val acc':>8}")
    for key in a.only or list(configs()):
        desc, cfg, acts, bits = configs()[key]
        x1 = torch.from_numpy(split.x_train[:1])
        qm = prepare(mnist_cnn(), x1, QatSpec(quant=cfg, activations=acts, act_bits=bits))
        res = train(qm, None, split, TrainOptions(epochs=1, threads=a.threads))
        h = res.history[-1]
        steps = h["train_seconds"] * scale
        val = h["seconds"] - h["train_seconds"]
        rows["configs"][key] = {"description": desc, "train_steps_s": steps, "calib_val_s": val,
                                "epoch_s": steps + val, "ratio_vs_eager": steps / base,
                                "val_acc": h["val_acc"]}
        print(f"{desc:<42} {steps:>8.1f} {val:>6.1f} {steps + val:>8.1f} {steps / base:>7.2f}x "
              f"{100 * h['val_acc']:>7.2f}%", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
