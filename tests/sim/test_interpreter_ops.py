"""Each dLAC instruction family, run by the interpreter on a tiny hand-written program,
compared for EXACT equality with an independent NumPy implementation (direct loops in
tests/isa_programs.py and here; integer-valued data where a different summation order
could otherwise round differently), and malformed ternary blocks.  The timeline
(overlap, races, deadlocks, exact cycles) and run-time bounds checks: test_timeline.py.
NumPy only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_dlac.core.errors import ExecutionError
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import ACTS, ALU_OPS, Insn, fbits
from target_dlac.isa.blocks import pack_ternary, pad4
from tests.isa_programs import (HALT, SMALL, SYNC, Dram, M, conv, conv_ref, fields, ints, load, out_hw,
                                pool_windows, store, ternary)


def pool_ref(x, mode, kh, kw, sh, sw, pads, count_pad):
    c, h, wd = x.shape
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    out = np.zeros((c, oh, ow), np.float32)
    for ci, oy, ox, vals in pool_windows(x, kh, kw, sh, sw, pads):
        if mode == "max":
            out[ci, oy, ox] = max(vals)
        else:
            div = kh * kw if count_pad else max(len(vals), 1)
            out[ci, oy, ox] = np.float32(sum(vals)) / np.float32(div)
    return out


# ---- LOAD / STORE ---------------------------------------------------------------------------

def test_load_store_2d_strides():
    rng = np.random.default_rng(0)
    d = Dram()
    src = d.tensor("src", "input", (16, 40), "uint8")
    gathered = d.tensor("gathered", "output", (5 * 12,), "uint8")
    scattered = d.tensor("scattered", "output", (8, 20), "uint8")
    r0, c0, y, x = 3, 11, 5, 7
    insns = [
        # gather a 5x7 sub-block (DRAM row stride 40) into INP rows of 12 bytes
        load("INP", 8, src.addr + r0 * 40 + c0, x, y=y, dram_stride=40, sram_stride=12),
        SYNC,
        # the INP image as it is, contiguous
        store("INP", 8, gathered.addr, 60),
        # scatter the rows back into a 20-byte-stride DRAM block at (2, 3)
        store("INP", 8, scattered.addr + 2 * 20 + 3, x, y=y, dram_stride=20, sram_stride=12),
        SYNC, HALT]
    a = rng.integers(1, 256, size=(16, 40), dtype=np.uint8)
    out, _ = run(d.program(insns), {"src": a})
    block = a[r0:r0 + y, c0:c0 + x]
    g = np.zeros((5, 12), np.uint8)
    g[:, :x] = block
    np.testing.assert_array_equal(out["gathered"], g.reshape(-1))
    s = np.zeros((8, 20), np.uint8)
    s[2:2 + y, 3:3 + x] = block
    np.testing.assert_array_equal(out["scattered"], s)


@settings(max_examples=25, deadline=None)
@given(y=st.integers(1, 6), x=st.integers(1, 9), ds=st.integers(0, 12), ss=st.integers(0, 12),
       off=st.integers(0, 20), sram=st.integers(0, 9))
def test_dma_strides_property(y, x, ds, ss, off, sram):
    """LOAD with any source stride (even 0: repeat a row) and any destination stride
    >= x, then a contiguous STORE of the touched SRAM span."""
    ss = max(ss, x)
    d = Dram()
    src = d.tensor("src", "input", (128,), "uint8")
    span = (y - 1) * ss + x
    dst = d.tensor("dst", "output", (span,), "uint8")
    a = np.arange(1, 129, dtype=np.uint8)
    insns = [load("ACC", sram, src.addr + off, x, y=y, dram_stride=ds, sram_stride=ss), SYNC,
             store("ACC", sram, dst.addr, span), SYNC, HALT]
    out, _ = run(d.program(insns), {"src": a})
    exp = np.zeros(span, np.uint8)
    for r in range(y):
        exp[r * ss:r * ss + x] = a[off + r * ds: off + r * ds + x]
    np.testing.assert_array_equal(out["dst"], exp)


# ---- TACC ---------------------------------------------------------------------------------

TACC_GEOMS = [  # (h, w, kh, kw, sh, sw, pads)
    (7, 6, 3, 3, 2, 2, (1, 1, 1, 0)),
    (6, 7, 1, 1, 2, 2, (0, 0, 0, 0)),          # 1x1 strided: the interpreter's fast path
    (5, 9, 3, 2, 1, 3, (0, 2, 1, 1)),
]


@pytest.mark.parametrize("geom", TACC_GEOMS)
def test_tacc_two_channel_tiles_accumulate(geom):
    h, w, kh, kw, sh, sw, pads = geom
    rng = np.random.default_rng(1)
    C, F, CT = 6, 5, 3
    wt = ternary(rng, (F, C, kh, kw))
    x = ints(rng, (C, h, w))
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    orders = [rng.permutation(F), rng.permutation(F)]
    blocks = [pack_ternary(wt[:, t * CT:(t + 1) * CT], orders[t]) for t in range(2)]
    waddr = [d.const(b) for b in blocks]
    xt = d.tensor("x", "input", (C, h, w))
    yt = d.tensor("y", "output", (F, oh, ow))
    tile = CT * h * w * 4
    insns = [
        load("WGT", 0, waddr[0], len(blocks[0])),
        load("INP", 0, xt.addr, tile, push_next=1),
        conv("TACC", 0, 0, 0, CT, h, w, F, kh, kw, sh, sw, pads, pop_prev=1),
        load("WGT", 4096, waddr[1], len(blocks[1])),
        load("INP", 8192, xt.addr + tile, tile, push_next=1),
        conv("TACC", 8192, 4096, 0, CT, h, w, F, kh, kw, sh, sw, pads, accumulate=1,
             pop_prev=1, push_next=1),
        store("ACC", 0, yt.addr, F * oh * ow * 4, pop_prev=1),
        SYNC, HALT]
    out, rep = run(d.program(insns, SMALL), {"x": x})
    ref = conv_ref(x, wt.astype(np.float32), sh, sw, pads)
    np.testing.assert_array_equal(out["y"], ref.astype(np.float32))
    # compute cycles: setup + passes * sum of group maxima of the counts in PE order
    passes = math.ceil(oh * ow / (SMALL.pe_rows * SMALL.lanes))
    exp = 0
    for t in range(2):
        nnz = (wt[:, t * CT:(t + 1) * CT] != 0).reshape(F, -1).sum(axis=1)[orders[t]]
        nnz = np.concatenate([nnz, np.zeros(-F % 4, int)]).reshape(-1, 4)
        exp += SMALL.compute_setup + passes * int(nnz.max(axis=1).sum())
    assert rep.cycles["compute"] == exp


@pytest.mark.parametrize("sh", [1, 2])
def test_tacc_depthwise(sh):
    rng = np.random.default_rng(2)
    C, h, w, pads = 4, 6, 5, (1, 1, 1, 1)
    wt = ternary(rng, (C, 1, 3, 3), p_zero=0.3)
    x = ints(rng, (C, h, w))
    oh, ow = out_hw(h, w, 3, 3, sh, sh, pads)
    d = Dram()
    blk = pack_ternary(wt, rng.permutation(C))
    wa = d.const(blk)
    xt, yt = d.tensor("x", "input", (C, h, w)), d.tensor("y", "output", (C, oh, ow))
    insns = [load("WGT", 64, wa, len(blk)), load("INP", 0, xt.addr, x.nbytes, push_next=1),
             conv("TACC", 0, 64, 128, C, h, w, C, 3, 3, sh, sh, pads, depthwise=1, pop_prev=1,
                  push_next=1),
             store("ACC", 128, yt.addr, C * oh * ow * 4, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"x": x})
    ref = conv_ref(x, wt.astype(np.float32), sh, sh, pads, depthwise=True)
    np.testing.assert_array_equal(out["y"], ref.astype(np.float32))


# ---- MAC ----------------------------------------------------------------------------------

@pytest.mark.parametrize("depthwise", [0, 1])
def test_mac_dense(depthwise):
    rng = np.random.default_rng(3)
    C, h, w, kh, kw, sh, sw, pads = 4, 6, 7, 2, 3, 1, 2, (1, 0, 2, 1)
    F = C if depthwise else 3
    wt = ints(rng, (F, 1 if depthwise else C, kh, kw), -4, 4)
    x = ints(rng, (C, h, w))
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    wa = d.const(wt.tobytes())
    xt, yt = d.tensor("x", "input", (C, h, w)), d.tensor("y", "output", (F, oh, ow))
    insns = [load("WGT", 256, wa, wt.nbytes), load("INP", 512, xt.addr, x.nbytes), SYNC,
             conv("MAC", 512, 256, 1024, C, h, w, F, kh, kw, sh, sw, pads, depthwise=depthwise),
             SYNC, store("ACC", 1024, yt.addr, F * oh * ow * 4), SYNC, HALT]
    out, rep = run(d.program(insns), {"x": x})
    ref = conv_ref(x, wt, sh, sw, pads, depthwise=bool(depthwise))
    np.testing.assert_array_equal(out["y"], ref.astype(np.float32))
    k = (1 if depthwise else C) * kh * kw
    assert rep.cycles["compute"] == M.compute_setup + math.ceil(oh * ow / M.pe_rows) * math.ceil(F / M.pe_cols) * k


# ---- EPI ----------------------------------------------------------------------------------

def _act64(act, y, slope, slopes):
    """The float activations in float64 from the float32 values (an oracle independent of the
    interpreter's: math.erfc, math.tanh)."""
    v = y.astype(np.float64)
    erfc = np.vectorize(math.erfc)
    sig = 1 / (1 + np.exp(-v))
    return {"leaky_relu": np.where(v >= 0, v, v * slope), "prelu": np.where(v >= 0, v, v * slopes[:, None]),
            "silu": v * sig, "sigmoid": sig, "tanh": np.tanh(v), "gelu": 0.5 * v * erfc(-v / math.sqrt(2)),
            "gelu_tanh": 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))}[act]


