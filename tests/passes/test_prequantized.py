"""Pre-quantized ONNX models keep their own integer weights.

* QDQ from onnxruntime's ``quantize_static`` (int8 weights behind DequantizeLinear, per
  tensor and per channel; activations fake-quantized by QuantizeLinear/DequantizeLinear);
* ternary QCDQ as brevitas exports it (``QuantizeLinear -> Clip(-1, 1) ->
  DequantizeLinear`` on float weights), with BatchNormalization kept after the convs;
* QOperator models (QLinearConv ...) are refused with a clear error.

Numerics: the fold stage equals onnxruntime running the QDQ graph as written
(``ORT_ENABLE_BASIC``), and the ISA interpreter equals the TVM reference of the fold
stage within 1e-5.  onnxruntime's default ``ORT_ENABLE_ALL`` fuses QDQ into integer
kernels (QLinearConv, QGemm) whose requantization rounds differently; on this net they
are 8e-2..1.3e-1 (max|diff|/max|ref|, 20 inputs) from the QDQ graph, and 7e-2..1.3e-1 from
the float model, so they are no reference for the graph's own semantics.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from torch import nn

from compiler import QuantConfig, compile_model, run_reference
from compiler.build import build_program
from target_dlac.core.errors import UnsupportedOpError
from compiler.models import randomize_bn
from passes.fold_prequantized import fold_prequantized, weight_kind
from passes.layers import find_layers
from target_dlac.sim.host import HostRunner
from target_dlac.sim.interpreter import run
from tests.conftest import max_rel_err

ort_q = pytest.importorskip("onnxruntime.quantization")

SHAPE = (1, 3, 8, 8)
TOL = 1e-5


def _inputs(n=4, seed=100):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(n)]


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class _Reader(ort_q.CalibrationDataReader):
    def __init__(self):
        self._it = iter({"x": x} for x in _inputs(8, seed=7))

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(ConvNet(), seed=3).eval()
    path = tmp_path_factory.mktemp("pq") / "float.onnx"
    torch.onnx.export(model, (torch.zeros(SHAPE),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return path


def _quantize(float_path, fmt, per_channel):
    out = float_path.parent / f"q_{fmt}_{per_channel}.onnx"
    ort_q.quantize_static(str(float_path), str(out), _Reader(),
                          quant_format=getattr(ort_q.QuantFormat, fmt), per_channel=per_channel,
                          activation_type=ort_q.QuantType.QInt8, weight_type=ort_q.QuantType.QInt8)
    return onnx.load(str(out))


def _session(model, level="ORT_ENABLE_BASIC"):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, 10)       # onnx 1.23 writes 14; ORT 1.31 wants <= 10
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _weight_ints(model):
    """The integer weights of each Conv/Gemm/MatMul in node order, in dlac's layer layout
    (Conv OIHW; Gemm with transB -> (K, N)), from the DequantizeLinear initializers."""
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q = inits[dq.input[0]]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        out.append(q.T if node.op_type == "Gemm" and trans_b else q)
    return out


def _interpret(result, xs):
    prog = build_program(result, reference=False)
    host = HostRunner(prog) if prog.host is not None else None
    (name,) = result.input_names
    return prog, [run(prog, {name: x}, host_runner=host)[0]["output_0"] for x in xs]


# ------------------------------------------------------------------ QDQ (onnxruntime)

@pytest.fixture(scope="module", params=[True, False], ids=["per_channel", "per_tensor"])
def qdq(request, float_onnx):
    model = _quantize(float_onnx, "QDQ", request.param)
    return model, compile_model(model)


def test_qdq_layers_keep_the_models_integers(qdq):
    model, result = qdq
    ints = _weight_ints(model)
    assert [(l.name, l.precision, l.reason) for l in result.layers] == \
        [(n, weight_kind(q), "pre-quantized") for n, q in zip(("c1", "c2", "fc"), ints)]
    assert {l.precision for l in result.layers} <= {"int8", "int4", "ternary"}
    layers = find_layers(result.stages["fold"]["main"])     # after MultiplyToAccumulate
    assert [l.name for l in layers] == ["c1", "c2", "fc"]
    for layer, q in zip(layers, ints):
        w = layer.weight
        assert w.dtype == np.int8 and w.shape == q.shape, layer.name
        np.testing.assert_array_equal(w, q, err_msg=layer.name)


@pytest.mark.slow
def test_qdq_matches_onnxruntime_and_interpreter(qdq):
    model, result = qdq
    xs = _inputs()
    qdq_sess = _session(model)
    y_scale = float(nh.to_array(next(t for t in model.graph.initializer if t.name == "y_scale")))
    refs = [run_reference(result.reference_module("fold"), x)[0] for x in xs]
    for x, ref in zip(xs, refs):
        ort_out = qdq_sess.run(None, {"x": x})[0]
        # the fold stage computes conv(x, q) * s where ORT computes conv(x, q * s): the float32
        # results may differ in the last bit, enough to round one activation to the next
        # quantization step when it sits on a boundary; allow two output steps (measured: 0)
        assert np.abs(ref - ort_out).max() <= 2 * y_scale
    _, outs = _interpret(result, xs)
    for out, ref in zip(outs, refs):
        assert max_rel_err(out, ref) <= TOL


@pytest.mark.slow
def test_qdq_is_close_to_the_float_model(qdq, float_onnx):
    """Sanity: the QDQ graph dlac compiled is the quantized network, not a broken one
    (activation fake-quant with int8 steps; measured 2.7e-3..4.3e-2 over 20 inputs)."""
    _, result = qdq
    sess = _session(onnx.load(str(float_onnx)))
    for x in _inputs():
        ref = run_reference(result.reference_module("fold"), x)[0]
        assert max_rel_err(ref, sess.run(None, {"x": x})[0]) < 8e-2


def test_qdq_override_fp32_keeps_float_weights(float_onnx):
    model = _quantize(float_onnx, "QDQ", True)
    result = compile_model(model, config=QuantConfig(overrides={"fc": "fp32", "c1": "ternary"}))
    info = {l.name: (l.precision, l.reason) for l in result.layers}
    # the model's own quantization wins over keep_first and a non-fp32 override ...
    assert info["c1"] == ("int8", "pre-quantized") and info["c2"] == ("int8", "pre-quantized")
    # ... an fp32 override wins over it: the dequantized float weights stay
    assert info["fc"] == ("fp32", "override 'fc'")
    fc = {l.name: l for l in find_layers(result.stages["fold"]["main"])}["fc"]
    assert fc.weight.dtype == np.float32
    x = _inputs(1)[0]
    ref = run_reference(result.reference_module("fold"), x)[0]
    out = _session(model).run(None, {"x": x})[0]
    assert np.abs(ref - out).max() <= 2 * float(
        nh.to_array(next(t for t in model.graph.initializer if t.name == "y_scale")))


def test_qoperator_model_is_refused(float_onnx, tmp_path):
    model = _quantize(float_onnx, "QOperator", False)
    with pytest.raises(UnsupportedOpError, match="QLinearConv.*QDQ format"):
        compile_model(model)
    path = tmp_path / "qop.onnx"
    onnx.save(model, str(path))
    from click.testing import CliRunner

    from compiler.cli import main

    res = CliRunner().invoke(main, ["compile", str(path)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlac: error:") and "QLinearConv" in lines[0]


# ------------------------------------------------------------------ ternary QCDQ (brevitas)

def _qcdq(nodes, inits, name, w, per_channel, axis, zp=0):
    """Float initializer ``name`` -> QuantizeLinear -> Clip(-1, 1) -> DequantizeLinear;
    returns the output name and the expected integers."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    s = (0.7 * np.abs(w).mean(axis=red) if per_channel else np.array(0.7 * np.abs(w).mean()))
    s = s.astype(np.float32)
    zps = np.full(s.shape, zp, np.int8)
    inits += [nh.from_array(w.astype(np.float32), name), nh.from_array(s, name + "_scale"),
              nh.from_array(zps, name + "_zp"), nh.from_array(np.array(-1, np.int8), name + "_lo"),
              nh.from_array(np.array(1, np.int8), name + "_hi")]
    nodes += [oh.make_node("QuantizeLinear", [name, name + "_scale", name + "_zp"], [name + "_q"], axis=axis),
              oh.make_node("Clip", [name + "_q", name + "_lo", name + "_hi"], [name + "_c"]),
              oh.make_node("DequantizeLinear", [name + "_c", name + "_scale", name + "_zp"],
                           [name + "_dq"], axis=axis)]
    shape = [1] * w.ndim
    shape[axis] = -1
    sb = s.reshape(shape) if per_channel else s
    q = np.clip(np.rint(w.astype(np.float32) / sb) + zp, -1, 1).astype(np.int8)
    return name + "_dq", q


