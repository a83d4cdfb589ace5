"""``dlac report``'s page: one self-contained HTML file from binaries, run reports, sweep
files and tuning logs (:mod:`compiler.report_inputs`).

:func:`build_html` returns the page and the plots it holds (``[(name, png, svg)]``).  The
page has no external resource and no script: its style is inline, every plot is an
``<img>`` with a base64 PNG data URI.  Every text that comes from an input file (layer
names, parameters, errors, schedules, ...) goes through :func:`html.escape`
(:func:`compiler.report_page.esc`): a name holding ``<script>`` comes out as text.  The
sections per kind of input are :mod:`compiler.report_sections`'s; a plot whose data is
absent (a report written before the energy model) is replaced by a note saying what is
missing.  Sections come in the order of the inputs.
"""

from __future__ import annotations

from compiler import report_sections as rs
from compiler.report_page import Page, table

SECTIONS = {"binary": rs.binary, "run": rs.run, "sweep": rs.sweep, "tuning": rs.tuning}


def build_html(inputs, title: str = "dlac report") -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """``(page, plots)`` of the :class:`~compiler.report_inputs.ReportInput` list ``inputs``."""
    page = Page(title)
    page.h(2, "Inputs", "inputs")
    page.add(table(("file", "kind"), [(i.path, i.kind) for i in inputs], text_cols=(0, 1)))
    counts: dict = {}
    for inp in inputs:
        counts[inp.kind] = counts.get(inp.kind, 0) + 1
        tag = f"{inp.kind}{counts[inp.kind]}"
        SECTIONS[inp.kind](page, inp, tag)
    return page.html(), page.plots
