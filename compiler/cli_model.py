"""The ``dlac`` commands that take a MODEL: ``compile`` (quantize, partition, write the
binary, verified before it takes its name) and ``tune`` (per-layer schedule search into a
tuning log).  Registered on the group in :mod:`compiler.cli`."""

from __future__ import annotations

import time

import click

from compiler.arrays_io import _load_npz
from compiler.cli_args import (_machine, check_outputs, model_path, parse_input_shapes, report_dict,
                               strict_json)
from compiler.cli_common import _fail, _quant_config, _say, _say_table, model_options, printable
from compiler.result import DAMAGE_SQNR_DB
from compiler.tables import compile_table, format_option, text_to_stderr, tune_table
from target_dlac.core.errors import ConfigError, DlacError
from target_dlac.tune.search import DEFAULT_TRIALS

#: a codegen progress line is printed for a layer that took this long, and for every layer
#: once the codegen has run this long (or always with ``-v``)
PROGRESS_LAYER_S, PROGRESS_AFTER_S = 1.0, 10.0


@click.command("compile")
@click.argument("model")
@click.option("-o", "--output", metavar="OUT.dlac", help="Write the dLAC binary here.")
@model_options
@click.option("--activations", type=click.Choice(("fp32", "fp16", "int8")), default="fp32",
              show_default=True)
@click.option("--calib", metavar="FILE.npz",
              help="Calibration inputs for --activations int8: arrays keyed by input name, samples "
                   "stacked on the batch axis.")
@click.option("--act-bits", type=int, default=8, show_default=True, metavar="8|4|2",
              help="With --activations int8: 4 or 2 makes the outputs of conv/dense layers with a "
                   "ReLU (or ReLU6) and no residual unsigned 4- / 2-bit tensors (WRPN); every other "
                   "tensor stays int8. Held one per byte at int8's cycles: this models accuracy, "
                   "not a speed-up (docs/isa.md \"Integer mode\").")
@click.option("--activation-precision", "act_precisions", multiple=True, metavar="PATTERN=fp16|fp32",
              help="Per-layer activation type (mixed fp16/fp32), fnmatch on layer names (repeatable).")
@click.option("--tuning-log", help="Tuning log to apply.")
@click.option("--dump-ir", metavar="DIR", help="Write every stage's module as TVMScript to DIR.")
@click.option("--report-json", metavar="FILE", help="Write the compile report as JSON.")
@click.option("--damage", is_flag=True,
              help="Measure the quantization damage: the quantized graph's outputs against the float "
                   "graph's on a fixed random input, both through TVM's CPU build (two builds: about "
                   "1 s for a small model, 5 s for ResNet-18); warns below "
                   f"{DAMAGE_SQNR_DB:g} dB SQNR.")
@click.option("--no-reference", is_flag=True,
              help="Leave the quantized graph out of the binary (smaller; `run --check` then fails).")
