"""The cost model with zero activations skipped, against the interpreter.

* Given the same activation data (each layer's input as the interpreter read it from
  DRAM), ``layer_cycles(..., acts=x)`` equals the interpreter's per-layer cycles and their
  split exactly, for every layer of the MNIST CNN (fp32 / ternary / int8), several
  schedules and both granularities, on real test images; so does its energy
  (``layer_cost``; more in ``test_costmodel_energy.py``).
* From statistics (``live_ratio`` measured on other images, :mod:`target_dlac.tune.act_stats`)
  it predicts the mean cycles of held-out images; the bound used for pruning stays below
  the expected cycles.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.datasets import mnist_cnn, mnist_test
from target_dlac.codegen.generator import Codegen
from compiler.tune import collect_layers
from target_dlac.codegen.schedule import Schedule, default_schedule, fits
from target_dlac.isa.machine import Machine
from target_dlac.sim.interpreter import Interpreter
from target_dlac.tune.act_stats import live_ratios
from target_dlac.tune.costmodel import cycles_lower_bound, layer_cost, layer_cycles

MACHINES = {"column": Machine(), "pe": Machine(act_skip="pe")}


class _Inputs(Codegen):
    """The codegen, remembering each conv layer's input tensor (by layer variable)."""

    def _layer_weights(self, spec, x, out, res):
        self.inputs = getattr(self, "inputs", {})
        self.inputs[spec.layer] = x
        return super()._layer_weights(spec, x, out, res)


def _layers(result, machine) -> dict:
    """name -> (shape, LayerWeights, has_scale, input Ref) of the conv / dense layers, as the
    tuner sees them (:func:`compiler.tune.collect_layers`) and where their inputs live."""
    rec = _Inputs(result.mod, machine, **result.codegen_args())
    rec.generate()
    var = {e.name: e.var for e in rec.layers}
    return {t.name: (t.layer.shape, t.layer.weights, t.layer.has_scale, rec.inputs[var[t.name]])
            for t in collect_layers(result, machine)}


def _input(prog, dram: np.ndarray, ref) -> np.ndarray:
    """The layer input ``ref`` (a codegen Ref, by name) as the program's run left it in DRAM."""
    t = prog.tensor(ref.name)
    a = dram[t.addr:t.addr + t.nbytes].view(np.dtype(t.dtype)).reshape(t.shape)
    return a.reshape(a.shape[0], a.shape[1], 1, 1) if a.ndim == 2 else a


@pytest.fixture(scope="module")
def mnist():
    x, _ = mnist_test(40)
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig())
    return x, result


