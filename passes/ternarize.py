"""TernarizeWeights: replace each selected layer's weights by TWN ternary weights.

Rewrites ``conv2d(x, W)`` / ``matmul(x, W)`` of every layer named in the plan
to use ``alpha * t`` (see :mod:`passes.twn`): fake-quantized float weights,
``t`` in {-1, 0, +1}, ``alpha`` one per output filter or one per layer.  The
graph's values are those of the ternary network; the fold stage then splits
``alpha`` out into the epilogue (FoldScales) and holds ``t`` as int8
(MultiplyToAccumulate).

Legal for any layer: it is the quantization itself (values change by design).
Runs after FoldBatchNorm, so the ternarized weights are the BN-folded ones
(standard post-training order).  With per-filter scales this equals
ternarizing the raw weights and folding BN into the epilogue: BN scales a
filter by one factor, which scales TWN's threshold and alpha alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir_util import make_const, module_pass
from .layers import replace_weights
from .twn import dequantize, ternarize


@dataclass(frozen=True)
class TernarySpec:
    granularity: str = "filter"
    factor: float = 0.7


def ternarize_weights(mod, plan: dict[str, TernarySpec]):
    """``plan`` maps layer (variable) names to their ternary spec; others are kept."""

    def fake_quant(layer):
        spec = plan[layer.name]
        t, alpha = ternarize(layer.weight, layer.out_axis, spec.granularity, spec.factor)
        return make_const(dequantize(t, alpha, layer.out_axis), "float32"), None

    return replace_weights(mod, set(plan), fake_quant)


def TernarizeWeights(plan: dict[str, TernarySpec]):  # noqa: N802 - TVM pass naming
    """TernarizeWeights as a TVM module pass."""
    return module_pass("dlac.TernarizeWeights")(lambda mod: ternarize_weights(mod, plan))
