"""The float activations of the interpreter's EPI (docs/isa.md "EPI"): the
piecewise-linear ones in float32 arithmetic, the transcendental ones in float64 from the
float32 value, rounded once to float32; GELU's ``erfc`` by Numerical Recipes' ``erfcc``
(the interpreter's one approximation, tests/e2e/test_activations.py)."""

from __future__ import annotations

import numpy as np

#: Elements per step of the float64 activation evaluation (bounds its temporary memory).
ACT_CHUNK = 1 << 16
#: Numerical Recipes' ``erfcc`` (Press et al., Numerical Recipes in C, 2nd ed., section
#: 6.2): ``erfc(z) ~ t * exp(-z^2 + P(t))``, ``t = 1 / (1 + z/2)`` for ``z >= 0``, with
#: fractional error below 1.2e-7 everywhere; P's coefficients, constant term first.
ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
          1.48851587, -0.82215223, 0.17087277)
SQRT_2_OVER_PI = 0.7978845608028654


def erfc(x: np.ndarray) -> np.ndarray:
    """``erfc(x)`` in float64 by :data:`ERFC_P` (``erfc(-z) = 2 - erfc(z)``)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(t, ERFC_P[-1])
    for c in ERFC_P[-2::-1]:
        poly = poly * t + c
    r = t * np.exp(-z * z + poly)
    return np.where(x >= 0, r, 2.0 - r)


def float_act(act: str, y: np.ndarray, slope: np.float32 = np.float32(0), slopes=None) -> np.ndarray:
    """A float activation of the float32 array ``y`` (a new float32 array; docs/isa.md
    "EPI"): the piecewise-linear ones in float32 arithmetic step by step, the transcendental
    ones evaluated in float64 from the float32 value and rounded once to float32 (SiLU:
    ``y * f32(sigmoid(y))``); ``slopes``: PReLU's per-row slopes (``y`` ``[..., rows, p]``,
    ``slopes`` ``[..., rows]``)."""
    if act == "relu":
        return np.maximum(y, 0)
    if act == "leaky_relu":
        return np.where(y >= 0, y, y * slope)
    if act == "prelu":
        return np.where(y >= 0, y, y * slopes[..., None])
    if act in ("hardswish", "hardsigmoid"):
        t = np.clip(y + np.float32(3), np.float32(0), np.float32(6))
        return (y * t if act == "hardswish" else t) / np.float32(6)
    flat = y.reshape(-1)
    out = np.empty_like(flat)
    with np.errstate(over="ignore"):
        for i in range(0, flat.size, ACT_CHUNK):
            x = flat[i:i + ACT_CHUNK].astype(np.float64)
            if act in ("sigmoid", "silu"):
                v = 1.0 / (1.0 + np.exp(-x))
            elif act == "tanh":
                v = np.tanh(x)
            elif act == "gelu":
                v = 0.5 * x * erfc(-x * 0.7071067811865476)
            elif act == "gelu_tanh":
                v = 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
            else:
                raise ValueError(f"no float activation {act!r}")
            out[i:i + ACT_CHUNK] = v.astype(np.float32)
    if act == "silu":
        out *= flat
    return out.reshape(y.shape)
