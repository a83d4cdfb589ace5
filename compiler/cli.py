"""The ``dlac`` command line.

    dlac compile MODEL [-o out.dlac] [options]   quantize, partition, generate the dLAC binary
    dlac run out.dlac --input x.npy [--check]    execute a binary in the ISA interpreter
    dlac inspect out.dlac [--json]               summarize and disassemble a binary
    dlac tune MODEL -o log.jsonl [options]       tune per-layer schedules (cost model)
    dlac demo                                    the MNIST demo (see README)

``inspect`` and ``run`` (without ``--check``, on a binary with no host ops) import
neither TVM nor torch: a binary runs with NumPy alone.

Errors print one line and exit non-zero; ``--debug`` shows the traceback.  Output paths
are checked before any work (:func:`compiler.cli_args.check_outputs`: not an input, not a
directory, symlink or other non-regular file, in a writable directory that exists).  Text
that comes from a file (names of tensors, layers, ops; error messages quoting them) is
printed through :func:`compiler.cli_args.printable`, so control characters show as
``\\x..`` escapes.  Reports are strict JSON (:func:`compiler.cli_args.strict_json`:
non-finite floats written as the strings ``"nan"``, ``"inf"``, ``"-inf"``).
"""

from __future__ import annotations

import sys
import time

import click

from compiler.arrays_io import _load_inputs, _load_npz, check_npz_names, npz_bytes
from compiler.cli_args import (_machine, _summary_lines, check_outputs, compare_output, model_path,  # noqa: F401
                       parse_input_shapes, parse_precisions, printable, printable_lines, report_dict,
                       strict_json)
from compiler.config import QuantConfig
from target_dlac.core.errors import ConfigError, DlacError

QUANT_CHOICES = ("none", "ternary", "cluster", "int4", "int8", "swis")
#: --quant -> (weight precision, default cluster size)
QUANT_WEIGHTS = {"none": ("fp32", 1), "ternary": ("ternary", 1), "cluster": ("ternary", 4),
                 "int4": ("int4", 1), "int8": ("int8", 1), "swis": ("swis", 1)}


def _fail(e: BaseException, debug: bool) -> None:
    if isinstance(e, BrokenPipeError):      # output piped into `head` and closed: not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if debug:
        raise e
    if isinstance(e, DlacError):
        click.echo(f"dlac: error: {printable(e)}", err=True)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    click.echo(f"dlac: internal error: {type(e).__name__}: {printable(e)} (run with --debug for the "
               "traceback)", err=True)
    sys.exit(3)


_MODEL_OPTIONS = [
    click.option("--quant", type=click.Choice(QUANT_CHOICES), default="ternary", show_default=True,
                 help="Weight quantization; 'none' keeps full-precision weights."),
    click.option("--granularity", type=click.Choice(("filter", "layer")), default="filter",
                 show_default=True, help="Ternary scale per output filter or per layer."),
    click.option("--cluster-size", type=int, metavar="N",
                 help="Filters per shared weight scale (0 = whole layer); default 4 for "
                      "--quant cluster, else 1."),
    click.option("--keep-first/--quantize-first", default=True, show_default=True,
                 help="Keep the first layer at full precision."),
    click.option("--keep-last/--quantize-last", default=True, show_default=True,
                 help="Keep the last layer at full precision."),
    click.option("--precision", "precisions", multiple=True, metavar="PATTERN=PREC|FILE.toml",
                 help="Per-layer precision, fnmatch on layer names (repeatable; a .toml file holds "
                      "\"pattern\" = \"precision\" pairs)."),
    click.option("--swis-shifts", type=float, default=3.0, show_default=True, metavar="S",
                 help="SWIS: average shifts per group of 4 weights (may be fractional)."),
    click.option("--swis-consecutive", is_flag=True, help="SWIS-C: the shifts of a group are consecutive."),
    click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=SHAPE",
                 help="Shape of a dynamic input, e.g. x=1x3x224x224 (repeatable)."),
    click.option("--machine", metavar="FILE.toml", help="Machine parameters (default: docs/isa.md)."),
]


