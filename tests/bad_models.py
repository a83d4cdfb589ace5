"""Builders and fixtures shared by the bad-input tests (tiny models only)."""

from __future__ import annotations


import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


from tests.conftest import to_onnxruntime  # noqa: E402

TOL = 1e-5

__all__ = ["conv_onnx", "TinyNet", "DataDependentBranch", "Conv1d", "NonZero", "tiny_net",
           "good_onnx", "dyn_onnx", "dyn_pt2", "ort_run", "TOL", "_write_bad_onnx"]


# --------------------------------------------------------------------------- models

def conv_onnx(batch=1, extra: str | None = None) -> "onnx.ModelProto":
    """x[batch,3,8,8] -> Conv(4 filters, 3x3, pad 1) -> Relu -> y (+ an optional bad node).

    ``batch`` may be a string (a ``dim_param``).  ``extra``: ``"topk"`` appends a
    TopK node named ``my_topk``; ``"topk_unnamed"`` the same without a name;
    ``"custom"`` a ``com.example::MyOp`` node named ``my_custom``.
    """
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu0")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])
    opsets = [helper.make_opsetid("", 17)]
    if extra in ("topk", "topk_unnamed"):
        inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "k"))
        nodes.append(helper.make_node("TopK", ["y", "k"], ["v", "i"], axis=-1,
                                      name="my_topk" if extra == "topk" else ""))
        out = helper.make_tensor_value_info("v", TensorProto.FLOAT, [batch, 4, 8, 2])
    elif extra == "custom":
        nodes.append(helper.make_node("MyOp", ["y"], ["z"], name="my_custom", domain="com.example"))
        out = helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 4, 8, 8])
        opsets.append(helper.make_opsetid("com.example", 1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph(nodes, "tiny", [x], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime 1.31 refuses
    return model


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class DataDependentBranch(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class Conv1d(torch.nn.Module):
    """``relax.nn.conv1d``: TVM imports it; dLAC has no lowering and the host format no form."""

    def forward(self, x):
        return torch.nn.functional.conv1d(x.flatten(2), torch.ones(3, 3, 1))


class NonZero(torch.nn.Module):
    def forward(self, x):
        return torch.nonzero(x)


def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "good.onnx"
    onnx.save(conv_onnx(), str(path))
    return path


@pytest.fixture(scope="module")
def dyn_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "dyn.onnx"
    onnx.save(conv_onnx(batch="N"), str(path))
    return path


@pytest.fixture(scope="module")
def dyn_pt2(tmp_path_factory):
    """A .pt2 exported with a dynamic batch dimension, and its module."""
    net = tiny_net()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(net, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("pt2") / "dyn.pt2"
    torch.export.save(ep, str(path))
    return path, net


def ort_run(model, x: np.ndarray) -> np.ndarray:
    return to_onnxruntime(model).run(None, {"x": x})[0]


# --------------------------------------------------------------- 1. not an ONNX file

def _write_bad_onnx(tmp_path, kind: str):
    path = tmp_path / f"{kind}.onnx"
    if kind == "random":
        data = np.random.default_rng(1).bytes(512)
    elif kind == "text":
        data = b"this is a text file, not a model\nsecond line\n"
    elif kind == "empty":
        data = b""
    elif kind == "truncated":
        full = conv_onnx().SerializeToString()
        data = full[: len(full) // 2]
    elif kind == "protobuf_no_graph":
        data = b"\x08\x07"  # a valid ModelProto with ir_version=7 and nothing else
    else:
        raise AssertionError(kind)
    path.write_bytes(data)
    return path
