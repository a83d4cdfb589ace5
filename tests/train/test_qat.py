"""The fake-quantized training model computes what dlac compiles from it.

* its layers' integers and scales equal the compiler's layer plans (``LayerPlan.integers``,
  made by the passes) bit for bit, for every weight mode;
* the exported model compiled by dlac: the TVM reference of the fp32-activation graph within
  1e-6 of the fake-quantized model; the int8 binary (interpreter and TVM reference) equal to
  the model's exact integer forward, bit for bit, at 8, 4 and 2 activation bits;
* straight-through gradients: a few steps reduce the loss; static masks keep the zeros;
* refused inputs give one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.reference import Reference
from compiler.train.qat import QatSpec, prepare
from compiler.train.quant import fake_act
from target_dlac.core.errors import ConfigError
from target_dlac.sim.host import reference_module
from target_dlac.sim.interpreter import Interpreter

MODES = {
    "ternary": QuantConfig.all_ternary(),
    "cluster4": QuantConfig(weights="ternary", cluster_size=4, keep_first=False),
    "cluster64": QuantConfig(weights="ternary", cluster_size=64),
    "layer": QuantConfig(weights="ternary", granularity="layer"),
    "int4": QuantConfig(weights="int4", cluster_size=4, keep_last=False),
    "int8": QuantConfig(weights="int8"),
    "swis": QuantConfig(weights="swis", swis_shifts=2.0),
}


class SmallCNN(nn.Module):
    """MNIST-shaped: conv-relu-pool twice, flatten, two linear layers; random weights."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.f1 = nn.Linear(16 * 7 * 7, 32)
        self.f2 = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c2(x))), 2)
        return self.f2(torch.relu(self.f1(x.flatten(1))))


def _net(seed=0):
    torch.manual_seed(seed)
    net = SmallCNN().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    return net


def _images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, 1, 28, 28, generator=g)) * 2.0 - 0.4


def assert_binary_equals(qm, calib, xs, want):
    """``dlac compile`` of ``qm``'s export (its config, int8 activations of its width,
    calibrated on ``calib``): on each input of ``xs`` the interpreter equals the binary's TVM
    reference and ``want`` (``qm``'s exact forward), bit for bit."""
    r = compile_model(qm.export(), (xs[:1],), config=qm.spec.quant)
    prog = build_program(r, activations="int8", calib={"x": calib.numpy()}, act_bits=qm.spec.act_bits)
    ref, interp = Reference(reference_module(prog)), Interpreter(prog)
    for i in range(len(xs)):
        xi = xs[i:i + 1].numpy()
        got = interp.run({"x": xi})[0]["output_0"]
        assert np.array_equal(got, ref(xi)[0])
        assert np.array_equal(got[0], want[i]), f"input {i}: max diff {np.abs(got[0] - want[i]).max()}"


@pytest.mark.parametrize("mode", list(MODES))
def test_integers_equal_the_compilers(mode):
    cfg = MODES[mode]
    x = _images(1)
    qm = prepare(_net(), x, QatSpec(quant=cfg))
    result = compile_model(qm.export(), (x,), config=cfg)
    plans = {p.name: p for p in result.layers}
    assert set(plans) == {q.name for q in qm.qlayers()}
    quantized = 0
    for q in qm.qlayers():
        plan = plans[q.name]
        assert plan.precision == q.precision, q.name
        ints = q.integers()
        if plan.integers is None:
            assert ints is None and q.precision == "fp32"
            continue
        quantized += 1
        want_q = np.moveaxis(plan.integers.q, plan.integers.axis, 0).reshape(ints[0].shape)
        assert np.array_equal(ints[0], want_q), q.name
        assert np.array_equal(ints[1], plan.integers.scale), q.name
    assert quantized >= 2


