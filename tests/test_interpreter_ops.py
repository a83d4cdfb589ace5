"""Each dLAC instruction family, run by the interpreter on a tiny hand-written program,
compared for EXACT equality with an independent NumPy implementation written here
(integer-valued data where a different summation order could otherwise round
differently).  Also the timeline (overlap, races, deadlocks, exact cycles), run-time
bounds checks and malformed ternary blocks.  NumPy only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.errors import ExecutionError
from target_dlac import costs
from target_dlac.interpreter import run
from target_dlac.isa import ACTS, ALU_OPS, BUFFERS, FORMATS, Insn, fbits
from target_dlac.machine import Machine
from target_dlac.packing import pad4, pack_ternary
from target_dlac.program import Program, Tensor

M = Machine()
SMALL = Machine(pe_rows=2, pe_cols=4)          # groups of 4 filters: the PE order matters


# ---- program building -------------------------------------------------------------------

def _fields(opcode, **kw):
    f = {n: 0 for n, _ in FORMATS[opcode][2]}
    unknown = set(kw) - set(f)
    assert not unknown, unknown
    f.update(kw)
    return f


def _deps(kw):
    return {k: kw.pop(k) for k in ("pop_prev", "pop_next", "push_prev", "push_next") if k in kw}


def dma(op, buf, sram, dram, x, y=1, dram_stride=None, sram_stride=None, **kw):
    deps = _deps(kw)
    assert not kw, kw
    return Insn(op, _fields(op, buf=BUFFERS.index(buf), sram=sram, dram=dram, x=x, y=y,
                            dram_stride=x if dram_stride is None else dram_stride,
                            sram_stride=x if sram_stride is None else sram_stride), **deps)


def load(buf, sram, dram, x, **kw):
    return dma("LOAD", buf, sram, dram, x, **kw)


def store(buf, sram, dram, x, **kw):
    return dma("STORE", buf, sram, dram, x, **kw)


def out_hw(h, w, kh, kw_, sh, sw, pads):
    pt, pb, pl, pr = pads
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw_) // sw + 1


def conv(op, inp, wgt, acc, c, h, w, f, kh, kw_, sh=1, sw=1, pads=(0, 0, 0, 0), accumulate=0,
         depthwise=0, dtype=0, **kw):
    deps = _deps(kw)
    assert not kw, kw
    oh, ow = out_hw(h, w, kh, kw_, sh, sw, pads)
    pt, pb, pl, pr = pads
    return Insn(op, _fields(op, inp=inp, wgt=wgt, acc=acc, c=c, h=h, w=w, f=f, kh=kh, kw=kw_,
                            oh=oh, ow=ow, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr,
                            accumulate=accumulate, depthwise=depthwise, dtype=dtype), **deps)


SYNC, HALT = Insn("SYNC"), Insn("HALT")


class Dram:
    """Lays out a DRAM image: constants from address 0, then tensors (16-byte aligned)."""

    def __init__(self):
        self.consts = bytearray()
        self.tensors: list[Tensor] = []
        self.top = 0

    def const(self, data: bytes) -> int:
        addr = pad16(len(self.consts))
        self.consts.extend(b"\0" * (addr - len(self.consts)))
        self.consts.extend(data)
        self.top = pad16(len(self.consts))
        return addr

    def tensor(self, name, role, shape, dtype="float32") -> Tensor:
        self.top = pad16(max(self.top, len(self.consts)))
        t = Tensor(name, role, tuple(shape), dtype, self.top)
        self.tensors.append(t)
        self.top += t.nbytes
        return t

    def program(self, insns, machine=M, layers=()) -> Program:
        dram = pad16(self.top) + 64
        return Program(machine, list(insns), bytes(self.consts), list(self.tensors),
                       {"dram_bytes": dram, "layers": list(layers), "host_ops": []})


def pad16(n):
    return (n + 15) & ~15


def ints(rng, shape, lo=-8, hi=8):
    """Integer-valued float32: every sum of a few hundred products is exact."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float32)


