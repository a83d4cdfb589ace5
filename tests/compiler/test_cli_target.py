"""The CLI contract of the dLAC target: `dlac compile -o`, `dlac run`, `dlac inspect`.

In-process through click's CliRunner; in a fresh interpreter (subprocess) where the
test is about what gets imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from target_dlac.binary.container import read_program
from target_dlac.sim.interpreter import run
from target_dlac.isa.machine import Machine
from tests.cli_helpers import FACTORY, cli, error_line, ok

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5

LAYER_KEYS = ("name", "op", "precision", "dense_macs", "issued_macs", "cycles", "lower_bound_cycles",
              "zero_skip_speedup", "load_balance")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A factory module, an input, and the binary `dlac compile` writes from them."""
    d = tmp_path_factory.mktemp("cli")
    (d / "factory.py").write_text(FACTORY)
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    out = d / "out.dlac"
    res = ok(cli(["compile", f"{d / 'factory.py'}:make", "-o", out]))
    assert f"wrote {out}" in res.stdout and "host ops: none" in res.stdout
    return {"dir": d, "factory": f"{d / 'factory.py'}:make", "x": x, "bin": out}


# ------------------------------------------------------------------ compile + run --check

def test_compile_run_check_report_and_outputs(work, tmp_path):
    rj, yz = tmp_path / "r.json", tmp_path / "y.npz"
    res = ok(cli(["run", work["bin"], "--input", work["dir"] / "x.npy", "--check",
                  "--report-json", rj, "--output", yz]))
    assert "check output_0 vs TVM CPU reference" in res.stdout
    rep = json.loads(rj.read_text())
    assert set(rep["check"]) >= {"reference", "max_abs_err", "max_rel_err"}
    assert rep["check"]["reference"] == "tvm-llvm" and rep["check"]["passed"] is True
    assert 0 <= rep["check"]["max_rel_err"] <= TOL
    assert 0 <= rep["check"]["max_abs_err"] <= rep["check"]["max_rel_err"] * 1e3
    c = rep["cycles"]
    assert set(c) >= {"total", "compute", "load_stall", "store_stall"}
    assert c["total"] > 0 and c["compute"] + c["load_stall"] + c["store_stall"] == c["total"]
    assert rep["layers"] and sum(l["cycles"] for l in rep["layers"]) == c["total"]
    for layer in rep["layers"]:
        for key in LAYER_KEYS:
            assert key in layer, (key, layer)
        assert layer["cycles"] >= layer["lower_bound_cycles"]
    assert [l["name"] for l in rep["layers"]] == ["conv1", "max_pool2d:lv_1", "conv2", "conv3",
                                                   "global_avg_pool:lv_2", "fc"]
    assert {l["name"]: l["precision"] for l in rep["layers"] if l["op"] == "conv2d"} == \
        {"conv1": "fp32", "conv2": "ternary", "conv3": "ternary"}
    assert all(l["zero_skip_speedup"] > 1 for l in rep["layers"] if l["precision"] == "ternary")
    assert rep["machine"]["hash"] == Machine().hash()
    # y.npz holds what the interpreter computes on this binary
    prog = read_program(work["bin"])
    want, want_rep = run(prog, {"x": work["x"]})
    with np.load(yz) as z:
        assert z.files == ["output_0"]
        np.testing.assert_array_equal(z["output_0"], want["output_0"])
    assert want_rep.cycles == c


def test_run_check_tolerance_exceeded(work, tmp_path):
    rj = tmp_path / "r.json"
    res = cli(["run", work["bin"], "--input", work["dir"] / "x.npy", "--check", "--tolerance", "0",
               "--report-json", rj])
    if res.exit_code == 0:          # the interpreter happened to be bit-exact: nothing to refuse
        assert json.loads(rj.read_text())["check"]["max_rel_err"] == 0
        return
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert "exceeds --tolerance" in line
    assert json.loads(rj.read_text())["check"]["passed"] is False


def test_run_npz_input_keyed_by_name(work, tmp_path):
    np.savez(tmp_path / "x.npz", x=work["x"])
    ok(cli(["run", work["bin"], "--input", tmp_path / "x.npz", "--output", tmp_path / "a.npz"]))
    ok(cli(["run", work["bin"], "--input", work["dir"] / "x.npy", "--output", tmp_path / "b.npz"]))
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["output_0"], b["output_0"])


def test_run_npz_wrong_name(work, tmp_path):
    np.savez(tmp_path / "x.npz", image=work["x"])
    line = error_line(cli(["run", work["bin"], "--input", tmp_path / "x.npz"]))
    assert "'x'" in line and "'image'" in line


