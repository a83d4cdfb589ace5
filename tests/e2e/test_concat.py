"""Channel concat on dLAC (``dlac.concat``, ``target_dlac/codegen/concat.py``): copies of each
input into its slice of the output through INP / ALU / ACC, in every activation mode.

Oracles: PyTorch (``--quant none``), the TVM CPU build of the quantized graph (ternary,
fp16), the TVM build of the int8 reference graph (exact), and, for the int8 requantization
of inputs whose exponents differ from the output's, NumPy's ``floor(q·2^(fy−fa) + 0.5)``
on the integers the interpreter left in DRAM.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from target_dlac.codegen.concat import requant
from target_dlac.codegen.modes import integer as integer_mode
from target_dlac.sim.host import HostRunner, reference_outputs
from target_dlac.sim.interpreter import Interpreter


class ThreeWay(nn.Module):
    """Three branches of different magnitudes (so their int8 exponents differ) joined by a
    channel concat, then a conv."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1), nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(18, 5, 3, padding=1)
        with torch.no_grad():
            self.b.weight.mul_(20)
            self.c.weight.mul_(0.05)
            self.c.bias.mul_(0.05)

    def forward(self, x):
        return self.head(torch.cat([self.a(x).relu(), self.b(x).relu(), self.c(x)], self.dim))


class AlongH(nn.Module):
    def forward(self, x):
        return torch.cat([x.relu(), x], 2)


class DenseBlock(nn.Module):
    """A DenseNet-style block: each layer sees the concat of all earlier features."""

    def __init__(self, layers: int = 3, growth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(8 + i * growth, growth, 3, padding=1) for i in range(layers))
        self.out = nn.Conv2d(8 + layers * growth, 4, 1)

    def forward(self, x):
        feats = [self.stem(x).relu()]
        for conv in self.convs:
            feats.append(conv(torch.cat(feats, 1).relu()))
        return self.out(torch.cat(feats, 1))


def _build(model, x, weights="fp32", **kw):
    torch.manual_seed(0)
    r = compile_model(model, (x,), config=QuantConfig(weights=weights))
    return build_program(r, **kw)


def _run(prog, x):
    interp = Interpreter(prog)
    out, _ = interp.run({"x": x}, HostRunner(prog) if prog.host is not None else None)
    return out["output_0"], interp


def _concats(prog):
    return [layer for layer in prog.meta["layers"] if layer["op"] == "concat"]


def _calib(shape):
    return {"x": np.random.default_rng(1).standard_normal((4, *shape[1:])).astype(np.float32)}


@pytest.mark.slow
def test_partition_takes_channel_concat_only():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    prog = _build(ThreeWay().eval(), x, "fp32")
    assert len(_concats(prog)) == 1 and prog.meta["host_ops"] == [] and prog.meta["fallbacks"] == []
    # dim -3 of NCHW is the channel axis too
    assert len(_concats(_build(ThreeWay(dim=-3).eval(), x, "fp32"))) == 1
    # along H: no dLAC lowering, the host runs it as before (and the result still matches)
    prog = _build(AlongH().eval(), x, "fp32")
    assert _concats(prog) == [] and [h["op"] for h in prog.meta["host_ops"]] == ["concat"]
    out, _ = _run(prog, x.numpy())
    assert np.array_equal(out, torch.cat([x.relu(), x], 2).numpy())


def test_fp32_matches_pytorch_batch2():
    torch.manual_seed(0)
    m, x = ThreeWay().eval(), torch.randn(2, 3, 8, 8)
    prog = _build(m, x, "fp32")
    assert [c["precision"] for c in _concats(prog)] == ["fp32"] and prog.meta["host_ops"] == []
    out, _ = _run(prog, x.numpy())
    want = m(x).detach().numpy()
    assert np.abs(out - want).max() / np.abs(want).max() < 1e-5


def test_ternary_matches_tvm_reference():
    torch.manual_seed(0)
    m, x = ThreeWay().eval(), torch.randn(1, 3, 8, 8)
    prog = _build(m, x, "ternary")
    assert len(_concats(prog)) == 1 and prog.meta["host_ops"] == []
    out, _ = _run(prog, x.numpy())
    ref = reference_outputs(prog, {"x": x.numpy()})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def test_fp16_matches_reference():
    torch.manual_seed(0)
    m, x = ThreeWay().eval(), torch.randn(1, 3, 8, 8)
    prog = _build(m, x, "fp32", activations="fp16")
    assert [c["precision"] for c in _concats(prog)] == ["fp16"] and prog.meta["host_ops"] == []
    out, _ = _run(prog, x.numpy())
    ref = reference_outputs(prog, {"x": x.numpy()})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2


@pytest.fixture
def int_codegen(monkeypatch):
    """Captures the IntCodegen of the next int8 build (its tensors' exponents)."""
    got = []
    orig = integer_mode.IntCodegen.generate

    def generate(self):
        got.append(self)
        return orig(self)

    monkeypatch.setattr(integer_mode.IntCodegen, "generate", generate)
    return got


