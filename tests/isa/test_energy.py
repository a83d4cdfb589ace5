"""The energy model (target_dlac.isa.energy): a run's energy is the sum of its actions times
their table entries, counted by hand on tiny programs; the table's defaults are Horowitz's
45 nm figures scaled as documented; overrides come from a machine file's ``[energy]``
table and travel in the binary; bad tables are refused with the entry named."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from target_dlac.core.errors import ConfigError
from target_dlac.isa import energy
from target_dlac.isa.area import area_mm2
from target_dlac.isa.blocks import pack_ternary
from target_dlac.isa.energy import EnergyTable
from target_dlac.isa.machine import Machine
from target_dlac.sim.interpreter import Interpreter, run
from tests.isa_programs import HALT, M, SYNC, Dram, conv, load, store

C, H, W, F = 2, 3, 3, 2          # a 1x1 conv: 9 pixels, one pass on 16 PE rows


def _mac_program(machine, op="MAC", wt=None):
    d = Dram()
    wt = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32) if wt is None else wt
    blk = pack_ternary(wt.astype(np.int8), np.arange(F)) if op == "TACC" else wt.tobytes()
    wa = d.const(blk)
    xt = d.tensor("x", "input", (C, H, W))
    yt = d.tensor("y", "output", (F, H, W))
    insns = [load("INP", 0, xt.addr, C * H * W * 4), load("WGT", 0, wa, len(blk)), SYNC,
             conv(op, 0, 0, 0, C, H, W, F, 1, 1), SYNC,
             store("ACC", 0, yt.addr, F * H * W * 4), SYNC, HALT]
    return d.program(insns, machine, layers=[{"name": "all", "op": "conv2d", "precision": "fp32",
                                              "pc_start": 0, "pc_end": len(insns)}]), len(blk)


def _by_hand(t: EnergyTable, m: Machine, blk: int, mults: int, adds: int, inp_reads: int,
             checks: int = 0) -> dict:
    """The energy of :func:`_mac_program`, action by action."""
    sram = lambda size: t.sram_read_pj_per_byte_8kib * (size / 8192) ** t.sram_size_exponent  # noqa: E731
    x_bytes, y_bytes = C * H * W * 4, F * H * W * 4
    compute = mults * t.fp32_mul + adds * t.fp32_add + checks * t.zero_check
    onchip = (x_bytes * sram(m.inp_bytes)                  # LOAD x: INP write (write = read energy)
              + blk * sram(m.wgt_bytes)                    # LOAD weights: WGT write
              + inp_reads * 4 * sram(m.inp_bytes)          # the pixels' windows, once for the filter group
              + blk * sram(m.wgt_bytes)                    # one pass streams the weight block
              + y_bytes * sram(m.obuf_bytes_per_pe)        # the accumulators written
              + y_bytes * sram(m.obuf_bytes_per_pe))       # STORE reads them
    dram = (x_bytes + blk) * t.dram_read_pj_per_byte + y_bytes * t.dram_write_pj_per_byte
    return {"compute": compute, "onchip": onchip, "dram": dram}


def test_run_energy_is_its_actions_times_the_table():
    prog, blk = _mac_program(M)
    x = np.arange(1, C * H * W + 1, dtype=np.float32).reshape(C, H, W)
    _, rep = run(prog, {"x": x})
    t = energy.DEFAULT_TABLE
    steps = F * C * H * W                  # every weight of every pixel
    # one filter group (2 filters <= 32 PE columns): each window value read once, broadcast along the row
    want = _by_hand(t, M, blk, steps, steps, C * H * W)
    got = rep.extra["energy_pj"]
    for part, v in want.items():
        assert got[part] == pytest.approx(v, rel=1e-12), part
    assert got["static"] == pytest.approx(t.leakage_pj_per_mm2_cycle * area_mm2(M) * rep.cycles["total"])
    assert got["total"] == pytest.approx(sum(want.values()) + got["static"])
    assert rep.extra["actions"]["fp32_mul"] == steps and rep.extra["actions"]["DRAM_write"] == F * H * W * 4
    # the layer holds every pc: its energy is the run's
    assert rep.layers[0].energy_pj["total"] == pytest.approx(got["total"])
    assert rep.extra["pj_per_mac"] == pytest.approx(got["total"] / steps)
    assert rep.extra["tops_per_w"] == pytest.approx(2 * steps / got["total"])
    assert rep.extra["edp_js"] == pytest.approx(got["total"] * 1e-12 * rep.seconds)


def test_skipped_zero_activations_cost_no_arithmetic_but_their_flag_checks():
    m = Machine(act_skip="pe")
    prog, blk = _mac_program(m)
    x = np.arange(1, C * H * W + 1, dtype=np.float32).reshape(C, H, W)
    x[0, :2] = 0
    x[1, 2, 1] = 0
    _, rep = run(prog, {"x": x})
    live = F * int(np.count_nonzero(x))    # 1x1 kernel: a step per (filter, non-zero activation)
    want = _by_hand(energy.DEFAULT_TABLE, m, blk, live, live, int(np.count_nonzero(x)), checks=F * C * H * W)
    for part, v in want.items():
        assert rep.extra["energy_pj"][part] == pytest.approx(v, rel=1e-12), part


def test_ternary_accumulates_without_multiplies():
    m = M
    wt = np.array([[1, -1], [0, 1]], np.float32)
    prog, blk = _mac_program(m, "TACC", wt)
    x = np.ones((C, H, W), np.float32)
    _, rep = run(prog, {"x": x})
    nz = int(np.count_nonzero(wt)) * H * W
    want = _by_hand(energy.DEFAULT_TABLE, m, blk, 0, nz, C * H * W)
    for part, v in want.items():
        assert rep.extra["energy_pj"][part] == pytest.approx(v, rel=1e-12), part
    assert "fp32_mul" not in rep.extra["actions"] or rep.extra["actions"]["fp32_mul"] == 0


def test_zero_dram_energy_removes_exactly_the_dram_share():
    prog, _ = _mac_program(M)
    x = np.ones((C, H, W), np.float32)
    base = Interpreter(prog).run({"x": x})[1].extra["energy_pj"]
    t = replace(energy.DEFAULT_TABLE, dram_read_pj_per_byte=0.0, dram_write_pj_per_byte=0.0)
    got = Interpreter(prog, energy_table=t).run({"x": x})[1].extra["energy_pj"]
    assert base["dram"] > 0 and got["dram"] == 0
    assert got["total"] == pytest.approx(base["total"] - base["dram"], rel=1e-12)
    for part in ("compute", "onchip", "static"):
        assert got[part] == base[part]


def test_filter_groups_reread_the_windows():
    """More filters than PE columns: each group of ``pe_cols`` filters reads the windows again."""
    m = Machine(act_skip="none", pe_cols=1)      # 2 filters: 2 groups of 1
    prog, blk = _mac_program(m)
    _, rep = run(prog, {"x": np.ones((C, H, W), np.float32)})
    assert rep.extra["conv_actions"]["INP_read"] == 2 * C * H * W * 4
    assert rep.extra["conv_actions"]["WGT_read"] == blk * 1          # 9 pixels, 16 rows: one pass
    m4 = Machine(act_skip="none", pe_rows=4)     # 9 pixels on 4 rows: 3 passes stream the block 3 times
    _, rep4 = run(_mac_program(m4)[0], {"x": np.ones((C, H, W), np.float32)})
    assert rep4.extra["conv_actions"]["WGT_read"] == 3 * blk


def test_defaults_are_horowitz_scaled():
    t = energy.DEFAULT_TABLE
    s = (14 / 45) * (0.8 / 0.9) ** 2
    assert energy.PROCESS_SCALE == pytest.approx(s)
    assert (t.fp32_add, t.fp32_mul, t.int8_mul, t.int32_add) == pytest.approx((0.9 * s, 3.7 * s, 0.2 * s, 0.1 * s))
    # the SRAM law passes through both of Horowitz's points (32-bit reads: 5 pJ at 8 KB, 50 at 1 MB)
    assert 4 * t.sram_pj_per_byte(8 << 10) == pytest.approx(5 * s)
    assert 4 * t.sram_pj_per_byte(1 << 20) == pytest.approx(50 * s)
    sizes = [512, 8 << 10, 64 << 10, 256 << 10, 4 << 20]
    per = [t.sram_pj_per_byte(n) for n in sizes]
    assert per == sorted(per) and len(set(per)) == len(per)
    assert t.dram_read_pj_per_byte == pytest.approx(1300 / 8)
    assert set(energy.SOURCES) == {f for f in t.to_dict()}       # every default has its source


def test_a_bigger_buffer_costs_more_per_access():
    prog_small, _ = _mac_program(Machine(act_skip="none", inp_buf_kib=64))
    prog_big, _ = _mac_program(Machine(act_skip="none", inp_buf_kib=1024))
    x = np.ones((C, H, W), np.float32)
    small = run(prog_small, {"x": x})[1].extra["energy_pj"]
    big = run(prog_big, {"x": x})[1].extra["energy_pj"]
    assert big["onchip"] > small["onchip"] and big["compute"] == small["compute"]


def test_overrides_from_a_machine_file(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[machine]\npe_rows = 8\n\n[energy]\nfp32_mul = 1.5\ndram_read_pj_per_byte = 20.0\n")
    assert Machine.from_toml(str(path)).pe_rows == 8
    t = EnergyTable.from_toml(str(path))
    assert t.fp32_mul == 1.5 and t.dram_read_pj_per_byte == 20 and t.fp32_add == energy.DEFAULT_TABLE.fp32_add
    assert energy.machine_file_table(str(path)) == t
    flat = tmp_path / "flat.toml"
    flat.write_text("pe_cols = 16\n[energy]\nint8_mul = 0.01\n")
    assert Machine.from_toml(str(flat)).pe_cols == 16 and EnergyTable.from_toml(str(flat)).int8_mul == 0.01
    none = tmp_path / "none.toml"
    none.write_text("pe_cols = 16\n")
    assert energy.machine_file_table(str(none)) is None and energy.machine_file_table(None) is None


@pytest.mark.parametrize("entry, value, match", [
    ("fp32_mull", 1.0, "unknown energy entry fp32_mull"),
    ("fp32_mul", -1.0, "fp32_mul=-1.0"),
    ("fp32_mul", math.inf, "fp32_mul=inf"),
    ("fp32_mul", "x", "fp32_mul=x"),
    ("fp32_mul", True, "fp32_mul=True"),
])
def test_bad_tables_are_refused(entry, value, match):
    with pytest.raises(ConfigError, match=match):
        EnergyTable.from_dict({entry: value})


def test_the_binary_carries_its_table():
    prog, _ = _mac_program(M)
    assert energy.program_table(prog) is energy.DEFAULT_TABLE
    prog.meta["energy"] = {"fp32_mul": 0.0}
    assert Interpreter(prog).energy_table.fp32_mul == 0.0
    prog.meta["energy"] = {"fp32_mul": "lots"}
    with pytest.raises(ConfigError, match="META energy table.*fp32_mul"):
        Interpreter(prog)


def test_every_counted_action_is_priced():
    prices = energy.DEFAULT_TABLE.prices(Machine())
    assert set(prices) == set(energy.ACTIONS)
    with pytest.raises(ValueError, match="unknown energy action"):
        energy.energy_pj({"teleport": 1}, Machine(), 0)
