"""Atomic outputs: an interrupted ``dlac compile`` never leaves a partial output file.

The interruption is placed deterministically in the middle of writing the binary (the
data is written, ``fsync`` is about to run): Ctrl-C (KeyboardInterrupt) in-process, and
``kill -9`` of a subprocess.  Afterwards the output path holds either nothing or the
previous complete file, byte for byte.  Ctrl-C also removes the temporary file; after
``kill -9`` only a hidden ``.tmp-*`` file can remain (nothing runs to remove it), never
a file under the output's name.  (The tuning log is append-only instead: a torn last
line is skipped on load, see ``test_tuning_log.py``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from tests.cli_helpers import cli, script_env

from target_dlac.binary.container import read_program


def _interrupt_in_fsync(monkeypatch):
    import target_dlac.core.atomic

    def boom(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(target_dlac.core.atomic.os, "fsync", boom)


@pytest.mark.parametrize("existing", [False, True])
def test_ctrl_c_while_writing_leaves_no_partial_binary(tiny_factory, tmp_path, monkeypatch, existing):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.dlac"
    old = b""
    if existing:
        assert cli(["compile", tiny_factory, "-o", out]).exit_code == 0
        old = out.read_bytes()
        read_program(out)
    _interrupt_in_fsync(monkeypatch)
    res = cli(["compile", tiny_factory, "-o", out, "--quant", "int8"])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert sorted(os.listdir(out_dir)) == (["m.dlac"] if existing else [])
    if existing:
        assert out.read_bytes() == old


_KILLER = textwrap.dedent('''
    import os, signal, sys
    import target_dlac.core.atomic
    from compiler.cli import main

    def die(fd):
        os.kill(os.getpid(), signal.SIGKILL)
    target_dlac.core.atomic.os.fsync = die
    sys.argv = ["dlac", "compile", sys.argv[1], "-o", sys.argv[2]]
    main()
''')


@pytest.mark.slow
def test_kill_9_while_writing_leaves_no_partial_binary(tiny_factory, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.dlac"
    env = script_env()
    proc = subprocess.run([sys.executable, str(script), tiny_factory, str(out)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists()
    left = os.listdir(out_dir)
    assert all(n.startswith(".tmp-") for n in left), left
