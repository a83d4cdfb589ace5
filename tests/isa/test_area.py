"""The area model: the default machine is the published 2.2 mm^2, and the area follows the
machine's parameters (monotone in every buffer and the array, zero-skip granularity)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from target_dlac.core.errors import ConfigError
from target_dlac.isa import area
from target_dlac.isa.limits import MAX_BUFFER_BYTES, MAX_LANES, MAX_PES
from target_dlac.isa.machine import Machine

SMALL = Machine(pe_rows=1, pe_cols=1, lanes=1, wgt_buf_kib=1, inp_buf_kib=1, obuf_bytes_per_pe=4,
                dram_bytes_per_cycle=1, act_skip="column")
LARGE = Machine(pe_rows=256, pe_cols=MAX_PES // 256, lanes=MAX_LANES,
                wgt_buf_kib=MAX_BUFFER_BYTES // 1024, inp_buf_kib=MAX_BUFFER_BYTES // 1024,
                obuf_bytes_per_pe=MAX_BUFFER_BYTES // MAX_PES, dram_bytes_per_cycle=4096,
                swis_shifts_per_pass=2, act_skip="pe")


def test_default_machine_is_the_published_area():
    assert area.area_mm2(Machine()) == pytest.approx(2.2, rel=1e-9, abs=0)
    assert area.area_breakdown(Machine())["total"] == pytest.approx(area.PUBLISHED_AREA_MM2, rel=1e-9)


def test_calibration_is_one_plausible_factor():
    """The unit figures alone fill between half and all of the published die."""
    raw = sum(area.raw_breakdown_um2(Machine()).values()) / 1e6
    assert 1.0 < area.CALIBRATION < 2.0
    assert raw * area.CALIBRATION == pytest.approx(2.2, rel=1e-12)
    # each calibrated component is its raw area times the same factor
    cal, raw_b = area.area_breakdown(Machine()), area.raw_breakdown_um2(Machine())
    for k in area.COMPONENTS:
        assert cal[k] == pytest.approx(raw_b[k] * area.CALIBRATION / 1e6, rel=1e-12)


def test_default_breakdown_by_hand():
    """The SRAM and lane formulas, recomputed from the cited constants."""
    m, k = Machine(), area.CALIBRATION
    b = area.area_breakdown(m)
    wgt = (256 * 1024 * 8 * 0.0588 / 0.7 + 8 * 500.0) * k / 1e6       # 8 macros of 32 KiB
    acc = 512 * (512 * 8 * 0.0588 / 0.7 + 500.0) * k / 1e6             # one macro per PE
    lane = (7700 + 2 * 4184 + 3495 + 137) * (14 / 45) ** 2 + 5 * 32 * 12 / 37.5
    assert b["wgt_buf"] == pytest.approx(wgt, rel=1e-12)
    assert b["inp_buf"] == pytest.approx(wgt, rel=1e-12)
    assert b["acc_buf"] == pytest.approx(acc, rel=1e-12)
    assert b["pe_array"] == pytest.approx(512 * lane * k / 1e6, rel=1e-12)


@pytest.mark.parametrize("m", [Machine(), SMALL, LARGE, Machine(act_skip="none")])
def test_breakdown_sums_to_total_positive_finite(m):
    b = area.area_breakdown(m)
    assert set(b) == set(area.COMPONENTS) | {"total"}
    assert math.fsum(b[k] for k in area.COMPONENTS) == pytest.approx(b["total"], rel=1e-12)
    for k in area.COMPONENTS:
        assert math.isfinite(b[k]) and (b[k] > 0 or (k == "zero_skip" and m.act_skip == "none"))
    lanes = area.pe_array_breakdown(m)
    assert set(lanes) == set(area.LANE_PARTS) and all(v > 0 for v in lanes.values())
    assert math.fsum(lanes.values()) == pytest.approx(b["pe_array"], rel=1e-12)


def test_limits_order():
    assert 0 < area.area_mm2(SMALL) < area.area_mm2(Machine()) < area.area_mm2(LARGE) < math.inf


@pytest.mark.parametrize("name, values", [
    ("wgt_buf_kib", [1, 2, 31, 32, 33, 64, 256, 257, 4096, 16384]),
    ("inp_buf_kib", [1, 2, 31, 32, 33, 64, 256, 257, 4096, 16384]),
    ("obuf_bytes_per_pe", [1, 4, 511, 512, 513, 4096, 32768, 32769]),
    ("pe_rows", [1, 2, 3, 16, 17, 64, 256]),
    ("pe_cols", [1, 2, 3, 32, 33, 64, 256]),
    ("lanes", [1, 2, 3, 8, MAX_LANES]),
    ("dram_bytes_per_cycle", [1, 2, 3, 64, 65, 1024]),
    ("swis_shifts_per_pass", [1, 2, 3]),
])
@pytest.mark.parametrize("act_skip", ["none", "column", "pe"])
def test_area_grows_strictly_with_each_parameter(name, values, act_skip):
    base = Machine(act_skip=act_skip)
    if name == "obuf_bytes_per_pe":       # keep ACC within the buffer limit
        base = dataclasses.replace(base, pe_rows=4, pe_cols=8)
    areas = [area.area_mm2(dataclasses.replace(base, **{name: v})) for v in values]
    assert all(a < b for a, b in zip(areas, areas[1:])), (name, areas)


@pytest.mark.parametrize("name, component", [
    ("wgt_buf_kib", "wgt_buf"), ("inp_buf_kib", "inp_buf"), ("obuf_bytes_per_pe", "acc_buf"),
    ("lanes", "pe_array"), ("pe_rows", "acc_buf"), ("pe_cols", "control"),
])
def test_each_parameter_moves_its_own_component(name, component):
    small, big = Machine(), dataclasses.replace(Machine(), **{name: 2 * getattr(Machine(), name)})
    assert area.area_breakdown(big)[component] > area.area_breakdown(small)[component]


def test_buffer_does_not_touch_other_components():
    a, b = area.area_breakdown(Machine()), area.area_breakdown(Machine(wgt_buf_kib=512))
    assert b["wgt_buf"] > a["wgt_buf"]
    assert all(a[k] == b[k] for k in area.COMPONENTS if k != "wgt_buf")


@pytest.mark.parametrize("m", [Machine(), SMALL, LARGE, Machine(pe_rows=1, lanes=64),
                               Machine(pe_rows=256, pe_cols=1)])
def test_act_skip_pe_over_column_over_none(m):
    z = {s: area.area_breakdown(dataclasses.replace(m, act_skip=s)) for s in ("none", "column", "pe")}
    assert z["pe"]["zero_skip"] > z["column"]["zero_skip"] > z["none"]["zero_skip"] == 0.0
    assert z["pe"]["total"] > z["column"]["total"] > z["none"]["total"]
    for k in ("pe_array", "wgt_buf", "inp_buf", "acc_buf", "control"):
        assert z["pe"][k] == z["column"][k] == z["none"][k]


def test_unrelated_parameters_do_not_change_area():
    base = area.area_mm2(Machine())
    for kw in ({"clock_mhz": 1000.0}, {"dma_latency": 7}, {"compute_setup": 0}, {"dram_mib": 16}):
        assert area.area_mm2(Machine(**kw)) == base


def test_sram_is_monotone_and_zero_for_no_bytes():
    assert area.sram_um2(0) == 0.0
    sizes = [1, 100, 32 * 1024, 32 * 1024 + 1, 1 << 24]
    vals = [area.sram_um2(s) for s in sizes]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    # one more macro's periphery when crossing a macro boundary
    step = area.sram_um2(32 * 1024 + 1) - area.sram_um2(32 * 1024)
    assert step == pytest.approx(area.SRAM_MACRO_OVERHEAD_UM2 + 8 * 0.0588 / 0.7, rel=1e-9)


def test_takes_no_time_even_at_the_limits():
    """Closed formulas: the largest machine costs what the smallest does (no loop over bytes)."""
    for m in (SMALL, LARGE):
        t0 = time.perf_counter()
        for _ in range(1000):
            area.area_breakdown(m)
        assert time.perf_counter() - t0 < 0.5


def test_not_a_machine_is_a_clear_error():
    with pytest.raises(ConfigError, match="expected a Machine, got dict"):
        area.area_mm2({"pe_rows": 16})
    with pytest.raises(ConfigError, match="expected a Machine"):
        area.pe_array_breakdown(None)
