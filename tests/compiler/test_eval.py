"""``dlac eval``: bad datasets give one-line errors naming what is wrong; the evaluation of
the demo's MNIST binary equals an independent loop of ``Interpreter.run`` (accuracy,
per-image cycles and logits exactly); local, ``--jobs 2`` and a Dask ``LocalCluster`` give
identical figures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from compiler.eval_data import apply_preprocessing, binary_io, fit_inputs, load_dataset, parse_preprocessing
from compiler.eval_run import plan_chunks, topk_hits
from target_dlac.core.errors import ConfigError, DataError
from tests.cli_helpers import cli, error_line, ok

#: report keys that depend on how / how fast the work ran, not on the results
TIMING_KEYS = ("seconds", "images_per_s", "jobs", "dask", "chunks")


def _prog(in_shape=(1, 1, 28, 28), out_shapes=((1, 10),), n_in=1):
    t = lambda name, shape: SimpleNamespace(name=name, shape=shape, dtype="float32")  # noqa: E731
    return SimpleNamespace(inputs=[t(f"x{i}", in_shape) for i in range(n_in)],
                           outputs=[t(f"output_{i}", s) for i, s in enumerate(out_shapes)], meta={})


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------ datasets (no binary)

def test_items_may_omit_the_leading_batch_dim(tmp_path):
    p = _prog()
    x = np.zeros((3, 1, 28, 28), np.float32)
    assert fit_inputs(x, p.inputs[0], "d").shape == (3, 1, 1, 28, 28)
    assert fit_inputs(x[:, None], p.inputs[0], "d").shape == (3, 1, 1, 28, 28)
    with pytest.raises(DataError, match=r"x has shape \(3, 28, 28\).*\(1, 1, 28, 28\)"):
        fit_inputs(x[:, 0], p.inputs[0], "d")


def test_npz_problems_are_named(tmp_path):
    p = _prog()
    x, y = np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 2, 3])
    cases = [
        ({"x": x, "labels": y}, r"missing key 'y'; the file has \['labels', 'x'\]"),
        ({"x": x[:, :, :27], "y": y}, r"x has shape \(4, 1, 27, 28\).*'x0' is \(1, 1, 28, 28\)"),
        ({"x": x, "y": y[:3]}, r"len\(x\) = 4 but len\(y\) = 3"),
        ({"x": x, "y": np.array([0, 1, 10, 3])}, r"label y\[2\] = 10 is out of range \[0, 10\)"),
        ({"x": x, "y": np.array([0, -1, 2, 3])}, r"label y\[1\] = -1 is out of range"),
        ({"x": x, "y": y.astype(np.float32)}, r"labels y have dtype float32; expected integer"),
        ({"x": np.where(np.arange(4)[:, None, None, None] == 2, np.nan, x), "y": y},
         r"x has 784 non-finite value\(s\).*item 2"),
        ({"x": np.array([object()] * 4), "y": y}, r"member 'x' cannot be read: an object array"),
        ({"x": np.array(["a"] * 4), "y": y}, r"member 'x' has dtype <U1; expected numbers"),
    ]
    for i, (arrays, msg) in enumerate(cases):
        path = tmp_path / f"d{i}.npz"
        np.savez(path, **arrays)            # an object array is pickled into the file
        with pytest.raises(DataError, match=msg) as e:
            load_dataset(str(path), p)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_binary_must_be_a_one_input_one_output_classifier():
    with pytest.raises(ConfigError, match=r"one input and one output; this one has 1 input\(s\) and 2"):
        binary_io(_prog(out_shapes=((1, 10), (1, 3))))
    with pytest.raises(ConfigError, match=r"2 input\(s\)"):
        binary_io(_prog(n_in=2))
    with pytest.raises(ConfigError, match=r"shape \(1, 4, 10\)"):
        binary_io(_prog(out_shapes=((1, 4, 10),)))
    assert binary_io(_prog(out_shapes=((1, 1000),)))[2] == 1000
    assert binary_io(_prog(out_shapes=((1, 1000, 1, 1),)))[2] == 1000      # SqueezeNet's


def test_preprocessing_scale_then_per_channel_normalization(tmp_path):
    shape = (1, 3, 2, 2)
    x = np.arange(2 * 12, dtype=np.uint8).reshape(2, 1, 3, 2, 2)
    pre = parse_preprocessing("0.5", "1,2,3", "2,4,8")
    got = apply_preprocessing(x, pre, shape)
    want = (x * 0.5 - np.array([1, 2, 3]).reshape(1, 1, 3, 1, 1)) / np.array([2, 4, 8]).reshape(1, 1, 3, 1, 1)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError, match=r"--mean: 2 values, but the binary's input \(1, 3, 2, 2\) has 3"):
        apply_preprocessing(x, parse_preprocessing(None, "1,2", "1,1"), shape)
    with pytest.raises(ConfigError, match="--mean and --std go together"):
        parse_preprocessing(None, "0.5", None)
    with pytest.raises(ConfigError, match="a standard deviation of 0"):
        parse_preprocessing(None, "0", "0")
    path = _npz(tmp_path / "d.npz", x=x[:, 0], y=np.array([0, 2]))
    ds = load_dataset(path, _prog(in_shape=shape, out_shapes=((1, 3),)), scale="0.5", mean="1,2,3", std="2,4,8")
    np.testing.assert_array_equal(ds.x, want.astype(np.float32))
    assert ds.preprocessing == {"scale": 0.5, "mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 8.0]}
    with pytest.raises(ConfigError, match="already normalized"):
        load_dataset("mnist", _prog(), scale="2")


def test_chunks_cover_the_dataset_and_top5():
    for n, cap, w in ((1, 64, 1), (500, 64, 1), (500, 64, 2), (7, 3, 4), (100, 1, 3)):
        ch = plan_chunks(n, cap, w)
        assert [lo for lo, _ in ch] == [0] + [hi for _, hi in ch[:-1]] and ch[-1][1] == n
        assert all(0 < hi - lo <= cap for lo, hi in ch)
    logits = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], np.float32)
    assert topk_hits(logits, np.array([2, 2])).tolist() == [True, True]
    assert topk_hits(logits, np.array([1, 6])).tolist() == [False, False]


# ------------------------------------------------------------------ the demo's binary

@pytest.fixture(scope="module")
def mnist_binary(tmp_path_factory):
    """The demo's binary: the bundled MNIST CNN, QuantConfig() (ternary, first/last fp32)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("tvm")
    from compiler.build import build_program
    from compiler.config import QuantConfig
    from compiler.datasets import mnist_cnn, mnist_test
    from compiler.pipeline import compile_model
    from target_dlac.binary.container import write_program

    x, _ = mnist_test(1)
    result = compile_model(mnist_cnn(), (torch.from_numpy(x[:1].copy()),), config=QuantConfig())
    path = tmp_path_factory.mktemp("eval") / "mnist.dlac"
    write_program(str(path), build_program(result))
    return str(path)


