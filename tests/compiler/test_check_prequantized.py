"""``dlac run --check`` on pre-quantized binaries with activation quantizers.

The interpreter's float32 sums are ordered differently from TVM's; a 1-ulp difference at a
rounding boundary moves an activation quantizer's output by one step, and later layers
carry it.  Measured with onnxruntime ``quantize_static`` QDQ (per-channel int8 weights, uint8
activations): three 64-channel convs, one value in 16,384 one step off while TVM's reference
equals onnxruntime bit for bit (max rel err 5e-3;
``test_issue_one_step_flip_against_onnxruntime_passes``); torchvision ResNet-18 at 64x64
(random weights), 4 inputs: two exact, two at max rel err 1.5e-2 (50-53% of the outputs
exact, 44-46% one step off, 3% two steps, top-1 the same or an exact tie).  So for
activation-quantized outputs the check counts quantization steps
(:func:`compiler.cli_binary.quantized_outputs`, ``_check``): it passes when no value is off
by more than ``--max-steps`` (1) and the top-1 class agrees; the float rule stays for
everything else (so ResNet-18 above needs ``--max-steps 2``).  Oracles: the step is read from the ONNX file
(the graph output's DequantizeLinear scale), the outputs from the TVM reference.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper as nh
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from compiler.cli import main
from compiler.cli_args import compare_output
from compiler.cli_binary import _check, quantized_outputs
from compiler.models import randomize_bn
from target_dlac.binary.container import write_program
from target_dlac.sim.host import HostRunner, reference_outputs
from target_dlac.sim.interpreter import run

ort_q = pytest.importorskip("onnxruntime.quantization")

SHAPE = (1, 3, 8, 8)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))


def _inputs(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def qdq(tmp_path_factory):
    """(ONNX QDQ model, compile result, program, binary path, input path, input)."""
    d = tmp_path_factory.mktemp("checkpq")
    torch.manual_seed(0)
    net = randomize_bn(ConvNet(), seed=3).eval()
    fpath, qpath = d / "float.onnx", d / "qdq.onnx"
    torch.onnx.export(net, (torch.zeros(SHAPE),), str(fpath), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])

    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self._it = iter({"x": x} for x in _inputs(8, seed=7))

        def get_next(self):
            return next(self._it, None)

    ort_q.quantize_static(str(fpath), str(qpath), Reader(), quant_format=ort_q.QuantFormat.QDQ,
                          per_channel=True, activation_type=ort_q.QuantType.QUInt8,
                          weight_type=ort_q.QuantType.QInt8)
    model = onnx.load(str(qpath))
    result = compile_model(model)
    prog = build_program(result)
    binary = d / "m.dlac"
    write_program(str(binary), prog)
    x = _inputs(1, seed=100)[0]
    xpath = d / "x.npy"
    np.save(xpath, x)
    return model, result, prog, binary, xpath, x


def _output_step(model) -> float:
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[model.graph.output[0].name]
    assert dq.op_type == "DequantizeLinear"
    return float(inits[dq.input[1]])


def _interpret(prog, x):
    host = HostRunner(prog) if prog.host is not None else None
    return run(prog, {"x": x}, host_runner=host)[0]


def test_quantized_outputs_finds_the_output_step(qdq):
    model, _, prog, *_ = qdq
    act_q, steps = quantized_outputs(prog)
    assert act_q and len(steps) == 1
    assert float(steps[0]) == pytest.approx(_output_step(model), rel=0, abs=0)


@pytest.mark.slow
def test_cli_check_reports_steps_and_top1(qdq, tmp_path):
    model, _, _, binary, xpath, _ = qdq
    rj = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["run", str(binary), "--input", str(xpath), "--check",
                                    "--report-json", str(rj)])
    assert res.exit_code == 0, res.output
    assert "activation-quantized (step" in res.output and "top-1 agrees on 1 of 1" in res.output
    chk = json.loads(rj.read_text())["check"]
    assert chk["mode"] == "quantized" and chk["passed"] and chk["max_steps"] == 1
    (o,) = chk["outputs"]
    assert o["rule"] == "steps" and o["step"] == pytest.approx(_output_step(model), rel=1e-7)
    assert sum(o["steps"].values()) == 10 and o["steps"]["more"] == 0
    assert o["top1"]["rows"] == 1 and o["top1"]["agree"] + o["top1"]["near_tie"] == 1


@pytest.mark.slow
def test_one_step_passes_two_steps_fail(qdq):
    model, _, prog, _, _, x = qdq
    step = _output_step(model)
    (ref,) = reference_outputs(prog, {"x": x})
    top = int(np.argmax(ref))
    low = int(np.argmin(ref))           # far from the top: moving it changes no argmax
    one = ref.copy()
    one.reshape(-1)[low] += step
    problem, chk = _check(prog, {"x": x}, {"output_0": one}, None, 1, refs=[ref])
    assert problem is None and chk["passed"]
    assert chk["outputs"][0]["steps"] == {"exact": 9, "one_step": 1, "more": 0}
    assert chk["outputs"][0]["max_rel_err"] > 1e-5        # the float rule would have failed
    two = ref.copy()
    two.reshape(-1)[low] -= 2 * step
    problem, chk = _check(prog, {"x": x}, {"output_0": two}, None, 1, refs=[ref])
    assert not chk["passed"] and "off by more than 1 quantization step" in problem
    assert _check(prog, {"x": x}, {"output_0": two}, None, 2, refs=[ref])[0] is None      # --max-steps 2
    swapped = ref.copy()                # top-1 moved by many steps: fails whatever --max-steps
    swapped.reshape(-1)[low] = ref.reshape(-1)[top] + 50 * step
    problem, chk = _check(prog, {"x": x}, {"output_0": swapped}, None, 10_000, refs=[ref])
    assert not chk["passed"] and "top-1 class differs" in problem


@pytest.mark.slow
def test_corrupt_weight_fails_the_check(qdq):
    """One weight of the binary's constants changed: the interpreter's outputs move by
    many quantization steps and the check fails (the reference is the uncorrupted one)."""
    _, result, prog, _, _, x = qdq
    fc = next(p for p in result.layers if p.name == "fc")
    q = fc.integers.q                                  # (K, N): the block holds [N, K] row-major
    blob = np.ascontiguousarray(q.T).astype(np.int8).tobytes()
    at = prog.constants.find(blob)
    assert at >= 0, "fc's int8 weights not found in CONSTS"
    j = int(np.argmax(np.abs(q.T).reshape(-1)))
    c = bytearray(prog.constants)
    c[at + j] = np.int8(-q.T.reshape(-1)[j]).view(np.uint8)      # flip the sign of the largest weight
    import copy

    bad = copy.copy(prog)
    bad.constants = bytes(c)
    outs = _interpret(bad, x)
    problem, chk = _check(prog, {"x": x}, outs, None, 1)
    assert not chk["passed"] and problem and chk["outputs"][0]["max_steps"] > 1


@pytest.mark.slow
def test_float_binaries_keep_the_float_rule(tmp_path):
    torch.manual_seed(0)
    net = randomize_bn(ConvNet(), seed=3).eval()
    result = compile_model(net, (torch.zeros(SHAPE),), config=QuantConfig.full_precision())
    prog = build_program(result)
    x = _inputs(1, seed=5)[0]
    (name,) = result.input_names
    host = HostRunner(prog) if prog.host is not None else None
    outs = run(prog, {name: x}, host_runner=host)[0]
    (ref,) = reference_outputs(prog, {name: x})
    problem, chk = _check(prog, {name: x}, outs, None, 1, refs=[ref])
    assert problem is None and chk["mode"] == "float" and chk["max_steps"] is None
    assert chk["outputs"][0]["rule"] == "float" and "steps" not in chk["outputs"][0]
    off = {"output_0": ref * (1 + 1e-3)}
    problem, chk = _check(prog, {name: x}, off, None, 1, refs=[ref])
    assert "exceeds --tolerance 1e-05" in problem


def test_compare_output_counts_steps_and_ties():
    ref = np.array([[0.0, 0.5, 1.0, 1.0], [2.0, 0.0, 0.0, 0.5]], np.float32)
    out = ref.copy()
    out[0, 1] += 0.5            # one step (step 0.5)
    out[0, 3] += 0.5            # one step that breaks the tie at the top: a near tie
    out[1, 2] += 1.5            # three steps
    c = compare_output(out, ref, step=0.5)
    assert c["steps"] == {"exact": 5, "one_step": 2, "more": 1} and c["max_steps"] == 3
    assert c["top1"] == {"rows": 2, "agree": 1, "near_tie": 1}
    assert "steps" not in compare_output(out, ref)            # no step: the float comparison only


class ThreeConvs(nn.Module):
    """Three 64-channel 3x3 convs whose quantized activations are the output: 16,384 output
    values, each a sum of up to 576 products, enough for the interpreter's and TVM's float32
    sums to round one value to a neighbouring quantization step."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))


