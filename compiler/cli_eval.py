"""``dlac eval BINARY --data mnist|FILE.npz``: top-1 (and top-5) accuracy of a classifier
binary in the ISA interpreter on a labelled dataset, with the cycles and energy per input,
optionally side by side with the binary's TVM reference (``--reference``).  Data and its
checks: :mod:`compiler.eval_data`; the run (local, ``--jobs``, ``--dask``):
:mod:`compiler.eval_run`; the report's schema: docs/eval.md.  Registered on the group in
:mod:`compiler.cli` as ``eval_cmd``.  No TVM / torch import unless the binary has host ops,
``--reference`` is given or ``--data mnist`` is used (the MNIST reader imports neither)."""

from __future__ import annotations

import math
import sys

import click

from compiler.cli_args import check_outputs, strict_json
from compiler.cli_common import _fail, _say
from compiler.tables import Table, format_option, text_to_stderr
from target_dlac.core.errors import ConfigError

#: the report's keys that a CSV / JSON row of ``--format`` leaves out (per-image lists)
_ROW_SKIP = ("per_image",)


def summary_row(rep: dict) -> dict:
    """The one row of ``--format csv|json``: the report without its per-image lists."""
    return {k: v for k, v in rep.items() if k not in _ROW_SKIP and not k.startswith("_")}


def text_lines(rep: dict) -> list[str]:
    c, e = rep["cycles"], rep["energy_pj"]
    top5 = f", top-5 {100 * rep['top5']:.2f}%" if rep["top5"] is not None else ""
    where = f"Dask {rep['dask']}" if rep["dask"] else f"{rep['jobs']} process(es)"
    lines = [f"binary {rep['binary']['path']} (sha256 {rep['binary']['sha256'][:16]}), data {rep['data']['source']}",
             f"accuracy (interpreter): top-1 {100 * rep['accuracy']:.2f}% ({rep['correct']:,} of "
             f"{rep['images']:,}){top5}",
             f"cycles per input: mean {c['mean']:,.1f}, min {c['min']:,}, max {c['max']:,}, std {c['std']:,.1f}; "
             f"energy per input {e['mean'] / 1e6:,.3f} uJ",
             f"{rep['images']:,} images in {rep['seconds']:.2f} s ({rep['images_per_s'] or 0:,.1f} images/s; "
             f"batch {rep['batch']}, {rep['chunks']} chunk(s), {where})"]
    if rep["nonfinite_outputs"]:
        lines.append(f"warning: {rep['nonfinite_outputs']:,} image(s) have NaN/Inf class scores")
    r = rep["reference"]
    if r:
        top5 = f", top-5 {100 * r['top5']:.2f}%" if r["top5"] is not None else ""
        diff = "-" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.3g}"
        lines.append(f"accuracy (TVM reference): top-1 {100 * r['accuracy']:.2f}%{top5}; same top-1 "
                     f"prediction on {r['agree']:,} of {rep['images']:,} images ({100 * r['agreement']:.2f}%); "
                     f"max abs logit difference {diff}")
    return lines


class _Progress:
    """A click progress bar on stderr (images done of the total)."""

    def __init__(self, total: int, label: str):
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                                     show_eta=True)
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.bar.render_finish()


@click.command("eval")
@click.argument("binary")
@click.option("--data", required=True, metavar="mnist|FILE.npz",
              help="The labelled images: the bundled MNIST test set (normalized for the bundled CNN), "
                   "or an .npz with x (inputs, items of the binary's input shape, its leading 1 optional) "
                   "and y (integer labels in [0, classes)).")
@click.option("--limit", type=int, metavar="N", help="The first N images only.")
@click.option("--scale", metavar="S", help="FILE.npz: multiply x by S first (e.g. 0.00392156862745098 = 1/255).")
@click.option("--mean", metavar="M[,M...]", help="FILE.npz: then subtract M (a scalar or one per channel, axis 1 "
                                                 "of the input); needs --std.")
@click.option("--std", metavar="S[,S...]", help="FILE.npz: then divide by S (scalar or per channel).")
@click.option("--batch", type=int, metavar="B",
              help="Inputs per interpreter pass (default 64, capped by the memory bound of "
                   "target_dlac.sim.batch).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--dask", metavar="ADDRESS|local",
              help="Run on the Dask cluster at ADDRESS (tcp://host:port), or 'local' for a LocalCluster "
                   "of 2 workers; every worker needs dlac installed.")
@click.option("--dask-timeout", type=float, default=60.0, show_default=True, metavar="S",
              help="Seconds to wait for usable Dask workers.")
@click.option("--reference", is_flag=True,
              help="Also run the binary's TVM reference on every image: its accuracy, the agreement "
                   "with the interpreter and the max abs logit difference.")
@click.option("--report-json", metavar="FILE", help="Write the report (docs/eval.md) as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@format_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def eval_cmd(binary, data, limit, scale, mean, std, batch, jobs, dask, dask_timeout, reference, report_json,
             no_progress, fmt, debug):
    """Accuracy of the classifier BINARY in the ISA interpreter on a labelled dataset.

    ``--format csv|json`` prints the report's figures as one row (no per-image lists; nested
    figures as ``cycles.mean`` ... columns in CSV) instead of the text lines, which then go
    to stderr."""
    try:
        with text_to_stderr(fmt):
            check_outputs([("--report-json", report_json)],
                          [("BINARY", binary), ("--data", None if data == "mnist" else data)])
            if jobs < 1:
                raise ConfigError(f"--jobs {jobs}: expected at least 1")
            if dask and jobs != 1:
                raise ConfigError("--jobs and --dask both choose where the work runs: give one of them")
            if not (math.isfinite(dask_timeout) and dask_timeout > 0):
                raise ConfigError(f"--dask-timeout {dask_timeout}: expected a positive number of seconds")
            if batch is not None and batch < 1:
                raise ConfigError(f"--batch {batch}: expected a positive integer")

            from target_dlac.binary.container import read_program

            from compiler.eval_data import load_dataset
            from compiler.eval_run import evaluate

            program = read_program(binary)
            ds = load_dataset(data, program, limit, scale, mean, std)
            bar = None if no_progress else _Progress(len(ds), "dlac eval")
            try:
                rep = evaluate(binary, ds, batch=batch, jobs=jobs, dask=dask, dask_timeout=dask_timeout,
                               reference=reference, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            out = {k: v for k, v in rep.items() if not k.startswith("_")}
            if report_json:
                from target_dlac.core.atomic import atomic_write_text

                atomic_write_text(report_json, strict_json(out, indent=2))
            for line in text_lines(out):         # on stderr with --format csv / json
                _say(line)
        if fmt != "table":
            Table([summary_row(out)]).emit(fmt)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)
