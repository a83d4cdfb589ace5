"""4- and 2-bit activations in the integer pipeline (issue 14 item 2, WRPN): ``build_program(...,
activations="int8", act_bits=4 | 2)`` and ``dlac compile --act-bits``.

The rule under test (:func:`target_dlac.codegen.modes.intmath.unsigned_output`): the output of
a conv / dense layer with a ReLU-like epilogue (``relu``, ``clip`` from 0: ReLU6) and no
residual is an unsigned b-bit tensor, values in ``[0, 2^b - 1]``; max-pools of it stay b-bit;
everything else (input quantize, logits, residual joins, average pools) stays int8.  The
contract is the int8 pipeline's: the interpreter equals the TVM build of the binary's REF
graph bit for bit.  The tensors are read from the interpreter's DRAM after a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from target_dlac.binary.container import to_bytes
from target_dlac.codegen.modes import intmath as Q
from target_dlac.core.errors import ConfigError
from target_dlac.isa.encoding import ACTS, BUFFERS, s32
from target_dlac.sim.interpreter import Interpreter
from tests.cli_helpers import FACTORY, cli, error_line, ok
from tests.e2e.test_int8_pipeline import assert_exact, host_runner, mix_model, tv_resnet

BITS = (4, 2)


# ------------------------------------------------------------------------ the arithmetic

@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("signed", [True, False])
def test_exponent_puts_the_max_in_the_top_step(bits, signed):
    """``maxabs * 2^f`` lies in (top / 2, top], top = 2^(b-1) signed, 2^b unsigned: the
    largest value uses the range's top bit and the clip loses at most one step."""
    top = 2.0 ** (bits - 1 if signed else bits)
    for m in np.geomspace(1e-3, 1e3, 97).tolist() + [1.0, 2.0, 6.0, 2.82, 0.5]:
        f = Q.exponent(m, bits, signed)
        assert top / 2 < m * 2.0 ** f <= top, (m, f)


def test_exponent_values_and_edges():
    assert Q.exponent(1.0) == Q.exponent(1.0, 8, True) == 7                 # the int8 default
    assert Q.exponent(2.82) == 5                                           # MNIST pixels
    assert Q.exponent(1.0, 4, signed=False) == 4 and Q.exponent(1.0, 2, signed=False) == 2
    assert Q.exponent(6.0, 4, signed=False) == 1                           # ReLU6 at 4 bits
    assert Q.exponent(6.0, 2, signed=False) == -1
    for m in (0.3, 1.0, 7.5, 100.0):                                       # unsigned: one more bit
        for b in (8, 4, 2):
            assert Q.exponent(m, b, False) == Q.exponent(m, b, True) + 1
    for b, s in ((8, True), (4, False), (2, False)):
        assert Q.exponent(0.0, b, s) == 0                                  # a tensor of zeros
        assert Q.exponent(-1.0, b, s) == 0
        assert Q.exponent(math.nan, b, s) == 0
        assert Q.exponent(math.inf, b, s) == -Q.MAX_EXP
        assert Q.exponent(1e30, b, s) == -Q.MAX_EXP                         # clamped
        assert Q.exponent(1e-30, b, s) == Q.MAX_EXP


def test_act_range():
    for b in (8, 4, 2):
        lo, hi = Q.act_range(b, signed=True)
        assert (lo, hi) == (-(2 ** (b - 1)), 2 ** (b - 1) - 1) and hi - lo + 1 == 2 ** b
        ulo, uhi = Q.act_range(b, signed=False)
        assert ulo == 0 and uhi - ulo + 1 == 2 ** b
    assert Q.act_range() == (int(np.iinfo(np.int8).min), int(np.iinfo(np.int8).max))
    assert Q.act_range(4, False) == (0, 15) and Q.act_range(2, False) == (0, 3)


def test_unsigned_output_rule():
    for b in BITS:
        assert Q.unsigned_output("relu", 0.0, False, b)
        assert Q.unsigned_output("clip", 0.0, False, b)                    # ReLU6
        assert not Q.unsigned_output("clip", -1.0, False, b)               # clip below zero
        assert not Q.unsigned_output("relu", 0.0, True, b)                 # residual add + relu
        assert not Q.unsigned_output("none", 0.0, False, b)                # logits
        assert not Q.unsigned_output("lut", 0.0, False, b)
    assert not Q.unsigned_output("relu", 0.0, False, 8)


