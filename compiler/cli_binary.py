"""The ``dlac`` commands that take a BINARY: ``run`` (the ISA interpreter; ``--check``
against the TVM CPU reference, in quantization steps for the activation-quantized outputs
of pre-quantized models) and ``inspect`` (summary and disassembly).  Without ``--check``,
on a binary with no host ops, neither imports TVM nor torch.  Registered on the group in
:mod:`compiler.cli`."""

from __future__ import annotations

import click

from compiler.arrays_io import _load_inputs, check_npz_names, npz_bytes
from compiler.cli_args import _summary_lines, check_outputs, compare_output, printable, strict_json
from compiler.cli_common import _escaped_report, _fail, _say
from compiler.tables import format_option, inspect_insn_table, inspect_layer_table, run_table, text_to_stderr
from target_dlac.core.errors import ConfigError, DlacError


@click.command("run")
@click.argument("binary")
@click.option("--input", "input_path", required=True, metavar="x.npy|x.npz",
              help="Input array (.npy for a single input, .npz keyed by input name); N inputs stacked "
                   "on a new leading axis run one after another, and the report gives the spread of "
                   "their cycles (zero activations make them differ).")
@click.option("--check", is_flag=True,
              help="Also run the TVM CPU reference of the same quantized graph; print max errors.")
@click.option("--tolerance", type=float, default=None,
              help="--check fails when the max relative error exceeds this (default 1e-5; 1e-2 "
                   "for fp16 binaries, whose sums may round to a neighbouring float16; int8 "
                   "binaries must match exactly; activation-quantized outputs of pre-quantized "
                   "models are compared in quantization steps, see --max-steps).")
@click.option("--max-steps", type=int, default=1, show_default=True,
              help="Pre-quantized binaries with activation quantizers: --check fails when an "
                   "activation-quantized output is off by more than this many quantization steps "
                   "(or its top-1 class differs).")
