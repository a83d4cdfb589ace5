"""The dLAC instruction encoding (round trip, refusal of malformed words), the
disassembler, and the documented cycle-cost formulas.  NumPy only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_dlac.core.errors import BinaryFormatError
from target_dlac.isa import cycles
from target_dlac.isa.encoding import (BUFFERS, DEP_FIELDS, FORMATS, INSN_BYTES, Insn, _USED,
                             bits_f, decode, disassemble, encode, fbits)
from target_dlac.isa.machine import Machine

OPS = sorted(FORMATS)
FAST = settings(max_examples=40, deadline=None)


# ---- strategies -------------------------------------------------------------------------

@st.composite
def insn_st(draw, op=None):
    """A random instruction: every field anywhere in its range, random dependency bits."""
    op = draw(st.sampled_from(OPS)) if op is None else op
    fields = {name: draw(st.integers(0, (1 << bits) - 1)) for name, bits in FORMATS[op][2]}
    deps = [draw(st.integers(0, 1)) for _ in DEP_FIELDS]
    return Insn(op, fields, *deps)


@st.composite
def raw_word_st(draw, op=None):
    """32 random bytes that are a *valid* encoding: random bits wherever ``op``'s layout
    has a field (header included), zero elsewhere, and ``op``'s opcode."""
    op = draw(st.sampled_from(OPS)) if op is None else op
    words = [draw(st.integers(0, (1 << 64) - 1)) & int(_USED[op][i]) for i in range(4)]
    words[0] = (words[0] & ~63) | FORMATS[op][0]
    return b"".join(w.to_bytes(8, "little") for w in words)


def assert_same(a: Insn, b: Insn):
    assert a.op == b.op
    assert a.f == b.f, f"{a.op}: fields differ"
    for d in DEP_FIELDS:
        assert getattr(a, d) == getattr(b, d), d


def section_and_offset(err: BinaryFormatError) -> tuple:
    return err.section, err.offset


# ---- round trip -------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@FAST
@given(data=st.data())
def test_roundtrip_every_opcode(op, data):
    ins = data.draw(insn_st(op))
    raw = encode([ins])
    assert len(raw) == INSN_BYTES
    (back,) = decode(raw)
    assert_same(back, ins)
    assert all(type(v) is int for v in back.f.values())
    assert encode([back]) == raw


@settings(max_examples=60, deadline=None)
@given(st.lists(insn_st(), min_size=0, max_size=12))
def test_roundtrip_streams(stream):
    raw = encode(stream)
    assert len(raw) == INSN_BYTES * len(stream)
    back = decode(raw)
    assert len(back) == len(stream)
    for a, b in zip(back, stream):
        assert_same(a, b)


@settings(max_examples=80, deadline=None)
@given(st.lists(raw_word_st(), min_size=1, max_size=8))
def test_bytes_roundtrip(words):
    raw = b"".join(words)
    assert encode(decode(raw)) == raw


def test_extreme_values_every_opcode():
    """All-ones and all-zero fields (the widest values) survive the round trip."""
    for op in OPS:
        for fill in (0, 1):
            f = {n: ((1 << b) - 1) * fill for n, b in FORMATS[op][2]}
            ins = Insn(op, f, fill, fill, fill, fill)
            assert_same(decode(encode([ins]))[0], ins)


def test_fbits_bits_f():
    for x in (0.0, -0.0, 1.0, -0.5, 0.75, 6.0, 3.4e38, -1e-30):
        b = fbits(x)
        assert 0 <= b < 1 << 32
        assert bits_f(b) == np.float32(x)
    assert fbits(1.0) == 0x3F800000
    assert fbits(-2.0) == 0xC0000000


# ---- encoder refusals -------------------------------------------------------------------

def _full(op, **over):
    f = {n: 0 for n, _ in FORMATS[op][2]}
    f.update(over)
    return f


