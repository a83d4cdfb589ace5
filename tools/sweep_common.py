"""What the model sweeps (``tools/light_zoo.py``, ``tools/torchvision_sweep.py``) share:
compile + build + run of a model through dlac's Python API, the error measure, the share
of MACs on dLAC (with the codegen's fallbacks counted as host work), table cells, and
writing a generated section into a markdown file between marker comments.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def rel_err(out, ref) -> float:
    """``max|out - ref| / max|ref|`` in float64; ``inf`` if the shapes differ or either side
    has a NaN / inf where the other does not (a NaN never passes)."""
    import numpy as np

    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not (np.isfinite(out).all() and np.isfinite(ref).all()):
        return float("inf")
    return float(np.abs(out - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-30))


def error_text(e: BaseException) -> str:
    """The first line of an exception, with its type, for a table cell."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def compile_and_run(model, example, feed: dict, quant: str) -> dict:
    """Compile ``model`` (an ONNX ModelProto with ``example=None``, or a torch module with
    its example inputs) with ``quant`` (``none``: full precision; ``ternary``: the default
    quantization), build it for the default machine and run it on ``feed`` (by input name)
    in the ISA interpreter (host ops on the TVM CPU build); a one-entry ``feed`` goes to the
    program's one input whatever its name.  The outputs, the placement
    (codegen fallbacks included), the dLAC MAC share and the times."""
    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.host import HostRunner
    from target_dlac.sim.interpreter import run

    config = QuantConfig.full_precision() if quant == "none" else QuantConfig()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compile_model(model, example, config=config) if example is not None \
            else compile_model(model, config=config)
        program = build_program(result, Machine(), reference=False)
        compile_s = time.perf_counter() - t0
        host = HostRunner(program) if program.host is not None else None
        names = [t.name for t in program.inputs]
        if len(names) == len(feed) == 1:               # one input: whatever the exporter named it
            feed = {names[0]: next(iter(feed.values()))}
        t0 = time.perf_counter()
        outs, report = run(program, {n: feed[n] for n in names}, host_runner=host)
    run_s = time.perf_counter() - t0
    pl = result.placement(program.meta.get("fallbacks", []))
    return {"outputs": [outs[f"output_{i}"] for i in range(len(outs))], "compile_s": compile_s,
            "run_s": run_s, "dlac_mac_share": mac_share(pl), "placement": pl,
            "host_ops": len(program.meta.get("host_ops", [])),
            "cycles": report.cycles.get("total") if isinstance(report.cycles, dict) else None}


def mac_share(pl: dict) -> float | None:
    """Share of all conv / matmul MACs placed on dLAC (``pl["macs"]`` counts the layers and
    the other conv / matmul ops); ``None`` when the placement is unknown or there are none."""
    if not pl.get("known", True):
        return None
    total = pl["macs"]["dlac"] + pl["macs"]["host"]
    return pl["macs"]["dlac"] / total if total else None


def fmt(v, kind: str) -> str:
    """A table cell: ``e`` (1.2e-06), ``%`` (a share), ``s`` (seconds); ``-`` for None."""
    if v is None:
        return "-"
    if kind == "e":
        return f"{v:.1e}"
    if kind == "%":
        return f"{100 * v:.1f}%"
    return f"{v:.1f}"


def write_section(path: str, begin: str, end: str, section: str) -> None:
    """Replace the text between ``begin`` and ``end`` (both included in ``section``) in
    ``path``, or append ``section`` if the markers are absent; written atomically."""
    from target_dlac.core.atomic import atomic_write_text

    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    atomic_write_text(path, text)