@click.option("--report-json", metavar="FILE", help="Write cycles, per-layer results and the check as JSON.")
@click.option("--output", "output_path", metavar="y.npz",
              help="Write the outputs (output_0, ...) as NAME.npy members; a binary whose output "
                   "names cannot be member names (path separators, '..', control characters) is "
                   "refused.")
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_cmd(binary, input_path, check, tolerance, max_steps, report_json, output_path, fmt, debug):
    """Execute BINARY in the dLAC ISA interpreter.

    ``--check`` cannot pass on wrong answers: see :func:`compiler.cli_args.compare_output`
    (a NaN or Inf on one side that the other side does not have at the same position
    fails the check; the errors are measured where both sides are finite); the pass rule
    of each kind of binary (exact, float, quantization steps) is :func:`_check`'s.  ``--output``
    writes one ``NAME.npy`` member per output; names that cannot be member names
    (:func:`compiler.arrays_io.npz_name_problem`) are refused before the run, never
    renamed.  ``--format csv|json`` prints the per-layer table's rows (the first input's, as
    the text table; :func:`compiler.tables.run_table`) instead of the text table, and the
    other lines on stderr."""
    try:
        with text_to_stderr(fmt):
            import math
            import time

            check_outputs([("--output", output_path), ("--report-json", report_json)],
                          [("BINARY", binary), ("--input", input_path)])
            if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
                raise ConfigError(f"--tolerance {tolerance}: expected a finite number >= 0")
            if max_steps < 0:
                raise ConfigError(f"--max-steps {max_steps}: expected an integer >= 0")

            import numpy as np

            from target_dlac.binary.container import read_program
            from target_dlac.sim.interpreter import Interpreter
            from target_dlac.sim.report import input_spread

            from target_dlac.core.atomic import atomic_write_bytes, atomic_write_text

            prog = read_program(binary)
            if output_path:
                from collections import Counter

                names = [t.name for t in prog.outputs]
                check_npz_names(names)
                dup = sorted(n for n, k in Counter(names).items() if k > 1)
                if dup:
                    raise ConfigError(f"--output: the binary's tensor table names two outputs "
                                      f"{printable(repr(dup[0]))[:200]}; an .npz cannot hold both")
            samples = _load_inputs(input_path, prog, stacks=True)
            host = None
            if prog.host is not None:
                from target_dlac.sim.host import HostRunner
                host = HostRunner(prog)
            interp = Interpreter(prog)
            t0 = time.perf_counter()
            runs = []
            for inputs in samples:
                runs.append(interp.run(inputs, host_runner=host))
            wall = time.perf_counter() - t0
            outs, report = runs[0]
            if fmt == "table":
                click.echo(_escaped_report(report).table())
            click.echo(f"interpreter: {len(prog.insns):,} instructions in {wall / len(runs):.3f} s per input "
                       f"({sum(r.cycles['total'] for _, r in runs) / max(wall, 1e-9):,.0f} simulated cycles per second)")
            rep = report.to_dict()
            if len(runs) > 1:
                rep["inputs"] = input_spread([r for _, r in runs])
                s = rep["inputs"]["cycles"]
                click.echo(f"{len(runs)} inputs (the table is the first's): cycles min {s['min']:,} / median "
                           f"{s['median']:,.0f} / max {s['max']:,}; dense-equivalent TFLOP/s median "
                           f"{rep['inputs']['tflops_equiv']['median']:.3f}")
                outs = {name: np.stack([o[name] for o, _ in runs]) for name in outs}
            for name, value in outs.items():
                _say(f"{name}: shape {tuple(value.shape)} {value.dtype}")
            problem = None
            if check:
                from target_dlac.sim.host import reference_runner

                ref = reference_runner(prog)            # built once for every input of a stack
                checks = [_check(prog, inputs, o, tolerance, max_steps, ref(inputs))
                          for inputs, (o, _) in zip(samples, runs)]
                bad = [(i, p) for i, (p, _) in enumerate(checks) if p]
                problem = None if not bad else (bad[0][1] if len(runs) == 1 else f"input {bad[0][0]}: {bad[0][1]}")
                rep["check"] = checks[0][1] if len(runs) == 1 else [c for _, c in checks]
            if output_path:
                atomic_write_bytes(output_path, npz_bytes(outs))
            if report_json:
                atomic_write_text(report_json, strict_json(rep, indent=2))
        run_table(report).emit(fmt)
        if problem:
            raise CheckFailed(problem)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


class CheckFailed(DlacError):
    """``run --check`` found the interpreter off the reference."""


#: ops an output may pass through after its dequantize and still be on its quantization grid
_GRID_VIEWS = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims",
               "relax.permute_dims")


def quantized_outputs(prog) -> tuple[bool, list]:
    """From the binary's REF graph: whether it quantizes activations (a ``quantize`` of a
    non-constant tensor: a pre-quantized model's QDQ / QCDQ activation quantizers), and for
    each output of ``main`` its quantization step (the scale, broadcastable against the
    output) if it is an activation-quantized value, ``dequantize(quantize(v), scale, zp)``
    with constant ``scale`` and ``zp`` (through reshape-like views), else None."""
    import numpy as np
    from tvm import relax

    from target_dlac.core.ir import attrs_to_dict, const_np, is_const, iter_bindings, op_name, shape_of
    from target_dlac.sim.host import reference_module

    main = reference_module(prog)["main"]
    values = {b.var: b.value for b in iter_bindings(main)}
    act_q = any(op_name(v) == "relax.quantize" and not is_const(v.args[0]) for v in values.values())
    body = main.body.body if isinstance(main.body, relax.SeqExpr) else main.body
    body = values[body] if isinstance(values.get(body), relax.Tuple) else body
    fields = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    steps = []
    for e in fields:
        viewed = False
        while op_name(values.get(e)) in _GRID_VIEWS:
            e, viewed = values[e].args[0], True
        dq, step = values.get(e), None
        if op_name(dq) == "relax.dequantize" and is_const(dq.args[1]) and is_const(dq.args[2]) \
                and op_name(values.get(dq.args[0])) == "relax.quantize":
            scale = const_np(dq.args[1]).astype(np.float64)
            if scale.size == 1:
                step = scale.reshape(())
            elif not viewed and shape_of(dq) is not None:     # per axis (a view moves the axis)
                rank = len(shape_of(dq))
                shape = [1] * rank
                shape[int(attrs_to_dict(dq.attrs)["axis"]) % rank] = -1
                step = scale.reshape(shape)
        steps.append(step)
    return act_q, steps


