"""Per-layer figures of a run report or of one sweep point (:mod:`compiler.plots`).

Each function takes a list of layer dicts as ``dlac run --report-json`` writes them
(``target_dlac.sim.report.LayerReport.to_dict``; a sweep point's ``layers`` hold the
cycle and energy fields only) and returns a matplotlib Figure, or raises
:class:`~compiler.plots_render.NothingToPlot` when the layers lack what it shows (an
older report without ``energy_pj``, a sweep point without DRAM bytes for a roofline).

* :func:`cycles_figure`: stacked compute / load stall / store stall cycles per layer;
  a host layer (``on: "host"``) gets no bar but a "host" mark at its place (its dLAC
  cycles are the 1-cycle hand-off; its time is the host CPU's).
* :func:`energy_figure`: stacked compute / on-chip / DRAM / static energy per layer.
* :func:`roofline_figure`: x = arithmetic intensity (2 x dense MACs / DRAM bytes, FLOP
  per byte), y = dense-equivalent TFLOP/s, log-log, with the machine's compute roof
  (2 x PE rows x PE columns x lanes x clock; fp16 doubles the lanes: drawn dashed) and
  its DRAM bandwidth roof (bytes per cycle x clock x intensity).  Dense-equivalent
  throughput counts skipped zeros as work done, so a zero-skipping layer can sit above
  the roofs: the figure says so.  Only dLAC layers with MACs and DRAM traffic are points.
* :func:`zero_skip_figure`: speed-up from skipping zero weights / zero activations /
  both, per dLAC layer with MACs.
"""

from __future__ import annotations

from compiler.plots_render import NothingToPlot, label, new_figure, si_unit
from compiler.report_inputs import number

ENERGY_PARTS = (("compute", "compute"), ("onchip", "on-chip buffers"), ("dram", "DRAM"),
                ("static", "static (leakage)"))
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3")


def _is_host(l: dict) -> bool:
    return l.get("on") == "host" or l.get("op") == "host"


def _xticks(ax, names, host=()):
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([label(n) + (" (host)" if i in host else "") for i, n in enumerate(names)],
                       rotation=60, ha="right", fontsize=8)


