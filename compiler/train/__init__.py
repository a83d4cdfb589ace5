"""Training for dLAC (``docs/training.md``): fake-quantized models that compute what dlac
compiles (:mod:`~compiler.train.qat`, with the quantizers of :mod:`~compiler.train.quant`
and the exact integer forward of :mod:`~compiler.train.qat_integer`), WRPN widening
(:mod:`~compiler.train.widen`), data (:mod:`~compiler.train.data`) and the training loop
(:mod:`~compiler.train.loop`, checkpoints in :mod:`~compiler.train.checkpoint`).

    from compiler.train import QatSpec, TrainOptions, mnist_split, prepare, train

Importing this package imports nothing heavy; the names above import their modules on use.
"""

_EXPORTS = {"load_split": "data", "mnist_split": "data", "TrainOptions": "loop", "train": "loop",
            "QatSpec": "qat", "prepare": "qat", "widen": "widen"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):          # lazy: ``dlac inspect`` / ``run`` must not import torch
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"compiler.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'compiler.train' has no attribute {name!r}")