@pytest.mark.parametrize("mode", ["ternary", "int4", "swis"])
def test_fp32_activations_match_the_reference(mode):
    cfg, x = MODES[mode], _images(8)
    qm = prepare(_net(), x[:1], QatSpec(quant=cfg)).eval()
    with torch.no_grad():
        want = qm(x).numpy()
    ref = Reference(compile_model(qm.export(), (x,), config=cfg).reference_module())
    got = ref(x.numpy())[0]
    assert np.isfinite(got).all() and np.isfinite(want).all()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_int8_binary_equals_the_exact_forward(bits):
    cfg, x = MODES["ternary"], _images(12)
    qm = prepare(_net(), x[:1], QatSpec(quant=cfg, activations="int8", act_bits=bits)).eval()
    qm.calibrate([x[:4], x[4:8]])
    low = {q.name: (q.bits, q.signed) for q in qm.qlayers()}
    assert low["c1"] == ((bits, bits == 8)) and low["f2"] == (8, True)     # logits stay signed
    with torch.no_grad():
        want = qm(x[8:]).numpy()
    assert_binary_equals(qm, x[:8], x[8:], want)
    assert len({float(v) for v in want.ravel()}) > 4


def test_float_fake_quant_is_close_to_the_exact_forward():
    x = _images(16)
    qm = prepare(_net(), x[:1], QatSpec(quant=MODES["ternary"], activations="int8")).eval()
    qm.calibrate([x])
    with torch.no_grad():
        exact = qm(x)
        qm.exact = False
        approx = qm(x)
    step = float(2.0 ** -qm.qlayers()[-1].exp)
    assert torch.abs(exact - approx).max() <= 2 * step


def test_steps_reduce_the_loss():
    from compiler.datasets import mnist_test

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in mnist_test(64))
    for spec in (QatSpec(quant=MODES["ternary"]), QatSpec(quant=MODES["int4"], activations="int8", act_bits=4)):
        qm = prepare(_net(), x[:1], spec).train()
        opt = torch.optim.Adam(qm.parameters(), 1e-2)
        losses = []
        for _ in range(15):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(qm(x), y)
            loss.backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in qm.parameters())
            opt.step()
            losses.append(float(loss))
        assert losses[-1] < 0.7 * losses[0], losses


def test_static_mask_keeps_the_zeros_and_exports_what_it_computes():
    x, y = _images(32), torch.randint(0, 10, (32,))
    cfg = MODES["cluster4"]
    qm = prepare(_net(), x[:1], QatSpec(quant=cfg, sparsity="static")).train()
    dyn = prepare(_net(), x[:1], QatSpec(quant=cfg)).train()
    before = {q.name: q.integers()[0] != 0 for q in qm.qlayers() if q.integers() is not None}
    for m in (qm, dyn):
        opt = torch.optim.SGD(m.parameters(), 0.5)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    after = {q.name: q.integers()[0] != 0 for q in qm.qlayers() if q.integers() is not None}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    moved = [q.name for q in dyn.qlayers() if q.integers() is not None
             and not np.array_equal(q.integers()[0] != 0, before[q.name])]
    assert moved                                     # dynamic: zeros re-derived every step
    qm.eval()
    with torch.no_grad():
        want = qm(x).numpy()
    got = Reference(compile_model(qm.export(), (x,), config=cfg).reference_module())(x.numpy())[0]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_fake_act_rounds_half_up_and_clips():
    x = torch.tensor([-1.0, 0.0, 0.24, 0.25, 0.26, 0.75, 3.0, 100.0], requires_grad=True)
    y = fake_act(x, 2, 4, signed=False)            # steps of 0.25, range [0, 15]
    assert y.tolist() == [0.0, 0.0, 0.25, 0.25, 0.25, 0.75, 3.0, 3.75]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 1, 0]    # straight through inside the range
    z = fake_act(torch.tensor([0.125, 0.375]), 2)          # exact halves go up
    assert z.tolist() == [0.25, 0.5]


