"""Activations on dLAC (docs/isa.md "EPI", "ALU"): each one after a conv and after a dense
layer runs in the layer's EPI (no host op for it), in fp32 (``--quant none``), ternary and
fp16 activations, and in the int8 pipeline as the EPI's 256-entry table; standalone (after
an add) it is an ALU op.  Oracles: the TVM CPU build of the binary's REF graph (the float
modes within the existing tolerances, int8 exactly) and PyTorch (``--quant none``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import torch.nn as nn  # noqa: E402

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from target_dlac.isa.encoding import ACTS, ALU_OPS  # noqa: E402
from target_dlac.sim.host import reference_outputs  # noqa: E402
from target_dlac.sim.interpreter import run  # noqa: E402
from target_dlac.sim.float_acts import erfc, float_act  # noqa: E402

ACTIVATIONS = {
    "prelu": lambda c: nn.PReLU(c),
    "leaky_relu": lambda c: nn.LeakyReLU(0.2),
    "hardswish": lambda c: nn.Hardswish(),
    "hardsigmoid": lambda c: nn.Hardsigmoid(),
    "silu": lambda c: nn.SiLU(),
    "sigmoid": lambda c: nn.Sigmoid(),
    "tanh": lambda c: nn.Tanh(),
    "gelu": lambda c: nn.GELU(),
    "gelu_tanh": lambda c: nn.GELU("tanh"),
}


class ConvDense(nn.Module):
    """conv -> act -> flatten -> linear -> act: the activation after both kinds of layer."""

    def __init__(self, act: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = ACTIVATIONS[act](8)
        self.fc = nn.Linear(8 * 6 * 6, 12)
        self.a2 = ACTIVATIONS[act](12)

    def forward(self, x):
        return self.a2(self.fc(self.a1(self.conv(x)).flatten(1)))


def _model(act: str):
    torch.manual_seed(0)
    model = ConvDense(act).eval()
    with torch.no_grad():
        for p in model.parameters():          # non-trivial slopes, values on both sides of 0
            p.add_(0.2 * torch.randn_like(p))
    return model, 2 * torch.randn(1, 3, 6, 6)


def _compile(act: str, weights: str, activations: str = "fp32"):
    model, x = _model(act)
    cfg = QuantConfig(weights=weights, keep_first=False, keep_last=False)
    result = compile_model(model, (x,), config=cfg)
    calib = None
    if activations == "int8":
        torch.manual_seed(1)
        calib = {result.input_names[0]: (2 * torch.randn(8, 3, 6, 6)).numpy()}
    prog = build_program(result, activations=activations, calib=calib)
    return model, x, prog


def _epi_acts(prog) -> set:
    return {ACTS[i.f["act"]] for i in prog.insns if i.op == "EPI"}


def _check(act: str, weights: str, activations: str, tol: float):
    model, x, prog = _compile(act, weights, activations)
    assert prog.meta["host_ops"] == [] and prog.meta["fallbacks"] == [], prog.meta["host_ops"]
    assert _epi_acts(prog) == ({"lut"} if activations == "int8" else {act})
    inputs = {prog.inputs[0].name: x.numpy()}
    got = run(prog, inputs)[0]["output_0"]
    ref = reference_outputs(prog, inputs)[0]
    if activations == "int8":
        np.testing.assert_array_equal(got, ref)
    else:
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (act, weights, activations)
    return model, x, got


def _params(names=ACTIVATIONS, fast=("sigmoid",)):
    """Each compile + TVM reference build takes 2-6 s: only ``fast`` stays in the quick loop."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("act", _params())
def test_fp32_layers_match_tvm_and_pytorch(act):
    model, x, got = _check(act, "fp32", "fp32", 1e-5)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), act


@pytest.mark.parametrize("act", _params())
def test_ternary_layers_match_tvm(act):
    _check(act, "ternary", "fp32", 1e-5)


@pytest.mark.parametrize("act", _params(fast=()))
def test_fp16_activations_match_tvm(act):
    _check(act, "ternary", "fp16", 1e-2)


@pytest.mark.parametrize("act", _params(("silu", "sigmoid", "tanh", "gelu", "gelu_tanh", "hardswish",
                                          "hardsigmoid", "leaky_relu"), fast=()))