def test_clip_bounds():
    # int8 (the default range): unchanged
    assert Q.clip_bounds("relu", 0.0, 0.0, 3) == (0, 127)
    assert Q.clip_bounds("clip", 0.0, 6.0, 4) == (0, 96)
    assert Q.clip_bounds("clip", -1.0, 6.0, 5) == (-32, 127)
    assert Q.clip_bounds("none", 0.0, 0.0, 3) == (-128, 127)
    u4, u2 = Q.act_range(4, False), Q.act_range(2, False)
    assert Q.clip_bounds("relu", 0.0, 0.0, 3, u4) == (0, 15)
    assert Q.clip_bounds("relu", 0.0, 0.0, 3, u2) == (0, 3)
    assert Q.clip_bounds("clip", 0.0, 6.0, 1, u4) == (0, 12)               # round(6 * 2)
    assert Q.clip_bounds("clip", 0.0, 6.0, 2, u4) == (0, 15)               # 24, limited to 15
    assert Q.clip_bounds("clip", 0.5, 6.0, 1, u4) == (1, 12)
    assert Q.clip_bounds("clip", 0.0, 6.0, -1, u2) == (0, 3)


# ------------------------------------------------------------------------ helpers

def _tensors_at(prog, ops: tuple) -> dict:
    """Layer name -> names of the activation tensors (a tensor and its views) holding the
    first DRAM address its ``ops`` (LOAD / STORE) instructions touch."""
    out = {}
    for l in prog.meta["layers"]:
        addrs = [i.f["dram"] for i in prog.insns[l["pc_start"]:l["pc_end"]] if i.op in ops]
        if addrs:
            a = min(addrs)
            out[l["name"]] = {t.name for t in prog.tensors
                              if t.role == "activation" and t.addr <= a < t.addr + t.nbytes}
    return out


def tensor_values(prog, inputs: list) -> dict:
    """Tensor name -> the int8 values it held, over the runs on ``inputs`` (concatenated)."""
    interp, hr = Interpreter(prog), host_runner(prog)
    seen: dict = {}
    for x in inputs:
        interp.run({"x": x}, hr)
        dram = interp.mem["DRAM"]
        for t in prog.tensors:
            if t.role == "activation" and t.dtype == "int8":
                seen.setdefault(t.name, []).append(dram[t.addr:t.addr + t.nbytes].view(np.int8).copy())
    return {k: np.concatenate([a.ravel() for a in v]) for k, v in seen.items()}


def layer_epis(prog) -> dict:
    """Conv / dense layer name -> (its EPI instructions, whether they add a residual)."""
    out = {}
    for l in prog.meta["layers"]:
        if l["op"] in ("conv2d", "dense", "dwconv2d"):
            epis = [i for i in prog.insns[l["pc_start"]:l["pc_end"]] if i.op == "EPI"]
            assert epis, l["name"]
            out[l["name"]] = (epis, bool(epis[0].f["has_res"]))
    return out


def check_low_bit(prog8, prog, bits: int, inputs: list) -> tuple[set, dict]:
    """Against the int8 build ``prog8`` of the same model: the layers it lowers with relu /
    clip from 0 (ReLU6) and no residual are exactly the narrowed ones, their EPIs clip to
    [0, <= 2^b - 1], max-pools and standalone ReLUs of them are narrowed too (label
    ``uint<b>``), every other layer's
    EPI is unchanged in kind, and ``low_bit_tensors`` lists exactly those layers' tensors.
    The listed tensors hold values in [0, 2^b - 1] on ``inputs`` (and not only zeros).
    Returns (the low-bit tensor names, tensor name -> values)."""
    top = 2 ** bits - 1
    assert prog.meta["act_bits"] == bits and "act_bits" not in prog8.meta
    low = set(prog.meta["low_bit_tensors"])
    writes, reads = _tensors_at(prog, ("STORE",)), _tensors_at(prog, ("LOAD",))
    epi8 = layer_epis(prog8)
    want = set()
    for name, (epis, res) in layer_epis(prog).items():
        act8 = ACTS[epi8[name][0][0].f["act"]]
        narrowed = not res and (act8 == "relu" or (act8 == "clip" and s32(epi8[name][0][0].f["lo_bits"]) >= 0))
        assert len(epis) == len(epi8[name][0]), name
        for e, e8 in zip(epis, epi8[name][0]):
            if narrowed:
                assert ACTS[e.f["act"]] == "clip" and s32(e.f["lo_bits"]) == 0, e.text()
                hi = s32(e.f["hi_bits"])
                assert hi == top if act8 == "relu" else 0 < hi <= top, e.text()
            else:
                assert e.f["act"] == e8.f["act"], e.text()
        if narrowed:
            want |= writes[name]
    assert want, "no ReLU layer to narrow"
    for l in prog.meta["layers"]:       # max-pools / ReLUs of narrowed tensors, in program order
        keeps = l["op"] in ("max_pool2d", "relu")
        if keeps and reads[l["name"]] & want:
            want |= writes[l["name"]]
        assert (l["precision"] == f"uint{bits}") == (keeps and writes[l["name"]] <= want), l
    assert low == want, (sorted(low), sorted(want))
    vals = tensor_values(prog, inputs)
    for t in low:
        assert vals[t].min() >= 0 and vals[t].max() <= top, (t, vals[t].min(), vals[t].max())
    assert max(int(vals[t].max()) for t in low) > 0
    return low, vals