def ternary_qcdq(per_channel=True, fc_op="Gemm", c2_zero_point=0, seed=0):
    """conv-BN-relu x2, global pool, Gemm (transB) or MatMul; all weights ternary QCDQ.
    Returns the model and the expected integers per layer (dlac layout)."""
    rng = np.random.default_rng(seed)
    nodes, inits, ints = [], [], {}
    w1, ints["c1"] = _qcdq(nodes, inits, "c1.weight", rng.standard_normal((8, 3, 3, 3)) * 0.3, per_channel, 0)
    w2, ints["c2"] = _qcdq(nodes, inits, "c2.weight", rng.standard_normal((16, 8, 3, 3)) * 0.2, per_channel, 0,
                           zp=c2_zero_point)
    if fc_op == "Gemm":       # torch Linear layout (N, K), per output channel along axis 0
        wf, q = _qcdq(nodes, inits, "fc.weight", rng.standard_normal((10, 16)) * 0.3, per_channel, 0)
        ints["fc"] = q.T
    else:                     # MatMul layout (K, N), per output channel along axis 1
        wf, ints["fc"] = _qcdq(nodes, inits, "fc.weight", rng.standard_normal((16, 10)) * 0.3, per_channel, 1)
    for i, c in ((1, 8), (2, 16)):
        inits += [nh.from_array((1 + 0.2 * rng.standard_normal(c)).astype(np.float32), f"bn{i}.gamma"),
                  nh.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"bn{i}.beta"),
                  nh.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"bn{i}.mean"),
                  nh.from_array((0.5 + rng.random(c)).astype(np.float32), f"bn{i}.var")]
    inits.append(nh.from_array((0.1 * rng.standard_normal(10)).astype(np.float32), "fc.bias"))
    nodes += [
        oh.make_node("Conv", ["x", w1], ["a1"], pads=[1, 1, 1, 1], name="/c1/Conv"),
        oh.make_node("BatchNormalization", ["a1", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.var"], ["b1"],
                     name="/bn1/BatchNormalization"),
        oh.make_node("Relu", ["b1"], ["r1"], name="/relu1/Relu"),
        oh.make_node("Conv", ["r1", w2], ["a2"], pads=[1, 1, 1, 1], name="/c2/Conv"),
        oh.make_node("BatchNormalization", ["a2", "bn2.gamma", "bn2.beta", "bn2.mean", "bn2.var"], ["b2"],
                     name="/bn2/BatchNormalization"),
        oh.make_node("Relu", ["b2"], ["r2"], name="/relu2/Relu"),
        oh.make_node("GlobalAveragePool", ["r2"], ["p"], name="/pool/GlobalAveragePool"),
        oh.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
    ]
    if fc_op == "Gemm":
        nodes.append(oh.make_node("Gemm", ["f", wf, "fc.bias"], ["y"], transB=1, name="/fc/Gemm"))
    else:
        nodes += [oh.make_node("MatMul", ["f", wf], ["m"], name="/fc/MatMul"),
                  oh.make_node("Add", ["m", "fc.bias"], ["y"], name="/fc/Add")]
    graph = oh.make_graph(nodes, "ternary_qcdq", [oh.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, ints


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("fc_op", ["Gemm", "MatMul"])
def test_ternary_qcdq(per_channel, fc_op):
    model, ints = ternary_qcdq(per_channel, fc_op)
    result = compile_model(model)
    assert [(l.name, l.precision, l.reason) for l in result.layers] == \
        [(n, "ternary", "pre-quantized") for n in ("c1", "c2", "fc")]
    # BN was not folded into the ternary weights: the fold stage holds the clipped integers
    for layer in find_layers(result.stages["fold"]["main"]):
        assert layer.weight.dtype == np.int8, layer.name
        np.testing.assert_array_equal(layer.weight, ints[layer.name], err_msg=layer.name)
    assert all(r.replaced == r.dense_macs for r in result.multiplies)
    xs = _inputs()
    refs = [run_reference(result.reference_module("fold"), x)[0] for x in xs]
    # no activation quantization: plain float tolerance.  ORT_ENABLE_BASIC, as for QDQ: from
    # ORT_ENABLE_EXTENDED on, ORT rewrites DequantizeLinear -> MatMul into an integer matmul
    # that quantizes the activations on the fly (measured 6.8e-3 from the graph's own values)
    sess = _session(model)
    for x, ref in zip(xs, refs):
        assert max_rel_err(ref, sess.run(None, {"x": x})[0]) <= TOL
    prog, outs = _interpret(result, xs)
    assert prog.host is None                 # everything on dLAC
    for out, ref in zip(outs, refs):
        assert max_rel_err(out, ref) <= TOL


def test_nonzero_weight_zero_point_stays_float():
    model, _ = ternary_qcdq(True, "Gemm", c2_zero_point=1)
    imported = compile_model(model, stop_after="import").stages["import"]
    _, info = fold_prequantized(imported)
    assert set(info.layers) == {"c1", "fc"} and "zero point" in info.skipped["c2"]
    with pytest.warns(UserWarning, match="c2.*zero point"):
        result = compile_model(model, config=QuantConfig.full_precision())
    info = {l.name: (l.precision, l.reason) for l in result.layers}
    assert info == {"c1": ("ternary", "pre-quantized"), "c2": ("fp32", "default"),
                    "fc": ("ternary", "pre-quantized")}
    x = _inputs(1)[0]
    ref = run_reference(result.reference_module("fold"), x)[0]
    assert max_rel_err(ref, _session(model).run(None, {"x": x})[0]) <= TOL
