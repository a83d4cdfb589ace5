"""ONNX node-conformance runner for dlac.

Generates ONNX's own node test cases offline
(``onnx.backend.test.case.node.collect_testcases()``), keeps the single-node cases of
the ops dlac claims to cover (:data:`OPS`), compiles each through dlac with
full-precision weights and fp32 activations, runs the ISA interpreter and compares
every output with the expected one (same shape, ``numpy.allclose(rtol=1e-3,
atol=1e-7)``).

Each case is classified as

* ``passed``: every output matches;
* ``failed``: ran to the end but some output mismatched: a WRONG ANSWER;
* ``unsupported``: a :class:`target_dlac.core.errors.DlacError` was raised while compiling,
  building or running (dlac refused the model cleanly);
* ``crashed``: any other exception escaped dlac.

Input binding: ONNX node tests feed every input (weights included) at run time.
Every case runs in two modes (:data:`MODES`):

* ``weights``: the operator's parameters (:data:`PARAM_INPUTS`: Conv W/B, Gemm B/C,
  MatMul B, BatchNormalization scale/B/mean/var, Clip min/max) are bound as
  initializers, as in an exported model: this is what exercises dlac's accelerator
  lowering (a Conv with a runtime weight tensor falls back to a TVM host op);
* ``runtime``: every input is fed at run time, as the ONNX test defines it.

In both, the ``shape`` input of ``Reshape`` (:data:`SHAPE_INPUTS`) is bound as an
initializer: dlac compiles for static shapes and a shape tensor is compile-time
information, not data.  Nothing else is special-cased: integer / bool data inputs go
to dlac as they are.

Usage (from the repository root)::

    python tools/conformance.py [--json FILE] [--markdown FILE] [--ops Conv,Relu] [-k SUBSTR]

The per-op table goes to stdout, progress lines to stderr.  The exit status is 1 if
any case gave a wrong answer, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

#: the ONNX op types covered (a case is mapped by the op_type of the model's single node,
#: not by its name, so that e.g. ConvTranspose's ``test_convtranspose_*`` is no Conv test)
OPS = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
       "Add", "Mul", "Concat", "BatchNormalization", "Flatten", "Reshape", "Transpose", "Softmax")

#: node inputs (by position) bound as initializers in every mode: shape tensors, which
#: are compile-time information for a static-shape compiler
SHAPE_INPUTS = {"Reshape": {1}}

#: node inputs (by position) that are parameters in a deployed model (weights, biases,
#: batch-norm statistics, clip bounds): bound as initializers in ``weights`` mode, so
#: that dlac sees them as a real exported model gives them and lowers the layer to the
#: accelerator (with a runtime weight tensor a Conv / Gemm / MatMul falls back to the
#: host and dlac's own lowering is not exercised at all)
PARAM_INPUTS = {
    "Conv": {1, 2},
    "Gemm": {1, 2},
    "MatMul": {1},
    "BatchNormalization": {1, 2, 3, 4},
    "Clip": {1, 2},
}

#: ``weights``: parameters bound as initializers (how exported models look);
#: ``runtime``: every input except shape tensors fed at run time (ONNX's literal test)
MODES = ("weights", "runtime")

RTOL = 1e-3
ATOL = 1e-7
MAX_IR_VERSION = 10
STATUSES = ("passed", "failed", "unsupported", "crashed")


@dataclass
class CaseResult:
    name: str
    op: str
    mode: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    placement: str = ""     # "accel:<layer ops>" / "host:<host ops>" of the compiled program
    details: list = field(default_factory=list)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect_cases(ops=None, select: str | None = None) -> list[tuple[str, object]]:
    """``[(op_type, TestCase)]`` of ONNX's node tests for ``ops`` (default :data:`OPS`).

    Calls ``collect_testcases()`` (slow: a few seconds) once per call; keeps cases
    whose model has exactly one node with a covered op type; drops ``_expanded``
    variants (function-body expansions into other ops).
    """
    from onnx.backend.test.case.node import collect_testcases

    ops = set(ops or OPS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the generators overflow casts on purpose
        all_cases = collect_testcases()
    out = []
    for case in all_cases:
        if "_expanded" in case.name:
            continue
        nodes = list(case.model.graph.node)
        if len(nodes) != 1 or nodes[0].op_type not in ops or nodes[0].domain not in ("", "ai.onnx"):
            continue
        if select and select not in case.name:
            continue
        out.append((nodes[0].op_type, case))
    out.sort(key=lambda oc: (oc[0], oc[1].name))
    return out


def _prepare_model(case, inputs: list, mode: str = "weights"):
    """A copy of the case's model ready for dlac, and the runtime feed ``{name: array}``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)   # what the installed TVM reads
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    runtime = [i.name for i in graph.input if i.name not in inits]
    if len(runtime) != len(inputs):
        raise _HarnessError(f"test data has {len(inputs)} inputs, the graph declares {len(runtime)}")
    feed = dict(zip(runtime, inputs))

    node = graph.node[0]
    bind = set(SHAPE_INPUTS.get(node.op_type, ()))
    if mode == "weights":
        bind |= PARAM_INPUTS.get(node.op_type, set())
    for pos in sorted(bind):
        if pos < len(node.input) and node.input[pos] in feed:
            name = node.input[pos]
            graph.initializer.append(numpy_helper.from_array(feed.pop(name), name))
            kept = [i for i in graph.input if i.name != name]
            del graph.input[:]
            graph.input.extend(kept)
    return model, feed