def residual_tensors(prog) -> set:
    writes = _tensors_at(prog, ("STORE",))
    return set().union(*[writes[n] for n, (_, res) in layer_epis(prog).items() if res])


def logits_tensors(prog) -> set:
    """The tensor the last dequantize reads (the int8 logits)."""
    last = [l for l in prog.meta["layers"] if l["op"] == "dequantize"][-1]
    return _tensors_at(prog, ("LOAD",))[last["name"]]


# ------------------------------------------------------------------------ MNIST CNN

@pytest.fixture(scope="module")
def mnist():
    """The bundled MNIST CNN (ternary inner layers), real test images; int8 build without
    the option (calibrated on images 0..31)."""
    from compiler.datasets import mnist_cnn, mnist_test

    x, y = mnist_test(40)
    r = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig())
    calib = {"x": x[:32]}
    return {"r": r, "x": x, "y": y, "calib": calib,
            "int8": build_program(r, activations="int8", calib=calib)}


def test_act_bits_8_is_the_int8_binary(mnist):
    """``act_bits=8`` builds the same bytes as a build without the option."""
    prog = build_program(mnist["r"], activations="int8", calib=mnist["calib"], act_bits=8)
    assert to_bytes(prog) == to_bytes(mnist["int8"])
    assert "act_bits" not in prog.meta and "low_bit_tensors" not in prog.meta


@pytest.mark.parametrize("bits", BITS)
def test_mnist_low_bit_exact(mnist, bits):
    prog = build_program(mnist["r"], activations="int8", calib=mnist["calib"], act_bits=bits)
    x = mnist["x"]
    tests = [x[i:i + 1] for i in range(32, 36)]
    outs = assert_exact(prog, tests)
    low, vals = check_low_bit(mnist["int8"], prog, bits, tests)
    # the ReLU layers conv0/3/6 and fc0 and the three max-pools; the logits and the input stay int8
    writes = _tensors_at(prog, ("STORE",))
    narrowed = ["conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0"] + \
        [l["name"] for l in prog.meta["layers"] if l["op"] == "max_pool2d"]
    assert len(narrowed) == 7
    assert set().union(*[writes[n] for n in narrowed]) == low
    assert not writes["fc_layers.2"] & low
    logits = logits_tensors(prog)
    assert logits and not logits & low
    assert min(int(vals[t].min()) for t in logits) < 0                     # signed
    assert "x_q" not in low and int(vals["x_q"].min()) < 0
    # the b-bit binary still classifies (not a constant answer)
    assert len({int(o.argmax()) for o in outs}) > 1
    from target_dlac.binary.inspect import describe
    from compiler.cli_args import _summary_lines

    info = describe(prog)
    assert info["act_bits"] == bits and info["activations"] == "int8"
    assert sorted(info["low_bit_tensors"]) == sorted(low)
    line = [ln for ln in _summary_lines(info) if ln.startswith("activations:")]
    assert line == [f"activations: int8, act_bits {bits}: {len(low)} ReLU output tensor(s) uint{bits} "
                    "(one per byte)"]
    assert [ln for ln in _summary_lines(describe(mnist["int8"])) if ln.startswith("activations:")] \
        == ["activations: int8"]


# ------------------------------------------------------------------------ ResNets (residual joins)

