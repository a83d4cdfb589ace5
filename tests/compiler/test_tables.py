"""``--format csv|json`` (compiler/tables.py, docs/formats.md): the cell encoding, and for
``run``, ``inspect`` and ``compile`` that stdout holds the table only, that its CSV parses
with ``csv.DictReader`` into the documented columns and that every value equals the one in
the command's JSON report (or, for ``inspect``, the decoded instruction)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest

from compiler.tables import Table, csv_cell
from tests.cli_helpers import FACTORY, cli, error_line, ok

ENERGY = ["energy_pj.total", "energy_pj.compute", "energy_pj.onchip", "energy_pj.dram", "energy_pj.static"]


def rows_of(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts as ``a.b`` keys (what the CSV columns are documented to be)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def same(cell: str, value) -> bool:
    """Does CSV ``cell`` hold JSON ``value`` (as decoded from a strict-JSON report)?"""
    if value is None or value == "":
        return cell == ""
    if isinstance(value, bool):
        return cell == ("True" if value else "False")
    if isinstance(value, int):
        return int(cell) == value
    if isinstance(value, float):
        return float(cell) == value
    if isinstance(value, list):
        return json.loads(cell) == value
    if value in ("nan", "inf", "-inf"):            # strict JSON's non-finite floats
        got = float(cell)
        return math.isnan(got) if value == "nan" else got == float(value)
    return cell == value


def assert_rows_equal(cols, rows, want: list[dict]):
    assert len(rows) == len(want)
    for row, w in zip(rows, want):
        fw = flat(w)
        for k in set(fw) - set(cols):       # a null where other rows have an object: all empty
            group = [c for c in cols if c.startswith(k + ".")]
            assert fw[k] is None and group and all(row[c] == "" for c in group), k
        for c in cols:
            assert same(row[c], fw.get(c)), (c, row[c], fw.get(c))


# ------------------------------------------------------------------ the encoding

def test_cells_round_trip_and_are_protected():
    vals = [0.1, 1 / 3, 1e-300, 2.0 ** 60 + 0.5, -0.0]
    for v in vals:
        assert float(csv_cell(v)) == v and csv_cell(v) == repr(v)
    assert [csv_cell(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert csv_cell(None) == "" and csv_cell(True) == "True" and csv_cell(7) == "7"
    assert csv_cell(np.float32(0.5)) == "0.5" and csv_cell(np.int64(3)) == "3"
    assert csv_cell([16, 1, 3, 3]) == "[16,1,3,3]"
    for bad in ("=1+2", "+1", "-2", "@SUM(A1)", "=HYPERLINK(\"http://x\")"):
        assert csv_cell(bad) == "'" + bad
    assert csv_cell("conv-1") == "conv-1" and csv_cell(-2) == "-2"      # only text at the start
    assert csv_cell("a\x1b[31m\nb") == "a\\x1b[31m\\x0ab"
    assert csv_cell("\n=1") == "\\x0a=1"        # escaped first: no longer starts with '='


def test_columns_union_template_order_and_csv_parse():
    t = Table([{"a": 1, "e": None, "s": "x,\"y\""}, {"a": 2.5, "e": {"t": 1.5, "v": 2}, "z": True}],
              template={"e": {"t": None, "u": None}})
    assert t.columns() == ["e.t", "e.u", "e.v", "a", "s", "z"]
    cols, rows = rows_of(t.csv())
    assert cols == t.columns()
    assert rows[0] == {"e.t": "", "e.u": "", "e.v": "", "a": "1", "s": "x,\"y\"", "z": ""}
    assert rows[1] == {"e.t": "1.5", "e.u": "", "e.v": "2", "a": "2.5", "s": "", "z": "True"}
    assert json.loads(Table([{"x": math.nan, "y": {"z": -math.inf}}]).json()) == [{"x": "nan", "y": {"z": "-inf"}}]
    assert rows_of(Table([]).csv()) == ([], []) and Table([], {"a": None}).csv() == "a\r\n"


# ------------------------------------------------------------------ the commands

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    (d / "factory.py").write_text(FACTORY)
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32))
    res = ok(cli(["compile", f"{d / 'factory.py'}:make", "-o", d / "m.dlac", "--format", "csv",
                  "--report-json", d / "c.json"]))
    return {"dir": d, "bin": d / "m.dlac", "x": d / "x.npy", "compile": res,
            "compile_report": json.loads((d / "c.json").read_text())}


def run_columns() -> list[str]:
    from target_dlac.sim.report import LayerReport

    cols = []
    for f in dataclasses.fields(LayerReport):
        cols += ENERGY if f.name == "energy_pj" else [f.name]
    return cols + ["on"]


def test_run_csv_equals_report_json(work, tmp_path):
    rj = tmp_path / "r.json"
    res = ok(cli(["run", work["bin"], "--input", work["x"], "--format", "csv", "--report-json", rj]))
    rep = json.loads(rj.read_text())
    cols, rows = rows_of(res.stdout)
    assert cols == run_columns()
    assert_rows_equal(cols, rows, rep["layers"])
    assert [r["name"] for r in rows] == ["conv1", "max_pool2d:lv_1", "conv2", "conv3",
                                         "global_avg_pool:lv_2", "fc"]
    assert sum(int(r["cycles"]) for r in rows) == rep["cycles"]["total"]
    for r in rows:      # the energy parts add up (floats written at full precision)
        parts = sum(float(r[c]) for c in ENERGY[1:])
        assert float(r["energy_pj.total"]) == pytest.approx(parts, rel=1e-12)
    # the other lines went to stderr, and nothing but the table is on stdout
    assert "interpreter:" in res.stderr and "output_0: shape" in res.stderr
    assert "interpreter:" not in res.stdout and len(res.stdout.splitlines()) == len(rows) + 1


def test_run_json_equals_report_json_and_table_is_unchanged(work, tmp_path):
    from compiler.cli_common import _escaped_report
    from target_dlac.binary.container import read_program
    from target_dlac.sim.interpreter import run

    rj = tmp_path / "r.json"
    res = ok(cli(["run", work["bin"], "--input", work["x"], "--format", "json", "--report-json", rj]))
    assert json.loads(res.stdout) == json.loads(rj.read_text())["layers"]
    # the default: the text table on stdout, first, as the report prints it
    _, report = run(read_program(work["bin"]), {"x": np.load(work["x"])})
    table = ok(cli(["run", work["bin"], "--input", work["x"]]))
    assert table.stdout.startswith(_escaped_report(report).table() + "\ninterpreter: ")
    explicit = ok(cli(["run", work["bin"], "--input", work["x"], "--format", "table"]))
    assert _untimed(explicit.stdout) == _untimed(table.stdout) and table.stderr == ""


def _untimed(out: str) -> list[str]:
    """The lines of ``run``'s stdout but its wall-time line."""
    return [ln for ln in out.splitlines() if not ln.startswith("interpreter:")]


