"""The sections of ``dlac report``'s page, one function per kind of input
(:mod:`compiler.html_report`, :mod:`compiler.report_inputs`).

* binary: its machine, its compile options (META: quantization config, activations,
  source, host ops, fallbacks), its layer table with schedules;
* run report: summary (cycles, latency, TFLOP/s, area, energy, pJ/MAC, TOPS/W, EDP where
  present), machine, area breakdown, per-layer table, plots (cycles, energy, roofline,
  zero-skip speed-up);
* sweep: its parameters, valid / invalid counts, the Pareto plot and table (front over
  latency, energy and area), the best-EDP point with its machine and its layer plots,
  the invalid points with their errors (the first :data:`MAX_ROWS`);
* tuning log: default vs tuned cycles per layer (table and plot).
Section anchors are ``TAG-...`` with ``TAG`` = kind + ordinal (``run1``, ``sweep2``).
"""

from __future__ import annotations

from compiler.report_page import kv_table, note, table
from compiler.report_inputs import number

MAX_ROWS = 200
_LAYER_COLS = ("name", "op", "precision", "on", "cycles", "compute", "load_stall", "store_stall",
               "dense_macs", "issued_macs", "speedup_weights", "speedup_acts", "speedup_total",
               "act_density", "lower_bound_cycles", "pct_of_bound", "dram_bytes", "tflops_equiv",
               "pj_per_mac")


def binary(page, inp, tag) -> None:
    d = inp.data
    page.h(2, f"Binary {inp.path}", tag)
    page.h(3, "Machine")
    page.add(kv_table(d.get("machine") or {}))
    page.h(3, "Compile options")
    opts = {"source": d.get("source"), "source_hash": d.get("source_hash"),
            "activations": d.get("activations"), "act_bits": d.get("act_bits"),
            "format": (d.get("file") or {}).get("format"), "compiler": (d.get("file") or {}).get("compiler"),
            "instructions": d.get("instructions_total"), "constants_bytes": d.get("constants_bytes"),
            "dram_bytes": d.get("dram_bytes"), "host_ops": d.get("host_ops"),
            "fallbacks": d.get("fallbacks"), "tuning": (d.get("meta") or {}).get("tuning")}
    opts.update({f"quant.{k}": v for k, v in (d.get("quant_config") or {}).items()})
    page.add(kv_table(opts))
    page.h(3, "Layers")
    page.add(table(("name", "op", "precision", "pc", "schedule", "min DRAM bytes"),
                   [(l["name"], l["op"], l["precision"], f"{l['pc_start']}-{l['pc_end']}", l.get("schedule"),
                     l.get("min_dram_bytes")) for l in d.get("layers", [])], text_cols=(0, 1, 2, 3, 4)))


def _summary(r: dict) -> dict:
    c = r.get("cycles", {})
    out = {"cycles": c.get("total"), "compute cycles": c.get("compute"), "load stall cycles": c.get("load_stall"),
           "store stall cycles": c.get("store_stall"), "latency (s)": r.get("seconds"),
           "dense-equivalent TFLOP/s": r.get("tflops_equiv"), "TFLOP/s/mm^2": r.get("tflops_per_mm2"),
           "area (mm^2)": r.get("area_mm2"), "dense MACs": r.get("dense_macs"), "host ops": r.get("host_ops")}
    en = r.get("energy_pj")
    if isinstance(en, dict):
        out.update({f"energy {k} (pJ)": en.get(k) for k in ("total", "compute", "onchip", "dram", "static")})
        out.update({"pJ per dense MAC": r.get("pj_per_mac"), "TOPS/W": r.get("tops_per_w"),
                    "EDP (J*s)": r.get("edp_js")})
    return out


def run(page, inp, tag) -> None:
    r = inp.data
    page.h(2, f"Run report {inp.path}", tag)
    page.h(3, "Summary", f"{tag}-summary")
    page.add(kv_table(_summary(r)))
    if not isinstance(r.get("energy_pj"), dict):
        page.add(note("no energy figures in this report (written before the energy model)"))
    page.h(3, "Machine")
    page.add(kv_table(r.get("machine") or {}))
    if isinstance(r.get("area_breakdown_mm2"), dict):
        page.h(3, "Area breakdown (mm^2, model)")
        page.add(kv_table(r["area_breakdown_mm2"]))
    if isinstance(r.get("energy_table"), dict):
        page.add("<details><summary>Energy table used (pJ)</summary>" + kv_table(r["energy_table"])
                 + "</details>")
    layers = r["layers"]
    page.h(3, "Layers", f"{tag}-layers")
    rows = [[l.get(k) for k in _LAYER_COLS] + [(l.get("energy_pj") or {}).get("total")
                                               if isinstance(l.get("energy_pj"), dict) else None]
            for l in layers]
    page.add(table(_LAYER_COLS + ("energy_pj",), rows, text_cols=(0, 1, 2, 3)))
    _layer_plots(page, layers, r.get("machine") or {}, tag)


