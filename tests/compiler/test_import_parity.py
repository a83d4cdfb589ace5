"""Import parity: the TVM CPU reference of the imported (and canonicalized) graph
matches PyTorch / onnxruntime on a ResNet-style net (conv, BN, ReLU, max-pool,
residual add with projection, global average pool, linear)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compiler import QuantConfig, compile_model, run_reference
from compiler.frontend_onnx import from_onnx
from compiler.frontend_torch import from_torch
from tests.ir_helpers import op_histogram
from tests.conftest import to_onnxruntime

FP32 = QuantConfig.full_precision()


@pytest.fixture(scope="module")
def torch_result(resnet_small, resnet_input):
    return compile_model(resnet_small, (resnet_input,), config=FP32)


@pytest.fixture(scope="module")
def onnx_result(resnet_onnx):
    return compile_model(str(resnet_onnx), config=FP32)


@pytest.mark.parametrize("stage", ["import", "canonicalize", "partition"])
def test_torch_export_matches_pytorch(torch_result, resnet_small, resnet_input, stage):
    with torch.no_grad():
        ref = resnet_small(resnet_input).numpy()
    out = run_reference(torch_result.reference_module(stage), resnet_input.numpy())[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("stage", ["import", "canonicalize", "partition"])
def test_onnx_matches_onnxruntime(onnx_result, resnet_onnx, resnet_input, stage):
    sess = to_onnxruntime(onnx.load(str(resnet_onnx)))
    ref = sess.run(None, {"x": resnet_input.numpy()})[0]
    out = run_reference(onnx_result.reference_module(stage), {"x": resnet_input.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-5


@pytest.mark.slow
def test_onnx_dynamo_exporter_matches_onnxruntime(resnet_small, resnet_input, tmp_path):
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(resnet_small, (resnet_input,), str(path), dynamo=True, opset_version=18,
                      external_data=False)
    model = onnx.load(str(path))
    sess = to_onnxruntime(onnx.load(str(path)))
    ref = sess.run(None, {sess.get_inputs()[0].name: resnet_input.numpy()})[0]
    result = compile_model(model, config=FP32)
    out = run_reference(result.reference_module("canonicalize"), resnet_input.numpy())[0]
    assert np.abs(out - ref).max() < 1e-5


def test_both_frontends_name_layers_alike(torch_result, onnx_result):
    names_t = [l.name for l in torch_result.layers]
    names_o = [l.name for l in onnx_result.layers]
    assert names_t == names_o
    assert names_t[0] == "conv1" and names_t[-1] == "fc"
    assert "layer2.0.downsample.0" in names_t


def test_import_binds_weights_and_keeps_ops(resnet_small, resnet_input):
    imported = from_torch(resnet_small, (resnet_input,))
    main = imported.mod["main"]
    assert [p.name for p in main.params] == imported.input_names     # weights are constants, not params
    hist = op_histogram(imported.mod)
    assert hist["nn.conv2d"] == 6 and hist["nn.batch_norm"] == 6 and hist["matmul"] == 1
    assert imported.input_shapes == {imported.input_names[0]: (2, 3, 16, 16)}


def test_canonical_form(torch_result, onnx_result):
    """After canonicalize: no batch-norm, no transpose, one bias add per layer (both frontends)."""
    for result in (torch_result, onnx_result):
        hist = op_histogram(result.stages["canonicalize"])
        assert "nn.batch_norm" not in hist and "permute_dims" not in hist
        assert hist["nn.conv2d"] == 6 and hist["matmul"] == 1
        # 7 bias adds + 2 residual adds
        assert hist["add"] == 9


def test_onnx_modelproto_and_path_agree(resnet_onnx, resnet_input):
    a = from_onnx(str(resnet_onnx))
    b = from_onnx(onnx.load(str(resnet_onnx)))
    x = resnet_input.numpy()
    np.testing.assert_array_equal(run_reference(a.mod, x)[0], run_reference(b.mod, x)[0])
    assert a.source_hash == b.source_hash
