"""Fake quantizers for training: dlac's own quantizer math, with straight-through gradients.

One source of truth.  The weight quantizers call the functions the compiler's passes call
(:func:`passes.weight_quant.quantize_weight` for ternary / int4 / int8 with a scale per cluster
of N filters, :func:`passes.swis.swis_quantize` for SWIS) on the current weights, in NumPy,
at every step; activations use :func:`target_dlac.codegen.modes.intmath.exponent` and
:func:`~target_dlac.codegen.modes.intmath.act_range` and the integer pipeline's rounding
(``floor(x * 2^f + 0.5)``, round half up).  So a trained layer's forward computes with exactly
the integers and scales that ``dlac compile`` derives from the same weights.

Gradients are straight-through (Bengio et al. 2013; TWN and the dLAC paper train this way): the
weight gradient passes to the latent float weights unchanged; the activation gradient passes
where the value is inside the quantizer's range and is zero where it was clipped.

Static sparsity (``mask`` given): the ternary zeros are fixed by a mask taken once from the
initial weights; ``t = sign(W) * mask``, ``alpha_c = mean(|W_i| : mask_i)`` per cluster.  The
layer is then exported as ``alpha * t`` (TWN of those values returns the same ``t`` and
``alpha``: every non-zero has magnitude ``alpha_c > 0.7 * mean|alpha_c t|``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from passes.swis import swis_quantize
from passes.weight_quant import _clusters, dequantize, quantize_weight
from target_dlac.codegen.modes.intmath import act_range, exponent
from target_dlac.isa.machine import DEFAULT

#: Weight precisions that are quantized (``fp32`` layers keep their float weights; in an
#: int8 build they are held as int8 with a scale per filter, as the compiler does).
QUANTIZED = ("ternary", "int4", "int8", "swis")


class _Straight(torch.autograd.Function):
    """``forward(w, wq) = wq``; the gradient goes to ``w`` unchanged."""

    @staticmethod
    def forward(ctx, w, wq):
        return wq

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class WeightQuantizer:
    """The quantizer of one layer: ``kind`` (``ternary`` / ``int4`` / ``int8`` / ``swis`` /
    ``fp32``), ``cluster`` filters per scale (0: the whole layer), TWN ``factor``, SWIS
    ``shifts`` / ``consecutive``; the output-channel axis is 0 (torch's conv and linear
    weights)."""

    def __init__(self, kind: str, cluster: int = 1, factor: float = 0.7, shifts: float = 3.0,
                 consecutive: bool = False, pe_cols: int = DEFAULT.pe_cols):
        self.kind, self.cluster, self.factor = kind, cluster, factor
        self.shifts, self.consecutive, self.pe_cols = shifts, consecutive, pe_cols

    def integers(self, w: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(q, scale)``: integer weights of ``w``'s shape and one float32 scale per filter."""
        if self.kind == "swis":
            r = swis_quantize(w, self.shifts, 0, self.consecutive, self.pe_cols)
            return r.values, r.scale
        if self.kind == "fp32":
            return quantize_weight(w, 0, "int8", 1)
        if mask is not None:
            return static_ternary(w, mask, self.cluster)
        return quantize_weight(w, 0, self.kind, self.cluster, self.factor)

    def fake(self, w: torch.Tensor, mask: np.ndarray | None = None) -> torch.Tensor:
        """The fake-quantized weights ``scale * q`` (float32), straight-through to ``w``."""
        q, scale = self.integers(w.detach().cpu().numpy(), mask)
        wq = torch.from_numpy(dequantize(q, scale, 0)).to(w.device)
        return _Straight.apply(w, wq)


def static_ternary(w: np.ndarray, mask: np.ndarray, cluster: int) -> tuple[np.ndarray, np.ndarray]:
    """Ternary weights with a fixed zero pattern: ``t = sign(w) * mask`` and one scale per
    cluster, the mean magnitude of its masked-in weights (0 for a cluster with none)."""
    flat = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    keep = np.asarray(mask, bool).reshape(flat.shape)
    t = (np.sign(flat) * keep).astype(np.int8)
    keep = keep & (t != 0)          # a weight that reached exactly 0 has no sign: it is a zero
    cid = _clusters(flat.shape[0], cluster)
    scale_cl = np.zeros(int(cid.max()) + 1)
    a = np.abs(flat)
    for c in range(len(scale_cl)):
        rows = cid == c
        sel = keep[rows]
        scale_cl[c] = a[rows][sel].mean() if sel.any() else 0.0
    return t.reshape(w.shape), scale_cl[cid].astype(np.float32)


def ternary_mask(w: np.ndarray, cluster: int, factor: float = 0.7) -> np.ndarray:
    """The zero pattern TWN gives ``w`` now (``True`` = non-zero): a static mask."""
    q, _ = quantize_weight(w, 0, "ternary", cluster, factor)
    return q != 0


class _ActQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, exp: int, lo: int, hi: int, lo_hit: bool, hi_hit: bool):
        s = 2.0 ** exp
        q = x.mul(s).add_(0.5).floor_()      # one new tensor; the rest in place (big tensors)
        inside = None
        if hi_hit:
            inside = q <= hi
        if lo_hit:
            inside = (q >= lo) if inside is None else inside.logical_and_(q >= lo)
        ctx.save_for_backward(inside)
        if lo_hit or hi_hit:
            q.clamp_(lo, hi)
        return q.mul_(1.0 / s)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return (grad if inside is None else grad * inside), None, None, None, None, None


def fake_act(x: torch.Tensor, exp: int, bits: int = 8, signed: bool = True,
             hi_real: float | None = None, extremes: tuple[float, float] | None = None) -> torch.Tensor:
    """``x`` as a ``bits``-bit dynamic fixed-point tensor of exponent ``exp`` (the integer
    pipeline's quantize: ``clip(floor(x * 2^exp + 0.5), lo, hi) * 2^-exp``); ``hi_real``: a
    clip activation's upper bound (the integer clip ``round(hi_real * 2^exp)``).
    ``extremes``: ``(min, max)`` of ``x`` if known (the clip work is skipped when neither
    bound is reached)."""
    lo, hi = act_range(bits, signed)
    if hi_real is not None:
        hi = min(hi, int(np.clip(round(hi_real * 2.0 ** exp), -128, 127)))
    mn, mx = extremes if extremes is not None else _extremes(x)
    s = 2.0 ** exp
    return _ActQuant.apply(x, int(exp), lo, hi, math.floor(mn * s + 0.5) < lo, math.floor(mx * s + 0.5) > hi)


def _extremes(x: torch.Tensor) -> tuple[float, float]:
    mn, mx = torch.aminmax(x.detach())
    return float(mn), float(mx)


def batch_exponent(x: torch.Tensor, bits: int = 8, signed: bool = True) -> tuple[int, tuple[float, float]]:
    """The exponent dlac's calibration would give a tensor whose largest magnitude is this
    batch's (training uses each batch's own; evaluation the calibrated one), and the batch's
    ``(min, max)``."""
    mn, mx = _extremes(x)
    return exponent(max(-mn, mx), bits, signed), (mn, mx)
