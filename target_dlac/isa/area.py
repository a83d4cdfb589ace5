"""The area model of the dLAC machine: mm^2 per component, from the machine's parameters.

The paper publishes one number, **2.2 mm^2 in 14 nm** for the whole accelerator
(``papers.md`` section 1).  It does not publish a floorplan, so this model builds the area
bottom-up from per-unit figures with a stated source, then scales every component by ONE
calibration factor so that the default :class:`~target_dlac.isa.machine.Machine` totals
exactly 2.2 mm^2.  The area of any other machine then follows its parameters (PE array,
buffers, zero-skip control, DMA width) instead of staying a constant.

Sources of the per-unit figures (every constant below is named after what it is):

* **Arithmetic** -- M. Horowitz, "Computing's energy problem (and what we can do about
  it)", ISSCC 2014, the table of operation energy and area in 45 nm: 32-bit float
  multiply 7700 um^2, 32-bit float add 4184 um^2, 32-bit integer multiply 3495 um^2,
  32-bit integer add 137 um^2.  Scaled to 14 nm by the ideal feature-size factor
  ``(14/45)^2`` (an assumption: real 45 -> 14 nm logic scaling is of the same order, and
  the calibration factor absorbs the difference).  These are synthesised, not full-custom,
  units; a full-custom 1.45 GHz variable-precision FMA (Kaul et al., ISSCC 2012, 32 nm,
  0.045 mm^2) scales to about 7x the Horowitz-based lane, so the absolute lane area is
  uncertain by that much; 512 lanes of the larger kind would not fit in 2.2 mm^2.
* **SRAM** -- the Intel 14 nm high-density 6T bitcell, 0.0588 um^2 (Natarajan et al.,
  IEDM 2014; Samsung's 14 nm HD cell is 0.064 um^2).  A compiled macro holds its bitcells
  at :data:`SRAM_ARRAY_EFFICIENCY` (assumption, 0.7) plus a fixed periphery per macro
  :data:`SRAM_MACRO_OVERHEAD_UM2` (assumption, 500 um^2: decoder, sense amplifiers,
  timing, I/O), with macros of at most :data:`SRAM_MACRO_MAX_BYTES` (assumption, 32 KiB);
  so a buffer's area grows with every byte and steps by one periphery per macro.
* **Random logic** (zero-skip control, queues, sequencers, DMA) -- counted in transistors
  at Intel 14 nm's 37.5 million transistors per mm^2 (M. Bohr, "Let's clear up the node
  naming mess", Intel 2017; a weighted NAND2 / scan flip-flop density).  Cells: NAND2 4,
  OR2 6, MUX2 12, flip-flop 24 transistors (textbook static CMOS).  The gate counts of the
  sequencers and DMA engines are assumptions of ours (named constants below).

**What a lane is.**  A lane (``lanes`` per PE) is one fp32 multiply-add: an fp32
multiplier and an fp32 adder.  fp16 runs at twice the rate (published) with fp32
accumulation (``docs/isa.md``): the two fp16 products of a lane share the fp32
multiplier (two 11-bit mantissa products fit in its 24-bit array), but each needs its own
fp32 accumulate adder, so a lane has a second fp32 adder (``fp16_add``).  int8 products
also use the shared multiplier; the int32 accumulate adds an int32 adder (``int32_add``,
ternary weights' add/subtract uses it too), and the epilogue's requantization
(``M_c x acc`` per element per cycle, EPI) an int32 multiplier (``int32_mul``).  The SWIS
bit-serial pass needs ``swis_shifts_per_pass`` 32-bit log shifters (5 stages of 32 MUX2).

**Calibration.**  :data:`CALIBRATION` = 2.2 / (uncalibrated total of the default machine),
one factor applied to every component alike: it stands for what the unit figures leave
out (placement utilisation, wiring, clock tree, power grid, floorplan whitespace) and the
45 -> 14 nm scaling error.  It comes out near 1.19, i.e. the unit figures fill about 84% of
the published die, within the 60-85% placement utilisation of typical standard-cell
designs, so the sources are consistent with the published area without a large fudge.

The model has no loop over bytes or PEs: every term is a closed formula of the machine's
parameters (``docs/isa.md`` "Area model" has the table).
"""

from __future__ import annotations

import math

from target_dlac.core.errors import ConfigError
from target_dlac.isa.machine import Machine

#: Published: the dLAC accelerator's area in 14 nm (papers.md section 1).
PUBLISHED_AREA_MM2 = 2.2

UM2_PER_MM2 = 1e6

# ---- arithmetic: Horowitz, ISSCC 2014, 45 nm areas (um^2) -------------------------------
FP32_MUL_45NM_UM2 = 7700.0
FP32_ADD_45NM_UM2 = 4184.0
INT32_MUL_45NM_UM2 = 3495.0
INT32_ADD_45NM_UM2 = 137.0
#: Assumption: ideal quadratic feature-size scaling from 45 nm to 14 nm.
SCALE_45NM_TO_14NM = (14.0 / 45.0) ** 2

