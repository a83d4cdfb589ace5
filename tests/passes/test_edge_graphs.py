"""Graph shapes that stress the passes: a layer that is the model's output, a layer
output used twice, batch-norm that cannot fold, per-channel Mul/Add after a conv
(ONNX), and max-pool between a conv and its scale."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compiler import QuantConfig, compile_model, run_reference
from compiler.models import randomize_bn
from tests.ir_helpers import op_histogram
from tests.conftest import max_rel_err, to_onnxruntime


class LastLinearNoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)

    def forward(self, x):
        y = torch.relu(self.mid(torch.relu(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.max_pool2d(y, 2), 1))


class SharedOutput(nn.Module):
    """A conv output read twice, and a BN whose conv output is also read elsewhere."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = torch.relu(y) + y
        z = self.conv2(y)
        w = self.bn(z) + z
        return self.conv3(torch.relu(w))


def _check(model, x, configs=(QuantConfig.full_precision(), QuantConfig.all_ternary())):
    with torch.no_grad():
        ref = model(x).numpy()
    for cfg in configs:
        result = compile_model(model, (x,), config=cfg)
        outs = {s: run_reference(result.reference_module(s), x.numpy())[0]
                for s in ("quantize", "fold", "partition")}
        assert max_rel_err(outs["fold"], outs["quantize"]) < 1e-5
        assert max_rel_err(outs["partition"], outs["quantize"]) < 1e-6
        if cfg.weights == "fp32":
            assert np.abs(outs["partition"] - ref).max() < 1e-5
    return result


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["torch", "onnx"])
def test_layer_as_model_output(frontend, tmp_path):
    torch.manual_seed(0)
    model = LastLinearNoBias().eval()
    x = torch.randn(2, 3, 8, 8)
    if frontend == "torch":
        result = _check(model, x)
    else:
        path = tmp_path / "m.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
        ref = to_onnxruntime(onnx.load(str(path))).run(None, {"x": x.numpy()})[0]
        result = compile_model(str(path), config=QuantConfig.all_ternary())
        q, p = (run_reference(result.reference_module(s), x.numpy())[0] for s in ("quantize", "partition"))
        assert max_rel_err(p, q) < 1e-5
        fp = compile_model(str(path), config=QuantConfig.full_precision())
        assert np.abs(run_reference(fp.reference_module(), x.numpy())[0] - ref).max() < 1e-5
    assert result.layers[-1].name == "fc"


@pytest.mark.slow
def test_shared_outputs_and_unfoldable_bn():
    torch.manual_seed(1)
    model = randomize_bn(SharedOutput(), seed=4)
    result = _check(model, torch.randn(1, 3, 8, 8))
    hist = op_histogram(result.stages["canonicalize"])
    assert "nn.batch_norm" not in hist and hist["multiply"] == 1    # BN became x * s + t


def test_per_channel_mul_add_after_conv_folds_into_epilogue():
    """ONNX Conv -> Mul(per-channel) -> Add(per-channel) -> Relu: one epilogue."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32), "s")
    t = numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "t")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [w, s, t, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    ref = to_onnxruntime(model).run(None, {"x": x})[0]
    for cfg, mults in ((QuantConfig.full_precision(), 0), (QuantConfig.all_ternary(), 2)):
        result = compile_model(model, config=cfg)
        hist = op_histogram(result.stages["fold"])
        assert hist.get("multiply", 0) == mults and hist["add"] == 2
        out = run_reference(result.reference_module(), x)[0]
        if mults == 0:
            assert np.abs(out - ref).max() < 1e-5
        else:
            q = run_reference(result.reference_module("quantize"), x)[0]
            assert max_rel_err(out, q) < 1e-5
