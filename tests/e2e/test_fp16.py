"""dLAC's fp16 mode: float16 activations between ops, float32 inside each op; the
interpreter against the TVM build of the same graph with float16 storage, and twice the
MAC lanes in the cycle model."""

from __future__ import annotations

from target_dlac.sim.host import reference_module

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.datasets import mnist_cnn, mnist_test  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402
from target_dlac.sim.interpreter import Interpreter  # noqa: E402


@pytest.fixture(scope="module")
def case():
    x, _ = mnist_test(8)
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig())
    dense_acts = Machine(act_skip="none")     # the lane rate on its own (zero activations skip per pass)
    return x, result, build_program(result, dense_acts, activations="fp16"), build_program(result, dense_acts)


@pytest.mark.slow
def test_fp16_matches_its_reference(case):

    x, result, prog, _ = case
    ref = reference_module(prog)
    interp = Interpreter(prog)
    for i in range(4):
        out = interp.run({"x": x[i:i + 1]})[0]["output_0"]
        expect = run_reference(ref, x[i:i + 1])[0]
        assert np.abs(out - expect).max() <= 1e-2 * np.abs(expect).max()
        fp32 = run_reference(result.reference_module("fold"), x[i:i + 1])[0]
        assert np.abs(out - fp32).max() <= 5e-3 * np.abs(fp32).max()      # float16 storage only
        assert out.argmax() == fp32.argmax()


def test_fp16_storage_and_rate(case):
    x, _, prog16, prog32 = case
    convs = [i for i in prog16.insns if i.op in ("TACC", "MAC")]
    assert convs and all(i.f["dtype"] == 1 for i in convs)
    assert {i.op for i in prog16.insns} >= {"ALU"}          # narrow the input, widen the output
    _, rep16 = Interpreter(prog16).run({"x": x[:1]})
    _, rep32 = Interpreter(prog32).run({"x": x[:1]})
    c16 = {l.name: l.compute for l in rep16.layers}
    for l in rep32.layers:
        if l.op == "conv2d" and l.precision == "ternary":
            assert c16[l.name] < 0.6 * l.compute      # twice the lanes, plus the fixed setup


def test_mixed_fp16_layers(case):
    """Per-layer activation types: the overridden layers run in fp16, the rest in fp32,
    with conversions where they meet; still checked against the same-storage reference."""

    x, _, _, _ = case
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),),
                           config=QuantConfig(activation_overrides={"conv_layers.3": "fp16"}))
    prog = build_program(result)
    by_layer = {l["name"]: l for l in prog.meta["layers"]}
    dtypes = {name: {prog.insns[pc].f["dtype"] for pc in range(l["pc_start"], l["pc_end"])
                     if prog.insns[pc].op in ("TACC", "MAC")} for name, l in by_layer.items()}
    assert dtypes["conv_layers.3"] == {1} and dtypes["conv_layers.6"] == {0} and dtypes["conv_layers.0"] == {0}
    ref = reference_module(prog)
    out = Interpreter(prog).run({"x": x[:1]})[0]["output_0"]
    expect = run_reference(ref, x[:1])[0]
    assert np.abs(out - expect).max() <= 1e-2 * np.abs(expect).max()


def test_activation_override_validation():
    from target_dlac.core.errors import ConfigError

    with pytest.raises(ConfigError, match="fp32 or fp16"):
        QuantConfig(activation_overrides={"conv*": "int8"})
