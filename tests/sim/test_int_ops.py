"""The int8 mode of every dLAC instruction family, run by the interpreter on tiny
hand-written programs and compared for EXACT equality with independent references
(Python integers / float64 direct loops, here and in tests/isa_programs.py, not the
interpreter's NumPy vectorization): TACC and MAC with int8 activations and int32
accumulators, EPI requantization, integer POOL (the ALU's are in tests/sim/test_int_alu.py); and the accumulator overflow
error.  The exact definitions are those of :mod:`target_dlac.codegen.modes.intmath`.
NumPy only."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import (
    ACTS,
    DTYPES,
    POOL_MODES,
    Insn,
    disassemble,
    epi_param_layout,
    s32_bits,
)
from target_dlac.isa.blocks import pack_ternary
from tests import isa_programs
from tests.isa_programs import HALT, SMALL, SYNC, conv_ref, fields, load, out_hw, pool_windows, store

INT8 = DTYPES.index("int8")
assert INT8 == 2

# the helpers of tests/isa_programs.py with int8 defaults
Dram = functools.partial(isa_programs.Dram, dtype="int8")
conv = functools.partial(isa_programs.conv, dtype=INT8)
ternary = functools.partial(isa_programs.ternary, p_zero=0.4)


def i8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, size=shape).astype(np.int8)


# ---- independent references: Python integers, direct loops -------------------------------

def conv_ref_int(x, w, sh, sw, pads, depthwise=False):
    """Direct-loop integer convolution (Python ints: no overflow, no rounding)."""
    return conv_ref(x, w, sh, sw, pads, depthwise=depthwise, scalar=int)


def rshift_round(t: int, s: int) -> int:
    """floor((t + 2^(s-1)) / 2^s): round half up (Python's // floors), s = 0: t."""
    return t if s == 0 else (t + (1 << (s - 1))) // (1 << s)


def clamp(v: int, lo: int, hi: int) -> int:
    return min(max(v, lo), hi)


# ---- TACC / MAC --------------------------------------------------------------------------

GEOMS = [  # (h, w, kh, kw, sh, sw, pads)
    (7, 6, 3, 3, 2, 2, (1, 1, 1, 0)),
    (6, 7, 1, 1, 2, 2, (0, 0, 0, 0)),          # 1x1 strided fast path
    (5, 9, 3, 2, 1, 3, (0, 2, 1, 1)),
]


@pytest.mark.parametrize("op", ["TACC", "MAC"])
@pytest.mark.parametrize("geom", GEOMS)
def test_int8_conv_two_channel_tiles_accumulate(op, geom):
    """int8 activations (zero padding), ternary (TACC) or int8 (MAC, wfmt 1) weights, int32
    accumulators; the first tile overwrites stale accumulator contents (accumulate=0), the
    second adds (accumulate=1)."""
    h, w, kh, kw, sh, sw, pads = geom
    rng = np.random.default_rng(11)
    C, F, CT = 6, 5, 3
    x = i8(rng, (C, h, w))
    x.flat[:4] = [-128, 127, -128, 127]              # the extremes of int8
    wt = ternary(rng, (F, C, kh, kw)) if op == "TACC" else i8(rng, (F, C, kh, kw), -127, 127)
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    if op == "TACC":
        blocks = [pack_ternary(wt[:, t * CT:(t + 1) * CT], rng.permutation(F)) for t in range(2)]
    else:
        blocks = [np.ascontiguousarray(wt[:, t * CT:(t + 1) * CT]).tobytes() for t in range(2)]
    waddr = [d.const(b) for b in blocks]
    stale = rng.integers(-2 ** 31, 2 ** 31, size=(F, oh * ow)).astype(np.int32)
    xt = d.tensor("x", "input", (C, h, w))
    st = d.tensor("stale", "input", stale.shape, "int32")
    yt = d.tensor("y", "output", (F, oh, ow), "int32")
    tile = CT * h * w                                  # int8: one byte per element
    wfmt = 1 if op == "MAC" else 0
    insns = [
        load("ACC", 0, st.addr, stale.nbytes),
        load("WGT", 0, waddr[0], len(blocks[0])),
        load("INP", 0, xt.addr, tile), SYNC,
        conv(op, 0, 0, 0, CT, h, w, F, kh, kw, sh, sw, pads, wfmt=wfmt), SYNC,
        load("WGT", 4096, waddr[1], len(blocks[1])),
        load("INP", 8192, xt.addr + tile, tile), SYNC,
        conv(op, 8192, 4096, 0, CT, h, w, F, kh, kw, sh, sw, pads, accumulate=1, wfmt=wfmt), SYNC,
        store("ACC", 0, yt.addr, F * oh * ow * 4), SYNC, HALT]
    out, _ = run(d.program(insns, SMALL), {"x": x, "stale": stale})
    ref = conv_ref_int(x, wt, sh, sw, pads)
    assert out["y"].dtype == np.int32
    np.testing.assert_array_equal(out["y"], ref.astype(np.int32))


@pytest.mark.parametrize("op", ["TACC", "MAC"])
def test_int8_conv_depthwise(op):
    rng = np.random.default_rng(12)
    C, h, w, pads = 4, 6, 5, (1, 1, 1, 1)
    wt = ternary(rng, (C, 1, 3, 3)) if op == "TACC" else i8(rng, (C, 1, 3, 3), -127, 127)
    x = i8(rng, (C, h, w))
    oh, ow = out_hw(h, w, 3, 3, 2, 2, pads)
    d = Dram()
    blk = pack_ternary(wt, rng.permutation(C)) if op == "TACC" else wt.tobytes()
    wa = d.const(blk)
    xt, yt = d.tensor("x", "input", (C, h, w)), d.tensor("y", "output", (C, oh, ow), "int32")
    insns = [load("WGT", 64, wa, len(blk)), load("INP", 0, xt.addr, x.nbytes), SYNC,
             conv(op, 0, 64, 128, C, h, w, C, 3, 3, 2, 2, pads, depthwise=1, wfmt=int(op == "MAC")),
             SYNC, store("ACC", 128, yt.addr, C * oh * ow * 4), SYNC, HALT]
    out, _ = run(d.program(insns), {"x": x})
    np.testing.assert_array_equal(out["y"], conv_ref_int(x, wt, 2, 2, pads, depthwise=True).astype(np.int32))


def test_int8_mac_needs_int8_weights():
    d = Dram()
    d.tensor("y", "output", (4,), "int32")
    ins = conv("MAC", 0, 0, 0, 1, 2, 2, 1, 1, 1, wfmt=0)
    with pytest.raises(ExecutionError, match="int8 weights") as ei:
        run(d.program([SYNC, ins, SYNC, HALT]), {})
    assert ei.value.pc == 1


@pytest.mark.parametrize("op", ["TACC", "MAC"])
@pytest.mark.parametrize("sign", [1, -1])
def test_int32_accumulator_overflow(op, sign):
    """Accumulating onto a partial sum near the int32 limit: one more step past it is an
    ExecutionError naming the pc; exactly at the limit is fine."""
    d = Dram()
    wt = np.full((1, 1, 1, 1), sign, np.int8)             # ternary +-1 or int8 +-1
    blk = pack_ternary(wt) if op == "TACC" else wt.tobytes()
    wa = d.const(blk)
    limit = 2 ** 31 - 1 if sign > 0 else -2 ** 31
    xt = d.tensor("x", "input", (4,))
    at = d.tensor("a", "input", (1,), "int32")
    yt = d.tensor("y", "output", (1,), "int32")
    mac = conv(op, 0, 0, 64, 1, 1, 1, 1, 1, 1, accumulate=1, wfmt=int(op == "MAC"))
    insns = [load("WGT", 0, wa, len(blk)), load("INP", 0, xt.addr, 4), load("ACC", 64, at.addr, 4),
             SYNC, mac, SYNC, store("ACC", 64, yt.addr, 4), SYNC, HALT]
    prog = d.program(insns)
    xin = np.array([100, 0, 0, 0], np.int8)
    ok, _ = run(prog, {"x": xin, "a": np.array([limit - sign * 100], np.int32)})
    assert int(ok["y"][0]) == limit
    with pytest.raises(ExecutionError, match="int32 accumulator overflow") as ei:
        run(prog, {"x": xin, "a": np.array([limit - sign * 99], np.int32)})
    assert ei.value.pc == 4


# ---- EPI -----------------------------------------------------------------------------------

def epi_ref(acc, mult, bias, res, rshift, shift, act, lo, hi):
    """The int8 requantization with Python integers."""
    nf, p = acc.shape
    lo_, hi_ = {"none": (-128, 127), "relu": (0, 127), "clip": (max(lo, -128), min(hi, 127))}[act]
    out = np.zeros((nf, p), np.int8)
    for f in range(nf):
        for j in range(p):
            t = int(acc[f, j]) * (int(mult[f]) if mult is not None else 1) + int(bias[f])
            if res is not None:
                t += int(res[f, j]) * 2 ** rshift
            out[f, j] = clamp(rshift_round(t, shift), lo_, hi_)
    return out


@pytest.mark.parametrize("act", ["none", "relu", "clip"])         # lut: test_epi_int8_table
@pytest.mark.parametrize("has_res", [0, 1])
@pytest.mark.parametrize("has_scale", [0, 1])
@pytest.mark.parametrize("inplace", [False, True])
def test_epi_int8(act, has_res, has_scale, inplace):
    """acc * M + B (+ res << R), rounding shift, relu / clip bounds, int8 out; an odd number
    of filters so the int64 biases sit after 4 bytes of padding."""
    rng = np.random.default_rng(13)
    F, P, shift, rshift = 5, 12, 33, 30
    lo, hi = -37, 90
    acc = rng.integers(-2 ** 26, 2 ** 26, size=(F, P)).astype(np.int32)
    acc[0, :3] = [2 ** 31 - 1, -2 ** 31, 0]
    mult = rng.integers(-2 ** 12, 2 ** 12, size=F).astype(np.int32) if has_scale else None
    bias = rng.integers(-2 ** 38, 2 ** 38, size=F).astype(np.int64)   # beyond 32 bits
    res = i8(rng, (F, P)) if has_res else None
    if has_scale:
        mult[0] = 2 ** 10
        # exact ties: t = k * 2^s + 2^(s-1) rounds up (towards +inf), also for negative t
        mult[1], bias[1] = 2 ** 12, 0
        acc[1, :4] = [2 ** 20, -2 ** 20, 3 * 2 ** 20, -3 * 2 ** 20]
    boff = ((4 * F + 7) // 8) * 8 if has_scale else 0
    assert boff in (0, 24)
    assert epi_param_layout(F, bool(has_scale), INT8) == (0, boff, boff + 8 * F)
    block = bytearray(boff + 8 * F)
    if has_scale:
        block[:4 * F] = mult.astype("<i4").tobytes()
        block[4 * F:boff] = b"\xAA" * (boff - 4 * F)     # padding: must be ignored
    block[boff:] = bias.astype("<i8").tobytes()
    d = Dram()
    pa = d.const(bytes(block))
    at = d.tensor("acc", "input", (F, P), "int32")
    rt = d.tensor("res", "input", (F, P))
    yt = d.tensor("y", "output", (F, P))
    dst = 0 if inplace else 4096
    epi = Insn("EPI", fields("EPI", acc=0, dst=dst, has_scale=has_scale, has_res=has_res,
                             act=ACTS.index(act), prm=64, res=32, f=F, p=P,
                             lo_bits=s32_bits(lo), hi_bits=s32_bits(hi), dtype=INT8,
                             shift=shift, rshift=rshift if has_res else 0))
    insns = [load("ACC", 0, at.addr, acc.nbytes), load("WGT", 64, pa, len(block)),
             load("INP", 32, rt.addr, F * P), SYNC, epi, SYNC,
             store("ACC", dst, yt.addr, F * P), SYNC, HALT]
    out, _ = run(d.program(insns), {"acc": acc, "res": res if has_res else np.zeros((F, P), np.int8)})
    ref = epi_ref(acc, mult, bias, res, rshift, shift, act, lo, hi)
    assert out["y"].dtype == np.int8
    np.testing.assert_array_equal(out["y"], ref)
    if has_scale and not has_res and act == "none":
        assert list(out["y"][1, :4]) == [1, 0, 2, -1]     # 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1
    if has_scale:
        assert list(out["y"][0, :2]) == [min(127, hi if act == "clip" else 127),
                                          {"none": -128, "relu": 0, "clip": lo}[act]]
    assert ((out["y"] > -128) & (out["y"] < 127)).any()     # not everything saturated


@pytest.mark.parametrize("has_scale", [0, 1])
def test_epi_int8_table(has_scale):
    """act = lut: the requantized int8 value q (bounds -128..127) indexes the 256-entry int8
    table after the biases: out = table[q + 128]."""
    rng = np.random.default_rng(17)
    F, P, shift = 3, 16, 10
    acc = rng.integers(-2 ** 15, 2 ** 15, size=(F, P)).astype(np.int32)
    mult = rng.integers(1, 4, size=F).astype(np.int32) if has_scale else None
    bias = rng.integers(-2 ** 10, 2 ** 10, size=F).astype(np.int64)
    table = rng.integers(-128, 128, size=256).astype(np.int8)
    _, boff, total = epi_param_layout(F, bool(has_scale), INT8, ACTS.index("lut"))
    assert total == boff + 8 * F + 256
    block = bytearray(total)
    if has_scale:
        block[:4 * F] = mult.astype("<i4").tobytes()
    block[boff:boff + 8 * F] = bias.astype("<i8").tobytes()
    block[boff + 8 * F:] = table.tobytes()
    d = Dram()
    pa = d.const(bytes(block))
    at = d.tensor("acc", "input", (F, P), "int32")
    yt = d.tensor("y", "output", (F, P))
    epi = Insn("EPI", fields("EPI", acc=0, dst=0, has_scale=has_scale, act=ACTS.index("lut"), prm=64,
                             f=F, p=P, dtype=INT8, shift=shift))
    insns = [load("ACC", 0, at.addr, acc.nbytes), load("WGT", 64, pa, len(block)), SYNC, epi, SYNC,
             store("ACC", 0, yt.addr, F * P), SYNC, HALT]
    out, _ = run(d.program(insns), {"acc": acc})
    q = epi_ref(acc, mult, bias, None, 0, shift, "none", -128, 127)
    assert len(np.unique(q)) > 10          # the table is read at many places
    np.testing.assert_array_equal(out["y"], table[q.astype(np.int64) + 128])


@pytest.mark.parametrize("bounds", [(-1000, 1000), (5, 5), (-128, -100)])
def test_epi_int8_clip_bounds_signed_fields(bounds):
    """Clip bounds are signed 32-bit fields; bounds beyond int8 are limited to [-128, 127]."""
    lo, hi = bounds
    F, P = 2, 8
    acc = np.arange(-8, 8, dtype=np.int32).reshape(F, P) * 40
    bias = np.zeros(F, np.int64)
    d = Dram()
    pa = d.const(bias.tobytes())
    at, yt = d.tensor("acc", "input", (F, P), "int32"), d.tensor("y", "output", (F, P))
    epi = Insn("EPI", fields("EPI", acc=0, dst=0, act=ACTS.index("clip"), prm=256, f=F, p=P,
                             lo_bits=s32_bits(lo), hi_bits=s32_bits(hi), dtype=INT8, shift=0))
    insns = [load("ACC", 0, at.addr, acc.nbytes), load("WGT", 256, pa, 16), SYNC, epi, SYNC,
             store("ACC", 0, yt.addr, F * P), SYNC, HALT]
    out, _ = run(d.program(insns), {"acc": acc})
    np.testing.assert_array_equal(out["y"], epi_ref(acc, None, bias, None, 0, 0, "clip", lo, hi))


def test_epi_int8_clip_disassembly():
    ins = Insn("EPI", fields("EPI", acc=0, dst=0, act=ACTS.index("clip"), prm=0, f=1, p=1,
                             lo_bits=s32_bits(-3), hi_bits=s32_bits(96), dtype=INT8, shift=7))
    assert "clip[-3,96]" in disassemble(ins)          # the signed integer bounds
    assert "(INP" not in disassemble(ins) and ">> 7" in disassemble(ins)


# ---- POOL ----------------------------------------------------------------------------------

def pool_ref_int(x, mode, kh, kw, sh, sw, pads, mult=0, shift=0):
    c, h, wd = x.shape
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    out = np.zeros((c, oh, ow), np.int8)
    for ci, oy, ox, vals in pool_windows(x, kh, kw, sh, sw, pads, scalar=int):
        if mode == "max":                # padding (-128) never beats a real value
            out[ci, oy, ox] = max(vals)
        else:                            # zero padding: the window sum of real values
            out[ci, oy, ox] = clamp(rshift_round(sum(vals) * mult, shift), -128, 127)
    return out


def avg_mult(count, shift):
    return round(2.0 ** shift / count)


POOLS = [  # mode, kh, kw, sh, sw, pads, mult, shift
    ("max", 3, 3, 2, 2, (1, 1, 1, 1), 0, 0),
    ("max", 2, 2, 2, 2, (0, 1, 0, 0), 0, 0),
    ("max", 2, 3, 1, 2, (1, 0, 1, 1), 0, 0),
    ("avg", 3, 3, 2, 2, (1, 1, 1, 1), avg_mult(9, 33), 33),       # count_include_pad
    ("avg", 2, 3, 1, 2, (1, 0, 1, 1), avg_mult(6, 30), 30),
    ("avg", 2, 2, 2, 2, (0, 0, 0, 0), 1, 2),                      # exact ties: sum/4
    ("avg", 7, 6, 1, 1, (0, 0, 0, 0), avg_mult(42, 35), 35),      # global average
    ("avg", 3, 3, 1, 1, (0, 0, 0, 0), avg_mult(9, 30) * 4, 30),   # x4 rescale: saturates
]


@pytest.mark.parametrize("case", POOLS)
def test_pool_int8(case):
    mode, kh, kw, sh, sw, pads, mult, shift = case
    rng = np.random.default_rng(14)
    c, h, w = 3, 7, 6
    if mode == "max":
        x = i8(rng, (c, h, w), -128, -100)      # all negative, with -128 itself: padding must not win
        x[0, 0, 0] = -128
    else:
        x = i8(rng, (c, h, w))
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    xt, yt = d.tensor("x", "input", (c, h, w)), d.tensor("y", "output", (c, oh, ow))
    pt, pb, pl, pr = pads
    pool = Insn("POOL", fields("POOL", src=16, dst=32, mode=POOL_MODES.index(mode),
                               count_pad=int(mode == "avg"), c=c, h=h, w=w, oh=oh, ow=ow, kh=kh,
                               kw=kw, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr, dtype=INT8,
                               mult=mult, shift=shift), pop_prev=1, push_next=1)
    insns = [load("INP", 16, xt.addr, x.nbytes, push_next=1), pool,
             store("ACC", 32, yt.addr, c * oh * ow, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"x": x})
    ref = pool_ref_int(x, mode, kh, kw, sh, sw, pads, mult, shift)
    assert out["y"].dtype == np.int8
    np.testing.assert_array_equal(out["y"], ref)
    if kh * kw == 4 and mode == "avg":
        sums = x[:, :6, :6].reshape(c, 3, 2, 3, 2).astype(int).sum(axis=(2, 4))
        assert (sums % 4 == 2).any()            # ties occur: they round up
    if mult * kh * kw >= 2 ** (shift + 1):    # a gain >= 2: some windows saturate
        assert (ref == 127).any() and (ref == -128).any()
