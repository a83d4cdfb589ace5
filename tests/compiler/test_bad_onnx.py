"""Bad ONNX input: files that are not ONNX, ops dlac cannot place, dynamic shapes.
Every mistake must end in a DlacError naming the file, op, node or input."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


from target_dlac.core.errors import (  # noqa: E402
    ConfigError,
    DlacError,
    DynamicShapeError,
    ModelLoadError,
    NotOnnxError,
    UnsupportedOpError,
)
from compiler.frontend_onnx import from_onnx  # noqa: E402
from compiler.frontend_torch import from_pt2, from_torch  # noqa: E402
from compiler.loader import load_model  # noqa: E402
from compiler.oplist import ONNX_OPS  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from compiler.reference import run_reference  # noqa: E402

TOL = 1e-5


from tests.bad_models import *  # noqa: E402,F401,F403  (builders and fixtures)


@pytest.mark.parametrize("kind", ["random", "text", "empty", "truncated", "protobuf_no_graph"])
def test_not_onnx_file(tmp_path, kind):
    path = _write_bad_onnx(tmp_path, kind)
    with pytest.raises(NotOnnxError) as ei:
        from_onnx(path)
    assert str(path) in str(ei.value)
    assert isinstance(ei.value, ModelLoadError)
    # the same through the loader dispatch and the pipeline driver
    with pytest.raises(NotOnnxError, match=re.escape(str(path))):
        load_model(str(path))
    with pytest.raises(NotOnnxError, match=re.escape(str(path))):
        compile_model(str(path))


@pytest.mark.parametrize("entry", ["from_onnx", "from_pt2", "load_model_onnx", "load_model_pt2"])
def test_missing_file(tmp_path, entry):
    path = tmp_path / ("absent.pt2" if entry.endswith("pt2") else "absent.onnx")
    fn = {"from_onnx": from_onnx, "from_pt2": from_pt2,
          "load_model_onnx": load_model, "load_model_pt2": load_model}[entry]
    with pytest.raises(ModelLoadError) as ei:
        fn(str(path))
    assert not isinstance(ei.value, NotOnnxError)  # missing, not malformed
    assert str(path) in str(ei.value)
    assert "no such file" in str(ei.value)


# ------------------------------------------------------------- 2. unplaceable ONNX op

def test_unsupported_onnx_op_named():
    assert "TopK" not in ONNX_OPS
    with pytest.raises(UnsupportedOpError) as ei:
        from_onnx(conv_onnx(extra="topk"))
    e = ei.value
    assert e.op == "TopK"
    assert e.node == "my_topk"
    assert "TopK" in str(e) and "my_topk" in str(e)


def test_unsupported_onnx_op_from_file_names_path(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(conv_onnx(extra="topk"), str(path))
    with pytest.raises(UnsupportedOpError) as ei:
        compile_model(str(path))
    assert ei.value.op == "TopK"
    assert "my_topk" in str(ei.value) and str(path) in str(ei.value)


def test_unsupported_onnx_op_unnamed_node_gets_index():
    with pytest.raises(UnsupportedOpError) as ei:
        from_onnx(conv_onnx(extra="topk_unnamed"))
    assert ei.value.op == "TopK"
    assert ei.value.node == "#2"  # third node of the graph
    assert "'#2'" in str(ei.value)


def test_custom_domain_op():
    with pytest.raises(UnsupportedOpError) as ei:
        from_onnx(conv_onnx(extra="custom"))
    e = ei.value
    assert e.op == "com.example::MyOp"
    assert e.node == "my_custom"
    assert "com.example::MyOp" in str(e) and "my_custom" in str(e)
    assert "custom op domain" in str(e)


def test_dynamic_quantization_gets_a_static_qdq_hint():
    """onnxruntime quantize_dynamic's DynamicQuantizeLinear: refused with what to do instead."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="x_dq"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="x_deq")]
    g = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedOpError) as ei:
        from_onnx(m)
    assert ei.value.op == "DynamicQuantizeLinear" and ei.value.node == "x_dq"
    assert "quantize_static" in str(ei.value) and "QDQ" in str(ei.value)


@pytest.mark.parametrize("cls, op, node", [
    (Conv1d, "relax.nn.conv1d", None),                  # imports, but no placement
    (NonZero, "nonzero", "module NonZero"),             # TVM's torch importer has no converter
])
def test_unsupported_torch_op(cls, op, node):
    with pytest.raises(UnsupportedOpError) as ei:
        from_torch(cls().eval(), torch.randn(1, 3, 8, 8))
    assert op in ei.value.op
    assert op in str(ei.value)
    if node:
        assert ei.value.node == node and node in str(ei.value)


