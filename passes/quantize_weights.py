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

from target_dlac.core.ir import make_const, module_pass
from target_dlac.core.plan import IntWeights, LayerPlan, WeightFormat
from target_dlac.isa.machine import DEFAULT
from passes.layers import replace_weights
from passes.swis import swis_quantize
from passes.weight_quant import dequantize, quantize_weight


@dataclass(frozen=True)
class WeightSpec:
    kind: str = "ternary"        # ternary | int4 | int8 | swis
    cluster: int = 1             # filters per shared scale; 0 = whole layer
    factor: float = 0.7          # TWN threshold factor (ternary)
    shifts: float = 3.0          # SWIS: average shifts per group (may be fractional)
    consecutive: bool = False    # SWIS-C
    pe_cols: int = DEFAULT.pe_cols   # SWIS: filters that run together share a shift count


def quantize_weights(mod, plan: dict[str, WeightSpec], swis: dict | None = None):
    """``plan`` maps layer (variable) names to their spec; others are kept.  Returns
    ``(module, {layer: (q integers, scale per output channel)})``; SWIS layers' full
    decompositions (shift sets, counts, PE order) go into ``swis`` if given."""
    decomp = {}

    def fake_quant(layer):
        spec = plan[layer.name]
        w = layer.weight
        # one input channel per filter (depthwise): no SWIS groups; a grouped conv's weights
        # [F, C/G, kh, kw] group the C/G channels of each filter's own conv group
        depthwise = layer.op == "conv2d" and int(layer.attrs.get("groups", 1)) > 1 and w.shape[1] == 1
        if spec.kind == "swis" and not depthwise:
            r = swis_quantize(w, spec.shifts, axis=layer.out_axis, consecutive=spec.consecutive,
                              pe_cols=spec.pe_cols)
            q, scale = r.values, r.scale
            if swis is not None:
                swis[layer.name] = r
        else:      # depthwise SWIS has no input-channel groups: int8 instead
            kind = "int8" if spec.kind == "swis" else spec.kind
            q, scale = quantize_weight(w, layer.out_axis, kind, spec.cluster, spec.factor)
        decomp[layer.name] = (q, scale)
        return make_const(dequantize(q, scale, layer.out_axis), "float32"), None

    return replace_weights(mod, set(plan), fake_quant), decomp


def quantize_layers(mod, plans: list[LayerPlan], spec_for) -> tuple[object, list[LayerPlan]]:
    """Quantize every planned layer that is not ``fp32`` and has no integers yet (a
    pre-quantized layer keeps the model's); ``spec_for(plan) -> WeightSpec``.  Returns
    ``(module, plans with integers and SWIS decompositions)``."""
    todo = {p.var: spec_for(p) for p in plans if p.quantized and p.integers is None}
    swis: dict = {}
    out, decomp = quantize_weights(mod, todo, swis)
    done = []
    for p in plans:
        if p.var in decomp:
            q, scale = decomp[p.var]
            axis = 1 if p.op == "dense" else 0
            p = p.with_(integers=IntWeights(q, scale, axis), swis=swis.get(p.var))
            if (p.swis is not None) != (p.weight_format is WeightFormat.SWIS):
                raise AssertionError(f"layer {p.name}: SWIS decomposition and weight format "
                                     f"{p.weight_format} disagree")
        done.append(p)
    return out, done


def QuantizeWeights(plan: dict[str, WeightSpec]):  # noqa: N802 - TVM pass naming
    """QuantizeWeights as a TVM module pass."""
    return module_pass("dlac.QuantizeWeights")(lambda mod: quantize_weights(mod, plan)[0])
