"""torchvision sweep (tools/torchvision_sweep.py), light version: one small model of the
sweep compiled and run in both modes, against PyTorch; the full sweep (every family, tens
of minutes) runs only in the tool, and its table is in docs/conformance.md."""

from __future__ import annotations

import pytest

from tests.tool_helpers import load_tool

pytest.importorskip("torch")
try:
    from tools.zoo import import_torchvision

    import_torchvision()
except Exception:  # noqa: BLE001 - torchvision is installed by the Makefile
    pytest.skip("torchvision is not installed", allow_module_level=True)

sweep = load_tool("torchvision_sweep")


@pytest.mark.slow
def test_squeezenet_light_sweep():
    row = sweep.run_one("squeezenet1_1", 32)
    assert sweep.row_ok(row), sweep.format_table([row])
    assert row["none"]["err"] <= sweep.TOLERANCE
    assert sweep.share_ok(row), sweep.format_table([row])         # a CNN: >= 95% of MACs on dLAC
    assert row["ternary"]["layers"]["host"] == 0


def test_failed_rows_fail_and_nan_never_passes():
    ok = {"model": "resnet18", "none": {"ok": True, "err": 1e-7}, "ternary": {"ok": True}}
    assert sweep.row_ok(ok)
    assert not sweep.row_ok({**ok, "none": {"ok": True, "err": 2e-5}})
    assert not sweep.row_ok({**ok, "ternary": {"ok": False, "error": "x"}})
    assert sweep.rel_err([float("nan")], [1.0]) == float("inf")
    assert sweep.rel_err([1.0, 2.0], [1.0]) == float("inf")
