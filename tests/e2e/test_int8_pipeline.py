"""The all-integer pipeline end to end: ``build_program(result, activations="int8",
calib=...)`` and ``dlac compile --activations int8 --calib``.

The contract under test: the interpreter's output of an int8 binary equals, bit for
bit, the TVM CPU build of the binary's own integer reference graph (the ``REF``
section, built alongside the instructions with the same integer parameters; see
:mod:`target_dlac.codegen.modes.intmath`).  On real MNIST images for every weight mode, on ResNets
(residual joins rescaled to a common exponent), on a net with every int8 op kind,
and through the CLI (``dlac run --check`` demands exact equality for int8 binaries).
"""

from __future__ import annotations

import json
from target_dlac.sim.host import reference_module

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from target_dlac.core.errors import CodegenError, ConfigError
from compiler.models import ResNet, randomize_bn
from compiler.reference import Reference
from target_dlac.core.ir import const_np
from target_dlac.codegen.modes import intmath as intmode
from target_dlac.sim.interpreter import Interpreter
from target_dlac.isa.encoding import ALU_OPS, EXP_BIAS, INT8
from tests.cli_helpers import FACTORY, cli, error_line


def ref_module(prog):

    return reference_module(prog)


def host_runner(prog):
    if prog.host is None:
        return None
    from target_dlac.sim.host import HostRunner

    return HostRunner(prog)


def assert_exact(prog, inputs: list[np.ndarray]):
    """The interpreter equals the TVM build of the REF graph bit for bit on every input."""
    ref = Reference(ref_module(prog))
    interp, hr = Interpreter(prog), host_runner(prog)
    outs = []
    for x in inputs:
        out, _ = interp.run({"x": x}, hr)
        got, want = out["output_0"], ref(x)[0]
        assert got.dtype == want.dtype == np.float32
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"max abs diff {np.abs(got - want).max()}"
        outs.append(got)
    assert any(np.abs(o).max() > 0 for o in outs)
    return outs


def assert_int8_binary(prog):
    """Every compute instruction runs in int8 mode; the input is quantized on dLAC and the
    output dequantized."""
    assert prog.meta["activations"] == "int8"
    for ins in prog.insns:
        if ins.op in ("TACC", "MAC", "EPI", "POOL"):
            assert ins.f["dtype"] == INT8, ins.text()
    alu = [ALU_OPS[i.f["op"]] for i in prog.insns if i.op == "ALU"]
    assert alu[0] == "quantize" and alu[-1] == "dequantize"
    assert prog.meta["layers"][0]["op"] == "quantize" and prog.meta["layers"][-1]["op"] == "dequantize"


def alu_exps(prog, op: str) -> list[int]:
    return [i.f["exp"] - EXP_BIAS for i in prog.insns if i.op == "ALU" and ALU_OPS[i.f["op"]] == op]


# ------------------------------------------------------------------------ MNIST, real images

#: mode -> (config, precision of the inner layers)
MNIST_CONFIGS = {
    "ternary-filter": (QuantConfig(), "ternary"),
    "ternary-cluster4": (QuantConfig(cluster_size=4), "ternary"),
    "int4-cluster4": (QuantConfig(weights="int4", cluster_size=4), "int4"),
    "int8": (QuantConfig(weights="int8"), "int8"),
    "all-ternary": (QuantConfig.all_ternary(), "ternary"),
}


@pytest.fixture(scope="module")
def mnist():
    from compiler.datasets import mnist_cnn, mnist_test

    x, y = mnist_test(132)
    return {"model": mnist_cnn(), "x": x, "y": y, "builds": {}}


