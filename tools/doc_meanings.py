"""The prose that tools/gen_docs.py puts into docs/isa.md's generated tables: what each
instruction field, header bit, enumeration, machine parameter and memory means.  Positions,
widths, defaults and enumerations come from the code; only these meanings are written by
hand ({NAME} is replaced by the enumeration or constant NAME)."""

HEADER_MEANINGS = {
    "opcode": "{OPCODES}",
    "pop_prev": "wait for (consume) a token from the previous unit",
    "pop_next": "wait for (consume) a token from the next unit",
    "push_prev": "send a token to the previous unit when done",
    "push_next": "send a token to the next unit when done",
}

#: opcode whose table documents a layout -> {field: meaning}
MEANINGS = {
    "LOAD": {
        "buf": "buffer: {BUFFERS}",
        "sram": "on-chip byte address (start of row 0)",
        "y": "number of rows",
        "dram": "DRAM byte address (start of row 0)",
        "x": "bytes per row",
        "dram_stride": "bytes between row starts in DRAM",
        "sram_stride": "bytes between row starts on chip",
    },
    "TACC": {
        "inp": "INP byte address of the input tile `[c][h][w]` (of the activation type)",
        "wgt": "WGT byte address of the weight block",
        "kh": "kernel height",
        "accumulate": "1: add into the accumulator tile; 0: overwrite it",
        "depthwise": "1: filter `r` reads only input channel `r` (needs `c == f`; TACC/MAC only)",
        "acc": "ACC byte address of the accumulator tile `[f][oh*ow]` (float32, or int32 if `dtype` = 2)",
        "c": "input channels of the tile",
        "h": "input rows (unpadded)",
        "w": "input columns (unpadded)",
        "kw": "kernel width",
        "f": "filters (= output channels / accumulator rows) of the tile",
        "oh": "output rows",
        "ow": "output columns",
        "sh": "vertical stride",
        "sw": "horizontal stride",
        "pt": "zero rows above",
        "pb": "zero rows below",
        "pl": "zero columns left",
        "pr": "zero columns right",
        "dtype": "activation type: {DTYPES}",
        "wfmt": "MAC weight format (dense blocks): {WFMTS}; int8 holds 4-/8-bit weights; 0 for TACC and SACC",
        "pxshift": "PE-array mapping: `R' = R >> pxshift` rows of pixels by `P' = P << pxshift` columns of "
                   "filters (the same PEs); at most `log2` of the largest power of two dividing `R` "
                   "({MAX_PXSHIFT} by default). It changes the cost only, never the values",
    },
    "EPI": {
        "acc": "ACC byte address of the input tile `[f][p]` (float32, or int32 if `dtype` = 2)",
        "dst": "ACC byte address of the result `[f][p]` (of the activation type)",
        "has_scale": "1: the parameter block starts with `scale[f]` (int8: multipliers `M[f]`)",
        "has_res": "1: add the residual tile at `res`",
        "act": "{ACTS}",
        "prm": "WGT byte address of the parameter block",
        "res": "INP byte address of the residual tile `[f][p]` (of the activation type; read only if `has_res`)",
        "f": "rows (channels) of the tile",
        "p": "elements per row (pixels)",
        "lo_bits": "clip lower bound (leaky_relu: the slope): float32 bit pattern; int8: signed 32-bit integer",
        "dtype": "{DTYPES}",
        "shift": "int8: rounding right shift of the requantization",
        "rshift": "int8: left shift of the residual",
        "hi_bits": "clip upper bound, encoded as `lo_bits`",
    },
    "POOL": {
        "src": "INP byte address of the input `[c][h][w]` (of the activation type)",
        "dst": "ACC byte address of the output `[c][oh][ow]` (same type as the input)",
        "mode": "{POOL_MODES}",
        "count_pad": "float avg only: 1 = divide by `kh*kw`, 0 = by the valid count",
        "c": "channels",
        "h": "input rows (unpadded)",
        "w": "input columns (unpadded)",
        "oh": "output rows",
        "ow": "output columns",
        "kh": "window height",
        "kw": "window width",
        "sh": "vertical stride",
        "sw": "horizontal stride",
        "pt": "padding rows above",
        "pb": "padding rows below",
        "pl": "padding columns left",
        "pr": "padding columns right",
        "dtype": "{DTYPES}",
        "shift": "int8 avg: rounding right shift",
        "mult": "int8 avg: multiplier of the window sum (unsigned)",
    },
    "ALU": {
        "a": "INP byte address of operand `a` (`[n]`)",
        "b": "INP byte address of operand `b` (`[n]`)",
        "op": "{ALU_OPS}",
        "dst": "ACC byte address of the result (`[n]`)",
        "n": "number of elements",
        "dtype": "add/add_relu/relu: {DTYPES}; the activations (7-13): float32, float16; the conversions ignore it",
        "sa": "int8 add: left shift of `a`",
        "sb": "int8 add: left shift of `b`",
        "shift": "int8 add: rounding right shift",
        "exp": "quantize/dequantize: exponent + `EXP_BIAS` ({EXP_BIAS})",
    },
    "HOST": {
        "index": "entry of the `host_ops` table in META",
    },
}


# ---- machine parameters (prose) --------------------------------------------------------------

MACHINE_MEANINGS = {
    "clock_mhz": "clock",
    "area_mm2": "area (14 nm) of the published configuration: the area model's calibration (\"Area model\")",
    "pe_rows": "PE rows; each row computes different output pixels",
    "pe_cols": "PE columns; each column holds one output channel",
    "lanes": "fp32 MAC lanes per PE (published: fp16 runs at 2×)",
    "wgt_buf_kib": "WGT size",
    "inp_buf_kib": "INP size",
    "obuf_bytes_per_pe": "output buffer per PE; all of them together form ACC",
    "dram_bytes_per_cycle": "DRAM bandwidth ({DRAM_GBS} GB/s at {CLOCK} MHz) per direction: the load unit "
                            "reads and the store unit writes over separate channels (as AXI's read and write "
                            "channels), so a LOAD and a STORE overlap at full rate each",
    "dma_latency": "fixed cycles per DMA instruction",
    "compute_setup": "fixed cycles per compute instruction",
    "dram_mib": "largest DRAM image a binary may declare",
    "swis_shifts_per_pass": "shifts a SWIS PE applies per pass (SACC cost): 1 = single-shift, 2 = double-shift",
    "act_skip": "zero-activation skipping (TACC / MAC / SACC cost): `none`; `column`: a PE column skips a step "
                "when every pixel of its pass reads zero at it; `pe`: each PE skips its own zero steps and the "
                "array waits for the slowest PE (\"Activation zero-skip\")",
}

#: what each memory holds (prose), in table order
MEMORY_HOLDS = {
    "DRAM": "constants at address 0, then the tensors",
    "INP": "input tiles `[c][h][w]`, residual tiles, ALU operands",
    "WGT": "weight blocks (ternary, dense or SWIS) and epilogue parameters",
    "ACC": "accumulator tiles `[f][pixels]` (float32 or int32) and output tiles",
}
