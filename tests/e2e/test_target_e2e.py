"""End to end on the dLAC target: codegen -> binary -> ISA interpreter, checked against
the TVM CPU build of the same quantized graph (max |out - ref| / max |ref| <= 1e-5).

Covers the real MNIST CNN on real images, ResNet-18 at 224x224 (slow), a small model
with every op kind the lowering takes (plus a host softmax), explicit schedules, a
schedule that does not fit, the container round trip, and integer exactness of the
float32 accumulation path.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.datasets import mnist_cnn, mnist_test
from target_dlac.core.errors import CodegenError
from compiler.models import randomize_bn, resnet18
from compiler.reference import Reference
from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.sim.host import HostRunner
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import ACTS, POOL_MODES, bits_f
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import Schedule
from tests.conftest import max_rel_err

TOL = 1e-5


def _interp(prog, x, host=None):
    """Run ``prog`` on ``x``; returns (output_0, report).  ``host`` is a prebuilt HostRunner."""
    if prog.host is not None and host is None:
        host = HostRunner(prog)
    (name,) = [t.name for t in prog.inputs]
    outs, rep = run(prog, {name: np.ascontiguousarray(x, np.float32)}, host_runner=host)
    assert list(outs) == ["output_0"]
    return outs["output_0"], rep


def _layer(rep, name):
    (layer,) = [l for l in rep.layers if l.name == name]
    return layer


# ------------------------------------------------------------------ MNIST (real data)

@pytest.fixture(scope="module")
def mnist_images():
    x, y = mnist_test(20)
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32
    return x, y


@pytest.fixture(scope="module", params=["default", "all_ternary"])
def mnist_build(request):
    cfg = QuantConfig() if request.param == "default" else QuantConfig.all_ternary()
    result = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=cfg)
    prog = build_program(result, reference=False)
    return request.param, result, prog, Reference(result.reference_module("fold"))


def test_mnist_precisions(mnist_build):
    kind, result, prog, _ = mnist_build
    precs = [l.precision for l in result.layers]
    if kind == "default":
        assert precs[0] == precs[-1] == "fp32" and set(precs[1:-1]) == {"ternary"}
    else:
        assert set(precs) == {"ternary"}
    assert prog.host is None and prog.meta["fallbacks"] == []
    ops = {i.op for i in prog.insns}
    assert "TACC" in ops and ("MAC" in ops) == (kind == "default")


def test_mnist_matches_reference_image_by_image(mnist_build, mnist_images):
    _, _, prog, ref = mnist_build
    x, _ = mnist_images
    for i in range(4):
        xi = x[i:i + 1]
        out, rep = _interp(prog, xi)
        want = ref([xi])[0]
        assert out.shape == want.shape == (1, 10)
        assert max_rel_err(out, want) <= TOL, i
        assert rep.cycles["total"] > 0


def test_mnist_argmax_agrees_with_reference(mnist_build, mnist_images):
    _, _, prog, ref = mnist_build
    x, y = mnist_images
    got = np.array([_interp(prog, x[i:i + 1])[0].argmax() for i in range(len(x))])
    want = np.array([ref([x[i:i + 1]])[0].argmax() for i in range(len(x))])
    np.testing.assert_array_equal(got, want)
    assert (got == y).mean() >= 0.8      # real weights on real digits: the net actually works


# ------------------------------------------------------------------ ResNet-18 224x224

@pytest.fixture(scope="module")
def resnet18_run():
    torch.manual_seed(0)
    model = randomize_bn(resnet18(), seed=2)
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    result = compile_model(model, (torch.from_numpy(x),), config=QuantConfig())
    prog = build_program(result, reference=False)
    out, rep = _interp(prog, x)
    ref = Reference(result.reference_module("fold"))([x])[0]
    return result, prog, out, rep, ref


@pytest.mark.slow
def test_resnet18_224_matches_reference_and_report_is_sane(resnet18_run):
    result, _, out, rep, ref = resnet18_run
    assert out.shape == ref.shape == (1, 1000)
    assert max_rel_err(out, ref) <= TOL

    ternary = {l.name for l in result.layers if l.precision == "ternary"}
    assert len(ternary) == 19
    seen = set()
    for l in rep.layers:
        assert l.compute + l.load_stall + l.store_stall == l.cycles, l.name
        assert l.cycles >= l.lower_bound_cycles > 0, l.name
        if l.name in ternary:
            seen.add(l.name)
            assert l.op == "conv2d" and l.precision == "ternary"
            assert l.speedup_weights > 1, l.name
            assert 0 < l.load_balance <= 1, l.name
            assert l.issued_macs < l.dense_macs, l.name
        else:
            assert l.speedup_weights == 1.0 and l.issued_macs == l.dense_macs, l.name
        # the default machine skips zero activations too: both parts, never slower
        assert l.zero_skip_speedup == l.speedup_total >= max(l.speedup_weights, l.speedup_acts) >= 1.0, l.name
    assert seen == ternary
    assert sum(l.cycles for l in rep.layers) == rep.cycles["total"]
    c = rep.cycles
    assert c["compute"] + c["load_stall"] + c["store_stall"] == c["total"]
    assert rep.extra["dense_macs"] == result.totals()["dense_macs"]


# ------------------------------------------------------------------ every op kind

class AllOps(nn.Module):
    """Conv stem, max-pool with padding (on signed values, so the padding must be -inf),
    depthwise conv + BN + ReLU6 (clip 0..6), 1x1 conv with the residual add and ReLU
    fused, avg-pool with padding and count_include_pad=False, a standalone add+ReLU,
    global (adaptive) average pool, Linear, softmax (a host op)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mp = nn.MaxPool2d(3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act6 = nn.ReLU6()
        self.pw = nn.Conv2d(16, 16, 1)
        self.ap = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.mp(self.stem(x))
        z = self.act6(self.bn(self.dw(y)))
        z = torch.relu(self.pw(z) + y)
        z = torch.relu(self.ap(z) + z)
        return torch.softmax(self.fc(torch.flatten(self.gap(z), 1)), dim=1)


@pytest.fixture(scope="module")
def allops_model():
    torch.manual_seed(0)
    return randomize_bn(AllOps(), seed=3)


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2"])
def allops_build(request, allops_model):
    batch = request.param
    x = 10 * np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
    m = allops_model
    with torch.no_grad():       # the input exercises both clip bounds and signed max-pool borders
        pre_clip = m.bn(m.dw(m.mp(m.stem(torch.from_numpy(x)))))
        assert (pre_clip > 6).any() and (pre_clip < 0).any()
        assert (m.stem(torch.from_numpy(x)) < 0).any()
    result = compile_model(allops_model, (torch.from_numpy(x),), config=QuantConfig())
    prog = build_program(result)                  # with the REF section (round trip below)
    return x, result, prog


def test_allops_lowering_covers_every_op(allops_build):
    _, result, prog = allops_build
    assert [(l.name, l.precision) for l in result.layers] == [
        ("stem", "fp32"), ("dw", "ternary"), ("pw", "ternary"), ("fc", "fp32")]
    assert prog.meta["fallbacks"] == []
    ops = [l["op"] for l in prog.meta["layers"]]
    for op in ("conv2d", "max_pool2d", "dwconv2d", "avg_pool2d", "add_relu",
               "global_avg_pool", "dense", "host"):
        assert op in ops, (op, ops)
    assert [h["op"] for h in prog.meta["host_ops"]] == ["nn.softmax"]
    assert ops[-1] == "host"
    epis = [i.f for i in prog.insns if i.op == "EPI"]
    clips = [f for f in epis if ACTS[f["act"]] == "clip"]
    assert clips and all(bits_f(f["lo_bits"]) == 0.0 and bits_f(f["hi_bits"]) == 6.0 for f in clips)
    assert any(f["has_res"] and ACTS[f["act"]] == "relu" for f in epis)   # residual fused into pw
    pools = [i.f for i in prog.insns if i.op == "POOL"]
    assert any(POOL_MODES[f["mode"]] == "max" and f["pl"] == 1 for f in pools)
    assert any(POOL_MODES[f["mode"]] == "avg" and f["pl"] == 1 and not f["count_pad"] for f in pools)
    assert any(i.f["depthwise"] for i in prog.insns if i.op == "TACC")


def test_allops_matches_reference(allops_build):
    x, result, prog = allops_build
    out, rep = _interp(prog, x)
    ref = Reference(result.reference_module("fold"))([x])[0]
    assert out.shape == ref.shape == (x.shape[0], 10)
    assert max_rel_err(out, ref) <= TOL
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert rep.host_ops == 1


def test_allops_pre_softmax_logits_match(allops_model):
    """Softmax squashes errors; check the dLAC part alone too (the same net without it)."""

    class NoSoftmax(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            m = self.inner
            y = m.mp(m.stem(x))
            z = m.act6(m.bn(m.dw(y)))
            z = torch.relu(m.pw(z) + y)
            z = torch.relu(m.ap(z) + z)
            return m.fc(torch.flatten(m.gap(z), 1))

    x = 10 * np.random.default_rng(7).standard_normal((2, 3, 16, 16)).astype(np.float32)
    result = compile_model(NoSoftmax(allops_model).eval(), (torch.from_numpy(x),),
                           config=QuantConfig.all_ternary())
    prog = build_program(result, reference=False)
    assert prog.host is None
    out, _ = _interp(prog, x)
    ref = Reference(result.reference_module("fold"))([x])[0]
    assert max_rel_err(out, ref) <= TOL


def test_container_round_trip(allops_build):
    x, _, prog = allops_build
    blob = to_bytes(prog)
    prog2 = from_bytes(blob)
    assert prog2.host is not None and prog2.reference is not None
    assert to_bytes(prog2) == blob
    out1, rep1 = _interp(prog, x)
    out2, rep2 = _interp(prog2, x)
    np.testing.assert_array_equal(out1, out2)
    assert rep1.cycles == rep2.cycles
    assert [(l.name, l.cycles) for l in rep1.layers] == [(l.name, l.cycles) for l in rep2.layers]


# ------------------------------------------------------------------ explicit schedules

class SchedNet(nn.Module):
    """fp32 stem, a ternary 3x3 'body' (32 -> 128 channels on 24x24) to schedule, fp32 head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Conv2d(32, 128, 3, padding=1)
        self.head = nn.Conv2d(128, 8, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))


@pytest.fixture(scope="module")
def sched_setup():
    torch.manual_seed(0)
    x = np.random.default_rng(11).standard_normal((1, 3, 24, 24)).astype(np.float32)
    result = compile_model(SchedNet().eval(), (torch.from_numpy(x),), config=QuantConfig())
    assert [(l.name, l.precision) for l in result.layers] == [
        ("stem", "fp32"), ("body", "ternary"), ("head", "fp32")]
    ref = Reference(result.reference_module("fold"))([x])[0]
    return x, result, ref


def _with_schedule(setup, sched, machine=None):
    x, result, _ = setup
    prog = build_program(result, machine, schedules={"body": sched}, reference=False)
    (meta,) = [l for l in prog.meta["layers"] if l["name"] == "body"]
    assert meta["schedule"] == sched.to_dict()
    out, rep = _interp(prog, x)
    return out, rep, prog


#: several filter tiles (2 of 64), several PE groups per tile (64 > pe_cols = 32), and
#: 5 row tiles of 5 rows on 24 output rows (the last one partial)
COMBOS = [Schedule(64, 32, 5, 24, order=o, double_buffer=db, pe_order=pe)
          for o, db, pe in itertools.product(("spatial_outer", "filter_outer"), (True, False),
                                             ("sorted", "as_is"))]


def _sid(s) -> str:
    return "default" if s is None else (f"f{s.f_tile}c{s.c_tile}h{s.h_tile}w{s.w_tile}-{s.order}"
                                         f"-{'db' if s.double_buffer else 'sb'}-{s.pe_order}")


def test_schedule_combinations_agree(sched_setup):
    """order x double_buffer x pe_order on one tiling.  Bit-identical outputs are required
    only among schedules with the same tile shapes: NumPy's BLAS picks its sgemm kernel by
    matrix shape, so a different number of pixels or filters per TACC may round
    differently in float32 even with the same c_tile (those are held to 1e-5 below; the
    integer test at the end checks exactness across every tiling)."""
    _, _, ref = sched_setup
    runs = {s: _with_schedule(sched_setup, s) for s in COMBOS}
    first = runs[COMBOS[0]][0]
    for s, (out, rep, _) in runs.items():
        assert max_rel_err(out, ref) <= TOL, s
        # same tile shapes (hence the same c_tile): bit-identical results
        np.testing.assert_array_equal(out, first, err_msg=str(s))
        body = _layer(rep, "body")
        assert body.compute + body.load_stall + body.store_stall == body.cycles
    for order, pe in itertools.product(("spatial_outer", "filter_outer"), ("sorted", "as_is")):
        on = runs[Schedule(64, 32, 5, 24, order, True, pe)][1]
        off = runs[Schedule(64, 32, 5, 24, order, False, pe)][1]
        assert on.cycles["total"] < off.cycles["total"], (order, pe)
        assert _layer(on, "body").cycles < _layer(off, "body").cycles, (order, pe)
    for order, db in itertools.product(("spatial_outer", "filter_outer"), (True, False)):
        srt = _layer(runs[Schedule(64, 32, 5, 24, order, db, "sorted")][1], "body")
        asis = _layer(runs[Schedule(64, 32, 5, 24, order, db, "as_is")][1], "body")
        # 64 filters per tile = 2 groups of pe_cols: sorting by non-zero count balances them
        assert 0 < asis.load_balance < srt.load_balance <= 1, (order, db)
        assert srt.cycles <= asis.cycles, (order, db)
        assert srt.issued_macs == asis.issued_macs and srt.dense_macs == asis.dense_macs
    # the loop order really changes the instruction stream (not only the label)
    streams = {o: [(i.op, tuple(sorted(i.f.items()))) for i in runs[Schedule(64, 32, 5, 24, o)][2].insns]
               for o in ("spatial_outer", "filter_outer")}
    assert streams["spatial_outer"] != streams["filter_outer"]


@pytest.mark.parametrize("sched", [
    Schedule(64, 32, 4, 10),                       # w_tile < OW (and not dividing it)
    Schedule(64, 12, 6, 24),                       # c_tile < C (not dividing 32)
    Schedule(128, 32, 7, 24, order="filter_outer"),  # h_tile 7 does not divide OH = 24
    Schedule(32, 8, 7, 5, order="filter_outer", double_buffer=False, pe_order="as_is"),
], ids=_sid)
def test_schedule_tilings_match_reference(sched_setup, sched):
    _, _, ref = sched_setup
    out, rep, _ = _with_schedule(sched_setup, sched)
    assert max_rel_err(out, ref) <= TOL
    assert sum(l.cycles for l in rep.layers) == rep.cycles["total"]


def test_schedule_same_c_tile_other_order_bit_identical(sched_setup):
    """The loop order, buffering and PE order never change the arithmetic of a tiling."""
    a, _, _ = _with_schedule(sched_setup, Schedule(32, 8, 7, 5))
    b, _, _ = _with_schedule(sched_setup, Schedule(32, 8, 7, 5, order="filter_outer",
                                                double_buffer=False, pe_order="as_is"))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sched, machine, buf", [
    (Schedule(128, 8, 24, 24), None, "ACC"),                       # f_tile x h_tile too big
    (Schedule(32, 32, 24, 24), Machine(inp_buf_kib=16), "INP"),   # input tile too big
    (Schedule(128, 32, 6, 24), Machine(wgt_buf_kib=8), "WGT"),    # weight block too big
])
def test_schedule_that_does_not_fit(sched_setup, sched, machine, buf):
    _, result, _ = sched_setup
    with pytest.raises(CodegenError) as ei:
        build_program(result, machine, schedules={"body": sched}, reference=False)
    msg = str(ei.value)
    assert "layer body" in msg and buf in msg and "does not fit" in msg, msg


def test_schedule_out_of_range_tile(sched_setup):
    _, result, _ = sched_setup
    with pytest.raises(CodegenError, match=r"layer body.*c_tile=33 is outside \[1, 32\]"):
        build_program(result, schedules={"body": Schedule(32, 33, 4, 4)}, reference=False)


# ------------------------------------------------------------------ integer exactness

def _int_conv(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Direct NCHW conv (stride 1) in int64."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, f, oh, ow), np.int64)
    w = w.astype(np.int64)
    for ky in range(kh):
        for kx in range(kw):
            out += np.einsum("fc,nchw->nfhw", w[:, :, ky, kx], x[:, :, ky:ky + oh, kx:kx + ow])
    return out


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(48, 40, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def int_conv_setup():
    rng = np.random.default_rng(21)
    model = OneConv().eval()
    w = rng.integers(-1, 2, size=model.conv.weight.shape).astype(np.float32)   # ternary: scale 1
    with torch.no_grad():
        model.conv.weight.copy_(torch.from_numpy(w))
    x = rng.integers(-255, 256, size=(2, 48, 14, 14)).astype(np.float32)
    result = compile_model(model, (torch.from_numpy(x),), config=QuantConfig.all_ternary())
    assert [(l.name, l.precision) for l in result.layers] == [("conv", "ternary")]
    want = _int_conv(x.astype(np.int64), w.astype(np.int64), 1)
    assert np.abs(want).max() < 2 ** 24                     # the float32-exact range
    assert np.abs(want).max() > 2 ** 13                     # ... but well above tiny values
    return x, result, want


@pytest.mark.parametrize("sched", [
    None,                                                    # the greedy default
    Schedule(40, 48, 14, 14),
    Schedule(16, 7, 5, 6),
    Schedule(40, 13, 3, 14, order="filter_outer", double_buffer=False, pe_order="as_is"),
    Schedule(33, 48, 4, 9, pe_order="as_is"),
], ids=_sid)
def test_integer_inputs_exact_through_ternary_conv(int_conv_setup, sched):
    """An integer dot product is exact in float32 while partial sums stay below 2^24: on
    integer inputs the interpreter's ternary conv equals the int64 conv bit for bit,
    whatever the tiling (every c_tile gives the same exact sums)."""
    x, result, want = int_conv_setup
    prog = build_program(result, schedules={"conv": sched} if sched else None, reference=False)
    assert {i.op for i in prog.insns} >= {"TACC"} and "MAC" not in {i.op for i in prog.insns}
    if sched is not None:
        (meta,) = prog.meta["layers"]
        assert meta["schedule"] == sched.to_dict(), prog.meta["layers"]
    out, _ = _interp(prog, x)
    assert out.dtype == np.float32 and out.shape == want.shape
    np.testing.assert_array_equal(out.astype(np.int64), want)
    np.testing.assert_array_equal(out, want.astype(np.float32))