@click.option("-v", "--verbose", is_flag=True,
              help="One progress line per conv/dense layer of the codegen (default: only layers that "
                   f"take {PROGRESS_LAYER_S:g} s or more, and every layer once the codegen has run "
                   f"{PROGRESS_AFTER_S:g} s).")
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compile_cmd(model, output, quant, granularity, cluster_size, activations, calib, act_bits, keep_first,
                keep_last, precisions, relu_thresholds, act_precisions, swis_shifts, swis_consecutive, input_shapes, machine, tuning_log,
                dump_ir, report_json, damage, no_reference, verbose, fmt, debug):
    """Import MODEL (.onnx, .pt2 or FILE.py:FACTORY), quantize and partition it.

    With ``-o``, the binary is verified before it is given its name: the bytes are
    written to a temporary file next to the output, read back from it with
    :func:`target_dlac.binary.container.read_program` (every check a later ``dlac run`` makes),
    and only then renamed to OUT.dlac.  A binary that does not read back is an error
    (one line, exit 1, :class:`BinaryVerifyError`): the temporary file is removed, so no
    bad binary is ever written, and a previous OUT.dlac stays as it was.

    ``--format csv|json`` prints the layer table's rows (:func:`compiler.tables.compile_table`)
    instead of the text table, and the other lines on stderr."""
    try:
        with text_to_stderr(fmt):
            check_outputs([("-o", output), ("--report-json", report_json)],
                          [("MODEL", model_path(model)), ("--calib", calib), ("--tuning-log", tuning_log),
                           ("--machine", machine)]
                          + [("--precision", p) for p in precisions if p.endswith(".toml")])
            config = _quant_config(quant, granularity, cluster_size, precisions, act_precisions,
                                   swis_shifts, swis_consecutive, keep_first, keep_last, relu_thresholds)
            if tuning_log:
                from compiler.build import check_tuning_log

                if not output:
                    raise ConfigError("--tuning-log applies schedules to the binary: give -o OUT.dlac")
                check_tuning_log(tuning_log, "mixed fp16" if act_precisions else activations)
            from target_dlac.core.atomic import atomic_write_bytes, atomic_write_text
            from compiler.pipeline import compile_model

            mach = _machine(machine)
            from target_dlac.isa.energy import machine_file_table

            energy_table = machine_file_table(machine)     # checked before any work
            if activations != "fp32" and not output:
                raise ConfigError(f"--activations {activations} builds a binary: give -o OUT.dlac")
            if act_precisions and activations == "int8":
                raise ConfigError("--activation-precision mixes fp16/fp32 layers; it cannot be combined "
                                  "with --activations int8")
            if activations == "int8" and not calib:
                raise ConfigError("--activations int8 needs calibration inputs: --calib FILE.npz")
            if calib and activations != "int8":
                raise ConfigError("--calib is only used with --activations int8")
            from compiler.build import check_act_bits

            check_act_bits(act_bits, activations, "--act-bits")
            calib_data = _load_npz(calib, "--calib") if calib else None
            shapes = parse_input_shapes(input_shapes)
            source, preloaded = model, False
            if damage and model_path(model) != model:
                # a factory: import it here to keep its example inputs (the damage runs on them)
                from compiler.loader import load_model

                t0 = time.perf_counter()
                source, preloaded = load_model(model, None, shapes), True
                click.echo(f"  stage {'import':<13} {time.perf_counter() - t0:6.2f} s", err=True)
            result = compile_model(source, config=config, input_shapes=shapes, dump_ir=dump_ir, machine=mach,
                                   progress=lambda s, t: None if preloaded and s == "import" else
                                   click.echo(f"  stage {s:<13} {t:6.2f} s", err=True))
            if dump_ir:
                click.echo(f"IR of every stage written to {dump_ir}/")
            prog = None
            if output:
                from target_dlac.binary.container import to_bytes

                from compiler.build import build_program

                t0 = time.perf_counter()
                prog = build_program(result, mach, reference=not no_reference, activations=activations,
                                     calib=calib_data, tuning_log=tuning_log, progress=_progress(verbose, t0),
                                     act_bits=act_bits, energy_table=energy_table)
                atomic_write_bytes(output, to_bytes(prog), verify=_verify_binary)
                click.echo(f"  stage {'codegen':<13} {time.perf_counter() - t0:6.2f} s", err=True)
            # the table after the codegen: a layer it left on the host is shown there
            fallbacks = prog.meta.get("fallbacks", []) if prog is not None else None
            if fmt == "table":
                _say_table(result.layer_table(fallbacks))
            host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
            _say(f"dLAC regions: {len(result.regions)}; host ops: {host}")
            for line in result.host_warnings(fallbacks):
                click.echo(f"dlac: warning: {printable(line)}", err=True)
            report = report_dict(result, fallbacks)
            if damage:
                example = source.extra.get("example_inputs") if preloaded else None
                report["damage"] = _damage(result, example)
            if prog is not None:
                if tuning_log:
                    t = prog.meta["tuning"]
                    click.echo(f"tuning log {tuning_log}: {t['tuned_layers']} of {t['layers']} conv/dense "
                               f"layers got a tuned schedule"
                               + (f" ({t['skipped_lines']} unreadable line(s) skipped)" if t["skipped_lines"] else ""))
                from target_dlac.binary.inspect import opcode_counts
                from target_dlac.binary.layer_meta import layer_table

                counts = opcode_counts(prog)
                click.echo(f"wrote {output}: {len(prog.insns):,} instructions "
                           f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}), "
                           f"{len(prog.constants):,} bytes of constants, DRAM {prog.dram_bytes:,} bytes")
                if act_bits != 8:
                    _say(f"  activations int8, {len(prog.meta['low_bit_tensors'])} ReLU output tensor(s) "
                         f"uint{act_bits} (held one per byte)")
                for fb in fallbacks:
                    _say(f"  note: {fb['composite']} at {fb['var']} runs on the host: {fb['reason']}")
                report["binary"] = {"path": output, "instructions": len(prog.insns),
                                    "activations": activations, "act_bits": act_bits,
                                    "schedules": {l.name: l.schedule for l in layer_table(prog.meta)
                                                  if l.schedule}}
            if report_json:
                atomic_write_text(report_json, strict_json(report, indent=2))
        compile_table(report).emit(fmt)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)


def _progress(verbose: bool, t0: float):
    """The codegen's per-layer callback (:class:`compiler.build.LayerProgress`): its line
    on stderr, quiet for small models (see :data:`PROGRESS_LAYER_S`)."""
    def show(e) -> None:
        if verbose or e.seconds >= PROGRESS_LAYER_S or time.perf_counter() - t0 >= PROGRESS_AFTER_S:
            click.echo(f"  {printable(e.line())}", err=True)
    return show


