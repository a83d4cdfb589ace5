"""``dlac report INPUT... -o REPORT.html``: one self-contained HTML page from binaries, run
reports, sweep files and tuning logs (kinds told from content: :mod:`compiler.report_inputs`;
the page: :mod:`compiler.html_report`).  ``--plots DIR`` also keeps each plot as
``DIR/NAME.png`` and ``DIR/NAME.svg``.  The outputs are checked before any work and written
atomically.  Imports neither TVM nor torch; matplotlib only when it runs."""

from __future__ import annotations

import os

import click

from compiler.cli_args import check_outputs
from compiler.cli_common import _fail, _say
from target_dlac.core.errors import ConfigError


@click.command("report")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, metavar="REPORT.html", help="Write the HTML page here.")
@click.option("--title", default="dlac report", show_default=True, help="Title of the page.")
@click.option("--plots", "plots_dir", metavar="DIR", help="Also write every plot as DIR/NAME.png and .svg.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report_cmd(inputs, output, title, plots_dir, debug):
    """Make an HTML report of INPUT files: .dlac binaries, run reports (dlac run
    --report-json), sweep files (dlac sweep) and tuning logs (dlac tune)."""
    try:
        check_outputs([("-o", output)], [("INPUT", p) for p in inputs])
        if plots_dir is not None and plots_dir and os.path.exists(plots_dir) and not os.path.isdir(plots_dir):
            raise ConfigError(f"--plots {plots_dir!r} exists and is not a directory")
        from compiler.html_report import build_html
        from compiler.report_inputs import load_input
        from target_dlac.core.atomic import atomic_write_text

        loaded = [load_input(p) for p in inputs]
        page, plots = build_html(loaded, title)
        if plots_dir:
            from compiler.plots_render import write

            os.makedirs(plots_dir, exist_ok=True)
            for name, png, svg in plots:
                write(os.path.join(plots_dir, name), png, svg)
        atomic_write_text(output, page)
        _say(f"wrote {output}: {len(loaded)} input(s), {len(plots)} plot(s)"
             + (f", plot files in {plots_dir}/" if plots_dir else ""))
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one clear line, see _fail
        _fail(e, debug)
