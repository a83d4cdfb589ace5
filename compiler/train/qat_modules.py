"""The modules a fake-quantized model is built of: :class:`QLayer` (a conv / linear layer with
its quantized weights, its fused activation and its output quantizer) and :class:`ActQuant`
(the quantizer of any other tensor dlac's integer pipeline quantizes: the graph input, adds,
average pools, concats).

Each module is in one of three modes, set by :class:`compiler.train.qat.QatModel`:

* ``run``: the fake-quantized forward.  Weights: the layer's quantizer (straight-through).
  Activations (int8 builds): in training each batch's own exponent, in evaluation the
  calibrated one;
* ``calib``: weights quantized, activations in float, every quantization point records the
  largest magnitude it sees, as ``dlac compile --calib`` does (its calibration runs the float
  program with the quantized weights); :meth:`finish_calibration` turns them into exponents;
* ``float`` activations (fp32 builds): weights quantized, activations untouched.

A fused ReLU may have a threshold ``T >= 0`` (``x if x > T else 0``; ``T = 0`` is the plain
ReLU): on float activations (fp32 builds, calibration) it applies to the float value; with
int8 activations to the quantized output, ``q if q > Tq else 0`` with ``Tq = floor(T * 2^e)``
at the output exponent ``e`` (:func:`intmath.relu_threshold_q`, the codegen's), as dlac's EPI
applies it.  The gradient passes where the value is kept and is zero elsewhere, like a ReLU's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compiler.train.quant import WeightQuantizer, batch_exponent, fake_act
from target_dlac.codegen.modes.intmath import act_range, exponent, relu_threshold_q
from target_dlac.core.errors import ConfigError


def keep_above(y: torch.Tensor, threshold: float) -> torch.Tensor:
    """``y if y > threshold else 0`` (gradient: passed where kept, zero elsewhere)."""
    return torch.where(y > threshold, y, torch.zeros((), dtype=y.dtype))


def resolve_relu_thresholds(quant, acts: dict[str, str]) -> dict[str, float]:
    """``{layer: T}`` from ``quant.relu_thresholds`` as ``dlac compile`` resolves them
    (:func:`passes.relu_threshold.choose`; ``acts``: each layer's fused activation): the
    first matching pattern gives a layer its threshold, a layer without a fused ReLU keeps 0;
    a pattern that matches no layer, or only layers without a fused ReLU, is refused."""
    from passes.relu_threshold import choose

    return choose({n: n for n in acts}, {n: None if a == "relu" else f"activation {a}" for n, a in acts.items()},
                  quant.relu_thresholds, quant.relu_pattern_for)


class _Point(nn.Module):
    """A quantization point: bits, signedness, calibration maximum and exponent (buffers, so
    a checkpoint holds them); ``threshold``: a fused ReLU's threshold (0: none)."""

    def __init__(self, bits: int, signed: bool, quantize: bool, hi_real: float | None = None):
        super().__init__()
        self.bits, self.signed, self.quantize, self.hi_real = bits, signed, quantize, hi_real
        self.threshold, self.name = 0.0, "input"
        self.mode = "run"
        self.register_buffer("maxabs", torch.zeros((), dtype=torch.float64))
        self.register_buffer("exp", torch.zeros((), dtype=torch.int64))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.last = self._pre = None

    def start_calibration(self) -> None:
        self.maxabs.zero_()
        self.calibrated.fill_(False)

    def finish_calibration(self) -> None:
        self.exp.fill_(exponent(float(self.maxabs), self.bits, self.signed))
        self.calibrated.fill_(True)

    def out(self, y: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return y
        if self.mode == "calib":
            self.maxabs.fill_(max(float(self.maxabs), float(y.detach().abs().max())))
            return y
        extremes = None
        if self.training:
            exp, extremes = batch_exponent(y, self.bits, self.signed)
        elif bool(self.calibrated):
            exp = int(self.exp)
        else:
            raise ConfigError("the fake-quantized model has int8 activations and was not "
                              "calibrated: call QatModel.calibrate(batches) before evaluating it")
        y = fake_act(y, exp, self.bits, self.signed, self.hi_real, extremes)
        if self.threshold > 0:      # on the integers: q > Tq, i.e. y > Tq * 2^-exp (exact in float32)
            tq = relu_threshold_q(self.threshold, exp, act_range(self.bits, self.signed)[1], f"layer {self.name}")
            y = keep_above(y, tq * 2.0 ** -exp)
        return y


class ActQuant(_Point):
    """Signed 8-bit quantizer of a tensor that is not a layer's output."""

    def __init__(self, quantize: bool):
        super().__init__(8, True, quantize)
        self.name = "activation quantizer"

    def forward(self, x):
        return self.out(x)


#: A layer's fused activation: ``(name, lower, upper)`` as dlac's epilogue holds it.
ACTS = ("none", "relu", "clip")


class QLayer(_Point):
    """A conv2d / linear layer of precision ``precision`` with its fused activation ``act``
    (``relu``, ``clip`` with bounds ``lo``/``hi``, or ``none``; ``threshold``: a ReLU's
    threshold, 0 for none) and its output quantizer (``bits``-bit, unsigned after a ReLU when
    ``bits < 8``)."""

    def __init__(self, inner: nn.Module, name: str, precision: str, quantizer: WeightQuantizer | None,
                 act: str, lo: float, hi: float, bits: int, signed: bool, quantize: bool,
                 mask: np.ndarray | None, threshold: float = 0.0):
        super().__init__(bits, signed, quantize, hi if act == "clip" else None)
        self.inner, self.name, self.precision, self.quantizer = inner, name, precision, quantizer
        self.act, self.lo, self.hi = act, lo, hi
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
            raise ConfigError(f"layer {name}: ReLU threshold {threshold!r}; expected a finite number >= 0")
        if threshold > 0 and act != "relu":
            raise ConfigError(f"layer {name}: a ReLU threshold ({threshold:g}) needs a fused ReLU; this "
                              f"layer's activation is {act}" + (" (ReLU6 / clip)" if act == "clip" else ""))
        self.threshold = float(threshold)
        if mask is None:
            self.mask = None
        else:
            self.register_buffer("mask", torch.from_numpy(np.ascontiguousarray(mask)))

    def _mask(self) -> np.ndarray | None:
        return None if self.mask is None else self.mask.numpy()

    def weight(self) -> torch.Tensor:
        """The weights the forward uses (fake-quantized unless the layer stays float)."""
        w = self.inner.weight
        if self.quantizer is None or (self.mode == "calib" and self.precision == "fp32"):
            return w        # dlac calibrates the float program: fp32 layers keep float weights
        return self.quantizer.fake(w, self._mask())

    def integers(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(q, scale)`` of the current weights, or ``None`` for float weights."""
        if self.quantizer is None:
            return None
        return self.quantizer.integers(self.inner.weight.detach().numpy(), self._mask())

    def export_weight(self) -> torch.Tensor:
        """The weights to hand ``dlac compile``: the latent ones (dlac's quantizer derives the
        same integers from them), or ``scale * t`` under a static mask."""
        w = self.inner.weight.detach()
        if self.mask is None or self.quantizer is None:
            return w.clone()
        return self.quantizer.fake(w, self._mask()).detach().clone()

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = self.inner
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)

    def activate(self, y: torch.Tensor, threshold: bool = True) -> torch.Tensor:
        """The fused activation; a ReLU's threshold applied in float unless ``threshold`` is
        False (int8 activations apply it to the quantized output)."""
        if self.act == "relu":
            return keep_above(y, self.threshold) if threshold and self.threshold > 0 else torch.relu(y)
        if self.act == "clip":
            return torch.clamp(y, self.lo, self.hi)
        return y

    def forward(self, x, residual=None):
        y = self.linear(x, self.weight())
        y = y if residual is None else y + residual
        on_ints = self.quantize and self.mode == "run" and self.threshold > 0     # then out() applies it
        a = self.activate(y, not on_ints)
        # for QatModel.act_l1 (computed on demand, see l1_activation)
        self.last, self._pre = (a, y if on_ints else None) if self.training else (None, None)
        return self.out(a)

    def l1_activation(self) -> torch.Tensor | None:
        """What the activation L1 term sees of the last training forward: the output after the
        fused activation (its ReLU threshold applied in float), before quantization."""
        return self.activate(self._pre) if self._pre is not None else self.last

    def zero_fraction(self) -> float:
        ints = self.integers()
        if ints is None:
            return float((self.inner.weight == 0).float().mean())
        return float((ints[0] == 0).mean())