def _say(line="") -> None:
    """Print one line that may hold names from a file: newlines and every other control
    character in it are shown escaped, so it stays one line."""
    click.echo(printable(line))


def _say_table(text="") -> None:
    """Print a multi-line table made by someone else, every line escaped (a newline inside
    a name still breaks its line; :func:`_escaped_report` avoids that for run tables)."""
    click.echo(printable_lines(text))


def _escaped_report(report):
    """A copy of a run report whose layer names, ops and precisions (from the binary's
    META section) are :func:`printable`, for ``report.table()``."""
    import dataclasses

    return dataclasses.replace(report, layers=[
        dataclasses.replace(l, name=printable(l.name), op=printable(l.op), precision=printable(l.precision))
        for l in report.layers])


def model_options(f):
    """The model, quantization and machine options of ``compile`` and ``tune``."""
    for opt in reversed(_MODEL_OPTIONS):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dlac: compile PyTorch/ONNX models for the dLAC accelerator."""


@main.command("compile")
@click.argument("model")
@click.option("-o", "--output", metavar="OUT.dlac", help="Write the dLAC binary here.")
@model_options
@click.option("--activations", type=click.Choice(("fp32", "fp16", "int8")), default="fp32",
              show_default=True)
@click.option("--calib", metavar="FILE.npz",
              help="Calibration inputs for --activations int8: arrays keyed by input name, samples "
                   "stacked on the batch axis.")
@click.option("--activation-precision", "act_precisions", multiple=True, metavar="PATTERN=fp16|fp32",
              help="Per-layer activation type (mixed fp16/fp32), fnmatch on layer names (repeatable).")
@click.option("--tuning-log", help="Tuning log to apply.")
@click.option("--dump-ir", metavar="DIR", help="Write every stage's module as TVMScript to DIR.")
@click.option("--report-json", metavar="FILE", help="Write the compile report as JSON.")
@click.option("--no-reference", is_flag=True,
              help="Leave the quantized graph out of the binary (smaller; `run --check` then fails).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compile_cmd(model, output, quant, granularity, cluster_size, activations, calib, keep_first,
                keep_last, precisions, act_precisions, swis_shifts, swis_consecutive, input_shapes, machine, tuning_log,
                dump_ir, report_json, no_reference, debug):
    """Import MODEL (.onnx, .pt2 or FILE.py:FACTORY), quantize and partition it.

    With ``-o``, the binary is verified before it is given its name: the bytes are
    written to a temporary file next to the output, read back from it with
    :func:`target_dlac.binary.container.read_program` (every check a later ``dlac run`` makes),
    and only then renamed to OUT.dlac.  A binary that does not read back is an error
    (one line, exit 1, :class:`BinaryVerifyError`): the temporary file is removed, so no
    bad binary is ever written, and a previous OUT.dlac stays as it was."""
    try:
        check_outputs([("-o", output), ("--report-json", report_json)],
                      [("MODEL", model_path(model)), ("--calib", calib), ("--tuning-log", tuning_log),
                       ("--machine", machine)]
                      + [("--precision", p) for p in precisions if p.endswith(".toml")])
        config = _quant_config(quant, granularity, cluster_size, precisions, act_precisions,
                               swis_shifts, swis_consecutive, keep_first, keep_last)
        if tuning_log:
            from compiler.build import check_tuning_log

            if not output:
                raise ConfigError("--tuning-log applies schedules to the binary: give -o OUT.dlac")
            check_tuning_log(tuning_log, "mixed fp16" if act_precisions else activations)
        from target_dlac.core.atomic import atomic_write_bytes, atomic_write_text
        from compiler.pipeline import compile_model

        mach = _machine(machine)
        if activations != "fp32" and not output:
            raise ConfigError(f"--activations {activations} builds a binary: give -o OUT.dlac")
        if act_precisions and activations == "int8":
            raise ConfigError("--activation-precision mixes fp16/fp32 layers; it cannot be combined "
                              "with --activations int8")
        if activations == "int8" and not calib:
            raise ConfigError("--activations int8 needs calibration inputs: --calib FILE.npz")
        if calib and activations != "int8":
            raise ConfigError("--calib is only used with --activations int8")
        calib_data = _load_npz(calib, "--calib") if calib else None
        result = compile_model(model, config=config, input_shapes=parse_input_shapes(input_shapes),
                               dump_ir=dump_ir,
                               progress=lambda s, t: click.echo(f"  stage {s:<13} {t:6.2f} s", err=True))
        _say_table(result.layer_table())
        host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
        _say(f"dLAC regions: {len(result.regions)}; host ops: {host}")
        if dump_ir:
            click.echo(f"IR of every stage written to {dump_ir}/")
        report = report_dict(result)
        if output:
            from target_dlac.binary.container import to_bytes

            from compiler.build import build_program

            import time
            t0 = time.perf_counter()
            prog = build_program(result, mach, reference=not no_reference, activations=activations,
                                 calib=calib_data, tuning_log=tuning_log)
            if tuning_log:
                t = prog.meta["tuning"]
                click.echo(f"tuning log {tuning_log}: {t['tuned_layers']} of {t['layers']} conv/dense "
                           f"layers got a tuned schedule"
                           + (f" ({t['skipped_lines']} unreadable line(s) skipped)" if t["skipped_lines"] else ""))
            atomic_write_bytes(output, to_bytes(prog), verify=_verify_binary)
            click.echo(f"  stage {'codegen':<13} {time.perf_counter() - t0:6.2f} s", err=True)
            from target_dlac.binary.inspect import opcode_counts

            counts = opcode_counts(prog)
            click.echo(f"wrote {output}: {len(prog.insns):,} instructions "
                       f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}), "
                       f"{len(prog.constants):,} bytes of constants, DRAM {prog.dram_bytes:,} bytes")
            for fb in prog.meta.get("fallbacks", []):
                _say(f"  note: {fb['composite']} at {fb['var']} runs on the host: {fb['reason']}")
            report["binary"] = {"path": output, "instructions": len(prog.insns),
                                "schedules": {l["name"]: l.get("schedule") for l in prog.meta["layers"]
                                              if l.get("schedule")}}
        if report_json:
            atomic_write_text(report_json, strict_json(report, indent=2))
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)


class BinaryVerifyError(DlacError):
    """The binary ``dlac compile`` built does not read back (a dlac bug): nothing written."""


def _verify_binary(tmp_path: str) -> None:
    """Read the just-written temporary binary back with every check of ``dlac run``."""
    from target_dlac.binary.container import read_program

    try:
        read_program(tmp_path)
    except DlacError as e:
        raise BinaryVerifyError(f"the binary dlac built does not read back ({e}); nothing was "
                                "written (this is a dlac bug: please report it)") from None


def _quant_config(quant, granularity, cluster_size, precisions, act_precisions, swis_shifts,
                  swis_consecutive, keep_first, keep_last) -> QuantConfig:
    weights, default_n = QUANT_WEIGHTS[quant]
    acts: dict = {}
    overrides = parse_precisions(precisions, acts)
    acts.update(parse_precisions(act_precisions))
    return QuantConfig(weights=weights, granularity=granularity,
                       cluster_size=default_n if cluster_size is None else cluster_size,
                       swis_shifts=swis_shifts, swis_consecutive=swis_consecutive,
                       keep_first=keep_first, keep_last=keep_last,
                       overrides=overrides, activation_overrides=acts)


@main.command("tune")
@click.argument("model")
@click.option("-o", "--output", "log", required=True, metavar="LOG.jsonl",
              help="Tuning log to append to (also the resume state: tuned layers are skipped).")
@click.option("--trials", type=int,
              help="Trials (exact cost evaluations) per layer (default: 200 for random / anneal, "
                   "unlimited for exhaustive / best_first, which end by themselves).")
@click.option("--time-budget", type=float, metavar="S", help="Wall seconds per layer.")
@click.option("--strategy", type=click.Choice(("best_first", "anneal", "random", "exhaustive")),
              default="best_first", show_default=True,
              help="best_first: exact costs in order of a cheap lower bound until the bound proves "
                   "the best optimal; anneal: simulated annealing; random; exhaustive.")
@click.option("--patience", type=int, metavar="K", help="Stop a layer after K trials without improvement.")
@click.option("--jobs", type=int, metavar="N", help="Layers tuned in parallel (default: CPU count).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dask", metavar="ADDRESS",
              help="Dask distributed scheduler (tcp://host:port) to fan the layers' searches out to "
                   "instead of the local process pool; workers need dlac installed.")
@click.option("--dask-timeout", type=float, default=60.0, show_default=True, metavar="S",
              help="Seconds to wait for a first Dask worker, for each worker's dlac import probe, "
                   "and for a usable worker after all were lost.")
@model_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def tune_cmd(model, log, trials, time_budget, strategy, patience, jobs, seed, dask, dask_timeout, quant,
             granularity,
             cluster_size, keep_first, keep_last, precisions, swis_shifts, swis_consecutive,
             input_shapes, machine, debug):
    """Search per-layer tiling schedules of MODEL with the cost model; append them to LOG."""
    try:
        for flag, v in (("--trials", trials), ("--jobs", jobs), ("--patience", patience)):
            if v is not None and v < 1:
                raise ConfigError(f"{flag} must be at least 1")
        if time_budget is not None and time_budget <= 0:
            raise ConfigError("--time-budget must be positive")
        if not dask_timeout > 0:
            raise ConfigError("--dask-timeout must be positive")
        if trials is None and strategy in ("random", "anneal"):
            from target_dlac.tune.search import DEFAULT_TRIALS
            trials = DEFAULT_TRIALS
        config = _quant_config(quant, granularity, cluster_size, precisions, (), swis_shifts,
                               swis_consecutive, keep_first, keep_last)
        from compiler.pipeline import compile_model
        from compiler.tune import format_table, tune_model

        mach = _machine(machine)
        result = compile_model(model, config=config, input_shapes=parse_input_shapes(input_shapes),
                               progress=lambda s, t: click.echo(f"  stage {s:<13} {t:6.2f} s", err=True))

        t0 = time.monotonic()

        def progress(r, done, total):
            w = len(str(total))
            bar = "#" * (20 * done // total) + "." * (20 - 20 * done // total)
            head = f"  [{bar}] {done:>{w}}/{total} {time.monotonic() - t0:6.1f} s  {r['layer']}"
            if r["default_cycles"] is None:
                _say(f"{head}: {r['status']} ({r['note']})")
            else:
                _say(f"{head}: {r['status']}: {r['default_cycles']:,} -> "
                     f"{r['tuned_cycles']:,} cycles, {r['trials']} trials"
                     + (f" ({r['note']})" if r["note"] else ""))

        if dask:
            click.echo(f"  layers fan out to the Dask cluster at {dask}", err=True)
        rows = tune_model(result, mach, log, strategy=strategy, trials=trials, time_budget=time_budget,
                          patience=patience, jobs=jobs, progress=progress, seed=seed, dask=dask,
                          dask_timeout=dask_timeout)
        _say_table(format_table(rows))
        n_new = sum(r["status"] == "tuned" for r in rows)
        click.echo(f"{n_new} layer(s) tuned, {sum(r['status'] == 'from log' for r in rows)} from the log; "
                   f"log: {log}")
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


@main.command("run")
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


@main.command("inspect")
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


@main.command("demo")
@click.option("--images", type=int, default=1000, show_default=True, help="MNIST test images to use.")
@click.option("--out-dir", default="demo_out", show_default=True,
              help="Where to write mnist.dlac and an example input.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_cmd(images, out_dir, debug):
    """Compile the bundled MNIST CNN to a dLAC binary, run and check it in the interpreter."""
    try:
        if not 1 <= images <= 10000:
            raise ConfigError("--images must be between 1 and 10000")
        from compiler.demo import run_demo
        run_demo(images=images, out_dir=out_dir)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


if __name__ == "__main__":
    main()
