"""The layer plan: what the quantize stage decided for each conv / dense layer.

One :class:`LayerPlan` per weighted layer, made by the quantize stage
(:mod:`passes.plan_layers`, :mod:`passes.quantize_weights`) and read by every later
consumer (the fold passes, the partitioner's composite attributes, the codegen and its
activation modes, the tuner).  Nobody downstream infers a layer's precision or weight
format from its weight values or dtypes: they read the plan.

:class:`WeightFormat` names the weight formats the ISA executes; their facts (opcode,
``wfmt`` field, bytes per weight, largest magnitude, SWIS group) are in
:mod:`target_dlac.isa.formats`.  Imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np


class WeightFormat(str, Enum):
    """How a layer's weights are stored and which compute instruction reads them."""

    FLOAT32 = "float32"     # dense float32 block, MAC wfmt 0
    INT8 = "int8"           # dense int8 block (4-/8-bit integers), MAC wfmt 1
    TERNARY = "ternary"     # ternary block (non-zero indices, 2-bit codes), TACC
    SWIS = "swis"           # SWIS block (shared shifts per group), SACC

    def __str__(self) -> str:
        return self.value


#: The weight format of each weight precision (a depthwise SWIS layer is held as int8:
#: it has no input-channel groups).
PRECISION_FORMATS = {"fp32": WeightFormat.FLOAT32, "ternary": WeightFormat.TERNARY,
                     "int4": WeightFormat.INT8, "int8": WeightFormat.INT8,
                     "swis": WeightFormat.SWIS}


def format_of(precision: str, depthwise: bool = False) -> WeightFormat:
    """The weight format a layer of ``precision`` is held in."""
    fmt = PRECISION_FORMATS[precision]
    return WeightFormat.INT8 if fmt is WeightFormat.SWIS and depthwise else fmt


@dataclass(frozen=True, eq=False)
class IntWeights:
    """An exact integer decomposition ``W = scale * q`` of a layer's weights."""

    q: np.ndarray            # integers (int8, or int16 for SWIS), in the graph's weight layout
    scale: np.ndarray        # float32, one per output channel
    axis: int                # axis of ``q`` that indexes output channels


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """The plan of one conv / dense layer."""

    name: str                # display (source) name, e.g. "layer1.0.conv1"
    var: str                 # Relax variable name of the weighted op
    op: str                  # "conv2d" or "dense"
    weight_shape: tuple
    precision: str           # "fp32", "ternary", "int4", "int8" or "swis"
    reason: str              # why this precision (default, first layer, override ...)
    weight_format: WeightFormat = WeightFormat.FLOAT32
    #: the exact integers of a quantized layer (QuantizeWeights, or the model's own)
    integers: IntWeights | None = None
    #: the SWIS decomposition of a SWIS layer (``passes.swis.SwisResult``: shifts, counts)
    swis: object | None = None
    #: an fp32 layer held as int8 (one scale per filter) by the all-integer pipeline
    #: (filled on demand by :func:`passes.int8_weights.int8_weights`)
    int8: IntWeights | None = None
    #: the layer's activation type override ("fp32" / "fp16"), None: the build's default
    activations: str | None = None

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    def with_(self, **kw) -> "LayerPlan":
        """A copy with fields replaced (plans are immutable)."""
        return replace(self, **kw)

    def to_dict(self) -> dict:
        """The plan's report entry (the ``layers`` of ``dlac compile --report``): plain
        values, no arrays."""
        return {"name": self.name, "var": self.var, "op": self.op,
                "weight_shape": list(self.weight_shape), "precision": self.precision,
                "reason": self.reason}


def fp32_plan(var: str, op: str = "conv2d", weight_shape: tuple = (), name: str | None = None) -> LayerPlan:
    """The plan of a layer nobody planned: full precision, float32 weights."""
    return LayerPlan(name or var, var, op, tuple(weight_shape), "fp32", "no plan")
