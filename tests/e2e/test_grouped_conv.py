"""Grouped convolutions on dLAC (any group count): G convolutions on channel slices.

A small net with grouped convs of several group counts (groups of 10 filters, of 8 with
a residual, 2-channel groups, groups of 40 filters, which do not divide the 32 PE
columns), 1x1 and 3x3, stride 2, and a depthwise conv (its own path), in every mode the
codegen has: the interpreter's output against the TVM CPU build of the same graph
(exact for int8 activations) and against PyTorch with full-precision weights; every
layer on dLAC; no filter tile straddles a group and each one loads only its group's
input channels; the cost model's prediction equals the interpreter's cycles (as in
``tests/tune``) and the tuner's schedules are legal and costed exactly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from target_dlac.codegen.generator import Codegen  # noqa: E402
from target_dlac.codegen.layer_weights import LayerWeights  # noqa: E402
from target_dlac.codegen.schedule import ConvShape, Schedule, channel_tiles, default_schedule, filter_tiles, \
    fits  # noqa: E402
from target_dlac.core.errors import CodegenError  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402
from target_dlac.sim.host import reference_module  # noqa: E402
from target_dlac.sim.interpreter import Interpreter, run  # noqa: E402
from target_dlac.tune.costmodel import cycles_lower_bound, layer_cycles, layer_lower_bound  # noqa: E402
from target_dlac.tune.layer_search import LayerJob, tune_layer  # noqa: E402
from target_dlac.tune.space import ScheduleSpace  # noqa: E402
from target_dlac.binary.program import Program, Tensor  # noqa: E402
from target_dlac.codegen.layer_weights import pe_order  # noqa: E402
from target_dlac.codegen.lower import Epilogue, align, lower_conv  # noqa: E402
from target_dlac.codegen.schedule import check, weight_tiles  # noqa: E402
from target_dlac.isa.blocks import pack_ternary  # noqa: E402
from target_dlac.isa.encoding import Insn  # noqa: E402
from tests.conftest import max_rel_err  # noqa: E402

M = Machine(act_skip="none")     # the cost model of weights alone (zero activations: test_act_skip)
#: layer -> groups of the grouped (not depthwise) convs of GroupNet
GROUPED = {"g1": 4, "g2": 5, "g3": 20, "g4": 2}


class GroupNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 3, padding=1)
        self.g1 = nn.Conv2d(24, 40, 3, padding=1, stride=2, groups=4)   # 6 -> 10 per group, stride 2
        self.g2 = nn.Conv2d(40, 40, 1, groups=5)                        # 8 -> 8, with a residual
        self.g3 = nn.Conv2d(40, 40, 3, padding=1, groups=20)            # 2 -> 2
        self.dw = nn.Conv2d(40, 40, 3, padding=1, groups=40)            # depthwise
        self.g4 = nn.Conv2d(40, 80, 1, groups=2)                        # 20 -> 40: > 32 PE columns
        self.bn = nn.BatchNorm2d(80)
        self.fc = nn.Linear(80, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.g1(x))
        x = torch.relu(self.g2(x) + x)
        x = torch.relu(self.g3(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.bn(self.g4(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = GroupNet().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return m, x.numpy()


_RESULTS: dict = {}


def _compile(net, weights: str, **kw):
    key = (weights, tuple(sorted(kw.items())))
    if key not in _RESULTS:
        m, x = net
        _RESULTS[key] = compile_model(m, (torch.from_numpy(x[:1]),),
                                      config=QuantConfig(weights=weights, **kw))
    return _RESULTS[key]


def _layers(prog) -> dict:
    return {e["name"]: e for e in prog.meta["layers"]}


def _check_placement(prog):
    assert prog.host is None and prog.meta["fallbacks"] == []
    layers = _layers(prog)
    for name, g in GROUPED.items():
        assert layers[name]["op"] == "conv2d" and layers[name]["shape"]["groups"] == g, layers[name]
    assert layers["dw"]["op"] == "dwconv2d" and layers["dw"]["shape"]["groups"] == 1


# ------------------------------------------------------------------ one layer, no compile

def _shape(n, c, hw, f, k, s, p, groups, residual=False):
    o = (hw + 2 * p - k) // s + 1
    return ConvShape(n, c, hw, hw, f, k, k, s, s, (p, p, p, p), o, o, False, residual, True, groups=groups)


#: (shape, density): groups of 12 filters (3x3, stride 2), of 40 (> 32 PE columns, 1x1,
#: residual), one input channel per group with 2 filters (not depthwise)
SYNTHETIC = {"g3_3x3_s2": (_shape(2, 24, 9, 36, 3, 2, 1, 3), 0.5),
             "g2_1x1_res": (_shape(1, 40, 6, 80, 1, 1, 0, 2, residual=True), 0.6),
             "g12_c1": (_shape(1, 12, 8, 24, 3, 1, 1, 12), 0.7)}


def _layer_program(shape: ConvShape, sched: Schedule, w: np.ndarray, prm: np.ndarray) -> Program:
    """A one-layer program as the codegen builds it: ternary blocks per weight tile (PE
    order), scale + bias per filter tile, ReLU, optional residual input."""
    consts = bytearray()

    def put(data: bytes) -> int:
        addr = align(len(consts))
        consts.extend(b"\0" * (addr - len(consts)) + data)
        return addr

    wblock, pblock, nconst = {}, {}, 0
    for fi, ci, (f0, f1), (c0, c1) in weight_tiles(shape, sched):
        tile = w[f0:f1, c0:c1]
        data = pack_ternary(tile, pe_order(tile, sched.pe_order))
        wblock[(fi, ci)] = (put(data), len(data))
        nconst += len(data)
        if ci == 0:
            data = np.concatenate([prm[0, f0:f1], prm[1, f0:f1]]).astype("<f4").tobytes()
            pblock[fi] = (put(data), len(data))
            nconst += len(data)
    x_addr = align(len(consts))
    out_bytes = shape.n * shape.f * shape.oh * shape.ow * 4
    out_addr = align(x_addr + shape.n * shape.c * shape.h * shape.w * 4)
    res_addr = align(out_addr + out_bytes)
    insns = lower_conv(shape, sched, M, x_addr=x_addr, out_addr=out_addr, wblock=wblock, pblock=pblock,
                       epi=Epilogue(True, "relu", residual_addr=res_addr if shape.residual else None))
    n_layer = len(insns)
    insns.append(Insn("HALT"))
    tensors = [Tensor("x", "input", (shape.n, shape.c, shape.h, shape.w), "float32", x_addr),
               Tensor("output_0", "output", (shape.n, shape.f, shape.oh, shape.ow), "float32", out_addr)]
    if shape.residual:
        tensors.append(Tensor("r", "input", (shape.n, shape.f, shape.oh, shape.ow), "float32", res_addr))
    read = shape.min_input_bytes() + nconst + (out_bytes if shape.residual else 0)
    meta = {"dram_bytes": align(res_addr + out_bytes),
            "layers": [{"name": "layer", "op": "conv2d", "precision": "ternary", "pc_start": 0,
                        "pc_end": n_layer, "min_dram_bytes": read + out_bytes, "min_write_bytes": out_bytes}]}
    return Program(M, insns, bytes(consts), tensors, meta)


def _grouped_oracle(shape: ConvShape, w, prm, x, r=None) -> np.ndarray:
    """NumPy: each group's filters over its own input channels, then scale, bias,
    residual and ReLU in float32 (integer-valued data: the sums are exact)."""
    p = shape.pads[0]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((shape.n, shape.f, shape.oh, shape.ow), np.float32)
    for f in range(shape.f):
        g = f // shape.fg
        xs = xp[:, g * shape.cg:(g + 1) * shape.cg]
        for ky in range(shape.kh):
            for kx in range(shape.kw):
                win = xs[:, :, ky:ky + shape.sh * shape.oh:shape.sh, kx:kx + shape.sw * shape.ow:shape.sw]
                out[:, f] += np.einsum("nchw,c->nhw", win, w[f, :, ky, kx].astype(np.float32))
    y = (out * prm[0][None, :, None, None]).astype(np.float32) + prm[1][None, :, None, None]
    if r is not None:
        y = y + r
    return np.maximum(y, 0)


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_one_grouped_layer_against_numpy_and_costmodel(name):
    """Every schedule variant: the interpreter's output equals the NumPy grouped conv
    exactly, and the cost model's cycles (and lower bound) equal the interpreter's."""
    shape, density = SYNTHETIC[name]
    rng = np.random.default_rng(len(name))
    w = (rng.random((shape.f, shape.cg, shape.kh, shape.kw)) < density) * rng.choice([-1, 1], (shape.f, shape.cg,
                                                                                          shape.kh, shape.kw))
    w = w.astype(np.int8)
    prm = np.stack([rng.integers(1, 4, shape.f) * 0.5, rng.integers(-4, 5, shape.f) * 0.25]).astype(np.float32)
    lw = LayerWeights(w, True, False, groups=shape.groups)
    scheds = _variants(shape, lw.max_bytes)
    assert len(scheds) >= 5, scheds
    for kind, sched in scheds.items():
        prog = _layer_program(shape, sched, w, prm)
        ins = {t.name: rng.integers(-3, 4, t.shape).astype(np.float32) for t in prog.inputs}
        outs, rep = run(prog, ins)
        np.testing.assert_array_equal(outs["output_0"], _grouped_oracle(shape, w, prm, ins["x"], ins.get("r")))
        (layer,) = rep.layers
        pred = layer_cycles(shape, sched, M, lw)
        assert pred == {"total": layer.cycles, "compute": layer.compute, "load_stall": layer.load_stall,
                        "store_stall": layer.store_stall}, (name, kind, sched)
        assert layer_lower_bound(shape, sched, M, lw) == layer.lower_bound_cycles
        assert 0 < cycles_lower_bound(shape, sched, M, lw) <= layer.cycles


def test_grouped_shape_and_schedule_checks():
    shape = SYNTHETIC["g3_3x3_s2"][0]
    assert (shape.cg, shape.fg, shape.k) == (8, 12, 72)
    assert filter_tiles(shape, 5) == [(0, 5), (5, 10), (10, 12), (12, 17), (17, 22), (22, 24),
                                      (24, 29), (29, 34), (34, 36)]
    assert channel_tiles(shape, Schedule(5, 3, 1, 1), (12, 17)) == [(8, 11), (11, 14), (14, 16)]
    wb = LayerWeights(np.ones((36, 8, 3, 3), np.int8), True, False, groups=3).max_bytes
    with pytest.raises(CodegenError, match=r"where: schedule .*f_tile=13 is outside \[1, 12\]"):
        check(shape, Schedule(13, 8, 1, 1), M, wb, where="where")
    with pytest.raises(CodegenError, match=r"groups=5 does not split 24 input and 36 output channels"):
        check(replace(shape, groups=5), Schedule(1, 1, 1, 1), M, wb, where="where")
    with pytest.raises(ValueError, match="36 filters do not split into 5 groups"):
        LayerWeights(np.ones((36, 8, 3, 3), np.int8), True, False, groups=5)


# ------------------------------------------------------------------ values

@pytest.mark.slow
def test_fp32_matches_pytorch_and_tvm(net):
    m, x = net
    result = _compile(net, "fp32")
    prog = build_program(result, reference=False)
    _check_placement(prog)
    assert {i.op for i in prog.insns} >= {"MAC"} and not any(i.f.get("depthwise") for i in prog.insns
                                                             if i.op == "MAC" and i.f["c"] != i.f["f"])
    with torch.no_grad():
        expect = m(torch.from_numpy(x[:1])).numpy()
    out = run(prog, {"x": x[:1]})[0]["output_0"]
    assert max_rel_err(out, expect) <= 1e-5
    ref = run_reference(result.reference_module("fold"), x[:1])[0]
    assert max_rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("weights,kw,op", [
    pytest.param("ternary", {}, "TACC", marks=pytest.mark.slow),
    pytest.param("swis", {}, "SACC", marks=pytest.mark.slow),
    pytest.param("int4", {"cluster_size": 4}, "MAC", marks=pytest.mark.slow),
    pytest.param("ternary", {"cluster_size": 4}, "TACC", marks=pytest.mark.slow)])
def test_quantized_match_tvm(net, weights, kw, op):
    _, x = net
    result = _compile(net, weights, **kw)
    precs = {p.name: p.precision for p in result.layers}
    assert all(precs[name] == weights for name in GROUPED), precs
    prog = build_program(result, reference=False)
    _check_placement(prog)
    layers = _layers(prog)
    for name in GROUPED:       # the grouped layers run the mode's own instruction
        e = layers[name]
        assert {i.op for i in prog.insns[e["pc_start"]:e["pc_end"]]} >= {op}, name
    interp = Interpreter(prog)
    ref_mod = result.reference_module("fold")
    for i in range(2):
        out = interp.run({"x": x[i:i + 1]})[0]["output_0"]
        assert max_rel_err(out, run_reference(ref_mod, x[i:i + 1])[0]) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["ternary", "fp32", "swis"])
def test_int8_activations_are_exact(net, weights):
    _, x = net
    result = _compile(net, weights)
    prog = build_program(result, activations="int8", calib={"x": x[:4]})
    _check_placement(prog)
    ref = reference_module(prog)
    interp = Interpreter(prog)
    for i in range(4, 6):
        out = interp.run({"x": x[i:i + 1]})[0]["output_0"]
        np.testing.assert_array_equal(out, run_reference(ref, x[i:i + 1])[0])


@pytest.mark.slow
def test_fp16_activations_match_reference(net):
    _, x = net
    result = _compile(net, "ternary")
    prog = build_program(result, activations="fp16")
    _check_placement(prog)
    assert all(i.f["dtype"] == 1 for i in prog.insns if i.op in ("TACC", "MAC"))
    out = Interpreter(prog).run({"x": x[:1]})[0]["output_0"]
    assert max_rel_err(out, run_reference(reference_module(prog), x[:1])[0]) <= 1e-2


# ------------------------------------------------------------------ tiling

@pytest.mark.slow
def test_tiles_stay_in_their_group(net):
    """Every filter tile lies in one group, and its TACCs read exactly that group's input
    channels: the INP loads of a layer cover only the group's slice of the input."""
    result = _compile(net, "ternary")
    prog = build_program(result, reference=False)
    for name, g in GROUPED.items():
        e = _layers(prog)[name]
        shape = ConvShape(**{**e["shape"], "pads": tuple(e["shape"]["pads"])})
        sched = Schedule.from_dict(e["schedule"])
        assert sched.f_tile <= shape.fg and sched.c_tile <= shape.cg
        ftiles = filter_tiles(shape, sched.f_tile)
        assert sorted(f for a, b in ftiles for f in range(a, b)) == list(range(shape.f))
        for fr in ftiles:
            grp = fr[0] // shape.fg
            assert (fr[1] - 1) // shape.fg == grp
            cts = channel_tiles(shape, sched, fr)
            assert cts[0][0] == grp * shape.cg and cts[-1][1] == (grp + 1) * shape.cg
        convs = [i for i in prog.insns[e["pc_start"]:e["pc_end"]] if i.op == "TACC"]
        assert len(convs) == shape.n * g * -(-shape.fg // sched.f_tile) * -(-shape.cg // sched.c_tile) * \
            -(-shape.oh // sched.h_tile) * -(-shape.ow // sched.w_tile)
        assert all(i.f["c"] <= shape.cg and i.f["f"] <= shape.fg and not i.f["depthwise"] for i in convs)


@pytest.mark.slow
def test_bad_schedule_names_the_layer(net):
    result = _compile(net, "ternary")
    with pytest.raises(CodegenError, match=r"layer g2: .*f_tile=16 is outside \[1, 8\]"):
        build_program(result, reference=False, schedules={"g2": Schedule(16, 8, 8, 8)})
    with pytest.raises(CodegenError, match=r"layer g1: .*c_tile=12 is outside \[1, 6\]"):
        build_program(result, reference=False, schedules={"g1": Schedule(10, 12, 8, 8)})


# ------------------------------------------------------------------ cost model and tuner

class _Recorder(Codegen):
    """The codegen, remembering each layer's lowered weights and epilogue."""

    def _layer_weights(self, spec, x, out, res):
        w, prm, epi = super()._layer_weights(spec, x, out, res)
        self.seen = getattr(self, "seen", {})
        self.seen[self.layer_names.get(spec.layer, spec.layer)] = (w, epi.has_scale, spec)
        return w, prm, epi


def _variants(shape: ConvShape, wbytes) -> dict:
    d = default_schedule(shape, M, wbytes)
    cand = {"default": d,
            "f_small": replace(d, f_tile=max(1, d.f_tile // 2 - 1)),
            "c_small": replace(d, c_tile=max(1, -(-d.c_tile // 3))),
            "filter_outer": replace(d, order="filter_outer", h_tile=max(1, -(-shape.oh // 3))),
            "single_buffer": replace(d, double_buffer=False),
            "as_is": replace(d, pe_order="as_is"),
            "pe_map": replace(d, pxshift=M.max_pxshift // 2)}
    return {k: s for k, s in cand.items() if (k == "default" or s != d) and fits(shape, s, M, wbytes)}


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["ternary", "fp32"])
def test_costmodel_matches_interpreter(net, weights):
    _, x = net
    result = _compile(net, weights)
    rec = _Recorder(result.mod, M, **result.codegen_args())
    prog = rec.generate()
    layers = {}
    for e in prog.meta["layers"]:
        if e["name"] in GROUPED:
            w, has_scale, spec = rec.seen[e["name"]]
            shape = ConvShape(**{**e["shape"], "pads": tuple(e["shape"]["pads"])})
            lw = LayerWeights(w, shape.ternary, False, groups=shape.groups)
            layers[e["name"]] = (shape, lw, has_scale, _variants(shape, lw.max_bytes))
    assert set(layers) == set(GROUPED)
    kinds = set()
    for kind in ("default", "f_small", "c_small", "filter_outer", "single_buffer", "as_is", "pe_map"):
        scheds = {n: v[3][kind] for n, v in layers.items() if kind in v[3]}
        if not scheds:
            continue
        p = build_program(result, M, schedules=scheds, reference=False)
        _, rep = run(p, {"x": x[:1]})
        got = {l.name: l for l in rep.layers}
        for name, sched in scheds.items():
            shape, lw, has_scale, _ = layers[name]
            pred = layer_cycles(shape, sched, M, lw, has_scale=has_scale)
            l = got[name]
            assert pred == {"total": l.cycles, "compute": l.compute, "load_stall": l.load_stall,
                            "store_stall": l.store_stall}, (name, kind, sched)
            assert layer_lower_bound(shape, sched, M, lw, has_scale=has_scale) == l.lower_bound_cycles
            assert 0 < cycles_lower_bound(shape, sched, M, lw, has_scale=has_scale) <= l.cycles
            kinds.add(kind)
    assert len(kinds) >= 5, kinds


@pytest.mark.slow
def test_tuner_searches_within_groups(net):
    """The schedule space of a grouped layer offers only tiles within a group, and the
    tuned schedule's predicted cycles are what the interpreter counts."""
    _, x = net
    result = _compile(net, "ternary")
    rec = _Recorder(result.mod, M, **result.codegen_args())
    prog = rec.generate()
    e = _layers(prog)["g1"]
    w, has_scale, _ = rec.seen["g1"]
    shape = ConvShape(**{**e["shape"], "pads": tuple(e["shape"]["pads"])})
    lw = LayerWeights(w, True, False, groups=shape.groups)
    space = ScheduleSpace(shape, M, lw.max_bytes)
    scheds = list(space)
    assert scheds and all(s.f_tile <= shape.fg and s.c_tile <= shape.cg for s in scheds)
    assert max(s.f_tile for s in scheds) == shape.fg
    job = LayerJob(shape, lw, has_scale)
    out = tune_layer(job, M, "exhaustive", None, None, None, 0)
    best = Schedule.from_dict(out["schedule"])
    assert out["cycles"] <= out["default_cycles"]
    p = build_program(result, M, schedules={"g1": best}, reference=False)
    _, rep = run(p, {"x": x[:1]})
    assert {l.name: l.cycles for l in rep.layers}["g1"] == out["cycles"]


@pytest.mark.slow
def test_tune_model_and_compile_with_log(net, tmp_path):
    """``tune_model`` over the whole net, then a build with the log: every grouped layer
    tuned, and the interpreter counts the logged cycles."""
    from compiler.tune import tune_model

    _, x = net
    result = _compile(net, "ternary")
    log = tmp_path / "log.jsonl"
    rows = {r["layer"]: r for r in tune_model(result, M, log, trials=40, jobs=1, strategy="anneal")}
    assert all(rows[name]["status"] == "tuned" for name in GROUPED)
    prog = build_program(result, M, tuning_log=log, reference=False)
    _check_placement(prog)
    _, rep = run(prog, {"x": x[:1]})
    for layer in rep.layers:
        if layer.name in GROUPED:
            assert layer.cycles == rows[layer.name]["tuned_cycles"] <= rows[layer.name]["default_cycles"]
