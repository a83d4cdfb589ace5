"""The CLI against hostile files and paths (issue 11).

1. ``run --check`` cannot pass on NaN/Inf the other side does not have; reports are
   strict JSON.
2. Output paths that are an input, a directory, a symlink, a FIFO, a device, in a missing
   or read-only directory are refused before any work, in one line.
3. Output names from a binary's tensor table: only safe .npz member names are written
   (no zip-slip, no control characters, no lone surrogates; ``file`` / ``allow_pickle``
   are ordinary names); names printed on the terminal are escaped.
4. Every bad ``--input`` (dtype, header, truncation, pickles, bad npz members) is one line.
5. JSON numbers over 4,300 digits in a binary are a BinaryFormatError naming the section.
6. ``compile -o`` verifies the binary reads back before it gets its name.

Most tests run NumPy-only programs (``tests/container_helpers.make_program``); one module
fixture compiles the tiny CLI factory for the tests that need TVM's reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import struct
import zipfile

import numpy as np
import pytest

from compiler.cli_args import compare_output, npz_name_problem, printable, strict_json
from target_dlac.core.errors import BinaryFormatError
from target_dlac.binary.container import _json, from_bytes, pack_sections, read_program, write_program
from target_dlac.isa.encoding import encode
from target_dlac.sim.interpreter import run
from tests.cli_helpers import FACTORY, cli, error_line, ok
from tests.container_helpers import MACHINE, X, make_program


def _strict_loads(text: str):
    """json.loads that refuses the NaN / Infinity / -Infinity tokens."""
    def bad(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=bad)


def _numpy_binary(path, out_name="y", layer_name="conv1", **meta):
    """The container tests' ternary-conv program, with its output and layer renamed."""
    p = make_program(**meta)
    p.tensors[1] = dataclasses.replace(p.tensors[1], name=out_name)
    p.meta["layers"][0]["name"] = layer_name
    write_program(path, p)
    return path


@pytest.fixture
def small(tmp_path):
    """A NumPy-only binary and its input."""
    b = _numpy_binary(tmp_path / "p.dlac")
    np.save(tmp_path / "x.npy", X)
    return {"bin": b, "x": tmp_path / "x.npy", "dir": tmp_path}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The CLI factory compiled by `dlac compile` (with the REF section for --check)."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "factory.py").write_text(FACTORY)
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    ok(cli(["compile", f"{d / 'factory.py'}:make", "-o", d / "m.dlac"]))
    return {"dir": d, "factory": f"{d / 'factory.py'}:make", "x": x, "bin": d / "m.dlac"}


# ============================================================== 1. checks and strict JSON

def test_compare_output_nonfinite_rules():
    ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    c = compare_output(np.array([1.0, np.nan, 3.0, 4.0], np.float32), ref)
    assert c["nonfinite_mismatches"] == 1 and c["first_mismatch"] == [1]
    assert c["max_abs_err"] == 0.0          # finite errors only where both are finite
    assert compare_output(np.array([np.nan, 2.0]), np.array([np.nan, 2.5]))["nonfinite_mismatches"] == 0
    c = compare_output(np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, 1.5]))
    assert c["nonfinite_mismatches"] == 0 and c["max_abs_err"] == 0.5
    for o, r in ((np.inf, -np.inf), (np.nan, np.inf), (1.0, np.nan), (1.0, np.inf)):
        assert compare_output(np.array([o]), np.array([r]))["nonfinite_mismatches"] == 1, (o, r)
    all_nan = compare_output(np.full((2, 3), np.nan, np.float32), np.ones((2, 3)))
    assert all_nan["nonfinite_mismatches"] == 6 and all_nan["first_mismatch"] == [0, 0]
    assert compare_output(np.zeros((2, 3)), np.zeros((3, 2))) == {"shape_mismatch": ((2, 3), (3, 2))}
    assert compare_output(np.zeros(0), np.zeros(0))["nonfinite_mismatches"] == 0