def ternary(rng, shape, p_zero=0.5):
    t = rng.choice([-1, 1], size=shape).astype(np.int8)
    t[rng.random(shape) < p_zero] = 0
    return t


# ---- independent references (direct loops) -----------------------------------------------

def conv_ref(x, w, sh, sw, pads, depthwise=False):
    """Direct-loop convolution in float64 (exact for integer-valued data)."""
    c, h, wd = x.shape
    nf, _, kh, kw = w.shape
    pt, pb, pl, pr = pads
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    out = np.zeros((nf, oh, ow))
    for fi in range(nf):
        chans = [fi] if depthwise else range(c)
        for oy in range(oh):
            for ox in range(ow):
                s = 0.0
                for ci_w, ci in enumerate(chans):
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh + ky - pt, ox * sw + kx - pl
                            if 0 <= iy < h and 0 <= ix < wd:
                                s += float(w[fi, 0 if depthwise else ci, ky, kx]) * float(x[ci, iy, ix])
                out[fi, oy, ox] = s
    return out


def pool_ref(x, mode, kh, kw, sh, sw, pads, count_pad):
    c, h, wd = x.shape
    pt, pb, pl, pr = pads
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    out = np.zeros((c, oh, ow), np.float32)
    for ci in range(c):
        for oy in range(oh):
            for ox in range(ow):
                vals = [float(x[ci, oy * sh + ky - pt, ox * sw + kx - pl])
                        for ky in range(kh) for kx in range(kw)
                        if 0 <= oy * sh + ky - pt < h and 0 <= ox * sw + kx - pl < wd]
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

