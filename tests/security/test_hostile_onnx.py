"""Hostile model files (issue 11, "Safe model loading"): ONNX models.

- ONNX external data is read from the model's directory, never from the working
  directory or outside the model's directory.
- A Concat with an empty initializer compiles into a binary that runs (the empty input
  adds nothing and is dropped); other empty float operands are refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.cli_helpers import cli, error_line, script_env  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from target_dlac.core.errors import ModelLoadError  # noqa: E402
from compiler.frontend_onnx import from_onnx  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from tests.bad_models import conv_onnx  # noqa: E402


# ----------------------------------------------------------------- ONNX external data

@pytest.fixture
def external(tmp_path):
    """conv_onnx() saved with its weights in model/w.bin; and an unrelated working dir."""
    mdir, cwd = tmp_path / "model", tmp_path / "elsewhere"
    mdir.mkdir()
    cwd.mkdir()
    path = mdir / "m.onnx"
    onnx.save_model(conv_onnx(), str(path), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    assert (mdir / "w.bin").exists()
    return path, cwd


def _relocate(path, dst, **fields):
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key in fields:
                e.value = str(fields[e.key])
        for k, v in fields.items():
            if k not in {e.key for e in t.external_data}:
                t.external_data.add(key=k, value=str(v))
    onnx.save(m, str(dst))
    return dst


def _reference(model_or_path, x):
    result = compile_model(model_or_path, stop_after="import")
    (y,) = run_reference(result.reference_module("import"), {"x": x})
    return y


def test_external_data_is_read_from_the_models_directory(external, monkeypatch):
    path, cwd = external
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expect = _reference(conv_onnx(), x)
    monkeypatch.chdir(cwd)
    assert np.array_equal(_reference(str(path), x), expect)
    # a same-named decoy in the working directory is not used
    (cwd / "w.bin").write_bytes(np.random.default_rng(1).bytes((path.parent / "w.bin").stat().st_size))
    assert np.array_equal(_reference(str(path), x), expect)


@pytest.mark.parametrize("kind, fragment", [
    ("dotdot", "leads out of the model's directory ('..')"),
    ("absolute", "is not a relative file name"),
    ("symlink", "leads out of the model's directory (through a symbolic link)"),
    ("directory", "is not a regular file"),
    ("missing", "names no file"),
    ("beyond", "beyond the file's"),
    ("length", "the tensor (dims [4, 3, 3, 3]) needs 432"),
])
def test_external_data_outside_or_out_of_bounds_is_refused(external, kind, fragment):
    path, cwd = external
    mdir = path.parent
    outside = cwd / "w.bin"
    outside.write_bytes((mdir / "w.bin").read_bytes())
    loc = {"dotdot": "../elsewhere/w.bin", "absolute": str(outside), "symlink": "link.bin",
           "directory": "sub", "missing": "nope.bin"}.get(kind)
    if kind == "symlink":
        os.symlink(outside, mdir / "link.bin")
    if kind == "directory":
        (mdir / "sub").mkdir()
    fields = {"location": loc} if loc else {}
    if kind == "beyond":
        fields["offset"] = 10_000
    if kind == "length":
        fields = {"offset": 0, "length": 4}
    bad = _relocate(path, mdir / "bad.onnx", **fields)
    with pytest.raises(ModelLoadError) as ei:
        from_onnx(str(bad))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: initializer 'W': external data location"), msg
    assert fragment in msg, msg


def test_external_data_of_an_in_memory_model_is_refused(external):
    path, _ = external
    m = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelLoadError, match="initializer 'W': external data location 'w.bin' cannot be resolved"):
        from_onnx(m)


# ------------------------------------------------------------------ empty initializers

def _dlac(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], cwd=cwd,
                          env=script_env(), capture_output=True, text=True, timeout=300)


def _concat_model(nodes, inits, out_shape=(1, 3, 4, 4)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _empty(name="empty", shape=(1, 0, 4, 4)):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


@pytest.mark.slow
def test_concat_with_an_empty_initializer_compiles_and_runs(tmp_path):
    m = _concat_model([helper.make_node("Concat", ["x", "empty"], ["c"], axis=1, name="cat0"),
                       helper.make_node("Relu", ["c"], ["y"], name="relu0")], [_empty()])
    onnx.save(m, str(tmp_path / "cat.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = _dlac("compile", "cat.onnx", "-o", "cat.dlac", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _dlac("run", "cat.dlac", "--input", "x.npy", "--check", "--output", "y.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path / "y.npz") as z:
        (y,) = [z[k] for k in z.files]
    assert np.array_equal(y, np.maximum(x, 0))


@pytest.mark.parametrize("case, fragment", [
    ("all_empty", "node cat0 (Concat): every input is an empty initializer"),
    ("add_empty", "node add0 (Add) reads the empty initializer 'empty' (dims [1, 0, 4, 4])"),
    ("concat_wrong_axis", "node cat0 (Concat) reads the empty initializer 'empty'"),
])
def test_other_empty_operands_are_refused(tmp_path, case, fragment):
    nodes = {
        "all_empty": [helper.make_node("Concat", ["empty", "e2"], ["c"], axis=1, name="cat0"),
                      helper.make_node("Add", ["x", "c"], ["y"], name="add0")],
        "add_empty": [helper.make_node("Add", ["x", "empty"], ["y"], name="add0")],
        "concat_wrong_axis": [helper.make_node("Concat", ["x", "empty"], ["y"], axis=2, name="cat0")],
    }[case]
    m = _concat_model(nodes, [_empty(), _empty("e2")])
    path = tmp_path / f"{case}.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError) as ei:
        compile_model(str(path))
    assert fragment in str(ei.value) and str(path) in str(ei.value)
    res = cli(["compile", path, "-o", tmp_path / "o.dlac"])
    assert fragment in error_line(res, exit_code=1, stdout_empty=False)


def test_empty_integer_shape_operand_is_kept(tmp_path):
    """An empty int64 initializer is a shape / index list (here: concatenated to a Shape)."""
    e = numpy_helper.from_array(np.zeros((0,), np.int64), "e")
    m = _concat_model([helper.make_node("Shape", ["x"], ["s"], name="shape0"),
                       helper.make_node("Concat", ["s", "e"], ["s2"], axis=0, name="cat0"),
                       helper.make_node("Reshape", ["x", "s2"], ["y"], name="reshape0")], [e])
    result = compile_model(m, stop_after="import")
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    (y,) = run_reference(result.reference_module("import"), {"x": x})
    assert np.array_equal(y, x)
