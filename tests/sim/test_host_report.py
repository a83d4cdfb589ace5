"""Issue 13 item 4, run side: host ops in the run report are marked as host, their wall
time is measured apart from the dLAC cycles (which it never changes), and the MACs on
dLAC and on the host are reported."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from compiler.build import build_program
from compiler.pipeline import compile_model
from target_dlac.sim.host import HostRunner
from target_dlac.sim.interpreter import run
from target_dlac.sim.host_macs import host_macs


class HostNet(nn.Module):
    """A dilated conv (host), a conv on dLAC, an activation x activation matmul (host)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.g(torch.relu(self.a(x))))          # 1x8x6x6
        t = y.flatten(2)                                         # 1x8x36
        gram = torch.matmul(t, t.transpose(1, 2))                # 1x8x8: 8*8*36 MACs on the host
        return self.fc(gram.mean(2)), torch.softmax(gram, -1)


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    result = compile_model(HostNet().eval(), (x,))
    prog = build_program(result)
    return result, prog, {result.input_names[0]: x.numpy()}


def test_host_rows_marked_timed_and_counted(built):
    result, prog, inputs = built
    _, report = run(prog, inputs, host_runner=HostRunner(prog))
    host = [l for l in report.layers if l.on_host]
    assert host and all(l.to_dict()["on"] == "host" for l in host)
    assert all(l.to_dict()["on"] == "dlac" for l in report.layers if not l.on_host)
    assert all(l.host_seconds > 0 for l in host)
    assert report.extra["host_seconds"] == pytest.approx(sum(l.host_seconds for l in host))
    by = {r.name: r.dense_macs for r in result.multiplies}
    g = next(l for l in host if l.name == "host:g")
    assert g.host_macs == by["g"]
    # the gram matmul runs on the host unless a lowering took it (then dLAC counts it)
    gram = 8 * 8 * 36 if any(e["op"] == "matmul" for e in prog.meta["host_ops"]) else 0
    assert report.extra["host_macs"] == by["g"] + gram
    assert report.extra["dlac_macs"] >= by["a"] + by["fc"]
    table = report.table()
    assert "host wall time:" in table and "on the host CPU:" in table
    assert f"{by['g'] + gram:,} on the host" in table


def test_matmul_and_conv_macs_from_shapes():
    from target_dlac.sim.host_macs import _conv_out, _matmul

    assert _matmul([(1, 8, 36), (1, 36, 8)]) == ((1, 8, 8), 8 * 8 * 36)
    assert _matmul([(2, 5, 7), (7, 3)]) == ((2, 5, 3), 2 * 5 * 7 * 3)
    assert _matmul([(4,), (4, 3)]) == ((3,), 12)
    assert _matmul([None, (4, 3)]) == (None, None)
    out = _conv_out([(1, 8, 6, 6), (8, 8, 3, 3)], {"strides": [1, 1], "padding": [2, 2, 2, 2],
                                                   "dilation": [2, 2]})
    assert out == (1, 8, 6, 6)
    assert _conv_out([(1, 3, 7, 7), (4, 3, 3, 3)], {"strides": [2, 2], "padding": [0, 0, 0, 0]}) == (1, 4, 3, 3)


def test_host_time_is_not_in_the_cycles(built):
    """A slow host changes the host wall time, never a dLAC cycle number."""
    _, prog, inputs = built
    runner = HostRunner(prog)
    _, fast = run(prog, inputs, host_runner=runner)

    def slow(index, dram):
        time.sleep(0.02)
        runner(index, dram)

    _, slowed = run(prog, inputs, host_runner=slow)
    assert slowed.cycles == fast.cycles
    assert [l.cycles for l in slowed.layers] == [l.cycles for l in fast.layers]
    n_host = sum(1 for l in fast.layers if l.on_host)
    assert slowed.extra["host_seconds"] >= 0.02 * n_host > fast.extra["host_seconds"] - 0.02 * n_host


def test_host_macs_unknown_without_host_section(built):
    _, prog, _ = built
    assert set(host_macs(prog)) == set(range(len(prog.meta["host_ops"])))
    from dataclasses import replace

    assert host_macs(replace(prog, meta={**prog.meta, "host_ops": []})) == {}


def test_report_without_host_ops_has_no_host_line():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    r = compile_model(m, (torch.randn(1, 1, 6, 6),))
    prog = build_program(r)
    _, report = run(prog, {r.input_names[0]: np.zeros((1, 1, 6, 6), np.float32)})
    assert report.host_ops == 0 and "host wall time" not in report.table()
    assert report.extra["host_seconds"] == 0 and report.extra["host_macs"] == 0