# ----------------------------------------------------------------- 3. dynamic shapes

def test_dynamic_onnx_input_without_shape():
    with pytest.raises(DynamicShapeError) as ei:
        from_onnx(conv_onnx(batch="N"))
    assert ei.value.input_name == "x"
    assert "'x'" in str(ei.value) and "N" in str(ei.value)
    assert "--input-shape x=" in str(ei.value)  # tells the user how to fix it


def test_dynamic_onnx_input_with_shape_matches_onnxruntime(dyn_onnx):
    model = conv_onnx(batch="N")
    result = compile_model(str(dyn_onnx), input_shapes={"x": (2, 3, 8, 8)}, stop_after="import")
    assert result.input_shapes == {"x": (2, 3, 8, 8)}
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (tvm_out,) = run_reference(result.reference_module("import"), {"x": x})
    ort_out = ort_run(model, x)
    assert tvm_out.shape == ort_out.shape == (2, 4, 8, 8)
    assert np.abs(tvm_out - ort_out).max() < TOL


@pytest.mark.parametrize("given, fragment", [
    ((2, 3, 8), "(2, 3, 8)"),                            # wrong rank
    ((2, 3, 8, 8, 1), "(2, 3, 8, 8, 1)"),                # wrong rank
    ((2, 5, 8, 8), "(2, 5, 8, 8)"),                      # conflicts with a static dim
])
def test_dynamic_onnx_conflicting_shape(given, fragment):
    with pytest.raises(DlacError) as ei:
        from_onnx(conv_onnx(batch="N"), {"x": given})
    assert isinstance(ei.value, (ModelLoadError, ConfigError))
    assert "'x'" in str(ei.value) and fragment in str(ei.value)


def test_static_onnx_conflicting_shape():
    with pytest.raises(DlacError) as ei:
        from_onnx(conv_onnx(batch=1), {"x": (2, 3, 8, 8)})
    assert isinstance(ei.value, (ModelLoadError, ConfigError))
    assert "'x'" in str(ei.value) and "(2, 3, 8, 8)" in str(ei.value)


def test_onnx_shape_for_unknown_input():
    with pytest.raises(DlacError) as ei:
        from_onnx(conv_onnx(batch="N"), {"x": (2, 3, 8, 8), "img": (1, 3, 8, 8)})
    assert isinstance(ei.value, (ModelLoadError, ConfigError))
    assert "'img'" in str(ei.value)


@pytest.mark.parametrize("dim", [0, -1])
def test_onnx_nonpositive_given_shape_rejected(dim):
    with pytest.raises(DlacError, match="'x'|positive"):
        from_onnx(conv_onnx(batch="N"), {"x": (dim, 3, 8, 8)})


def test_dynamic_pt2_without_shape(dyn_pt2):
    path, _ = dyn_pt2
    with pytest.raises(DynamicShapeError) as ei:
        from_pt2(path)
    assert ei.value.input_name == "x"
    assert "'x'" in str(ei.value)


def test_dynamic_pt2_with_shape_matches_torch(dyn_pt2):
    path, net = dyn_pt2
    imported = from_pt2(path, {"x": (3, 3, 8, 8)})
    assert imported.input_shapes == {"x": (3, 3, 8, 8)}
    x = torch.randn(3, 3, 8, 8)
    (out,) = run_reference(imported.mod, x.numpy())
    with torch.no_grad():
        expect = net(x).numpy()
    assert np.abs(out - expect).max() < TOL


@pytest.mark.parametrize("given, fragment", [
    ((3, 3, 8), "rank"),
    ((3, 5, 8, 8), "static dimension 3"),
])
def test_dynamic_pt2_conflicting_shape(dyn_pt2, given, fragment):
    path, _ = dyn_pt2
    with pytest.raises(ConfigError) as ei:
        from_pt2(path, {"x": given})
    assert "'x'" in str(ei.value) and fragment in str(ei.value)


def test_dynamic_pt2_nonpositive_given_shape_rejected(dyn_pt2):
    path, _ = dyn_pt2
    with pytest.raises(DlacError, match="'x'|positive"):
        from_pt2(path, {"x": (0, 3, 8, 8)})


@pytest.mark.parametrize("given", [{"x": (7, 7)}, {"img": (1, 3, 8, 8)}])
def test_torch_given_shape_conflict_or_unknown_rejected(given):
    with pytest.raises(DlacError):
        from_torch(tiny_net(), torch.randn(1, 3, 8, 8), given)


