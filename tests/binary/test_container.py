"""The ``.dlac`` container: exact round trip, the documented layout, reading errors
that are not format errors, and atomic writing.  Damage and static validation at read
time: test_container_corruption.py.  NumPy only."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from target_dlac.core.atomic import OutputError
from target_dlac.core.errors import BinaryFormatError, ConfigError
from target_dlac.binary.container import (
    VERSION,
    from_bytes,
    read_program,
    to_bytes,
    write_program,
)
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import Insn
from tests.container_helpers import TAGS, X, make_program, table
from tests.isa_programs import fields


@pytest.fixture(scope="module")
def prog():
    return make_program()


@pytest.fixture(scope="module")
def blob(prog):
    return to_bytes(prog)


# ---- round trip --------------------------------------------------------------------------------

def test_roundtrip_file(tmp_path, prog):
    path = tmp_path / "model.dlac"
    write_program(path, prog)
    back = read_program(path)
    assert back.machine == prog.machine and back.machine.hash() == prog.machine.hash()
    assert len(back.insns) == len(prog.insns)
    for a, b in zip(back.insns, prog.insns):
        assert a == b, (a, b)
    assert back.constants == prog.constants
    assert back.tensors == prog.tensors
    assert back.meta == prog.meta
    assert back.host is None and back.reference is None
    assert to_bytes(back) == path.read_bytes()                  # deterministic, canonical
    out_a, rep_a = run(prog, {"x": X})
    out_b, rep_b = run(back, {"x": X})
    assert out_a.keys() == out_b.keys() == {"y"}
    np.testing.assert_array_equal(out_a["y"], out_b["y"])
    assert rep_a.cycles == rep_b.cycles
    assert np.abs(out_a["y"]).sum() > 0


def test_roundtrip_optional_sections():
    p = make_program()
    p.host, p.reference = zlib.compress(b'{"host": 1}'), zlib.compress(b'{"ref": 2}')
    back = from_bytes(to_bytes(p))
    assert (back.host, back.reference) == (p.host, p.reference)


def test_layout(blob):
    """Magic, version, header size, 16-byte aligned sections in the documented order."""
    assert blob[:8] == b"DLAC\x00BIN"
    assert struct.unpack_from("<HHII", blob, 8) == (*VERSION, 64 + 32 * 5, 5)
    t = table(blob)
    assert list(t) == list(TAGS)
    assert all(off % 16 == 0 for off, _ in t.values())
    assert t["INSTS"][1] == 32 * 8

# ---- reading errors that are not format errors ---------------------------------------------------------

def test_read_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_program(tmp_path / "nope.dlac")
    with pytest.raises(ConfigError, match="directory"):
        read_program(tmp_path)


# ---- atomic writing ---------------------------------------------------------------------------------------

def test_write_leaves_no_temp_file(tmp_path, prog):
    path = tmp_path / "out" / "m.dlac"
    write_program(path, prog)
    write_program(path, prog)                       # overwrite
    assert os.listdir(path.parent) == ["m.dlac"]
    assert path.read_bytes() == to_bytes(prog)


def _old_file(tmp_path):
    path = tmp_path / "m.dlac"
    old = make_program(compiler="old")
    write_program(path, old)
    return path, path.read_bytes()


def test_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)

    def boom(src, dst):
        raise OSError("rename failed")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="cannot write .*rename failed"):      # one line, a DlacError
        write_program(path, make_program(compiler="new"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.dlac"]
    assert read_program(path).meta["compiler"] == "old"


def test_failed_write_midway_keeps_old_file(tmp_path, monkeypatch):
    path, before = _old_file(tmp_path)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError("disk full")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(OutputError, match="disk full"):
        write_program(path, make_program(compiler="new"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.dlac"]


def test_failed_fsync_new_path_leaves_nothing(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError("fsync failed")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OutputError, match="fsync failed"):
        write_program(tmp_path / "new.dlac", make_program())
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_unencodable_program_keeps_old_file(tmp_path):
    path, before = _old_file(tmp_path)
    bad = make_program(extra_insns=[Insn("ALU", fields("ALU", n=1 << 24))])
    with pytest.raises(BinaryFormatError, match=r"pc 7: ALU\.n="):
        write_program(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.dlac"]
