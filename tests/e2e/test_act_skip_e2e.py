"""Zero-activation skipping on the real MNIST CNN and real test images: values never change
(fp32, fp16, int8: bit for bit with ``act_skip`` none / column / pe), cycles follow the
data (an all-zero image costs far less than a dense one; ``pe`` <= ``column`` <= ``none``),
the report's lower bound stays below every run, and the per-layer speedups compose.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.datasets import mnist_cnn, mnist_test  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402
from target_dlac.sim.interpreter import Interpreter  # noqa: E402

GRANS = ("none", "column", "pe")


@pytest.fixture(scope="module")
def mnist():
    x, _ = mnist_test(6)
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig())
    return x, result


@pytest.mark.parametrize("acts", ["fp32", "fp16", "int8"])
def test_outputs_identical_and_cycles_ordered(mnist, acts):
    x, result = mnist
    calib = {"x": x} if acts == "int8" else None
    runs = {}
    for g in GRANS:
        prog = build_program(result, Machine(act_skip=g), activations=acts, calib=calib, reference=False)
        it = Interpreter(prog)
        runs[g] = [it.run({"x": x[i:i + 1]}) for i in range(3)]
    for i in range(3):
        base = runs["none"][i][0]["output_0"]
        assert np.isfinite(base).all()
        for g in GRANS[1:]:
            assert runs[g][i][0]["output_0"].tobytes() == base.tobytes(), (acts, g, i)
        c = [runs[g][i][1].cycles["total"] for g in GRANS]
        assert c[2] < c[1] < c[0], (acts, c)
        for g in GRANS:
            for l in runs[g][i][1].layers:
                assert l.cycles >= l.lower_bound_cycles, (g, l.name)
    # the weight-only part is the act_skip = none run's; per-image cycles differ with the data
    none_layers = {l.name: l for l in runs["none"][0][1].layers}
    for l in runs["column"][0][1].layers:
        assert l.speedup_weights == pytest.approx(none_layers[l.name].zero_skip_speedup), l.name
        if l.name == "conv_layers.6":
            assert l.speedup_acts > 1.1 and l.act_density < 0.5
    assert len({r[1].cycles["total"] for r in runs["column"]}) > 1


def test_zero_image_costs_far_less_than_a_dense_one(mnist):
    """A dense positive input (no zeros) costs exactly what it costs without skipping in the
    first layer, whose input it is (its zero padding aside: a 1x1 model below has none); an
    all-zero image costs far less in every layer that reads zeros."""
    _, result = mnist
    progs = {g: build_program(result, Machine(act_skip=g), reference=False) for g in GRANS}
    zero = np.zeros((1, 1, 28, 28), np.float32)
    reps = {g: Interpreter(p).run({"x": zero})[1] for g, p in progs.items()}
    first = {g: r.layers[0] for g, r in reps.items()}
    # the layer's compute is skipped (its DMA is not: it is memory-bound without the compute)
    assert first["pe"].compute <= first["column"].compute < 0.2 * first["none"].compute
    assert first["column"].cycles < first["none"].cycles
    assert first["column"].act_density == 0.0
    assert reps["column"].cycles["total"] < reps["none"].cycles["total"]


def test_dense_positive_input_costs_what_it_costs_without_skipping():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()            # positive weights and biases: no zero anywhere
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 64, 12, 12)).astype(np.float32)
    result = compile_model(model, (torch.from_numpy(x),), config=QuantConfig.full_precision())
    cyc = {}
    for g in GRANS:
        out, rep = Interpreter(build_program(result, Machine(act_skip=g), reference=False)).run({"input": x})
        cyc[g] = [l.cycles for l in rep.layers]
        zero_rep = Interpreter(build_program(result, Machine(act_skip=g), reference=False)).run(
            {"input": np.zeros_like(x)})[1]
        if g != "none":
            assert zero_rep.layers[0].compute < 0.2 * rep.layers[0].compute
    assert cyc["none"] == cyc["column"] == cyc["pe"]