@pytest.mark.parametrize("op", [o for o in OPS if FORMATS[o][2]])
def test_out_of_range_field_names_pc_and_field(op):
    name, bits = FORMATS[op][2][-1]
    stream = [Insn("SYNC"), Insn("SYNC"), Insn(op, _full(op, **{name: 1 << bits})), Insn("HALT")]
    with pytest.raises(BinaryFormatError) as ei:
        encode(stream)
    msg = str(ei.value)
    assert "pc 2" in msg and f"{op}.{name}" in msg and str(1 << bits) in msg


@pytest.mark.parametrize("bad", [-1, 2])
@pytest.mark.parametrize("dep", DEP_FIELDS)
def test_bad_dependency_bit(dep, bad):
    ins = Insn("LOAD", _full("LOAD"))
    setattr(ins, dep, bad)
    with pytest.raises(BinaryFormatError, match=rf"pc 1: LOAD\.{dep}="):
        encode([Insn("SYNC"), ins])


def test_negative_field_and_missing_field():
    with pytest.raises(BinaryFormatError, match=r"pc 0: ALU\.n=-1"):
        encode([Insn("ALU", _full("ALU", n=-1))])
    f = _full("POOL")
    del f["kw"]
    with pytest.raises(BinaryFormatError, match=r"pc 1: POOL lacks field 'kw'"):
        encode([Insn("HALT"), Insn("POOL", f)])
    with pytest.raises(BinaryFormatError, match=r"pc 0: unknown opcode 'NOP'"):
        encode([Insn("NOP")])


# ---- decoder refusals -------------------------------------------------------------------

def _stream(n=4):
    return bytearray(encode([Insn("LOAD", _full("LOAD", x=4, y=1)), Insn("SYNC"),
                             Insn("ALU", _full("ALU", n=3)), Insn("HALT")][:n]))


@pytest.mark.parametrize("code", [0, max(c for c, _, _ in FORMATS.values()) + 1, 40, 63])
@pytest.mark.parametrize("pc", [0, 2])
def test_unknown_opcode_word(code, pc):
    raw = _stream()
    raw[pc * INSN_BYTES] = (raw[pc * INSN_BYTES] & ~63) | code
    base = 1000
    with pytest.raises(BinaryFormatError) as ei:
        decode(bytes(raw), base_offset=base)
    e = ei.value
    assert e.offset == base + pc * INSN_BYTES
    assert f"byte offset {base + pc * INSN_BYTES}" in str(e)
    assert f"pc {pc}" in str(e) and f"unknown opcode {code}" in str(e)


def _unused_bits(op):
    return [(w, b) for w in range(4) for b in range(64) if not (int(_USED[op][w]) >> b) & 1]


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_reserved_bit_refused(op, data):
    unused = _unused_bits(op)
    assert unused, f"{op} has no reserved bit"
    w, b = data.draw(st.sampled_from(unused))
    pc = data.draw(st.integers(0, 3))
    stream = [Insn("SYNC")] * 4
    stream[pc] = data.draw(insn_st(op))
    raw = bytearray(encode(stream))
    word = int.from_bytes(raw[pc * 32 + 8 * w: pc * 32 + 8 * w + 8], "little") | (1 << b)
    raw[pc * 32 + 8 * w: pc * 32 + 8 * w + 8] = word.to_bytes(8, "little")
    with pytest.raises(BinaryFormatError, match="reserved bits") as ei:
        decode(bytes(raw), base_offset=64)
    assert ei.value.offset == 64 + pc * INSN_BYTES
    assert f"pc {pc}" in str(ei.value) and op in str(ei.value)


def _corrupt(kind: str) -> bytes:
    raw = _stream()
    if kind == "unknown opcode":
        raw[64] &= ~63                                   # pc 2: opcode 0
    elif kind == "reserved bit":
        raw[64 + 31] |= 0x80                             # pc 2 (ALU): a bit of word 3
    else:
        raw = raw[:64 + 7]                               # 2 instructions and 7 stray bytes
    return bytes(raw)


