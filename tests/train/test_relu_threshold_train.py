"""ReLU thresholds in training (``x if x > T else 0``, issue 15):

* ``T = 0`` is the plain ReLU exactly (outputs and gradients); ``T > 0`` gives more zeros and
  a zero gradient where the value is not kept (float and int8 fake quantization);
* the exact integer forward with thresholds equals a plain NumPy reimplementation of the int8
  rule (``q if q > floor(T * 2^e) else 0`` after the requantization and clip), bit for bit,
  and ``act_density`` counts what that reimplementation counts;
* ``compile_args`` / ``layers`` report the thresholds; ``dlac train --relu-threshold`` and
  ``--act-density``;
* refused: ``Tq >= hi``, a threshold on a layer without a fused ReLU, ``T < 0`` / not finite.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from compiler.config import QuantConfig
from compiler.train.qat import QatSpec, prepare
from compiler.train.qat_modules import QLayer
from target_dlac.codegen.modes import intmath as Q
from target_dlac.core.errors import ConfigError
from tests.cli_helpers import cli, error_line
from tests.train.test_qat import _images, _net

def _cfg(thresholds: dict) -> QuantConfig:
    """An all-ternary config with ReLU thresholds."""
    return dataclasses.replace(QuantConfig.all_ternary(), relu_thresholds=dict(thresholds))


def _model(thresholds, acts="int8", bits=8, net=None, x=None):
    x = _images(16) if x is None else x
    qm = prepare(net if net is not None else _net(), x[:1],
                 QatSpec(quant=_cfg(thresholds), activations=acts, act_bits=bits if acts == "int8" else 8))
    qm.calibrate([x[:8]])
    return qm.eval(), x


@pytest.mark.parametrize("acts", ["fp32", "int8"])
def test_threshold_zero_is_the_plain_relu(acts):
    plain, x = _model({}, acts)
    zero, _ = _model({"c1": 0.0, "*": 0.0}, acts)
    assert [q.threshold for q in zero.qlayers()] == [0.0] * 4
    with torch.no_grad():
        assert torch.equal(plain(x), zero(x))                          # exact forward / fp32
        plain.exact = zero.exact = False
        assert torch.equal(plain(x), zero(x))                          # float fake quantization
    for m in (plain, zero):                                            # training mode: same grads
        m.train()
        m.zero_grad()
        m(x).square().sum().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), zero.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
    assert "--relu-threshold" not in zero.compile_args()


@pytest.mark.parametrize("acts", ["fp32", "int8"])
def test_a_threshold_gives_more_zeros(acts):
    plain, x = _model({}, acts)
    thr, _ = _model({"c?": 0.5}, acts)
    d0, d1 = plain.act_density([x]), thr.act_density([x])
    assert set(d0) == {"c1", "c2", "f1"}                                # the ReLU layers
    assert d1["c1"] < 0.9 * d0["c1"] and d1["c2"] < d0["c2"]
    assert [l["relu_threshold"] for l in thr.layers()] == [0.5, 0.5, 0.0, 0.0]
    args = thr.compile_args()
    i = args.index("--relu-threshold")
    assert args[i:i + 4] == ["--relu-threshold", "c1=0.5", "--relu-threshold", "c2=0.5"]
    assert args.count("--relu-threshold") == 2


def test_float_gradient_is_zero_where_not_kept():
    qm, x = _model({"c1": 0.4}, "fp32")
    c1 = qm.net.get_submodule("c1").train()
    y = torch.randn(4, 8, 5, 5, requires_grad=True)
    out = c1.activate(y)
    assert torch.equal(out, torch.where(y > 0.4, y, 0.0).detach())
    out.sum().backward()
    assert torch.equal(y.grad, (y > 0.4).float())


def test_int8_threshold_is_on_the_quantized_output_with_its_gradient():
    qm, _ = _model({"c1": 0.3})
    c1 = qm.net.get_submodule("c1").train()
    y = torch.linspace(0, 1.2, 1201, requires_grad=True)    # steps of 1/1000 around the threshold
    out = c1.out(y)                                         # batch exponent: 1.2 -> e = 6 (hi 127)
    e = 6
    q = np.clip(np.floor(y.detach().numpy().astype(np.float64) * 2.0 ** e + 0.5), -128, 127)
    tq = int(np.floor(0.3 * 2 ** e))                        # 19
    want = np.where(q > tq, q, 0) * 2.0 ** -e
    assert np.array_equal(out.detach().numpy(), want.astype(np.float32))
    above = y.detach().numpy().astype(np.float64) > 0.3
    assert (above & (want == 0)).any()                      # 0.301..0.304: above T, yet q == Tq
    out.sum().backward()
    assert torch.equal(y.grad, torch.from_numpy((want > 0) & (q <= 127)).float())


def test_act_l1_sees_the_float_threshold():
    qm, x = _model({"c1": 0.4})                             # int8: the output's threshold is on q
    qm.train()
    c1 = qm.net.get_submodule("c1")
    seen = []
    hook = c1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    qm(x)
    hook.remove()
    a = c1.l1_activation()
    pre = c1.linear(seen[0], c1.weight())                   # its input: the quantized image
    assert torch.equal(a, torch.where(pre > 0.4, pre, 0.0))
    assert ((a == 0) | (a > 0.4)).all() and (a > 0).any()
    qm.act_l1.backward()
    assert c1.inner.weight.grad.abs().sum() > 0
    qm.eval()
    qm.exact = False                                        # the float forward clears it
    with torch.no_grad():
        qm(x)
    assert c1.l1_activation() is None and float(qm.act_l1) == 0.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def _numpy_forward(qm, x: np.ndarray):
    """The int8 pipeline in NumPy, from the model's integers, scales and exponents: returns the
    output and, per ReLU layer, the outputs and how many values only the threshold zeroed."""
    layers = {q.name: q for q in qm.qlayers()}
    f = int(qm.net.get_submodule("_dlac_act0").exp)
    a = np.clip(np.floor(x.astype(np.float64) * 2.0 ** f + 0.5), -128, 127).astype(np.int64)
    seen = {}
    for name in ("conv", "fc", "out"):
        m = layers[name]
        w, scale = m.integers()
        if name == "conv":
            p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
            acc = np.zeros((a.shape[0], w.shape[0], 6, 6), np.int64)
            for i in range(3):
                for j in range(3):
                    acc += np.einsum("nchw,fc->nfhw", p[:, :, i:i + 6, j:j + 6], w[:, :, i, j].astype(np.int64))
        else:
            a = a.reshape(a.shape[0], -1)
            acc = a @ w.astype(np.int64).T
        fy = int(m.exp)
        mult, b, s, _ = Q.conv_params(np.asarray(scale, np.float64), m.inner.bias.detach().numpy(), f, fy,
                                      None, name)
        shape = (1, -1) + (1,) * (acc.ndim - 2)
        t = (acc * mult.reshape(shape) + b.reshape(shape) + (1 << (s - 1))) >> s
        if m.act == "relu":
            hi = (1 << m.bits) - 1 if not m.signed else 127
            t = np.clip(t, 0, hi)
            tq = int(np.floor(m.threshold * 2.0 ** fy))
            seen[name] = (np.where(t > tq, t, 0), int(((t > 0) & (t <= tq)).sum()))
            t = seen[name][0]
        else:
            t = np.clip(t, -128, 127)
        a, f = t, fy
    return (a * 2.0 ** -f).astype(np.float32), seen


@pytest.mark.parametrize("bits", [8, 4])
def test_exact_forward_equals_numpy_int8_rule(bits):
    x = _images(24)[:, :, 11:17, 11:17].contiguous()
    torch.manual_seed(3)
    qm, _ = _model({"conv": 0.45, "fc": 0.1}, bits=bits, net=Tiny().eval(), x=x)
    with torch.no_grad():
        got = qm(x).numpy()
    want, seen = _numpy_forward(qm, x.numpy())
    assert np.array_equal(got, want)
    assert seen["conv"][1] > 0 and seen["fc"][1] > 0                # the thresholds zeroed values
    density = qm.act_density([x[:10], x[10:]])
    assert density == {k: float(np.count_nonzero(v[0])) / v[0].size for k, v in seen.items()}
    assert len({float(v) for v in got.ravel()}) > 4


def test_refusals():
    qm, x = _model({})
    qm.net.get_submodule("c1").threshold = 50.0
    with pytest.raises(ConfigError, match=r"layer c1: ReLU threshold 50 is \d+ at the output's exponent \d+, not below the largest output value 127"):
        qm(x)                                                 # calibrated Tq >= hi: at evaluation
    qm, x = _model({"c1": 50.0}, acts="fp32")                 # float: allowed (all zeros)
    assert qm.act_density([x])["c1"] == 0.0
    x = _images(4)
    for thresholds, match in [({"f2": 0.1}, "'f2': no matched layer ends in a fused ReLU .*layer f2: activation none"),
                              ({"fc*": 0.1}, "'fc\\*': the pattern matches no layer .*c1, c2, f1, f2"),
                              ({"c1": -0.1}, "'c1' = -0.1: expected a finite number >= 0"),
                              ({"c*": float("nan")}, "'c\\*' = nan: expected a finite number >= 0")]:
        with pytest.raises(ConfigError, match=match):
            prepare(_net(), x[:1], QatSpec(quant=_cfg(thresholds)))
    # as dlac compile: a pattern with ReLU layers among its matches skips the others
    qm = prepare(_net(), x[:1], QatSpec(quant=_cfg({"f*": 0.1})))
    assert {q.name: q.threshold for q in qm.qlayers()} == {"c1": 0.0, "c2": 0.0, "f1": 0.1, "f2": 0.0}
    with pytest.raises(ConfigError, match=r"layer f2: ReLU threshold -1; expected a finite number >= 0"):
        QLayer(nn.Linear(2, 2), "f2", "ternary", None, "relu", 0.0, 0.0, 8, True, False, None, -1)

    class Six(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)
            self.a = nn.ReLU6()

        def forward(self, x):
            return self.a(self.c(x))
    with pytest.raises(ConfigError, match=r"'c': no matched layer ends in a fused ReLU \(layer c: activation clip"):
        prepare(Six(), x[:1], QatSpec(quant=_cfg({"c": 0.2})))
    with pytest.raises(ConfigError, match=r"layer c: a ReLU threshold \(0.2\) needs a fused ReLU; .* clip"):
        QLayer(nn.Linear(2, 2), "c", "ternary", None, "clip", 0.0, 6.0, 8, True, False, None, 0.2)
    qm = prepare(_net(), x[:1], QatSpec(quant=_cfg({"c1": 40.0}), activations="int8")).train()
    with pytest.raises(ConfigError, match="layer c1: ReLU threshold 40"):
        qm(x)                                                  # training: the batch's exponent


def test_cli_relu_threshold_and_act_density(tiny_factory, tmp_path):
    from tests.train.test_cli_train import FAST, _data

    out = tmp_path / "m.pt2"
    r = cli(["train", tiny_factory, "--data", _data(tmp_path), "-o", out, "--activations", "int8",
             "--quantize-first", "--relu-threshold", "conv1=0.25", "--act-density", *FAST])
    assert r.exit_code == 0, r.output
    log = json.loads((tmp_path / "m.json").read_text())
    thr = {l["name"]: l["relu_threshold"] for l in log["layers"]}
    assert thr["conv1"] == 0.25 and thr["fc"] == 0.0
    assert "conv1=0.25" in log["compile_args"]
    density = log["act_density"]
    assert "conv1" in density and all(0 <= v <= 1 for v in density.values())
    assert "activation density (exact int8 forward, 8 validation images" in r.stdout
    r = cli(["train", tiny_factory, "--data", _data(tmp_path), "-o", out, "--relu-threshold", "conv1=-1"])
    assert "conv1" in error_line(r, exit_code=2)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_compiled_with_compile_args_the_binary_equals_the_exact_forward(tmp_path, bits):
    """The trained model's export compiled by ``dlac compile`` with ``compile_args()`` (its
    ``--relu-threshold`` options) and its calibration images: the interpreter's outputs equal
    the exact integer forward bit for bit."""
    from target_dlac import read_program
    from target_dlac.sim.interpreter import Interpreter

    x = _images(12)
    qm, _ = _model({"c1": 0.5, "f1": 0.2}, bits=bits, x=x)
    plain, _ = _model({}, bits=bits, x=x)
    dense, sparse = plain.act_density([x[8:]]), qm.act_density([x[8:]])
    assert sparse["c1"] < dense["c1"] and sparse["f1"] < dense["f1"]
    with torch.no_grad():
        want = qm(x[8:]).numpy()
    ep = torch.export.export(qm.export(), (x[:1],))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    np.savez(tmp_path / "calib.npz", x=x[:8].numpy())
    args = qm.compile_args()
    assert "c1=0.5" in args and "f1=0.2" in args
    r = cli(["compile", tmp_path / "m.pt2", "-o", tmp_path / "m.dlac", *args, "--calib", tmp_path / "calib.npz"])
    assert r.exit_code == 0, r.output
    interp = Interpreter(read_program(str(tmp_path / "m.dlac")))
    for i in range(4):
        got = interp.run({"x": x[8 + i:9 + i].numpy()})[0]["output_0"]
        assert np.array_equal(got[0], want[i]), f"input {i}: max diff {np.abs(got[0] - want[i]).max()}"
