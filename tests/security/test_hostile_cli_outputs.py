"""The CLI against hostile files and paths (issue 11), 2.: output paths.

Output paths that are an input, a directory, a symlink, a FIFO, a device, in a missing or
read-only directory are refused before any work, in one line.  NumPy-only programs
(the ``small`` fixture of tests/security/conftest.py).
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from tests.cli_helpers import cli, error_line


# ============================================================== 2. output paths

def _unchanged(path, before: bytes):
    assert path.read_bytes() == before


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
@pytest.mark.parametrize("which", ["bin", "x"])
def test_run_output_is_an_input(small, flag, which):
    target = small[which]
    before = target.read_bytes()
    line = error_line(cli(["run", small["bin"], "--input", small["x"], flag, target]), exit_code=2)
    assert flag in line and "same file" in line and str(target) in line
    _unchanged(target, before)


def test_run_output_is_a_hard_link_or_symlink_to_an_input(small):
    x = small["x"]
    before = x.read_bytes()
    hard = small["dir"] / "hard.npz"
    os.link(x, hard)
    line = error_line(cli(["run", small["bin"], "--input", x, "--output", hard]), exit_code=2)
    assert "same file" in line
    link = small["dir"] / "link.json"
    link.symlink_to(x)
    line = error_line(cli(["run", small["bin"], "--input", x, "--report-json", link]), exit_code=2)
    assert "symbolic link" in line
    # an input given through a symlink, the output by its real path
    xl = small["dir"] / "xl.npy"
    xl.symlink_to(x)
    line = error_line(cli(["run", small["bin"], "--input", xl, "--output", x]), exit_code=2)
    assert "same file" in line
    _unchanged(x, before)


def test_run_two_outputs_same_file(small):
    out = small["dir"] / "o.npz"
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--output", out,
                           "--report-json", out]), exit_code=2)
    assert "same file" in line and not out.exists()


def test_run_output_is_directory_fifo_device(small):
    d = small["dir"] / "adir"
    d.mkdir()
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--output", d]), exit_code=2)
    assert "is a directory" in line
    fifo = small["dir"] / "fifo"
    os.mkfifo(fifo)
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--report-json", fifo]), exit_code=2)
    assert "FIFO" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--output", os.devnull]), exit_code=2)
    assert "device" in line


def test_output_in_missing_directory(small):
    out = small["dir"] / "nope" / "y.npz"
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--output", out]), exit_code=2)
    assert "does not exist" in line and not out.parent.exists()


def _read_only_dir(tmp_path):
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for cand in ("/proc/sys", "/sys"):          # root ignores mode bits: a read-only mount
        if os.path.isdir(cand) and not os.access(cand, os.W_OK):
            return cand
    pytest.skip("no read-only directory available")


def test_output_in_read_only_directory(small, tmp_path):
    d = _read_only_dir(tmp_path)
    out = os.path.join(d, "y.npz")
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--output", out]), exit_code=2)
    assert "not writable" in line and not os.path.exists(out)


def test_write_failure_is_one_line_and_keeps_the_old_file(small, monkeypatch):
    """A write the system refuses at write time (here: mkstemp, as on a read-only file
    system) is one line naming the output; the previous file is untouched."""
    import errno
    import tempfile

    out = small["dir"] / "r.json"
    out.write_text("old")

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--report-json", out]),
                      exit_code=1, stdout_empty=False)
    assert "cannot write" in line and "r.json" in line and "Read-only" in line
    assert out.read_text() == "old"


def test_atomic_write_failed_verify_keeps_old_file(tmp_path):
    from target_dlac.core.atomic import atomic_write_bytes

    out = tmp_path / "f.bin"
    out.write_bytes(b"old")

    def verify(tmp):
        assert open(tmp, "rb").read() == b"new"
        raise RuntimeError("bad")
    with pytest.raises(RuntimeError):
        atomic_write_bytes(out, b"new", verify=verify)
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    atomic_write_bytes(out, b"new", verify=lambda tmp: None)
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_to_directory_refused(tmp_path):
    from target_dlac.core.atomic import OutputError, atomic_write_bytes

    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_bytes(tmp_path / "d", b"x")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("flag", ["-o", "--report-json"])
def test_compile_output_is_the_model_file(tiny_factory, flag):
    path = tiny_factory.rpartition(":")[0]
    before = open(path, "rb").read()
    line = error_line(cli(["compile", tiny_factory, flag, path]), exit_code=2)
    assert flag in line and "same file" in line and "MODEL" in line
    assert open(path, "rb").read() == before


def test_compile_output_is_calib_or_tuning_log(tiny_factory, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((2, 1, 16, 16), np.float32))
    before = calib.read_bytes()
    line = error_line(cli(["compile", tiny_factory, "-o", tmp_path / "m.dlac", "--activations", "int8",
                           "--calib", calib, "--report-json", calib]), exit_code=2)
    assert "--calib" in line and "same file" in line
    _unchanged(calib, before)
    log = tmp_path / "log.jsonl"
    log.write_text("")
    line = error_line(cli(["compile", tiny_factory, "-o", log, "--tuning-log", log]), exit_code=2)
    assert "--tuning-log" in line and "same file" in line
    assert log.read_text() == ""


def test_compile_output_is_a_directory(tiny_factory, tmp_path):
    line = error_line(cli(["compile", tiny_factory, "-o", tmp_path]), exit_code=2)
    assert "is a directory" in line
