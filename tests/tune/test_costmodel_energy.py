"""The cost model's energy against the interpreter's: given the same activations, every
layer's action counts and energy (compute / on-chip / DRAM / static) are the interpreter's
exactly, with and without zero-activation skipping; without activations, the energy of an
input without zeros; the efficiency figures follow from the energy."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.build import build_program
from target_dlac.codegen.schedule import default_schedule
from target_dlac.isa import energy
from target_dlac.isa.machine import Machine
from target_dlac.sim.interpreter import Interpreter
from target_dlac.tune.costmodel import layer_cost, layer_cycles
from tests.tune.test_costmodel_acts import _input, _layers, mnist  # noqa: F401 - the fixture

MACHINES = {"none": Machine(act_skip="none"), "column": Machine(), "pe": Machine(act_skip="pe")}


@pytest.mark.parametrize("gran", sorted(MACHINES))
def test_cost_model_energy_is_the_interpreters(mnist, gran):
    x, result = mnist
    m = MACHINES[gran]
    layers = _layers(result, m)
    prog = build_program(result, m, reference=False)
    it = Interpreter(prog)
    checked = 0
    for i in (0, 3):
        _, rep = it.run({"x": x[i:i + 1]})
        by_name = {l.name: l for l in rep.layers}
        for name, (shape, info, has_scale, ref) in layers.items():
            s = default_schedule(shape, m, info.max_bytes)
            pred = layer_cost(shape, s, m, info, has_scale=has_scale, acts=_input(prog, it.mem["DRAM"], ref))
            got = by_name[name]
            assert pred["total"] == got.cycles
            assert pred["dense_macs"] == got.dense_macs
            for part in energy.PARTS + ("total",):
                assert pred["energy_pj"][part] == pytest.approx(got.energy_pj[part], rel=1e-12, abs=1e-9), \
                    (gran, name, part)
            assert pred["energy_pj"]["compute"] > 0 and pred["energy_pj"]["dram"] > 0
            checked += 1
    assert checked == 2 * len(layers) >= 10
    # the whole run: the layers' energies add up to the run's (every pc is in one layer)
    total = sum(l.energy_pj["total"] for l in rep.layers)
    assert total == pytest.approx(rep.extra["energy_pj"]["total"], rel=1e-9)


def test_without_activations_an_input_without_zeros(mnist):
    """No activations given: the cost model's energy is the interpreter's on an input
    with no zero anywhere it reads (act_skip none: on any input)."""
    x, result = mnist
    m = MACHINES["none"]
    layers = _layers(result, m)
    prog = build_program(result, m, reference=False)
    _, rep = Interpreter(prog).run({"x": x[:1]})
    by_name = {l.name: l for l in rep.layers}
    for name, (shape, info, has_scale, _) in layers.items():
        s = default_schedule(shape, m, info.max_bytes)
        pred = layer_cost(shape, s, m, info, has_scale=has_scale)
        assert pred["energy_pj"]["total"] == pytest.approx(by_name[name].energy_pj["total"], rel=1e-12)
        assert {k: pred[k] for k in ("total", "compute", "load_stall", "store_stall")} == \
            layer_cycles(shape, s, m, info, has_scale=has_scale)


def test_skipping_saves_compute_energy_only_where_activations_are_zero(mnist):
    """With zero activations skipped a layer's compute energy drops (the real input has
    zeros after ReLU), never below zero; the weight reads stay (skipped steps still walk
    their weights); efficiency figures are the energy's."""
    x, result = mnist
    dense_m, skip_m = MACHINES["none"], MACHINES["pe"]
    layers = _layers(result, skip_m)
    prog = build_program(result, skip_m, reference=False)
    it = Interpreter(prog)
    _, rep = it.run({"x": x[:1]})
    saved = 0
    for name, (shape, info, has_scale, ref) in layers.items():
        s = default_schedule(shape, skip_m, info.max_bytes)
        a = _input(prog, it.mem["DRAM"], ref)
        live = layer_cost(shape, s, skip_m, info, has_scale=has_scale, acts=a)
        full = layer_cost(shape, s, dense_m, info, has_scale=has_scale)
        assert live["actions"]["WGT_read"] == full["actions"]["WGT_read"]
        assert live["actions"].get("zero_check", 0) > 0 and "zero_check" not in full["actions"]
        if np.count_nonzero(a) < a.size:
            assert live["actions"]["INP_read"] < full["actions"]["INP_read"]
            saved += 1
        e = live["energy_pj"]["total"]
        assert live["pj_per_mac"] == pytest.approx(e / live["dense_macs"])
        assert live["tops_per_w"] == pytest.approx(2 * live["dense_macs"] / e)
        assert live["edp_js"] == pytest.approx(e * 1e-12 * skip_m.seconds(live["total"]))
    assert saved >= 3