@pytest.fixture(scope="module")
def resnet_results(resnet_small, resnet_input):
    rng = np.random.default_rng(17)
    out = {}
    for name, model, example in (("small_resnet", resnet_small, resnet_input),
                                 ("basicblock", tv_resnet(), torch.zeros(1, 3, 32, 32))):
        shape = tuple(example.shape)
        calib = {"x": rng.standard_normal((16, *shape[1:])).astype(np.float32)}
        r = compile_model(model, (example,), config=QuantConfig())
        tests = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
        out[name] = (r, calib, tests, build_program(r, activations="int8", calib=calib))
    return out


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", ["small_resnet", "basicblock"])
def test_resnet_low_bit_exact(resnet_results, name, bits):
    """Residual joins (conv + add + ReLU in EPI) stay int8, also where a b-bit tensor is their
    shortcut: still bit-exact."""
    r, calib, tests, prog8 = resnet_results[name]
    prog = build_program(r, activations="int8", calib=calib, act_bits=bits)
    assert_exact(prog, tests)
    low, vals = check_low_bit(prog8, prog, bits, tests)
    res = residual_tensors(prog)
    assert res and not res & low
    # some join's shortcut is a b-bit tensor (the identity shortcut from the stem's max-pool):
    # the tensors the LOADs into the EPI's residual tile (INP at ``res``) read
    shortcuts = set()
    for l in prog.meta["layers"]:
        insns = prog.insns[l["pc_start"]:l["pc_end"]]
        tiles = {i.f["res"] for i in insns if i.op == "EPI" and i.f["has_res"]}
        for i in insns:
            if i.op == "LOAD" and BUFFERS[i.f["buf"]] == "INP" and i.f["sram"] in tiles:
                shortcuts |= {t.name for t in prog.tensors
                              if t.role == "activation" and t.addr <= i.f["dram"] < t.addr + t.nbytes}
    assert shortcuts and shortcuts & low and shortcuts - low, (shortcuts, low)
    assert max(int(vals[t].max()) for t in res) > 2 ** bits - 1           # int8, not b-bit
    logits = logits_tensors(prog)
    assert min(int(vals[t].min()) for t in logits) < 0


# ------------------------------------------------------------------------ ReLU6, avg pool, add + ReLU

@pytest.fixture(scope="module")
def mix_setup():
    rng = np.random.default_rng(8)
    data = (8 * rng.standard_normal((36, 1, 3, 16, 16))).astype(np.float32)
    model = mix_model()
    with torch.no_grad():
        model.c2.weight.mul_(10.0)          # ReLU6 saturates: its calibrated max is 6 exactly
    r = compile_model(model, (torch.from_numpy(data[0]),), config=QuantConfig())
    calib = {"x": data[:32]}
    return r, calib, list(data[32:]), build_program(r, activations="int8", calib=calib)


@pytest.mark.parametrize("bits", BITS)
def test_mix_low_bit_exact(mix_setup, bits):
    """ReLU6 clips to [0, min(2^b - 1, round(6 * 2^f))]; the average pool after a b-bit ReLU
    and the standalone add + ReLU stay int8."""
    r, calib, tests, prog8 = mix_setup
    prog = build_program(r, activations="int8", calib=calib, act_bits=bits)
    assert_exact(prog, tests)
    low, vals = check_low_bit(prog8, prog, bits, tests)
    ops = {l["name"]: l for l in prog.meta["layers"]}
    writes = _tensors_at(prog, ("STORE",))
    for name, l in ops.items():
        if l["op"] in ("avg_pool2d", "add_relu", "global_avg_pool"):
            assert not writes[name] & low, name
            assert l["precision"] == "int8"
    add = [n for n, l in ops.items() if l["op"] == "add_relu"]
    assert add and max(int(vals[t].max()) for t in writes[add[0]]) > 2 ** bits - 1
    # ReLU6 (c2, saturated): the int8 build clips at round(6 * 2^f8) = 96, so f8 = 4 and the
    # calibrated max lies in (4, 8]: the b-bit exponent is b - 3, the bound
    # min(2^b - 1, round(6 * 2^(b-3))): 12 at 4 bits (below 15: ReLU6's own bound), 3 at 2 bits
    (e8s, _), (es, _) = layer_epis(prog8)["c2"], layer_epis(prog)["c2"]
    assert {s32(e.f["hi_bits"]) for e in e8s} == {96}
    hi = min(2 ** bits - 1, round(6 * 2.0 ** (bits - 3)))
    assert {(s32(e.f["lo_bits"]), s32(e.f["hi_bits"])) for e in es} == {(0, hi)}
    assert max(int(vals[t].max()) for t in writes["c2"]) == hi                # reached (saturated)


