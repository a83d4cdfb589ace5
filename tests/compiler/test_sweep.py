"""``dlac sweep`` (compiler.sweep, sweep_file, sweep_run, cli_sweep) on the tiny factory net:
grid ids, random samples, invalid points, resume after an interruption (byte-identical file),
header mismatch, figures equal to a direct cost-model call, CSV columns, bad --param."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from compiler import sweep, sweep_file
from target_dlac.core.errors import ConfigError
from tests.cli_helpers import FACTORY


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "factory.py").write_text(FACTORY)
    return {"dir": d, "model": f"{d / 'factory.py'}:make"}


def _run(args):
    from compiler.cli_sweep import sweep_cmd

    return CliRunner().invoke(sweep_cmd, [str(a) for a in args])


def test_grid_ids_and_random_sample():
    g = sweep.parse_params(["pe_rows=4,8,16", "inp_buf_kib=1,64", "quant=ternary,int8"])
    pts = sweep.points(g)
    assert len(pts) == 12 and [i for i, _ in pts] == list(range(12))
    assert pts[0][1] == {"pe_rows": 4, "inp_buf_kib": 1, "quant": "ternary"}
    assert pts[5][1] == {"pe_rows": 8, "inp_buf_kib": 1, "quant": "int8"}      # first varies slowest
    a, b = sweep.points(g, 5, seed=3), sweep.points(g, 5, seed=3)
    assert a == b and len({i for i, _ in a}) == 5
    assert all(dict(pts)[i] == p for i, p in a)                                 # same id, same point
    assert len(sweep.points(g, 50)) == 12


@pytest.mark.parametrize("spec", ["bogus=1", "pe_rows", "pe_rows=", "pe_rows=a", "pe_rows=1,1",
                                  "quant=fp64", "activations=int8"])
def test_bad_param_one_line_error(work, tmp_path, spec):
    out = tmp_path / "s.jsonl"
    res = _run([work["model"], "--param", spec, "-o", out])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlac: error: --param"), res.stderr
    assert not out.exists()


def test_point_equals_direct_costmodel(work):
    from compiler.pipeline import compile_model
    from target_dlac.codegen.schedule import default_schedule
    from target_dlac.isa.area import area_mm2
    from target_dlac.isa.machine import Machine
    from target_dlac.tune.costmodel import layer_cost

    res = compile_model(work["model"])
    layers = sweep.sweep_layers(res)
    m = Machine(pe_rows=8, dram_bytes_per_cycle=16)
    rec = sweep.evaluate(layers, Machine().to_dict(), {"pe_rows": 8, "dram_bytes_per_cycle": 16})
    assert rec["status"] == "ok"
    tot, e = 0, 0.0
    for l, got in zip(layers, rec["layers"]):
        r = layer_cost(l.shape, default_schedule(l.shape, m, l.weights.max_bytes), m, l.weights,
                       has_scale=l.has_scale)
        assert got["cycles"] == r["total"] and got["energy_pj"] == r["energy_pj"]
        tot += r["total"]
        e += r["energy_pj"]["total"]
    assert rec["cycles"] == tot and rec["energy_pj"]["total"] == pytest.approx(e, rel=1e-12)
    assert rec["latency_s"] == pytest.approx(tot / (m.clock_mhz * 1e6))
    assert rec["edp_js"] == pytest.approx(e * 1e-12 * rec["latency_s"])
    assert rec["area_mm2"] == area_mm2(m)
    bad = sweep.evaluate(layers, Machine().to_dict(), {"pe_rows": 0})
    assert bad["status"] == "invalid" and "pe_rows" in bad["error"]
    tiny = sweep.evaluate(layers, Machine().to_dict(), {"obuf_bytes_per_pe": 1})
    assert tiny["status"] == "invalid" and tiny["error"].startswith("layer conv1")


def test_resume_after_interruption_gives_identical_file(work, tmp_path):
    from compiler.pipeline import compile_model
    from compiler.sweep_run import header_of, run_sweep
    from target_dlac.isa.machine import Machine

    g = sweep.parse_params(["pe_rows=4,8,16", "obuf_bytes_per_pe=1,512", "dram_bytes_per_cycle=16,64"])
    pts = sweep.points(g)
    layers = {(): sweep.sweep_layers(compile_model(work["model"]))}
    base = Machine().to_dict()
    h = header_of("m", {}, g, None, 0, base, len(pts), {})
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    run_sweep(str(full), h, pts, layers, base, jobs=1, say=lambda s: None)
    run_sweep(str(part), h, pts, layers, base, jobs=1, say=lambda s: None, stop_after=5)
    with open(part, "ab") as f:
        f.write(b'{"kind":"point","id":11,"par')                 # a torn last line
    assert part.read_bytes() != full.read_bytes()
    _, done = run_sweep(str(part), h, pts, layers, base, jobs=1, say=lambda s: None)
    assert part.read_bytes() == full.read_bytes()
    hdr, recs = sweep_file.read(str(full))
    assert [r["id"] for r in recs] == list(range(12))
    assert sum(r["status"] == "invalid" for r in recs) == 6                  # obuf 1 B fits nothing
    with pytest.raises(ConfigError, match="seed differs|mode differs"):
        run_sweep(str(full), {**h, "mode": "random", "seed": 1}, pts, layers, base, jobs=1, say=lambda s: None)


def test_cli_sweep_csv_and_front(work, tmp_path):
    out, c = tmp_path / "s.jsonl", tmp_path / "s.csv"
    res = _run([work["model"], "--param", "pe_rows=4,16", "--param", "inp_buf_kib=1,64", "-o", out,
                "--csv", c, "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.stdout and "best EDP" in res.stdout
    lines = out.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["kind"] == "dlac-sweep" and head["points"] == 4 and head["mode"] == "grid"
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == 4
    assert list(rows[0]) == ["param.pe_rows", "param.inp_buf_kib"] + list(sweep_file.CSV_COLUMNS)
    recs = [json.loads(ln) for ln in lines[1:]]
    assert [float(r["latency_s"]) for r in rows] == [x["latency_s"] for x in recs]
    again = _run([work["model"], "--param", "pe_rows=4,8", "--param", "inp_buf_kib=1,64", "-o", out])
    assert again.exit_code == 2 and "params differs" in again.stderr