@pytest.mark.parametrize("kind", ["unknown opcode", "reserved bit", "length"])
def test_decode_errors_name_the_insts_section(kind):
    """(Was a bug: decode named a section 'INST' that the container does not have.)"""
    with pytest.raises(BinaryFormatError) as ei:
        decode(_corrupt(kind), base_offset=128)
    assert ei.value.offset == 128 + 64
    assert ei.value.section == "INSTS"
    assert "section INSTS" in str(ei.value)


@pytest.mark.parametrize("extra", [1, 5, 31])
def test_length_not_multiple_of_32(extra):
    raw = bytes(_stream(2)) + b"\0" * extra
    with pytest.raises(BinaryFormatError, match="not a multiple of 32") as ei:
        decode(raw, base_offset=100)
    assert ei.value.offset == 100 + 64


def test_decode_empty():
    assert decode(b"") == []


# ---- disassembly --------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_disassemble_every_opcode(op, data):
    ins = data.draw(insn_st(op))
    line = disassemble(ins)
    assert "\n" not in line
    assert line.split()[0] == op
    assert ins.text() == line


def test_disassemble_details():
    ld = Insn("LOAD", _full("LOAD", buf=BUFFERS.index("WGT"), sram=0x40, dram=0x1000, y=3, x=1024,
                            dram_stride=2048, sram_stride=1024), push_next=1)
    line = disassemble(ld)
    assert line.startswith("LOAD") and "WGT[0x40]" in line and "dram[0x1000]" in line
    assert "3x1024B" in line and "}" in line
    epi = Insn("EPI", _full("EPI", act=2, lo_bits=fbits(-0.5), hi_bits=fbits(6.0), f=4, p=9),
               pop_prev=1)
    assert "clip[-0.5,6]" in disassemble(epi)
    assert disassemble(Insn("HALT")) == "HALT"
    assert "host op #7" in disassemble(Insn("HOST", {"index": 7}))


# ---- costs ------------------------------------------------------------------------------------

SMALL = Machine(pe_rows=2, pe_cols=4, lanes=1, compute_setup=8, dma_latency=100,
                dram_bytes_per_cycle=64)


def _conv(op, **over):
    return Insn(op, _full(op, **over))


def test_cost_tacc_group_maxima():
    counts = np.array([5, 3, 7, 1, 2, 9, 0, 4, 6])       # PE order; groups of pe_cols = 4
    ins = _conv("TACC", f=9, c=2, kh=3, kw=3, oh=3, ow=3, dtype=0)
    # passes = ceil(3*3 / (2 rows * 1 lane)) = 5; group maxima 7 + 9 + 6 = 22
    assert cycles.group_max_sum(counts, 4) == 22
    assert cycles.passes(ins, SMALL) == 5
    assert cycles.cost(ins, SMALL, counts) == 8 + 5 * 22
    # the PE order matters: sorted counts pack better
    assert cycles.cost(ins, SMALL, np.sort(counts)[::-1]) == 8 + 5 * (9 + 4 + 0)
    # fp16 doubles the lanes: passes = ceil(9 / 4) = 3
    assert cycles.cost(_conv("TACC", f=9, oh=3, ow=3, dtype=1), SMALL, counts) == 8 + 3 * 22
    assert cycles.group_max_sum(np.array([], np.int64), 4) == 0


def test_cost_mac():
    ins = _conv("MAC", f=9, c=2, kh=3, kw=3, oh=3, ow=3)
    # ceil(9 filters / 4 cols) = 3 groups, 2*3*3 = 18 weights each, 5 passes
    assert cycles.cost(ins, SMALL) == 8 + 5 * 3 * 18
    dw = _conv("MAC", f=9, c=9, kh=3, kw=3, oh=3, ow=3, depthwise=1)
    assert cycles.cost(dw, SMALL) == 8 + 5 * 3 * 9
    # TACC with every weight present costs as MAC
    full = np.full(9, 18)
    assert cycles.cost(_conv("TACC", f=9, c=2, kh=3, kw=3, oh=3, ow=3), SMALL, full) == 8 + 5 * 3 * 18


