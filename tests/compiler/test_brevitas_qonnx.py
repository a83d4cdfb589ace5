"""Brevitas 0.13 exports compile as exported: QCDQ (``export_onnx_qcdq``) and QONNX
(``export_qonnx``, ``Quant`` nodes rewritten by :func:`compiler.onnx_rewrite.rewrite_qonnx`).

The fixtures in ``tests/fixtures/brevitas/`` were written by
``tools/make_brevitas_fixtures.py`` in a separate venv with Brevitas; these tests need no
Brevitas.  Each ``.npz`` holds 4 inputs, Brevitas' own PyTorch outputs for them and
Brevitas' integer weights and scales (``quant_weight().int()`` / ``.scale``): the oracles.

Tolerance against Brevitas: max|out - y| <= 1e-5 * max|y|.  dlac computes
``conv(x, q) * s + b`` where Brevitas computes ``conv(x, q * s) + b``; in float32 the
results differ in the last bits (measured <= 4.5e-8 absolute on outputs of magnitude ~0.3,
i.e. <= 1.5e-7 relative), and no activation quantizer lands on the other side of a
rounding boundary for these fixed inputs (a flip would be one uint8 step of ``q3``, about
1e-2 of the output: far over the tolerance, so the test would show it).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from compiler import compile_model, run_reference
from compiler.build import build_program
from compiler.cli_args import report_dict
from compiler.onnx_rewrite import rewrite_qonnx
from passes.layers import find_layers
from target_dlac.binary.inspect import describe
from target_dlac.core.plan import WeightFormat
from target_dlac.core.errors import ModelLoadError, UnsupportedOpError
from target_dlac.sim.host import HostRunner
from target_dlac.sim.interpreter import run

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "brevitas")
CASES = [("ternary", "qcdq"), ("ternary", "qonnx"), ("int4", "qcdq"), ("int4", "qonnx")]
CONV_KIND = {"ternary": "ternary", "int4": "int4"}
QONNX = "qonnx.custom_op.general"


def _fixture(name, fmt):
    return os.path.join(FIX, f"{name}_{fmt}.onnx"), dict(np.load(os.path.join(FIX, f"{name}.npz")))


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}_{f}" for n, f in CASES])
def compiled(request):
    name, fmt = request.param
    path, data = _fixture(name, fmt)
    return name, fmt, data, compile_model(path)


def test_fixtures_are_small_and_as_exported():
    for name, fmt in CASES:
        path, _ = _fixture(name, fmt)
        assert os.path.getsize(path) < 200_000
        model = onnx.load(path)
        assert model.ir_version == 10
        ops = {(n.domain, n.op_type) for n in model.graph.node}
        if fmt == "qonnx":
            assert (QONNX, "Quant") in ops and ("", "QuantizeLinear") not in ops
        else:
            assert {("", "QuantizeLinear"), ("", "Clip"), ("", "DequantizeLinear")} <= ops


def test_weights_are_recognized_exactly(compiled):
    name, _, data, result = compiled
    kind = CONV_KIND[name]
    assert [(l.name, l.precision, l.reason) for l in result.layers] == \
        [("c1", kind, "pre-quantized"), ("c2", kind, "pre-quantized"), ("fc", "int8", "pre-quantized")]
    if name == "ternary":
        assert set(np.unique(data["c1.int"])) <= {-1, 0, 1}
    layers = {l.name: l for l in find_layers(result.stages["fold"]["main"])}
    for plan in result.layers:
        want = data[f"{plan.name}.int"]
        want = want.T if plan.op == "dense" else want          # torch (N, K) -> dlac (K, N)
        w = layers[plan.var].weight
        assert w.dtype == np.int8
        np.testing.assert_array_equal(w, want, err_msg=plan.name)
        np.testing.assert_array_equal(plan.integers.q, want, err_msg=plan.name)
        s = data[f"{plan.name}.scale"]
        np.testing.assert_array_equal(plan.integers.scale, np.broadcast_to(s, plan.integers.scale.shape))
    fmt = WeightFormat.TERNARY if name == "ternary" else WeightFormat.INT8
    assert [l.weight_format for l in result.layers] == [fmt, fmt, WeightFormat.INT8]
    rep = {l["name"]: l for l in report_dict(result)["layers"]}          # the compile report
    assert [(rep[n]["precision"], rep[n]["on"]) for n in ("c1", "c2")] == [(kind, "dlac")] * 2


@pytest.mark.slow
def test_interpreter_matches_brevitas_and_tvm(compiled):
    _, _, data, result = compiled
    prog = build_program(result, reference=False)
    info = {l["name"]: l for l in describe(prog)["layers"]}
    assert {info[n]["precision"] for n in ("c1", "c2")} == {result.layers[0].precision}
    host = HostRunner(prog) if prog.host is not None else None
    (inp,) = result.input_names
    for x, y in zip(data["x"], data["y"]):
        out = run(prog, {inp: x}, host_runner=host)[0]["output_0"]
        ref = run_reference(result.reference_module("fold"), x)[0]
        assert np.abs(out - y).max() <= 1e-5 * np.abs(y).max()
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


# ------------------------------------------------------------------ rewrite_qonnx semantics

def _qonnx_oracle(x, scale, zp, bits, signed, narrow, mode):
    """QONNX's Quant, written from its spec (docs/qonnx-custom-ops/quant_op.md), in float32."""
    y = (x / scale + zp).astype(np.float32)
    if bits == 1 and signed:
        return ((np.where(y >= 0, 1.0, -1.0).astype(np.float32) - zp) * scale).astype(np.float32)
    lo = -(2 ** (bits - 1)) + narrow if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1 - narrow
    r = {"ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor}[mode](np.clip(y, lo, hi))
    return ((r - zp) * scale).astype(np.float32)


def _quant_model(scale, zp, bits, signed, narrow, mode, shape=(2, 3, 4, 4), op="Quant"):
    inits = [nh.from_array(np.asarray(scale, np.float32), "s")]
    ins = ["x", "s"]
    if op == "Quant":
        inits += [nh.from_array(np.asarray(zp, np.float32), "z"), nh.from_array(np.float32(bits), "b")]
        ins += ["z", "b"]
        attrs = dict(signed=signed, narrow=narrow, rounding_mode=mode)
    else:
        attrs = {}
    node = oh.make_node(op, ins, ["y"], domain=QONNX, name="q", **attrs)
    g = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(QONNX, 1)])