class _HarnessError(Exception):
    """A problem with the test case itself (not dlac's fault)."""


def run_case(op: str, case, mode: str = "weights") -> CaseResult:
    """Compile, build and run one ONNX node test case through dlac; classify it."""
    import numpy as np

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from target_dlac.core.errors import DlacError
    from target_dlac.sim.host import HostRunner
    from target_dlac.sim.interpreter import run
    from target_dlac.isa.machine import Machine

    t0 = time.perf_counter()
    res = CaseResult(case.name, op, mode, "passed")
    try:
        # TVM's importer prints its own diagnostics to stdout; keep stdout for the table
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, (inputs, expected) in enumerate(case.data_sets):
                # compiled per data set: bound parameters may differ between data sets
                model, feed = _prepare_model(case, list(inputs), mode)
                result = compile_model(model, config=QuantConfig.full_precision())
                program = build_program(result, Machine(), reference=False)
                res.placement = _placement(program)
                host = HostRunner(program) if program.host is not None else None
                wanted = {t.name for t in program.inputs}
                outs, _report = run(program, {n: a for n, a in feed.items() if n in wanted},
                                    host_runner=host)
                if len(outs) != len(expected):
                    res.status = "failed"
                    res.details.append(f"data set {k}: {len(outs)} outputs, expected {len(expected)}")
                    continue
                for i, want in enumerate(expected):
                    got = outs.get(f"output_{i}")
                    want = np.asarray(want)
                    if got is None:
                        res.status = "failed"
                        res.details.append(f"data set {k}: output_{i} missing")
                        continue
                    got = np.asarray(got)
                    if got.shape != want.shape:
                        res.status = "failed"
                        res.details.append(f"data set {k} output {i}: shape {got.shape}, "
                                           f"expected {want.shape}")
                        continue
                    g64, w64 = got.astype(np.float64), want.astype(np.float64)
                    if not np.allclose(g64, w64, rtol=RTOL, atol=ATOL):
                        err = np.abs(g64 - w64)
                        bad = int(np.count_nonzero(~np.isclose(g64, w64, rtol=RTOL, atol=ATOL)))
                        res.status = "failed"
                        res.details.append(
                            f"data set {k} output {i}: {bad}/{want.size} elements off, "
                            f"max abs err {np.nanmax(err) if err.size else 0:.3g} "
                            f"(got dtype {got.dtype}, expected {want.dtype})")
        if res.status == "failed":
            res.reason = "; ".join(res.details[:3])
    except DlacError as e:
        res.status = "unsupported"
        res.reason = f"{type(e).__name__}: {_first_line(e)}"
    except _HarnessError as e:
        res.status = "crashed"
        res.reason = f"harness: {_first_line(e)}"
    except Exception as e:  # noqa: BLE001 - every other exception is a dlac crash
        res.status = "crashed"
        res.reason = f"{type(e).__name__}: {_first_line(e)}"
        tb = traceback.extract_tb(e.__traceback__)
        if tb:
            f = tb[-1]
            res.details.append(f"at {os.path.relpath(f.filename, _ROOT)}:{f.lineno} in {f.name}")
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _placement(program) -> str:
    layers = [l["op"] for l in program.meta.get("layers", []) if l["op"] != "host"]
    hosts = [h["op"] for h in program.meta.get("host_ops", [])]
    parts = ([f"accel:{','.join(layers)}"] if layers else []) + ([f"host:{','.join(hosts)}"] if hosts else [])
    return " ".join(parts)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def run_conformance(ops=None, select: str | None = None, progress: bool = True,
                    modes=MODES) -> list[CaseResult]:
    """Run every selected case in every mode; results in (mode, op, name) order."""
    cases = collect_cases(ops, select)
    results = []
    total = len(cases) * len(modes)
    for mode in modes:
        for op, case in cases:
            r = run_case(op, case, mode)
            results.append(r)
            if progress:
                _log(f"[{len(results)}/{total}] {mode:<7} {r.status:<11} {case.name} ({r.seconds:.2f}s)"
                     + (f" [{r.placement}]" if r.placement else "")
                     + (f": {r.reason}" if r.reason else ""))
    return results


def summarize(results: list[CaseResult], mode: str = "weights") -> dict[str, dict[str, int]]:
    """``{op: {status: count}}`` of one mode for every covered op (zeros included), plus ``TOTAL``."""
    table = {op: dict.fromkeys(STATUSES, 0) for op in OPS}
    for r in results:
        if r.mode == mode:
            table.setdefault(r.op, dict.fromkeys(STATUSES, 0))[r.status] += 1
    table["TOTAL"] = {s: sum(table[op][s] for op in table) for s in STATUSES}
    return table