# ---- SRAM: Intel 14 nm HD bitcell (Natarajan et al., IEDM 2014) ------------------------
BITCELL_UM2 = 0.0588
#: Assumption: the fraction of a compiled macro's area that is bitcells.
SRAM_ARRAY_EFFICIENCY = 0.7
#: Assumption: the fixed periphery of one SRAM macro.
SRAM_MACRO_OVERHEAD_UM2 = 500.0
#: Assumption: the largest macro; a larger buffer is several macros (banks).
SRAM_MACRO_MAX_BYTES = 32 * 1024

# ---- random logic: Intel 14 nm, 37.5 MTr/mm^2 (Bohr, 2017) -----------------------------
TRANSISTORS_PER_MM2 = 37.5e6
T_NAND2, T_OR2, T_MUX2, T_FLOP = 4, 6, 12, 24
#: 32-bit log shifter: 5 stages of 32 MUX2 (one per SWIS shift applied in a pass).
SHIFTER_MUX2 = 5 * 32

# ---- zero-skip control (assumptions; docs/isa.md "Activation zero-skip") ---------------
#: Weight positions a sequencer looks ahead to find the next live step.
LOOKAHEAD = 4
#: Bits of one look-ahead entry: a 32-bit weight and its 16-bit position.
LOOKAHEAD_ENTRY_BITS = 48
#: Zero flags kept beside INP: one bit per byte (an int8 element; wider types use fewer).
ZERO_FLAG_BITS_PER_BYTE = 1

# ---- control (assumptions) --------------------------------------------------------------
#: The load, compute and store units (docs/isa.md "Units and queues").
UNITS = 3
#: Instructions buffered per unit; an instruction is 32 bytes (docs/isa.md "Encoding").
INSN_QUEUE_DEPTH = 16
INSN_BITS = 256
#: The four dependency-token queues, each a counter.
TOKEN_QUEUES, TOKEN_COUNTER_BITS = 4, 8
#: NAND2-equivalent gates of one unit's decoder and sequencer.
UNIT_SEQUENCER_GATES = 20_000
#: NAND2-equivalent gates of one PE column's weight-stream sequencer (list walk, addresses).
COLUMN_SEQUENCER_GATES = 2_000
#: DMA: a read and a write channel (docs/isa.md, ``dram_bytes_per_cycle``).
DMA_CHANNELS = 2
#: NAND2-equivalent gates of one DMA channel's address generator and bus interface.
DMA_CHANNEL_GATES = 10_000
#: Bursts buffered per channel, each ``dram_bytes_per_cycle`` wide.
DMA_BUFFER_BEATS = 2

#: The components of :func:`area_breakdown`, in order (plus ``"total"``).
COMPONENTS = ("pe_array", "wgt_buf", "inp_buf", "acc_buf", "zero_skip", "control")
#: The parts of one PE lane (:func:`pe_array_breakdown`).
LANE_PARTS = ("fp32_mul", "fp32_add", "fp16_add", "int32_mul", "int32_add", "swis_shift")


def _logic_um2(transistors: float) -> float:
    """Area in um^2 of random logic of ``transistors`` transistors at 14 nm density."""
    return transistors / TRANSISTORS_PER_MM2 * UM2_PER_MM2


def sram_um2(nbytes: float) -> float:
    """Area in um^2 of one SRAM buffer of ``nbytes`` bytes: its bitcells at the macro
    efficiency plus one periphery per macro of at most :data:`SRAM_MACRO_MAX_BYTES`."""
    if nbytes <= 0:
        return 0.0
    macros = math.ceil(nbytes / SRAM_MACRO_MAX_BYTES)
    return 8 * nbytes * BITCELL_UM2 / SRAM_ARRAY_EFFICIENCY + macros * SRAM_MACRO_OVERHEAD_UM2


def lane_um2(m: Machine) -> dict:
    """Uncalibrated area in um^2 of one PE lane by part (:data:`LANE_PARTS`)."""
    s = SCALE_45NM_TO_14NM
    return {"fp32_mul": FP32_MUL_45NM_UM2 * s, "fp32_add": FP32_ADD_45NM_UM2 * s,
            "fp16_add": FP32_ADD_45NM_UM2 * s, "int32_mul": INT32_MUL_45NM_UM2 * s,
            "int32_add": INT32_ADD_45NM_UM2 * s,
            "swis_shift": m.swis_shifts_per_pass * _logic_um2(SHIFTER_MUX2 * T_MUX2)}


def _or_tree(inputs: int) -> int:
    """OR2 gates of an OR tree over ``inputs`` flags."""
    return max(0, inputs - 1)


