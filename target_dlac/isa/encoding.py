"""The dLAC instruction set: opcodes, fields, the fixed 256-bit encoding, disassembly.

Every instruction is 32 bytes: four little-endian 64-bit words.  Word 0 starts with
the common header

    bits 0-5   opcode
    bit  6     pop_prev   wait for (consume) a token from the previous queue
    bit  7     pop_next   wait for (consume) a token from the next queue
    bit  8     push_prev  signal the previous queue
    bit  9     push_next  signal the next queue

and each opcode's fields follow in the order of :data:`FORMATS`, packed from bit 10
upwards; a field never straddles a 64-bit word (it moves to the next word), and every
bit not covered by a field must be zero (the decoder refuses anything else, so
decode and encode are exact inverses).  Queues, in order: load <-> compute <-> store
("prev" of compute is load, "next" of compute is store).

The action and cycle cost of every instruction are documented in ``docs/isa.md``;
the cycle costs are implemented in :mod:`target_dlac.isa.cycles`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from target_dlac.core.errors import BinaryFormatError

from target_dlac.isa.machine import ADDR_FIELD_BITS as A, DRAM_FIELD_BITS as D

INSN_BYTES = 32
WORD_BITS = 64
HEADER = (("opcode", 6), ("pop_prev", 1), ("pop_next", 1), ("push_prev", 1), ("push_next", 1))
DEP_FIELDS = ("pop_prev", "pop_next", "push_prev", "push_next")

#: On-chip buffers (field ``buf``): input feature maps, weights, accumulators/outputs.
BUFFERS = ("INP", "WGT", "ACC")
#: Activation functions of EPI (field ``act``, 4 bits): float modes every one but ``lut``
#: (``relu``: a threshold ``T > 0`` in ``lo_bits`` makes it ``y > T ? y : 0``, int8 then also
#: clipping to ``hi_bits``; ``leaky_relu``: its slope in ``lo_bits``; ``prelu``: per-channel slopes after the bias
#: in the parameter block); int8 mode ``none``, ``relu``, ``clip`` and ``lut`` (a 256-entry
#: int8 table after the biases, applied to the requantized value).  See docs/isa.md "EPI".
ACTS = ("none", "relu", "clip", "leaky_relu", "prelu", "hardswish", "hardsigmoid", "silu", "sigmoid",
        "tanh", "gelu", "gelu_tanh", "lut")
#: The activations of the float modes that are not in the int8 EPI (it has ``lut`` instead).
FLOAT_ACTS = ACTS[3:12]
#: The int8 EPI's activations.
INT_ACTS = ("none", "relu", "clip", "lut")
#: Entries of the int8 EPI's activation table (``act = lut``): one per int8 value.
LUT_ENTRIES = 256
#: Element-wise ops of ALU (field ``op``); quantize / dequantize convert between float32
#: and int8 with the power-of-two exponent in field ``exp`` (biased by EXP_BIAS); narrow /
#: widen convert float32 to float16 and back.
#: The unary float activations (codes 7-13) compute as EPI's activation of the same name.
ALU_OPS = ("add", "add_relu", "relu", "quantize", "dequantize", "narrow", "widen",
           "hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu", "gelu_tanh")
#: ALU ops that apply a float activation (float32 / float16 only; undefined for int8).
ALU_ACTS = ALU_OPS[7:]
EXP_BIAS = 128
#: Activation data types (field ``dtype``): float32, float16 storage (float32 arithmetic
#: inside an op), int8 (int32 accumulators, integer requantization).
DTYPES = ("float32", "float16", "int8")
#: Weight formats of MAC (field ``wfmt``): dense float32 or dense int8 (4-/8-bit weights).
WFMTS = ("float32", "int8")
#: Pooling modes (field ``mode``).
POOL_MODES = ("max", "avg")

_CONV = (("inp", A), ("wgt", A), ("kh", 4), ("accumulate", 1), ("depthwise", 1),
         ("acc", A), ("c", 12), ("h", 12), ("w", 12), ("kw", 4),
         ("f", 12), ("oh", 12), ("ow", 12), ("sh", 4), ("sw", 4),
         ("pt", 4), ("pb", 4), ("pl", 4), ("pr", 4), ("dtype", 3), ("wfmt", 2), ("pxshift", 3))
_DMA = (("buf", 2), ("sram", A), ("y", 16), ("dram", D), ("x", A),
        ("dram_stride", 32), ("sram_stride", A))

#: opcode name -> (code, unit, fields after the header)
FORMATS: dict[str, tuple[int, str, tuple]] = {
    "LOAD":  (1, "load", _DMA),
    "STORE": (2, "store", _DMA),
    "TACC":  (3, "compute", _CONV),
    "MAC":   (4, "compute", _CONV),
    "EPI":   (5, "compute", (("acc", A), ("dst", A), ("has_scale", 1), ("has_res", 1), ("act", 4),
                             ("prm", A), ("res", A), ("f", 12),
                             ("p", 16), ("lo_bits", 32), ("dtype", 3), ("shift", 6), ("rshift", 6),
                             ("hi_bits", 32))),
    "POOL":  (6, "compute", (("src", A), ("dst", A), ("mode", 1), ("count_pad", 1),
                             ("c", 12), ("h", 12), ("w", 12), ("oh", 12), ("ow", 12),
                             ("kh", 12), ("kw", 12), ("sh", 8), ("sw", 8),
                             ("pt", 4), ("pb", 4), ("pl", 4), ("pr", 4), ("dtype", 3),
                             ("shift", 6), ("mult", 32))),
    "ALU":   (7, "compute", (("a", A), ("b", A), ("op", 4), ("dst", A), ("n", A), ("dtype", 3),
                             ("sa", 6), ("sb", 6), ("shift", 6), ("exp", 8))),
    "SYNC":  (8, "barrier", ()),
    "HOST":  (9, "barrier", (("index", 16),)),
    "HALT":  (10, "barrier", ()),
    "SACC":  (11, "compute", _CONV),
}
def field_bits(op: str, name: str) -> int:
    """Width in bits of field ``name`` of opcode ``op`` (from :data:`FORMATS`)."""
    for fname, bits in FORMATS[op][2]:
        if fname == name:
            return bits
    raise KeyError(f"{op} has no field {name!r}")


def field_max(op: str, name: str) -> int:
    """The largest value field ``name`` of ``op`` holds (unsigned: ``2**bits - 1``)."""
    return (1 << field_bits(op, name)) - 1


#: Limits of the encoding's fields, each derived from :data:`FORMATS` (what the lowering
#: and the schedule checks refuse beyond).
MAX_KERNEL = field_max("MAC", "kh")          # conv kernel height / width (4 bits: 15)
MAX_CONV_STRIDE = field_max("MAC", "sh")     # conv stride (4 bits: 15)
MAX_PAD = field_max("MAC", "pt")             # conv / pool padding of a tile (4 bits: 15)
MAX_DIM = field_max("MAC", "c")              # conv tile channels, rows, columns (12 bits: 4095)
MAX_POOL_KERNEL = field_max("POOL", "kh")    # pooling window (12 bits: 4095)
MAX_POOL_STRIDE = field_max("POOL", "sh")    # pooling stride (8 bits: 255)
MAX_POOL_DIM = field_max("POOL", "w")        # pooling tile channels, rows, columns (4095)
MAX_PIXELS = field_max("EPI", "p")           # pixels of an epilogue tile (16 bits: 65535)


def _layout(fields_: tuple) -> list[tuple[str, int, int, int]]:
    """[(name, word, shift, bits)] for header + fields, never straddling a word."""
    out, word, pos = [], 0, 0
    for name, bits in HEADER + tuple(fields_):
        if pos + bits > WORD_BITS:
            word, pos = word + 1, 0
        if word >= INSN_BYTES * 8 // WORD_BITS:
            raise AssertionError(f"format overflows {INSN_BYTES} bytes at field {name}")
        out.append((name, word, pos, bits))
        pos += bits
    return out


LAYOUTS = {name: _layout(f) for name, (_, _, f) in FORMATS.items()}
_USED = {}
for _name, _lay in LAYOUTS.items():
    _m = [0, 0, 0, 0]
    for _, _w, _s, _b in _lay:
        _m[_w] |= ((1 << _b) - 1) << _s
    _USED[_name] = np.array(_m, dtype=np.uint64)


@dataclass
class Insn:
    """One decoded instruction: its opcode name, dependency bits and fields."""

    op: str
    f: dict = field(default_factory=dict)
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0

    @property
    def unit(self) -> str:
        return FORMATS[self.op][1]

    def __getitem__(self, key):
        return self.f[key]

    def text(self) -> str:
        return disassemble(self)


def fbits(x: float) -> int:
    """float32 bit pattern of ``x`` (for EPI's clip bounds)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


#: Bytes per activation element of each ``dtype`` code.
ELEM_BYTES = (4, 2, 1)
INT8 = DTYPES.index("int8")


def elem_bytes(dtype: int) -> int:
    return ELEM_BYTES[dtype] if dtype < len(ELEM_BYTES) else 4


def alu_bytes(op: str | None, dtype: int) -> tuple[int, int]:
    """(bytes per input element, bytes per output element) of an ALU op: the conversions
    have fixed types, the arithmetic ops work on their ``dtype``."""
    conv = {"quantize": (4, 1), "dequantize": (1, 4), "narrow": (4, 2), "widen": (2, 4)}
    return conv.get(op, (elem_bytes(dtype), elem_bytes(dtype)))


def epi_param_layout(f: int, has_scale: bool, dtype: int, act: int = 0) -> tuple[int, int, int]:
    """(offset of the scale / multiplier vector, offset of the bias vector, total bytes) of
    EPI's parameter block: float32 scale[f], bias[f]; int8 mode: int32 M[f], then int64
    B[f] at the next 8-byte boundary.  The activation's own parameters follow (``act``:
    its code; :func:`epi_act_params`), and ``total`` counts them."""
    if dtype == INT8:
        boff = ((4 * f + 7) & ~7) if has_scale else 0
        end = boff + 8 * f
    else:
        boff = 4 * f if has_scale else 0
        end = boff + 4 * f
    return 0, boff, end + epi_act_params(f, dtype, act)


def epi_act_params(f: int, dtype: int, act: int) -> int:
    """Bytes of the activation's parameters at the end of EPI's parameter block (right
    after the biases): ``prelu`` float32 slope[f]; int8 ``lut`` the int8 table[256]."""
    name = ACTS[act] if 0 <= act < len(ACTS) else None
    if name == "prelu" and dtype != INT8:
        return 4 * f
    if name == "lut" and dtype == INT8:
        return LUT_ENTRIES
    return 0


def s32(b: int) -> int:
    """Signed value of a 32-bit field (EPI's integer clip bounds)."""
    return b - (1 << 32) if b >= 1 << 31 else b


def s32_bits(v: int) -> int:
    """32-bit two's-complement field of a signed integer."""
    return v & 0xFFFFFFFF


def bits_f(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def encode(insns: list[Insn]) -> bytes:
    """Encode instructions into ``32 * len(insns)`` bytes.  A field value that does
    not fit its width is a :class:`BinaryFormatError` naming the pc and field."""
    words = np.zeros((len(insns), 4), dtype=np.uint64)
    for pc, ins in enumerate(insns):
        if ins.op not in FORMATS:
            raise BinaryFormatError(f"pc {pc}: unknown opcode {ins.op!r}")
        code = FORMATS[ins.op][0]
        w = [0, 0, 0, 0]
        for name, word, shift, bits in LAYOUTS[ins.op]:
            if name == "opcode":
                v = code
            elif name in DEP_FIELDS:
                v = getattr(ins, name)
            else:
                try:
                    v = ins.f[name]
                except KeyError:
                    raise BinaryFormatError(f"pc {pc}: {ins.op} lacks field {name!r}") from None
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise BinaryFormatError(f"pc {pc}: {ins.op}.{name}={v!r} is not an integer")
            v = int(v)
            if not 0 <= v < (1 << bits):
                raise BinaryFormatError(f"pc {pc}: {ins.op}.{name}={v} does not fit {bits} bits")
            w[word] |= v << shift
        words[pc] = w
    return words.astype("<u8").tobytes()


def decode(data: bytes, base_offset: int = 0) -> list[Insn]:
    """Decode an instruction section.  Unknown opcodes and set padding bits are
    refused with the byte offset (``base_offset`` = where the section starts)."""
    if len(data) % INSN_BYTES:
        raise BinaryFormatError(f"instruction bytes ({len(data)}) are not a multiple of {INSN_BYTES}",
                                section="INSTS", offset=base_offset + len(data) - len(data) % INSN_BYTES)
    words = np.frombuffer(data, dtype="<u8").reshape(-1, 4).astype(np.uint64)
    n = len(words)
    codes = (words[:, 0] & np.uint64(63)).astype(np.int64)
    names = [None] * n
    cols: dict[str, dict] = {}
    first_bad = None                    # (pc, message): the first malformed word wins
    for name, (code, _, _) in FORMATS.items():
        idx = np.nonzero(codes == code)[0]
        if not len(idx):
            continue
        sub = words[idx]
        stray = sub & ~_USED[name]
        bad = np.nonzero(stray.any(axis=1))[0]
        if len(bad):
            pc = int(idx[bad[0]])
            if first_bad is None or pc < first_bad[0]:
                first_bad = (pc, f"pc {pc}: {name} has non-zero reserved bits")
        vals = {}
        for fname, word, shift, bits in LAYOUTS[name]:
            vals[fname] = ((sub[:, word] >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).tolist()
        cols[name] = (idx.tolist(), vals)
        for i in idx.tolist():
            names[i] = name
    unknown = [pc for pc, nm in enumerate(names) if nm is None]
    if unknown and (first_bad is None or unknown[0] < first_bad[0]):
        first_bad = (unknown[0], f"pc {unknown[0]}: unknown opcode {int(codes[unknown[0]])}")
    if first_bad is not None:
        raise BinaryFormatError(first_bad[1], section="INSTS", offset=base_offset + first_bad[0] * INSN_BYTES)
    out: list[Insn | None] = [None] * n
    for name, (idx, vals) in cols.items():
        keys = [k for k, _, _, _ in LAYOUTS[name] if k != "opcode" and k not in DEP_FIELDS]
        for j, pc in enumerate(idx):
            out[pc] = Insn(name, {k: vals[k][j] for k in keys}, vals["pop_prev"][j],
                           vals["pop_next"][j], vals["push_prev"][j], vals["push_next"][j])
    return out


def disassemble(ins: Insn) -> str:
    """One line of assembly, e.g. ``LOAD  INP[0x0000] <- dram[0x1000] 3x1024 ...``."""
    deps = "".join(c for c, b in zip("<>{}", (ins.pop_prev, ins.pop_next, ins.push_prev,
                                            ins.push_next)) if b)
    f = ins.f
    op = ins.op
    if op in ("LOAD", "STORE"):
        buf = BUFFERS[f["buf"]] if f["buf"] < len(BUFFERS) else f"BUF{f['buf']}"
        arrow = "<-" if op == "LOAD" else "->"
        body = (f"{buf}[{f['sram']:#x}] {arrow} dram[{f['dram']:#x}] {f['y']}x{f['x']}B "
                f"dram_stride={f['dram_stride']} sram_stride={f['sram_stride']}")
    elif op in ("TACC", "MAC", "SACC"):
        body = (f"ACC[{f['acc']:#x}] {'+' if f['accumulate'] else ''}= WGT[{f['wgt']:#x}] * "
                f"INP[{f['inp']:#x}] in={f['c']}x{f['h']}x{f['w']} out={f['f']}x{f['oh']}x{f['ow']} "
                f"k={f['kh']}x{f['kw']} s={f['sh']}x{f['sw']} pad={f['pt']},{f['pl']},{f['pb']},{f['pr']}"
                + (" depthwise" if f["depthwise"] else "")
                + (" w:int8" if op == "MAC" and f["wfmt"] == 1 else "")
                + (f" {DTYPES[f['dtype']]}" if f["dtype"] < len(DTYPES) else f" dtype{f['dtype']}"))
    elif op == "EPI":
        act = ACTS[f["act"]] if f["act"] < len(ACTS) else f"act{f['act']}"
        if act == "leaky_relu" and f["dtype"] != 2:
            act = f"leaky_relu[{bits_f(f['lo_bits']):g}]"
        thr = s32(f["lo_bits"]) if f["dtype"] == 2 else bits_f(f["lo_bits"])
        if act == "relu" and thr > 0:        # a ReLU threshold
            act = f"relu[>{thr:g}" + (f",<={s32(f['hi_bits'])}]" if f["dtype"] == 2 else "]")
        if act == "clip":
            act = (f"clip[{s32(f['lo_bits'])},{s32(f['hi_bits'])}]" if f["dtype"] == 2 else
                   f"clip[{bits_f(f['lo_bits']):g},{bits_f(f['hi_bits']):g}]")
        if f["dtype"] == 2:
            body = (f"ACC[{f['dst']:#x}] = {act}((ACC[{f['acc']:#x}]" + (" * M" if f["has_scale"] else "")
                    + f" + B(WGT[{f['prm']:#x}])"
                    + (f" + (INP[{f['res']:#x}] << {f['rshift']})" if f["has_res"] else "")
                    + f") >> {f['shift']}) {f['f']}x{f['p']} int8")
        else:
            body = (f"ACC[{f['dst']:#x}] = {act}(ACC[{f['acc']:#x}]"
                    + (" * scale" if f["has_scale"] else "") + f" + bias(WGT[{f['prm']:#x}])"
                    + (f" + INP[{f['res']:#x}]" if f["has_res"] else "") + f") {f['f']}x{f['p']}")
    elif op == "POOL":
        mode = POOL_MODES[f["mode"]]
        body = (f"ACC[{f['dst']:#x}] = {mode}pool(INP[{f['src']:#x}]) in={f['c']}x{f['h']}x{f['w']} "
                f"out={f['oh']}x{f['ow']} k={f['kh']}x{f['kw']} s={f['sh']}x{f['sw']} "
                f"pad={f['pt']},{f['pl']},{f['pb']},{f['pr']}" + (" count_pad" if f["count_pad"] else "")
                + (f" int8 *{f['mult']}>>{f['shift']}" if f["dtype"] == 2 else ""))
    elif op == "ALU":
        aop = ALU_OPS[f["op"]] if f["op"] < len(ALU_OPS) else f"op{f['op']}"
        if aop in ("narrow", "widen") or aop in ALU_ACTS:
            body = f"ACC[{f['dst']:#x}] = {aop}(INP[{f['a']:#x}]) n={f['n']}"
        elif aop in ("quantize", "dequantize"):
            body = f"ACC[{f['dst']:#x}] = {aop}(INP[{f['a']:#x}], exp={f['exp'] - EXP_BIAS}) n={f['n']}"
        elif f["dtype"] == 2 and aop != "relu":
            body = (f"ACC[{f['dst']:#x}] = {aop}((INP[{f['a']:#x}] << {f['sa']}) + (INP[{f['b']:#x}] << "
                    f"{f['sb']}) >> {f['shift']}) n={f['n']} int8")
        else:
            body = f"ACC[{f['dst']:#x}] = {aop}(INP[{f['a']:#x}], INP[{f['b']:#x}]) n={f['n']}"
    elif op == "HOST":
        body = f"host op #{f['index']}"
    else:
        body = ""
    return f"{op:<5} {deps:<4} {body}".rstrip()