def format_table(results: list[CaseResult], mode: str = "weights", markdown: bool = False) -> str:
    table = summarize(results, mode)
    head = ["op", *STATUSES, "total"]
    rows = [[op, *(str(c[s]) for s in STATUSES), str(sum(c.values()))] for op, c in table.items()]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            if row[0] == "TOTAL":
                row = [f"**{x}**" for x in row]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    def fmt(r):
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    sep = "-" * len(fmt(head))
    return "\n".join([f"mode: {mode}", fmt(head), sep, *(fmt(r) for r in rows[:-1]), sep, fmt(rows[-1])])


_MODE_TEXT = {
    "weights": "parameters (Conv W/B, Gemm B/C, MatMul B, BatchNormalization scale/B/mean/var, "
               "Clip min/max) and Reshape's `shape` bound as initializers, as in an exported "
               "model; data inputs fed at run time. This is the mode that exercises dlac's "
               "accelerator lowering.",
    "runtime": "every graph input fed at run time, as ONNX's test defines it (only Reshape's "
               "`shape` is bound as an initializer: dlac compiles for static shapes). Layers "
               "whose weights are runtime tensors fall back to host ops (TVM).",
}


def _kept_light_zoo(path: str) -> str:
    """The light-zoo section of ``path`` (written by tools/light_zoo.py), kept when the
    node-test tables are rewritten."""
    begin, end = "<!-- light-zoo:begin", "<!-- light-zoo:end -->"
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    i, j = text.find(begin), text.find(end)
    return "\n" + text[i:j + len(end)] + "\n" if 0 <= i < j else ""


def to_markdown(results: list[CaseResult]) -> str:
    import onnx

    modes = [m for m in MODES if any(r.mode == m for r in results)]
    lines = [
        "# ONNX node conformance",
        "",
        "Generated by `tools/conformance.py`; do not edit by hand. Regenerate with:",
        "",
        "```",
        "python tools/conformance.py --markdown docs/conformance.md",
        "```",
        "",
        (f"Cases: ONNX {onnx.__version__}'s node tests "
         "(`onnx.backend.test.case.node.collect_testcases()`, generated offline): the "
         "single-node cases of the ops below, `_expanded` variants excluded. Each is "
         "compiled by dlac with full-precision weights and fp32 activations "
         "(`QuantConfig.full_precision()`), built for the default machine and run on the "
         "ISA interpreter (host ops through TVM), in two modes (below)."),
        "",
        (f"Tolerance: an output passes when its shape matches and "
         f"`numpy.allclose(got, expected, rtol={RTOL:g}, atol={ATOL:g})`."),
        "",
        ("Statuses: **passed** (all outputs match), **failed** (ran, wrong answer), "
         "**unsupported** (dlac raised a `DlacError`), **crashed** (any other exception). "
         "The test `tests/e2e/test_conformance.py` keeps the pass counts from dropping and "
         "allows no new wrong answer or crash."),
        "",
    ]
    for mode in modes:
        mine = [r for r in results if r.mode == mode]
        lines += [f"## Mode `{mode}`", "", _MODE_TEXT[mode], "", format_table(mine, mode, markdown=True), ""]
        for status, title in (("failed", "Wrong answers (failed)"), ("crashed", "Crashes"),
                              ("unsupported", "Unsupported")):
            bad = [r for r in mine if r.status == status]
            lines += [f"### {title}: {len(bad)}", ""]
            if not bad:
                lines += ["None.", ""]
                continue
            for r in bad:
                reason = r.reason.replace("|", "\\|")
                lines.append(f"- `{r.name}` ({r.op}): {reason}")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="write the per-case results as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the table and failure list (docs/conformance.md)")
    ap.add_argument("--ops", help="comma-separated op types (default: all covered ops)")
    ap.add_argument("-k", dest="select", help="only cases whose name contains this")
    ap.add_argument("--mode", choices=MODES, action="append",
                    help="binding mode(s) to run (repeatable; default: all)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    args = ap.parse_args(argv)

    from target_dlac.core.atomic import atomic_write_text

    ops = None
    if args.ops:
        ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        from compiler.oplist import ONNX_OPS

        unknown = sorted(set(ops) - ONNX_OPS)      # any op the ONNX frontend accepts
        if unknown:
            ap.error(f"ops {unknown} are not accepted by dlac's ONNX frontend (compiler/oplist.py)")
    t0 = time.perf_counter()
    modes = tuple(args.mode) if args.mode else MODES
    results = run_conformance(ops, args.select, progress=not args.quiet, modes=modes)
    secs = time.perf_counter() - t0
    for mode in modes:
        print(format_table(results, mode))
        print()
    print(f"{len(results)} case runs in {secs:.1f} s")
    if args.json:
        payload = {"rtol": RTOL, "atol": ATOL, "seconds": round(secs, 1),
                   "summary": {m: summarize(results, m) for m in modes},
                   "cases": [asdict(r) for r in results]}
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, to_markdown(results) + _kept_light_zoo(args.markdown))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
