#!/usr/bin/env python
"""Trained accuracy on MNIST (issue 14; the table of docs/results.md "Training").

For each experiment: the bundled pretrained CNN (digit-recognizer-py) is prepared as a
fake-quantized model (``compiler.train.qat``), evaluated before training (post-training
quantization), fine-tuned on the real MNIST training set (55,000 images; 5,000 held out
for validation), exported, compiled by dlac into a batch-1 binary and evaluated on the
full 10,000-image test set three ways, side by side: the fake-quantized PyTorch model,
the binary's TVM reference graph (REF, on the CPU) and the binary in the ISA interpreter.
The post-training model is compiled too, for its zero-skip speedups.

    python tools/train_results.py --out train_results.jsonl          # every experiment
    python tools/train_results.py --only ternary-all --epochs 1
    python tools/train_results.py --out train_results.jsonl --markdown   # the table

Results are appended to ``--out`` one JSON line per experiment; a rerun skips the
experiments already there (delete a line to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WIDE = ("conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0")


def experiments():
    """name -> (description, QuantConfig kwargs, spec kwargs, TrainOptions kwargs, widen k)."""
    t1 = {"weights": "ternary", "cluster_size": 1}
    allq = {"keep_first": False, "keep_last": False}
    i8 = {"activations": "int8"}
    e = {}
    for n in (1, 4, 64):
        e[f"ternary-n{n}"] = (f"ternary N={n}, first/last fp32", {"weights": "ternary", "cluster_size": n}, i8, {}, 1)
        e[f"ternary-n{n}-all"] = (f"ternary N={n}, all layers", {"weights": "ternary", "cluster_size": n, **allq},
                                  i8, {}, 1)
    e["int4-n4"] = ("4-bit N=4, first/last fp32", {"weights": "int4", "cluster_size": 4}, i8, {}, 1)
    e["swis-s2"] = ("SWIS S=2, first/last fp32", {"weights": "swis", "swis_shifts": 2.0}, i8, {}, 1)
    e["ternary-n1-all-distill"] = ("ternary N=1, all layers, distilled (fine-tune scheme)", {**t1, **allq}, i8,
                                   {"distill": "finetune"}, 1)
    e["ternary-n1-all-scratch"] = ("ternary N=1, all layers, from scratch", {**t1, **allq}, i8,
                                   {"from_scratch": True, "lr": 1e-3}, 1)
    e["ternary-n1-all-scratch-distill"] = ("ternary N=1, all layers, from scratch, distilled", {**t1, **allq}, i8,
                                           {"from_scratch": True, "lr": 1e-3, "distill": "scratch"}, 1)
    e["ternary-n1-all-static"] = ("ternary N=1, all layers, static mask", {**t1, **allq},
                                  {**i8, "sparsity": "static"}, {}, 1)
    e["ternary-n1-all-fp32act"] = ("ternary N=1, all layers, fp32 activations", {**t1, **allq},
                                   {"activations": "fp32"}, {}, 1)
    e["wrpn-x1"] = ("WRPN x1: ternary, 4-bit activations, first/last fp32", t1, {**i8, "act_bits": 4}, {}, 1)
    e["wrpn-x2"] = ("WRPN x2: ternary, 4-bit activations, first/last fp32", t1, {**i8, "act_bits": 4}, {}, 2)
    return e


def _binary(qm, x1, calib):
    import torch

    from compiler import compile_model
    from compiler.build import build_program

    r = compile_model(qm.export(), (torch.from_numpy(x1),), config=qm.spec.quant)
    kw = {"activations": qm.spec.activations}
    if qm.spec.activations == "int8":
        kw.update(calib={"x": calib}, act_bits=qm.spec.act_bits)
    return build_program(r, **kw)


def _layers(report) -> list[dict]:
    return [{"name": l.name, "precision": l.precision, "cycles": l.cycles,
             "zero_skip_speedup": round(l.zero_skip_speedup, 3)}
            for l in report.layers if l.op in ("conv2d", "dense")]


def _run_binary(prog, x: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray, object, float, float]:
    """(interpreter logits, TVM REF logits, the first run's report, seconds each) over ``x``."""
    from compiler.reference import Reference
    from target_dlac.sim.host import HostRunner, reference_module
    from target_dlac.sim.interpreter import Interpreter

    interp = Interpreter(prog)
    host = HostRunner(prog) if prog.host is not None else None
    ref = Reference(reference_module(prog))
    outs, refs, report = [], [], None
    t0 = time.perf_counter()
    for i in range(len(x)):
        out, rep = interp.run({"x": x[i:i + 1]}, host)
        outs.append(out["output_0"][0])
        report = report or rep
        if progress and i % 2000 == 1999:
            print(f"    interpreter {i + 1}/{len(x)}", file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    for i in range(len(x)):
        refs.append(ref(x[i:i + 1])[0][0])
    t2 = time.perf_counter()
    return np.stack(outs), np.stack(refs), report, t1 - t0, t2 - t1


def run_one(name: str, split, epochs: int, limit_test: int | None, progress: bool) -> dict:
    import torch

    from compiler.config import QuantConfig
    from compiler.datasets import mnist_cnn
    from compiler.train.loop import TrainOptions, calibrate, evaluate, train
    from compiler.train.qat import QatSpec, prepare
    from compiler.train.widen import widen
    from target_dlac.sim.interpreter import Interpreter

    desc, qkw, skw, okw, k = experiments()[name]
    x1 = split.x_train[:1]
    model = mnist_cnn()
    if k != 1:
        model = widen(model, {layer: k for layer in WIDE}, (torch.from_numpy(x1),))
    qm = prepare(model, torch.from_numpy(x1), QatSpec(quant=QuantConfig(**qkw), **skw))
    opts = TrainOptions(epochs=epochs, **okw)
    calib = np.ascontiguousarray(split.x_train[:opts.calib_size])
    xt, yt = split.x_test[:limit_test], split.y_test[:limit_test]
    row = {"name": name, "description": desc, "epochs": epochs, "options": opts.to_dict(),
           "compile_args": qm.compile_args()}
    # post-training: calibrate, evaluate, compile for the speedups
    if not opts.from_scratch:
        calibrate(qm, calib)
        row["post_training"] = {"test_acc": evaluate(qm, xt, yt)["acc"],
                                "layers": qm.layers()}
        prog = _binary(qm, x1, calib)
        _, rep = Interpreter(prog).run({"x": x1})
        row["post_training"]["binary_layers"] = _layers(rep)
        row["post_training"]["cycles"] = int(rep.cycles["total"])

    def say(event, info):
        if progress and event == "epoch":
            print(f"  {name} epoch {info.get('epoch')}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, float)), file=sys.stderr, flush=True)

    teacher = mnist_cnn() if opts.distill else None
    t0 = time.perf_counter()
    res = train(qm, teacher, split, opts, progress=say)
    row["train_seconds"] = time.perf_counter() - t0
    row["history"] = res.history
    row["initial_val"] = res.initial
    qm.eval()
    with torch.no_grad():
        fq = torch.cat([qm(torch.from_numpy(xt[i:i + 1000])) for i in range(0, len(xt), 1000)]).numpy()
    prog = _binary(qm, x1, calib)
    out, ref, rep, s_interp, s_ref = _run_binary(prog, xt, progress)
    p_fq, p_out, p_ref = fq.argmax(1), out.argmax(1), ref.argmax(1)
    row["trained"] = {
        "test_acc_fake_quant": float((p_fq == yt).mean()),
        "test_acc_interpreter": float((p_out == yt).mean()),
        "test_acc_reference": float((p_ref == yt).mean()),
        "agree_interp_fake_quant": float((p_out == p_fq).mean()),
        "agree_interp_reference": float((p_out == p_ref).mean()),
        "outputs_equal_interp_fake_quant": bool(np.array_equal(out, fq)),
        "outputs_equal_interp_reference": bool(np.array_equal(out, ref)),
        "max_rel_err_interp_fake_quant": float(np.abs(out - fq).max() / max(np.abs(fq).max(), 1e-30)),
        "images": int(len(yt)), "interpreter_seconds": s_interp, "reference_seconds": s_ref,
        "layers": qm.layers(), "binary_layers": _layers(rep), "cycles": int(rep.cycles["total"]),
    }
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| experiment | post-training | fine-tuned: fake-quant / interpreter / TVM REF | "
             "interp = fake-quant | epochs, s/epoch | cycles post -> trained |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t = r["trained"]
        post = r.get("post_training")
        secs = [h["seconds"] for h in r["history"]] or [0]
        eq = "all outputs equal" if t["outputs_equal_interp_fake_quant"] else f"{100 * t['agree_interp_fake_quant']:.2f}% predictions"
        post_acc = "-" if post is None else f"{100 * post['test_acc']:.2f}%"
        post_cyc = "-" if post is None else f"{post['cycles']:,}"
        lines.append(
            f"| {r['description']} | {post_acc} | "
            f"{100 * t['test_acc_fake_quant']:.2f}% / {100 * t['test_acc_interpreter']:.2f}% / "
            f"{100 * t['test_acc_reference']:.2f}% | {eq} | {r['epochs']}, {np.mean(secs):.0f} | "
            f"{post_cyc} -> {t['cycles']:,} |")
    lines += ["", "Per-layer weight zero fraction and zero-skip speedup (interpreter), post-training -> trained:", "",
              "| experiment | " + " | ".join(l["name"] for l in rows[0]["trained"]["binary_layers"]) + " |",
              "|---|" + "---|" * len(rows[0]["trained"]["binary_layers"])]
    for r in rows:
        t, post = r["trained"], r.get("post_training")
        cells = []
        for i, (lz, lb) in enumerate(zip(t["layers"], t["binary_layers"])):
            if post:
                pz, pb = post["layers"][i], post["binary_layers"][i]
                cells.append(f"{lz['precision']}: {100 * pz['zero_fraction']:.0f}% -> {100 * lz['zero_fraction']:.0f}% "
                             f"zeros, {pb['zero_skip_speedup']:.2f}x -> {lb['zero_skip_speedup']:.2f}x")
            else:
                cells.append(f"{lz['precision']}: {100 * lz['zero_fraction']:.0f}% zeros, {lb['zero_skip_speedup']:.2f}x")
        lines.append(f"| {r['description']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="train_results.jsonl")
    ap.add_argument("--only", nargs="*", help=f"experiments (default all): {', '.join(experiments())}")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, help="training images (default: all 55,000)")
    ap.add_argument("--limit-test", type=int, help="test images (default: all 10,000)")
    ap.add_argument("--markdown", action="store_true", help="print the table of --out and exit")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    done = []
    if os.path.exists(a.out):
        with open(a.out) as f:
            done = [json.loads(line) for line in f if line.strip()]
    if a.markdown:
        print(markdown(done))
        return 0
    names = a.only or list(experiments())
    unknown = sorted(set(names) - set(experiments()))
    if unknown:
        ap.error(f"unknown experiment(s) {unknown}")
    from compiler.train.data import mnist_split

    split = mnist_split(limit=a.limit)
    have = {r["name"] for r in done}
    for name in names:
        if name in have:
            print(f"{name}: already in {a.out}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        row = run_one(name, split, a.epochs, a.limit_test, not a.quiet)
        row["seconds"] = time.perf_counter() - t0
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        t = row["trained"]
        print(f"{name}: post {row.get('post_training', {}).get('test_acc', float('nan')):.4f} -> fake-quant "
              f"{t['test_acc_fake_quant']:.4f} interpreter {t['test_acc_interpreter']:.4f} (equal outputs: "
              f"{t['outputs_equal_interp_fake_quant']}) in {row['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
