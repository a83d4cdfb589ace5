"""QuantizeWeights: replace each selected layer's weights by quantized weights.

Rewrites ``conv2d(x, W)`` / ``matmul(x, W)`` of every layer named in the plan to use
the fake-quantized float weights ``scale * q`` (see :mod:`passes.weight_quant`):
ternary, 4-bit or 8-bit values ``q`` with one scale per cluster of N filters.  The
graph's values are those of the quantized network; the fold stage then splits the
scale out into the epilogue (FoldScales, using the exact ``(q, scale)`` returned
here) and holds ``q`` as int8 (MultiplyToAccumulate).

Legal for any layer: it is the quantization itself (values change by design).  Runs
after FoldBatchNorm, so the quantized weights are the BN-folded ones (standard
post-training order).  With per-filter scales, ternarizing the BN-folded weights
equals ternarizing the raw weights and folding BN into the epilogue: BN scales a
filter by one factor, which scales TWN's threshold and alpha alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir_util import make_const, module_pass
from .layers import replace_weights
from .weight_quant import dequantize, quantize_weight


@dataclass(frozen=True)
class WeightSpec:
    kind: str = "ternary"        # ternary | int4 | int8
    cluster: int = 1             # filters per shared scale; 0 = whole layer
    factor: float = 0.7          # TWN threshold factor (ternary)


def quantize_weights(mod, plan: dict[str, WeightSpec]):
    """``plan`` maps layer (variable) names to their spec; others are kept.
    Returns ``(module, {layer: (q int8, scale per output channel)})``."""
    decomp = {}

    def fake_quant(layer):
        spec = plan[layer.name]
        q, scale = quantize_weight(layer.weight, layer.out_axis, spec.kind, spec.cluster, spec.factor)
        decomp[layer.name] = (q, scale)
        return make_const(dequantize(q, scale, layer.out_axis), "float32"), None

    return replace_weights(mod, set(plan), fake_quant), decomp


def QuantizeWeights(plan: dict[str, WeightSpec]):  # noqa: N802 - TVM pass naming
    """QuantizeWeights as a TVM module pass."""
    return module_pass("dlac.QuantizeWeights")(lambda mod: quantize_weights(mod, plan)[0])
