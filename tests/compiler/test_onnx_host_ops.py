"""ONNX ops that run on the host (compiler/oplist.py ``HOST_ONNX_OPS``), as an exporter
writes them (constant scales, axes and shapes): a conv on dLAC followed by the op, exported
by torch.onnx, compiled with ``--quant none`` and run on the interpreter; the outputs match
onnxruntime within 1e-5 relative."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from target_dlac.sim.host import HostRunner  # noqa: E402
from target_dlac.sim.interpreter import run  # noqa: E402
from tests.e2e.test_host_ops import ConvThen, Lambda as Fn  # noqa: E402


#: name -> (tail module, ONNX op types the export must contain, opset)
CASES = {
    "resize_nearest": (Fn(lambda y: F.interpolate(y, scale_factor=2, mode="nearest")), {"Resize"}, 17),
    "resize_bilinear": (Fn(lambda y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)),
                        {"Resize"}, 17),
    "prelu": (nn.PReLU(8), {"PRelu"}, 17),
    "layer_norm": (nn.LayerNorm([8, 6, 6]), {"LayerNormalization"}, 17),
    "group_norm": (nn.GroupNorm(2, 8), {"InstanceNormalization"}, 17),
    "instance_norm": (nn.InstanceNorm2d(8, affine=True), {"InstanceNormalization"}, 17),
    "l2_normalize": (Fn(lambda y: F.normalize(y, dim=1)), {"ReduceL2"}, 17),
    "where_greater": (Fn(lambda y: torch.where(y > 0.1, y, -y)), {"Greater", "Where"}, 17),
    "cumsum": (Fn(lambda y: torch.cumsum(y, dim=3)), {"CumSum"}, 17),
    "elu_softplus_mish": (Fn(lambda y: F.mish(F.softplus(F.elu(y)))), {"Elu", "Softplus"}, 17),
    "tile": (Fn(lambda y: y.repeat(1, 1, 2, 1)), {"Tile"}, 17),
    "depth_to_space": (nn.PixelShuffle(2), {"DepthToSpace"}, 17),
    "erf_log": (Fn(lambda y: torch.log(1.5 + torch.erf(y))), {"Erf", "Log"}, 17),
}
FAST = ("resize_nearest", "prelu", "where_greater")


def _export(model, x, opset):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, 10)
    return m


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_host_onnx_op_matches_onnxruntime(name):
    tail, ops, opset = CASES[name]
    torch.manual_seed(0)
    model = ConvThen(tail).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 6, 6)
    m = _export(model, x, opset)
    assert ops <= {n.op_type for n in m.graph.node}, [n.op_type for n in m.graph.node]
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    prog = build_program(compile_model(m, config=QuantConfig.full_precision()), reference=False)
    host = HostRunner(prog) if prog.host is not None else None
    got = run(prog, {prog.inputs[0].name: x.numpy()}, host_runner=host)[0]["output_0"]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), name
    assert any(layer["op"] != "host" for layer in prog.meta["layers"]), "the conv runs on dLAC"