@pytest.mark.parametrize("act", ACTS)
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
    prm = np.concatenate([scale, bias]) if has_scale else bias
    d = Dram()
    at, pt_, rt = (d.tensor("acc", "input", (F, P)), d.tensor("prm", "input", prm.shape),
                   d.tensor("res", "input", (F, P)))
    yt = d.tensor("y", "output", (F, P))
    dst = 0 if inplace else 4096
    epi = Insn("EPI", _fields("EPI", acc=0, dst=dst, has_scale=has_scale, has_res=has_res,
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
    pool = Insn("POOL", _fields("POOL", src=16, dst=32, mode=["max", "avg"].index(mode),
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
    alu = Insn("ALU", _fields("ALU", a=0, b=400, op=ALU_OPS.index(op), dst=800, n=n), pop_prev=1,
               push_next=1)
    insns = [load("INP", 0, at.addr, a.nbytes), load("INP", 400, bt.addr, b.nbytes, push_next=1), alu,
             store("ACC", 800, yt.addr, n * 4, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"a": a, "b": b})
    exp = {"add": a + b, "add_relu": np.maximum(a + b, np.float32(0)), "relu": np.maximum(a, np.float32(0))}[op]
    np.testing.assert_array_equal(out["y"], exp)


# ---- timeline -------------------------------------------------------------------------------

def _pipeline(double_buffered: bool):
    """4 input tiles through one MAC layer.  Double-buffered: two INP slots, tokens let
    the load of tile i+1 overlap the MAC of tile i.  Otherwise: SYNC after everything."""
    rng = np.random.default_rng(7)
    T, C, F, h, w = 4, 2, 4, 6, 6
    wt = ints(rng, (F, C, 3, 3), -3, 3)
    x = ints(rng, (T, C, h, w))
    d = Dram()
    wa = d.const(wt.tobytes())
    xt, yt = d.tensor("x", "input", x.shape), d.tensor("y", "output", (T, F, h * w))
    tile, otile = C * h * w * 4, F * h * w * 4
    slots = [0, 4096]
    L = [load("INP", slots[i % 2], xt.addr + i * tile, tile) for i in range(T)]
    Cx = [conv("MAC", slots[i % 2], 0, i * otile, C, h, w, F, 3, 3, pads=(1, 1, 1, 1)) for i in range(T)]
    LW = load("WGT", 0, wa, wt.nbytes)
    ST = store("ACC", 0, yt.addr, T * otile)
    if double_buffered:
        for i in range(T):
            L[i].push_next = 1
            Cx[i].pop_prev = 1
            if i + 2 < T:
                Cx[i].push_prev = 1
                L[i + 2].pop_next = 1
        insns = [LW, L[0], L[1], Cx[0], L[2], Cx[1], L[3], Cx[2], Cx[3], SYNC, ST, SYNC, HALT]
    else:
        insns = [LW, SYNC]
        for i in range(T):
            insns += [L[i], SYNC, Cx[i], SYNC]
        insns += [ST, SYNC, HALT]
    ref = np.stack([conv_ref(x[i], wt, 1, 1, (1, 1, 1, 1)).reshape(F, -1) for i in range(T)])
    return d.program(insns), x, ref.astype(np.float32)


def test_double_buffering_overlaps():
    p, x, ref = _pipeline(True)
    out, rep = run(p, {"x": x})
    np.testing.assert_array_equal(out["y"], ref)
    work = sum(costs.cost(i, M) for i in p.insns if i.unit != "barrier")
    lw, ld, mac, st = (costs.cost(p.insns[k], M) for k in (0, 1, 3, 10))
    assert (lw, ld, mac, st) == (105, 105, 62, 136)   # 288 B, 288 B, 3 passes x 18, 2304 B
    # by hand: L0 105-210, L1 210-315, C0 210-272, L2 315-420, C1 315-377, L3 420-525,
    # C2 420-482, C3 525-587, SYNC -588, STORE -724, SYNC -725
    assert rep.cycles["total"] == 725
    assert rep.cycles["total"] < work

    ps, _, _ = _pipeline(False)
    out_s, rep_s = run(ps, {"x": x})
    np.testing.assert_array_equal(out_s["y"], ref)
    nsync = sum(1 for i in ps.insns if i.op == "SYNC")
    assert rep_s.cycles["total"] == work + nsync      # serialized: exactly the sum of costs


def _race_program(kind: str, tokens: bool):
    rng = np.random.default_rng(8)
    wt = ints(rng, (2, 1, 1, 1), -2, 2)
    d = Dram()
    wa = d.const(wt.tobytes())
    wb = d.const((wt + 1).tobytes())
    xt, yt = d.tensor("x", "input", (1, 4, 4)), d.tensor("y", "output", (2, 16))
    mac = conv("MAC", 0, 0, 0, 1, 4, 4, 2, 1, 1)
    pre = [load("WGT", 0, wa, 8), load("INP", 0, xt.addr, 64), SYNC]
    if kind == "load overwrites weights":
        reload = load("WGT", 0, wb, 8)
        if tokens:
            mac.push_prev, reload.pop_next = 1, 1
        insns = pre + [mac, reload, SYNC, store("ACC", 0, yt.addr, 128), SYNC, HALT]
    else:   # "store reads an accumulator being written"
        st_ = store("ACC", 0, yt.addr, 128)
        if tokens:
            mac.push_next, st_.pop_prev = 1, 1
        insns = pre + [mac, st_, SYNC, HALT]
    return d.program(insns), {"x": ints(rng, (1, 4, 4))}


@pytest.mark.parametrize("kind", ["load overwrites weights", "store reads an accumulator being written"])
def test_missing_token_is_a_race(kind):
    p, inputs = _race_program(kind, tokens=True)
    run(p, inputs)                                     # with the token: fine
    p, inputs = _race_program(kind, tokens=False)
    with pytest.raises(ExecutionError, match="race") as ei:
        run(p, inputs)
    assert ei.value.pc == 4 and "pc 3" in str(ei.value)
    run(p, inputs, check_races=False)                  # the check is what refuses it


@pytest.mark.parametrize("ins", [
    conv("MAC", 0, 0, 0, 1, 4, 4, 2, 1, 1, pop_prev=1),   # no LOAD pushed
    store("ACC", 0, 0, 16, pop_prev=1),                 # no compute pushed
    load("INP", 0, 0, 16, pop_next=1),                  # no compute pushed back
])
def test_pop_without_push_is_deadlock(ins):
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="deadlock") as ei:
        run(d.program([SYNC, ins, SYNC, HALT]), {})
    assert ei.value.pc == 1


def test_unconsumed_token_at_barrier():
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="unconsumed tokens") as ei:
        run(d.program([load("INP", 0, 0, 16, push_next=1), SYNC, HALT]), {})
    assert ei.value.pc == 1


@pytest.mark.parametrize("nbytes", [1, 64, 1000, 4096])
def test_single_load_cycles(nbytes):
    d = Dram()
    d.const(bytes(range(256)) * 16)
    d.tensor("y", "output", (4,))
    _, rep = run(d.program([load("INP", 0, 0, nbytes), SYNC, HALT]), {})
    assert rep.cycles["total"] == M.dma_latency + math.ceil(nbytes / M.dram_bytes_per_cycle) + 1


def test_missing_halt():
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="without HALT"):
        run(d.program([SYNC]), {})


# ---- bounds -------------------------------------------------------------------------------

def _bounds_cases():
    f = lambda opcode, **kw: Insn(opcode, _fields(opcode, **kw))  # noqa: E731
    return {
        "LOAD into INP": (load("INP", M.inp_bytes - 4, 0, 8), "INP"),
        "LOAD from DRAM": (load("WGT", 0, 1000, 64), "DRAM"),
        "strided LOAD rows": (load("ACC", M.acc_bytes - 100, 0, 8, y=3, sram_stride=48), "ACC"),
        "STORE from ACC": (store("ACC", M.acc_bytes, 0, 4), "ACC"),
        "STORE into DRAM": (store("INP", 0, 1020, 8), "DRAM"),
        "MAC accumulator": (conv("MAC", 0, 0, M.acc_bytes - 4, 1, 2, 2, 1, 1, 1), "ACC"),
        "MAC input tile": (conv("MAC", M.inp_bytes - 8, 0, 0, 1, 2, 2, 1, 1, 1), "INP"),
        "MAC weights": (conv("MAC", 0, M.wgt_bytes - 4, 0, 2, 2, 2, 1, 1, 1), "WGT"),
        "TACC block header": (conv("TACC", 0, M.wgt_bytes - 4, 0, 1, 2, 2, 2, 1, 1), "WGT"),
        "EPI params": (f("EPI", acc=0, dst=0, prm=M.wgt_bytes - 4, f=2, p=1), "WGT"),
        "EPI residual": (f("EPI", acc=0, dst=0, prm=0, has_res=1, res=M.inp_bytes - 4, f=2, p=1), "INP"),
        "POOL source": (f("POOL", src=M.inp_bytes - 12, dst=0, c=1, h=2, w=2, oh=1, ow=1, kh=2, kw=2,
                          sh=1, sw=1), "INP"),
        "ALU output": (f("ALU", a=0, b=0, dst=M.acc_bytes - 8, n=4), "ACC"),
        "ALU operand b": (f("ALU", a=0, b=M.inp_bytes, dst=0, n=1), "INP"),
    }


@pytest.mark.parametrize("case", sorted(_bounds_cases()))
def test_out_of_bounds_names_pc_and_buffer(case):
    ins, buf = _bounds_cases()[case]
    d = Dram()
    d.tensor("y", "output", (4,))
    p = d.program([SYNC, ins, SYNC, HALT])
    p.meta["dram_bytes"] = 1024
    with pytest.raises(ExecutionError) as ei:
        run(p, {})
    msg = str(ei.value)
    assert ei.value.pc == 1 and msg.startswith("pc 1 (")
    assert f"outside {buf}" in msg or f"past {buf}" in msg, msg


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