@pytest.mark.parametrize("gran", sorted(MACHINES))
def test_given_the_activations_the_cost_model_is_the_interpreter(mnist, gran):
    x, result = mnist
    m = MACHINES[gran]
    layers = _layers(result, m)
    checked = 0
    for variant in ("default", "pe_map", "small_tiles"):
        scheds = {}
        for name, (shape, info, has_scale, ref) in layers.items():
            d = default_schedule(shape, m, info.max_bytes)
            s = {"default": d, "pe_map": replace(d, pxshift=2),
                 "small_tiles": replace(d, h_tile=max(1, d.h_tile // 2), f_tile=max(1, d.f_tile // 2 + 1))}[variant]
            if fits(shape, s, m, info.max_bytes):
                scheds[name] = s
        prog = build_program(result, m, schedules=scheds, reference=False)
        it = Interpreter(prog)
        for i in (0, 7):
            _, rep = it.run({"x": x[i:i + 1]})
            by_name = {l.name: l for l in rep.layers}
            for name, s in scheds.items():
                shape, info, has_scale, ref = layers[name]
                got = by_name[name]
                # the layer's input is in DRAM after the run (each activation has its own bytes)
                pred = layer_cycles(shape, s, m, info, has_scale=has_scale, acts=_input(prog, it.mem["DRAM"], ref))
                assert pred == {"total": got.cycles, "compute": got.compute, "load_stall": got.load_stall,
                                "store_stall": got.store_stall}, (gran, variant, name, i)
                dense = layer_cycles(shape, s, m, info, has_scale=has_scale)
                assert pred["compute"] <= dense["compute"]
                checked += 1
    assert checked >= 25


def test_expected_cycles_from_statistics(mnist):
    """Ratios measured on 16 images predict the mean cycles of 16 held-out ones; the pruning
    bound with the same ratios never exceeds the expected cycles."""
    x, result = mnist
    m = Machine()
    layers = _layers(result, m)
    prog = build_program(result, m, reference=False)
    ratios = live_ratios(prog, [{"x": x[i:i + 1]} for i in range(16)])
    assert set(ratios) == set(layers)
    it = Interpreter(prog)
    held = [it.run({"x": x[i:i + 1]})[1] for i in range(16, 32)]
    for name, (shape, info, has_scale, ref) in layers.items():
        s = default_schedule(shape, m, info.max_bytes)
        mean = np.mean([next(l for l in r.layers if l.name == name).cycles for r in held])
        pred = layer_cycles(shape, s, m, info, has_scale=has_scale, live_ratio=ratios[name])["total"]
        assert abs(pred - mean) <= 0.05 * mean, (name, pred, mean)
        for px in ratios[name]:
            s2 = replace(s, pxshift=px)
            if fits(shape, s2, m, info.max_bytes):
                exp = layer_cycles(shape, s2, m, info, has_scale=has_scale, live_ratio=ratios[name])["total"]
                assert cycles_lower_bound(shape, s2, m, info, has_scale=has_scale,
                                          live_ratio=ratios[name]) <= exp, (name, px)


@pytest.mark.parametrize("gran", sorted(MACHINES))
def test_depthwise_grouped_and_residual_layers(gran):
    """Ternary depthwise (its channels follow its filters' PE order), grouped, strided and
    residual layers: the cost model given the activations is the interpreter."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 24, 3, padding=1)
            self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
            self.g = nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=3)
            self.pw = nn.Conv2d(24, 24, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.dw(y))
            y = torch.relu(self.g(y))
            return torch.relu(self.pw(y) + y)

    torch.manual_seed(1)
    net = Net().eval()
    x = np.random.default_rng(2).standard_normal((1, 8, 12, 12)).astype(np.float32)
    result = compile_model(net, (torch.from_numpy(x),), config=QuantConfig(keep_first=False))
    m = MACHINES[gran]
    layers = _layers(result, m)
    assert sum(s.depthwise for s, *_ in layers.values()) == 1 and any(s.residual for s, *_ in layers.values())
    prog = build_program(result, m, reference=False)
    it = Interpreter(prog)
    _, rep = it.run({prog.inputs[0].name: x})
    by_name = {l.name: l for l in rep.layers}
    for name, (shape, info, has_scale, ref) in layers.items():
        meta = next(e for e in prog.meta["layers"] if e["name"] == name)
        pred = layer_cost(shape, Schedule.from_dict(meta["schedule"]), m, info, has_scale=has_scale,
                          acts=_input(prog, it.mem["DRAM"], ref))
        got = by_name[name]
        assert pred["total"] == got.cycles and pred["compute"] == got.compute, (gran, name)
        assert pred["energy_pj"]["total"] == pytest.approx(got.energy_pj["total"], rel=1e-12), (gran, name)
    assert max(l.speedup_acts for l in rep.layers) > 1.0


@pytest.mark.parametrize("weights", ["swis", "int4"])
def test_swis_and_dense_int_layers(mnist, weights):
    """SACC (SWIS: live 4-channel groups times shift passes) and dense int8-format MAC layers:
    the cost model given the activations is the interpreter, on a real image."""
    x, _ = mnist
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),),
                           config=QuantConfig(weights=weights, cluster_size=4, swis_shifts=2.0))
    m = Machine()
    prog = build_program(result, m, reference=False)
    it = Interpreter(prog)
    _, rep = it.run({"x": x[3:4]})
    by_name = {l.name: l for l in rep.layers}
    ops = set()
    for name, (shape, info, has_scale, ref) in _layers(result, m).items():
        meta = next(e for e in prog.meta["layers"] if e["name"] == name)
        pred = layer_cost(shape, Schedule.from_dict(meta["schedule"]), m, info, has_scale=has_scale,
                          acts=_input(prog, it.mem["DRAM"], ref))
        assert pred["total"] == by_name[name].cycles and pred["compute"] == by_name[name].compute, name
        assert pred["energy_pj"] == pytest.approx(by_name[name].energy_pj, rel=1e-12), name
        ops |= {prog.insns[pc].op for pc in range(meta["pc_start"], meta["pc_end"])}
    assert ("SACC" if weights == "swis" else "MAC") in ops
    assert max(l.speedup_acts for l in rep.layers) > 1.2