def test_refusals():
    x = _images(1)

    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.c(x)).mean(dim=(2, 3))

    with pytest.raises(ConfigError, match=r"does not cover .*sigmoid"):
        prepare(Sig(), x, QatSpec(activations="int8"))
    with pytest.raises(ConfigError, match="static sparsity mask is for ternary"):
        prepare(_net(), x, QatSpec(quant=MODES["int4"], sparsity="static"))
    with pytest.raises(ConfigError, match="needs int8 activations"):
        QatSpec(act_bits=4)
    with pytest.raises(ConfigError, match="act_bits"):
        QatSpec(activations="int8", act_bits=3)
    qm = prepare(_net(), x, QatSpec(activations="int8")).eval()
    with pytest.raises(ConfigError, match="not calibrated"):
        qm(x)


def test_compile_args_rebuild_the_config():
    from compiler.cli_common import _quant_config

    qm = prepare(_net(), _images(1), QatSpec(quant=MODES["int4"], activations="int8", act_bits=4))
    args = qm.compile_args()
    assert args[args.index("--activations") + 1] == "int8" and args[args.index("--act-bits") + 1] == "4"
    q = MODES["int4"]
    back = _quant_config(args[1], args[3], int(args[5]), (), (), q.swis_shifts, False,
                         "--quantize-first" not in args, "--quantize-last" not in args)
    assert back == q


class TwoConvAdd(nn.Module):
    """relu(b(x) + a(x)): the first operand's conv (b) takes the residual, as in dlac."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.b(x) + self.a(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


class SharedConvAdd(nn.Module):
    """MobileNetV2's block: ``a + proj(relu(expand(a)))`` where ``a`` is a conv output with
    two users: dlac fuses neither conv with the add (the first operand's conv is tried and
    its output escapes)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.proj = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        a = self.a(x)
        y = a + self.proj(torch.relu(self.expand(a)))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _residual_nets():
    from compiler.models import randomize_bn, small_resnet

    torch.manual_seed(3)
    return {"small_resnet": (randomize_bn(small_resnet(in_ch=1)), (1, 1, 16, 16)),
            "two_conv_add": (TwoConvAdd().eval(), (1, 1, 12, 12)),
            "shared_conv_add": (SharedConvAdd().eval(), (1, 1, 12, 12))}


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("net", ["small_resnet", "two_conv_add", "shared_conv_add"])
def test_residual_nets_exact(net, bits):
    """Residual adds fused into the conv's epilogue (as dlac fuses them), average pools,
    BatchNorm folded: the int8 binary equals the model's exact forward bit for bit."""
    model, shape = _residual_nets()[net]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, *shape[1:], generator=g)
    cfg = QuantConfig(weights="ternary")
    qm = prepare(model, x[:1], QatSpec(quant=cfg, activations="int8", act_bits=bits)).eval()
    qm.calibrate([x[:6]])
    fused = [q.name for q in qm.qlayers() if any(len(n.args) == 2 for n in qm.net.graph.nodes
                                                if n.op == "call_module" and n.target == q.name)]
    assert fused == {"small_resnet": ["layer1.0.conv2", "layer2.0.conv2"], "two_conv_add": ["b"],
                     "shared_conv_add": []}[net]
    flags = {l["name"]: l["shape"]["residual"] for l in build_program(
        compile_model(model, (x[:1],), config=cfg), reference=False).meta["layers"] if l["op"] == "conv2d"}
    assert sorted(k for k, v in flags.items() if v) == fused            # what dlac itself fuses
    with torch.no_grad():
        want = qm(x[6:]).numpy()
    assert_binary_equals(qm, x[:6], x[6:], want)


def test_calibration_measures_the_float_program():
    """dlac calibrates the float program (fp32 layers with their float weights, quantized
    layers with their quantized weights, float activations): so does QatModel.calibrate."""
    net, x = _net(), _images(6)
    qm = prepare(net, x[:1], QatSpec(quant=QuantConfig(), activations="int8"))
    qm.calibrate([x])
    first = qm.qlayers()[0]
    assert first.precision == "fp32" and first.quantizer is not None      # int8-held when run
    with torch.no_grad():
        want = torch.relu(net.c1(x)).abs().max()
    assert float(first.maxabs) == float(want)
