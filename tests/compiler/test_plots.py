"""compiler.plots: every plot writes a PNG and an SVG that read back, atomically (a failure
mid-way leaves no partial file and the previous files intact), names from files are
drawn as text (``$`` never parsed as math), and data without what a plot needs is
NothingToPlot, not an empty figure."""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from compiler import plots  # noqa: E402
from compiler.plots_layers import roofline_points, roofs  # noqa: E402
from compiler.plots_sweep import fronts, tuned_layers, valid_points  # noqa: E402

MACHINE = {"clock_mhz": 500.0, "pe_rows": 16, "pe_cols": 32, "lanes": 1, "dram_bytes_per_cycle": 64}


def layer(name, cycles, on="dlac", energy=True):
    d = {"name": name, "op": "host" if on == "host" else "conv2d", "on": on, "cycles": cycles,
         "compute": cycles // 2, "load_stall": cycles // 4, "store_stall": cycles - cycles // 2 - cycles // 4,
         "dense_macs": 1000 * cycles, "dram_bytes": 100 * cycles, "tflops_equiv": 0.1 + cycles / 1e4,
         "speedup_weights": 2.0, "speedup_acts": 1.5, "speedup_total": 3.0}
    if energy:
        d["energy_pj"] = {"total": 10.0 * cycles, "compute": 1.0 * cycles, "onchip": 2.0 * cycles,
                          "dram": 6.0 * cycles, "static": 1.0 * cycles}
    return d


LAYERS = [layer("conv1 $x_{", 400), layer("<script>alert(1)</script>", 900), layer("host:op", 2, on="host"),
          layer("fc", 100)]


def check_files(paths):
    png, svg = paths
    assert png.endswith(".png") and svg.endswith(".svg")
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(data)).verify()
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")


@pytest.mark.parametrize("fn,args", [
    (plots.layer_cycles_plot, (LAYERS,)), (plots.layer_energy_plot, (LAYERS,)),
    (plots.roofline_plot, (LAYERS, MACHINE)), (plots.zero_skip_plot, (LAYERS,))])
def test_layer_plots_write_valid_files(tmp_path, fn, args):
    check_files(fn(*args, str(tmp_path / "p")))
    assert sorted(os.listdir(tmp_path)) == ["p.png", "p.svg"]      # no temporary file left


def test_missing_data_is_nothing_to_plot(tmp_path):
    old = [layer("a", 10, energy=False)]
    with pytest.raises(plots.NothingToPlot, match="energy_pj"):
        plots.layer_energy_plot(old, str(tmp_path / "e"))
    with pytest.raises(plots.NothingToPlot):
        plots.roofline_plot([layer("h", 2, on="host")], MACHINE, str(tmp_path / "r"))
    with pytest.raises(plots.NothingToPlot, match="invalid"):
        plots.pareto_plot([{"status": "invalid"}], str(tmp_path / "s"))
    assert os.listdir(tmp_path) == []


def test_roofs_and_points_against_hand_numbers():
    r = roofs(MACHINE)
    assert r["compute"] == pytest.approx(2 * 16 * 32 * 500e6 / 1e12)
    assert r["bandwidth"] == pytest.approx(64 * 500e6)
    pts = roofline_points(LAYERS)
    assert [p[0] for p in pts] == ["conv1 $x_{", "<script>alert(1)</script>", "fc"]   # not the host
    assert pts[0][1] == pytest.approx(2 * 400_000 / 40_000)


def sweep_points():
    pts = []
    for i, (lat, en, area) in enumerate([(1e-3, 5e6, 2.0), (2e-3, 3e6, 2.0), (3e-3, 4e6, 1.0),
                                         (4e-3, 6e6, 3.0), (1.5e-3, 4e6, 2.5)]):
        pts.append({"kind": "point", "id": i, "status": "ok", "params": {"pe_rows": 8 * (i + 1)},
                    "latency_s": lat, "energy_pj": {"total": en, "compute": en / 2, "onchip": en / 4,
                                                    "dram": en / 8, "static": en / 8},
                    "area_mm2": area, "edp_js": lat * en * 1e-12, "layers": [layer("c", 10)]})
    pts.append({"kind": "point", "id": 5, "status": "invalid", "error": "layer c: no tiling fits",
                "params": {"pe_rows": 1}, "latency_s": None, "energy_pj": None, "area_mm2": None})
    return pts


def test_pareto_fronts_against_brute_force(tmp_path):
    pts = sweep_points()
    ok = valid_points(pts)
    assert len(ok) == 5
    f3, f2 = fronts(ok)
    key = lambda p, ks: tuple(p[k] if k != "energy_pj" else p[k]["total"] for k in ks)   # noqa: E731

    def brute(ks):
        return [i for i, p in enumerate(ok) if not any(
            all(a <= b for a, b in zip(key(q, ks), key(p, ks))) and key(q, ks) != key(p, ks) for q in ok)]

    assert f3 == brute(("latency_s", "energy_pj", "area_mm2"))
    assert f2 == brute(("latency_s", "energy_pj"))
    assert f2 == [0, 1, 4] and 3 not in f3
    check_files(plots.pareto_plot(pts, str(tmp_path / "pareto")))


def test_tuning_plot_best_record_per_key(tmp_path):
    def rec(layer_name, key, cycles, dflt=1000):
        return {"key": {"op": "conv2d", "k": key}, "layer": layer_name, "cycles": cycles,
                "default_cycles": dflt, "lower_bound": 100, "trials": 5, "schedule": {}}
    recs = [rec("a", 1, 800), rec("b", 2, 700), rec("a", 1, 600)]
    rows = tuned_layers(recs)
    assert [(r["name"], r["cycles"]) for r in rows] == [("a", 600), ("b", 700)]
    check_files(plots.tuning_plot(recs, str(tmp_path / "t")))


def test_failure_mid_way_leaves_previous_files(tmp_path, monkeypatch):
    base = str(tmp_path / "p")
    for ext in ("png", "svg"):
        (tmp_path / f"p.{ext}").write_bytes(b"old " + ext.encode())
    from matplotlib.figure import Figure

    real = Figure.savefig

    def fail_on_svg(self, buf, format=None, **kw):
        if format == "svg":
            raise RuntimeError("renderer died")
        return real(self, buf, format=format, **kw)

    monkeypatch.setattr(Figure, "savefig", fail_on_svg)
    with pytest.raises(RuntimeError):
        plots.layer_cycles_plot(LAYERS, base)
    monkeypatch.setattr(Figure, "savefig", real)
    assert (tmp_path / "p.png").read_bytes() == b"old png"          # rendering failed: nothing written
    # the write itself fails (disk full at fsync): the old file stays, no temporary is left
    import target_dlac.core.atomic as atomic

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(Exception, match="No space"):
        plots.layer_cycles_plot(LAYERS, base)
    assert sorted(os.listdir(tmp_path)) == ["p.png", "p.svg"]
    assert (tmp_path / "p.png").read_bytes() == b"old png"
    assert (tmp_path / "p.svg").read_bytes() == b"old svg"
