"""The all-integer pipeline: 8-bit dynamic fixed-point activations (papers.md section 2),
and 4- / 2-bit activations after ReLU (WRPN, issue 14).

Every int8 tensor carries one power-of-two exponent ``f``: its real value is
``q * 2^-f``.  From calibration, ``f = 7 - ceil(log2(max|x|))`` (clamped to
[-MAX_EXP, MAX_EXP]).  ReLU, max-pool and reshape keep their input's exponent.
With ``act_bits`` b < 8, a conv / dense layer whose epilogue is ReLU-like and has no
residual (:func:`unsigned_output`) instead gets ``f = b - ceil(log2(max|x|))`` and the range
``[0, 2^b - 1]`` (:func:`exponent` / :func:`act_range` unsigned, enforced by the clip
bounds of :func:`clip_bounds`); it is still held in an int8 container.

Integer ops, each with its exact definition (the interpreter and the Relax reference
graph built by :class:`target_dlac.codegen.refgraph.RefGraph` both implement exactly these):

* quantize (graph input): ``q = clip(floor(x * 2^f + 0.5), -128, 127)`` in float32;
* layer: ``acc = sum x_q * w_q`` (int32); ``t = acc * M_c + B_c [+ res_q << R]`` (int64);
  ``y = clip((t + 2^(s-1)) >> s, lo, hi)`` (arithmetic shift: round half up), with
  ``M_c = round(scale_c * 2^(fy - fx + s))``, ``B_c = round(bias_c * 2^(fy + s))``,
  ``R = fy - fr + s`` (the residual's exponent ``fr`` rescaled to the output's: this is
  where inputs with different scales meet), ``lo = 0`` for ReLU, clip bounds
  ``round(bound * 2^fy)``; ``s`` is the largest shift (<= 40) keeping ``|M| < 2^30``;
  a ReLU threshold ``T`` then zeroes ``y <= Tq``, ``Tq = floor(T * 2^fy)``
  (:func:`relu_threshold_q`);
* average pool: window sum (int64) then ``clip((sum * mult + 2^(s-1)) >> s)``,
  ``mult = round(2^(fy - fx + s) / count)`` (windows of constant count only);
* add: ``clip(((a << sa) + (b << sb) + 2^(s-1)) >> s)``, ``sa = fy - fa + s``,
  ``sb = fy - fb + s``, ``s = max(1, fa - fy, fb - fy)``;
* dequantize (graph output, host op inputs): ``x = q * 2^-f`` (exact in float32);
* other activations of a layer (sigmoid, SiLU, GELU, ...): the layer requantizes to an int8
  of exponent ``table_input_exp`` and a 256-entry table (``act_table``) maps it to the
  output's exponent.
"""

from __future__ import annotations

import math

import numpy as np

from target_dlac.core.errors import CodegenError, ConfigError

from target_dlac.binary.validate import MAX_SHIFT as SHIFT_LIMIT     # what the ISA accepts

MAX_EXP = 30
MAX_SHIFT = 40      # the largest requantization shift chosen


def exponent(maxabs: float, bits: int = 8, signed: bool = True) -> int:
    """Dynamic fixed-point exponent of a tensor whose largest magnitude is ``maxabs``:
    ``f = (bits - 1 if signed else bits) - ceil(log2(maxabs))``, so ``maxabs * 2^f`` is at
    most ``2^(bits-1)`` (signed) or ``2^bits`` (unsigned) and the clip of
    :func:`act_range` loses at most one step at the top."""
    if not maxabs > 0 or not math.isfinite(maxabs):
        return 0 if not maxabs > 0 else -MAX_EXP
    top = bits - 1 if signed else bits
    return int(np.clip(top - math.ceil(math.log2(maxabs)), -MAX_EXP, MAX_EXP))