@pytest.mark.slow
def test_issue_one_step_flip_against_onnxruntime_passes(tmp_path):
    """The issue reproduced: onnxruntime quantize_static (QDQ, per-channel int8 weights, uint8
    activations); TVM's reference equals onnxruntime bit for bit, the interpreter is one step
    off at one value (measured: 1 of 16,384, max rel err 5.0e-3, which the float rule would
    fail), and the check passes in quantization steps."""
    import onnxruntime as ort

    torch.manual_seed(0)
    net = ThreeConvs().eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(6)]
    fpath, qpath = tmp_path / "f.onnx", tmp_path / "q.onnx"
    torch.onnx.export(net, (torch.from_numpy(xs[0]),), str(fpath), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])

    class Reader(ort_q.CalibrationDataReader):
        def __init__(self):
            self._it = iter({"x": x} for x in xs[:4])

        def get_next(self):
            return next(self._it, None)

    ort_q.quantize_static(str(fpath), str(qpath), Reader(), quant_format=ort_q.QuantFormat.QDQ,
                          per_channel=True, activation_type=ort_q.QuantType.QUInt8,
                          weight_type=ort_q.QuantType.QInt8)
    model = onnx.load(str(qpath))
    prog = build_program(compile_model(model))
    binary = tmp_path / "m.dlac"
    write_program(str(binary), prog)
    model.ir_version = min(model.ir_version, 10)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = xs[4]
    (ref,) = reference_outputs(prog, {"x": x})
    np.testing.assert_array_equal(ref, sess.run(None, {"x": x})[0])
    np.save(tmp_path / "x.npy", x)
    rj = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["run", str(binary), "--input", str(tmp_path / "x.npy"), "--check",
                                    "--report-json", str(rj)])
    assert res.exit_code == 0, res.output
    (o,) = json.loads(rj.read_text())["check"]["outputs"]
    assert o["rule"] == "steps" and o["steps"]["more"] == 0
    # the flip itself (it depends on both sides' summation order, measured on this machine)
    assert o["steps"]["one_step"] >= 1 and o["max_rel_err"] > 1e-5