def test_run_wrong_shape_npy(work, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 1, 8, 8), np.float32))
    out = tmp_path / "y.npz"
    line = error_line(cli(["run", work["bin"], "--input", tmp_path / "bad.npy", "--output", out]))
    assert "'x'" in line and "(1, 1, 8, 8)" in line and "(1, 1, 16, 16)" in line
    assert not out.exists()


def test_run_missing_input_file(work, tmp_path):
    line = error_line(cli(["run", work["bin"], "--input", tmp_path / "absent.npy"]))
    assert "absent.npy" in line and "not found" in line


# ------------------------------------------------------------------ inspect

def test_inspect_text_and_json(work):
    res = ok(cli(["inspect", work["bin"]]))
    lines = res.stdout.splitlines()
    from target_dlac.binary.container import VERSION
    assert lines[0].startswith("dlac ") and f"binary, format {VERSION[0]}.{VERSION[1]}" in lines[0]
    assert any(ln.startswith("instructions:") for ln in lines)
    assert any(ln.startswith("layers (6):") for ln in lines)
    listing = [ln.split() for ln in lines if ln.strip() and ln.split()[0].isdigit()]
    ops = [parts[1] for parts in listing]
    assert "TACC" in ops and "MAC" in ops and ops[-1] == "HALT" and ops.count("HALT") == 1
    assert [int(parts[0]) for parts in listing] == list(range(len(listing)))
    assert "; --- conv2 (conv2d, ternary)" in res.stdout

    info = json.loads(ok(cli(["inspect", work["bin"], "--json"])).stdout)
    assert {"opcodes", "layers", "machine", "instructions"} <= set(info)
    assert info["opcodes"]["HALT"] == 1 and info["opcodes"]["TACC"] >= 2
    assert sum(info["opcodes"].values()) == info["instructions_total"] == len(listing)
    assert [l["name"] for l in info["layers"]] == ["conv1", "max_pool2d:lv_1", "conv2", "conv3",
                                                    "global_avg_pool:lv_2", "fc"]
    assert info["machine"]["hash"] == Machine().hash()
    assert info["sections"] == {"host": False, "reference": True}

    summary = ok(cli(["inspect", work["bin"], "--summary"])).stdout
    assert "TACC" in summary and not any(ln.split()[0].isdigit() for ln in summary.splitlines()
                                         if ln.strip())


# ------------------------------------------------------------------ NumPy only

PROBE = textwrap.dedent('''
    import json, sys
    from compiler.cli import main
    sys.argv = ["dlac"] + json.loads(sys.argv[1])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tvm", "torch", "tvm_ffi"))
    print("PROBE " + json.dumps({"code": code, "heavy": heavy}))
''')


@pytest.mark.parametrize("cmd", ["inspect", "inspect-json", "run"])
def test_inspect_and_run_import_neither_tvm_nor_torch(work, tmp_path, cmd):
    assert read_program(work["bin"]).host is None          # an all-dLAC binary
    args = {"inspect": ["inspect", str(work["bin"])],
            "inspect-json": ["inspect", str(work["bin"]), "--json"],
            "run": ["run", str(work["bin"]), "--input", str(work["dir"] / "x.npy"),
                    "--output", str(tmp_path / "y.npz"), "--report-json", str(tmp_path / "r.json")]}[cmd]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          check=False, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout.splitlines()[-1].removeprefix("PROBE "))
    assert probe["code"] in (0, None), proc.stderr
    assert "tvm" not in probe["heavy"] and "torch" not in probe["heavy"], probe["heavy"]
    assert probe["heavy"] == []
    if cmd == "run":
        with np.load(tmp_path / "y.npz") as z:
            want = run(read_program(work["bin"]), {"x": work["x"]})[0]["output_0"]
            np.testing.assert_array_equal(z["output_0"], want)


# ------------------------------------------------------------------ --machine

def test_machine_toml_changes_hash_and_cycles(work, tmp_path):
    toml = tmp_path / "machine.toml"
    toml.write_text("[machine]\npe_cols = 16\nwgt_buf_kib = 128\n")
    out = tmp_path / "m.dlac"
    ok(cli(["compile", work["factory"], "-o", out, "--machine", toml]))
    default = json.loads(ok(cli(["inspect", work["bin"], "--json", "--summary"])).stdout)
    custom = json.loads(ok(cli(["inspect", out, "--json", "--summary"])).stdout)
    want = Machine(pe_cols=16, wgt_buf_kib=128)
    assert custom["machine"]["hash"] == want.hash() != default["machine"]["hash"]
    assert custom["machine"]["pe_cols"] == 16 and custom["machine"]["wgt_buf_kib"] == 128
    cycles = {}
    for name, path in (("default", work["bin"]), ("custom", out)):
        rj = tmp_path / f"{name}.json"
        ok(cli(["run", path, "--input", work["dir"] / "x.npy", "--check", "--report-json", rj]))
        rep = json.loads(rj.read_text())
        assert rep["check"]["max_rel_err"] <= TOL
        cycles[name] = rep["cycles"]["total"]
        assert rep["machine"]["hash"] == (want.hash() if name == "custom" else Machine().hash())
    assert cycles["custom"] != cycles["default"]
    assert cycles["custom"] > cycles["default"]        # half the PE columns


