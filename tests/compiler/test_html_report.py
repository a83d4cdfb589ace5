"""``dlac report``: kinds told from content, one self-contained page (sections for the
inputs given, every embedded image a valid PNG, plot files valid PNG / SVG), text from
files escaped, a file of no known kind is a one-line error naming it, outputs checked
before work and written atomically; and a real MNIST binary with its real run report."""

from __future__ import annotations

import base64
import io
import json
import os
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

pytest.importorskip("matplotlib")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from compiler.cli_report import report_cmd  # noqa: E402
from tests.compiler.test_plots import LAYERS, MACHINE, sweep_points  # noqa: E402

EVIL = "<script>alert(1)</script>"
SCHED = {"f_tile": 16, "c_tile": 8, "h_tile": 4, "w_tile": 4, "order": "filter_outer", "double_buffer": True,
         "pe_order": "sorted", "pxshift": 0}


class Parsed(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.ids, self.imgs, self.tags, self.text = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a["src"])
        for k in ("src", "href"):
            assert k not in a or a[k].startswith("data:"), (tag, a)      # nothing external

    def handle_data(self, data):
        self.text.append(data)


def run_report():
    return {"cycles": {"total": 1402, "compute": 700, "load_stall": 350, "store_stall": 352},
            "layers": LAYERS, "machine": MACHINE, "seconds": 2.8e-6, "tflops_equiv": 0.3,
            "energy_pj": {"total": 1e4, "compute": 1e3, "onchip": 2e3, "dram": 6e3, "static": 1e3},
            "pj_per_mac": 1.0, "tops_per_w": 2.0, "edp_js": 3e-14, "area_mm2": 2.2}


def write_inputs(tmp_path):
    r = tmp_path / "run.bin"                  # the extension says nothing
    r.write_text(json.dumps(run_report()))
    s = tmp_path / "sweep.txt"
    header = {"kind": "dlac-sweep", "version": 1, "model": EVIL, "params": {"pe_rows": [8, 16]}, "points": 6}
    s.write_text("\n".join(json.dumps(x) for x in [header] + sweep_points()) + "\n")
    t = tmp_path / "tune.jsonl"
    rec = {"key": {"op": "conv2d", "shape": {}, "weights_sha256": "0" * 64, "precision": "ternary",
                   "has_scale": True, "machine": "m"}, "schedule": SCHED, "cycles": 500,
           "default_cycles": 900, "lower_bound": 100, "trials": 8, "layer": EVIL}
    t.write_text(json.dumps(rec) + "\n")
    return [str(r), str(s), str(t)]


def invoke(args):
    return CliRunner().invoke(report_cmd, [str(a) for a in args])


def check_page(path):
    text = open(path, encoding="utf-8").read()
    p = Parsed(text)
    assert "script" not in p.tags
    assert EVIL not in text.replace("&lt;", "?")            # only escaped forms
    assert p.imgs
    for src in p.imgs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        Image.open(io.BytesIO(png)).load()
    return text, p


def test_report_of_run_sweep_and_tuning(tmp_path):
    out, pdir = tmp_path / "r.html", tmp_path / "plots"
    res = invoke(write_inputs(tmp_path) + ["-o", out, "--plots", pdir, "--title", f"t {EVIL}"])
    assert res.exit_code == 0, res.output
    text, p = check_page(out)
    for sec in ("run1", "run1-summary", "run1-layers", "sweep1", "sweep1-pareto", "sweep1-best",
                "sweep1-invalid", "tuning1"):
        assert sec in p.ids, sec
    body = "".join(p.text)
    assert EVIL in body                                    # shown as text
    assert "no tiling fits" in body and "TOPS/W" in body
    files = sorted(os.listdir(pdir))
    assert "sweep1-pareto.png" in files and "tuning1-tuning.svg" in files and "run1-roofline.png" in files
    assert len(p.imgs) * 2 == len(files)
    for f in files:
        if f.endswith(".svg"):
            assert ET.parse(pdir / f).getroot().tag.endswith("svg")
        else:
            Image.open(pdir / f).verify()
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_old_report_without_energy_notes_the_skip(tmp_path):
    r = run_report()
    del r["energy_pj"]
    r["layers"] = [{k: v for k, v in l.items() if k != "energy_pj"} for l in LAYERS]
    (tmp_path / "old.json").write_text(json.dumps(r))
    res = invoke([tmp_path / "old.json", "-o", tmp_path / "r.html"])
    assert res.exit_code == 0, res.output
    text, _ = check_page(tmp_path / "r.html")
    assert "layer_energy skipped" in text and "no energy figures" in text


def test_wrong_kind_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    out = tmp_path / "r.html"
    out.write_text("previous")
    for f in (bad, tmp_path / "missing.json"):
        res = invoke([f, "-o", out])
        assert res.exit_code == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dlac: error:") and str(f) in lines[0], lines
    assert out.read_text() == "previous"                    # nothing written on error
    assert invoke([bad, "-o", tmp_path / "nodir" / "r.html"]).exit_code == 2
    res = invoke([bad, "-o", bad])                           # the output is an input
    assert res.exit_code == 2 and "same file" in res.stderr


def test_real_mnist_binary_and_run_report(tmp_path):
    """The demo's MNIST CNN: compiled, run in the interpreter, reported (about 15 s)."""
    torch = pytest.importorskip("torch")
    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.cli_args import strict_json
    from compiler.datasets import mnist_cnn, mnist_test
    from target_dlac.binary.container import to_bytes
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.interpreter import Interpreter

    x, _ = mnist_test(1)
    prog = build_program(compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig()),
                         Machine(), reference=False)
    (tmp_path / "m.dlac").write_bytes(to_bytes(prog))
    _, rep = Interpreter(prog).run({"x": x[:1]})
    (tmp_path / "r.json").write_text(strict_json(rep.to_dict()))
    res = invoke([tmp_path / "m.dlac", tmp_path / "r.json", "-o", tmp_path / "rep.html"])
    assert res.exit_code == 0, res.output
    text, p = check_page(tmp_path / "rep.html")
    assert {"binary1", "run1", "run1-layers"} <= set(p.ids)
    assert len(p.imgs) == 4                                  # cycles, energy, roofline, zero-skip
    body = "".join(p.text)
    assert "conv_layers.0" in body and "quant.weights" in body and "ternary" in body
    assert f"{rep.cycles['total']:,}" in body
