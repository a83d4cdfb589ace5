"""What the ``dlac`` commands share: the one-line error exit (:func:`_fail`, exit codes
1 / 2 / 3), escaped printing of text that comes from a file (:func:`_say`), the model,
quantization and machine options of ``compile`` and ``tune`` (:func:`model_options`)
and the :class:`QuantConfig` they make (:func:`_quant_config`)."""

from __future__ import annotations

import sys

import click

from compiler.cli_args import parse_precisions, printable, printable_lines
from compiler.config import QuantConfig, check_relu_threshold, precision_file
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
                 help="Keep the output heads at full precision: the last layer and every layer "
                      "whose output reaches a model output with no other conv/dense in between."),
    click.option("--precision", "precisions", multiple=True, metavar="PATTERN=PREC|FILE.toml",
                 help="Per-layer precision, fnmatch on layer names (repeatable; a .toml file holds "
                      "\"pattern\" = \"precision\" pairs, [activations] types, [relu_threshold] "
                      "\"pattern\" = T numbers)."),
    click.option("--relu-threshold", "relu_thresholds", multiple=True, metavar="PATTERN=T",
                 help="The fused ReLU of the matched layers outputs x if x > T else 0 (T >= 0; 0 = "
                      "plain ReLU), fnmatch on layer names (repeatable; first match wins; matched layers "
                      "without a fused ReLU are skipped, a pattern must match one with it)."),
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


def parse_relu_thresholds(specs) -> dict:
    """``PATTERN=T`` strings of ``--relu-threshold`` -> ``{pattern: T}`` (T a finite float
    >= 0); a malformed one is a one-line :class:`ConfigError` naming it."""
    out: dict = {}
    for spec in specs:
        pattern, sep, value = str(spec).rpartition("=")
        what = f"--relu-threshold {spec!r}"
        if not sep or not pattern:
            raise ConfigError(f"{what}: expected PATTERN=T (e.g. 'conv_layers.3=0.5')")
        try:
            t = float(value)
        except ValueError:
            raise ConfigError(f"{what}: threshold {value!r} is not a number") from None
        out[pattern] = check_relu_threshold(pattern, t, "--relu-threshold")
    return out


def _quant_config(quant, granularity, cluster_size, precisions, act_precisions, swis_shifts,
                  swis_consecutive, keep_first, keep_last, relu_thresholds=()) -> QuantConfig:
    """The :class:`QuantConfig` of the shared options (``precisions``: ``PATTERN=PREC`` or
    precision files, whose ``[relu_threshold]`` tables come before ``relu_thresholds``)."""
    weights, default_n = QUANT_WEIGHTS[quant]
    acts: dict = {}
    overrides: dict = {}
    relus: dict = {}
    for spec in precisions:
        if spec.endswith(".toml"):
            w, a, r = precision_file(spec)
            overrides.update(w)
            acts.update(a)
            relus.update(r)
        else:
            overrides.update(parse_precisions([spec]))
    acts.update(parse_precisions(act_precisions))
    relus.update(parse_relu_thresholds(relu_thresholds))
    return QuantConfig(weights=weights, granularity=granularity,
                       cluster_size=default_n if cluster_size is None else cluster_size,
                       swis_shifts=swis_shifts, swis_consecutive=swis_consecutive,
                       keep_first=keep_first, keep_last=keep_last,
                       overrides=overrides, activation_overrides=acts, relu_thresholds=relus)
