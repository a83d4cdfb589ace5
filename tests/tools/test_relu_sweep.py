"""tools/relu_sweep.py on a tiny setting: two thresholds, 4 real MNIST test images."""

from __future__ import annotations

import json

import pytest

from tools import relu_sweep

pytestmark = pytest.mark.slow


def test_sweep_writes_numbers_and_plots(tmp_path):
    out = tmp_path / "sweep"
    assert relu_sweep.main(["--thresholds", "0,1.5", "--images", "4", "--check", "2", "-o", str(out)]) == 0
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["threshold"] for r in data["rows"]] == [0.0, 1.5]
    t0, t1 = (r["granularities"] for r in data["rows"])
    for g in ("column", "pe"):
        assert 0 <= t0[g]["accuracy"] <= 1
        # a higher threshold makes more zeros: never more cycles, less dense inputs
        assert t1[g]["cycles_mean"] < t0[g]["cycles_mean"]
        assert t1[g]["layers"]["conv_layers.6"]["act_density"] < t0[g]["layers"]["conv_layers.6"]["act_density"]
        assert t0[g]["cycles_min"] <= t0[g]["cycles_median"] <= t0[g]["cycles_max"]
    assert t0["pe"]["cycles_mean"] < t0["column"]["cycles_mean"]
    assert all(r["reference_agreement"] == "2/2" for r in data["rows"])
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sweep.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_bad_thresholds_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        relu_sweep.main(["--thresholds", "0,-1"])
    assert e.value.code == 2 and ">= 0" in capsys.readouterr().err
