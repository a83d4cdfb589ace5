"""The ``dlac`` command line.

    dlac compile MODEL [-o out.dlac] [options]   quantize, partition, generate the dLAC binary
    dlac run out.dlac --input x.npy [--check]    execute a binary in the ISA interpreter
    dlac inspect out.dlac [--json]               summarize and disassemble a binary
    dlac demo                                    the MNIST demo (see README)

``inspect`` and ``run`` (without ``--check``, on a binary with no host ops) import
neither TVM nor torch: a binary runs with NumPy alone.

Errors print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys

import click

from .config import QuantConfig
from .errors import ConfigError, DlacError

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
        click.echo(f"dlac: error: {e}", err=True)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    click.echo(f"dlac: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
               err=True)
    sys.exit(3)


def parse_input_shapes(specs) -> dict:
    from .frontend_common import parse_shape

    shapes = {}
    for spec in specs:
        name, sep, shape = spec.partition("=")
        if not sep or not name:
            raise ConfigError(f"--input-shape {spec!r}: expected NAME=1x3x224x224")
        shapes[name] = parse_shape(shape)
    return shapes


def parse_precisions(specs, acts: dict | None = None) -> dict:
    """``PATTERN=PREC`` strings, or ``FILE.toml`` files holding ``"pattern" = "prec"`` pairs
    (top level or under ``[precision]``; activation types under ``[activations]``, put
    into ``acts``), in order; earlier entries are checked first."""
    out = {}
    for spec in specs:
        if spec.endswith(".toml"):
            weights, act = _precision_file(spec)
            out.update(weights)
            if acts is not None:
                acts.update(act)
            continue
        pattern, sep, prec = spec.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"--precision {spec!r}: expected PATTERN=PRECISION (e.g. 'layer4.*=fp32')")
        out[pattern] = prec
    return out


def _precision_file(path: str) -> dict:
    from .config import read_toml

    data = read_toml(path, "precision file")
    acts = data.get("activations", {})
    table = data.get("precision", {k: v for k, v in data.items() if k != "activations"})
    for what, t in (("precision", table), ("activations", acts)):
        bad = [k for k, v in (t.items() if isinstance(t, dict) else [("", None)]) if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"precision file {path!r}: [{what}] entry {bad[0]!r} must map a layer "
                              "pattern to a string (weights: fp32, ternary, int4, int8, swis; "
                              "activations: fp32, fp16)")
    return dict(table), dict(acts)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dlac: compile PyTorch/ONNX models for the dLAC accelerator."""


@main.command("compile")
@click.argument("model")
@click.option("-o", "--output", metavar="OUT.dlac", help="Write the dLAC binary here.")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="ternary", show_default=True,
              help="Weight quantization; 'none' keeps full-precision weights.")
@click.option("--granularity", type=click.Choice(("filter", "layer")), default="filter",
              show_default=True, help="Ternary scale per output filter or per layer.")
@click.option("--cluster-size", type=int, metavar="N",
              help="Filters per shared weight scale (0 = whole layer); default 4 for "
                   "--quant cluster, else 1.")
@click.option("--activations", type=click.Choice(("fp32", "fp16", "int8")), default="fp32",
              show_default=True)
@click.option("--calib", metavar="FILE.npz",
              help="Calibration inputs for --activations int8: arrays keyed by input name, samples "
                   "stacked on the batch axis.")
@click.option("--keep-first/--quantize-first", default=True, show_default=True,
              help="Keep the first layer at full precision.")
@click.option("--keep-last/--quantize-last", default=True, show_default=True,
              help="Keep the last layer at full precision.")
@click.option("--precision", "precisions", multiple=True, metavar="PATTERN=PREC|FILE.toml",
              help="Per-layer precision, fnmatch on layer names (repeatable; a .toml file holds "
                   "\"pattern\" = \"precision\" pairs).")
@click.option("--activation-precision", "act_precisions", multiple=True, metavar="PATTERN=fp16|fp32",
              help="Per-layer activation type (mixed fp16/fp32), fnmatch on layer names (repeatable).")
@click.option("--swis-shifts", type=float, default=3.0, show_default=True, metavar="S",
              help="SWIS: average shifts per group of 4 weights (may be fractional).")
@click.option("--swis-consecutive", is_flag=True, help="SWIS-C: the shifts of a group are consecutive.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=SHAPE",
              help="Shape of a dynamic input, e.g. x=1x3x224x224 (repeatable).")