def mnist_build(mnist, mode: str):
    """(compile result, int8 program) of the MNIST CNN, calibrated on images 0..31."""
    if mode not in mnist["builds"]:
        x = mnist["x"]
        r = compile_model(mnist["model"], (torch.from_numpy(x[:1]),), config=MNIST_CONFIGS[mode][0])
        mnist["builds"][mode] = (r, build_program(r, activations="int8", calib={"x": x[:32]}))
    return mnist["builds"][mode]


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MNIST_CONFIGS))
def test_mnist_int8_exact(mnist, mode):
    _, prog = mnist_build(mnist, mode)
    config, inner = MNIST_CONFIGS[mode]
    assert_int8_binary(prog)
    precisions = {l["name"]: l["precision"] for l in prog.meta["layers"] if l["op"] in ("conv2d", "dense")}
    # float first / last layers get int8 weights with a scale per filter ("int8w")
    ends = "ternary" if mode == "all-ternary" else "int8w"
    assert precisions == {"conv_layers.0": ends, "conv_layers.3": inner, "conv_layers.6": inner,
                          "fc_layers.0": inner, "fc_layers.2": ends}
    weight_ops = {(i.op, i.f["wfmt"]) for i in prog.insns if i.op in ("TACC", "MAC")}
    if inner == "ternary":
        assert ("TACC", 0) in weight_ops
    else:
        assert weight_ops == {("MAC", 1)}                  # 4- and 8-bit weights: int8 MAC blocks
    assert prog.meta["quant_config"] == config.to_dict()
    x = mnist["x"]
    outs = assert_exact(prog, [x[i:i + 1] for i in range(32, 42)])
    assert len({int(o.argmax()) for o in outs}) > 3       # not a constant answer


def test_mnist_calibrated_exponents(mnist):
    """The input's exponent comes from the calibration data: f = 7 - ceil(log2 max|x|)."""
    _, prog = mnist_build(mnist, "ternary-filter")
    want = intmode.exponent(float(np.abs(mnist["x"][:32]).max()))
    assert want == 5                                       # MNIST-normalized pixels reach 2.82
    assert alu_exps(prog, "quantize") == [want]


@pytest.mark.slow
def test_mnist_int8_agrees_with_fp32_activations(mnist):
    """Predictions of the int8-activation ternary binary vs the fp32-activation ternary
    graph (the `fold` stage on TVM), on 100 images that were not used for calibration."""
    r, prog = mnist_build(mnist, "ternary-filter")
    x = mnist["x"]
    fp32 = Reference(r.stages["fold"])
    interp = Interpreter(prog)
    idx = range(32, 132)
    a = np.array([int(interp.run({"x": x[i:i + 1]})[0]["output_0"].argmax()) for i in idx])
    b = np.array([int(fp32(x[i:i + 1])[0].argmax()) for i in idx])
    assert (a == b).mean() >= 0.95, (a != b).sum()


# ------------------------------------------------------------------------ ResNets

def tv_resnet():
    """torchvision-shaped: 7x7/2 stem, 3x3/2 max pool, two BasicBlocks per stage (identity
    and 1x1-projection shortcuts), global average pool, linear."""
    torch.manual_seed(3)
    return randomize_bn(ResNet((2, 2), (16, 32), num_classes=10), seed=4)


@pytest.fixture(scope="module")
def resnets(resnet_small, resnet_input):
    rng = np.random.default_rng(7)
    built = {}
    for name, model, example in (("small_resnet", resnet_small, resnet_input),
                                 ("basicblock", tv_resnet(), torch.zeros(1, 3, 32, 32))):
        shape = tuple(example.shape)
        calib = rng.standard_normal((16, *shape[1:])).astype(np.float32)   # rows on the batch axis
        r = compile_model(model, (example,), config=QuantConfig())
        prog = build_program(r, activations="int8", calib={"x": calib})
        tests = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
        built[name] = (prog, tests)
    return built


