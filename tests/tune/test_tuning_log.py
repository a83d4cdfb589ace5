"""The tuning log (:mod:`target_dlac.tune.tuning_log`), ``tune_model`` and ``dlac tune``:
round trip, torn / malformed lines, resume, kill -9 midway, and compiling with the log
(the interpreter's per-layer cycles equal the log's tuned cycles)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from tests.cli_helpers import cli, script_env

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.datasets import mnist_cnn
from compiler.tune import collect_layers, tune_model
from target_dlac.tune import tuning_log
from target_dlac.sim.interpreter import run
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import ConvShape, Schedule

M = Machine(act_skip="none")     # the logged cycles are the interpreter's for any input (dense activations)
SHAPE = ConvShape(1, 8, 8, 8, 16, 3, 3, 1, 1, (1, 1, 1, 1), 8, 8)


def _record(i: int, cycles: int = 100) -> dict:
    w = np.full((16, 8, 3, 3), i % 3 - 1, np.int8)
    key = tuning_log.layer_key("conv2d", SHAPE, w, "ternary", True, M.hash())
    return {"key": key, "schedule": Schedule(16, 8, 4, 8).to_dict(), "cycles": cycles,
            "default_cycles": 120, "trials": 7, "strategy": "anneal", "time": 1.0}


def test_ungrouped_key_is_the_key_of_older_logs_and_groups_change_it():
    """Logs written before grouped convolutions ran on dLAC keep matching their layers."""
    import dataclasses

    w = np.zeros((16, 8, 3, 3), np.int8)
    key = tuning_log.layer_key("conv2d", SHAPE, w, "ternary", True, M.hash())
    assert "groups" not in key["shape"]
    grouped = dataclasses.replace(SHAPE, groups=2)
    gkey = tuning_log.layer_key("conv2d", grouped, np.zeros((16, 4, 3, 3), np.int8), "ternary", True, M.hash())
    assert gkey["shape"]["groups"] == 2


def test_round_trip_and_best(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = [_record(0, 100), _record(1, 90), _record(0, 80), _record(0, 95)]
    for r in recs:
        tuning_log.append(log, r)
    got = tuning_log.load(log)
    assert list(got) == recs and got.skipped == 0
    best = tuning_log.best(got)
    assert len(best) == 2
    assert best[tuning_log.key_str(recs[0]["key"])]["cycles"] == 80
    assert tuning_log.parse_schedule(best[tuning_log.key_str(recs[1]["key"])]["schedule"]) == \
        Schedule(16, 8, 4, 8)
    assert tuning_log.load(tmp_path / "missing.jsonl") == []


def test_torn_and_malformed_lines_are_skipped(tmp_path):
    log = tmp_path / "log.jsonl"
    good = [_record(0), _record(1)]
    bad_sched = dict(_record(2), schedule={"f_tile": "x"})
    lines = [json.dumps(good[0]), "not json", json.dumps([1, 2]), json.dumps(bad_sched),
             json.dumps(good[1])]
    torn = json.dumps(_record(3))[:40]
    log.write_text("\n".join(lines) + "\n" + torn)
    got = tuning_log.load(log)
    assert list(got) == good
    assert (got.torn, got.malformed, got.invalid) == (1, 2, 1)
    # appending after a torn line starts a fresh line: the new record is readable
    tuning_log.append(log, _record(4))
    got = tuning_log.load(log)
    assert list(got) == good + [_record(4)] and got.torn == 0 and got.malformed == 3


@pytest.fixture(scope="module")
def mnist():
    return compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=QuantConfig())


@pytest.mark.slow
def test_resume_and_compile_with_log(mnist, tmp_path):
    log = tmp_path / "log.jsonl"
    rows = tune_model(mnist, M, log, trials=60, jobs=2)
    assert [r["status"] for r in rows] == ["tuned"] * 5
    assert all(r["lower_bound"] <= r["tuned_cycles"] <= r["default_cycles"] for r in rows)
    assert sum(r["tuned_cycles"] for r in rows) < sum(r["default_cycles"] for r in rows)
    text = log.read_text()
    assert len(text.splitlines()) == 5
    # second run: everything comes from the log, no trial, nothing appended
    seen = []
    rows2 = tune_model(mnist, M, log, trials=60, jobs=2, progress=lambda *a: seen.append(a[1:]))
    assert [r["status"] for r in rows2] == ["from log"] * 5 and seen == [(i, 5) for i in range(1, 6)]
    assert log.read_text() == text
    assert [r["tuned_cycles"] for r in rows2] == [r["tuned_cycles"] for r in rows]

    # compiling with the log: the interpreter's per-layer cycles are the logged ones
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    prog = build_program(mnist, M, tuning_log=log, reference=False)
    assert prog.meta["tuning"]["tuned_layers"] == 5
    _, rep = run(prog, {"x": x})
    by_name = {l.name: l.cycles for l in rep.layers}
    bounds = {l.name: l.lower_bound_cycles for l in rep.layers}
    for r in rows:
        assert by_name[r["layer"]] == r["tuned_cycles"], r
        assert bounds[r["layer"]] == r["lower_bound"] > 0, r
    _, rep0 = run(build_program(mnist, M, reference=False), {"x": x})
    assert rep.cycles["total"] <= rep0.cycles["total"]
    by_name0 = {l.name: l.cycles for l in rep0.layers}
    for r in rows:
        assert by_name0[r["layer"]] == r["default_cycles"], r

    # a record for another machine does not apply: default schedules
    other = Machine(dram_bytes_per_cycle=M.dram_bytes_per_cycle * 2)
    assert build_program(mnist, other, tuning_log=log, reference=False).meta["tuning"]["tuned_layers"] == 0


_SCRIPT = textwrap.dedent('''
    import sys, time
    import torch
    from compiler import QuantConfig, compile_model
    from compiler.datasets import mnist_cnn
    from compiler.tune import tune_model
    from target_dlac.tune import costmodel
    from target_dlac.isa.machine import Machine

    if sys.argv[2] == "slow":                 # slow the cost model down: room to kill midway
        fast = costmodel.layer_cycles
        def slow(*a, **k):
            time.sleep(0.03)
            return fast(*a, **k)
        costmodel.layer_cycles = slow
    result = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=QuantConfig())
    rows = tune_model(result, Machine(act_skip="none"), sys.argv[1], trials=40, jobs=1)
    print("DONE", sum(r["status"] == "tuned" for r in rows))
''')


@pytest.mark.slow
def test_kill_9_midway_then_resume(mnist, tmp_path):
    log = tmp_path / "log.jsonl"
    script = tmp_path / "tune_script.py"
    script.write_text(_SCRIPT)
    env = script_env()
    proc = subprocess.Popen([sys.executable, str(script), str(log), "slow"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = tuning_log.load(log)
    assert 1 <= len(first) < 5, "killed after the first record, before the last"
    out = subprocess.run([sys.executable, str(script), str(log), "fast"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"DONE {5 - len(first)}" in out.stdout
    recs = tuning_log.load(log)
    assert recs.skipped == 0 and list(recs[:len(first)]) == list(first)
    keys = [tuning_log.key_str(r["key"]) for r in recs]
    expected = {tuning_log.key_str(l.key) for l in collect_layers(mnist, M)}
    assert len(keys) == len(set(keys)) == 5 and set(keys) == expected


def test_cli_tune_prints_table_and_compile_applies(tmp_path, tiny_factory):
    log = tmp_path / "log.jsonl"
    res = cli(["tune", tiny_factory, "-o", log, "--trials", "30", "--jobs", "1", "--strategy", "random"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "speedup" in out and "default" in out and "tuned" in out
    for name in ("conv1", "conv2", "conv3", "fc"):
        assert any(line.startswith(name) and "x" in line for line in out.splitlines())
    assert len(tuning_log.load(log)) == 4
    res = cli(["compile", tiny_factory, "-o", tmp_path / "out.dlac", "--tuning-log", log])
    assert res.exit_code == 0, res.output
    assert "4 of 4 conv/dense layers got a tuned schedule" in res.stdout
    assert "%bound" in out and "4/4" in out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_tune_unreachable_dask_scheduler(tmp_path, monkeypatch, tiny_factory):
    monkeypatch.setattr("compiler.tune_dask.DASK_CONNECT_TIMEOUT", "1s")
    log = tmp_path / "log.jsonl"
    res = cli(["tune", tiny_factory, "-o", log, "--trials", "5", "--dask", f"tcp://127.0.0.1:{_free_port()}"])
    assert res.exit_code == 2, res.output
    assert "cannot reach the Dask scheduler" in res.stderr and "Traceback" not in res.output
    assert not log.exists() or tuning_log.load(log) == []


@pytest.mark.slow
def test_dask_local_cluster_equals_local_run(mnist, tmp_path):
    """The same tune on a Dask LocalCluster (2 worker processes on 127.0.0.1) and in the
    local process pool: the same records (schedules, cycles, trials, bounds)."""
    distributed = pytest.importorskip("distributed")
    local, remote = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    rows_local = tune_model(mnist, M, local, trials=40, jobs=2, seed=3)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None, processes=True) as cluster:
        rows_dask = tune_model(mnist, M, remote, trials=40, seed=3, dask=cluster.scheduler_address)
    strip = ("time", "note")

    def same(rows):
        return [{k: v for k, v in r.items() if k not in strip} for r in rows]

    assert same(rows_dask) == same(rows_local)
    assert [r["status"] for r in rows_dask] == ["tuned"] * 5

    def recs(p):
        return sorted((json.dumps({k: v for k, v in r.items() if k != "time"}, sort_keys=True)
                       for r in tuning_log.load(p)))

    assert recs(remote) == recs(local) and len(recs(local)) == 5


@pytest.mark.parametrize("change,field", [
    ({"f_tile": "x"}, "f_tile"), ({"c_tile": 0}, "c_tile"), ({"h_tile": True}, "h_tile"),
    ({"w_tile": 2.0}, "w_tile"), ({"pxshift": -1}, "pxshift"), ({"order": "inner"}, "order"),
    ({"pe_order": None}, "pe_order"), ({"double_buffer": 1}, "double_buffer"),
    ({"extra": 1}, "extra"), ({"pxshift": None}, "pxshift"),
])
def test_one_strict_schedule_parser(change, field):
    """``Schedule.from_dict`` is the one parser of a schedule (the tuning log's
    ``parse_schedule`` calls it): it round-trips ``to_dict``, and a missing or unknown
    field, a wrong type or an out-of-range value is an error naming the field (the log
    then counts the record as invalid)."""
    from target_dlac.core.errors import CodegenError

    s = Schedule(16, 8, 4, 8, order="filter_outer", double_buffer=False, pe_order="as_is", pxshift=2)
    assert Schedule.from_dict(s.to_dict()) == s == tuning_log.parse_schedule(s.to_dict())
    bad = {k: v for k, v in dict(s.to_dict(), **change).items() if v is not None or k not in change}
    with pytest.raises(CodegenError, match=field):
        Schedule.from_dict(bad)
    assert tuning_log.parse_schedule(bad) is None
    assert not tuning_log.valid_record(dict(_record(0), schedule=bad))
