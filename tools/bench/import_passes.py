#!/usr/bin/env python
"""Wall time of import + passes for torchvision-shaped ResNet-18 at 224x224.

Times each pipeline stage (torch.export + Relax import, canonicalize, quantize,
fold, partition) and, as a baseline measured in the same run, TVM's own BN fold
route (FoldBatchnormToConv2D + FoldConstant) on the same imported module.

    python tools/bench/import_passes.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)

    import torch
    from tvm import relax

    from compiler import QuantConfig, compile_model
    from compiler.models import randomize_bn, resnet18
    from passes.fold_batchnorm import fold_batchnorm
    from passes.fold_constant_views import fold_constant_views

    torch.manual_seed(0)
    model = randomize_bn(resnet18())
    x = torch.randn(1, 3, args.size, args.size)
    runs = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        result = compile_model(model, (x,), config=QuantConfig())
        total = time.perf_counter() - t0
        runs.append((total, dict(result.timings)))
        print(f"run {i}: total {total:.2f} s  " +
              "  ".join(f"{k} {v:.2f}" for k, v in result.timings.items()), flush=True)
    med = statistics.median(t for t, _ in runs)
    stages = {k: statistics.median(r[k] for _, r in runs) for k in runs[0][1]}
    passes_s = sum(v for k, v in stages.items() if k != "import")

    imported = result.stages["import"]
    t0 = time.perf_counter()
    ours = fold_batchnorm(fold_constant_views(imported))
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq = relax.transform.FoldBatchnormToConv2D()(imported)
    seq = relax.transform.FoldConstant()(seq)
    tvm_s = time.perf_counter() - t0
    del ours, seq

    print(f"\nResNet-18 {args.size}x{args.size}, {len(result.layers)} layers, "
          f"{100 * result.totals()['replaced_share']:.1f}% multiplies replaced")
    print(f"median of {args.repeat}: import+passes {med:.2f} s (import {stages['import']:.2f} s, "
          f"all passes {passes_s:.2f} s)")
    print(f"BN fold: dlac NumPy passes {ours_s:.3f} s vs TVM FoldBatchnormToConv2D+FoldConstant "
          f"{tvm_s:.2f} s  -> {tvm_s / ours_s:.0f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