def _damage(result, example=None) -> list[dict]:
    """Print the quantization damage per output on ``example`` (a factory's example inputs;
    default: a fixed random input), and a warning line for each output below
    :data:`compiler.result.DAMAGE_SQNR_DB`; return its rows for the JSON report."""
    t0 = time.perf_counter()
    rows = result.damage(example)
    what = "the factory's example input" if example is not None else "fixed random input"
    secs = time.perf_counter() - t0
    for r in rows:
        r["input"] = "example" if example is not None else "random"
        agree = "" if r["argmax_agrees"] is None else \
            f", argmax {'agrees' if r['argmax_agrees'] else 'differs'}"
        _say(f"quantization damage, output {r['output']} {'x'.join(map(str, r['shape']))}: relative "
             f"error {r['rel_err']:.3g}, SQNR {r['sqnr_db']:.1f} dB{agree} (quantized vs float graph, "
             f"{what}, {secs:.1f} s)")
        if r["warn"]:
            click.echo(f"dlac: warning: quantization damage: output {r['output']} has SQNR "
                       f"{r['sqnr_db']:.1f} dB (relative error {r['rel_err']:.2f}) against the float "
                       f"graph, below {DAMAGE_SQNR_DB:g} dB: the quantized model may no longer work "
                       "(keep more layers at higher precision with --precision, or --quant int8)", err=True)
    return rows


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



@click.command("tune")
@click.argument("model")
@click.option("-o", "--output", "log", required=True, metavar="LOG.jsonl",
              help="Tuning log to append to (also the resume state: tuned layers are skipped).")
@click.option("--trials", type=int,
              help=f"Trials (exact cost evaluations) per layer (default: {DEFAULT_TRIALS} for random / anneal, "
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
@click.option("--calib", metavar="FILE.npz",
              help="Sample inputs (as dlac compile --calib takes them) whose zero activations the "
                   "machine's act_skip skips: the search minimizes the expected cycles on them "
                   "instead of the cycles with dense activations.")
@click.option("--calib-limit", type=int, default=64, show_default=True, metavar="N",
              help="Samples of --calib measured (each runs once in the interpreter).")
@model_options
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def tune_cmd(model, log, trials, time_budget, strategy, patience, jobs, seed, dask, dask_timeout, calib,
             calib_limit, quant,
             granularity,
             cluster_size, keep_first, keep_last, precisions, relu_thresholds, swis_shifts, swis_consecutive,
             input_shapes, machine, fmt, debug):
    """Search per-layer tiling schedules of MODEL with the cost model; append them to LOG.

    ``--format csv|json`` prints the closing table's rows (:func:`compiler.tables.tune_table`)
    instead of the text table, and the other lines on stderr."""
    try:
        with text_to_stderr(fmt):
            for flag, v in (("--trials", trials), ("--jobs", jobs), ("--patience", patience)):
                if v is not None and v < 1:
                    raise ConfigError(f"{flag} must be at least 1")
            if time_budget is not None and time_budget <= 0:
                raise ConfigError("--time-budget must be positive")
            if not dask_timeout > 0:
                raise ConfigError("--dask-timeout must be positive")
            if calib_limit < 1:
                raise ConfigError("--calib-limit must be at least 1")
            if trials is None and strategy in ("random", "anneal"):
                trials = DEFAULT_TRIALS
            config = _quant_config(quant, granularity, cluster_size, precisions, (), swis_shifts,
                                   swis_consecutive, keep_first, keep_last, relu_thresholds)
            from compiler.pipeline import compile_model
            from compiler.tune import format_table, tune_model

            mach = _machine(machine)
            result = compile_model(model, config=config, input_shapes=parse_input_shapes(input_shapes),
                                   machine=mach,
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

            ratios = None
            if calib and mach.act_skip == "none":
                click.echo("  --calib: the machine does not skip zero activations (act_skip = none); "
                           "the samples are not needed", err=True)
            elif calib:
                from compiler.tune import act_ratios

                ratios = act_ratios(result, mach, _load_npz(calib, "--calib"), calib_limit,
                                    lambda i, n: click.echo(f"  activation zeros: sample {i}/{n}", err=True))
                click.echo("  expected cycles with zero activations skipped (act_skip = "
                           f"{mach.act_skip}), measured on {calib}", err=True)
            else:
                click.echo(f"  cycles with dense activations (no --calib: the zeros act_skip = "
                           f"{mach.act_skip} skips are not known)", err=True)
            if dask:
                click.echo(f"  layers fan out to the Dask cluster at {dask}", err=True)
            rows = tune_model(result, mach, log, strategy=strategy, trials=trials, time_budget=time_budget,
                              patience=patience, jobs=jobs, progress=progress, seed=seed, dask=dask,
                              dask_timeout=dask_timeout, act_ratios=ratios)
            if fmt == "table":
                _say_table(format_table(rows))
            from compiler.tune import untuned_layers
            for line in untuned_layers(result):
                _say(f"not tuned: {line}")
            n_new = sum(r["status"] == "tuned" for r in rows)
            click.echo(f"{n_new} layer(s) tuned, {sum(r['status'] == 'from log' for r in rows)} from the log; "
                       f"log: {log}")
        tune_table(rows).emit(fmt)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)
