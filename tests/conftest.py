"""Shared fixtures: small models, their ONNX exports, and an error metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler.models import randomize_bn, small_resnet


def max_rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref| (the metric the project reports)."""
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def to_onnxruntime(model_proto):
    """An onnxruntime session for ``model_proto`` (onnx 1.23 writes IR v14; ORT 1.31 wants <= 10)."""
    import onnxruntime as ort

    model_proto.ir_version = min(model_proto.ir_version, 10)
    return ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def resnet_small():
    torch.manual_seed(0)
    return randomize_bn(small_resnet(num_classes=10), seed=1)


@pytest.fixture(scope="session")
def resnet_input():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))


@pytest.fixture(scope="session")
def resnet_onnx(resnet_small, resnet_input, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small_resnet.onnx"
    torch.onnx.export(resnet_small, (resnet_input,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"])
    return path


@pytest.fixture
def tiny_factory(tmp_path):
    """``"FILE.py:make"``: the CLI helpers' tiny conv net as a factory module in ``tmp_path``."""
    from tests.cli_helpers import FACTORY

    path = tmp_path / "fac.py"
    path.write_text(FACTORY)
    return f"{path}:make"
