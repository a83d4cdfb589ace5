"""The analytic cost model (:mod:`target_dlac.tune.costmodel`) against the interpreter.

For the weighted layers of the MNIST CNN (default ternary config: fp32 first and last
layer, ternary in between) and hand-built ternary layers with random sparsity (real
packed blocks, race check on), under the default schedule and variants of it (smaller
filter / channel / row / column tiles, filter-outer order, single buffering, PE order
as is), ``layer_cycles`` must equal the interpreter's per-layer cycles and their
compute / load-stall / store-stall split exactly.
"""

from __future__ import annotations

import itertools
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.datasets import mnist_cnn
from target_dlac.codegen.generator import Codegen
from target_dlac.isa.cycles import group_max_sum
from target_dlac.codegen.layer_weights import LayerWeights, order_by_counts, pe_order
from target_dlac.tune.costmodel import cycles_lower_bound, layer_cycles, layer_lower_bound
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import DTYPES, Insn, epi_param_layout
from target_dlac.codegen.lower import Epilogue, align, lower_conv, ranges
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import pack_ternary, ternary_counts
from target_dlac.binary.program import Program, Tensor
from target_dlac.codegen.schedule import ConvShape, Schedule, default_schedule, fits
from target_dlac.codegen.schedule import check as check_schedule

M = Machine(act_skip="none")     # weights alone; with zero activations skipped: tests/tune/test_costmodel_acts.py
KINDS = ("default", "f_small", "c_small", "h_small", "w_small", "filter_outer", "single_buffer",
         "as_is", "pe_map")


