"""Hostile workers and hand-edited tuning logs (issue 11, "Workers").

* Dask: a worker that cannot import dlac (a ``--preload`` that makes ``import compiler``
  fail) gives one error at once, or is left out when another worker can run dlac; the
  last worker killed mid-run gives one error after ``dask_timeout`` (the finished layers
  are logged; a rerun resumes); one of two workers killed mid-run: the run finishes on
  the other; a killed scheduler gives exactly one stderr line, no traceback.
* the local pool's workers die with the parent (``kill -9``), by ``PR_SET_PDEATHSIG`` and,
  without it, by the watchdog thread.
* an implausible tuning-log record (0 cycles, below the layer's lower bound, a schedule
  that is not legal for the layer) is an error naming the file, the line and the layer,
  for ``compile --tuning-log`` and for resuming ``tune``.

Every test that could hang is bounded (``signal.alarm`` or a subprocess timeout)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from tests.cli_helpers import FACTORY, cli, error_line, script_env

from compiler.build import build_program
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from compiler.pipeline import compile_model

    path = tmp_path_factory.mktemp("fac") / "fac.py"
    path.write_text(FACTORY)
    return compile_model(f"{path}:make")


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


# ------------------------------------------------------------------ local pool workers

_POOL_SCRIPT = textwrap.dedent('''
    import sys
    import time

    import numpy as np

    from compiler.tune import _pool_results
    from target_dlac.tune.layer_search import LayerJob
    from target_dlac.tune import costmodel
    from target_dlac.codegen.layer_weights import LayerWeights
    from target_dlac.isa.machine import Machine
    from target_dlac.codegen.schedule import ConvShape

    if sys.argv[1] == "watchdog":           # no prctl: the watchdog thread alone
        import ctypes

        def no_libc(*a, **k):
            raise OSError("no prctl in this test")
        ctypes.CDLL = no_libc
    _bound = costmodel.layer_lower_bound

    def slow(*a, **k):                      # a search that outlives the parent by far
        time.sleep(60)
        return _bound(*a, **k)
    costmodel.layer_lower_bound = slow
    shape = ConvShape(1, 8, 8, 8, 16, 3, 3, 1, 1, (1, 1, 1, 1), 8, 8)
    w = np.ones((16, 8, 3, 3), np.int8)
    calls = {i: (LayerJob(shape, LayerWeights(w, True, False), True), Machine(), "random", 3,
                 None, None, i) for i in range(2)}
    for k, out in _pool_results(calls, 2):
        print("DONE", k, flush=True)
''')


def _running(p) -> bool:
    """Not dead (a zombie is dead: it waits only for init to reap it)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p) -> list:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize("how", ["prctl", "watchdog"])
def test_pool_workers_die_with_the_parent(tmp_path, how):
    script = tmp_path / "pool_script.py"
    script.write_text(_POOL_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), how], cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kids: list = []
    try:
        deadline = time.monotonic() + 30
        me = psutil.Process(parent.pid)
        while time.monotonic() < deadline and parent.poll() is None:
            kids = [k for k in me.children() if _cmdline(k) == me.cmdline()]   # forked
            if len(kids) == 2:
                break
            time.sleep(0.05)
        assert len(kids) == 2, (kids, parent.poll())
        time.sleep(1.0)                         # the workers are searching
        assert all(k.is_running() for k in kids)
        parent.kill()
        parent.wait()
        t = time.monotonic()
        while time.monotonic() - t < 5 and any(map(_running, kids)):
            time.sleep(0.01)
        alive = [k.pid for k in kids if _running(k)]
        assert not alive, f"pool workers {alive} outlived the parent by 5 s"
        print(f"\n{how}: workers dead {time.monotonic() - t:.2f} s after the parent's kill -9")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.kill()


# ------------------------------------------------------------------ implausible records

@pytest.fixture
def tuned_log(tiny, tmp_path):
    """A genuine log of the tiny net's 4 layers (lines 1-4: conv1, conv2, conv3, fc)."""
    log = tmp_path / "log.jsonl"
    tune_model(tiny, M, log, strategy="random", trials=10, jobs=1)
    recs = tuning_log.load(log)
    assert [r["layer"] for r in recs] == ["conv1", "conv2", "conv3", "fc"]
    assert build_program(tiny, M, tuning_log=log, reference=False).meta["tuning"]["tuned_layers"] == 4
    return log


