"""tools/bench/throughput.py on a tiny setting: 64 MNIST test images, batches 1 and 16, no ResNet-18."""

from __future__ import annotations

import json

import pytest

from tools.bench import throughput

pytestmark = pytest.mark.slow
IMAGES = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "out.json"
    assert throughput.main(["--images", str(IMAGES), "--batches", "1,16", "--skip-r18",
                            "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_engine_at_a_positive_rate(data):
    assert set(data["models"]) == {"mnist"}
    m = data["models"]["mnist"]
    got = {(r["engine"], r["batch"]) for r in m["rows"]}
    assert got == {("pytorch-eager", 1), ("pytorch-eager", 16), ("onnxruntime", 1), ("onnxruntime", 16),
                   ("tvm-reference", 1), ("tvm-reference", 16), ("interp", 1), ("interp-batch", 1),
                   ("interp-batch", 16), ("interp-procs", 16)}
    for r in m["rows"]:
        assert r["images"] == IMAGES and r["seconds"] > 0 and r["images_per_s"] > 0
        assert r["t_over_eager"] > 0 and r["x_interp1"] > 0
    assert next(r for r in m["rows"] if r["engine"] == "interp")["x_interp1"] == 1.0
    assert {"python", "numpy", "torch", "onnxruntime", "tvm"} <= set(data["versions"])


def test_batched_equals_batch1_and_goals_computed(data):
    m = data["models"]["mnist"]
    for r in m["rows"]:
        if r["engine"] == "interp-batch":       # the script asserts predictions and cycles equal
            assert r["cycles_min"] == m["cycles"]["min"] and r["cycles_max"] == m["cycles"]["max"]
            assert r["max_abs_diff_vs_batch1"] < 1e-4
    assert m["agree_top1"]["eager"] >= IMAGES - 2 and m["agree_top1"]["reference"] >= IMAGES - 2
    goals = data["goals"]
    assert len(goals) == 2 and all(isinstance(g["pass"], bool) and g["value"] > 0 for g in goals)


def test_bad_batches_are_refused():
    with pytest.raises(SystemExit):
        throughput.main(["--batches", "0,8", "--skip-r18"])