def _cd(a: int, b: int) -> int:
    return -(-a // b)


def variants(shape: ConvShape, wbytes) -> dict:
    """Schedule kind -> a legal schedule of that kind for ``shape`` (kinds that do not
    apply or do not fit are left out)."""
    d = default_schedule(shape, M, wbytes)
    f_small = max(1, d.f_tile // 2 - 3)          # not a multiple of pe_cols
    h_small = _cd(shape.oh, 3)
    cand = {
        "default": d,
        "f_small": replace(d, f_tile=f_small),
        "c_small": replace(d, c_tile=max(1, _cd(d.c_tile, 3))),
        "h_small": replace(d, h_tile=min(d.h_tile, h_small)),
        "w_small": replace(d, w_tile=max(1, _cd(shape.ow, 2)), h_tile=min(d.h_tile, h_small)),
        "filter_outer": replace(d, order="filter_outer", f_tile=f_small, h_tile=min(d.h_tile, h_small)),
        "single_buffer": replace(d, double_buffer=False),
        "as_is": replace(d, pe_order="as_is", f_tile=min(shape.f, 40)),
        "pe_map": replace(d, pxshift=M.max_pxshift if shape.oh * shape.ow < 64 else M.max_pxshift // 2),
    }
    if shape.depthwise:
        cand.pop("c_small")
    return {k: s for k, s in cand.items()
            if (k == "default" or s != d) and fits(shape, s, M, wbytes)}


def _check(pred: dict, layer, what: str, bound: int):
    """``pred`` (``layer_cycles``) and ``bound`` (``layer_lower_bound``) against the
    interpreter's report of the layer."""
    got = {"total": layer.cycles, "compute": layer.compute, "load_stall": layer.load_stall,
           "store_stall": layer.store_stall, "lower_bound": layer.lower_bound_cycles}
    pred = dict(pred, lower_bound=bound)
    assert pred == got, f"{what}: cost model {pred} != interpreter {got}"


# ------------------------------------------------------------------ MNIST CNN

class _Recorder(Codegen):
    """The codegen, remembering each layer's weights and epilogue (for the cost model)."""

    def _layer_weights(self, spec, x, out, res):
        w, prm, epi = super()._layer_weights(spec, x, out, res)
        self.seen = getattr(self, "seen", {})
        self.seen[spec.layer] = (w, epi.has_scale, res is not None, spec.ternary, spec.depthwise)
        return w, prm, epi


@pytest.fixture(scope="module")
def mnist():
    result = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=QuantConfig())
    rec = _Recorder(result.mod, M, **result.codegen_args())
    rec.generate()
    layers = {}     # display name -> (shape, weights, has_scale, residual, variants)
    for entry in rec.layers:
        if entry.shape is None:
            continue
        w, has_scale, res, ternary, dw = rec.seen[entry.var]
        shape = ConvShape(**{**entry.shape, "pads": tuple(entry.shape["pads"])})
        wb = LayerWeights(w, ternary, dw).max_bytes
        layers[entry.name] = (shape, w, has_scale, res, variants(shape, wb))
    return result, layers


def test_mnist_layers_match_interpreter(mnist):
    result, layers = mnist
    assert len(layers) == 5 and sum(s.ternary for s, *_ in layers.values()) == 3
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    checked = set()
    for kind in KINDS:
        scheds = {name: v[4][kind] for name, v in layers.items() if kind in v[4]}
        if not scheds:
            continue
        prog = build_program(result, M, schedules=scheds, reference=False)
        _, rep = run(prog, {"x": x})
        by_name = {l.name: l for l in rep.layers}
        for name, sched in scheds.items():
            shape, w, has_scale, res, _ = layers[name]
            meta = next(e for e in prog.meta["layers"] if e["name"] == name)
            assert Schedule.from_dict(meta["schedule"]) == sched
            pred = layer_cycles(shape, sched, M, w, has_scale=has_scale)
            _check(pred, by_name[name], f"{name} {kind} {sched}",
                   layer_lower_bound(shape, sched, M, w, has_scale=has_scale))
            checked.add((name, kind))
    assert {k for _, k in checked} == set(KINDS)
    assert len(checked) >= 25


# ------------------------------------------------------------------ synthetic ternary layers

def _ternary(rng, shape, density):
    """Ternary weights; each filter with its own density around ``density`` (uneven
    non-zero counts, so the PE order matters)."""
    f = shape[0]
    dens = np.clip(density * rng.uniform(0.3, 1.7, size=(f, 1, 1, 1)), 0.02, 1.0)
    mask = rng.random(shape) < dens
    return (mask * rng.choice(np.array([-1, 1], np.int8), size=shape)).astype(np.int8)


def _program(shape: ConvShape, sched: Schedule, w: np.ndarray) -> Program:
    """A one-layer program as the codegen builds it: real packed ternary blocks (filters in
    PE order), scale + bias parameters, optional residual input."""
    consts = bytearray()
    const_bytes = 0

    def put(data: bytes) -> int:
        addr = align(len(consts))
        consts.extend(b"\0" * (addr - len(consts)) + data)
        return addr

    wblock, pblock = {}, {}
    ctiles = [(0, 1)] if shape.depthwise else ranges(shape.c, sched.c_tile)
    for fi, (f0, f1) in enumerate(ranges(shape.f, sched.f_tile)):
        for ci, (c0, c1) in enumerate(ctiles):
            tile = w[f0:f1] if shape.depthwise else w[f0:f1, c0:c1]
            data = pack_ternary(tile, pe_order(tile, sched.pe_order))
            wblock[(fi, ci)] = (put(data), len(data))
            const_bytes += len(data)
        nb = epi_param_layout(f1 - f0, True, DTYPES.index("float32"))[2]
        data = np.linspace(0.5, 1.5, nb // 4, dtype="<f4").tobytes()
        pblock[fi] = (put(data), len(data))
        const_bytes += len(data)
    x_addr = align(len(consts))
    out_addr = align(x_addr + shape.n * shape.c * shape.h * shape.w * 4)
    res_addr = align(out_addr + shape.n * shape.f * shape.oh * shape.ow * 4)
    end = align(res_addr + shape.n * shape.f * shape.oh * shape.ow * 4)
    epi = Epilogue(True, "relu", residual_addr=res_addr if shape.residual else None)
    insns = lower_conv(shape, sched, M, x_addr=x_addr, out_addr=out_addr, wblock=wblock,
                       pblock=pblock, epi=epi)
    n_layer = len(insns)
    insns.append(Insn("HALT"))
    tensors = [Tensor("x", "input", (shape.n, shape.c, shape.h, shape.w), "float32", x_addr),
               Tensor("output_0", "output", (shape.n, shape.f, shape.oh, shape.ow), "float32", out_addr)]
    if shape.residual:
        tensors.append(Tensor("r", "input", (shape.n, shape.f, shape.oh, shape.ow), "float32", res_addr))
    out_bytes = shape.n * shape.f * shape.oh * shape.ow * 4
    read = shape.min_input_bytes() + const_bytes + (out_bytes if shape.residual else 0)
    meta = {"dram_bytes": end, "layers": [{"name": "layer", "op": "conv2d", "precision": "ternary",
                                          "pc_start": 0, "pc_end": n_layer,
                                          "min_dram_bytes": read + out_bytes,
                                          "min_write_bytes": out_bytes}]}
    return Program(M, insns, bytes(consts), tensors, meta)


def _conv_shape(n, c, h, w, f, k, s, p, depthwise=False, residual=False):
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return ConvShape(n, c, h, w, f, k, k, s, s, (p, p, p, p), oh, ow, depthwise, residual, True)


SYNTHETIC = {
    "c64_3x3": (_conv_shape(1, 64, 16, 16, 64, 3, 1, 1), 0.4),
    "c48_f96_s2": (_conv_shape(2, 48, 15, 13, 96, 3, 2, 1), 0.25),
    "residual_1x1": (_conv_shape(1, 96, 9, 9, 70, 1, 1, 0, residual=True), 0.6),
    "depthwise": (_conv_shape(1, 40, 12, 12, 40, 3, 1, 1, depthwise=True), 0.5),
    "dense": (ConvShape(3, 300, 1, 1, 100, 1, 1, 1, 1, (0, 0, 0, 0), 1, 1), 0.1),
    "downsample_1x1_s2": (_conv_shape(1, 64, 14, 14, 128, 1, 2, 0), 0.4),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_ternary_layers_match_interpreter(name):
    shape, density = SYNTHETIC[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = _ternary(rng, (shape.f, 1 if shape.depthwise else shape.c, shape.kh, shape.kw), density)
    scheds = variants(shape, LayerWeights(w, True, shape.depthwise).max_bytes)
    assert len(scheds) >= 5, scheds
    for kind, sched in scheds.items():
        # the cost model's block sizes and counts are those of the packed blocks
        for (fi, ci), (nbytes, counts) in LayerWeights(w, True, shape.depthwise).blocks(shape, sched).items():
            f0, f1 = ranges(shape.f, sched.f_tile)[fi]
            c0, c1 = (0, 1) if shape.depthwise else ranges(shape.c, sched.c_tile)[ci]
            tile = w[f0:f1] if shape.depthwise else w[f0:f1, c0:c1]
            data = pack_ternary(tile, pe_order(tile, sched.pe_order))
            assert nbytes == len(data)
            np.testing.assert_array_equal(counts, ternary_counts(np.frombuffer(data, np.uint8), 0, f1 - f0))
        prog = _program(shape, sched, w)
        inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in prog.inputs}
        _, rep = run(prog, inputs)
        (layer,) = rep.layers
        assert layer.cycles == rep.cycles["total"] > 0
        _check(layer_cycles(shape, sched, M, w), layer, f"{name} {kind} {sched}",
               layer_lower_bound(shape, sched, M, w))
        assert 0 < cycles_lower_bound(shape, sched, M, w) <= layer.cycles, (name, kind)


def test_timing_64_channel_layer():
    """Prints the cost model's and the interpreter's time on a 64-channel 3x3 layer at 56x56
    (ResNet-18's layer1; no assertion on time: speed is measured by the benchmarks)."""
    shape, density = _conv_shape(1, 64, 56, 56, 64, 3, 1, 1), 0.4
    rng = np.random.default_rng(1)
    w = _ternary(rng, (shape.f, shape.c, 3, 3), density)
    sched = default_schedule(shape, M, LayerWeights(w, True, False).max_bytes)
    prog = _program(shape, sched, w)
    x = {"x": rng.standard_normal((1, 64, 56, 56)).astype(np.float32)}
    t0 = time.perf_counter()
    _, rep = run(prog, x)
    t1 = time.perf_counter()
    pred = layer_cycles(shape, sched, M, w)
    t2 = time.perf_counter()
    assert pred["total"] == rep.layers[0].cycles
    print(f"\n64-channel 3x3 layer, {pred['total']} cycles: layer_cycles {1e3 * (t2 - t1):.2f} ms, "
          f"interpreter {1e3 * (t1 - t0):.2f} ms")


def test_strided_1x1_loads_whole_rows_in_one_transfer():
    """A stride-2 1x1 conv never reads the last input column; a full-width tile still
    loads whole rows (``lower.whole_rows``): one INP transfer per tile instead of one per
    channel, and the same output as a column-tiled schedule (per-channel transfers) on
    integer-valued data (exact)."""
    shape = _conv_shape(1, 16, 14, 14, 32, 1, 2, 0)
    rng = np.random.default_rng(3)
    w = _ternary(rng, (32, 16, 1, 1), 0.5)
    full = Schedule(32, 16, 2, 7)
    cols = Schedule(32, 16, 2, 3)
    x = {"x": rng.integers(-8, 9, (1, 16, 14, 14)).astype(np.float32)}
    outs = {}
    for name, sched in (("full", full), ("cols", cols)):
        prog = _program(shape, sched, w)
        inp_loads = [i for i in prog.insns if i.op == "LOAD" and i.f["buf"] == 0]
        tiles = _cd(shape.oh, sched.h_tile) * _cd(shape.ow, sched.w_tile)
        assert len(inp_loads) == (tiles if name == "full" else tiles * shape.c), name
        if name == "full":          # whole 14-column rows, every channel in one transfer
            assert all(i.f["y"] == shape.c and i.f["x"] % (14 * 4) == 0 for i in inp_loads)
        outs[name], rep = run(prog, x)
        _check(layer_cycles(shape, sched, M, w), rep.layers[0], name,
               layer_lower_bound(shape, sched, M, w))
    np.testing.assert_array_equal(outs["full"]["output_0"], outs["cols"]["output_0"])


@pytest.mark.parametrize("n_out,stride,k,pad,size", [(28, 2, 1, 0, 56), (56, 1, 3, 1, 56),
                                                     (112, 2, 7, 3, 224), (7, 3, 2, 0, 21),
                                                     (4, 2, 1, 1, 8), (1, 1, 1, 0, 1)])
def test_min_input_bytes_counts_touched_positions(n_out, stride, k, pad, size):
    """``ConvShape.min_input_bytes`` (the read side of the lower bound) equals a brute-force
    count of the input positions some output window reads."""
    touched = np.zeros(size, bool)
    for o in range(n_out):
        for i in range(k):
            if 0 <= o * stride - pad + i < size:
                touched[o * stride - pad + i] = True
    shape = ConvShape(2, 3, size, size, 4, k, k, stride, stride, (pad,) * 4, n_out, n_out)
    assert shape.min_input_bytes() == 2 * 3 * int(touched.sum()) ** 2 * 4


def _lpt_layout(counts: np.ndarray, pe_cols: int) -> np.ndarray:
    """Greedy balanced bins: filters, largest first, onto the least-loaded of ``pe_cols``
    PE columns that has room (``ceil(n / pe_cols)`` each); group ``g`` runs the ``g``-th
    filter of every column."""
    cap = -(-len(counts) // pe_cols)
    cols: list[list[int]] = [[] for _ in range(pe_cols)]
    load = [0] * pe_cols
    for i in np.argsort(-counts, kind="stable"):
        j = min((c for c in range(pe_cols) if len(cols[c]) < cap), key=lambda c: load[c])
        cols[j].append(int(i))
        load[j] += int(counts[i])
    return np.array([col[g] for g in range(cap) for col in cols if g < len(col)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=7), st.integers(1, 4))
def test_sorted_pe_order_is_optimal(counts, pe_cols):
    """Why the schedule space offers ``as_is`` and ``sorted`` but no third filter-to-PE
    assignment: a TACC costs the sum over consecutive groups of ``pe_cols`` filters of the
    group's largest count (``cycles.group_max_sum``), and sorting by count minimizes that
    sum over every permutation (brute force here); greedy balanced bins (LPT onto the PE
    columns) never beats it."""
    c = np.array(counts)
    best = min(group_max_sum(c[list(p)], pe_cols) for p in itertools.permutations(range(len(c))))
    assert group_max_sum(c[order_by_counts(c, "sorted")], pe_cols) == best
    assert group_max_sum(c[_lpt_layout(c, pe_cols)], pe_cols) >= best


def test_pe_mapping_changes_cycles_not_values():
    """The PE-array mapping (``Schedule.pxshift``: ``pe_rows >> pxshift`` pixel rows by
    ``pe_cols << pxshift`` filter columns) changes only the cost: on a 7x7 layer the
    output is bit-identical (integer-valued data), the cost model equals the interpreter
    under every mapping, and 4 pixel rows by 128 filters beat 16 x 32 (49 pixels fill
    4 passes of 16 rows: 64 slots) when the filters' non-zero counts are even, as with
    TWN on weights of one distribution; uneven counts favour small groups instead, which
    is why the tuner searches the mapping."""
    shape = _conv_shape(1, 64, 7, 7, 128, 3, 1, 1)
    rng = np.random.default_rng(9)
    w = (rng.choice(np.array([-1, 1], np.int8), size=(128, 64, 3, 3))
         * (rng.random((128, 64, 3, 3)) < 0.5)).astype(np.int8)
    x = {"x": rng.integers(-8, 9, (1, 64, 7, 7)).astype(np.float32)}
    base = default_schedule(shape, M, LayerWeights(w, True, False).max_bytes)
    outs, cycles = {}, {}
    for px in range(M.max_pxshift + 1):
        sched = replace(base, pxshift=px)
        prog = _program(shape, sched, w)
        assert {i.f["pxshift"] for i in prog.insns if i.op == "TACC"} == {px}
        outs[px], rep = run(prog, x)
        _check(layer_cycles(shape, sched, M, w), rep.layers[0], f"pxshift {px}",
               layer_lower_bound(shape, sched, M, w))
        cycles[px] = rep.layers[0].cycles
    for px in outs:
        np.testing.assert_array_equal(outs[px]["output_0"], outs[0]["output_0"])
    assert cycles[2] < cycles[0], cycles         # 4 pixel rows x 128 filters: 13 passes, 1 group
    with pytest.raises(Exception, match="pxshift"):
        check_schedule(shape, replace(base, pxshift=M.max_pxshift + 1), M, LayerWeights(w, True, False).max_bytes)


# ------------------------------------------------------------------ epilogue activations

class _ActNet(torch.nn.Module):
    """Convs whose epilogues cost more than a ReLU (hardswish: 2 steps, sigmoid / GELU: 4)
    or carry parameters (PReLU's per-channel slopes after the biases)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 40, 3, padding=1)
        self.c3 = torch.nn.Conv2d(40, 24, 1)
        self.c4 = torch.nn.Conv2d(24, 8, 3, padding=1)
        self.acts = torch.nn.ModuleList([torch.nn.Hardswish(), torch.nn.PReLU(40), torch.nn.Sigmoid(),
                                         torch.nn.GELU()])

    def forward(self, x):
        for conv, act in zip((self.c1, self.c2, self.c3, self.c4), self.acts):
            x = act(conv(x))
        return x


@pytest.mark.slow
def test_activation_epilogues_match_interpreter():
    torch.manual_seed(0)
    net = _ActNet().eval()
    with torch.no_grad():
        net.acts[1].weight.uniform_(0.05, 0.4)
    result = compile_model(net, (torch.zeros(1, 3, 12, 12),), config=QuantConfig())
    rec = _Recorder(result.mod, M, **result.codegen_args())
    rec.generate()
    acts = {}
    layers = {}
    for entry in rec.layers:
        if entry.shape is None:
            continue
        w, has_scale, res, ternary, dw = rec.seen[entry.var]
        shape = ConvShape(**{**entry.shape, "pads": tuple(entry.shape["pads"])})
        acts[entry.name] = shape.act
        layers[entry.name] = (shape, w, has_scale, variants(shape, LayerWeights(w, ternary, dw).max_bytes))
    assert sorted(acts.values()) == ["gelu", "hardswish", "prelu", "sigmoid"], acts
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    for kind in ("default", "f_small", "h_small"):
        scheds = {n: v[3][kind] for n, v in layers.items() if kind in v[3]}
        prog = build_program(result, M, schedules=scheds, reference=False)
        _, rep = run(prog, {"x": x})
        by_name = {layer.name: layer for layer in rep.layers}
        for name, sched in scheds.items():
            shape, w, has_scale, _ = layers[name]
            _check(layer_cycles(shape, sched, M, w, has_scale=has_scale), by_name[name], f"{name} {kind}",
                   layer_lower_bound(shape, sched, M, w, has_scale=has_scale))
