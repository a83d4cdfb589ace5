"""Whole-model cycle counts are exactly those of the golden table (tests/golden/cycles.json,
written by ``python tools/golden_cycles.py --write``): a refactor changes no number, and an
intended change to the machine model shows up as a diff of the table in review."""

from __future__ import annotations

import json

import pytest

from tools.golden_cycles import CASES, TABLE, compute, differences


@pytest.mark.slow
def test_every_case_has_its_golden_cycles():
    with open(TABLE) as f:
        golden = json.load(f)
    assert set(golden) == set(CASES)
    moved = differences(golden, compute())
    assert not moved, "cycle counts moved (run tools/golden_cycles.py):\n" + "\n".join(moved)


def test_the_diff_names_what_moved():
    a = {"m": {"instructions": 3, "cycles": {"total": 10}, "layers": [["conv1", 5, 4]]}}
    b = json.loads(json.dumps(a))
    assert differences(a, b) == []
    b["m"]["cycles"]["total"] = 11
    b["m"]["layers"][0][1] = 6
    assert differences(a, b) == ["m: cycles.total 10 -> 11", "m: layer conv1 cycles/bound 5/4 -> conv1 6/4"]
