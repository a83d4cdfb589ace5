"""Issue 13 items 4 and 7, compile side: host layers marked in the compile report (never
"multiplies replaced"), the shares of layers and MACs on dLAC and on the host, a warning
per conv/dense layer on the host, ``--keep-last`` keeping every output head, the
quantization damage signal, a factory's folder on ``sys.path``, layer names that follow
the graph position, error messages without nested quotes."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from compiler.config import QuantConfig
from compiler.pipeline import compile_model
from tests.cli_helpers import cli

HOSTNET = textwrap.dedent('''
    import torch
    from torch import nn


    class HostNet(nn.Module):
        """two dilated convs: both left on the host."""
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=3, dilation=3)
            self.big = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
            self.k = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.g(y))
            y = torch.relu(self.k(self.big(y)))
            return torch.softmax(self.fc(y.mean((2, 3))), -1)


    def make():
        torch.manual_seed(0)
        return HostNet().eval(), (torch.randn(1, 4, 9, 9),)
''')


@pytest.fixture(scope="module")
def hostnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostnet") / "hostnet.py"
    path.write_text(HOSTNET)
    return path


@pytest.fixture(scope="module")
def hostnet(hostnet_file):
    return compile_model(f"{hostnet_file}:make")


def _layers_on(result, fallbacks=None):
    pl = result.placement(fallbacks)
    return {p.name: pl["layers"][p.var]["on"] for p in result.layers}


# ------------------------------------------------------------------ host layers

def test_host_layers_marked_and_replace_nothing(hostnet):
    on = _layers_on(hostnet)
    assert on == {"a": "dlac", "g": "host", "big": "host", "k": "dlac", "fc": "dlac"}
    rows = {line.split()[0]: line.split() for line in hostnet.layer_table().splitlines()[1:6]}
    for name in ("g", "big"):
        assert rows[name][3:5] == ["default", "host"]
        dense, replaced, left = (int(v.replace(",", "")) for v in rows[name][-3:])
        assert replaced == 0 and left == dense > 0
    assert rows["k"][4] == "dLAC" and int(rows["k"][-2].replace(",", "")) > 0
    by = {r.name: r for r in hostnet.multiplies}
    assert hostnet.totals()["replaced"] == by["k"].replaced       # the only ternary layer on dLAC


def test_shares_of_layers_and_macs(hostnet):
    pl = hostnet.placement()
    by = {r.name: r.dense_macs for r in hostnet.multiplies}
    assert pl["layer_counts"] == {"dlac": 3, "host": 2}
    assert pl["macs"] == {"dlac": by["a"] + by["k"] + by["fc"], "host": by["g"] + by["big"]}
    line = hostnet.layer_table().splitlines()[-1]
    assert line.startswith("on dLAC: 3 of 5 conv/dense layers (60.0%)")
    assert f"{by['g'] + by['big']:,} MACs" in line


def test_host_warning_names_layer_and_reason(hostnet):
    warnings = hostnet.host_warnings()
    assert len(warnings) == 2
    assert warnings[0].startswith("layer g (conv2d,") and "dilation [3, 3]" in warnings[0]
    assert warnings[1].startswith("layer big (conv2d,") and "dilation [2, 2]" in warnings[1]


def test_codegen_fallback_makes_a_layer_host(hostnet):
    """A composite the codegen left on the host (``meta["fallbacks"]``) moves its layer."""
    from target_dlac.codegen.composites import composite_calls

    calls = list(composite_calls(hostnet.stages["partition"]))
    var, fn = next(c for c in calls if "dlac.layer" in c[1].attrs and str(c[1].attrs["dlac.layer"]) == "k")
    kind = str(fn.attrs["Composite"])
    fallbacks = [{"composite": kind, "var": var, "reason": "kernel too large"}]
    assert _layers_on(hostnet, fallbacks)["k"] == "host"
    assert any(w.startswith("layer k ") and w.endswith("codegen: kernel too large")
               for w in hostnet.host_warnings(fallbacks))
    assert hostnet.totals(fallbacks)["replaced"] == 0


def test_cli_compile_reports_host(hostnet_file, tmp_path):
    report = tmp_path / "r.json"
    res = cli(["compile", f"{hostnet_file}:make", "-o", tmp_path / "h.dlac", "--report-json", report])
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("dlac: warning:")]
    assert len(warn) == 2 and "layer g " in warn[0] and "partitioner:" in warn[0]
    assert "on dLAC: 3 of 5 conv/dense layers" in res.stdout
    data = json.loads(report.read_text())
    assert data["placement"]["layer_counts"] == {"dlac": 3, "host": 2}
    layer = {l["name"]: l for l in data["layers"]}
    assert layer["g"]["on"] == "host" and "dilation" in layer["g"]["host_reason"]
    assert layer["k"]["on"] == "dlac" and layer["k"]["weight_sqnr_db"] > 0
    assert len(data["warnings"]) == 2


# ------------------------------------------------------------------ --keep-last: every head

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.box = nn.Linear(8, 4)
        self.cls = nn.Linear(8, 5)

    def forward(self, x):
        z = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
        return self.box(z), self.cls(z)


def test_keep_last_keeps_every_head():
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 8, 8),)
    r = compile_model(TwoHeads().eval(), x)
    prec = {p.name: (p.precision, p.reason) for p in r.layers}
    assert prec["box"] == ("fp32", "output head") and prec["cls"] == ("fp32", "last layer")
    assert prec["c2"] == ("ternary", "default")
    r = compile_model(TwoHeads().eval(), x, config=QuantConfig(keep_last=False))
    assert {p.name: p.precision for p in r.layers}["box"] == "ternary"


def test_output_heads_stop_at_layers():
    """A head feeding another head is a head too; a layer behind a head is not."""
    from passes.layers import find_layers
    from passes.plan_layers import output_heads

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return y, self.c(y) + 1

    r = compile_model(Chain().eval(), (torch.randn(2, 4),), stop_after="canonicalize")
    main = r.stages["canonicalize"]["main"]
    assert output_heads(main, find_layers(main)) == {"b", "c"}


# ------------------------------------------------------------------ quantization damage

def test_damage_matches_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    r = compile_model(model, (torch.randn(1, 16),), config=QuantConfig.all_ternary())
    x = r.damage_inputs()
    (row,) = r.damage(x)
    from passes.layers import find_layers

    w = [l.weight for l in find_layers(r.stages["quantize"]["main"])]
    b = [m.bias.detach().numpy() for m in (model[0], model[2])]
    xin = x[r.input_names[0]].astype(np.float64)
    quant = np.maximum(xin @ w[0] + b[0], 0) @ w[1] + b[1]
    with torch.no_grad():
        flt = model(torch.from_numpy(x[r.input_names[0]])).numpy().astype(np.float64)
    rel = np.linalg.norm(quant - flt) / np.linalg.norm(flt)
    assert row["rel_err"] == pytest.approx(rel, rel=1e-4)
    assert row["sqnr_db"] == pytest.approx(-20 * math.log10(rel), abs=1e-3)
    assert row["argmax_agrees"] == bool(quant.argmax() == flt.argmax())
    assert row["warn"] == (row["sqnr_db"] < 3.0)


def test_factory_keeps_its_example_inputs(tiny_factory):
    from compiler.loader import load_model

    imported = load_model(tiny_factory)
    (name,) = imported.input_names
    assert imported.extra["example_inputs"][name].shape == (1, 1, 16, 16)


def test_damage_of_float_graph_is_none():
    torch.manual_seed(0)
    r = compile_model(nn.Sequential(nn.Linear(8, 4)).eval(), (torch.randn(1, 8),),
                      config=QuantConfig.full_precision())
    (row,) = r.damage()
    assert row["rel_err"] == 0 and math.isinf(row["sqnr_db"]) and not row["warn"]
    assert r.weight_sqnr() == {}


def test_cli_damage_flag_and_warning(tiny_factory, tmp_path, monkeypatch):
    import compiler.result

    report = tmp_path / "r.json"
    res = cli(["compile", tiny_factory, "--damage", "--report-json", report])
    assert res.exit_code == 0, res.output
    assert "quantization damage, output 0 1x10: relative error" in res.stdout
    assert "the factory's example input" in res.stdout
    assert res.stderr.count("stage import") == 1
    (row,) = json.loads(report.read_text())["damage"]
    assert row["sqnr_db"] > 3 and row["input"] == "example" and "quantization damage" not in res.stderr
    # above the threshold: one warning line on stderr
    monkeypatch.setattr(compiler.result, "DAMAGE_SQNR_DB", 1e9)
    res = cli(["compile", tiny_factory, "--damage"])
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if "quantization damage" in ln]
    assert len(warn) == 1 and warn[0].startswith("dlac: warning: quantization damage: output 0 has SQNR")
    assert "quantization damage" not in cli(["compile", tiny_factory]).stdout      # opt-in


# ------------------------------------------------------------------ item 7

def test_factory_folder_on_sys_path_while_imported(tmp_path):
    from compiler.loader import load_factory

    (tmp_path / "dlac_sibling_helper.py").write_text("WIDTH = 5\n")
    (tmp_path / "fac.py").write_text(textwrap.dedent('''
        import torch
        import dlac_sibling_helper


        def make():
            import dlac_sibling_helper as again     # a lazy import inside the factory
            return torch.nn.Linear(again.WIDTH, 2), (torch.randn(1, dlac_sibling_helper.WIDTH),)
    '''))
    before = list(sys.path)
    try:
        module, example = load_factory(f"{tmp_path / 'fac.py'}:make")
        assert module.in_features == 5 and tuple(example[0].shape) == (1, 5)
        assert sys.path == before
    finally:
        sys.modules.pop("dlac_sibling_helper", None)


def test_factory_folder_removed_after_a_failing_factory(tmp_path):
    from compiler.loader import load_factory
    from target_dlac.core.errors import ModelLoadError

    (tmp_path / "bad.py").write_text("def make():\n    raise ValueError('no')\n")
    before = list(sys.path)
    with pytest.raises(ModelLoadError, match="ValueError: no"):
        load_factory(f"{tmp_path / 'bad.py'}:make")
    assert sys.path == before


def test_shared_weight_layers_keep_their_own_names():
    """One parameter used by two layers (an ONNX exporter merges byte-identical
    initializers): a per-use name list gives each layer the name of its place."""
    from tvm import relax

    from passes.name_layers import name_layers

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    w = relax.Var("w", relax.TensorType((4, 4), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            z = bb.emit(relax.op.matmul(y, w))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    _, names = name_layers(bb.get(), {"w": ["a.weight", "b.weight"]})
    assert list(names.values()) == ["a", "b"]
    _, names = name_layers(bb.get(), {"w": "a.weight"})            # one name: made unique
    assert list(names) == ["a", "a_2"]


def test_error_messages_quote_once():
    from target_dlac.core.errors import DynamicShapeError, UnsupportedOpError

    msgs = [str(UnsupportedOpError('"LRN"', '"/features/LRN"')),
            str(UnsupportedOpError("'aten.foo', 'aten.bar'", "lv3, after layer 'fc'")),
            str(DynamicShapeError('"x"', "[?, 3]"))]
    for m in msgs:
        assert "'\"" not in m and "\"'" not in m and "''" not in m, m
    assert msgs[0].startswith("op 'LRN' at node '/features/LRN' has no dLAC lowering")
    assert msgs[1].startswith("op 'aten.foo', 'aten.bar' at node 'lv3', after layer 'fc' has")
    assert "input 'x' has unresolved" in msgs[2] and "input_shapes={'x': (...)}" in msgs[2]


def test_onnx_shared_weight_layers_keep_their_own_names():
    """An ONNX graph where layer b's weight is Identity(a's weight), as exporters write
    byte-identical weights: both layers keep the names of their places."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compiler import QuantConfig, compile_model

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "a.weight")
    nodes = [helper.make_node("MatMul", ["x", "a.weight"], ["y"], name="a"),
             helper.make_node("Identity", ["a.weight"], ["b.weight"], name="share"),
             helper.make_node("MatMul", ["y", "b.weight"], ["z"], name="b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    result = compile_model(m, config=QuantConfig.full_precision())
    assert [layer.name for layer in result.layers] == ["a", "b"]
