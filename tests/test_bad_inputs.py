"""How dlac handles bad input: every user mistake must end in a DlacError
subclass whose message names the offending thing (file, op, node, input).

Tiny models only (1-3 x 3 x 8 x 8 inputs, 4 channels); the whole file runs in
well under a minute on 2 cores.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compiler.config import QuantConfig  # noqa: E402
from compiler.errors import (  # noqa: E402
    ConfigError,
    DlacError,
    DynamicShapeError,
    ExportError,
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


class CumSum(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


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
    ort = pytest.importorskip("onnxruntime")
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


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


@pytest.mark.parametrize("cls, op, node", [
    (CumSum, "relax.cumsum", None),                     # imports, but no placement
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


# --------------------------------------------------------------- 4. torch export fails

def test_torch_export_data_dependent_control_flow():
    with pytest.raises(ExportError) as ei:
        from_torch(DataDependentBranch(), torch.randn(1, 3, 8, 8))
    assert isinstance(ei.value, ModelLoadError)
    assert "DataDependentBranch" in str(ei.value)
    assert "torch.export failed" in str(ei.value)


def test_torch_export_wrong_example_input():
    with pytest.raises(ExportError) as ei:
        from_torch(tiny_net(), torch.randn(1, 5, 8, 8))  # 5 channels into a 3-channel conv
    assert "TinyNet" in str(ei.value)


@pytest.mark.parametrize("obj", [lambda x: x, "model", None], ids=["lambda", "str", "None"])
def test_from_torch_not_a_module(obj):
    with pytest.raises(ModelLoadError) as ei:
        from_torch(obj, torch.randn(1, 3, 8, 8))
    assert "torch.nn.Module" in str(ei.value)
    assert type(obj).__name__ in str(ei.value)


def test_compile_torch_module_without_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        compile_model(tiny_net())


# ------------------------------------------------------------------------ 5. .pt2

def _write_bad_pt2(tmp_path, kind: str):
    import zipfile

    path = tmp_path / f"{kind}.pt2"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(3).bytes(512))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "state_dict":  # a common mistake: torch.save instead of torch.export.save
        torch.save(tiny_net().state_dict(), str(path))
    elif kind == "other_zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a program")
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "state_dict", "other_zip"])
def test_pt2_not_an_export_archive(tmp_path, kind):
    path = _write_bad_pt2(tmp_path, kind)
    with pytest.raises(ModelLoadError) as ei:
        from_pt2(path)
    assert str(path) in str(ei.value)
    assert "torch.export" in str(ei.value)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        load_model(str(path))


def test_pt2_round_trip_matches_torch(tmp_path):
    net = tiny_net()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    imported = from_pt2(path)
    assert imported.source == "pt2"
    assert imported.input_shapes == {"x": (1, 3, 8, 8)}
    (out,) = run_reference(imported.mod, x.numpy())
    with torch.no_grad():
        expect = net(x).numpy()
    assert np.abs(out - expect).max() < TOL


# --------------------------------------------------------------- 6. load_model dispatch

@pytest.mark.parametrize("name", ["model.xyz", "model.pt", "model.onnx.bak", "model"])
def test_load_model_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ConfigError) as ei:
        load_model(str(path))
    assert name in str(ei.value)


FACTORY_FILE = textwrap.dedent('''
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    def make():
        torch.manual_seed(0)
        return Tiny().eval(), (torch.randn(1, 3, 8, 8),)

    not_callable = 3

    def returns_int():
        return 5

    def returns_triple():
        return Tiny(), (torch.randn(1, 3, 8, 8),), "extra"

    def returns_non_module():
        return object(), (torch.randn(1, 3, 8, 8),)

    def raises():
        raise RuntimeError("factory blew up")
''')


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(FACTORY_FILE)
    return path


def test_factory_file_missing(tmp_path):
    path = tmp_path / "nope.py"
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{path}:make")
    assert str(path) in str(ei.value) and "no such file" in str(ei.value)


def test_factory_file_does_not_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def make(:\n")
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{path}:make")
    assert str(path) in str(ei.value) and "SyntaxError" in str(ei.value)


@pytest.mark.parametrize("name", ["missing", "not_callable"])
def test_factory_name_not_found(factory_file, name):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factory_file}:{name}")
    assert str(factory_file) in str(ei.value) and f"'{name}'" in str(ei.value)


@pytest.mark.parametrize("name", ["returns_int", "returns_triple"])
def test_factory_returns_wrong_thing(factory_file, name):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factory_file}:{name}")
    assert str(factory_file) in str(ei.value) and f"'{name}()'" in str(ei.value)


def test_factory_returns_non_module(factory_file):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factory_file}:returns_non_module")
    assert "torch.nn.Module" in str(ei.value) and "object" in str(ei.value)


def test_factory_that_raises(factory_file):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factory_file}:raises")
    assert str(factory_file) in str(ei.value)


def test_factory_spec_without_name(factory_file):
    with pytest.raises(ConfigError, match="FILE.py:FACTORY"):
        load_model(f"{factory_file}:")


def test_good_factory_compiles(factory_file):
    result = compile_model(f"{factory_file}:make")
    assert result.source == "torch"
    assert list(result.stages) == ["import", "canonicalize", "quantize", "fold", "partition"]
    assert result.input_shapes == {"x": (1, 3, 8, 8)}
    assert [layer.name for layer in result.layers] == ["conv"]


# ------------------------------------------------------------------------- 7. CLI

def _cli(args):
    from click.testing import CliRunner

    from compiler.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dlac: error:"), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("kind", ["random", "empty", "truncated"])
def test_cli_garbage_onnx(tmp_path, kind):
    path = _write_bad_onnx(tmp_path, kind)
    result = _cli(["compile", path])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert str(path) in line


def test_cli_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    line = _one_error_line(_cli(["compile", path]))
    assert str(path) in line and "no such file" in line


def test_cli_unsupported_op(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(conv_onnx(extra="topk"), str(path))
    line = _one_error_line(_cli(["compile", path]))
    assert "'TopK'" in line and "'my_topk'" in line


def test_cli_quant_not_yet_supported(good_onnx):
    result = _cli(["compile", good_onnx, "--quant", "int4"])
    line = _one_error_line(result)
    assert result.exit_code == 2
    assert "int4" in line and "not yet supported" in line


@pytest.mark.parametrize("spec, fragment", [
    ("x=bogus", "'bogus'"),
    ("x=2x3x8", None),              # parses, but the rank is wrong for the model
    ("x=0x3x8x8", "positive"),
    ("bogus", "NAME=1x3x224x224"),
])
def test_cli_bad_input_shape(dyn_onnx, spec, fragment):
    result = _cli(["compile", dyn_onnx, "--input-shape", spec])
    line = _one_error_line(result)
    assert fragment is None or fragment in line
    if fragment is None:
        assert "'x'" in line and "(2, 3, 8)" in line


def test_cli_dynamic_shape_hint_then_success(dyn_onnx):
    line = _one_error_line(_cli(["compile", dyn_onnx]))
    assert "'x'" in line and "--input-shape x=" in line
    ok = _cli(["compile", dyn_onnx, "--input-shape", "x=2x3x8x8"])
    assert ok.exit_code == 0, ok.output
    assert "dlac: error" not in ok.output
    assert "dLAC regions:" in ok.stdout


def test_cli_unknown_extension(tmp_path):
    path = tmp_path / "model.xyz"
    path.write_bytes(b"x")
    result = _cli(["compile", path])
    line = _one_error_line(result)
    assert result.exit_code == 2 and "model.xyz" in line


def test_cli_bad_precision_override(good_onnx):
    line = _one_error_line(_cli(["compile", good_onnx, "--precision", "conv*=int3"]))
    assert "'int3'" in line and "conv*" in line


def test_cli_debug_shows_the_exception(tmp_path):
    path = _write_bad_onnx(tmp_path, "random")
    result = _cli(["compile", path, "--debug"])
    assert result.exit_code != 0
    assert isinstance(result.exception, NotOnnxError)


# ------------------------------------------------------------------ 8. QuantConfig

@pytest.mark.parametrize("kwargs, fragment", [
    ({"weights": "int3"}, "'int3'"),
    ({"granularity": "cube"}, "'cube'"),
    ({"threshold_factor": -0.5}, "-0.5"),
    ({"threshold_factor": 10.0}, "10.0"),
    ({"overrides": {"layer4.*": "int8"}}, "'int8'"),
])
def test_bad_quant_config(kwargs, fragment):
    with pytest.raises(ConfigError) as ei:
        QuantConfig(**kwargs)
    assert fragment in str(ei.value)


def test_bad_stage_name(good_onnx):
    with pytest.raises(ConfigError, match="'lower'"):
        compile_model(str(good_onnx), stop_after="lower")


def test_reference_module_of_stage_not_run(good_onnx):
    result = compile_model(str(good_onnx), stop_after="import")
    with pytest.raises(ConfigError, match="'partition'"):
        result.reference_module("partition")