def _check(prog, inputs, outs, tolerance, max_steps, refs=None) -> tuple[str | None, dict]:
    """``run --check``: ``(problem or None, the report's "check" entry)``.  Pass rules:

    * int8 binaries (all-integer pipeline): every output equal to its reference;
    * a pre-quantized graph with activation quantizers (:func:`quantized_outputs`):
      each activation-quantized output passes when no value is off by more than
      ``max_steps`` quantization steps (default 1: the interpreter's float32 sums are
      ordered differently from TVM's, and a 1-ulp difference at a rounding boundary moves
      a quantized value by one step, which later layers may carry) and its top-1 class
      agrees on every row (or is a near tie: the output's top class within one step of the
      top value in the reference); an output
      that is not activation-quantized uses the float rule;
    * otherwise (float and fp16 binaries): max relative error <= ``tolerance`` (default
      1e-5; 1e-2 for fp16).
    In every mode a NaN / Inf not matched on the other side, or a shape mismatch, fails.
    ``refs``: the reference outputs if already computed (else the REF graph is run)."""
    from target_dlac.sim.host import reference_outputs

    refs = list(reference_outputs(prog, inputs) if refs is None else refs)
    problem = None
    if len(refs) != len(outs):
        problem = (f"the binary has {len(outs)} output(s), its reference graph "
                   f"{len(refs)}: nothing to compare position by position")
    exact = prog.meta.get("activations") == "int8"
    act_q, steps = (False, [None] * len(refs)) if exact else quantized_outputs(prog)
    if tolerance is None:
        tolerance = 1e-2 if prog.meta.get("activations") == "fp16" else 1e-5
    worst_abs = worst_rel = worst_rel_float = 0.0
    per_output, n_bad, first_bad, step_fail = [], 0, None, None
    for (name, value), ref, step in zip(outs.items(), refs, steps):
        c = compare_output(value, ref, step if act_q else None)
        if "shape_mismatch" in c:
            got, want = c["shape_mismatch"]
            problem = problem or f"{name} has shape {got}, its reference {want}"
            _say(f"check {name} vs TVM CPU reference: shape {got} vs {want}")
            per_output.append({"name": name, "shape_mismatch": [list(got), list(want)]})
            continue
        worst_abs, worst_rel = max(worst_abs, c["max_abs_err"]), max(worst_rel, c["max_rel_err"])
        line = (f"check {name} vs TVM CPU reference: max abs err {c['max_abs_err']:.3g}, "
                f"max rel err {c['max_rel_err']:.3g}")
        if c["nonfinite_mismatches"]:
            n_bad += c["nonfinite_mismatches"]
            o, r = c["first_values"]
            at = f"{name} index {tuple(c['first_mismatch'])}: output {o:.6g}, reference {r:.6g}"
            first_bad = first_bad or at
            line += (f"; {c['nonfinite_mismatches']:,} non-finite value(s) not matched by "
                     f"the other side (first at {at})")
        entry = {"name": name, "max_abs_err": c["max_abs_err"], "max_rel_err": c["max_rel_err"],
                 "nonfinite_mismatches": c["nonfinite_mismatches"], "first_mismatch": c["first_mismatch"]}
        if "steps" in c:
            st, n = c["steps"], max(sum(c["steps"].values()), 1)
            top = c.get("top1")
            line += (f"; activation-quantized (step {float(step.max()):.4g}): {st['exact'] / n:.1%} "
                     f"exact, {st['one_step'] / n:.1%} off by one step, {st['more'] / n:.1%} by more "
                     f"(max {c['max_steps']})")
            if top:
                line += f"; top-1 agrees on {top['agree']} of {top['rows']} row(s)"
                line += f" ({top['near_tie']} near tie(s))" if top["near_tie"] else ""
            bad_top = top is not None and top["agree"] + top["near_tie"] < top["rows"]
            if (c["max_steps"] > max_steps or bad_top) and step_fail is None:
                near = c["max_steps"] == max_steps + 1 and not bad_top
                count = {0: st["one_step"] + st["more"], 1: st["more"]}.get(max_steps)
                step_fail = (f"{name}: {'some' if count is None else f'{count:,}'} value(s) off by more "
                             f"than {max_steps} quantization step(s) (max {c['max_steps']})"
                             + ("; the top-1 class agrees: rounding flips that deep graphs carry can do "
                                "this (see --max-steps)" if near else "")
                             if c["max_steps"] > max_steps else
                             f"{name}: the top-1 class differs from the reference's on "
                             f"{top['rows'] - top['agree'] - top['near_tie']} row(s)")
            entry.update(rule="steps", step=float(step.max()), steps=st, max_steps=c["max_steps"],
                         fraction_one_step=st["one_step"] / n, fraction_more=st["more"] / n, top1=top)
        else:
            worst_rel_float = max(worst_rel_float, c["max_rel_err"])
            entry["rule"] = "exact" if exact else "float"
        _say(line)
        per_output.append(entry)
    if n_bad and not problem:
        problem = (f"{n_bad:,} NaN/Inf value(s) in the outputs or the reference that the other "
                   f"side does not have at the same position (first at {first_bad})")
    if exact:       # the all-integer pipeline must match its reference bit for bit
        failed = problem is not None or worst_abs != 0.0
        click.echo("check: exact equality required (int8 pipeline): "
                   + ("FAILED" if failed else "outputs identical"))
        mode = "exact"
    else:
        failed = problem is not None or worst_rel_float > tolerance or step_fail is not None
        mode = "float"
        if act_q:
            mode = "quantized"
            click.echo(f"check: pre-quantized graph with activation quantizers: activation-quantized "
                       f"outputs pass within {max_steps} quantization step(s) and the same top-1 "
                       f"class, others within --tolerance {tolerance:g}: "
                       + ("FAILED" if failed else "passed"))
    if problem is None and failed:
        problem = (f"the int8 outputs differ from the reference (max abs err {worst_abs:.3g}); "
                   "an integer pipeline must match exactly" if exact else step_fail or
                   f"max relative error {worst_rel_float:.3g} exceeds --tolerance {tolerance:g}")
    return problem, {"reference": "tvm-llvm", "mode": mode, "max_abs_err": worst_abs,
                     "max_rel_err": worst_rel, "tolerance": 0.0 if exact else tolerance,
                     "max_steps": max_steps if act_q else None, "passed": not failed,
                     "nonfinite_mismatches": n_bad, "outputs": per_output, "problem": problem}


