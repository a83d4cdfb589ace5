"""The weight formats the ISA executes and their facts, one constant per fact.

:class:`WeightFormat` (defined with the layer plan in :mod:`target_dlac.core.plan`,
re-exported here) names them; :data:`FACTS` says, per format, which compute instruction
reads it, its ``wfmt`` field, its bytes per weight (dense blocks), the largest integer
magnitude it holds and the dtype the graph holds its integers in.  The block layouts
themselves are in :mod:`target_dlac.isa.blocks`.  Imports ``core`` and ``isa.encoding``.
"""

from __future__ import annotations

from dataclasses import dataclass

from target_dlac.core.plan import PRECISION_FORMATS, WeightFormat, format_of
from target_dlac.isa.encoding import WFMTS

__all__ = ["WeightFormat", "FormatFacts", "FACTS", "facts", "format_of", "PRECISION_FORMATS",
           "PRECISION_MAX", "SWIS_GROUP", "SWIS_BITS", "SWIS_MAX_MAGNITUDE", "SWIS_MAX_SHIFTS",
           "INT8_MAX_MAGNITUDE", "TERNARY_MAX_WEIGHTS", "WFMT_BYTES"]

#: SWIS: weights (consecutive input channels of one filter at one kernel position) that
#: share one shift set.
SWIS_GROUP = 4
#: SWIS: magnitude bits of a weight (shift positions 0 .. SWIS_BITS - 1).
SWIS_BITS = 8
#: SWIS: the largest shift count of a filter.
SWIS_MAX_SHIFTS = SWIS_BITS
#: SWIS: the largest magnitude (sign + 8 magnitude bits, held as int16).
SWIS_MAX_MAGNITUDE = (1 << SWIS_BITS) - 1
#: Dense int8 weights are symmetric: -128 is never used.
INT8_MAX_MAGNITUDE = 127
#: Ternary block: the u16 flat index of a non-zero weight reaches this many weights per
#: filter of one tile.
TERNARY_MAX_WEIGHTS = 1 << 16

#: The largest integer magnitude of each integer weight precision.
PRECISION_MAX = {"ternary": 1, "int4": 7, "int8": INT8_MAX_MAGNITUDE, "swis": SWIS_MAX_MAGNITUDE}


@dataclass(frozen=True)
class FormatFacts:
    fmt: WeightFormat
    opcode: str                    # the compute instruction that reads this format
    wfmt: int                      # the conv instructions' ``wfmt`` field (TACC / SACC: 0)
    bytes_per_weight: int | None   # dense blocks; None: a packed block (blocks.py sizes it)
    max_magnitude: int | None      # largest |integer| held (None: float weights)
    dtype: str                     # dtype of the weights in the graph after MultiplyToAccumulate

    @property
    def integer(self) -> bool:
        return self.max_magnitude is not None


FACTS = {
    WeightFormat.FLOAT32: FormatFacts(WeightFormat.FLOAT32, "MAC", WFMTS.index("float32"), 4, None,
                                      "float32"),
    WeightFormat.INT8: FormatFacts(WeightFormat.INT8, "MAC", WFMTS.index("int8"), 1,
                                   INT8_MAX_MAGNITUDE, "int8"),
    WeightFormat.TERNARY: FormatFacts(WeightFormat.TERNARY, "TACC", 0, None, 1, "int8"),
    WeightFormat.SWIS: FormatFacts(WeightFormat.SWIS, "SACC", 0, None, SWIS_MAX_MAGNITUDE, "int16"),
}


def facts(fmt: WeightFormat | str) -> FormatFacts:
    return FACTS[WeightFormat(fmt)]


#: Bytes per weight of the dense blocks by the MAC's ``wfmt`` field (float32: 4, int8: 1).
WFMT_BYTES = {f.wfmt: f.bytes_per_weight for f in FACTS.values() if f.opcode == "MAC"}
