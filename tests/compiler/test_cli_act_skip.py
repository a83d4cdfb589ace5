"""The CLI of zero-activation skipping: ``act_skip`` in the machine TOML, ``dlac run`` on a
stack of inputs (per-input cycles and their spread, the per-layer speed-up split in
``--report-json``), ``dlac tune --calib`` (expected cycles), and their bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_helpers import FACTORY, cli, error_line, ok


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("actskip")
    (d / "factory.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    xs = np.maximum(rng.standard_normal((4, 1, 1, 16, 16)), 0).astype(np.float32)   # half zeros
    xs[1] = 0.0                                                        # one all-zero input
    np.save(d / "xs.npy", xs)
    np.save(d / "x.npy", xs[0])
    out = d / "out.dlac"
    ok(cli(["compile", f"{d / 'factory.py'}:make", "-o", out]))
    return {"dir": d, "factory": f"{d / 'factory.py'}:make", "xs": xs, "bin": out}


def test_run_a_stack_of_inputs(work, tmp_path):
    rj, y = tmp_path / "r.json", tmp_path / "y.npz"
    res = ok(cli(["run", work["bin"], "--input", work["dir"] / "xs.npy", "--check", "--report-json", rj,
                  "--output", y]))
    assert "4 inputs" in res.stdout and "median" in res.stdout
    rep = json.loads(rj.read_text())
    spread = rep["inputs"]
    per = spread["per_input_cycles"]
    assert spread["count"] == 4 and len(per) == 4
    assert spread["cycles"]["min"] == min(per) == per[1] < spread["cycles"]["max"] == max(per)
    assert all(c["max_rel_err"] <= 1e-5 for c in rep["check"])
    assert np.load(y)["output_0"].shape == (4, 1, 10)
    for layer in rep["layers"]:
        assert {"act_density", "speedup_weights", "speedup_acts", "speedup_total", "tflops_equiv"} <= set(layer)
    conv2 = next(l for l in rep["layers"] if l["name"] == "conv2")
    assert 0 < conv2["act_density"] < 1 and conv2["speedup_acts"] > 1
    assert conv2["speedup_total"] == conv2["zero_skip_speedup"]
    # one input of the stack on its own has the cycles the stack reported for it
    rj1 = tmp_path / "one.json"
    ok(cli(["run", work["bin"], "--input", work["dir"] / "x.npy", "--report-json", rj1]))
    assert json.loads(rj1.read_text())["cycles"]["total"] == per[0]


def test_machine_toml_granularity(work, tmp_path):
    cycles = {}
    for g in ("none", "column", "pe"):
        toml = tmp_path / f"{g}.toml"
        toml.write_text(f'[machine]\nact_skip = "{g}"\n')
        out, rj = tmp_path / f"{g}.dlac", tmp_path / f"{g}.json"
        ok(cli(["compile", work["factory"], "-o", out, "--machine", toml]))
        ok(cli(["run", out, "--input", work["dir"] / "x.npy", "--report-json", rj]))
        rep = json.loads(rj.read_text())
        assert rep["machine"]["act_skip"] == g
        cycles[g] = rep["cycles"]["total"]
    assert cycles["pe"] < cycles["column"] < cycles["none"]


def test_bad_act_skip_and_bad_stacks(work, tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text('[machine]\nact_skip = "rows"\n')
    line = error_line(cli(["compile", work["factory"], "-o", tmp_path / "m.dlac", "--machine", toml]))
    assert "act_skip" in line and "'rows'" in line and "column" in line
    np.save(tmp_path / "bad.npy", np.zeros((3, 1, 1, 8, 8), np.float32))
    line = error_line(cli(["run", work["bin"], "--input", tmp_path / "bad.npy"]))
    assert "(3, 1, 1, 8, 8)" in line and "(1, 1, 16, 16)" in line and "stacked" in line


def test_tune_with_calibration_samples(work, tmp_path):
    np.savez(tmp_path / "calib.npz", x=work["xs"][[0, 2, 3]])
    log = tmp_path / "log.jsonl"
    res = ok(cli(["tune", work["factory"], "-o", log, "--calib", tmp_path / "calib.npz",
                  "--strategy", "random", "--trials", "12", "--jobs", "1"]))
    assert "expected cycles with zero activations skipped" in res.stderr
    assert len(log.read_text().splitlines()) == 4          # conv1, conv2, conv3, fc
    # the log's expected cycles are plausible for the layers: the binary compiles with it
    out = tmp_path / "tuned.dlac"
    ok(cli(["compile", work["factory"], "-o", out, "--tuning-log", log]))
    ok(cli(["run", out, "--input", work["dir"] / "xs.npy", "--check"]))
    line = error_line(cli(["tune", work["factory"], "-o", tmp_path / "l2.jsonl", "--calib",
                           tmp_path / "absent.npz"]), stdout_empty=False)
    assert "absent.npz" in line
