"""Int8Weights: the int8 form of the full-precision layers, for the all-integer pipeline.

Rewrites nothing: for every layer planned ``fp32`` (float weights), it quantizes the
layer's weights as they are in ``mod`` (the fold stage: FoldScales may have scaled them)
to int8 with one scale per output filter (:func:`passes.weight_quant.quantize_weight`,
``int8``, cluster 1) and returns the plans with ``LayerPlan.int8`` filled.  The int8
codegen (:mod:`target_dlac.codegen.modes.integer`) holds those layers' weights as these
integers.  Legal for any float layer (it is a quantization: the integer program computes
with ``scale * q`` instead of the float weights); run on demand (an int8 build), since
it is not free on a model with many float layers.
"""

from __future__ import annotations

from target_dlac.core.plan import IntWeights, LayerPlan, WeightFormat
from passes.layers import find_layers
from passes.weight_quant import quantize_weight


def int8_weights(mod, plans: list[LayerPlan]) -> list[LayerPlan]:
    """``plans`` with the int8 form of each float layer of ``mod['main']`` (a new list)."""
    todo = {p.var for p in plans if p.weight_format is WeightFormat.FLOAT32 and p.int8 is None}
    found = {}
    if todo:
        for layer in find_layers(mod["main"]):
            if layer.name in todo:
                q, scale = quantize_weight(layer.weight, layer.out_axis, "int8", 1)
                found[layer.name] = IntWeights(q, scale, layer.out_axis)
    return [p.with_(int8=found[p.var]) if p.var in found else p for p in plans]
