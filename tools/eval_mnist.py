#!/usr/bin/env python
"""Accuracy of the MNIST CNN (digit-recognizer-py) on the MNIST test set:
float vs ternary (all layers) vs ternary with first/last layer fp32, each
through the TVM CPU reference build of its quantized graph.

    python tools/eval_mnist.py --limit 10000        (make accuracy)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=10000, help="number of test images (max 10000)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    from target_dlac.core.atomic import atomic_write_text
    from compiler.datasets import mnist_cnn, mnist_test
    from compiler.evaluate import evaluate, format_rows, standard_configs

    t0 = time.perf_counter()
    model = mnist_cnn()
    x, y = mnist_test(args.limit)
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    rows = evaluate(model, standard_configs(), x, y, batch=args.batch,
                    progress=lambda r: print(f"  {r.name:<28} {100 * r.accuracy:6.2f}%", flush=True))
    print(format_rows(rows))
    print(f"PyTorch float model, same {len(y)} images: {100 * torch_acc:.2f}%")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps([vars(r) for r in rows] + [{"torch_float": torch_acc}],
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
