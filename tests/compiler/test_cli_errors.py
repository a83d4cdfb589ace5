"""CLI errors are one clear line with a non-zero exit; bad configuration is refused."""

from __future__ import annotations


import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


from compiler.config import QuantConfig  # noqa: E402
from target_dlac.core.errors import (  # noqa: E402
    ConfigError,
    NotOnnxError,
)
from compiler.pipeline import compile_model  # noqa: E402

TOL = 1e-5


from tests.bad_models import *  # noqa: E402,F401,F403  (builders and fixtures)
from tests.cli_helpers import cli


# ------------------------------------------------------------------------- 7. CLI

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
    result = cli(["compile", path])
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert str(path) in line


def test_cli_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    line = _one_error_line(cli(["compile", path]))
    assert str(path) in line and "no such file" in line


def test_cli_unsupported_op(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(conv_onnx(extra="topk"), str(path))
    line = _one_error_line(cli(["compile", path]))
    assert "'TopK'" in line and "'my_topk'" in line


def test_cli_tuning_log_needs_output(good_onnx):
    result = cli(["compile", good_onnx, "--tuning-log", "log.jsonl"])
    line = _one_error_line(result)
    assert result.exit_code == 2
    assert "--tuning-log" in line and "-o OUT.dlac" in line


@pytest.mark.parametrize("spec, fragment", [
    ("x=bogus", "'bogus'"),
    ("x=2x3x8", None),              # parses, but the rank is wrong for the model
    ("x=0x3x8x8", "positive"),
    ("bogus", "NAME=1x3x224x224"),
])
def test_cli_bad_input_shape(dyn_onnx, spec, fragment):
    result = cli(["compile", dyn_onnx, "--input-shape", spec])
    line = _one_error_line(result)
    assert fragment is None or fragment in line
    if fragment is None:
        assert "'x'" in line and "(2, 3, 8)" in line


def test_cli_dynamic_shape_hint_then_success(dyn_onnx):
    line = _one_error_line(cli(["compile", dyn_onnx]))
    assert "'x'" in line and "--input-shape x=" in line
    ok = cli(["compile", dyn_onnx, "--input-shape", "x=2x3x8x8"])
    assert ok.exit_code == 0, ok.output
    assert "dlac: error" not in ok.output
    assert "dLAC regions:" in ok.stdout


def test_cli_unknown_extension(tmp_path):
    path = tmp_path / "model.xyz"
    path.write_bytes(b"x")
    result = cli(["compile", path])
    line = _one_error_line(result)
    assert result.exit_code == 2 and "model.xyz" in line


def test_cli_bad_precision_override(good_onnx):
    line = _one_error_line(cli(["compile", good_onnx, "--precision", "conv*=int3"]))
    assert "'int3'" in line and "conv*" in line


def test_cli_debug_shows_the_exception(tmp_path):
    path = _write_bad_onnx(tmp_path, "random")
    result = cli(["compile", path, "--debug"])
    assert result.exit_code != 0
    assert isinstance(result.exception, NotOnnxError)


# ------------------------------------------------------------------ 8. QuantConfig

@pytest.mark.parametrize("kwargs, fragment", [
    ({"weights": "int3"}, "'int3'"),
    ({"granularity": "cube"}, "'cube'"),
    ({"threshold_factor": -0.5}, "-0.5"),
    ({"threshold_factor": 10.0}, "10.0"),
    ({"overrides": {"layer4.*": "int2"}}, "'int2'"),
    ({"cluster_size": -1}, "cluster_size"),
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

