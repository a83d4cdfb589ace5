"""Hostile model files (issue 11, "Exit codes"): a factory that raises SystemExit (or any
BaseException but KeyboardInterrupt) is an error, not exit 0.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.cli_helpers import cli, error_line, script_env  # noqa: E402

from target_dlac.core.errors import ModelLoadError  # noqa: E402
from compiler.loader import load_model  # noqa: E402


def _dlac(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], cwd=cwd,
                          env=script_env(), capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------- factory exits

FACTORY = '''
import sys, torch

class Boom(BaseException):
    pass

def exits():
    raise SystemExit(0)

def exits_quietly():
    sys.exit()

def base_exception():
    raise Boom("not an Exception")

def interrupted():
    raise KeyboardInterrupt
'''


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "fac.py"
    path.write_text(FACTORY)
    return path


@pytest.mark.parametrize("name, fragment", [
    ("exits", "'exits()' raised SystemExit(0)"),
    ("exits_quietly", "'exits_quietly()' raised SystemExit(None)"),
    ("base_exception", "'base_exception()' raised Boom: not an Exception"),
])
def test_factory_that_exits_is_an_error(factories, tmp_path, name, fragment):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factories}:{name}")
    assert fragment in str(ei.value) and str(factories) in str(ei.value)
    out = tmp_path / "o.dlac"
    line = error_line(cli(["compile", f"{factories}:{name}", "-o", out]), exit_code=1, stdout_empty=False)
    assert fragment in line
    assert not out.exists()


def test_factory_file_that_exits_on_import_is_an_error(tmp_path):
    path = tmp_path / "quits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ModelLoadError, match=r"importing the factory file failed: SystemExit\(0\)"):
        load_model(f"{path}:make")


def test_factory_keyboard_interrupt_stays_an_interrupt(factories):
    with pytest.raises(KeyboardInterrupt):
        load_model(f"{factories}:interrupted")


@pytest.mark.slow
def test_subprocess_exit_code_of_an_exiting_factory(factories, tmp_path):
    r = _dlac("compile", f"{factories}:exits", "-o", "o.dlac", cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("  stage ")]
    assert len(lines) == 1 and lines[0].startswith("dlac: error:") and "SystemExit(0)" in lines[0]
    assert not (tmp_path / "o.dlac").exists()