def test_machine_toml_unknown_key(work, tmp_path):
    toml = tmp_path / "machine.toml"
    toml.write_text("[machine]\npe_colz = 16\n")
    out = tmp_path / "m.dlac"
    line = error_line(cli(["compile", work["factory"], "-o", out, "--machine", toml]))
    assert "pe_colz" in line and "unknown" in line and "machine.toml" in line
    assert not out.exists()


def test_machine_toml_bad_value(work, tmp_path):
    toml = tmp_path / "machine.toml"
    toml.write_text("[machine]\npe_rows = -4\n")
    line = error_line(cli(["compile", work["factory"], "-o", tmp_path / "m.dlac", "--machine", toml]))
    assert "pe_rows" in line and "-4" in line


# ------------------------------------------------------------------ corrupt binaries

def _corrupt(data: bytes, kind: str) -> bytes:
    if kind == "truncate-header":
        return data[:40]
    if kind == "truncate-half":
        return data[:len(data) // 2]
    if kind == "truncate-last-byte":
        return data[:-1]
    b = bytearray(data)
    b[len(b) // 2] ^= 0xFF          # "flip-middle"
    return bytes(b)


@pytest.mark.parametrize("cmd", ["run", "inspect"])
@pytest.mark.parametrize("kind", ["truncate-header", "truncate-half", "truncate-last-byte", "flip-middle"])
def test_corrupt_binary(work, tmp_path, cmd, kind):
    bad = tmp_path / "bad.dlac"
    bad.write_bytes(_corrupt(work["bin"].read_bytes(), kind))
    args = ["inspect", bad] if cmd == "inspect" else ["run", bad, "--input", work["dir"] / "x.npy"]
    line = error_line(cli(args), exit_code=1)
    assert "section " in line and "byte offset" in line, line


# ------------------------------------------------------------------ failed compiles

def test_failed_compile_quant_leaves_nothing(work, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    missing = tmp_path / "missing.jsonl"
    line = error_line(cli(["compile", work["factory"], "--tuning-log", missing, "-o", out_dir / "out.dlac"]),
                      exit_code=2)
    assert "tuning log" in line and "not found" in line
    assert list(out_dir.iterdir()) == []


def test_failed_codegen_leaves_nothing(work, tmp_path):
    """A failure inside the codegen (no tiling fits a 4-byte accumulator) comes after the
    compile stages ran: still no binary and no temporary file."""
    toml = tmp_path / "tiny.toml"
    toml.write_text("[machine]\nobuf_bytes_per_pe = 4\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = cli(["compile", work["factory"], "-o", out_dir / "out.dlac", "--machine", toml,
               "--report-json", out_dir / "report.json"])
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert "fits" in line and "ACC" in line
    assert list(out_dir.iterdir()) == []


# ------------------------------------------------------------------ --no-reference

def test_check_needs_reference_section(work, tmp_path):
    out = tmp_path / "noref.dlac"
    ok(cli(["compile", work["factory"], "-o", out, "--no-reference"]))
    assert out.stat().st_size < work["bin"].stat().st_size
    info = json.loads(ok(cli(["inspect", out, "--json", "--summary"])).stdout)
    assert info["sections"]["reference"] is False
    ok(cli(["run", out, "--input", work["dir"] / "x.npy"]))          # runs fine without --check
    rj, yz = tmp_path / "r.json", tmp_path / "y.npz"
    res = cli(["run", out, "--input", work["dir"] / "x.npy", "--check", "--report-json", rj,
               "--output", yz])
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert "REF" in line and "--no-reference" in line
    assert not rj.exists() and not yz.exists()


# ------------------------------------------------------------------ file modes

def test_outputs_respect_umask(work, tmp_path):
    old = os.umask(0o022)
    try:
        yz = tmp_path / "y.npz"
        ok(cli(["run", work["bin"], "--input", work["dir"] / "x.npy", "--output", yz]))
        assert (yz.stat().st_mode & 0o777) == 0o644, oct(yz.stat().st_mode & 0o777)
    finally:
        os.umask(old)
