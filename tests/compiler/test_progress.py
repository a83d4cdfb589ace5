"""Codegen progress: ``build_program(progress=...)`` reports each conv / dense layer (index,
total, name, op, dims, precision, seconds); ``dlac compile`` prints the lines on stderr only
for slow layers / long codegens or with ``-v``, and ``--report-json`` is unaffected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("tvm")

from compiler.build import LayerProgress, build_program  # noqa: E402
from tests.cli_helpers import FACTORY, cli  # noqa: E402

LINE = re.compile(r"\[\d/4\] (conv2d|dense) \w+ [\dx@]+ (fp32|ternary)( \(calibration\))? \.\.\. \d+\.\d s")


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:make"


@pytest.fixture(scope="module")
def result(factory):
    from compiler.pipeline import compile_model

    return compile_model(factory)


def test_one_event_per_layer(result):
    events = []
    prog = build_program(result, progress=events.append, reference=False)
    assert all(isinstance(e, LayerProgress) for e in events)
    assert [e.index for e in events] == [1, 2, 3, 4] and {e.total for e in events} == {4}
    assert [e.name for e in events] == [p.name for p in result.layers] == ["conv1", "conv2", "conv3", "fc"]
    assert [e.op for e in events] == ["conv2d", "conv2d", "conv2d", "dense"]
    assert [e.precision for e in events] == ["fp32", "ternary", "ternary", "fp32"]
    # dims from the layer shapes: conv FxCxKHxKW@HxW of its input, dense KxN
    assert [e.dims for e in events] == ["16x1x3x3@16x16", "32x16x3x3@8x8", "32x32x3x3@8x8", "32x10"]
    assert all(e.seconds >= 0 for e in events) and {e.stage for e in events} == {"codegen"}
    assert all(LINE.fullmatch(e.line()) for e in events), [e.line() for e in events]
    # the program is the one built without a callback
    assert prog.constants == build_program(result, reference=False).constants


def test_int8_reports_the_calibration_pass_then_the_codegen(result):
    events = []
    calib = {"x": np.random.default_rng(0).standard_normal((2, 1, 1, 16, 16)).astype(np.float32)}
    build_program(result, progress=events.append, reference=False, activations="int8", calib=calib)
    assert [(e.stage, e.index) for e in events] == [("calibration", i) for i in range(1, 5)] + \
        [("codegen", i) for i in range(1, 5)]
    assert "(calibration)" in events[0].line() and "(calibration)" not in events[-1].line()


def test_fp16_runs_one_codegen(result):
    events = []
    build_program(result, progress=events.append, reference=False, activations="fp16")
    assert [e.index for e in events] == [1, 2, 3, 4]


def _progress_lines(stderr: str) -> list[str]:
    return [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("[")]


@pytest.mark.slow
def test_cli_is_quiet_by_default_and_prints_every_layer_with_v(factory, tmp_path, monkeypatch):
    out, rep = tmp_path / "t.dlac", tmp_path / "r.json"
    quiet = cli(["compile", factory, "-o", out, "--report-json", rep])
    assert quiet.exit_code == 0, quiet.output
    assert _progress_lines(quiet.stderr) == []
    first = json.loads(rep.read_text())
    loud = cli(["compile", factory, "-o", out, "--report-json", rep, "-v"])
    assert loud.exit_code == 0, loud.output
    lines = _progress_lines(loud.stderr)
    assert len(lines) == 4 and all(LINE.fullmatch(ln) for ln in lines), lines
    assert lines[-1].startswith("[4/4] dense fc 32x10 fp32 ... ")
    second = json.loads(rep.read_text())
    first.pop("stage_seconds"), second.pop("stage_seconds")
    assert second == first                                   # -v changes nothing but stderr
    assert "[1/4]" not in loud.stdout                        # progress goes to stderr only
    # a slow layer is shown without -v (here: every layer counts as slow)
    import compiler.cli_model as cm

    monkeypatch.setattr(cm, "PROGRESS_LAYER_S", 0.0)
    slow = cli(["compile", factory, "-o", out])
    assert slow.exit_code == 0 and len(_progress_lines(slow.stderr)) == 4