@click.command("inspect")
@click.argument("binary")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and listing as JSON.")
@click.option("--summary", is_flag=True, help="Summary only, no disassembly.")
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect_cmd(binary, as_json, summary, fmt, debug):
    """Summarize and disassemble BINARY.

    ``--format csv|json``: the disassembly listing as rows, one per instruction
    (:func:`compiler.tables.inspect_insn_table`), or with ``--summary`` the layer table,
    one row per layer (:func:`compiler.tables.inspect_layer_table`); ``--json`` (the
    whole summary as one JSON object) is its own output and takes no ``--format``."""
    try:
        if as_json and fmt != "table":
            raise ConfigError(f"--json and --format {fmt} both choose the output: give one of them")
        from target_dlac.binary.container import read_program
        from target_dlac.binary.inspect import describe, listing

        prog = read_program(binary)
        info = describe(prog)
        if fmt != "table":
            (inspect_layer_table(info) if summary else inspect_insn_table(prog)).emit(fmt)
            return
        if as_json:
            if not summary:
                info["instructions"] = [line for _, line in listing(prog)]
            click.echo(strict_json(info, indent=2))
            return
        for line in _summary_lines(info):
            _say(line)
        if not summary:
            click.echo("")
            for header, line in listing(prog):
                if header:
                    _say(header)
                _say(line)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)