@click.option("--machine", metavar="FILE.toml", help="Machine parameters (default: docs/isa.md).")
@click.option("--tuning-log", help="Tuning log to apply.")
@click.option("--dump-ir", metavar="DIR", help="Write every stage's module as TVMScript to DIR.")
@click.option("--report-json", metavar="FILE", help="Write the compile report as JSON.")
@click.option("--no-reference", is_flag=True,
              help="Leave the quantized graph out of the binary (smaller; `run --check` then fails).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compile_cmd(model, output, quant, granularity, cluster_size, activations, calib, keep_first,
                keep_last, precisions, act_precisions, swis_shifts, swis_consecutive, input_shapes, machine, tuning_log,
                dump_ir, report_json, no_reference, debug):
    """Import MODEL (.onnx, .pt2 or FILE.py:FACTORY), quantize and partition it."""
    try:
        for flag, value, issue in (("--tuning-log", tuning_log, "the autotuner issue"),):
            if value:
                raise ConfigError(f"{flag} is not yet supported (arrives with {issue})")
        weights, default_n = QUANT_WEIGHTS[quant]
        acts: dict = {}
        overrides = parse_precisions(precisions, acts)
        acts.update(parse_precisions(act_precisions))
        config = QuantConfig(weights=weights, granularity=granularity,
                             cluster_size=default_n if cluster_size is None else cluster_size,
                             swis_shifts=swis_shifts, swis_consecutive=swis_consecutive,
                             keep_first=keep_first, keep_last=keep_last,
                             overrides=overrides, activation_overrides=acts)
        from .atomic import atomic_write_text
        from .pipeline import compile_model

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
        click.echo(result.layer_table())
        host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
        click.echo(f"dLAC regions: {len(result.regions)}; host ops: {host}")
        if dump_ir:
            click.echo(f"IR of every stage written to {dump_ir}/")
        report = report_dict(result)
        if output:
            from target_dlac.container import write_program

            from .build import build_program

            import time
            t0 = time.perf_counter()
            prog = build_program(result, mach, reference=not no_reference, activations=activations,
                                 calib=calib_data)
            write_program(output, prog)
            click.echo(f"  stage {'codegen':<13} {time.perf_counter() - t0:6.2f} s", err=True)
            counts = _op_counts(prog)
            click.echo(f"wrote {output}: {len(prog.insns):,} instructions "
                       f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}), "
                       f"{len(prog.constants):,} bytes of constants, DRAM {prog.dram_bytes:,} bytes")
            for fb in prog.meta.get("fallbacks", []):
                click.echo(f"  note: {fb['composite']} at {fb['var']} runs on the host: {fb['reason']}")
            report["binary"] = {"path": output, "instructions": len(prog.insns),
                                "schedules": {l["name"]: l.get("schedule") for l in prog.meta["layers"]
                                              if l.get("schedule")}}
        if report_json:
            atomic_write_text(report_json, json.dumps(report, indent=2))
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)


def _machine(path):
    from target_dlac.machine import Machine

    return Machine.from_toml(path) if path else Machine()


def _op_counts(prog) -> dict:
    counts: dict = {}
    for ins in prog.insns:
        counts[ins.op] = counts.get(ins.op, 0) + 1
    return counts


def _load_npz(path: str, what: str) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if isinstance(data, np.ndarray):
                raise ConfigError(f"{what} {path!r}: expected a .npz keyed by input name")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path!r} not found") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{what} file {path!r} is not a .npz array file: {e}") from None