def _eval(binary, tmp_path, *extra, name="r.json"):
    out = tmp_path / name
    ok(cli(["eval", binary, "--no-progress", "--report-json", out, *extra]))
    return json.loads(out.read_text())


def _figures(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k not in TIMING_KEYS}


def test_cli_bad_data_is_one_line(mnist_binary, tmp_path):
    x, y = np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 2, 3])
    cases = [
        (_npz(tmp_path / "a.npz", x=x[:, :, :, :20], y=y), "x has shape (4, 1, 28, 20)"),
        (_npz(tmp_path / "b.npz", x=x, y=y + 7), "label y[3] = 10 is out of range [0, 10)"),
        (_npz(tmp_path / "c.npz", images=x, y=y), "missing key 'x'; the file has ['images', 'y']"),
        (str(tmp_path / "none.npz"), "no such file"),
    ]
    for path, msg in cases:
        line = error_line(cli(["eval", mnist_binary, "--data", path]))
        assert msg in line and path in line, line
    line = error_line(cli(["eval", mnist_binary, "--data", cases[0][0], "--jobs", "2", "--dask", "local"]), 2)
    assert "--jobs and --dask" in line
    line = error_line(cli(["eval", mnist_binary, "--data", "mnist", "--mean", "0.1"]), 2)
    assert "--mean and --std go together" in line


