#!/usr/bin/env python
"""ReLU thresholds against accuracy and cycles on real MNIST (issue 15).

For each threshold ``T`` the MNIST CNN (the bundled pretrained model, or a ``.pt2`` that
``dlac train`` wrote) is compiled with ``--relu-threshold PATTERN=T`` (``x if x > T else 0``
in the chosen layers; ``T = 0`` is the plain ReLU), and real test images run through the
binary in the ISA interpreter on machines that skip zero activations per PE column and
per PE: the accuracy is the binary's, the cycles are the interpreter's mean over the
images, and the first ``--check`` images are also run in the TVM reference of the same
quantized graph (the predictions must agree; the tool fails otherwise).

    python tools/relu_sweep.py [--thresholds 0,0.25,0.5,1,2] [--images 1000] [-o docs/relu_sweep]

Writes ``OUT.json`` (every number) and, with matplotlib installed, ``OUT.png`` and
``OUT.svg`` (accuracy against mean cycles per image, one line per granularity, each point
labelled with its threshold); each file is written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GRANULARITIES = ("column", "pe")


def _model(path: str | None):
    """(the model compile_model takes, what it is): the bundled CNN or a trained .pt2."""
    from compiler.datasets import mnist_cnn

    if path is None:
        return mnist_cnn(), "pretrained digit-recognizer-py CNN"
    return path, f"trained {path}"


def sweep(thresholds, pattern: str, images: int, check: int, activations: str, model_path=None,
          echo=print) -> dict:
    import numpy as np
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.datasets import mnist_test
    from compiler.reference import Reference
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.host import reference_module
    from target_dlac.sim.interpreter import Interpreter

    x, y = mnist_test(images)
    model, what = _model(model_path)
    echo(f"model: {what}; {len(y):,} real MNIST test images; thresholds on {pattern!r}; "
         f"activations {activations}")
    rows = []
    for t in thresholds:
        config = QuantConfig(relu_thresholds={pattern: t} if t > 0 else {})
        t0 = time.perf_counter()
        result = compile_model(model, (torch.from_numpy(x[:1].copy()),), config=config)
        calib = {"x": x[:64]} if activations == "int8" else None
        row = {"threshold": t, "granularities": {}}
        for g in GRANULARITIES:
            prog = build_program(result, Machine(act_skip=g), activations=activations, calib=calib,
                                 reference=(g == GRANULARITIES[0]))
            it = Interpreter(prog)
            preds, cyc, acts = [], [], []
            for i in range(len(y)):
                out, rep = it.run({"x": x[i:i + 1]})
                preds.append(int(out["output_0"].argmax()))
                cyc.append(rep.cycles["total"])
                acts.append([(l.name, l.act_density, l.speedup_acts) for l in rep.layers
                             if l.act_density is not None])
            preds = np.array(preds)
            if g == GRANULARITIES[0] and check:
                ref = Reference(reference_module(prog))      # the binary's graph, built for the CPU
                ref_preds = np.array([int(ref(x[i:i + 1])[0].argmax()) for i in range(min(check, len(y)))])
                agree = int((ref_preds == preds[:len(ref_preds)]).sum())
                if agree != len(ref_preds):
                    raise SystemExit(f"T={t}: the interpreter and the TVM reference disagree on "
                                     f"{len(ref_preds) - agree} of {len(ref_preds)} images")
                row["reference_agreement"] = f"{agree}/{len(ref_preds)}"
            layers = {}
            for name, *_ in acts[0]:
                vals = [a for per in acts for a in per if a[0] == name]
                layers[name] = {"act_density": float(np.mean([v[1] for v in vals])),
                                "speedup_acts": float(np.mean([v[2] for v in vals]))}
            row["granularities"][g] = {
                "accuracy": float((preds == y).mean()), "cycles_mean": float(np.mean(cyc)),
                "cycles_min": int(min(cyc)), "cycles_median": float(np.median(cyc)), "cycles_max": int(max(cyc)),
                "layers": layers}
        rows.append(row)
        col = row["granularities"]["column"]
        echo(f"T={t:<6g} accuracy {100 * col['accuracy']:6.2f}%  mean cycles column "
             f"{col['cycles_mean']:9,.0f}  pe {row['granularities']['pe']['cycles_mean']:9,.0f}  "
             f"({time.perf_counter() - t0:.0f} s; reference agreement {row.get('reference_agreement', '-')})")
    return {"model": what, "pattern": pattern, "images": int(len(y)), "activations": activations,
            "rows": rows}


def plot(data: dict, out: str) -> list[str]:
    """Accuracy against mean cycles per image (PNG and SVG, atomically); [] without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from target_dlac.core.atomic import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for g in GRANULARITIES:
        xs = [r["granularities"][g]["cycles_mean"] for r in data["rows"]]
        ys = [100 * r["granularities"][g]["accuracy"] for r in data["rows"]]
        ax.plot(xs, ys, marker="o", label=f"act_skip = {g}")
        for r, a, b in zip(data["rows"], xs, ys):
            ax.annotate(f"T={r['threshold']:g}", (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("mean dLAC cycles per image (interpreter)")
    ax.set_ylabel("top-1 accuracy of the binary (%)")
    ax.set_title(f"ReLU threshold on {data['pattern']}: {data['images']:,} MNIST test images")
    ax.grid(True, alpha=0.3)
    ax.legend()
    written = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")
        atomic_write_bytes(f"{out}.{ext}", buf.getvalue())
        written.append(f"{out}.{ext}")
    plt.close(fig)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", default="0,0.25,0.5,1,2",
                    help="comma-separated thresholds T >= 0 (in the layers' output units)")
    ap.add_argument("--layers", default="conv_layers.*", metavar="PATTERN",
                    help="layers whose ReLU gets the threshold (fnmatch pattern)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--check", type=int, default=50, help="images also run in the TVM reference")
    ap.add_argument("--activations", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--model", metavar="FILE.pt2", help="a model dlac train wrote (default: the bundled CNN)")
    ap.add_argument("-o", "--out", default="relu_sweep", metavar="PREFIX")
    args = ap.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--thresholds {args.thresholds!r}: expected numbers separated by commas")
    if not thresholds or any(not (t >= 0) for t in thresholds):
        ap.error("--thresholds: every threshold must be a number >= 0")
    if args.images < 1:
        ap.error("--images must be at least 1")
    from target_dlac.core.atomic import atomic_write_text

    data = sweep(thresholds, args.layers, args.images, args.check, args.activations, args.model)
    atomic_write_text(f"{args.out}.json", json.dumps(data, indent=1))
    print(f"wrote {args.out}.json" + "".join(f", {p}" for p in plot(data, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
