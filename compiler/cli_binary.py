"""The ``dlac`` commands that take a BINARY: ``run`` (the ISA interpreter; ``--check``
against the TVM CPU reference) and ``inspect`` (summary and disassembly).  Without
``--check``, on a binary with no host ops, neither imports TVM nor torch.  Registered on
the group in :mod:`compiler.cli`."""

from __future__ import annotations

import click

from compiler.arrays_io import _load_inputs, check_npz_names, npz_bytes
from compiler.cli_args import _summary_lines, check_outputs, compare_output, printable, strict_json
from compiler.cli_common import _escaped_report, _fail, _say
from target_dlac.core.errors import ConfigError, DlacError


@click.command("run")
@click.argument("binary")
@click.option("--input", "input_path", required=True, metavar="x.npy|x.npz",
              help="Input array (.npy for a single input, .npz keyed by input name).")
@click.option("--check", is_flag=True,
              help="Also run the TVM CPU reference of the same quantized graph; print max errors.")
@click.option("--tolerance", type=float, default=None,
              help="--check fails when the max relative error exceeds this (default 1e-5; 1e-2 "
                   "for fp16 binaries, whose sums may round to a neighbouring float16; int8 "
                   "binaries must match exactly).")
@click.option("--report-json", metavar="FILE", help="Write cycles, per-layer results and the check as JSON.")
@click.option("--output", "output_path", metavar="y.npz",
              help="Write the outputs (output_0, ...) as NAME.npy members; a binary whose output "
                   "names cannot be member names (path separators, '..', control characters) is "
                   "refused.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_cmd(binary, input_path, check, tolerance, report_json, output_path, debug):
    """Execute BINARY in the dLAC ISA interpreter.

    ``--check`` cannot pass on wrong answers: see :func:`compiler.cli_args.compare_output`
    (a NaN or Inf on one side that the other side does not have at the same position
    fails the check; the errors are measured where both sides are finite).  ``--output``
    writes one ``NAME.npy`` member per output; names that cannot be member names
    (:func:`compiler.arrays_io.npz_name_problem`) are refused before the run, never
    renamed."""
    try:
        import math
        import time

        check_outputs([("--output", output_path), ("--report-json", report_json)],
                      [("BINARY", binary), ("--input", input_path)])
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigError(f"--tolerance {tolerance}: expected a finite number >= 0")

        from target_dlac.binary.container import read_program
        from target_dlac.sim.interpreter import run

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
        inputs = _load_inputs(input_path, prog)
        host = None
        if prog.host is not None:
            from target_dlac.sim.host import HostRunner
            host = HostRunner(prog)
        t0 = time.perf_counter()
        outs, report = run(prog, inputs, host_runner=host)
        wall = time.perf_counter() - t0
        click.echo(_escaped_report(report).table())
        click.echo(f"interpreter: {len(prog.insns):,} instructions in {wall:.3f} s "
                   f"({report.cycles['total'] / max(wall, 1e-9):,.0f} simulated cycles per second)")
        rep = report.to_dict()
        for name, value in outs.items():
            _say(f"{name}: shape {tuple(value.shape)} {value.dtype}")
        problem = None
        if check:
            from target_dlac.sim.host import reference_outputs

            refs = list(reference_outputs(prog, inputs))
            if len(refs) != len(outs):
                problem = (f"the binary has {len(outs)} output(s), its reference graph "
                           f"{len(refs)}: nothing to compare position by position")
            worst_abs = worst_rel = 0.0
            per_output, n_bad, first_bad = [], 0, None
            for (name, value), ref in zip(outs.items(), refs):
                c = compare_output(value, ref)
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
                _say(line)
                per_output.append({"name": name, "max_abs_err": c["max_abs_err"],
                                   "max_rel_err": c["max_rel_err"],
                                   "nonfinite_mismatches": c["nonfinite_mismatches"],
                                   "first_mismatch": c["first_mismatch"]})
            if n_bad and not problem:
                problem = (f"{n_bad:,} NaN/Inf value(s) in the outputs or the reference that the other "
                           f"side does not have at the same position (first at {first_bad})")
            exact = prog.meta.get("activations") == "int8"
            if tolerance is None:
                tolerance = 1e-2 if prog.meta.get("activations") == "fp16" else 1e-5
            if exact:       # the all-integer pipeline must match its reference bit for bit
                failed = problem is not None or worst_abs != 0.0
                click.echo("check: exact equality required (int8 pipeline): "
                           + ("FAILED" if failed else "outputs identical"))
            else:
                failed = problem is not None or worst_rel > tolerance
            if problem is None and failed:
                problem = (f"the int8 outputs differ from the reference (max abs err {worst_abs:.3g}); "
                           "an integer pipeline must match exactly" if exact else
                           f"max relative error {worst_rel:.3g} exceeds --tolerance {tolerance:g}")
            rep["check"] = {"reference": "tvm-llvm", "max_abs_err": worst_abs, "max_rel_err": worst_rel,
                            "tolerance": 0.0 if exact else tolerance, "passed": not failed,
                            "nonfinite_mismatches": n_bad, "outputs": per_output,
                            "problem": problem}
        if output_path:
            atomic_write_bytes(output_path, npz_bytes(outs))
        if report_json:
            atomic_write_text(report_json, strict_json(rep, indent=2))
        if problem:
            raise CheckFailed(problem)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


class CheckFailed(DlacError):
    """``run --check`` found the interpreter off the reference."""


@click.command("inspect")
@click.argument("binary")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and listing as JSON.")
@click.option("--summary", is_flag=True, help="Summary only, no disassembly.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect_cmd(binary, as_json, summary, debug):
    """Summarize and disassemble BINARY."""
    try:
        from target_dlac.binary.container import read_program
        from target_dlac.binary.inspect import describe, listing

        prog = read_program(binary)
        info = describe(prog)
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
