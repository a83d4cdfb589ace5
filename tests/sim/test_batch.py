"""Batched interpretation (issue 17): N inputs in one walk of the instruction stream give, for
every input, the outputs of a single run bit for bit, and its cycles and energy exactly, in
every activation mode (fp32, fp16, int8) and weight format (fp32 / int8 MAC, ternary TACC,
SWIS SACC), with zero activations skipped or not, through depthwise convs, residual adds,
average and max pooling, LUT / PReLU / GELU epilogues and host ops; a request larger than a
chunk is split without changing a bit; bad batches get one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.datasets import mnist_cnn, mnist_test  # noqa: E402
from compiler.models import randomize_bn  # noqa: E402
from target_dlac.core.errors import ConfigError  # noqa: E402
from target_dlac.isa import limits  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402
from target_dlac.sim import batch as batch_mod  # noqa: E402
from target_dlac.sim.batch import batch_cap, run_batch  # noqa: E402
from target_dlac.sim.interpreter import Interpreter  # noqa: E402


class Mixed(nn.Module):
    """Conv + BN + ReLU, a depthwise conv, a residual add, max and average pooling, PReLU,
    GELU and a linear head: every instruction family of the interpreter."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.act = nn.PReLU(8)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = y + self.c2(torch.relu(self.dw(y)))
        y = nn.functional.max_pool2d(self.act(y), 2)
        y = nn.functional.gelu(self.c3(y))
        y = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(y)


def _mixed():
    torch.manual_seed(0)
    return randomize_bn(Mixed())


@pytest.fixture(scope="module")
def mixed_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 1, 3, 12, 12)).astype(np.float32)
    x[2] = 0.0                                  # an all-zero input: the fewest cycles
    x[3, :, :, :, :6] = np.maximum(x[3, :, :, :, :6], 0)
    return x


def _compiled(weights: str, keep: bool = True):
    cfg = QuantConfig(weights=weights, keep_first=keep, keep_last=keep)
    return compile_model(_mixed(), (torch.zeros(1, 3, 12, 12),), config=cfg)


def _host(prog):
    """The host runner of a program with host ops (the PReLU of :class:`Mixed` in fp32)."""
    if not any(i.op == "HOST" for i in prog.insns):
        return None
    from target_dlac.sim.host import HostRunner

    return HostRunner(prog)


def _same_as_singles(prog, x, host_runner=None, batch=None):
    """Batched outputs, cycles and energy against single runs of the same inputs."""
    host_runner = host_runner or _host(prog)
    singles = [Interpreter(prog).run({"x": x[i]}, host_runner) for i in range(len(x))]
    outs, rep = run_batch(Interpreter(prog), {"x": x}, batch=batch, host_runner=host_runner)
    name = prog.outputs[0].name
    for i, (o, r) in enumerate(singles):
        assert np.isfinite(o[name]).all()
        assert outs[name][i].tobytes() == o[name].tobytes(), i
        for k in batch_mod.CYCLE_KEYS:
            assert int(rep.cycles[k][i]) == r.cycles[k], (i, k)
        for k in batch_mod.ENERGY_KEYS:
            assert float(rep.energy_pj[k][i]) == r.extra["energy_pj"][k], (i, k)
    assert rep.first.cycles == singles[0][1].cycles
    return outs, rep, singles


@pytest.mark.parametrize("acts", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("weights", ["ternary", "fp32", "int8", "swis"])
def test_batch_equals_single_runs(mixed_inputs, weights, acts):
    result = _compiled(weights, keep=weights != "fp32")
    calib = {"x": mixed_inputs[:, 0]} if acts == "int8" else None
    prog = build_program(result, activations=acts, calib=calib, reference=False)
    _, rep, _ = _same_as_singles(prog, mixed_inputs)
    assert len(set(rep.cycles["total"].tolist())) > 1, "zero activations skipped: cycles follow the data"


@pytest.mark.parametrize("skip", ["none", "pe"])
def test_batch_equals_single_runs_each_granularity(mixed_inputs, skip):
    prog = build_program(_compiled("ternary"), Machine(act_skip=skip), reference=False)
    _, rep, _ = _same_as_singles(prog, mixed_inputs)
    if skip == "none":
        assert len(set(rep.cycles["total"].tolist())) == 1


def test_chunks_change_nothing(mixed_inputs):
    prog = build_program(_compiled("ternary"), reference=False)
    host = _host(prog)
    whole, rep = run_batch(Interpreter(prog), {"x": mixed_inputs}, host_runner=host)
    parts, rep3 = run_batch(Interpreter(prog), {"x": mixed_inputs}, batch=3, host_runner=host)
    assert rep3.chunks == [3, 3, 1] and rep.chunks == [7]
    assert parts["output_0"].tobytes() == whole["output_0"].tobytes()
    assert np.array_equal(rep3.cycles["total"], rep.cycles["total"])
    assert np.array_equal(rep3.energy_pj["total"], rep.energy_pj["total"])
    stats = rep.cycle_stats()
    assert stats["min"] == rep.cycles["total"].min() < stats["max"]


def test_mnist_batch_matches_single_runs():
    """The demo's binary on real MNIST images."""
    x, _ = mnist_test(24)
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig())
    prog = build_program(result, reference=False)
    _same_as_singles(prog, x[:, None], batch=10)