def cycles_figure(layers: list[dict], title: str = "Cycles per layer"):
    if not layers:
        raise NothingToPlot("no layers")
    fig, ax = new_figure(max(6.0, 0.45 * len(layers) + 3), 4.8)
    host = {i for i, l in enumerate(layers) if _is_host(l)}
    bottom = [0.0] * len(layers)
    for (key, name), colour in zip((("compute", "compute"), ("load_stall", "load stall"),
                                    ("store_stall", "store stall")), _COLOURS):
        vals = [0.0 if i in host else (number(l.get(key)) or 0.0) for i, l in enumerate(layers)]
        ax.bar(range(len(layers)), vals, bottom=bottom, label=name, color=colour)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i in sorted(host):
        ax.annotate("host", (i, 0), xytext=(0, 4), textcoords="offset points", ha="center",
                    va="bottom", rotation=90, fontsize=8, color="#555555")
    _xticks(ax, [l["name"] for l in layers], host)
    ax.set_ylabel("cycles")
    ax.set_title(label(title, 80) + (f" ({len(host)} host layer(s): run on the host CPU, no dLAC bar)"
                                     if host else ""), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def energy_figure(layers: list[dict], title: str = "Energy per layer"):
    rows = [(i, l) for i, l in enumerate(layers) if isinstance(l.get("energy_pj"), dict)]
    if not rows:
        raise NothingToPlot("no layer has energy_pj (a report written before the energy model)")
    div, unit = si_unit([number(l["energy_pj"].get("total")) for _, l in rows], "J")
    fig, ax = new_figure(max(6.0, 0.45 * len(rows) + 3), 4.8)
    bottom = [0.0] * len(rows)
    for (key, name), colour in zip(ENERGY_PARTS, _COLOURS):
        vals = [(number(l["energy_pj"].get(key)) or 0.0) / div for _, l in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, label=name, color=colour)
        bottom = [b + v for b, v in zip(bottom, vals)]
    _xticks(ax, [l["name"] for _, l in rows])
    ax.set_ylabel(f"energy ({unit}, model)")
    ax.set_title(label(title, 80), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def roofs(machine: dict) -> dict:
    """``{"compute": TFLOP/s, "compute_fp16": TFLOP/s, "bandwidth": bytes/s}`` of a machine
    dict (``Machine.to_dict``)."""
    clock = (number(machine.get("clock_mhz")) or 0.0) * 1e6
    lanes = (number(machine.get("pe_rows")) or 0) * (number(machine.get("pe_cols")) or 0) \
        * (number(machine.get("lanes")) or 0)
    bw = (number(machine.get("dram_bytes_per_cycle")) or 0.0) * clock
    return {"compute": 2 * lanes * clock / 1e12, "compute_fp16": 4 * lanes * clock / 1e12,
            "bandwidth": bw}


def roofline_points(layers: list[dict]) -> list[tuple[str, float, float]]:
    """``(name, FLOP per DRAM byte, dense-equivalent TFLOP/s)`` of the dLAC layers with
    dense MACs, DRAM bytes and a throughput."""
    out = []
    for l in layers:
        macs, dram, tf = (number(l.get(k)) for k in ("dense_macs", "dram_bytes", "tflops_equiv"))
        if not _is_host(l) and macs and dram and tf and macs > 0 and dram > 0 and tf > 0:
            out.append((l["name"], 2 * macs / dram, tf))
    return out


def roofline_figure(layers: list[dict], machine: dict, title: str = "Roofline per layer"):
    pts = roofline_points(layers)
    if not pts:
        raise NothingToPlot("no dLAC layer with dense_macs, dram_bytes and tflops_equiv")
    r = roofs(machine or {})
    if not (r["compute"] > 0 and r["bandwidth"] > 0):
        raise NothingToPlot("the machine lacks clock_mhz, pe_rows, pe_cols, lanes or dram_bytes_per_cycle")
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    knee = r["compute"] * 1e12 / r["bandwidth"]
    lo = min(min(xs), knee) / 4
    hi = max(max(xs), knee * 2) * 4
    grid = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    fig, ax = new_figure(8.0, 5.2)
    ax.plot(grid, [min(r["compute"], r["bandwidth"] * x / 1e12) for x in grid], color="black",
            label=f"roof: {r['compute']:.3g} TFLOP/s compute, {r['bandwidth'] / 1e9:.3g} GB/s DRAM")
    ax.plot(grid, [min(r["compute_fp16"], r["bandwidth"] * x / 1e12) for x in grid], color="black",
            linestyle="--", linewidth=0.8, label=f"fp16 compute roof ({r['compute_fp16']:.3g} TFLOP/s)")
    ax.scatter(xs, ys, color=_COLOURS[1], zorder=3, label="layers (dense-equivalent)")
    for name, x, y in pts:
        ax.annotate(label(name, 18), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (dense FLOP per DRAM byte)")
    ax.set_ylabel("dense-equivalent TFLOP/s")
    ax.set_title(label(title, 60) + "\n(skipped zeros count as work: zero-skipping layers may pass a roof)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def zero_skip_figure(layers: list[dict], title: str = "Zero-skip speed-up per layer"):
    rows = [l for l in layers if not _is_host(l) and (number(l.get("dense_macs")) or 0) > 0
            and number(l.get("speedup_total", l.get("zero_skip_speedup"))) is not None]
    if not rows:
        raise NothingToPlot("no dLAC layer with MACs and a zero-skip speed-up")
    fig, ax = new_figure(max(6.0, 0.6 * len(rows) + 3), 4.5)
    width = 0.27
    for k, ((key, name), colour) in enumerate(zip((("speedup_weights", "zero weights"),
                                                    ("speedup_acts", "zero activations"),
                                                    ("speedup_total", "both")), _COLOURS)):
        vals = [number(l.get(key, l.get("zero_skip_speedup") if key == "speedup_total" else 1.0)) or 0.0
                for l in rows]
        ax.bar([i + (k - 1) * width for i in range(len(rows))], vals, width, label=name, color=colour)
    ax.axhline(1.0, color="black", linewidth=0.8)
    _xticks(ax, [l["name"] for l in rows])
    ax.set_ylabel("speed-up (x) over issuing every weight and activation")
    ax.set_title(label(title, 80), fontsize=10)
    ax.legend(fontsize=8)
    return fig

