"""The HTML pieces of ``dlac report``'s page (:mod:`compiler.html_report`): escaping, cells,
tables, notes and :class:`Page` (which embeds each plot as a base64 PNG data URI, or a
note when it has nothing to plot).  Every text goes through :func:`html.escape` (:func:`esc`).
"""

from __future__ import annotations

import base64
import html

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
         "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}"
         "th{background:#eee}td.t{text-align:left}img{max-width:100%;border:1px solid #ddd}"
         ".note{color:#a05000}")


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def fmt(v) -> str:
    """A cell: ints with separators, floats to 4 significant digits, None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        import json

        return json.dumps(v, sort_keys=True)[:300]
    return str(v)


def table(headers, rows, text_cols=(0,)) -> str:
    """An HTML table; every header and cell escaped."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td{' class=t' if j in text_cols or isinstance(c, str) else ''}>{esc(fmt(c))}</td>"
            for j, c in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def kv_table(d: dict) -> str:
    return table(("", "value"), [(k, v) for k, v in d.items()], text_cols=(0, 1))


def note(text) -> str:
    return f'<p class="note">{esc(text)}</p>'


class Page:
    """The page being built: HTML parts and the plots (``[(name, png, svg)]``)."""

    def __init__(self, title: str):
        self.title, self.parts, self.plots = title, [], []

    def h(self, level: int, text, anchor: str | None = None) -> None:
        a = f' id="{esc(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{a}>{esc(text)}</h{level}>")

    def add(self, raw: str) -> None:
        self.parts.append(raw)

    def plot(self, name: str, make) -> None:
        """Embed ``make()`` (a Figure) as ``name``; a note if it has nothing to plot."""
        from compiler.plots_render import NothingToPlot, render

        try:
            fig = make()
        except NothingToPlot as e:
            self.add(note(f"plot {name} skipped: {e}"))
            return
        png, svg = render(fig)
        self.plots.append((name, png, svg))
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"></figure>')

    def html(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>\n"
                f"<h1>{esc(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")