def test_check_fails_on_nan_input(compiled, tmp_path):
    """One NaN in the input: every interpreter output is NaN, TVM's reference is not."""
    x = compiled["x"].copy()
    x[0, 0, 3, 3] = np.nan
    np.save(tmp_path / "xnan.npy", x)
    rj = tmp_path / "r.json"
    res = cli(["run", compiled["bin"], "--input", tmp_path / "xnan.npy", "--check", "--report-json", rj])
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert "NaN/Inf" in line and "output_0 index (0, " in line, line
    rep = _strict_loads(rj.read_text())
    assert rep["check"]["passed"] is False and rep["check"]["nonfinite_mismatches"] > 0
    assert rep["check"]["outputs"][0]["first_mismatch"][0] == 0
    # the same binary and a finite input pass, with a strict report
    res = ok(cli(["run", compiled["bin"], "--input", compiled["dir"] / "x.npy", "--check",
                  "--report-json", rj]))
    assert _strict_loads(rj.read_text())["check"]["nonfinite_mismatches"] == 0


@pytest.mark.parametrize("tol", ["nan", "inf", "-1"])
def test_tolerance_must_be_finite(small, tol):
    line = error_line(cli(["run", small["bin"], "--input", small["x"], "--check", "--tolerance", tol]),
                      exit_code=2)
    assert "--tolerance" in line


def test_strict_json_helper():
    text = strict_json({"a": [float("nan"), float("inf"), -math.inf, 1.5], "b": (2, None)})
    assert _strict_loads(text) == {"a": ["nan", "inf", "-inf", 1.5], "b": [2, None]}


def test_inspect_json_is_strict(tmp_path):
    """A binary's META may hold NaN / Infinity (Python's json reads them): inspect --json
    must not write them back as tokens."""
    p = make_program(quant_config={"x": float("inf"), "y": float("nan")}, source_hash=float("-inf"))
    write_program(tmp_path / "nan.dlac", p)
    text = ok(cli(["inspect", tmp_path / "nan.dlac", "--json"])).stdout
    info = _strict_loads(text)
    assert info["quant_config"] == {"x": "inf", "y": "nan"} and info["source_hash"] == "-inf"


def test_run_report_is_strict_json(small, tmp_path):
    rj = tmp_path / "r.json"
    ok(cli(["run", small["bin"], "--input", small["x"], "--report-json", rj]))
    _strict_loads(rj.read_text())


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


# ============================================================== 3. names in .npz and on the terminal