def test_npz_equals_mnist_and_formats(mnist_binary, tmp_path):
    from compiler.datasets import mnist_test

    x, y = mnist_test(6)
    path = _npz(tmp_path / "m.npz", x=x, y=y)
    a = _eval(mnist_binary, tmp_path, "--data", "mnist", "--limit", "6", "--batch", "4", name="a.json")
    b = _eval(mnist_binary, tmp_path, "--data", path, name="b.json")
    for k in ("accuracy", "top5", "cycles", "energy_pj", "logits_sha256", "per_image", "images"):
        assert a[k] == b[k], k
    assert a["batch"] == 4 and b["batch"] == 64 and a["binary"]["sha256"] == b["binary"]["sha256"]
    assert b["data"]["sha256"] and a["reference"] is None and a["top5"] is not None
    r = ok(cli(["eval", mnist_binary, "--data", path, "--no-progress", "--format", "json"]))
    row, = json.loads(r.stdout)
    assert row["accuracy"] == a["accuracy"] and "per_image" not in row and "accuracy (interpreter)" in r.stderr
    r = ok(cli(["eval", mnist_binary, "--data", path, "--no-progress", "--format", "csv"]))
    head, vals = r.stdout.strip().splitlines()
    assert dict(zip(head.split(","), vals.split(",")))["cycles.max"] == str(a["cycles"]["max"])


def test_jobs_2_equals_local(mnist_binary, tmp_path):
    args = ("--data", "mnist", "--limit", "12", "--batch", "4")
    local = _eval(mnist_binary, tmp_path, *args, name="l.json")
    pool = _eval(mnist_binary, tmp_path, *args, "--jobs", "2", name="p.json")
    assert pool["jobs"] == 2 and pool["chunks"] > 1
    assert _figures(pool) == _figures(local)


@pytest.mark.slow
def test_dask_local_cluster_equals_local(mnist_binary, tmp_path):
    pytest.importorskip("distributed")
    args = ("--data", "mnist", "--limit", "16", "--batch", "4")
    local = _eval(mnist_binary, tmp_path, *args, name="l.json")
    remote = _eval(mnist_binary, tmp_path, *args, "--dask", "local", name="d.json")
    assert remote["dask"] == "local" and remote["chunks"] > 1
    assert _figures(remote) == _figures(local)


@pytest.mark.slow
def test_500_images_match_a_loop_of_single_runs(mnist_binary, tmp_path):
    """The demo's step 4 (one ``Interpreter.run`` per image) on the same 500 images."""
    from compiler.datasets import mnist_test
    from compiler.eval_data import load_dataset as load
    from compiler.eval_run import evaluate
    from target_dlac.binary.container import read_program
    from target_dlac.sim.interpreter import Interpreter

    prog = read_program(mnist_binary)
    x, y = mnist_test(500)
    interp = Interpreter(prog, check_races=False)
    runs = [interp.run({"x": x[i:i + 1]}) for i in range(len(y))]
    logits = np.stack([o["output_0"].reshape(-1) for o, _ in runs])
    cycles = [r.cycles["total"] for _, r in runs]
    acc = float((logits.argmax(1) == y).mean())

    rep = evaluate(mnist_binary, load("mnist", prog, 500), batch=64)
    assert rep["accuracy"] == acc and rep["images"] == 500
    assert rep["per_image"]["cycles"] == cycles
    assert rep["per_image"]["pred"] == logits.argmax(1).tolist()
    np.testing.assert_array_equal(rep["_logits"], logits)
    assert rep["cycles"]["min"] == min(cycles) and rep["cycles"]["max"] == max(cycles)
    assert rep["cycles"]["mean"] == float(np.mean(cycles))
    cli_rep = _eval(mnist_binary, tmp_path, "--data", "mnist", "--limit", "500")
    assert cli_rep["accuracy"] == acc and cli_rep["per_image"]["cycles"] == cycles


@pytest.mark.slow
def test_500_images_match_the_demo(tmp_path):
    """``dlac eval`` on the demo's own binary and 500 images gives the demo's figures: its
    accuracy, its per-image cycle spread (min, median, max)."""
    from compiler.demo import run_demo

    demo = run_demo(500, out_dir=str(tmp_path / "demo"), echo=lambda *a, **k: None)
    rep = _eval(demo["path"], tmp_path, "--data", "mnist", "--limit", "500")
    assert rep["images"] == 500 and rep["accuracy"] == demo["accuracy"]["dlac"]
    cyc = np.array(rep["per_image"]["cycles"])
    assert (int(cyc.min()), float(np.median(cyc)), int(cyc.max())) == \
        (demo["cycles"]["min"], demo["cycles"]["median"], demo["cycles"]["max"])
    assert demo["agree"] == 500            # and the demo's interpreter agrees with TVM on all