def test_run_stacked_inputs_rows_are_the_first_inputs(work, tmp_path):
    x = np.load(work["x"])
    xs = np.stack([x, np.zeros_like(x)])
    np.save(tmp_path / "xs.npy", xs)
    rj = tmp_path / "r.json"
    res = ok(cli(["run", work["bin"], "--input", tmp_path / "xs.npy", "--format", "csv", "--report-json", rj]))
    cols, rows = rows_of(res.stdout)
    assert_rows_equal(cols, rows, json.loads(rj.read_text())["layers"])
    assert "2 inputs (the table is the first's)" in res.stderr


def test_inspect_listing_rows_are_the_instructions(work):
    from target_dlac.binary.container import read_program
    from target_dlac.binary.layer_meta import layer_table
    from target_dlac.isa.encoding import FORMATS, disassemble

    prog = read_program(work["bin"])
    res = ok(cli(["inspect", work["bin"], "--format", "csv"]))
    cols, rows = rows_of(res.stdout)
    every = {f"fields.{n}" for _, _, fs in FORMATS.values() for n, _ in fs}
    assert cols[:9] == ["pc", "layer", "op", "unit", "pop_prev", "pop_next", "push_prev", "push_next", "text"]
    assert set(cols[9:]) == every and len(cols) == 9 + len(every)
    assert len(rows) == len(prog.insns) and res.stderr == ""
    layer_at = {pc: l.name for l in layer_table(prog.meta) for pc in range(l.pc_start, l.pc_end)}
    for pc, (row, ins) in enumerate(zip(rows, prog.insns)):
        assert int(row["pc"]) == pc and row["op"] == ins.op and row["unit"] == ins.unit
        assert row["layer"] == layer_at.get(pc, "") and row["text"] == disassemble(ins)
        assert [int(row[k]) for k in ("pop_prev", "pop_next", "push_prev", "push_next")] == \
            [ins.pop_prev, ins.pop_next, ins.push_prev, ins.push_next]
        got = {c[len("fields."):]: int(row[c]) for c in cols[9:] if row[c] != ""}
        assert got == ins.f
    js = json.loads(ok(cli(["inspect", work["bin"], "--format", "json"])).stdout)
    assert [r["fields"] for r in js] == [ins.f for ins in prog.insns]
    assert [r["text"] for r in js] == [r["text"] for r in rows]


