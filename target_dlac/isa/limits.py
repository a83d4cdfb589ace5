"""Bounds on the work and memory a binary may ask for: every budget in one place.

A ``.dlac`` file is small and its CRCs prove nothing about intent, so a valid binary must
not be able to make the runner work for hours or allocate gigabytes (issue 11).  Each
limit below is a named constant with its reason; ``docs/isa.md`` ("Limits") lists them with
the largest values measured on real programs.  Who enforces what:

* :mod:`target_dlac.isa.machine` refuses machine parameters above :data:`MAX_BUFFER_BYTES`,
  :data:`MAX_PES`, :data:`MAX_LANES` and :data:`MAX_DRAM_MIB` (the ``MACHINE`` section
  and ``--machine`` files alike);
* :mod:`target_dlac.binary.validate` refuses, before anything runs, a DRAM image over
  :data:`MAX_DRAM_BYTES`, metadata tables over :data:`MAX_META_ENTRIES` (or with more
  entries than instructions), an instruction whose :func:`insn_budget` exceeds
  :data:`MAX_INSN_WORK` or :data:`MAX_INSN_TEMP_BYTES`, and a program whose total work
  exceeds :data:`MAX_RUN_WORK` (naming the pc where the total crosses it);
* the interpreter runs the same checks before it executes a program, then charges what
  only the data tells (:func:`block_key_budget`, :func:`block_decode_budget`: a TACC /
  SACC weight block's bytes, and its decoding when the block is not in the cache) to the
  executing instruction and to the run, and fails at the instruction that would exceed a
  budget; it keeps its cache of decoded weight blocks under :data:`MAX_WEIGHT_CACHE_BYTES`.

The largest values of real programs (torchvision ResNet-18/34/50 and MobileNetV2 at
224x224, every quantization mode, default machine) are noted with each limit.

Work is counted in *element operations*: one element read, written or combined by one
NumPy pass, one multiply-accumulate of a convolution's matrix product, one element of a
pooling window.  A run's total adds each instruction's temporary bytes to its operations
(allocating and filling fresh memory costs about as much per byte), so memory-heavy
instructions cannot be repeated for free.  Both per-instruction budgets are computed from
the fields alone (the interpreter decodes every weight block to a dense matrix, so a
ternary block's contents change neither), before the instruction runs.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# ---- machine ------------------------------------------------------------------------------
#: Largest on-chip buffer (INP, WGT, ACC), in bytes: what the 24-bit on-chip address fields
#: reach (64x the 256 KiB defaults).
MAX_BUFFER_BYTES = 1 << 24
#: Largest PE array (``pe_rows * pe_cols``; 128x the default 512): the cost model pads
#: per-filter arrays to whole groups of PE columns, per conv instruction.
MAX_PES = 1 << 16
#: Largest ``lanes`` (MAC lanes per PE; the default is 1).
MAX_LANES = 64
#: Largest simulated DRAM, in MiB (``dram_mib``; the runner allocates the binary's declared
#: image, up to this).  Real programs: ResNet-50 at 224x224 with fp32 weights declares 141 MiB.
MAX_DRAM_MIB = 1024
MAX_DRAM_BYTES = MAX_DRAM_MIB * MIB

# ---- metadata -----------------------------------------------------------------------------
#: Hard cap on each metadata table (``layers``, ``host_ops``, ``fallbacks``; also the tensor
#: table and the tensor names of all host ops together); the META tables are also limited
#: to one entry per instruction.  Real programs: at most 61 layers and 64 tensors.
MAX_META_ENTRIES = 1 << 16

# ---- instructions and runs ----------------------------------------------------------------
#: Largest work of one instruction (element operations, :func:`insn_budget`, plus the run-time
#: part of its weight block): about 0.4 s of pooling windows.  Real programs: 3.9e7.
MAX_INSN_WORK = 1 << 30
#: Largest temporary NumPy memory of one instruction, in bytes (:func:`insn_budget`, plus the
#: run-time part of its weight block).  Real programs: 13.4 MiB.
MAX_INSN_TEMP_BYTES = 256 * MIB
#: Largest work of a whole run: the sum over its instructions of element operations *plus*
#: temporary bytes (filling fresh memory costs about as much per byte as an operation); a
#: run at the budget takes about a minute at most.  Real programs: 1.6e10 (ResNet-50 SWIS,
#: decoding its blocks), 7.9e9 (ResNet-50 ternary).
MAX_RUN_WORK = 1 << 37
#: The interpreter's cache of decoded weight blocks (kept for repeated runs) evicts its
#: oldest entries beyond this many bytes (block bytes + decoded matrix).  Real programs:
#: 152 MiB (ResNet-50 SWIS).
MAX_WEIGHT_CACHE_BYTES = 256 * MIB
#: Bytes a batched run (:mod:`target_dlac.sim.batch`) may hold for its inputs' memories
#: (each input its own DRAM image and on-chip buffers) and the temporaries of the largest
#: instruction, together; a larger request runs in chunks.  Real programs: ResNet-18 224
#: (ternary) holds 34 MiB per input (60 per chunk), the MNIST CNN 3.3 MiB (the default 64).
MAX_BATCH_BYTES = 2048 * MIB
#: The inputs per batched pass when a caller names none (capped by ``MAX_BATCH_BYTES``).
DEFAULT_BATCH = 64
#: Work charged per filter of a decoded SWIS block (``packing.unpack_swis`` loops over the
#: filters in Python: about 25 us each, the time of some 65,000 pooling-window elements),
#: on top of 32 per byte of the block (its groups are unpacked at about 12 ns a byte).
SWIS_FILTER_WORK = 1 << 16


def insn_budget(ins) -> tuple[int, int]:
    """``(work, temporary bytes)`` of one instruction, from its fields: upper bounds of the
    element operations and of the temporary arrays of the interpreter's implementation
    (``target_dlac/sim/interpreter.py``).  Fields are taken as they are (a malformed geometry
    is :mod:`target_dlac.binary.validate`'s business); barriers and HOST cost nothing here."""
    f, op = ins.f, ins.op
    if op in ("LOAD", "STORE"):
        return f["y"] * f["x"], 0                     # one strided copy, no temporary
    if op in ("TACC", "MAC", "SACC"):
        px = f["oh"] * f["ow"]
        kk = f["kh"] * f["kw"]
        k = (1 if f["depthwise"] else f["c"]) * kk
        tile = f["c"] * (f["h"] + f["pt"] + f["pb"]) * (f["w"] + f["pl"] + f["pr"])
        cols = f["c"] * kk * px                       # the [c, kh*kw, pixels] windows
        wts = f["f"] * k                              # the decoded dense weights
        out = f["f"] * px
        work = f["f"] * k * px + tile + cols + wts + 2 * out
        # padded float tile; windows (float32, + float64 in int8 mode); the decoded block
        # (float64 bincount + float32, + float64 in int8 mode); products, accumulator, casts
        return work, 4 * tile + 12 * cols + 20 * wts + 24 * out
    if op == "EPI":
        n = f["f"] * f["p"]
        return 4 * n, 40 * n                          # int8: several int64 copies of the tile
    if op == "POOL":
        out = f["c"] * f["oh"] * f["ow"]
        tile = f["c"] * (f["h"] + f["pt"] + f["pb"]) * (f["w"] + f["pl"] + f["pr"])
        return out * f["kh"] * f["kw"] + tile + out, 16 * tile + 32 * out
    if op == "ALU":
        return 3 * f["n"], 48 * f["n"]
    return 0, 0


def block_key_budget(block_bytes: int) -> tuple[int, int]:
    """``(work, temporary bytes)`` of looking a TACC / SACC weight block up in the decode
    cache, on every use: its bytes are copied and hashed."""
    return block_bytes, block_bytes


def block_decode_budget(op: str, block_bytes: int, nonzeros: int = 0, nfilters: int = 0,
                        groups: int = 0, max_shifts: int = 0) -> tuple[int, int]:
    """``(work, temporary bytes)`` of decoding a weight block that is not in the cache: a
    ternary block's ``nonzeros`` index, code and weight arrays, or a SWIS block's filters
    walked one by one (``nfilters`` filters of ``groups`` weight groups, at most
    ``max_shifts`` shifts each).  The dense ``[f, k]`` result is in :func:`insn_budget`."""
    if op == "TACC":
        return 16 * nonzeros, 64 * nonzeros
    per_filter = groups * 4 * max(max_shifts, 1)          # [groups, 4, shifts] int64 arrays
    return nfilters * SWIS_FILTER_WORK + 32 * block_bytes, 40 * per_filter


def insn_budget_problem(ins) -> str | None:
    """What is wrong with one instruction's :func:`insn_budget` (``None`` if it fits)."""
    work, temp = insn_budget(ins)
    if work > MAX_INSN_WORK:
        return (f"needs {work:,} element operations, over the budget of {MAX_INSN_WORK:,} per "
                "instruction (limits.MAX_INSN_WORK)")
    if temp > MAX_INSN_TEMP_BYTES:
        return (f"needs {temp:,} bytes of temporary memory, over the budget of "
                f"{MAX_INSN_TEMP_BYTES:,} per instruction (limits.MAX_INSN_TEMP_BYTES)")
    return None
