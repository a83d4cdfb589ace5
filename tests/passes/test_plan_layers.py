"""The layer plan: made by the quantize stage, carried to the composites and the codegen."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.datasets import mnist_cnn, mnist_test  # noqa: E402
from passes.int8_weights import int8_weights  # noqa: E402
from passes.layers import find_layers  # noqa: E402
from target_dlac.codegen.composites import composite_calls, conv_layers  # noqa: E402
from target_dlac.codegen.generator import Codegen  # noqa: E402
from target_dlac.core.plan import LayerPlan, WeightFormat  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402


def _compile(machine=None, **cfg):
    x, _ = mnist_test(1)
    return compile_model(mnist_cnn(), (torch.from_numpy(x),), config=QuantConfig(**cfg), machine=machine)


@pytest.fixture(scope="module")
def ternary():
    return _compile()


@pytest.fixture(scope="module")
def swis():
    return _compile(weights="swis", swis_shifts=2.5)


def test_plan_per_layer(ternary):
    plans = ternary.layers
    assert all(isinstance(p, LayerPlan) for p in plans)
    assert [p.weight_format for p in plans] == \
        [WeightFormat.FLOAT32] + [WeightFormat.TERNARY] * (len(plans) - 2) + [WeightFormat.FLOAT32]
    for p in plans:
        if p.quantized:      # the exact decomposition: the fold stage holds its integers
            assert p.integers is not None and p.integers.q.dtype == np.int8
            assert set(np.unique(p.integers.q)) <= {-1, 0, 1}
        else:
            assert p.integers is None and p.swis is None
    fold = {l.name: l.weight for l in find_layers(ternary.stages["fold"]["main"])}
    for p in plans:
        if p.quantized:
            np.testing.assert_array_equal(fold[p.var], p.integers.q)
    assert ternary.plan == {p.var: p for p in plans}
    assert plans[0].to_dict() == {"name": plans[0].name, "var": plans[0].var, "op": plans[0].op,
                                  "weight_shape": list(plans[0].weight_shape),
                                  "precision": "fp32", "reason": "first layer"}


def test_composites_carry_the_plan(ternary):
    seen = {}
    for _, fn in composite_calls(ternary.stages["partition"]):
        if "dlac.layer" in fn.attrs:
            seen[str(fn.attrs["dlac.layer"])] = (str(fn.attrs["dlac.precision"]),
                                                 str(fn.attrs["dlac.weight_format"]))
    assert seen == {p.var: (p.precision, p.weight_format.value) for p in ternary.layers}


def test_swis_plan_and_groups_follow_pe_cols():
    for cols in (32, 8):
        r = _compile(Machine(pe_cols=cols), weights="swis", swis_shifts=2.5)
        assert r.machine.pe_cols == cols
        sw = [p for p in r.layers if p.weight_format is WeightFormat.SWIS]
        assert sw and all(p.swis is not None and p.integers.q.dtype == np.int16 for p in sw)
        assert r.swis == {p.var: p.swis for p in sw}
        for p in sw:
            c = p.swis.counts[p.swis.pe_order]
            groups = [c[i:i + cols] for i in range(0, len(c), cols)]
            assert all(len(set(g.tolist())) == 1 for g in groups)     # one count per PE group
        if cols == 8:      # smaller groups: not every layer's counts are uniform any more
            assert any(len(set(p.swis.counts.tolist())) > 1 for p in sw)


def test_int8_weights_fill_float_layers(ternary):
    plans = int8_weights(ternary.stages["fold"], ternary.layers)
    for before, after in zip(ternary.layers, plans):
        if before.weight_format is WeightFormat.FLOAT32:
            assert after.int8 is not None and after.int8.q.dtype == np.int8
            assert np.abs(after.int8.q).max() == 127 and after.int8.q.shape == before.weight_shape
        else:
            assert after is before


@pytest.mark.parametrize("cfg", [{}, {"weights": "int4"}, {"weights": "swis"},
                                 {"weights": "fp32"}])
def test_conv_layers_equal_the_codegen(cfg):
    r = _compile(**cfg)
    cg = Codegen(r.stages["partition"], Machine(), **r.codegen_args())
    cg.generate()
    listed = conv_layers(r.stages["partition"], r.plan)
    assert len(listed) == len(cg.conv_layers) == len(r.layers)
    for a, b in zip(listed, cg.conv_layers):
        assert (a.name, a.op, a.precision, a.shape, a.has_scale, a.weight_format) == \
            (b.name, b.op, b.precision, b.shape, b.has_scale, b.weight_format)
        np.testing.assert_array_equal(a.weights.w, b.weights.w)
        assert a.weights.swis is b.weights.swis