@pytest.mark.slow
def test_int8_exact_and_requantized(int_codegen):
    torch.manual_seed(0)
    m, x = ThreeWay().eval(), torch.randn(2, 3, 8, 8)
    prog = _build(m, x, "fp32", activations="int8", calib=_calib(x.shape))
    icg = int_codegen[-1]
    ops = [layer["op"] for layer in prog.meta["layers"]]
    assert prog.meta["host_ops"] == [] and ops.count("concat") == 1
    assert ops.count("dequantize") == 1 and ops[-1] == "dequantize"     # only the graph output
    out, interp = _run(prog, x.numpy())
    assert np.array_equal(out, reference_outputs(prog, {"x": x.numpy()})[0])
    # NumPy oracle of the requantization, on the integers in DRAM
    dram, t = interp.mem["DRAM"], {tt.name: tt for tt in prog.tensors}

    def q(name):
        tt = t[name]
        return dram[tt.addr:tt.addr + int(np.prod(tt.shape))].view(np.int8).reshape(tt.shape)

    # the inputs: the int8 branch outputs, told apart by their channel counts (8, 6, 4)
    ins = [next(tt.name for tt in prog.tensors if tt.dtype == "int8" and tt.shape == (2, ch, 8, 8))
           for ch in (8, 6, 4)]
    cat = _concats(prog)[0]["var"]
    exps = [icg._exp_of(icg.producer[n]) for n in ins]
    fy = icg._exp_of(icg.producer[cat])
    assert len(set(exps + [fy])) >= 3, f"exponents {exps} -> {fy}: the test needs different ones"
    y, off = q(cat), 0
    for n, fa in zip(ins, exps):
        qa = q(n).astype(np.float64)
        want = np.clip(np.floor(qa * 2.0 ** (fy - fa) + 0.5), -128, 127)
        got = y[:, off:off + qa.shape[1]]
        assert np.array_equal(got, want), f"input {n} (exponent {fa} -> {fy})"
        off += qa.shape[1]
    assert off == y.shape[1]


@pytest.mark.parametrize("fa", range(-6, 10))
def test_requant_shifts_match_rounding(fa):
    """ALU int8 ``add(a, a)`` (docs/isa.md "ALU", in NumPy) with :func:`requant`'s shifts is
    round half up of ``a·2^(fy−fa)``, clipped, for every int8 ``a``."""
    a = np.arange(-128, 128, dtype=np.int64)
    for fy in range(-6, 10):
        sa, sb, shift = requant(fa, fy)
        assert 0 <= sa <= 63 and 0 <= sb <= 63 and 1 <= shift <= 63
        alu = np.clip(((a << sa) + (a << sb) + (1 << (shift - 1))) >> shift, -128, 127)
        want = np.clip(np.floor(a * 2.0 ** (fy - fa) + 0.5), -128, 127)
        assert np.array_equal(alu, want), (fa, fy)


@pytest.mark.slow
def test_dense_block_fp32_and_int8(int_codegen):
    torch.manual_seed(0)
    m, x = DenseBlock().eval(), torch.randn(1, 3, 8, 8)
    prog = _build(m, x, "fp32")
    assert len(_concats(prog)) == 4 and prog.meta["host_ops"] == []
    out, _ = _run(prog, x.numpy())
    want = m(x).detach().numpy()
    assert np.abs(out - want).max() / np.abs(want).max() < 1e-5
    prog = _build(m, x, "fp32", activations="int8", calib=_calib(x.shape))
    assert len(_concats(prog)) == 4 and prog.meta["host_ops"] == []
    out, _ = _run(prog, x.numpy())
    assert np.array_equal(out, reference_outputs(prog, {"x": x.numpy()})[0])
    assert np.abs(out - want).max() / np.abs(want).max() < 0.1        # int8 is close to float


def test_int8_constant_input_runs_on_host():
    """A constant among the inputs has no calibrated exponent: the concat stays on the host."""
    class WithConst(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(6, 2, 1)
            self.register_buffer("k", torch.randn(1, 2, 8, 8))

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.k], 1))

    torch.manual_seed(0)
    m, x = WithConst().eval(), torch.randn(1, 3, 8, 8)
    prog = _build(m, x, "fp32")          # fp32: the constant is copied from CONSTS on dLAC
    assert len(_concats(prog)) == 1
    out, _ = _run(prog, x.numpy())
    want = m(x).detach().numpy()
    assert np.abs(out - want).max() / np.abs(want).max() < 1e-5
    prog = _build(m, x, "fp32", activations="int8", calib=_calib(x.shape))
    assert _concats(prog) == [] and any("constant" in f["reason"] for f in prog.meta["fallbacks"])
    out, _ = _run(prog, x.numpy())
    assert np.array_equal(out, reference_outputs(prog, {"x": x.numpy()})[0])


class DenseCat(nn.Module):
    """Rank 2: two dense branches joined along axis 1."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 5), nn.Linear(12, 3), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.cat([self.a(x).relu(), self.b(x)], 1))


def test_rank2_fp32_and_cycles():
    torch.manual_seed(0)
    m, x = DenseCat().eval(), torch.randn(3, 12)
    prog = _build(m, x, "fp32")
    assert len(_concats(prog)) == 1 and prog.meta["host_ops"] == []
    interp = Interpreter(prog)
    out, rep = interp.run({"x": x.numpy()})
    want = m(x).detach().numpy()
    assert np.abs(out["output_0"] - want).max() / np.abs(want).max() < 1e-5
    # cost (docs/isa.md "Concat"): one LOAD / ALU / STORE per (image, input) here, pipelined:
    # at least the six LOADs one after another, at most everything in sequence plus a SYNC
    row = next(layer for layer in rep.layers if layer.op == "concat")
    mm = prog.machine
    pieces = 3 * 2
    most = pieces * (2 * (mm.dma_latency + 1) + mm.compute_setup + 1) + 1
    assert (pieces + 1) * mm.dma_latency <= row.cycles <= most
