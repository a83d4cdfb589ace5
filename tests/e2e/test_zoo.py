"""Model zoo (tools/zoo.py), the light part: torchvision ResNet-18 and MobileNetV2
(depthwise convs, ReLU6) with random weights at 64x64, compiled in ternary mode (fp32
activations) and in the all-integer mode, run on the interpreter against the TVM CPU
build of the same quantized graph.  The full zoo (ResNet-18/34/50, MobileNetV2 at
224x224) is ``make zoo``, outside the default test run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "zoo.py"
_spec = importlib.util.spec_from_file_location("dlac_zoo_tool", _TOOL)
zoo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = zoo
_spec.loader.exec_module(zoo)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_model_matches_reference(name):
    rows = {r["mode"]: r for r in zoo.run_model(name, 64)}
    assert rows["ternary"]["max_rel_err"] <= 1e-5, rows["ternary"]
    assert rows["int8"]["exact"], rows["int8"]          # all-integer: bit-exact
    for r in rows.values():
        assert r["cycles"] > 0 and r["host_ops"] == 0, r