def act_range(bits: int = 8, signed: bool = True) -> tuple[int, int]:
    """Integer range ``(lo, hi)`` of a ``bits``-bit activation: signed ``[-2^(b-1), 2^(b-1)-1]``,
    unsigned (after ReLU) ``[0, 2^b - 1]``."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _shift_for(largest: float) -> int:
    """Largest right shift (1..MAX_SHIFT) with ``largest * 2^shift < 2^30``."""
    if largest <= 0:
        return MAX_SHIFT
    return int(np.clip(29 - math.floor(math.log2(largest)), 1, MAX_SHIFT))


def conv_params(scale, bias, fx: int, fy: int, fr: int | None, where: str):
    """``(M int32[F], B int64[F], shift, rshift)`` of a layer's requantization (``scale``:
    the real per-channel multiplier of the accumulator; the codegen always gives one)."""
    bias = np.asarray(bias, np.float64)
    mult = np.asarray(scale, np.float64) * 2.0 ** (fy - fx)
    s = _shift_for(float(np.abs(mult).max()) if mult.size else 0.0)
    m = np.rint(mult * 2.0 ** s).astype(np.int64)
    if np.abs(m).max(initial=0) >= 2 ** 31:
        raise CodegenError(f"{where}: requantization multiplier does not fit 32 bits")
    b = np.rint(bias * 2.0 ** (fy + s))
    if np.abs(b).max(initial=0) >= 2.0 ** 62:
        raise CodegenError(f"{where}: bias does not fit the 64-bit requantization")
    rshift = 0
    if fr is not None:
        rshift = fy - fr + s
        if not 0 <= rshift <= SHIFT_LIMIT:
            raise CodegenError(f"{where}: residual exponent {fr} cannot be rescaled to {fy}")
    return m.astype(np.int32), b.astype(np.int64), s, rshift


def avg_params(count: int, fx: int, fy: int) -> tuple[int, int]:
    real = 2.0 ** (fy - fx) / count
    s = _shift_for(real)
    return int(round(real * 2.0 ** s)), s


def add_params(fa: int, fb: int, fy: int) -> tuple[int, int, int]:
    s = max(1, fa - fy, fb - fy)
    return fy - fa + s, fy - fb + s, s


#: Exponent of the int8 value a table activation reads (docs/isa.md "Integer mode"): the
#: bounded ones a fixed range that reaches their saturation (sigmoid [-8, 8), tanh and
#: hardsigmoid [-4, 4)); the ones that grow like ``x`` for large ``x`` the output's exponent,
#: at most 4 (at least [-8, 8), where their negative side has flattened out).
TABLE_INPUT_EXP = {"sigmoid": 4, "tanh": 5, "hardsigmoid": 5}


def table_input_exp(act: str, fy: int) -> int:
    """Exponent of the requantized value the activation table of ``act`` is indexed by."""
    if act in TABLE_INPUT_EXP:
        return TABLE_INPUT_EXP[act]
    return fy if act in ("leaky_relu", "prelu") else min(fy, 4)


def _act64(act: str, v: float, slope: float) -> float:
    """``act`` at ``v`` in float64 (Python's math: the exact function, not the interpreter's)."""
    if act in ("leaky_relu", "prelu"):
        return v if v >= 0 else v * slope
    if act in ("hardswish", "hardsigmoid"):
        t = min(max(v + 3.0, 0.0), 6.0) / 6.0
        return v * t if act == "hardswish" else t
    sig = 0.5 * (1.0 + math.tanh(v / 2))
    return {"sigmoid": sig, "silu": v * sig, "tanh": math.tanh(v),
            "gelu": 0.5 * v * math.erfc(-v / math.sqrt(2.0)),
            "gelu_tanh": 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))}[act]


def act_table(act: str, fx: int, fy: int, slope: float = 0.0) -> np.ndarray:
    """The int8 EPI's table (``act = lut``): entry ``q + 128`` is ``act(q·2^-fx)`` as an int8
    of exponent ``fy``, ``clip(round(act(q·2^-fx)·2^fy), -128, 127)``."""
    out = [_act64(act, q * 2.0 ** -fx, slope) * 2.0 ** fy for q in range(-128, 128)]
    return np.clip(np.rint(out), -128, 127).astype(np.int8)


def unsigned_output(act: str, lo: float, residual: bool, act_bits: int) -> bool:
    """Whether a conv / dense layer's output is an unsigned ``act_bits``-bit tensor (the rule
    of the low-bit pipeline, mirrored by the training side): ``act_bits < 8``, no fused
    residual (a residual add, also add + ReLU, stays int8) and a ReLU-like epilogue
    activation: ``relu``, or ``clip`` with a lower bound ``>= 0`` (ReLU6)."""
    return act_bits < 8 and not residual and (act == "relu" or (act == "clip" and lo >= 0))


def clip_bounds(act: str, lo: float, hi: float, fy: int,
                out: tuple[int, int] = (-128, 127)) -> tuple[int, int]:
    """The EPI's integer clip bounds of a layer of output exponent ``fy`` whose values lie in
    ``out`` (default: int8; a low-bit output: :func:`act_range` unsigned): relu clips to
    ``[max(0, out_lo), out_hi]``, clip to ``round(bound * 2^fy)`` limited to ``out``."""
    qlo, qhi = out
    if act == "relu":
        return max(0, qlo), qhi
    if act == "clip":
        return (int(np.clip(round(lo * 2.0 ** fy), qlo, qhi)),
                int(np.clip(round(hi * 2.0 ** fy), qlo, qhi)))
    return qlo, qhi


def relu_threshold_q(t: float, fy: int, hi: int, where: str) -> int:
    """The int8 EPI's ReLU threshold of a layer of output exponent ``fy`` (real value
    ``q·2^-fy``) whose values reach ``hi``: ``Tq = floor(t·2^fy)`` (``q > Tq`` survives);
    ``Tq >= hi`` would zero every output, a :class:`ConfigError` naming ``where``."""
    tq = math.floor(t * 2.0 ** fy)
    if tq >= hi:
        raise ConfigError(f"{where}: ReLU threshold {t:g} is {tq} at the output's exponent {fy}, "
                          f"not below the largest output value {hi}: the layer would output only zeros")
    return max(tq, 0)