def _lookahead_t(flag_inputs: int) -> float:
    """Transistors of one look-ahead: :data:`LOOKAHEAD` entries of flops, the OR trees of
    ``flag_inputs`` zero flags per entry, and the multiplexer picking the next live entry."""
    return (LOOKAHEAD * LOOKAHEAD_ENTRY_BITS * T_FLOP
            + LOOKAHEAD * _or_tree(flag_inputs) * T_OR2
            + (LOOKAHEAD - 1) * LOOKAHEAD_ENTRY_BITS * T_MUX2)


def zero_skip_um2(m: Machine) -> float:
    """Uncalibrated area in um^2 of the activation zero-skip control (``act_skip``):
    ``none``: nothing; ``column``: the zero flags beside INP and one look-ahead per PE
    column whose OR trees span the column's ``pe_rows x 2 lanes`` flags (fp16 lanes);
    ``pe``: the flags, the columns' look-ahead registers feeding a weight bus of
    :data:`LOOKAHEAD` weights per cycle, and a look-ahead of its own at every PE."""
    if m.act_skip == "none":
        return 0.0
    flags = sram_um2(m.inp_bytes * ZERO_FLAG_BITS_PER_BYTE / 8)
    fp16_lanes = m.lanes_for("float16")
    if m.act_skip == "column":
        return flags + m.pe_cols * _logic_um2(_lookahead_t(m.pe_rows * fp16_lanes))
    return (flags + m.pe_cols * _logic_um2(_lookahead_t(0))
            + m.pes * _logic_um2(_lookahead_t(fp16_lanes)))


def control_um2(m: Machine) -> float:
    """Uncalibrated area in um^2 of the control: the units' instruction queues, token
    counters and sequencers, one weight-stream sequencer per PE column, and the DMA
    channels (address generator, a buffer of :data:`DMA_BUFFER_BEATS` beats and a byte
    rotator ``8 B log2 B`` MUX2 wide, for ``B = dram_bytes_per_cycle``)."""
    width = m.dram_bytes_per_cycle
    queues = UNITS * INSN_QUEUE_DEPTH * INSN_BITS * T_FLOP + TOKEN_QUEUES * TOKEN_COUNTER_BITS * T_FLOP
    sequencers = (UNITS * UNIT_SEQUENCER_GATES + m.pe_cols * COLUMN_SEQUENCER_GATES) * T_NAND2
    dma = DMA_CHANNELS * (DMA_CHANNEL_GATES * T_NAND2 + DMA_BUFFER_BEATS * 8 * width * T_FLOP
                          + 8 * width * math.log2(width) * T_MUX2)
    return _logic_um2(queues + sequencers + dma)


def raw_breakdown_um2(m: Machine) -> dict:
    """The uncalibrated area in um^2 of each component (:data:`COMPONENTS`)."""
    if not isinstance(m, Machine):
        raise ConfigError(f"area model: expected a Machine, got {type(m).__name__}")
    return {"pe_array": m.pes * m.lanes * sum(lane_um2(m).values()),
            "wgt_buf": sram_um2(m.wgt_bytes), "inp_buf": sram_um2(m.inp_bytes),
            "acc_buf": m.pes * sram_um2(m.obuf_bytes_per_pe),
            "zero_skip": zero_skip_um2(m), "control": control_um2(m)}


#: The one calibration factor: the default machine's modelled area is the published 2.2 mm^2.
CALIBRATION = PUBLISHED_AREA_MM2 * UM2_PER_MM2 / sum(raw_breakdown_um2(Machine()).values())


def area_breakdown(m: Machine) -> dict:
    """The area in mm^2 of each component of machine ``m`` (:data:`COMPONENTS`: the PE
    array's lanes, the weight, input and output (ACC) buffers, the zero-skip control and the
    rest of the control), calibrated, plus ``"total"``, their sum.  The machine's
    ``area_mm2`` is the area of the published configuration in its process (2.2 by default):
    every component scales with it."""
    raw = raw_breakdown_um2(m)
    scale = CALIBRATION * _process(m) / UM2_PER_MM2
    out = {k: v * scale for k, v in raw.items()}
    out["total"] = sum(out[k] for k in COMPONENTS)
    return out


def pe_array_breakdown(m: Machine) -> dict:
    """The PE array's area in mm^2 by lane part (:data:`LANE_PARTS`), calibrated; the parts
    sum to ``area_breakdown(m)["pe_array"]``."""
    if not isinstance(m, Machine):
        raise ConfigError(f"area model: expected a Machine, got {type(m).__name__}")
    scale = m.pes * m.lanes * CALIBRATION * _process(m) / UM2_PER_MM2
    return {k: v * scale for k, v in lane_um2(m).items()}


def _process(m: Machine) -> float:
    """How much larger than the published die the machine's process makes the default
    configuration (``area_mm2`` / 2.2; 1.0 unless a machine file sets ``area_mm2``)."""
    return m.area_mm2 / PUBLISHED_AREA_MM2


def area_mm2(m: Machine) -> float:
    """The total area in mm^2 of machine ``m`` (2.2 for the default machine)."""
    return area_breakdown(m)["total"]
