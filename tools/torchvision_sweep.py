#!/usr/bin/env python
"""torchvision sweep: one model of every torchvision 0.28 classification family, built with
random weights (``weights=None``; batch-norm statistics randomized so the folds are not
identities), compiled by dlac and run on the ISA interpreter at a small input size.

Per model, each in its own process (a timeout or a crash is a table row, not the end of
the sweep):

* ``none``: ``--quant none`` (full-precision weights, fp32 activations); ``err`` is the max
  relative error ``max|out - ref| / max|ref|`` of the interpreter's output against PyTorch
  eager on a seeded random input.  Goal: <= 1e-5 (:data:`TOLERANCE`).
* ``ternary``: default quantization; the share of conv / matmul MACs and of layers placed
  on dLAC (codegen fallbacks counted as host work), host ops, compile and run times.

    python tools/torchvision_sweep.py [--models resnet18,vit_b_16] [--size 64]
                                      [--modes none,ternary] [--json FILE] [--resume]
                                      [--timeout S] [--markdown FILE] [--from-json FILE]

``--json FILE`` keeps the rows (``--resume`` skips models already in it); ``--markdown
FILE`` writes the table into FILE's torchvision section (``docs/conformance.md``).  Exit
status 1 if a model fails to compile or run, or its ``none`` error is over the tolerance.
Needs torchvision 0.28.0 (the Makefile installs it).  The whole sweep takes tens of minutes
on 2 cores (VGG's and ViT's large dense layers); ``tests/e2e/test_torchvision_sweep.py`` runs a
light version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tools.sweep_common import compile_and_run, error_text, fmt, rel_err, write_section  # noqa: E402

#: (family, constructor, input size or None for --size, constructor kwargs); CNN: whether the
#: 95%-of-MACs-on-dLAC goal applies
MODELS = (
    ("AlexNet", "alexnet", None, {}),
    ("VGG", "vgg11", None, {}),
    ("ResNet", "resnet18", None, {}),
    ("ResNeXt", "resnext50_32x4d", None, {}),
    ("Wide ResNet", "wide_resnet50_2", None, {}),
    ("SqueezeNet", "squeezenet1_1", None, {}),
    ("DenseNet", "densenet121", None, {}),
    ("Inception v3", "inception_v3", 96, {"aux_logits": False, "init_weights": True}),
    ("GoogLeNet", "googlenet", None, {"aux_logits": False, "init_weights": True}),
    ("ShuffleNetV2", "shufflenet_v2_x0_5", None, {}),
    ("MobileNetV2", "mobilenet_v2", None, {}),
    ("MobileNetV3", "mobilenet_v3_small", None, {}),
    ("MNASNet", "mnasnet0_5", None, {}),
    ("EfficientNet", "efficientnet_b0", None, {}),
    ("RegNet", "regnet_x_400mf", None, {}),
    ("ConvNeXt", "convnext_tiny", None, {}),
    ("ViT", "vit_b_16", None, {"image_size": "size"}),
    ("Swin", "swin_t", None, {}),
    ("MaxViT", "maxvit_t", 224, {"input_size": "size2"}),
)
CNN = {"alexnet", "vgg11", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1",
       "densenet121", "inception_v3", "googlenet", "shufflenet_v2_x0_5", "mobilenet_v2",
       "mobilenet_v3_small", "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf"}
NAMES = tuple(m[1] for m in MODELS)
MODES = ("none", "ternary")
TOLERANCE = 1e-5
CNN_SHARE_GOAL = 0.95
BEGIN = "<!-- torchvision:begin (tools/torchvision_sweep.py --markdown) -->"
END = "<!-- torchvision:end -->"


def entry(name: str) -> tuple:
    return next(m for m in MODELS if m[1] == name)


def build(name: str, size: int, seed: int = 0):
    """The torchvision model ``name`` (random weights, randomized BN) and its input."""
    import torch

    from compiler.models import randomize_bn
    from tools.zoo import import_torchvision

    tv = import_torchvision()
    _, ctor, fixed, kwargs = entry(name)
    size = fixed or size
    kw = {k: (size if v == "size" else (size, size) if v == "size2" else v) for k, v in kwargs.items()}
    torch.manual_seed(seed)
    model = randomize_bn(getattr(tv.models, ctor)(weights=None, **kw)).eval()
    with torch.no_grad():              # zero-initialized layers (ViT's head) would make every
        for p in model.parameters():   # output 0 and every comparison trivially exact
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return model, x, size


def run_one(name: str, size: int, modes=MODES, seed: int = 0) -> dict:
    """One row: every mode of ``name``; a failure is recorded, never raised."""
    import torch

    from target_dlac.core.errors import DlacError

    model, x, size = build(name, size, seed)
    row = {"model": name, "family": entry(name)[0], "size": size}
    with torch.no_grad():
        ref = model(x).numpy()
    feed = {"x": x.numpy()}
    for mode in modes:
        try:
            r = compile_and_run(model, (x,), feed, mode)
            pl = r["placement"]
            cell = {"ok": True, **{k: r[k] for k in ("compile_s", "run_s", "dlac_mac_share", "host_ops",
                                                     "cycles")},
                    "layers": pl["layer_counts"]}
            if mode == "none":
                cell["err"] = rel_err(r["outputs"][0], ref)
            row[mode] = cell
        except Exception as e:  # noqa: BLE001 - recorded in the table
            row[mode] = {"ok": False, "error": error_text(e), "dlac_error": isinstance(e, DlacError)}
    return row


def row_ok(row: dict) -> bool:
    n, t = row.get("none"), row.get("ternary")
    if n is not None and not (n.get("ok") and n["err"] <= TOLERANCE):
        return False
    return t is None or bool(t.get("ok"))


def share_ok(row: dict) -> bool | None:
    """The CNN goal (at least 95% of MACs on dLAC in ternary mode); None if it does not apply."""
    t = row.get("ternary") or {}
    if row["model"] not in CNN or not t.get("ok") or t.get("dlac_mac_share") is None:
        return None
    return t["dlac_mac_share"] >= CNN_SHARE_GOAL


HEADER = ["family", "model", "input", "none: runs", "err vs PyTorch", "compile s", "run s",
          "ternary: runs", "MACs on dLAC", "layers on dLAC", "host ops", "compile s", "run s"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = [r.get("family", ""), r["model"], f"{r.get('size', '-')}"]
        n, t = r.get("none"), r.get("ternary")
        if n is None:
            cells += ["skipped", "-", "-", "-"]
        elif not n.get("ok"):
            cells += ["no: " + _short(n["error"]), "-", "-", "-"]
        else:
            cells += ["yes", fmt(n["err"], "e"), fmt(n["compile_s"], "s"), fmt(n["run_s"], "s")]
        if t is None:
            cells += ["skipped"] + ["-"] * 5
        elif not t.get("ok"):
            cells += ["no: " + _short(t["error"])] + ["-"] * 5
        else:
            lc = t["layers"]
            cells += ["yes", fmt(t["dlac_mac_share"], "%"), f"{lc['dlac']}/{lc['dlac'] + lc['host']}",
                      str(t["host_ops"]), fmt(t["compile_s"], "s"), fmt(t["run_s"], "s")]
        out.append(cells)
    return out


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def summary(rows: list[dict]) -> str:
    ok = sum(row_ok(r) for r in rows)
    cnn = [r for r in rows if share_ok(r) is not None]
    good = sum(bool(share_ok(r)) for r in cnn)
    return (f"{ok} of {len(rows)} models compile and run in every mode with --quant none within "
            f"{TOLERANCE:g} of PyTorch; {good} of {len(cnn)} CNNs have at least "
            f"{100 * CNN_SHARE_GOAL:.0f}% of their MACs on dLAC (ternary)")


def format_table(rows: list[dict]) -> str:
    body = table_rows(rows)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines + [summary(rows)])


def to_markdown(rows: list[dict], command: str) -> str:
    import torch

    lines = [BEGIN, "## torchvision classification models", "",
             f"Generated by `tools/torchvision_sweep.py` (torch {torch.__version__}); regenerate with:",
             "", "```", command, "```", "",
             "One model per torchvision family, random weights (batch-norm statistics randomized, "
             "zero-initialized weights such as ViT's head drawn at random), a seeded random input. `err vs PyTorch`: max relative error of the interpreter's "
             "output against PyTorch eager with `--quant none`. `MACs on dLAC`: share of conv / "
             "matmul MACs placed on dLAC with default ternary quantization (the rest runs on the "
             "host through the TVM CPU build); `layers on dLAC`: conv / dense layers. Times in "
             "seconds on 2 cores (compile includes codegen). `tests/e2e/test_torchvision_sweep.py` "
             "runs a light version.", "", f"**{summary(rows)}**.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines + ["", END])


def _child(args) -> int:
    row = run_one(args.child, args.size, [m for m in args.modes.split(",") if m])
    print("ROW " + json.dumps(row), flush=True)
    return 0


def run_isolated(name: str, size: int, modes: str, timeout: float) -> dict:
    """:func:`run_one` in a fresh process; a timeout or a crash becomes a failed row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--size", str(size), "--modes", modes]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        why = f"timeout: over {timeout:g} s"
        return {"model": name, "family": entry(name)[0], "size": entry(name)[2] or size,
                **{m: {"ok": False, "error": why} for m in modes.split(",")}}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1][:300]
    return {"model": name, "family": entry(name)[0], "size": entry(name)[2] or size,
            **{m: {"ok": False, "error": f"crashed ({time.perf_counter() - t0:.0f} s): {tail}"}
               for m in modes.split(",")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(NAMES), help="comma-separated (default: every family)")
    ap.add_argument("--size", type=int, default=64, help="input height and width (default 64; "
                    "Inception v3 takes 96, MaxViT 224)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per model (default 1800)")
    ap.add_argument("--json", metavar="FILE", help="write the rows (each as it completes)")
    ap.add_argument("--resume", action="store_true", help="skip the models --json FILE already has")
    ap.add_argument("--markdown", metavar="FILE", help="write the torchvision section of FILE")
    ap.add_argument("--from-json", metavar="FILE", help="no runs: print (and --markdown) rows of a --json")
    ap.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; have {', '.join(NAMES)}")
    from target_dlac.core.atomic import atomic_write_text

    rows: list[dict] = []
    src = args.from_json or (args.json if args.resume and args.json and os.path.exists(args.json) else None)
    if src:
        with open(src, encoding="utf-8") as f:
            rows = [r for r in json.load(f) if r["model"] in names]
    done = {r["model"] for r in rows}
    for name in [] if args.from_json else [n for n in names if n not in done]:
        t0 = time.perf_counter()
        rows.append(run_isolated(name, args.size, args.modes, args.timeout))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    rows.sort(key=lambda r: NAMES.index(r["model"]))
    print(format_table(rows))
    if args.markdown:
        cmd = ["python tools/torchvision_sweep.py", "--markdown", args.markdown]
        cmd += [f"--size {args.size}"] if args.size != 64 else []
        cmd += [f"--models {args.models}"] if args.models != ",".join(NAMES) else []
        write_section(args.markdown, BEGIN, END, to_markdown(rows, " ".join(cmd)))
    return 0 if all(row_ok(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