def residual_epis(prog):
    return [i for i in prog.insns if i.op == "EPI" and i.f["has_res"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["small_resnet", "basicblock"])
def test_resnet_int8_exact(resnets, name):
    prog, tests = resnets[name]
    assert_int8_binary(prog)
    assert_exact(prog, tests)
    epis = residual_epis(prog)
    assert epis, "no EPI adds a residual"
    for ins in epis:                 # R = fy - fr + s: a left shift of the residual in [0, 62]
        assert ins.f["dtype"] == INT8 and 0 <= ins.f["rshift"] <= 62, ins.text()
        assert "<< " in ins.text()
    # the REF graph shifts the residuals by the same amounts (no standalone adds here)
    from tvm import relax

    shifts = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.left_shift":
            shifts.append(int(const_np(e.args[1]).reshape(-1)[0]))

    relax.analysis.post_order_visit(ref_module(prog)["main"].body, visit)
    assert shifts and set(shifts) == {i.f["rshift"] for i in epis}     # EPIs: one per tile


def test_resnet_residuals_rescaled_at_joins(resnets):
    """At least one residual join adds inputs of different exponents: rshift - shift =
    fy - fr != 0 (intmode.conv_params), i.e. the residual is rescaled to the output's scale."""
    epis = residual_epis(resnets["small_resnet"][0]) + residual_epis(resnets["basicblock"][0])
    assert any(i.f["rshift"] != i.f["shift"] for i in epis), [(i.f["shift"], i.f["rshift"]) for i in epis]


# ------------------------------------------------------------------------ every int8 op kind

class Mix(nn.Module):
    """avg pool (padded, count_include_pad) after a ReLU conv; conv + ReLU6 (EPI clip);
    max pool with padding and an unpadded avg pool of the same tensor; their standalone
    add + ReLU (ALU); 1x1 conv; global average pool; Linear; optionally softmax (host)."""

    def __init__(self, softmax: bool = False, count_include_pad: bool = True):
        super().__init__()
        self.softmax = softmax
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.ap = nn.AvgPool2d(3, 2, padding=1, count_include_pad=count_include_pad)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r6 = nn.ReLU6()
        self.mp = nn.MaxPool2d(3, 2, padding=1)
        self.ap2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.ap(torch.relu(self.c1(x)))
        b = self.r6(self.c2(x))
        x = torch.relu(self.mp(b) + self.ap2(b))
        x = self.fc(torch.flatten(self.gap(self.c3(x)), 1))
        return torch.softmax(x, dim=1) if self.softmax else x


def mix_model(**kw):
    torch.manual_seed(5)
    m = Mix(**kw).eval()
    with torch.no_grad():
        m.fc.weight.mul_(30.0)          # logits of a few units, not all below one int8 step
    return m


@pytest.fixture(scope="module")
def mix_data():
    rng = np.random.default_rng(8)
    return (8 * rng.standard_normal((36, 1, 3, 16, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def mix_result(mix_data):
    return compile_model(mix_model(), (torch.from_numpy(mix_data[0]),), config=QuantConfig())


@pytest.fixture(scope="module")
def mix(mix_result, mix_data):
    return mix_result, build_program(mix_result, activations="int8", calib={"x": mix_data[:32]})


@pytest.mark.slow
def test_every_int8_op_exact(mix, mix_data):
    r, prog = mix
    assert not r.host_ops
    assert_int8_binary(prog)
    ops = [l["op"] for l in prog.meta["layers"]]
    assert ops == ["quantize", "conv2d", "avg_pool2d", "conv2d", "max_pool2d", "avg_pool2d",
                   "add_relu", "conv2d", "global_avg_pool", "dense", "dequantize"], ops
    pools = [i for i in prog.insns if i.op == "POOL"]
    assert any(i.f["mode"] == 1 and i.f["pt"] and i.f["mult"] for i in pools)     # padded avg
    assert any(i.f["mode"] == 0 and i.f["pt"] for i in pools)                      # padded max
    assert any(i.op == "EPI" and i.f["act"] == 2 for i in prog.insns)              # ReLU6: clip
    assert any(i.op == "ALU" and ALU_OPS[i.f["op"]] == "add_relu" for i in prog.insns)
    assert_exact(prog, list(mix_data[32:]))


def test_relu6_clip_bounds(mix):
    """ReLU6's EPI clips to [0, round(6 * 2^fy)] on the int8 grid (intmode.clip_bounds); a
    calibrated output of ReLU6 is at most 6, so fy >= 4 and the upper bound is 96 or 127."""
    _, prog = mix
    clips = [i for i in prog.insns if i.op == "EPI" and i.f["act"] == 2]
    assert clips
    for epi in clips:
        assert epi.f["lo_bits"] == 0
        assert epi.f["hi_bits"] in {intmode.clip_bounds("clip", 0.0, 6.0, f)[1] for f in range(4, 8)}


@pytest.mark.slow
def test_softmax_on_host_exact(mix_data):
    """A softmax at the end runs on the host on the dequantized logits; the REF graph calls
    the same host function, so TVM computes the same float32 softmax on the same inputs:
    outputs are still identical."""
    r = compile_model(mix_model(softmax=True), (torch.from_numpy(mix_data[0]),), config=QuantConfig())
    assert [h.op for h in r.host_ops] == ["nn.softmax"]
    prog = build_program(r, activations="int8", calib={"x": mix_data[:32]})
    assert prog.host is not None
    assert prog.meta["layers"][-1]["op"] == "host"
    assert "dequantize" in [l["op"] for l in prog.meta["layers"]]
    outs = assert_exact(prog, list(mix_data[32:]))
    for o in outs:
        np.testing.assert_allclose(o.sum(axis=1), 1.0, rtol=1e-6)


def test_avg_pool_excluding_padding_has_no_integer_lowering(mix_data):
    r = compile_model(mix_model(count_include_pad=False), (torch.from_numpy(mix_data[0]),),
                      config=QuantConfig())
    build_program(r)                                  # fp32 activations: fine
    with pytest.raises(CodegenError, match="no integer lowering") as ei:
        build_program(r, activations="int8", calib={"x": mix_data[:32]})
    msg = str(ei.value)
    assert "average pooling" in msg and "padding" in msg and "--activations fp32" in msg
    assert msg.split(":")[0].strip(), msg                # names the op's tensor


# ------------------------------------------------------------------------ calibration errors

def test_calibration_missing_input(mix_result, mix_data):
    r = mix_result
    with pytest.raises(ConfigError, match=r"lacks input\(s\) \['x'\]") as ei:
        build_program(r, activations="int8", calib={"image": mix_data[:4]})
    assert "'image'" in str(ei.value)


@pytest.mark.parametrize("shape", [(4, 1, 3, 8, 8), (4, 1, 16, 16), (2, 3, 3, 16, 16)])
def test_calibration_wrong_shape(mix_result, shape):
    r = mix_result
    with pytest.raises(ConfigError, match="calibration input 'x'") as ei:
        build_program(r, activations="int8", calib={"x": np.zeros(shape, np.float32)})
    assert "(1, 3, 16, 16)" in str(ei.value)


def test_calibration_needs_data(mix_result):
    r = mix_result
    with pytest.raises(ConfigError, match="calibration"):
        build_program(r, activations="int8")
    with pytest.raises(ConfigError, match="no samples"):
        build_program(r, activations="int8", calib={"x": np.zeros((0, 1, 3, 16, 16), np.float32)})


def test_calibration_sample_layouts_agree(mix, mix_data):
    """Samples stacked on a new axis or rows on the batch axis: the same binary."""
    r, prog = mix
    flat = build_program(r, activations="int8", calib={"x": mix_data[:32, 0]})     # (32, 3, 16, 16)
    assert [i.f for i in flat.insns] == [i.f for i in prog.insns]
    assert flat.constants == prog.constants


# ------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def cli_work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_int8")
    (d / "factory.py").write_text(FACTORY)
    rng = np.random.default_rng(9)
    np.savez(d / "calib.npz", x=rng.standard_normal((16, 1, 16, 16)).astype(np.float32))
    np.save(d / "x.npy", rng.standard_normal((1, 1, 16, 16)).astype(np.float32))
    return d


@pytest.fixture(scope="module")
def cli_binary(cli_work):
    d = cli_work
    out = d / "m.dlac"
    res = cli(["compile", f"{d / 'factory.py'}:make", "-o", out, "--activations", "int8",
               "--calib", d / "calib.npz"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"wrote {out}" in res.stdout
    return out


def test_cli_compile_int8(cli_binary):
    """`dlac compile --activations int8 --calib` writes a binary (its contents: the next test)."""
    assert cli_binary.stat().st_size > 0


def test_cli_run_check_int8(cli_binary, cli_work, tmp_path):
    rj = tmp_path / "r.json"
    res = cli(["run", cli_binary, "--input", cli_work / "x.npy", "--check", "--report-json", rj])
    assert res.exit_code == 0, res.output
    assert "outputs identical" in res.stdout
    rep = json.loads(rj.read_text())
    assert rep["check"]["max_abs_err"] == 0 and rep["check"]["passed"] is True
    assert rep["check"]["tolerance"] == 0
    from target_dlac.binary.container import read_program

    assert_int8_binary(read_program(cli_binary))


def test_cli_int8_needs_calib(cli_work, tmp_path):
    line = error_line(cli(["compile", f"{cli_work / 'factory.py'}:make", "-o", tmp_path / "m.dlac",
                           "--activations", "int8"]), stdout_empty=False)
    assert "--calib" in line
    assert not (tmp_path / "m.dlac").exists()


def test_cli_calib_needs_int8(cli_work, tmp_path):
    line = error_line(cli(["compile", f"{cli_work / 'factory.py'}:make", "-o", tmp_path / "m.dlac",
                           "--calib", cli_work / "calib.npz"]), stdout_empty=False)
    assert "--calib" in line and "int8" in line
    assert not (tmp_path / "m.dlac").exists()