@pytest.mark.parametrize("act", [a for a in ACTS if a != "lut"])      # lut: int8 only
@pytest.mark.parametrize("has_res", [0, 1])
@pytest.mark.parametrize("has_scale", [0, 1])
@pytest.mark.parametrize("inplace", [False, True])
def test_epi(act, has_res, has_scale, inplace):
    rng = np.random.default_rng(4)
    F, P = 4, 10
    lo, hi = -0.5, 0.75
    acc = rng.standard_normal((F, P)).astype(np.float32)
    scale = rng.standard_normal(F).astype(np.float32)
    bias = rng.standard_normal(F).astype(np.float32)
    res = rng.standard_normal((F, P)).astype(np.float32)
    slopes = rng.uniform(0.05, 0.5, F).astype(np.float32)
    prm = np.concatenate([scale, bias]) if has_scale else bias
    if act == "prelu":              # the slopes follow the biases (isa.epi_param_layout)
        prm = np.concatenate([prm, slopes])
    d = Dram()
    at, pt_, rt = (d.tensor("acc", "input", (F, P)), d.tensor("prm", "input", prm.shape),
                   d.tensor("res", "input", (F, P)))
    yt = d.tensor("y", "output", (F, P))
    dst = 0 if inplace else 4096
    epi = Insn("EPI", fields("EPI", acc=0, dst=dst, has_scale=has_scale, has_res=has_res,
                             act=ACTS.index(act), prm=64, res=32, f=F, p=P,
                             lo_bits=fbits(lo), hi_bits=fbits(hi)), pop_prev=1, push_next=1)
    insns = [load("ACC", 0, at.addr, acc.nbytes), load("WGT", 64, pt_.addr, prm.nbytes),
             load("INP", 32, rt.addr, res.nbytes, push_next=1), epi,
             store("ACC", dst, yt.addr, F * P * 4, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"acc": acc, "prm": prm, "res": res})
    y = acc.copy()
    if has_scale:
        y = y * scale[:, None]
    y = y + bias[:, None]
    if has_res:
        y = y + res
    if act == "relu":
        y = np.maximum(y, np.float32(0))
    elif act == "clip":
        y = np.minimum(np.maximum(y, np.float32(lo)), np.float32(hi))
    elif act in ("hardswish", "hardsigmoid"):       # float32, step by step (as TVM's graph)
        t = np.minimum(np.maximum(y + np.float32(3), np.float32(0)), np.float32(6))
        y = (y * t if act == "hardswish" else t) / np.float32(6)
    elif act != "none":             # within 2 float32 ulps of float64 (leaky / PReLU: exact)
        want = _act64(act, y, np.float32(lo), slopes)
        np.testing.assert_allclose(out["y"], want, rtol=6e-8 if "relu" in act else 2.4e-7, atol=1e-37)
        return
    assert y.dtype == np.float32
    np.testing.assert_array_equal(out["y"], y)


