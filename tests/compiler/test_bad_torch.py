"""Bad torch input: modules that fail to export, broken .pt2 files, bad factory files."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


from target_dlac.core.errors import (  # noqa: E402
    ConfigError,
    ExportError,
    ModelLoadError,
)
from compiler.frontend_torch import from_pt2, from_torch  # noqa: E402
from compiler.loader import load_model  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from compiler.reference import run_reference  # noqa: E402

TOL = 1e-5


from tests.bad_models import *  # noqa: E402,F401,F403  (builders and fixtures)


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