def _run_rewritten(model, x):
    import onnxruntime as ort

    rewrite_qonnx(model, "<test>")
    assert all(n.domain == "" for n in model.graph.node)
    assert all(o.domain != QONNX for o in model.opset_import)
    model.ir_version = 10
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0], {n.op_type for n in model.graph.node}


PER_CH = np.array([0.05, 0.1, 0.25], np.float32).reshape(1, 3, 1, 1)


@pytest.mark.parametrize("scale,zp,bits,signed,narrow,mode,qcdq", [
    (0.1, 0, 8, 1, 0, "ROUND", True),       # int8 activation
    (0.1, 0, 8, 0, 0, "ROUND", True),       # uint8 activation (QuantReLU)
    (0.1, 0, 8, 1, 1, "ROUND", True),       # narrow int8 weights [-127, 127]
    (PER_CH, 0, 2, 1, 1, "ROUND", True),    # ternary, per channel
    (PER_CH, 0, 4, 1, 1, "ROUND", True),    # int4 narrow, per channel
    (0.1, 0, 4, 0, 1, "ROUND", True),       # uint4 narrow [0, 14]
    (0.1, 3, 8, 0, 0, "ROUND", False),      # asymmetric: round(x/s + zp), not round(x/s) + zp
    (0.1, 0, 12, 1, 0, "ROUND", False),     # wider than int8
    (0.1, 0, 4, 1, 0, "CEIL", False),
    (0.1, 0, 4, 1, 0, "FLOOR", False),
    (0.1, 0, 1, 1, 0, "ROUND", False),      # 1-bit signed: bipolar
], ids=["int8", "uint8", "int8n", "ternary_pc", "int4_pc", "uint4n", "zp3", "int12", "ceil", "floor", "1bit"])
def test_rewrite_qonnx_computes_qonnx_quant(scale, zp, bits, signed, narrow, mode, qcdq):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 4)) * 3).astype(np.float32)
    x.reshape(-1)[:8] = np.array([0.05, -0.05, 0.15, 0.25, -0.35, 12.75, -12.85, 0.0], np.float32)  # ties
    got, ops = _run_rewritten(_quant_model(scale, zp, bits, signed, narrow, mode), x)
    want = _qonnx_oracle(x, np.asarray(scale, np.float32), np.float32(zp), bits, signed, narrow, mode)
    np.testing.assert_array_equal(got, want)
    assert ("QuantizeLinear" in ops) == qcdq


def test_rewrite_bipolar_quant():
    x = np.array([[-1.5, -0.0, 0.0, 2.0]], np.float32).reshape(1, 1, 2, 2)
    got, _ = _run_rewritten(_quant_model(0.5, None, None, None, None, None, (1, 1, 2, 2), "BipolarQuant"), x)
    np.testing.assert_array_equal(got, np.where(x >= 0, 0.5, -0.5).astype(np.float32))


def _with_node(path, mutate):
    model = onnx.load(path)
    mutate(model)
    return model


def test_qonnx_refusals_name_the_node(tmp_path):
    path, _ = _fixture("ternary", "qonnx")

    def trunc(m):
        m.graph.node[0].op_type = "Trunc"
    with pytest.raises(UnsupportedOpError, match="Trunc.*QONNX op that dlac does not rewrite"):
        compile_model(_with_node(path, trunc), stop_after="import")

    def rounding(m):
        for a in m.graph.node[0].attribute:
            if a.name == "rounding_mode":
                a.s = b"STOCHASTIC"
    with pytest.raises(ModelLoadError, match="node_.*rounding_mode 'STOCHASTIC'"):
        compile_model(_with_node(path, rounding), stop_after="import")

    def dynamic_scale(m):          # the scale computed from the input: not a constant
        q = m.graph.node[0]
        m.graph.node.insert(0, oh.make_node("ReduceMax", ["x"], ["dyn_scale"], keepdims=0))
        q.input[1] = "dyn_scale"
    with pytest.raises(ModelLoadError, match="scale 'dyn_scale' is not a constant"):
        compile_model(_with_node(path, dynamic_scale), stop_after="import")

    def bit_width(m):
        name = m.graph.node[0].input[3]
        t = next(t for t in m.graph.initializer if t.name == name)
        t.CopyFrom(nh.from_array(np.array(2.5, np.float32), name))
    with pytest.raises(ModelLoadError, match=r"bit width \[2.5\] is not one integer"):
        compile_model(_with_node(path, bit_width), stop_after="import")

    bad = tmp_path / "bad.onnx"
    onnx.save(_with_node(path, rounding), str(bad))
    from click.testing import CliRunner

    from compiler.cli import main

    res = CliRunner().invoke(main, ["compile", str(bad), "-o", str(tmp_path / "bad.dlac")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlac: error:") and "rounding_mode" in lines[0]
