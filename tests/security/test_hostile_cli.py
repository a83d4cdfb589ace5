"""The CLI against hostile files and paths (issue 11).

1. ``run --check`` cannot pass on NaN/Inf the other side does not have; reports are
   strict JSON.
3. Output names from a binary's tensor table: only safe .npz member names are written
   (no zip-slip, no control characters, no lone surrogates; ``file`` / ``allow_pickle``
   are ordinary names); names printed on the terminal are escaped.
5. JSON numbers over 4,300 digits in a binary are a BinaryFormatError naming the section.
6. ``compile -o`` verifies the binary reads back before it gets its name.

(2., output paths: test_hostile_cli_outputs.py; 4., hostile ``--input`` files:
test_hostile_cli_inputs.py.)  Most tests run NumPy-only programs
(``tests/container_helpers.make_program``); one module fixture compiles the tiny CLI
factory for the tests that need TVM's reference.
"""

from __future__ import annotations

import math
import os
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
from tests.security.cli_hostile_helpers import _numpy_binary, _strict_loads


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