def test_inspect_summary_rows_equal_inspect_json(work):
    info = json.loads(ok(cli(["inspect", work["bin"], "--json", "--summary"])).stdout)
    res = ok(cli(["inspect", work["bin"], "--summary", "--format", "csv"]))
    cols, rows = rows_of(res.stdout)
    assert cols[:5] == ["name", "op", "precision", "pc_start", "pc_end"]
    assert cols[5:] == [f"schedule.{k}" for k in ("f_tile", "c_tile", "h_tile", "w_tile", "order",
                                                  "double_buffer", "pe_order", "pxshift")] + ["min_dram_bytes"]
    assert_rows_equal(cols, rows, info["layers"])
    assert json.loads(ok(cli(["inspect", work["bin"], "--summary", "--format", "json"])).stdout) == info["layers"]
    line = error_line(cli(["inspect", work["bin"], "--json", "--format", "csv"]), exit_code=2)
    assert "--json" in line and "--format" in line


def test_compile_csv_equals_report_json(work):
    res, rep = work["compile"], work["compile_report"]
    cols, rows = rows_of(res.stdout)
    assert cols == ["name", "var", "op", "weight_shape", "precision", "reason", "on", "host_reason",
                    "weight_sqnr_db", "dense_macs", "replaced", "accumulations", "left"]
    mult = {m["name"]: m for m in rep["multiplies"]}
    want = [l | {k: mult[l["var"]][k] for k in ("dense_macs", "replaced", "accumulations", "left")}
            for l in rep["layers"]]
    assert_rows_equal(cols, rows, want)
    assert [r["precision"] for r in rows] == ["fp32", "ternary", "ternary", "fp32"]
    assert float(rows[1]["weight_sqnr_db"]) == rep["layers"][1]["weight_sqnr_db"]
    assert "wrote" in res.stderr and "dLAC regions" in res.stderr
    assert "wrote" not in res.stdout and len(res.stdout.splitlines()) == len(rows) + 1


def test_compile_json_rows_and_host_layers_replace_nothing(work):
    from compiler.tables import compile_table

    res = ok(cli(["compile", f"{work['dir'] / 'factory.py'}:make", "--format", "json"]))
    js, rep = json.loads(res.stdout), work["compile_report"]
    mult = {m["name"]: m for m in rep["multiplies"]}
    assert js == [l | {k: mult[l["var"]][k] for k in ("dense_macs", "replaced", "accumulations", "left")}
                  for l in rep["layers"]]
    assert "dLAC regions" in res.stderr and "dLAC regions" not in res.stdout
    # a host layer: its multiplies stay multiplies, as in the text table
    rep = {"layers": [{"name": "a", "var": "a", "on": "host"}],
           "multiplies": [{"name": "a", "dense_macs": 10, "replaced": 7, "accumulations": 5, "left": 3}]}
    (row,) = compile_table(rep).rows
    assert (row["replaced"], row["accumulations"], row["left"]) == (0, 0, 10)


def test_file_controlled_names_are_escaped_and_protected(tmp_path):
    from target_dlac.binary.container import to_bytes
    from tests.container_helpers import X, make_program

    evil = "=HYPERLINK(\"http://x\")\x1b[2J\nFAKE"
    prog = make_program(layers=[{"name": evil, "op": "conv2d", "precision": "ternary",
                                 "pc_start": 0, "pc_end": 7}])
    b = tmp_path / "p.dlac"
    b.write_bytes(to_bytes(prog))
    np.save(tmp_path / "x.npy", X)
    want = "'=HYPERLINK(\"http://x\")\\x1b[2J\\x0aFAKE"
    for args in (["inspect", b, "--summary"], ["inspect", b], ["run", b, "--input", tmp_path / "x.npy"]):
        res = ok(cli([*args, "--format", "csv"]))
        assert "\x1b" not in res.stdout
        cols, rows = rows_of(res.stdout)
        col = "layer" if args[0] == "inspect" and len(args) == 2 else "name"
        assert {r[col] for r in rows if r[col]} == {want}
        assert json.loads(ok(cli([*args, "--format", "json"])).stdout)[0][col] == evil   # JSON: as is
