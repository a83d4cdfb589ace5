"""``dlac train`` end to end: the three files it writes, the .pt2 that ``dlac compile``
takes with the logged arguments, ``--resume``, and the one-line errors for data that does
not fit, a corrupt checkpoint and bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_helpers import cli, error_line


def _data(tmp_path, n=48, shape=(1, 16, 16), classes=10, name="d.npz", **over):
    rng = np.random.default_rng(0)
    arrays = dict(x=rng.standard_normal((n, *shape)).astype(np.float32),
                  y=rng.integers(0, classes, n).astype(np.int64))
    arrays.update(over)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


FAST = ["--val-size", "8", "--batch-size", "16", "--calib-size", "16"]


@pytest.mark.slow
def test_train_a_factory_model_on_an_npz_then_resume(tiny_factory, tmp_path):
    out = tmp_path / "m.pt2"
    data = _data(tmp_path)
    r = cli(["train", tiny_factory, "--data", data, "-o", out, "--activations", "int8",
             "--quantize-first", *FAST])
    assert r.exit_code == 0, r.output
    assert "epoch 1/1:" in r.stdout and "compile it with: dlac compile" in r.stdout
    log = json.loads((tmp_path / "m.json").read_text())
    assert len(log["history"]) == 1 and log["data"]["train"] == 40 and log["data"]["val"] == 8
    assert log["final"]["test_acc"] is None and log["resumed_from"] is None
    assert {l["name"] for l in log["layers"]} == {"conv1", "conv2", "conv3", "fc"}
    assert all(0 <= l["zero_fraction"] <= 1 for l in log["layers"])
    assert "--quantize-first" in log["compile_args"] and "--calib" in log["compile_command"]
    with np.load(tmp_path / "m.calib.npz") as z:
        assert list(z.keys()) == [log["input_name"]] and z[log["input_name"]].shape == (16, 1, 16, 16)
    first = (tmp_path / "m.pt2").read_bytes()
    # two more epochs from the checkpoint
    r = cli(["train", tiny_factory, "--data", data, "-o", out, "--activations", "int8",
             "--quantize-first", *FAST, "--epochs", "3", "--resume"])
    assert r.exit_code == 0, r.output
    log = json.loads((tmp_path / "m.json").read_text())
    assert log["resumed_from"] == 1 and [h["epoch"] for h in log["history"]] == [1, 2, 3]
    assert (tmp_path / "m.pt2").read_bytes() != first
    # resuming with other arguments is refused, naming the checkpoint and the argument
    r = cli(["train", tiny_factory, "--data", data, "-o", out, "--activations", "int8", *FAST,
             "--epochs", "4", "--resume"])
    line = error_line(r, stdout_empty=False)
    assert "m.ckpt" in line and "keep_first" in line


@pytest.mark.parametrize("over, match", [
    (dict(x=np.zeros((48, 1, 8, 8), np.float32)), "'x' has shape (48, 1, 8, 8)"),
    (dict(y=np.full(48, 10)), "'y' holds label 10, outside [0, 10)"),
    (dict(y=None), "missing key 'y'"),
])
def test_data_that_does_not_fit_the_model(tiny_factory, tmp_path, over, match):
    r = cli(["train", tiny_factory, "--data", _data(tmp_path, **over), "-o", tmp_path / "m.pt2"])
    line = error_line(r, exit_code=1)
    assert match in line and "d.npz" in line
    assert not (tmp_path / "m.pt2").exists()


def test_corrupt_checkpoint(tiny_factory, tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"\x80\x04garbage")
    r = cli(["train", tiny_factory, "--data", _data(tmp_path), "-o", tmp_path / "m.pt2", "--resume", *FAST])
    line = error_line(r, exit_code=1, stdout_empty=False)
    assert "m.ckpt" in line and "corrupt" in line


@pytest.mark.parametrize("args, match", [
    (["-o", "{t}/m.onnx"], "written as a .pt2"),
    (["-o", "{t}/m.pt2", "--distill-scheme", "finetune", "--from-scratch"], "cannot be combined"),
    (["-o", "{t}/m.pt2", "--act-bits", "4"], "needs int8 activations"),
    (["-o", "{t}/m.pt2", "--epochs", "-1"], "epochs"),
    (["-o", "{t}/nodir/m.pt2"], "nodir"),
])
def test_bad_arguments(tiny_factory, tmp_path, args, match):
    r = cli(["train", tiny_factory, "--data", _data(tmp_path)] + [a.format(t=tmp_path) for a in args])
    assert match in error_line(r, exit_code=2)


def test_a_pt2_model_is_refused(tmp_path):
    r = cli(["train", tmp_path / "x.pt2", "--data", "mnist", "-o", tmp_path / "m.pt2"])
    assert "nn.Conv2d" in error_line(r, exit_code=2)


@pytest.mark.slow
def test_mnist_cnn_trains_and_compiles(tmp_path):
    out = tmp_path / "cnn.pt2"
    r = cli(["train", "mnist-cnn", "--data", "mnist", "--limit", "256", "--val-size", "200",
             "--test-limit", "200", "--epochs", "1", "--quantize-first", "--quantize-last",
             "--activations", "int8", "--calib-size", "64", "--distill", "-o", out])
    assert r.exit_code == 0, r.output
    log = json.loads((tmp_path / "cnn.json").read_text())
    assert log["data"]["test"] == 200 and log["final"]["test_acc"] > 0.9
    assert log["options"]["distill"] == "finetune"
    assert all(l["precision"] == "ternary" for l in log["layers"])
    r = cli(["compile", out, "-o", tmp_path / "cnn.dlac", *log["compile_args"],
             "--calib", tmp_path / "cnn.calib.npz"])
    assert r.exit_code == 0, r.output
    # the closed loop through the files: the binary's accuracy on the same 200 test images is
    # the trained model's (int8 activations: its evaluation is the integer pipeline itself)
    from compiler.datasets import mnist_test
    from target_dlac import read_program
    from target_dlac.sim.interpreter import Interpreter

    x, y = mnist_test(200)
    interp = Interpreter(read_program(str(tmp_path / "cnn.dlac")))
    pred = np.array([interp.run({"x": x[i:i + 1]})[0]["output_0"].argmax() for i in range(200)])
    assert float((pred == y).mean()) == log["final"]["test_acc"]
