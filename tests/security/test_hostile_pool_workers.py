"""Hostile workers (issue 11, "Workers"): the local pool's workers die with the parent
(``kill -9``), by ``PR_SET_PDEATHSIG`` and, without it, by the watchdog thread.

Every test that could hang is bounded (a subprocess timeout).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from tests.cli_helpers import script_env


distributed = pytest.importorskip("distributed")


def _env(**extra) -> dict:
    return dict(script_env(), **extra)


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