def _load_inputs(path: str, prog) -> dict:
    import numpy as np

    names = [t.name for t in prog.inputs]
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"input file {path!r} not found") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"input file {path!r} is not a .npy/.npz array file: {e}") from None
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise ConfigError(f"{path}: a .npy holds one array; the program takes {names} (use .npz)")
        return {names[0]: data}
    with data:
        return {k: data[k] for k in data.files}


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
@click.option("--output", "output_path", metavar="y.npz", help="Write the outputs (output_0, ...).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run_cmd(binary, input_path, check, tolerance, report_json, output_path, debug):
    """Execute BINARY in the dLAC ISA interpreter."""
    try:
        import time

        import numpy as np

        from target_dlac.container import read_program
        from target_dlac.interpreter import run

        from .atomic import atomic_write_bytes, atomic_write_text

        prog = read_program(binary)
        inputs = _load_inputs(input_path, prog)
        host = None
        if prog.host is not None:
            from target_dlac.host import HostRunner
            host = HostRunner(prog)
        t0 = time.perf_counter()
        outs, report = run(prog, inputs, host_runner=host)
        wall = time.perf_counter() - t0
        click.echo(report.table())
        click.echo(f"interpreter: {len(prog.insns):,} instructions in {wall:.3f} s "
                   f"({report.cycles['total'] / wall:,.0f} simulated cycles per second)")
        rep = report.to_dict()
        for name, value in outs.items():
            click.echo(f"{name}: shape {tuple(value.shape)} {value.dtype}")
        failed = False
        if check:
            from target_dlac.host import reference_outputs

            refs = reference_outputs(prog, inputs)
            worst_abs = worst_rel = 0.0
            for (name, value), ref in zip(outs.items(), refs):
                diff = float(np.abs(value.astype(np.float64) - ref).max()) if value.size else 0.0
                scale = float(np.abs(ref).max()) if ref.size else 0.0
                rel = diff / scale if scale else diff
                worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
                click.echo(f"check {name} vs TVM CPU reference: max abs err {diff:.3g}, "
                           f"max rel err {rel:.3g}")
            exact = prog.meta.get("activations") == "int8"
            if tolerance is None:
                tolerance = 1e-2 if prog.meta.get("activations") == "fp16" else 1e-5
            if exact:       # the all-integer pipeline must match its reference bit for bit
                failed = worst_abs != 0.0
                click.echo("check: exact equality required (int8 pipeline): "
                           + ("FAILED" if failed else "outputs identical"))
            else:
                failed = worst_rel > tolerance
            rep["check"] = {"reference": "tvm-llvm", "max_abs_err": worst_abs, "max_rel_err": worst_rel,
                            "tolerance": 0.0 if exact else tolerance, "passed": not failed}
        if output_path:
            import io
            buf = io.BytesIO()
            np.savez(buf, **outs)
            atomic_write_bytes(output_path, buf.getvalue())
        if report_json:
            atomic_write_text(report_json, json.dumps(rep, indent=2))
        if failed:
            if exact:
                raise CheckFailed(f"the int8 outputs differ from the reference (max abs err {worst_abs:.3g}); "
                                  "an integer pipeline must match exactly")
            raise CheckFailed(f"max relative error {worst_rel:.3g} exceeds --tolerance {tolerance:g}")
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
        from target_dlac.container import read_program
        from target_dlac.inspect import describe, listing

        prog = read_program(binary)
        info = describe(prog)
        if as_json:
            if not summary:
                info["instructions"] = [line for _, line in listing(prog)]
            click.echo(json.dumps(info, indent=2))
            return
        for line in _summary_lines(info):
            click.echo(line)
        if not summary:
            click.echo("")
            for header, line in listing(prog):
                if header:
                    click.echo(header)
                click.echo(line)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


def _summary_lines(info: dict) -> list[str]:
    out = [f"{info['file']['compiler']} binary, format {info['file']['format']}, "
           f"machine {info['machine']['hash'][:16]}",
           f"source: {info['source']} (sha256 {str(info['source_hash'])[:16]})",
           f"instructions: {info['instructions_total']:,} "
           f"({', '.join(f'{k} {v:,}' for k, v in info['opcodes'].items())})",
           f"constants: {info['constants_bytes']:,} bytes; DRAM image: {info['dram_bytes']:,} bytes",
           "tensors:"]
    for t in info["tensors"]:
        if t["role"] in ("input", "output"):
            out.append(f"  {t['role']:<7} {t['name']:<16} {'x'.join(map(str, t['shape'])):<16} "
                       f"{t['dtype']} @ {t['addr']:#x}")
    out.append(f"layers ({len(info['layers'])}):")
    for l in info["layers"]:
        sched = l.get("schedule")
        s = (f"f{sched['f_tile']} c{sched['c_tile']} h{sched['h_tile']} w{sched['w_tile']} "
             f"{sched['order']}{' db' if sched['double_buffer'] else ''} {sched['pe_order']}") if sched else ""
        out.append(f"  {l['name']:<28} {l['op']:<15} {l['precision']:<8} pc {l['pc_start']}-{l['pc_end']} {s}")
    if info["host_ops"]:
        out.append("host ops: " + ", ".join(f"{h['op']}({', '.join(h['inputs'])})" for h in info["host_ops"]))
    return out


def report_dict(result) -> dict:
    return {
        "source": result.source, "source_hash": result.source_hash,
        "config": result.config.to_dict(),
        "inputs": {k: list(v) for k, v in result.input_shapes.items()},
        "layers": [dict(vars(i), weight_shape=list(i.weight_shape)) for i in result.layers],
        "multiplies": [r.to_dict() for r in result.multiplies],
        "totals": result.totals(),
        "cluster_counting": (result.cluster_counts()
                             if any(i.precision == "ternary" for i in result.layers) else None),
        "host_ops": [vars(h) for h in result.host_ops],
        "regions": [{"name": n, "composites": c} for n, c in result.regions],
        "stage_seconds": result.timings,
    }


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
        from .demo import run_demo
        run_demo(images=images, out_dir=out_dir)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


if __name__ == "__main__":
    main()