class PoolRelu(torch.nn.Module):
    """conv + ReLU, max pool, a standalone ReLU of the pooled b-bit tensor, conv, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = torch.relu(torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2))
        return self.fc(torch.flatten(self.c2(x), 1))


@pytest.mark.parametrize("bits", BITS)
def test_standalone_relu_keeps_low_bit(bits):
    torch.manual_seed(2)
    rng = np.random.default_rng(3)
    data = rng.standard_normal((20, 1, 3, 16, 16)).astype(np.float32)
    r = compile_model(PoolRelu().eval(), (torch.from_numpy(data[0]),), config=QuantConfig())
    calib = {"x": data[:16]}
    prog8 = build_program(r, activations="int8", calib=calib)
    prog = build_program(r, activations="int8", calib=calib, act_bits=bits)
    ops = [l["op"] for l in prog.meta["layers"]]
    assert "relu" in ops, ops                        # the standalone ReLU is an ALU op here
    tests = list(data[16:])
    assert_exact(prog, tests)
    low, _ = check_low_bit(prog8, prog, bits, tests)
    relu = [l for l in prog.meta["layers"] if l["op"] == "relu"]
    assert relu[0]["precision"] == f"uint{bits}"
    assert _tensors_at(prog, ("STORE",))[relu[0]["name"]] <= low


@pytest.mark.slow
def test_concat_of_low_bit_inputs(bits=4):
    """A channel concat of two b-bit ReLU outputs and a signed conv output: the concat is
    int8 (its own exponent; each input requantized to it), exact.  (Slow: the TVM build of
    this reference graph takes ~10 s.)"""
    from tests.e2e.test_concat import ThreeWay

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    r = compile_model(ThreeWay(), (x,), config=QuantConfig(weights="fp32"))
    calib = {"x": np.random.default_rng(1).standard_normal((4, 2, 3, 8, 8)).astype(np.float32)}
    prog8 = build_program(r, activations="int8", calib=calib)
    prog = build_program(r, activations="int8", calib=calib, act_bits=bits)
    tests = [np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)]
    assert_exact(prog, tests)
    low, vals = check_low_bit(prog8, prog, bits, tests)
    cat = [l["name"] for l in prog.meta["layers"] if l["op"] == "concat"]
    assert len(cat) == 1 and len(low) == 2
    out = _tensors_at(prog, ("STORE",))[cat[0]]
    assert out and not out & low
    assert max(int(np.abs(vals[t]).max()) for t in out) > 2 ** bits - 1


def test_act_bits_errors(mix_setup):
    r, calib, _, _ = mix_setup
    for bad in (3, 1, 16, 0, True, 4.0, "4"):
        with pytest.raises(ConfigError, match="8, 4 or 2 bits"):
            build_program(r, activations="int8", calib=calib, act_bits=bad)
    for acts in ("fp32", "fp16"):
        with pytest.raises(ConfigError, match="needs int8 activations") as ei:
            build_program(r, activations=acts, act_bits=4)
        assert acts in str(ei.value)


# ------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def cli_work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_low_bit")
    (d / "factory.py").write_text(FACTORY)
    rng = np.random.default_rng(9)
    np.savez(d / "calib.npz", x=rng.standard_normal((16, 1, 16, 16)).astype(np.float32))
    np.save(d / "x.npy", rng.standard_normal((1, 1, 16, 16)).astype(np.float32))
    return d


def test_cli_act_bits(cli_work, tmp_path):
    d = cli_work
    out = tmp_path / "m4.dlac"
    res = ok(cli(["compile", f"{d / 'factory.py'}:make", "-o", out, "--activations", "int8",
                  "--calib", d / "calib.npz", "--act-bits", "4", "--report-json", tmp_path / "r.json"]))
    assert "uint4" in res.stdout
    import json

    assert json.loads((tmp_path / "r.json").read_text())["binary"]["act_bits"] == 4
    res = ok(cli(["run", out, "--input", d / "x.npy", "--check"]))
    assert "outputs identical" in res.stdout
    res = ok(cli(["inspect", out, "--summary"]))
    assert "act_bits 4" in res.stdout and "uint4" in res.stdout
    from target_dlac.binary.container import read_program

    prog = read_program(out)
    assert prog.meta["act_bits"] == 4 and prog.meta["low_bit_tensors"]


def test_cli_act_bits_needs_int8(cli_work, tmp_path):
    line = error_line(cli(["compile", f"{cli_work / 'factory.py'}:make", "-o", tmp_path / "m.dlac",
                           "--act-bits", "4"]))
    assert "--act-bits 4" in line and "--activations int8" in line and "fp32" in line
    assert not (tmp_path / "m.dlac").exists()


@pytest.mark.parametrize("bad", ["3", "16", "-4"])
def test_cli_act_bits_refused(cli_work, tmp_path, bad):
    line = error_line(cli(["compile", f"{cli_work / 'factory.py'}:make", "-o", tmp_path / "m.dlac",
                           "--activations", "int8", "--calib", cli_work / "calib.npz", "--act-bits", bad]))
    assert f"--act-bits {bad}" in line and "8, 4 or 2" in line
    assert not (tmp_path / "m.dlac").exists()