@pytest.mark.parametrize("op", ["LOAD", "STORE"])
@pytest.mark.parametrize("y,x,expect", [(3, 100, 100 + 5), (1, 64, 101), (1, 65, 102), (2, 1, 101),
                                        (0, 10, 100)])
def test_cost_dma(op, y, x, expect):
    ins = Insn(op, _full(op, y=y, x=x, dram_stride=4096, sram_stride=512))
    assert cycles.cost(ins, SMALL) == expect == SMALL.dma_latency + math.ceil(y * x / 64)


def test_cost_elementwise_and_barriers():
    # pes * lanes = 8 MACs per cycle
    assert cycles.cost(Insn("EPI", _full("EPI", f=5, p=7)), SMALL) == 8 + 5          # ceil(35/8)
    assert cycles.cost(Insn("POOL", _full("POOL", c=3, oh=2, ow=3, kh=3, kw=3)), SMALL) == 8 + 3 * 9
    assert cycles.cost(Insn("ALU", _full("ALU", n=17)), SMALL) == 8 + 3
    assert cycles.cost(Insn("ALU", _full("ALU", n=16)), SMALL) == 8 + 2
    assert cycles.cost(Insn("SYNC"), SMALL) == 1
    assert cycles.cost(Insn("HALT"), SMALL) == 0
    assert cycles.cost(Insn("HOST", {"index": 0}), SMALL) == 0
    m2 = Machine(pe_rows=2, pe_cols=4, lanes=2, compute_setup=0)
    assert cycles.cost(Insn("ALU", _full("ALU", n=17)), m2) == 2                    # ceil(17/16)


# ---- the worked examples of docs/isa.md ---------------------------------------------------------

def test_docs_examples():
    m = Machine()
    assert encode([Insn("HOST", {"index": 3})]) == (0xC09).to_bytes(8, "little") + bytes(24)
    ld = Insn("LOAD", _full("LOAD", y=16, x=1024, dram_stride=1024, sram_stride=1024))
    assert cycles.cost(ld, m) == 356
    tacc = _conv("TACC", c=64, f=64, kh=3, kw=3, h=16, w=16, oh=14, ow=14, sh=1, sw=1)
    assert cycles.cost(tacc, m, np.array([200] * 32 + [150] * 32)) == 4558
    assert cycles.cost(tacc, m, np.array([200, 150] * 32)) == 5208
    mac = _conv("MAC", c=64, f=64, kh=3, kw=3, h=16, w=16, oh=14, ow=14, sh=1, sw=1)
    assert cycles.cost(mac, m) == 14984
    assert cycles.cost(_conv("MAC", c=64, f=64, kh=3, kw=3, oh=14, ow=14, depthwise=1), m) == 242
    assert cycles.cost(_conv("MAC", c=64, f=64, kh=3, kw=3, oh=14, ow=14, dtype=1), m) == 8072
    assert cycles.cost(Insn("EPI", _full("EPI", f=64, p=196)), m) == 33
    assert cycles.cost(Insn("POOL", _full("POOL", c=64, h=113, w=113, oh=56, ow=56, kh=3, kw=3,
                                          sh=2, sw=2)), m) == 3536
    assert cycles.cost(Insn("ALU", _full("ALU", n=50176)), m) == 106


def test_docs_ternary_block_example():
    from target_dlac.isa.blocks import pack_ternary, unpack_ternary

    t = np.array([[0, 1, 0], [0, 0, -1]]).reshape(2, 1, 1, 3)
    blk = pack_ternary(t, np.array([1, 0]))
    assert blk == bytes.fromhex("01000000 01000000 0100 0000 0200 0100 06000000".replace(" ", ""))
    dense, counts = unpack_ternary(np.frombuffer(blk, np.uint8), 0, 2, 3)
    np.testing.assert_array_equal(dense, t.reshape(2, 3).astype(np.float32))
    np.testing.assert_array_equal(counts, [1, 1])