@pytest.mark.parametrize("name", ["file", "allow_pickle", "args", "kwds", "fix_imports", "x.npy", "ü名"])
def test_npz_names_that_are_savez_keywords(tmp_path, name):
    """Names that were np.savez's own parameters are written as ordinary members."""
    b = _numpy_binary(tmp_path / "p.dlac", out_name=name)
    np.save(tmp_path / "x.npy", X)
    ok(cli(["run", b, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz"]))
    want = run(read_program(b), {"x": X})[0][name]
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        assert z.files == [name]
        np.testing.assert_array_equal(z[name], want)
    with zipfile.ZipFile(tmp_path / "y.npz") as zf:
        assert zf.namelist() == [name + ".npy"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", ".", "a\\b", "", "a\x1b[31mb", "a\nb",
                                  "nul\x00", "\ud800", "bidi\u202e", "x" * 300])
def test_npz_names_refused(tmp_path, name):
    b = _numpy_binary(tmp_path / "p.dlac", out_name=name)
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "y.npz"
    line = error_line(cli(["run", b, "--input", tmp_path / "x.npy", "--output", out]), exit_code=2)
    assert "--output" in line and "cannot name an .npz member" in line
    assert line.isprintable() and "\x1b" not in line
    assert not out.exists() and not (tmp_path.parent / "evil.npy").exists()
    assert npz_name_problem(name)


def test_names_printed_escaped(tmp_path):
    evil = "y\x1b[2J\nFAKE LINE\r"
    b = _numpy_binary(tmp_path / "p.dlac", out_name=evil, layer_name="conv\x1b]0;pwned\x07")
    np.save(tmp_path / "x.npy", X)
    res = ok(cli(["run", b, "--input", tmp_path / "x.npy"]))
    assert "\x1b" not in res.stdout and "\r" not in res.stdout and "\x07" not in res.stdout
    assert "y\\x1b[2J\\x0aFAKE LINE\\x0d: shape (1, 4, 5, 5) float32" in res.stdout
    assert not any(ln.startswith("FAKE LINE") for ln in res.stdout.splitlines())
    assert "conv\\x1b]0;pwned\\x07" in res.stdout
    for args in (["inspect", b], ["inspect", b, "--summary"]):
        out = ok(cli(args)).stdout
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
        assert "y\\x1b[2J\\x0aFAKE LINE\\x0d" in out and "conv\\x1b]0;pwned\\x07" in out
    info = _strict_loads(ok(cli(["inspect", b, "--json"])).stdout)
    assert [t["name"] for t in info["tensors"]] == ["x", evil]


def test_error_messages_escaped(small, tmp_path):
    """A member name from a hostile .npz quoted in the error line."""
    z = tmp_path / "in.npz"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x\x1b[31m\n.npy", b"junk")
    line = error_line(cli(["run", small["bin"], "--input", z]), exit_code=2)
    assert "\x1b" not in line and "x\\x1b[31m\\n" in line


def test_printable_helper():
    assert printable("plain ü 名 a\\b") == "plain ü 名 a\\b"
    assert printable("a\x1b\n\t\x7f\x85\ud800\u202e\U000e0001") == \
        "a\\x1b\\x0a\\x09\\x7f\\x85\\ud800\\u202e\\U000e0001"


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


# ============================================================== 5. long JSON numbers in a binary

@pytest.mark.parametrize("tag", ["MACHINE", "TENSORS", "META"])
def test_json_number_over_4300_digits(tmp_path, tag):
    p = make_program()
    sections = {"MACHINE": _json(MACHINE.to_dict()), "INSTS": encode(p.insns), "CONSTS": bytes(p.constants),
                "TENSORS": _json([t.to_dict() for t in p.tensors]), "META": _json(p.meta)}
    from_bytes(pack_sections(sections, bytes.fromhex(MACHINE.hash())))      # reads as it is
    sections[tag] = b'{"n": ' + b"7" * 5000 + b"}"
    data = pack_sections(sections, bytes.fromhex(MACHINE.hash()))
    with pytest.raises(BinaryFormatError) as ei:
        from_bytes(data)
    assert ei.value.section == tag and "too long" in str(ei.value)
    (tmp_path / "big.dlac").write_bytes(data)
    line = error_line(cli(["inspect", tmp_path / "big.dlac"]), exit_code=1)
    assert f"section {tag}, byte offset" in line


# ============================================================== 6. compile verifies its binary

def test_compile_verifies_binary_before_naming_it(compiled, tmp_path, monkeypatch):
    import target_dlac.binary.container as container

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.dlac"
    out.write_bytes(b"previous")
    real = container.to_bytes

    def broken(p):
        data = bytearray(real(p))
        data[-1] ^= 0xFF                    # the last section's CRC no longer matches
        return bytes(data)
    monkeypatch.setattr(container, "to_bytes", broken)
    res = cli(["compile", compiled["factory"], "-o", out, "--report-json", out_dir / "r.json"])
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert "does not read back" in line and "CRC32" in line and "nothing was written" in line
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(out_dir)) == ["m.dlac"]


def test_names_cannot_forge_lines_of_tables():
    """A name with a newline or an escape code stays on its line in the tables built
    outside the CLI too (inspect listing, compile and tune tables)."""
    from target_dlac.core.text import printable

    assert printable("a\nb\x1b[31m") == "a\\x0ab\\x1b[31m"
    assert printable("résumé ok") == "résumé ok"
    from target_dlac.binary.inspect import listing
    from tests.container_helpers import make_program

    p = make_program()
    p.meta["layers"][0]["name"] = "conv1\n     7  HALT\x1b[2J"
    header = listing(p)[0][0]
    assert "\n" not in header and "\x1b" not in header and "\\x0a" in header
