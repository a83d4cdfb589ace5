"""What every plot of :mod:`compiler.plots` shares: a new figure, its PNG and SVG bytes, the
atomic save, text from files made safe for matplotlib, and the axis scale choice.

matplotlib is imported inside the functions (the CLI imports without it: it is in the
``plot`` and ``test`` extras) and only through its object API (``Figure`` with the Agg
canvas, never ``pyplot``): no global figure state, no display needed.  :func:`save`
renders both formats into memory first and writes them with
:func:`target_dlac.core.atomic.atomic_write_bytes` only once both exist: a rendering that
fails writes nothing and leaves the previous files as they were; each file is either
the old one or the complete new one.  SVG output is made reproducible (a fixed hash salt,
no date).
"""

from __future__ import annotations

import io

from target_dlac.core.errors import DlacError
from target_dlac.core.text import printable

#: a plotted name is cut to this many characters
LABEL_CHARS = 28
#: an axis goes logarithmic when its positive values spread over more than this factor
LOG_SPREAD = 30.0


class NothingToPlot(DlacError):
    """The data holds nothing this plot shows (the message says what is missing)."""


def new_figure(width: float = 8.0, height: float = 4.5):
    """``(figure, axes)``: a matplotlib Figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def render(fig) -> tuple[bytes, bytes]:
    """``(png, svg)`` bytes of ``fig``."""
    import matplotlib

    out = []
    with matplotlib.rc_context({"svg.hashsalt": "dlac", "svg.fonttype": "path"}):
        for fmt in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            out.append(buf.getvalue())
    return out[0], out[1]


def write(base: str, png: bytes, svg: bytes) -> list[str]:
    """Write ``BASE.png`` and ``BASE.svg`` atomically; their paths."""
    from target_dlac.core.atomic import atomic_write_bytes

    paths = [f"{base}.png", f"{base}.svg"]
    for p, data in zip(paths, (png, svg)):
        atomic_write_bytes(p, data)
    return paths


def save(fig, base: str) -> list[str]:
    """Render ``fig`` to PNG and SVG in memory, then write both (:func:`write`)."""
    png, svg = render(fig)
    return write(base, png, svg)


def label(text, chars: int = LABEL_CHARS) -> str:
    """A name from a file as plot text: one printable line, at most ``chars`` characters,
    ``$`` escaped (matplotlib would read ``$...$`` as math and fail on an odd count)."""
    s = printable(str(text))
    if len(s) > chars:
        s = s[:chars - 1] + "\u2026"
    return s.replace("$", r"\$")


def spread_scale(values) -> str:
    """``"log"`` if the positive ``values`` spread over more than :data:`LOG_SPREAD`, else
    ``"linear"``."""
    pos = [v for v in values if v is not None and v > 0]
    return "log" if pos and max(pos) / min(pos) > LOG_SPREAD else "linear"


def si_unit(values, unit: str, scales=(("p", 1.0), ("n", 1e3), ("u", 1e6), ("m", 1e9), ("", 1e12))):
    """``(divisor, unit name)`` so that the largest of ``values`` (in the smallest unit of
    ``scales``) reads between 1 and 1000: ``si_unit([2e7], "J")`` -> ``(1e6, "uJ")``."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    best = scales[0]
    for prefix, div in scales:
        if top >= div:
            best = (prefix, div)
    return best[1], best[0] + unit


def log_if_spread(ax, values, axis: str = "y") -> None:
    """Make ``ax``'s ``axis`` logarithmic when :func:`spread_scale` says so."""
    if spread_scale(values) == "log":
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