def _layer_plots(page, layers, machine, tag, roofline=True) -> None:
    from compiler import plots_layers as pl

    page.h(3, "Plots", f"{tag}-plots")
    page.plot(f"{tag}-layer_cycles", lambda: pl.cycles_figure(layers))
    page.plot(f"{tag}-layer_energy", lambda: pl.energy_figure(layers))
    if roofline:
        page.plot(f"{tag}-roofline", lambda: pl.roofline_figure(layers, machine))
        page.plot(f"{tag}-zero_skip", lambda: pl.zero_skip_figure(layers))


def _point_row(p: dict) -> list:
    from compiler.pareto import value

    return [p.get("id"), ", ".join(f"{k}={v}" for k, v in (p.get("params") or {}).items()), p.get("cycles"),
            p.get("latency_s"), value(p, "energy_pj.total"), p.get("area_mm2"), p.get("edp_js"),
            p.get("tops_per_w"), p.get("pj_per_mac")]


_POINT_COLS = ("id", "params", "cycles", "latency (s)", "energy (pJ)", "area (mm^2)", "EDP (J*s)", "TOPS/W",
               "pJ/MAC")


def sweep(page, inp, tag) -> None:
    from compiler import plots_sweep as ps

    h, points = inp.data["header"], inp.data["points"]
    page.h(2, f"Sweep {inp.path}", tag)
    ok = ps.valid_points(points)
    invalid = [p for p in points if p.get("status") != "ok"]
    info = {"model": h.get("model"), "mode": h.get("mode"), "seed": h.get("seed"),
            "schedules": h.get("schedules"), "points planned": h.get("points"), "points in file": len(points),
            "valid": len(ok), "invalid": len(invalid), "compile": h.get("compile")}
    info.update({f"param {k}": v for k, v in (h.get("params") or {}).items()})
    if inp.data.get("torn"):
        info["torn last line (dropped)"] = inp.data["torn"]
    page.add(kv_table(info))
    page.plot(f"{tag}-pareto", lambda: ps.pareto_figure(points))
    if ok:
        front3, _ = ps.fronts(ok)
        page.h(3, f"Pareto front over latency, energy and area ({len(front3)} points)", f"{tag}-pareto")
        front = sorted((ok[i] for i in front3), key=lambda p: number(p.get("latency_s")) or 0.0)
        page.add(table(_POINT_COLS, [_point_row(p) for p in front[:MAX_ROWS]], text_cols=(1,)))
        edp = [p for p in ok if number(p.get("edp_js")) is not None]
        if edp:
            b = min(edp, key=lambda p: number(p["edp_js"]))
            page.h(3, f"Best energy-delay product: point {b.get('id')}", f"{tag}-best")
            page.add(table(_POINT_COLS, [_point_row(b)], text_cols=(1,)))
            page.add(kv_table(b.get("machine") or {}))
            if b.get("layers"):
                _layer_plots(page, b["layers"], b.get("machine") or {}, f"{tag}-best", roofline=False)
    if invalid:
        page.h(3, f"Invalid points ({len(invalid)})", f"{tag}-invalid")
        page.add(table(("id", "params", "error"),
                       [(p.get("id"), ", ".join(f"{k}={v}" for k, v in (p.get("params") or {}).items()),
                         p.get("error")) for p in invalid[:MAX_ROWS]], text_cols=(1, 2)))


def tuning(page, inp, tag) -> None:
    from compiler import plots_sweep as ps

    rows = ps.tuned_layers(inp.data["records"])
    page.h(2, f"Tuning log {inp.path}", tag)
    if inp.data.get("skipped"):
        page.add(note(f"{inp.data['skipped']} unreadable or invalid line(s) skipped"))
    page.add(table(("layer", "op", "precision", "default cycles", "tuned cycles", "speed-up", "lower bound",
                    "trials", "strategy", "schedule"),
                   [(r["name"], r["key"].get("op"), r["key"].get("precision"), r.get("default_cycles"),
                     r.get("cycles"), r["default_cycles"] / r["cycles"] if r.get("cycles") else None,
                     r.get("lower_bound"), r.get("trials"), r.get("strategy"), r.get("schedule"))
                    for r in rows], text_cols=(0, 1, 2, 8, 9)))
    page.plot(f"{tag}-tuning", lambda: ps.tuning_figure(inp.data["records"]))