def test_host_ops_run_per_input(mixed_inputs):
    """A binary with a host op (an ELU on the host CPU): each input's DRAM goes through it."""
    pytest.importorskip("tvm")
    from target_dlac.sim.host import HostRunner

    class Elu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(nn.functional.elu(self.conv(x)))

    torch.manual_seed(2)
    result = compile_model(Elu().eval(), (torch.zeros(1, 3, 12, 12),), config=QuantConfig(weights="fp32"))
    prog = build_program(result, reference=False)
    assert any(i.op == "HOST" for i in prog.insns)
    _, rep, singles = _same_as_singles(prog, mixed_inputs, host_runner=HostRunner(prog))
    assert rep.host_seconds > 0


def test_bad_batches_are_named(mixed_inputs):
    prog = build_program(_compiled("ternary"), reference=False)
    it = Interpreter(prog)
    with pytest.raises(ConfigError, match=r"batched input 'x' has shape \(7, 3, 12, 12\).*\(N, 1, 3, 12, 12\)"):
        it.run_batch({"x": mixed_inputs[:, 0]})
    with pytest.raises(ConfigError, match="missing \\['x'\\]"):
        it.run_batch({"y": mixed_inputs})
    with pytest.raises(ConfigError, match="empty batch"):
        run_batch(it, {"x": mixed_inputs[:0]})
    for bad in (0, -2, 1.5, "8"):
        with pytest.raises(ConfigError, match="batch size"):
            batch_cap(prog, bad)


def test_the_cap_bounds_memory(monkeypatch):
    prog = build_program(_compiled("ternary"), reference=False)
    per = batch_mod.per_input_bytes(prog)
    assert per > prog.dram_bytes
    monkeypatch.setattr(limits, "MAX_BATCH_BYTES", 3 * per)
    assert batch_cap(prog, 100) == 3
    assert batch_cap(prog, 2) == 2
    monkeypatch.setattr(limits, "MAX_BATCH_BYTES", per // 2)
    assert batch_cap(prog, 100) == 1            # always at least one input


class _Gram(nn.Module):
    """``relu(x) @ x^T``: a matmul of two activations, lowered to MAC with the weight block
    loaded from the activation (different in every input of a batch)."""

    def forward(self, x):
        return torch.relu(x) @ x.transpose(-2, -1)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 128, 300)], ids=["one_segment", "per_batch"])
def test_weights_from_activations(shape):
    from target_dlac.sim.host import HostRunner

    x = np.random.default_rng(3).standard_normal((4,) + shape).astype(np.float32)
    result = compile_model(_Gram().eval(), (torch.from_numpy(x[0]),), config=QuantConfig.full_precision())
    prog = build_program(result, reference=False)
    assert any(layer["op"] == "matmul" for layer in prog.meta["layers"])
    name = result.input_names[0]
    host = HostRunner(prog) if any(i.op == "HOST" for i in prog.insns) else None
    singles = [Interpreter(prog).run({name: x[i]}, host) for i in range(4)]
    outs, rep = run_batch(Interpreter(prog), {name: x}, host_runner=host)
    for i, (o, r) in enumerate(singles):
        assert outs["output_0"][i].tobytes() == o["output_0"].tobytes(), i
        assert int(rep.cycles["total"][i]) == r.cycles["total"]
        want = np.maximum(x[i], 0) @ x[i].transpose(0, 2, 1)
        assert np.abs(o["output_0"] - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("acts", ["fp32", "int8"])
def test_batched_reference_equals_batch_one(mixed_inputs, acts):
    """The REF graph rebuilt for a batch, its outer loops on TVM's thread pool, gives each
    input the batch-1 graph's outputs bit for bit (a short batch zero-padded)."""
    pytest.importorskip("tvm")
    from target_dlac.sim.host import batch_reference_runner, reference_runner

    calib = {"x": mixed_inputs[:, 0]} if acts == "int8" else None
    prog = build_program(_compiled("ternary"), activations=acts, calib=calib)
    one = reference_runner(prog)
    want = np.stack([one({"x": mixed_inputs[i]})[0] for i in range(len(mixed_inputs))])
    run = batch_reference_runner(prog, 4)
    assert run is not None and run.batch == 4
    got = np.concatenate([run({"x": mixed_inputs[i:i + 4]})[0] for i in (0, 4)])     # 4 + 3 (padded)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert got.tobytes() == want.tobytes()
    assert run({"x": mixed_inputs})[0].tobytes() == want.tobytes()          # 7 at once: 4 + 3


def _timeless(d):
    """A report's dict without the host's wall times (the only fields that vary by run)."""
    if isinstance(d, dict):
        return {k: _timeless(v) for k, v in d.items() if k != "host_seconds"}
    return [_timeless(v) for v in d] if isinstance(d, list) else d


@pytest.mark.parametrize("acts", ["fp32", "int8"])
def test_a_reused_interpreter_reports_each_run_as_a_fresh_one(mixed_inputs, acts):
    """What a run keeps from the first one (its memories, zeroed where the program reads
    before writing; the dense timeline; the report's static parts) changes nothing: every
    run's outputs and whole report equal a fresh interpreter's."""
    calib = {"x": mixed_inputs[:, 0]} if acts == "int8" else None
    prog = build_program(_compiled("ternary"), activations=acts, calib=calib, reference=False)
    host_runner = _host(prog)
    one = Interpreter(prog)
    name = prog.outputs[0].name
    for i in (0, 2, 3, 0):          # a dense, an all-zero and a half-zero input, then the first again
        got, rep = one.run({"x": mixed_inputs[i]}, host_runner)
        want, fresh = Interpreter(prog).run({"x": mixed_inputs[i]}, host_runner)
        assert got[name].tobytes() == want[name].tobytes(), i
        assert _timeless(rep.to_dict()) == _timeless(fresh.to_dict()), i
