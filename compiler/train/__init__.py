"""Training for dLAC (``docs/training.md``): fake-quantized models that compute what dlac
compiles (:mod:`~compiler.train.qat`, with the quantizers of :mod:`~compiler.train.quant`
and the exact integer forward of :mod:`~compiler.train.qat_integer`), WRPN widening
(:mod:`~compiler.train.widen`), data (:mod:`~compiler.train.data`) and the training loop
(:mod:`~compiler.train.loop`, checkpoints in :mod:`~compiler.train.checkpoint`).

    from compiler.train import QatSpec, TrainOptions, mnist_split, prepare, train

Importing this package imports torch.
"""

from compiler.train.data import load_split, mnist_split
from compiler.train.loop import TrainOptions, train
from compiler.train.qat import QatSpec, prepare
from compiler.train.widen import widen

__all__ = ["QatSpec", "TrainOptions", "load_split", "mnist_split", "prepare", "train", "widen"]
