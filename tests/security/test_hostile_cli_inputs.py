"""The CLI against hostile files and paths (issue 11), 4.: hostile ``--input`` files.

Every bad ``--input`` (dtype, header, truncation, pickles, bad npz members) is one line.
NumPy-only programs (the ``small`` fixture of tests/security/conftest.py).
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest

from tests.cli_helpers import cli, error_line, ok
from tests.container_helpers import X


# ============================================================== 4. hostile --input files

def _npy_with_header(header: bytes, body: bytes = b"", version=(1, 0)) -> bytes:
    lenfmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(header)) + header + body


def _good_npy(arr) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


BAD_NPY = {
    "string dtype": (lambda: _good_npy(np.array(["a", "b"])), "not numeric"),
    "bytes dtype": (lambda: _good_npy(np.array([b"a"])), "not numeric"),
    "complex dtype": (lambda: _good_npy(np.zeros(X.shape, np.complex64)), "not numeric"),
    "structured dtype": (lambda: _good_npy(np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")])), "structured"),
    "object dtype": (lambda: _npy_with_header(b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
                                              .ljust(117) + b"\n", b"\x80\x04junk"), "object"),
    "empty file": (lambda: b"", "is empty"),
    "magic only": (lambda: b"\x93NUMPY", "truncated"),
    "huge header": (lambda: _npy_with_header(b"{" + b" " * 200000 + b"}\n", version=(2, 0)), "header of 200,003"),
    "garbage header": (lambda: _npy_with_header(b"import os; os.system('x')\n"), "malformed"),
    "truncated data": (lambda: _good_npy(X)[:-7], "truncated"),
    "huge shape": (lambda: _npy_with_header(b"{'descr': '<f4', 'fortran_order': False, "
                                            b"'shape': (1, 3, 5, 5), }".ljust(117) + b"\n"), "truncated"),
    "version 9": (lambda: _good_npy(X)[:6] + b"\x09\x00" + _good_npy(X)[8:], "version 9.0"),
    "pickle": (lambda: b"\x80\x04\x95" + b"\x00" * 20, "pickled"),
    "text": (lambda: b"hello world", "not a .npy/.npz"),
}


@pytest.mark.parametrize("kind", sorted(BAD_NPY))
def test_bad_npy_input(small, tmp_path, kind):
    make, fragment = BAD_NPY[kind]
    path = tmp_path / "bad.npy"
    path.write_bytes(make())
    line = error_line(cli(["run", small["bin"], "--input", path]), exit_code=2)
    assert str(path) in line and fragment in line, line


def test_wrong_shape_refused_from_the_header(small, tmp_path):
    """A header claiming a gigantic shape is refused before any allocation."""
    path = tmp_path / "big.npy"
    path.write_bytes(_npy_with_header(b"{'descr': '<f4', 'fortran_order': False, "
                                      b"'shape': (100000, 100000, 100000), }".ljust(117) + b"\n"))
    line = error_line(cli(["run", small["bin"], "--input", path]), exit_code=2)
    assert "'x'" in line and "(100000, 100000, 100000)" in line and "(1, 3, 5, 5)" in line


def test_input_directory_and_fortran_and_bool(small, tmp_path):
    line = error_line(cli(["run", small["bin"], "--input", tmp_path]), exit_code=2)
    assert "directory" in line
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    yf, yc = tmp_path / "f.npz", tmp_path / "c.npz"
    ok(cli(["run", small["bin"], "--input", tmp_path / "f.npy", "--output", yf]))
    ok(cli(["run", small["bin"], "--input", small["x"], "--output", yc]))
    with np.load(yf) as a, np.load(yc) as b:
        np.testing.assert_array_equal(a["y"], b["y"])
    np.savez(tmp_path / "b.npz", x=X > 0)
    ok(cli(["run", small["bin"], "--input", tmp_path / "b.npz"]))


def _zip(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


BAD_NPZ = {
    "pickled member": (lambda: {"x.npy": _npy_with_header(
        b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n", b"\x80\x04.")},
        "object"),
    "raw pickle member": (lambda: {"x.npy": b"\x80\x04\x95junk"}, "pickled"),
    "string member": (lambda: {"x.npy": _good_npy(np.array(["s"] * 75).reshape(1, 3, 5, 5))}, "not numeric"),
    "truncated member": (lambda: {"x.npy": _good_npy(X)[:-5]}, "truncated"),
    "not npy member": (lambda: {"x.txt": b"hello"}, "is not a .npy array"),
    "wrong name": (lambda: {"image.npy": _good_npy(X)}, "'image'"),
    "extra member": (lambda: {"x.npy": _good_npy(X), "z.npy": _good_npy(X)}, "unexpected ['z']"),
    "directory member": (lambda: {"x.npy/": b""}, "is not a .npy array"),
}


@pytest.mark.parametrize("kind", sorted(BAD_NPZ))
def test_bad_npz_input(small, tmp_path, kind):
    make, fragment = BAD_NPZ[kind]
    path = _zip(tmp_path / "bad.npz", make())
    line = error_line(cli(["run", small["bin"], "--input", path]), exit_code=2)
    assert str(path) in line and fragment in line, line
    if kind not in ("wrong name", "extra member"):
        assert "member" in line


def test_npz_crc_error_and_truncated_zip(small, tmp_path):
    data = bytearray(_zip(tmp_path / "good.npz", {"x.npy": _good_npy(X)}).read_bytes())
    i = data.index(X.tobytes()[:16])
    data[i] ^= 0xFF                         # damage the member's data: CRC mismatch on read
    (tmp_path / "crc.npz").write_bytes(data)
    line = error_line(cli(["run", small["bin"], "--input", tmp_path / "crc.npz"]), exit_code=2)
    assert "crc.npz" in line and "member 'x.npy'" in line and "CRC" in line
    (tmp_path / "cut.npz").write_bytes(bytes(data[:len(data) // 2]))
    line = error_line(cli(["run", small["bin"], "--input", tmp_path / "cut.npz"]), exit_code=2)
    assert "cut.npz" in line


def test_npz_lying_member_size(small, tmp_path):
    """A deflated member whose header claims a gigantic array: refused as truncated."""
    hdr = _npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 5, 5), }"
                           .ljust(117) + b"\n")
    path = _zip(tmp_path / "lie.npz", {"x.npy": hdr}, zipfile.ZIP_DEFLATED)
    line = error_line(cli(["run", small["bin"], "--input", path]), exit_code=2)
    assert "member 'x.npy'" in line and "truncated" in line


def test_calib_bad_member(tiny_factory, tmp_path):
    path = _zip(tmp_path / "calib.npz", {"x.npy": b"\x80\x04\x95junk"})
    line = error_line(cli(["compile", tiny_factory, "-o", tmp_path / "m.dlac", "--activations", "int8",
                           "--calib", path]))
    assert "--calib" in line and "calib.npz" in line and "member 'x.npy'" in line
