"""``dlac sweep`` killed mid-run (SIGKILL of the process) and rerun gives the file of an
uninterrupted sweep byte for byte; the same sweep on a Dask LocalCluster gives the same file
as the local run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli_helpers import FACTORY

pytestmark = pytest.mark.slow

PARAMS = ["--param", "pe_rows=2,4,8,16", "--param", "pe_cols=4,8,16,32", "--param", "wgt_buf_kib=16,64,256",
          "--param", "dram_bytes_per_cycle=16,64"]


def _cmd(model, out, *extra):
    return [sys.executable, "-m", "compiler.cli", "sweep", model, *PARAMS, "-o", str(out), "--jobs", "1", *extra]


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sweep_killed_and_rerun_equals_uninterrupted(tmp_path):
    (tmp_path / "factory.py").write_text(FACTORY)
    model = f"{tmp_path / 'factory.py'}:make"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    subprocess.run(_cmd(model, full), check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(_cmd(model, part), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _lines(part) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 < _lines(part) < _lines(full), "the kill should land mid-sweep"
    subprocess.run(_cmd(model, part), check=True, env=env, capture_output=True, timeout=600)
    assert part.read_bytes() == full.read_bytes()


def test_dask_local_cluster_equals_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    from click.testing import CliRunner

    from compiler.cli_sweep import sweep_cmd

    (tmp_path / "factory.py").write_text(FACTORY)
    model = f"{tmp_path / 'factory.py'}:make"
    local, remote = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    r = CliRunner().invoke(sweep_cmd, [model, *PARAMS, "-o", str(local), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None, processes=True) as cluster:
        r = CliRunner().invoke(sweep_cmd, [model, *PARAMS, "-o", str(remote), "--dask", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    assert remote.read_bytes() == local.read_bytes()
