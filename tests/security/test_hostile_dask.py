"""Hostile Dask workers (issue 11, "Workers").

A worker that cannot import dlac (a ``--preload`` that makes ``import compiler`` fail)
gives one error at once, or is left out when another worker can run dlac; the last worker
killed mid-run gives one error after ``dask_timeout`` (the finished layers are logged; a
rerun resumes); one of two workers killed mid-run: the run finishes on the other; a killed
scheduler gives exactly one stderr line, no traceback.  (The module fixture ``tiny`` is in
tests/security/conftest.py.)

Every test that could hang is bounded (``signal.alarm`` or a subprocess timeout).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tests.cli_helpers import script_env

from target_dlac.core.errors import DlacError
from compiler.tune import tune_model
from target_dlac.tune import tuning_log
from target_dlac.isa.machine import Machine

distributed = pytest.importorskip("distributed")


M = Machine()

BLOCK_DLAC = textwrap.dedent('''
    """Dask preload: this worker process cannot import dlac."""
    import sys


    class _NoDlac:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("compiler", "target_dlac", "passes"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, _NoDlac())
''')

SLOW = textwrap.dedent('''
    """Dask preload: each layer's search takes DLAC_TEST_SLOW more seconds."""
    import os
    import time

    from target_dlac.tune import costmodel


    def _slow(*a, **k):
        time.sleep(float(os.environ.get("DLAC_TEST_SLOW", "1")))
        return costmodel.dlac_test_fast_bound(*a, **k)


    if not hasattr(costmodel, "dlac_test_fast_bound"):     # distributed may run a preload twice
        costmodel.dlac_test_fast_bound = costmodel.layer_lower_bound
        costmodel.layer_lower_bound = _slow
