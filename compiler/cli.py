"""The ``dlac`` command line.

    dlac compile MODEL [options]     import + quantize + partition; reports, IR dumps
    dlac demo                        the MNIST demo (see README)

Errors print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys

import click

from .config import QuantConfig
from .errors import ConfigError, DlacError

QUANT_CHOICES = ("none", "ternary", "cluster", "int4", "int8", "swis")
QUANT_LATER = ("cluster", "int4", "int8", "swis")       # the quantization-breadth issue


def _fail(e: BaseException, debug: bool) -> None:
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


def parse_precisions(specs) -> dict:
    out = {}
    for spec in specs:
        pattern, sep, prec = spec.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"--precision {spec!r}: expected PATTERN=PRECISION (e.g. 'layer4.*=fp32')")
        out[pattern] = prec
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dlac: compile PyTorch/ONNX models for the dLAC accelerator."""


@main.command("compile")
@click.argument("model")
@click.option("-o", "--output", help="dLAC binary to write (arrives with the dLAC target issue).")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="ternary", show_default=True,
              help="Weight quantization; 'none' keeps full-precision weights.")
@click.option("--granularity", type=click.Choice(("filter", "layer")), default="filter",
              show_default=True, help="Ternary scale per output filter or per layer.")
@click.option("--cluster-size", type=int, help="Filters per shared scale (quant=cluster).")
@click.option("--activations", type=click.Choice(("fp32", "fp16", "int8")), default="fp32",
              show_default=True)
@click.option("--calib", help="Calibration inputs (.npz) for int8 activations.")
@click.option("--keep-first/--quantize-first", default=True, show_default=True,
              help="Keep the first layer at full precision.")
@click.option("--keep-last/--quantize-last", default=True, show_default=True,
              help="Keep the last layer at full precision.")
@click.option("--precision", "precisions", multiple=True, metavar="PATTERN=PREC",
              help="Per-layer override, fnmatch on layer names (repeatable).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=SHAPE",
              help="Shape of a dynamic input, e.g. x=1x3x224x224 (repeatable).")
@click.option("--machine", help="Machine description (.toml).")
@click.option("--tuning-log", help="Tuning log to apply.")
@click.option("--dump-ir", metavar="DIR", help="Write every stage's module as TVMScript to DIR.")
@click.option("--report-json", metavar="FILE", help="Write the compile report as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compile_cmd(model, output, quant, granularity, cluster_size, activations, calib, keep_first,
                keep_last, precisions, input_shapes, machine, tuning_log, dump_ir, report_json, debug):
    """Import MODEL (.onnx, .pt2 or FILE.py:FACTORY), quantize and partition it."""
    try:
        if quant in QUANT_LATER:
            raise ConfigError(f"--quant {quant} is not yet supported (arrives with the "
                              "quantization-breadth issue)")
        for flag, value, issue in (("--activations", activations != "fp32", "the quantization-breadth issue"),
                                   ("--cluster-size", cluster_size, "the quantization-breadth issue"),
                                   ("--calib", calib, "the quantization-breadth issue"),
                                   ("--machine", machine, "the dLAC target issue"),
                                   ("--tuning-log", tuning_log, "the autotuner issue"),
                                   ("-o/--output", output, "the dLAC target issue")):
            if value:
                raise ConfigError(f"{flag} is not yet supported (arrives with {issue})")
        config = QuantConfig(weights="fp32" if quant == "none" else "ternary", granularity=granularity,
                             keep_first=keep_first, keep_last=keep_last,
                             overrides=parse_precisions(precisions))
        from .atomic import atomic_write_text
        from .pipeline import compile_model

        result = compile_model(model, config=config, input_shapes=parse_input_shapes(input_shapes),
                               dump_ir=dump_ir,
                               progress=lambda s, t: click.echo(f"  stage {s:<13} {t:6.2f} s", err=True))
        click.echo(result.layer_table())
        host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
        click.echo(f"dLAC regions: {len(result.regions)}; host ops: {host}")
        if dump_ir:
            click.echo(f"IR of every stage written to {dump_ir}/")
        if report_json:
            atomic_write_text(report_json, json.dumps(report_dict(result), indent=2))
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)


def report_dict(result) -> dict:
    return {
        "source": result.source, "source_hash": result.source_hash,
        "config": result.config.to_dict(),
        "inputs": {k: list(v) for k, v in result.input_shapes.items()},
        "layers": [dict(vars(i), weight_shape=list(i.weight_shape)) for i in result.layers],
        "multiplies": [r.to_dict() for r in result.multiplies],
        "totals": result.totals(),
        "host_ops": [vars(h) for h in result.host_ops],
        "regions": [{"name": n, "composites": c} for n, c in result.regions],
        "stage_seconds": result.timings,
    }


@main.command("demo")
@click.option("--images", type=int, default=1000, show_default=True, help="MNIST test images to use.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_cmd(images, debug):
    """Quantize the bundled MNIST CNN and compare float vs ternary accuracy."""
    try:
        if not 1 <= images <= 10000:
            raise ConfigError("--images must be between 1 and 10000")
        from .demo import run_demo
        run_demo(images=images)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)


if __name__ == "__main__":
    main()