def test_int8_table_is_bit_exact(act):
    _check(act, "ternary", "int8", 0)


def test_int8_prelu_per_channel_goes_to_host_with_its_reason():
    """PReLU with per-channel slopes has no int8 table (one table per EPI): the layer goes to
    the host, with the reason in the binary's fallbacks (the compile report's warning)."""
    model, x = _model("prelu")
    result = compile_model(model, (x,), config=QuantConfig(weights="ternary", keep_first=False, keep_last=False))
    prog = build_program(result, activations="int8",
                         calib={result.input_names[0]: (2 * torch.randn(4, 3, 6, 6)).numpy()})
    reasons = [f["reason"] for f in prog.meta["fallbacks"]]
    assert reasons and all("PReLU" in r and "int8" in r for r in reasons)


class AddThen(nn.Module):
    def __init__(self, act: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = ACTIVATIONS[act](3)

    def forward(self, x):
        return self.act(self.conv(x).relu() + x)


@pytest.mark.parametrize("act", _params(("silu", "hardswish", "gelu_tanh"), fast=("hardswish",)))
def test_standalone_activation_is_an_alu_op(act):
    torch.manual_seed(0)
    model = AddThen(act).eval()
    x = torch.randn(1, 3, 5, 5)
    prog = build_program(compile_model(model, (x,), config=QuantConfig(weights="fp32")))
    assert prog.meta["host_ops"] == []
    assert act in {ALU_OPS[i.f["op"]] for i in prog.insns if i.op == "ALU"}
    inputs = {prog.inputs[0].name: x.numpy()}
    got = run(prog, inputs)[0]["output_0"]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    ref = reference_outputs(prog, inputs)[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_erfc_approximation_error_vs_float64():
    """The interpreter's only approximation (GELU's erfc, Numerical Recipes' erfcc): its
    fractional error against float64 ``math.erfc`` is below 1.2e-7 (the published bound),
    and GELU rounded to float32 stays within 2.5e-7 of float64 everywhere it is not tiny."""
    x = np.linspace(-9, 9, 200001)
    want = np.array([math.erfc(v) for v in x])
    rel = np.abs(erfc(x) - want) / want
    assert rel.max() < 1.2e-7
    xs = x.astype(np.float32)
    gelu = float_act("gelu", xs).astype(np.float64)
    exact = np.array([0.5 * float(v) * math.erfc(-float(v) / math.sqrt(2)) for v in xs])
    big = np.abs(exact) > 1e-30
    assert (np.abs(gelu - exact)[big] / np.abs(exact[big])).max() < 2.5e-7


def test_float_activations_vs_float64():
    """Each transcendental activation: the float32 result within 2 float32 ulps (relative
    2.4e-7) of float64 on its non-tiny values."""
    x = np.linspace(-12, 12, 48001).astype(np.float32)
    xd = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-xd))
    exact = {"sigmoid": sig, "silu": xd * sig, "tanh": np.tanh(xd),
             "gelu_tanh": 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))}
    for act, want in exact.items():
        got = float_act(act, x).astype(np.float64)
        big = np.abs(want) > 1e-30
        assert (np.abs(got - want)[big] / np.abs(want[big])).max() < 2.4e-7, act


@pytest.mark.slow
def test_int8_standalone_activation_goes_to_host_with_its_reason():
    """ALU has no int8 activation (the table is an EPI's): a standalone SiLU after an add runs
    on the host in the int8 pipeline, the reason recorded, and the binary stays exact."""
    torch.manual_seed(0)
    model = AddThen("silu").eval()
    x = torch.randn(1, 3, 5, 5)
    result = compile_model(model, (x,), config=QuantConfig(weights="ternary", keep_first=False, keep_last=False))
    prog = build_program(result, activations="int8", calib={result.input_names[0]: torch.randn(4, 3, 5, 5).numpy()})
    assert [f["composite"] for f in prog.meta["fallbacks"]] == ["dlac.silu"]
    assert "no int8 ALU op" in prog.meta["fallbacks"][0]["reason"]
    from target_dlac.sim.host import HostRunner

    inputs = {prog.inputs[0].name: x.numpy()}
    got = run(prog, inputs, host_runner=HostRunner(prog))[0]["output_0"]
    np.testing.assert_array_equal(got, reference_outputs(prog, inputs)[0])
