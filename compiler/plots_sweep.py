"""Figures of a design-space sweep and of a tuning log (:mod:`compiler.plots`).

* :func:`pareto_figure`: latency against energy of a sweep's points (``dlac sweep``
  records), area as colour (colour bar).  Every valid point is drawn faint; the points
  of the Pareto front over latency, energy and area (:func:`compiler.pareto.pareto_front`)
  are drawn solid with a black edge, and the front of latency and energy alone (the
  trade-off the two axes show) is connected by a line.  Axes are logarithmic when the
  values spread over more than 30x.  Invalid points (a layer no tiling fits) cannot be
  placed; their count is in the title.
* :func:`tuning_figure`: per tuned layer of a tuning log (``dlac tune``), the default
  schedule's cycles against the tuned one's (the best record per layer key), with the
  lower bound marked where the record has one.
"""

from __future__ import annotations

from compiler.plots_render import NothingToPlot, label, log_if_spread, new_figure, si_unit, spread_scale
from compiler.report_inputs import number

PARETO_KEYS = ("latency_s", "energy_pj.total", "area_mm2")


def valid_points(points: list[dict]) -> list[dict]:
    """The points of status ``ok`` with a finite latency, energy and area."""
    from compiler.pareto import value

    return [p for p in points if p.get("status") == "ok"
            and all(number(value(p, k)) is not None for k in PARETO_KEYS)]


def fronts(points: list[dict]) -> tuple[list[int], list[int]]:
    """Indices into ``points`` of the front over latency, energy and area, and of the
    front over latency and energy."""
    from compiler.pareto import pareto_front

    return pareto_front(points, PARETO_KEYS), pareto_front(points, PARETO_KEYS[:2])


def pareto_figure(points: list[dict], title: str = "Design-space sweep"):
    from compiler.pareto import value

    ok = valid_points(points)
    invalid = len(points) - len(ok)
    if not ok:
        raise NothingToPlot(f"no valid point with latency, energy and area ({invalid} invalid)")
    front3, front2 = fronts(ok)
    lat = [value(p, "latency_s") * 1e3 for p in ok]
    div, unit = si_unit([value(p, "energy_pj.total") for p in ok], "J")
    en = [value(p, "energy_pj.total") / div for p in ok]
    area = [value(p, "area_mm2") for p in ok]
    fig, ax = new_figure(8.0, 5.5)
    lo, hi = min(area), max(area)
    norm = dict(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    ax.scatter(lat, en, c=area, cmap="viridis", alpha=0.3, s=14, linewidths=0, **norm,
                    label=f"valid points ({len(ok)})")
    solid = ax.scatter([lat[i] for i in front3], [en[i] for i in front3], c=[area[i] for i in front3],
               cmap="viridis", s=46, edgecolors="black", linewidths=0.9, zorder=3, **norm,
               label=f"Pareto front: latency, energy, area ({len(front3)})")
    line = sorted(front2, key=lambda i: (lat[i], en[i]))
    ax.plot([lat[i] for i in line], [en[i] for i in line], color="#c44e52", linewidth=1.2,
            drawstyle="steps-post", zorder=2, label=f"latency-energy front ({len(front2)})")
    fig.colorbar(solid, ax=ax, label="area (mm$^2$)")
    log_if_spread(ax, lat, "x")
    log_if_spread(ax, en, "y")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(f"energy per inference ({unit}, model)")
    ax.set_title(label(title, 60) + f": {len(points)} points, {invalid} invalid (not shown)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def tuned_layers(records: list[dict]) -> list[dict]:
    """The best record per layer key (:func:`target_dlac.tune.tuning_log.best`), in the
    order of their first line in the log, each with a display ``name``."""
    from target_dlac.tune.tuning_log import best, key_str

    chosen = best(records)
    out, seen = [], set()
    for rec in records:
        k = key_str(rec["key"])
        if k in seen:
            continue
        seen.add(k)
        r = chosen[k]
        name = r.get("layer") if isinstance(r.get("layer"), str) and r.get("layer") else \
            f"{r['key'].get('op', 'layer')} #{len(out)}"
        out.append(dict(r, name=name))
    return out


def tuning_figure(records: list[dict], title: str = "Tuning log"):
    rows = tuned_layers(records)
    if not rows:
        raise NothingToPlot("no valid tuning record")
    fig, ax = new_figure(max(6.0, 0.55 * len(rows) + 3), 4.8)
    width = 0.4
    dflt = [number(r.get("default_cycles")) or 0.0 for r in rows]
    tuned = [number(r.get("cycles")) or 0.0 for r in rows]
    ax.bar([i - width / 2 for i in range(len(rows))], dflt, width, label="default schedule", color="#8c8c8c")
    ax.bar([i + width / 2 for i in range(len(rows))], tuned, width, label="tuned schedule", color="#4c72b0")
    bounds = [(i, number(r.get("lower_bound"))) for i, r in enumerate(rows)]
    bounds = [(i, b) for i, b in bounds if b is not None and b > 0]
    if bounds:
        ax.scatter([i + width / 2 for i, _ in bounds], [b for _, b in bounds], marker="_", s=300,
                   color="black", zorder=3, label="lower bound")
    if spread_scale(dflt + tuned) == "log":
        ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label(r["name"]) for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("cycles (cost model)")
    total_d, total_t = sum(dflt), sum(tuned)
    ax.set_title(label(title, 60) + (f": {len(rows)} layer(s), {total_d / total_t:.2f}x fewer cycles in total"
                                     if total_t else f": {len(rows)} layer(s)"), fontsize=10)
    ax.legend(fontsize=8)
    return fig
