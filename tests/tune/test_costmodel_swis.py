"""The analytic cost model on SWIS (``SACC``) layers, against the interpreter, as
``test_costmodel.py`` checks it on ternary (``TACC``) layers.

The SWIS layers of the MNIST CNN (``--quant swis``, fractional and integer shift targets,
SWIS-C) and hand-built SWIS layers (real packed blocks: strided, residual, dense, input
channels not a multiple of the group of 4), under the default schedule and variants of it
(smaller filter / channel / row / column tiles, filter-outer order, single buffering, PE
order as is, another PE-array mapping), on three machines (the default, a double-shift PE,
a smaller PE array with smaller buffers): ``layer_cycles`` must equal the interpreter's
per-layer cycles and their compute / load-stall / store-stall split exactly,
``layer_lower_bound`` its ``lower_bound_cycles``, and ``cycles_lower_bound`` must never be
above the cycles.  Then the tuner: ``tune_layer`` searches a SWIS layer, the tuning log's
resolver applies the record, and the compiled binary takes the predicted cycles.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.datasets import mnist_cnn
from compiler.tune import collect_layers, tune_model
from passes.swis import swis_quantize
from target_dlac.binary.program import Program, Tensor
from target_dlac.codegen.layer_weights import LayerWeights, order_by_counts
from target_dlac.codegen.lower import Epilogue, align, lower_conv, ranges
from target_dlac.codegen.schedule import ConvShape, Schedule, default_schedule, fits, weight_tiles
from target_dlac.isa.blocks import pack_swis
from target_dlac.isa.encoding import DTYPES, Insn, epi_param_layout
from target_dlac.isa.machine import Machine
from target_dlac.sim.interpreter import run
from target_dlac.tune import tuning_log
from target_dlac.tune.costmodel import block_counts, cycles_lower_bound, layer_cycles, layer_lower_bound
from target_dlac.tune.layer_search import tune_layer

MACHINES = {
    "default": Machine(act_skip="none"),        # weights alone (zero activations: test_costmodel_acts)
    "double_shift": Machine(swis_shifts_per_pass=2, act_skip="none"),
    "small": Machine(pe_rows=8, pe_cols=16, wgt_buf_kib=64, inp_buf_kib=64, act_skip="none"),
}
KINDS = ("default", "f_small", "c_small", "h_small", "w_small", "filter_outer", "single_buffer",
         "as_is", "pe_map")


def _cd(a: int, b: int) -> int:
    return -(-a // b)


def variants(shape: ConvShape, m: Machine, wbytes) -> dict:
    """Schedule kind -> a legal schedule of that kind (SWIS: channel tiles in groups of 4)."""
    d = default_schedule(shape, m, wbytes)
    f_small = max(1, d.f_tile // 2 - 3)          # not a multiple of pe_cols
    h_small = _cd(shape.oh, 3)
    c_small = min(shape.c, _cd(max(1, _cd(d.c_tile, 3)), 4) * 4)
    cand = {
        "default": d,
        "f_small": replace(d, f_tile=f_small),
        "c_small": replace(d, c_tile=c_small),
        "h_small": replace(d, h_tile=min(d.h_tile, h_small)),
        "w_small": replace(d, w_tile=max(1, _cd(shape.ow, 2)), h_tile=min(d.h_tile, h_small)),
        "filter_outer": replace(d, order="filter_outer", f_tile=f_small, h_tile=min(d.h_tile, h_small)),
        "single_buffer": replace(d, double_buffer=False),
        "as_is": replace(d, pe_order="as_is", f_tile=min(shape.f, 40)),
        "pe_map": replace(d, pxshift=m.max_pxshift if shape.oh * shape.ow < 64 else m.max_pxshift // 2),
    }
    return {k: s for k, s in cand.items() if (k == "default" or s != d) and fits(shape, s, m, wbytes)}


def _check(shape, sched, m, weights, has_scale, layer, what):
    """The cost model's prediction and bounds against the interpreter's report of ``layer``."""
    got = {"total": layer.cycles, "compute": layer.compute, "load_stall": layer.load_stall,
           "store_stall": layer.store_stall, "lower_bound": layer.lower_bound_cycles}
    pred = dict(layer_cycles(shape, sched, m, weights, has_scale=has_scale),
                lower_bound=layer_lower_bound(shape, sched, m, weights, has_scale=has_scale))
    assert pred == got, f"{what}: cost model {pred} != interpreter {got}"
    assert 0 < cycles_lower_bound(shape, sched, m, weights, has_scale=has_scale) <= layer.cycles, what


# ------------------------------------------------------------------ MNIST CNN, SWIS weights

CONFIGS = {
    "swis2.5": QuantConfig(weights="swis", swis_shifts=2.5),
    "swis2": QuantConfig(weights="swis", swis_shifts=2.0),
    "swisc3": QuantConfig(weights="swis", swis_shifts=3.0, swis_consecutive=True),
}


@pytest.fixture(scope="module")
def compiled():
    return {name: compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=cfg)
            for name, cfg in CONFIGS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("mname", list(MACHINES))
def test_mnist_swis_layers_match_interpreter(compiled, mname):
    m = MACHINES[mname]
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    checked = set()
    for cname, result in compiled.items():
        layers = {t.name: t.layer for t in collect_layers(result, m)}
        swis = {n: l for n, l in layers.items() if l.shape.swis}
        assert len(swis) == 3 and all(l.precision == "swis" for l in swis.values()), cname
        per = {n: variants(l.shape, m, l.weights.max_bytes) for n, l in swis.items()}
        for kind in KINDS:
            scheds = {n: v[kind] for n, v in per.items() if kind in v}
            if not scheds:
                continue
            prog = build_program(result, m, schedules=scheds, reference=False)
            _, rep = run(prog, {"x": x})
            by_name = {l.name: l for l in rep.layers}
            for n, sched in scheds.items():
                meta = next(e for e in prog.meta["layers"] if e["name"] == n)
                assert Schedule.from_dict(meta["schedule"]) == sched
                assert any(i.op == "SACC" for i in prog.insns[meta["pc_start"]:meta["pc_end"]])
                l = swis[n]
                _check(l.shape, sched, m, l.weights, l.has_scale, by_name[n], f"{cname} {n} {kind} {sched}")
                checked.add((cname, n, kind))
    assert {k for *_, k in checked} == set(KINDS)
    assert len(checked) >= 50


# ------------------------------------------------------------------ synthetic SWIS layers

def _conv_shape(n, c, h, w, f, k, s, p, residual=False):
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return ConvShape(n, c, h, w, f, k, k, s, s, (p, p, p, p), oh, ow, False, residual, False,
                     "float32", True)


SYNTHETIC = {
    "c32_3x3": (_conv_shape(1, 32, 12, 12, 48, 3, 1, 1), 2.5),
    "c22_f70_s2": (_conv_shape(2, 22, 15, 13, 70, 3, 2, 1), 2.0),      # 22 channels: a partial group
    "residual_1x1": (_conv_shape(1, 64, 9, 9, 40, 1, 1, 0, residual=True), 3.0),
    "dense": (ConvShape(3, 300, 1, 1, 100, 1, 1, 1, 1, (0, 0, 0, 0), 1, 1, False, False, False,
                        "float32", True), 1.5),
}


def _swis_weights(name: str, shape: ConvShape, target: float, pe_cols: int) -> LayerWeights:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = rng.standard_normal((shape.f, shape.c, shape.kh, shape.kw)).astype(np.float32)
    w *= rng.uniform(0.2, 2.0, size=(shape.f, 1, 1, 1)).astype(np.float32)     # uneven filters
    sw = swis_quantize(w, target, pe_cols=pe_cols)
    return LayerWeights(sw.values.astype(np.int16), False, False, sw)


def _swis_block(sw, tile, f0, f1, c0, c1, how):
    """The codegen's SWIS block of a tile (``Codegen._swis_block``)."""
    kk = tile.shape[2] * tile.shape[3]
    g_all = sw.shifts.shape[1] // kk
    shifts = sw.shifts.reshape(sw.shifts.shape[0], kk, g_all, -1)[f0:f1, :, c0 // 4:-(-c1 // 4)]
    counts = sw.counts[f0:f1]
    return pack_swis(tile.astype(np.int64), shifts, counts, order_by_counts(counts, how))


def _program(shape: ConvShape, sched: Schedule, lw: LayerWeights, m: Machine) -> Program:
    """A one-layer program with real packed SWIS blocks, scale + bias, optional residual."""
    consts = bytearray()
    const_bytes = 0

    def put(data: bytes) -> int:
        addr = align(len(consts))
        consts.extend(b"\0" * (addr - len(consts)) + data)
        return addr

    wblock, pblock = {}, {}
    for fi, ci, (f0, f1), (c0, c1) in weight_tiles(shape, sched):
        data = _swis_block(lw.swis, lw.w[f0:f1, c0:c1], f0, f1, c0, c1, sched.pe_order)
        wblock[(fi, ci)] = (put(data), len(data))
        const_bytes += len(data)
        if ci == 0:
            nb = epi_param_layout(f1 - f0, True, DTYPES.index("float32"))[2]
            data = np.linspace(0.01, 0.02, nb // 4, dtype="<f4").tobytes()
            pblock[fi] = (put(data), len(data))
            const_bytes += len(data)
    x_addr = align(len(consts))
    out_bytes = shape.n * shape.f * shape.oh * shape.ow * 4
    out_addr = align(x_addr + shape.n * shape.c * shape.h * shape.w * 4)
    res_addr = align(out_addr + out_bytes)
    end = align(res_addr + out_bytes)
    epi = Epilogue(True, "relu", residual_addr=res_addr if shape.residual else None)
    insns = lower_conv(shape, sched, m, x_addr=x_addr, out_addr=out_addr, wblock=wblock, pblock=pblock,
                       epi=epi)
    n_layer = len(insns)
    insns.append(Insn("HALT"))
    tensors = [Tensor("x", "input", (shape.n, shape.c, shape.h, shape.w), "float32", x_addr),
               Tensor("output_0", "output", (shape.n, shape.f, shape.oh, shape.ow), "float32", out_addr)]
    if shape.residual:
        tensors.append(Tensor("r", "input", (shape.n, shape.f, shape.oh, shape.ow), "float32", res_addr))
    read = shape.min_input_bytes() + const_bytes + (out_bytes if shape.residual else 0)
    meta = {"dram_bytes": end, "layers": [{"name": "layer", "op": "conv2d", "precision": "swis",
                                          "pc_start": 0, "pc_end": n_layer,
                                          "min_dram_bytes": read + out_bytes,
                                          "min_write_bytes": out_bytes}]}
    return Program(m, insns, bytes(consts), tensors, meta)


@pytest.mark.parametrize("mname", list(MACHINES))
@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_swis_layers_match_interpreter(name, mname):
    shape, target = SYNTHETIC[name]
    m = MACHINES[mname]
    lw = _swis_weights(name, shape, target, m.pe_cols)
    scheds = variants(shape, m, lw.max_bytes)
    assert len(scheds) >= 5, scheds
    rng = np.random.default_rng(1)
    for kind, sched in scheds.items():
        prog = _program(shape, sched, lw, m)
        # the cost model's block sizes and counts are those of the packed blocks
        blocks = block_counts(shape, sched, lw)
        for (fi, ci), (nbytes, counts) in blocks.items():
            (f0, f1), (c0, c1) = ranges(shape.f, sched.f_tile)[fi], ranges(shape.c, sched.c_tile)[ci]
            data = _swis_block(lw.swis, lw.w[f0:f1, c0:c1], f0, f1, c0, c1, sched.pe_order)
            assert nbytes == len(data)
            np.testing.assert_array_equal(counts, np.frombuffer(data, np.uint8)[:f1 - f0])
        inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in prog.inputs}
        _, rep = run(prog, inputs)
        (layer,) = rep.layers
        assert layer.cycles == rep.cycles["total"] > 0
        _check(shape, sched, m, lw, True, layer, f"{name} {mname} {kind} {sched}")


def test_swis_weights_must_carry_their_decomposition():
    shape, _ = SYNTHETIC["c32_3x3"]
    sched = Schedule(32, 32, 12, 12)
    w = np.ones((48, 32, 3, 3), np.int16)
    for bad in (w, LayerWeights(w, False, False)):
        with pytest.raises(ValueError, match="SWIS"):
            layer_cycles(shape, sched, MACHINES["default"], bad)


# ------------------------------------------------------------------ tuning SWIS layers

@pytest.mark.slow
def test_swis_layer_is_tuned_and_the_log_applies(compiled, tmp_path):
    """``tune_layer`` searches a SWIS layer like any other (both PE orders are offered);
    ``tune_model`` tunes every SWIS layer of the model; compiling with the log gives each
    tuned layer its logged schedule, and the interpreter runs it in the logged cycles."""
    m = MACHINES["default"]
    result = compiled["swis2.5"]
    layers = collect_layers(result, m)
    layer = next(t.layer for t in layers if t.layer.shape.swis and t.layer.op == "dense")
    out = tune_layer(layer, m, "best_first", None, None, None, 0)
    assert out["stopped"] == "proved" and out["lower_bound"] <= out["cycles"] <= out["default_cycles"]

    log = tmp_path / "log.jsonl"
    rows = tune_model(result, m, log, jobs=1)
    assert [r["status"] for r in rows] == ["tuned"] * 5
    assert [r["precision"] for r in rows] == ["fp32", "swis", "swis", "swis", "fp32"]
    assert all(r["lower_bound"] <= r["tuned_cycles"] <= r["default_cycles"] for r in rows)
    assert any(r["tuned_cycles"] < r["default_cycles"] for r in rows if r["precision"] == "swis")
    prog = build_program(result, m, reference=False, tuning_log=str(log))
    _, rep = run(prog, {"x": np.zeros((1, 1, 28, 28), np.float32)})
    recs = tuning_log.best(tuning_log.load(log))
    for t, r, lr in zip(layers, rows, (l for l in rep.layers if l.op in ("conv2d", "dense"))):
        assert lr.name == t.name and lr.cycles == r["tuned_cycles"], (t.name, lr.cycles, r)
        meta = next(e for e in prog.meta["layers"] if e["name"] == t.name)
        assert meta["schedule"] == recs[tuning_log.key_str(t.key)]["schedule"]
