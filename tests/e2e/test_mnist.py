"""Real data and the real pretrained CNN, through the TVM CPU reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler import QuantConfig
from compiler.datasets import mnist_cnn, mnist_test, mnist_test_raw
from compiler.evaluate import evaluate


def test_mnist_test_set_is_real_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DLAC_CACHE", str(tmp_path))
    images, labels = mnist_test_raw()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert (tmp_path / "mnist_test.npz").is_file()
    images2, labels2 = mnist_test_raw()          # from the cache now
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)
    (tmp_path / "mnist_test.npz").write_bytes(b"garbage")   # a damaged cache is rebuilt
    np.testing.assert_array_equal(mnist_test_raw()[1], labels)


@pytest.fixture(scope="module")
def subset():
    return mnist_test(500)


@pytest.mark.slow
def test_float_and_ternary_accuracy_through_tvm(subset):
    x, y = subset
    model = mnist_cnn()
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x)).argmax(1).numpy()
    rows = evaluate(model, {"fp32": QuantConfig.full_precision(), "ternary": QuantConfig()}, x, y,
                    batch=100)
    fp32, tern = rows
    assert fp32.accuracy == pytest.approx(float((torch_pred == y).mean()))
    assert fp32.accuracy >= 0.98
    assert 0.93 <= tern.accuracy < fp32.accuracy + 0.01
    assert tern.replaced_share > 0.95


@pytest.mark.slow
def test_demo_command_runs(tmp_path):
    """`make demo` runs `dlac demo`; a small run of the same command stays green and its
    binary is a valid .dlac file whose interpreter predictions match the reference."""
    import re

    from click.testing import CliRunner

    from compiler.cli import main
    from target_dlac.binary.container import read_program

    res = CliRunner().invoke(main, ["demo", "--images", "50", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "conv_layers.3" in out and "ternary" in out and "multiplies replaced" in out
    assert "host ops: none" in out and "TACC" in out
    rel = float(re.search(r"max rel err ([0-9.e+-]+)", out).group(1))
    assert rel <= 1e-5
    assert "same prediction on 50 of 50 images" in out
    lo, mid, hi = (int(v.replace(",", "")) for v in re.search(
        r"cycles per image .*: min ([0-9,]+), median ([0-9,]+), max ([0-9,]+)", out).groups())
    assert lo <= mid <= hi and lo < hi          # zero activations make the images differ
    prog = read_program(tmp_path / "mnist.dlac")
    assert prog.insns[-1].op == "HALT" and (tmp_path / "mnist_input0.npy").exists()
