"""Training data (compiler.train.data, compiler.datasets): the MNIST training set and its
held-out validation split, a user's .npz and the one-line errors for data that does not
fit the model."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.datasets import _parse_mnist_csv
from compiler.train.data import calibration_images, load_split, mnist_split, npz_split
from target_dlac.core.errors import ConfigError, DataError

SHAPE = (1, 1, 8, 8)


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _good(n=40, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(x=rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
                y=rng.integers(0, classes, n).astype(np.int64))


def test_npz_with_a_held_out_validation_split(tmp_path):
    d = _good()
    path = _npz(tmp_path, **d)
    s = npz_split(path, SHAPE, 3, val_size=10, seed=1)
    assert (len(s.y_train), len(s.y_val)) == (30, 10) and s.x_test is None
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    # every image is in exactly one of the two, with its label
    rows = {tuple(r.ravel()): int(l) for r, l in zip(d["x"], d["y"])}
    got = [(tuple(r.ravel()), int(l)) for r, l in zip(np.concatenate([s.x_train, s.x_val]),
                                                      np.concatenate([s.y_train, s.y_val]))]
    assert len({g[0] for g in got}) == 40 and all(rows[k] == l for k, l in got)
    again = npz_split(path, SHAPE, 3, val_size=10, seed=1)
    assert np.array_equal(again.x_val, s.x_val)
    other = npz_split(path, SHAPE, 3, val_size=10, seed=2)
    assert not np.array_equal(other.x_val, s.x_val)
    limited = npz_split(path, SHAPE, 3, val_size=10, seed=1, limit=7)
    assert np.array_equal(limited.x_train, s.x_train[:7])
    assert np.array_equal(calibration_images(s, 5), s.x_train[:5])


def test_npz_with_its_own_validation_and_test_sets(tmp_path):
    d, v, t = _good(20), _good(6, seed=1), _good(4, seed=2)
    path = _npz(tmp_path, x=d["x"], y=d["y"], x_val=v["x"], y_val=v["y"], x_test=t["x"].astype(np.float64),
                y_test=t["y"].astype(np.uint8))
    s = load_split(path, SHAPE, 3, test_limit=3)
    assert np.array_equal(s.x_train, d["x"]) and np.array_equal(s.y_val, v["y"])
    assert s.x_test.dtype == np.float32 and s.y_test.dtype == np.int64 and len(s.y_test) == 3
    assert s.describe()["val"] == 6


@pytest.mark.parametrize("change, match", [
    (dict(x=np.zeros((40, 1, 9, 8), np.float32)), r"'x' has shape \(40, 1, 9, 8\).*model takes images of shape \(1, 8, 8\)"),
    (dict(y=np.full(40, 3)), r"'y' holds label 3, outside \[0, 3\)"),
    (dict(y=np.full(40, -1)), r"'y' holds label -1"),
    (dict(y=np.zeros(40, np.float32)), r"'y' has dtype float32; expected integer"),
    (dict(y=np.zeros(39, np.int64)), r"'y' has shape \(39,\); expected \(40,\)"),
    (dict(x=np.full((40, 1, 8, 8), np.nan, np.float32)), r"'x' holds 2560 non-finite"),
    (dict(y=None), r"missing key 'y'"),
    (dict(x_val=np.zeros((2, 1, 8, 8), np.float32)), r"missing key 'y_val' \(it goes with 'x_val'\)"),
    (dict(labels=np.zeros(3)), r"unexpected key 'labels'"),
])
def test_npz_that_does_not_fit_is_a_one_line_error_naming_the_key(tmp_path, change, match):
    d = _good()
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    path = _npz(tmp_path, **d)
    with pytest.raises(DataError, match=match) as e:
        npz_split(path, SHAPE, 3)
    assert "\n" not in str(e.value) and "d.npz" in str(e.value)


def test_npz_with_a_pickle_is_refused(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(ConfigError, match="object arrays"):
        npz_split(str(path), SHAPE, 3)


def test_bad_split_options(tmp_path):
    path = _npz(tmp_path, **_good(10))
    with pytest.raises(ConfigError, match="--val-size 10"):
        npz_split(path, SHAPE, 3, val_size=10)
    with pytest.raises(ConfigError, match="--limit"):
        npz_split(path, SHAPE, 3, val_size=2, limit=0)
    with pytest.raises(ConfigError, match="expected 'mnist' or a FILE.npz"):
        load_split("data.csv")


def test_mnist_csv_parser(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (3, 785))
    rows[:, 0] = [7, 0, 9]
    header = "label," + ",".join(f"p{i}" for i in range(784))
    good = tmp_path / "m.csv"
    good.write_text(header + "\r\n" + "\r\n".join(",".join(map(str, r)) for r in rows) + "\r\n")
    images, labels = _parse_mnist_csv(str(good))
    assert images.dtype == np.uint8 and images.shape == (3, 28, 28)
    assert np.array_equal(images.reshape(3, -1), rows[:, 1:]) and list(labels) == [7, 0, 9]
    for bad_row, match in ((",".join(["1"] * 784), "commas"), (",".join(["1"] * 784 + ["x"]), "integers"),
                           (",".join(["1"] * 784 + ["300"]), r"\[0, 255\]")):
        bad = tmp_path / "b.csv"
        bad.write_text(header + "\n" + bad_row + "\n")
        with pytest.raises(DataError, match=match):
            _parse_mnist_csv(str(bad))


@pytest.mark.slow
def test_mnist_training_set_and_validation_split():
    s = mnist_split(limit=100, val_size=500, seed=0)
    assert s.x_train.shape == (100, 1, 28, 28) and s.x_val.shape == (500, 1, 28, 28)
    assert s.x_test.shape == (10000, 1, 28, 28) and s.classes == 10
    assert s.x_train.dtype == np.float32 and abs(float(s.x_val.mean())) < 0.2     # normalized
    full = mnist_split(val_size=500, seed=0, test=False)
    assert len(full.y_train) == 59500 and full.y_test is None
    assert np.array_equal(full.x_train[:100], s.x_train) and np.array_equal(full.x_val, s.x_val)
    assert set(np.unique(full.y_val)) == set(range(10))
    # validation images are not training images
    tr = {full.x_train[i].tobytes() for i in range(0, 59500, 97)}
    assert not tr & {v.tobytes() for v in full.x_val}
    assert not np.array_equal(mnist_split(limit=1, val_size=500, seed=1, test=False).x_val, s.x_val)
    with pytest.raises(DataError, match="10 classes"):
        load_split("mnist", (1, 1, 28, 28), 4, limit=1, val_size=1)
    with pytest.raises(DataError, match="shape"):
        load_split("mnist", (1, 3, 28, 28), 10, limit=1, val_size=1)