''')


class Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes more than ``seconds``."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _env(**extra) -> dict:
    return dict(script_env(), **extra)


@contextlib.contextmanager
def _procs():
    """Subprocesses started in the block (a list to append to), killed at its end."""
    started: list = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait()


def _worker(procs, tmp_path, address, preload: str | None, slow: float = 0.0):
    """A ``dask worker`` process (no nanny, one thread) with a preload module (``"block"``:
    dlac cannot be imported; ``"slow"``: each layer takes ``slow`` s more)."""
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny",
           "--nthreads", "1", "--no-dashboard"]
    if preload:
        path = tmp_path / f"{preload}_preload.py"
        path.write_text({"block": BLOCK_DLAC, "slow": SLOW}[preload])
        cmd += ["--preload", str(path)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(DLAC_TEST_SLOW=str(slow)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


@contextlib.contextmanager
def _scheduler():
    """An in-process Dask scheduler with no workers of its own; its address."""
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None,
                                  processes=True) as cluster:
        yield cluster.scheduler_address


def _wait_workers(address, n: int) -> None:
    with distributed.Client(address, set_as_default=False, timeout="20s") as c:
        c.wait_for_workers(n, timeout=30)


# ------------------------------------------------------------------ Dask workers

def test_dask_worker_without_dlac_fails_at_once(tiny, tmp_path):
    log = tmp_path / "log.jsonl"
    with _procs() as procs, _scheduler() as addr, _deadline(40):
        _worker(procs, tmp_path, addr, "block")
        _wait_workers(addr, 1)
        t = time.monotonic()
        with pytest.raises(DlacError) as e:
            tune_model(tiny, M, log, strategy="random", trials=5, dask=addr, dask_timeout=20)
        took = time.monotonic() - t
    msg = str(e.value)
    assert "no worker of the Dask cluster" in msg and "cannot import dlac" in msg, msg
    assert "No module named 'target_dlac'" in msg and "every worker needs dlac" in msg, msg
    assert "\n" not in msg and took < 15, (took, msg)
    assert tuning_log.load(log) == []


def test_dask_run_skips_the_worker_without_dlac(tiny, tmp_path):
    log, ref = tmp_path / "log.jsonl", tmp_path / "local.jsonl"
    with _procs() as procs, _scheduler() as addr, _deadline(50):
        _worker(procs, tmp_path, addr, "block")
        _worker(procs, tmp_path, addr, None)
        _wait_workers(addr, 2)
        rows = tune_model(tiny, M, log, strategy="random", trials=10, dask=addr, dask_timeout=20)
    assert [r["status"] for r in rows] == ["tuned"] * 4
    tune_model(tiny, M, ref, strategy="random", trials=10, jobs=1)

    def recs(p):
        return sorted(json.dumps({k: v for k, v in r.items() if k != "time"}, sort_keys=True)
                      for r in tuning_log.load(p))
    assert recs(log) == recs(ref)


@pytest.mark.slow
def test_dask_last_worker_killed_mid_run_fails_then_resumes(tiny, tmp_path):
    log = tmp_path / "log.jsonl"
    with _procs() as procs, _scheduler() as addr, _deadline(50):
        w = _worker(procs, tmp_path, addr, "slow", slow=1.5)
        _wait_workers(addr, 1)
        killed = []

        def progress(row, done, total):
            if not killed:                      # the first layer is logged: kill the worker
                w.kill()
                w.wait()
                killed.append(time.monotonic())

        with pytest.raises(DlacError) as e:
            tune_model(tiny, M, log, strategy="random", trials=10, dask=addr, dask_timeout=2,
                       progress=progress)
        after_kill = time.monotonic() - killed[0]
        msg = str(e.value)
        assert "lost every Dask worker that can run dlac" in msg and "rerun to resume" in msg, msg
        assert "1 of 4 layer(s) were tuned and logged" in msg, msg
        assert 2 <= after_kill < 10, after_kill
        assert len(tuning_log.load(log)) == 1
        # a fresh worker: the rerun resumes from the log
        _worker(procs, tmp_path, addr, None)
        rows = tune_model(tiny, M, log, strategy="random", trials=10, dask=addr, dask_timeout=20)
    assert sorted(r["status"] for r in rows) == ["from log"] + ["tuned"] * 3
    assert len(tuning_log.load(log)) == 4


@pytest.mark.slow
def test_dask_one_of_two_workers_killed_mid_run_finishes_on_the_other(tiny, tmp_path):
    log = tmp_path / "log.jsonl"
    with _procs() as procs, _scheduler() as addr, _deadline(50):
        ws = [_worker(procs, tmp_path, addr, "slow", slow=1.0) for _ in range(2)]
        _wait_workers(addr, 2)

        def progress(row, done, total):
            if ws[0].poll() is None:
                ws[0].kill()
                ws[0].wait()

        rows = tune_model(tiny, M, log, strategy="random", trials=10, dask=addr, dask_timeout=5,
                          progress=progress)
    assert ws[0].returncode is not None
    assert [r["status"] for r in rows] == ["tuned"] * 4 and len(tuning_log.load(log)) == 4


@pytest.mark.slow
def test_dask_searches_move_to_a_worker_that_joins_after_the_last_one_died(tiny, tmp_path):
    """The searches pinned to the dead worker are submitted again to a new worker (probed
    when it joins), within the timeout: the run finishes."""
    log = tmp_path / "log.jsonl"
    with _procs() as procs, _scheduler() as addr, _deadline(50):
        w = _worker(procs, tmp_path, addr, "slow", slow=1.0)
        _wait_workers(addr, 1)

        def progress(row, done, total):
            if w.poll() is None:
                w.kill()
                w.wait()
                _worker(procs, tmp_path, addr, None)

        rows = tune_model(tiny, M, log, strategy="random", trials=10, dask=addr, dask_timeout=20,
                          progress=progress)
    assert [r["status"] for r in rows] == ["tuned"] * 4 and len(tuning_log.load(log)) == 4


_DASK_SCRIPT = textwrap.dedent('''
    import sys

    import numpy as np

    from target_dlac.core.errors import DlacError
    from target_dlac.tune.layer_search import LayerJob
    from compiler.tune_dask import dask_results as _dask_results
    from target_dlac.codegen.layer_weights import LayerWeights
    from target_dlac.isa.machine import Machine
    from target_dlac.codegen.schedule import ConvShape

    shape = ConvShape(1, 8, 8, 8, 16, 3, 3, 1, 1, (1, 1, 1, 1), 8, 8)
    rng = np.random.default_rng(0)
    calls = {}
    for i in range(4):
        w = rng.integers(-1, 2, (16, 8, 3, 3)).astype(np.int8)
        calls[i] = (LayerJob(shape, LayerWeights(w, True, False), True), Machine(), "random", 5,
                    None, None, i)
    try:
        for k, out in _dask_results(sys.argv[1], calls, {i: f"layer{i}" for i in calls}, 20.0):
            print("DONE", k, flush=True)
    except DlacError as e:             # as the CLI prints it
        print(f"dlac: error: {e}", file=sys.stderr)
        sys.exit(1)
''')


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dask_killed_scheduler_is_one_line(tmp_path):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    script = tmp_path / "dask_script.py"
    script.write_text(_DASK_SCRIPT)
    with _procs() as procs, _deadline(60):
        sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                  "127.0.0.1", "--port", addr.rsplit(":", 1)[1], "--no-dashboard"],
                                 cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append(sched)
        _worker(procs, tmp_path, addr, "slow", slow=1.5)
        _wait_workers(addr, 1)
        run = subprocess.Popen([sys.executable, str(script), addr], cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(run)
        first = run.stdout.readline()           # the first layer is done: kill the scheduler
        assert first.startswith("DONE"), (first, run.stderr.read() if run.poll() is not None else "")
        sched.kill()
        out, err = run.communicate(timeout=40)
    assert run.returncode == 1, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dlac: error: lost the connection to the Dask scheduler at"), lines[0]
    assert "1 of 4 layer(s) were tuned" in lines[0] and "Traceback" not in err