def _edit(log, line: int, **changes) -> None:
    lines = log.read_text().splitlines()
    rec = json.loads(lines[line - 1])
    for k, v in changes.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    lines[line - 1] = json.dumps(rec)
    log.write_text("\n".join(lines) + "\n")


def _forge(log, like: int, **changes) -> int:
    """Append a copy of line ``like`` with ``changes``; its line number."""
    rec = json.loads(log.read_text().splitlines()[like - 1])
    rec.update(changes)
    rec = {k: v for k, v in rec.items() if v is not None}
    tuning_log.append(log, rec)
    return len(log.read_text().splitlines())


def test_zero_cycles_record_is_an_error(tiny, tuned_log, tmp_path, tiny_factory):
    _edit(tuned_log, 2, cycles=0)
    where = rf"tuning log '{tuned_log}', line 2 \(layer conv2\): implausible record: it claims 0 cycles"
    with pytest.raises(tuning_log.TuningLogError, match=where):
        build_program(tiny, M, tuning_log=tuned_log, reference=False)
    text = tuned_log.read_text()
    with pytest.raises(tuning_log.TuningLogError, match=where):           # resuming tune
        tune_model(tiny, M, tuned_log, strategy="random", trials=10, jobs=1)
    assert tuned_log.read_text() == text
    out = tmp_path / "out.dlac"
    line = error_line(cli(["compile", tiny_factory, "-o", out, "--tuning-log", tuned_log]), exit_code=1)
    assert "line 2 (layer conv2)" in line and str(tuned_log) in line and "0 cycles" in line, line
    assert not out.exists()


def test_forged_record_below_the_lower_bound_is_an_error(tiny, tuned_log):
    # a record for conv3 claiming 1 cycle (and no lower bound of its own): it would be the
    # best of its key, so its schedule would replace the tuned one
    n = _forge(tuned_log, 3, cycles=1, lower_bound=None)
    assert n == 5
    tuning_log.check_records(tuning_log.load(tuned_log))     # plausible on its own ...
    where = r"line 5 \(layer conv3\): implausible record: it claims 1 cycles, below the layer's lower bound"
    with pytest.raises(tuning_log.TuningLogError, match=where):    # ... not for its layer
        build_program(tiny, M, tuning_log=tuned_log, reference=False)
    with pytest.raises(tuning_log.TuningLogError, match=where):
        tune_model(tiny, M, tuned_log, strategy="random", trials=10, jobs=1)


def test_record_with_an_illegal_schedule_is_an_error(tiny, tuned_log):
    rec = json.loads(tuned_log.read_text().splitlines()[0])
    _forge(tuned_log, 1, cycles=rec["cycles"] - 1, lower_bound=None,
           schedule=dict(rec["schedule"], f_tile=4096, h_tile=4096))
    with pytest.raises(tuning_log.TuningLogError,
                       match=r"line 5 \(layer conv1\): implausible record: its schedule .* is malformed: "
                             r"f_tile=4096 is outside"):
        build_program(tiny, M, tuning_log=tuned_log, reference=False)


@pytest.mark.parametrize("changes,why", [
    ({"trials": 0}, "it claims 0 trials"),
    ({"default_cycles": 3}, r"it claims [\d,]+ cycles, more than its default schedule's 3 "),
    ({"lower_bound": 10 ** 9}, r"it claims [\d,]+ cycles, below its own lower bound of 1,000,000,000"),
    ({"lower_bound": -1}, "its lower_bound -1 is not a non-negative integer"),
])
def test_records_implausible_on_their_own(tuned_log, changes, why):
    _edit(tuned_log, 4, **changes)
    with pytest.raises(tuning_log.TuningLogError, match=rf"line 4 \(layer fc\): implausible record: {why}"):
        from compiler.build import check_tuning_log
        check_tuning_log(tuned_log, "fp32")


def test_plausible_records_still_apply(tiny, tuned_log):
    """A record at or above the layer's bound with a legal schedule applies: the checks
    refuse only what cannot be true."""
    rec = tuning_log.load(tuned_log)[1]
    assert _forge(tuned_log, 2, cycles=max(rec["lower_bound"], rec["cycles"] - 1)) == 5
    prog = build_program(tiny, M, tuning_log=tuned_log, reference=False)
    assert prog.meta["tuning"]["tuned_layers"] == 4