# ---- POOL ---------------------------------------------------------------------------------

POOLS = [  # mode, kh, kw, sh, sw, pads, count_pad
    ("max", 3, 3, 2, 2, (1, 1, 1, 1), 0),
    ("max", 2, 2, 2, 2, (0, 1, 0, 0), 0),
    ("avg", 3, 3, 2, 2, (1, 1, 1, 1), 1),
    ("avg", 3, 3, 2, 2, (1, 1, 1, 1), 0),
    ("avg", 2, 3, 1, 2, (1, 0, 1, 1), 1),
    ("avg", 2, 3, 1, 2, (1, 0, 1, 1), 0),
    ("avg", 7, 6, 1, 1, (0, 0, 0, 0), 0),      # global average
]


@pytest.mark.parametrize("case", POOLS)
def test_pool(case):
    mode, kh, kw, sh, sw, pads, count_pad = case
    rng = np.random.default_rng(5)
    c, h, w = 3, 7, 6
    x = ints(rng, (c, h, w), -9, 9)
    if mode == "max":
        x -= 20           # all negative: padding must not win
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    xt, yt = d.tensor("x", "input", (c, h, w)), d.tensor("y", "output", (c, oh, ow))
    pt, pb, pl, pr = pads
    pool = Insn("POOL", fields("POOL", src=16, dst=32, mode=["max", "avg"].index(mode),
                               count_pad=count_pad, c=c, h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw,
                               sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr), pop_prev=1, push_next=1)
    insns = [load("INP", 16, xt.addr, x.nbytes, push_next=1), pool,
             store("ACC", 32, yt.addr, c * oh * ow * 4, pop_prev=1), SYNC, HALT]
    out, rep = run(d.program(insns), {"x": x})
    np.testing.assert_array_equal(out["y"], pool_ref(x, mode, kh, kw, sh, sw, pads, count_pad))
    assert rep.cycles["compute"] == M.compute_setup + math.ceil(c * oh * ow / M.pes) * kh * kw


