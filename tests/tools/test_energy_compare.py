"""tools/energy_compare.py on a tiny setting: fp32 vs ternary weights, 2 real MNIST images."""

from __future__ import annotations

import json

import pytest

from tools import energy_compare

pytestmark = pytest.mark.slow


def test_ternary_accumulates_for_less_energy(tmp_path):
    out = tmp_path / "e.json"
    assert energy_compare.main(["--models", "mnist", "--weights", "fp32,ternary", "--activations", "fp32",
                                "--images", "2", "--json", str(out)]) == 0
    rows = {r["weights"]: r for r in json.loads(out.read_text())}
    fp32, tern = rows["fp32"], rows["ternary"]
    for r in rows.values():
        e = r["energy_pj"]
        assert e["total"] == pytest.approx(e["compute"] + e["onchip"] + e["dram"] + e["static"])
        assert sum(r["action_pj"].values()) == pytest.approx(e["total"] - e["static"])
        assert 0 < r["conv_compute_pj"] <= e["compute"]
        assert r["pj_per_mac"] == pytest.approx(e["total"] / r["dense_macs"])
    assert fp32["dense_macs"] == tern["dense_macs"]
    # an fp32 add instead of a multiply-add on the ternary layers, and fewer of them (zeros skipped)
    assert tern["conv_x"] > 2 and tern["compute_x"] > 2
    assert "fp32_mul" in fp32["action_pj"]
    # ternary packs weights smaller than fp32: less DRAM traffic
    assert tern["energy_pj"]["dram"] < fp32["energy_pj"]["dram"]
    assert fp32["compute_x"] == 1.0