# ---- decode reports the first bad word; encode refuses non-integers -------------------------------

@pytest.mark.parametrize("first", ["reserved bit in HALT", "unknown opcode"])
def test_decode_reports_the_first_bad_instruction(first):
    raw = bytearray(encode([Insn("HALT"), Insn("SYNC"), Insn("SYNC"), Insn("LOAD", _full("LOAD"))]))
    if first == "unknown opcode":
        raw[0] &= ~63
    else:
        raw[31] |= 0x80
    raw[3 * 32 + 31] |= 0x80                       # pc 3: a stray bit in the LOAD
    with pytest.raises(BinaryFormatError) as ei:
        decode(bytes(raw))
    assert ei.value.offset == 0 and "pc 0" in str(ei.value)


@pytest.mark.parametrize("value", [2.7, 1e3 + 0.5])
def test_encode_refuses_non_integral_field(value):
    with pytest.raises(BinaryFormatError, match=r"pc 0: ALU\.n"):
        encode([Insn("ALU", _full("ALU", n=value))])


# ---- activations (EPI act, ALU ops) -------------------------------------------------------

def test_every_activation_code_round_trips():
    """The 4-bit EPI ``act`` (codes 0-12; 13-15 decode but validation refuses them), leaky's
    slope in ``lo_bits``, and the ALU activation ops: encode -> decode is exact and the
    disassembly names the activation."""
    from target_dlac.isa.encoding import ACTS, ALU_ACTS, ALU_OPS

    assert len(ACTS) == 13 and ACTS[:3] == ("none", "relu", "clip")       # old codes unchanged
    insns = [Insn("EPI", _full("EPI", act=code, f=3, p=5, lo_bits=fbits(0.125), dtype=2 if a == "lut" else 0))
             for code, a in enumerate(ACTS)]
    insns += [Insn("EPI", _full("EPI", act=15, f=1, p=1))]
    insns += [Insn("ALU", dict(_full("ALU", n=7), op=ALU_OPS.index(a))) for a in ALU_ACTS]
    back = decode(encode(insns))
    assert [(i.op, i.f) for i in back] == [(i.op, i.f) for i in insns]
    for ins, a in zip(back, ACTS):
        assert a in disassemble(ins)
    assert "leaky_relu[0.125]" in disassemble(back[ACTS.index("leaky_relu")])
    assert "act15" in disassemble(back[len(ACTS)])
    for ins, a in zip(back[len(ACTS) + 1:], ALU_ACTS):
        assert f"{a}(INP" in disassemble(ins)


def test_activation_cycle_steps():
    """EPI / ALU cost ``S + ceil(n / PEs) * steps``: 1 step for relu-like, 2 hardswish, 4 for
    the transcendental activations (docs/isa.md "EPI")."""
    from target_dlac.isa.encoding import ACTS, ALU_OPS

    steps = {"none": 1, "relu": 1, "clip": 1, "leaky_relu": 1, "prelu": 1, "hardsigmoid": 1, "lut": 1,
             "hardswish": 2, "silu": 4, "sigmoid": 4, "tanh": 4, "gelu": 4, "gelu_tanh": 4}
    for a, k in steps.items():
        assert cycles.cost(Insn("EPI", _full("EPI", f=5, p=7, act=ACTS.index(a))), SMALL) == 8 + 5 * k, a
        if a in ALU_OPS:
            assert cycles.cost(Insn("ALU", dict(_full("ALU", n=17), op=ALU_OPS.index(a))), SMALL) == 8 + 3 * k, a
    m = Machine()
    assert cycles.cost(Insn("EPI", _full("EPI", f=64, p=196, act=ACTS.index("silu"))), m) == 108   # docs
    assert cycles.cost(Insn("ALU", dict(_full("ALU", n=50176), op=ALU_OPS.index("sigmoid"))), m) == 400