# ---- ALU ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "add_relu", "relu"])    # float32 ops; int8 ops: test_int_ops.py
def test_alu(op):
    rng = np.random.default_rng(6)
    n = 37
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    d = Dram()
    at, bt, yt = d.tensor("a", "input", (n,)), d.tensor("b", "input", (n,)), d.tensor("y", "output", (n,))
    alu = Insn("ALU", fields("ALU", a=0, b=400, op=ALU_OPS.index(op), dst=800, n=n), pop_prev=1,
               push_next=1)
    insns = [load("INP", 0, at.addr, a.nbytes), load("INP", 400, bt.addr, b.nbytes, push_next=1), alu,
             store("ACC", 800, yt.addr, n * 4, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"a": a, "b": b})
    exp = {"add": a + b, "add_relu": np.maximum(a + b, np.float32(0)), "relu": np.maximum(a, np.float32(0))}[op]
    np.testing.assert_array_equal(out["y"], exp)


# ---- malformed ternary blocks ---------------------------------------------------------------

def _tacc_block_program(corrupt):
    rng = np.random.default_rng(9)
    F, C = 3, 2
    wt = ternary(rng, (F, C, 3, 3), p_zero=0.3)
    wt[:, 0, 0, 0] = 1                                # every filter has a weight
    blk = bytearray(pack_ternary(wt))
    total = int((wt != 0).sum())
    o_rows = 4 * F
    o_idx = o_rows + pad4(2 * F)
    o_codes = o_idx + pad4(2 * total)
    corrupt(blk, o_rows, o_idx, o_codes, total)
    d = Dram()
    wa = d.const(bytes(blk))
    xt, yt = d.tensor("x", "input", (C, 3, 3)), d.tensor("y", "output", (F, 1))
    insns = [load("WGT", 0, wa, len(blk)), load("INP", 1024, xt.addr, C * 9 * 4), SYNC,
             conv("TACC", 1024, 0, 0, C, 3, 3, F, 3, 3), SYNC, store("ACC", 0, yt.addr, F * 4), SYNC, HALT]
    return d.program(insns), {"x": ints(rng, (C, 3, 3))}, wt


def test_valid_block_control():
    p, inputs, wt = _tacc_block_program(lambda *a: None)
    out, _ = run(p, inputs)
    ref = conv_ref(inputs["x"], wt.astype(np.float32), 1, 1, (0, 0, 0, 0))
    np.testing.assert_array_equal(out["y"], ref.reshape(-1, 1).astype(np.float32))


def _set_u16(blk, at, v):
    blk[at:at + 2] = int(v).to_bytes(2, "little")


@pytest.mark.parametrize("what,corrupt,match", [
    ("code 0b00", lambda b, r, i, c, t: b.__setitem__(c, b[c] & ~3), "code"),
    ("code 0b11", lambda b, r, i, c, t: b.__setitem__(c + (t - 1) // 4, b[c + (t - 1) // 4] | (3 << 2 * ((t - 1) % 4))), "code"),
    ("index == k", lambda b, r, i, c, t: _set_u16(b, i + 2 * (t - 1), 18), "index 18 is outside"),
    ("index huge", lambda b, r, i, c, t: _set_u16(b, i, 65535), "outside"),
    ("row out of range", lambda b, r, i, c, t: _set_u16(b, r, 3), "permutation"),
    ("duplicate row", lambda b, r, i, c, t: _set_u16(b, r + 2, int.from_bytes(b[r:r + 2], "little")), "permutation"),
    ("count too large", lambda b, r, i, c, t: b.__setitem__(slice(0, 4), (10 ** 6).to_bytes(4, "little")), "(past|outside) WGT"),
])
def test_bad_ternary_block(what, corrupt, match):
    p, inputs, _ = _tacc_block_program(corrupt)
    with pytest.raises(ExecutionError, match=match) as ei:
        run(p, inputs)
    assert ei.value.pc == 3 and str(ei.value).startswith("pc 3 (TACC") and "WGT" in str(ei.value)
