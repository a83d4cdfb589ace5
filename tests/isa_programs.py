"""Building tiny hand-written dLAC programs for the interpreter tests, and the direct-loop
reference implementations they compare against (written here, independent of the
interpreter's NumPy vectorization).  A plain module: no tests.  NumPy only."""

from __future__ import annotations

import numpy as np

from target_dlac.isa.encoding import BUFFERS, FORMATS, Insn
from target_dlac.isa.machine import Machine
from target_dlac.binary.program import Program, Tensor

# the cycle formulas of weights alone: zero activations are not skipped here (tests/sim/test_act_skip.py)
M = Machine(act_skip="none")
SMALL = Machine(pe_rows=2, pe_cols=4, act_skip="none")          # groups of 4 filters: the PE order matters


# ---- instructions ---------------------------------------------------------------------------

def fields(opcode, **kw):
    """Every field of ``opcode`` (FORMATS), 0 unless given; unknown names are refused."""
    f = {n: 0 for n, _ in FORMATS[opcode][2]}
    unknown = set(kw) - set(f)
    assert not unknown, unknown
    f.update(kw)
    return f


def _deps(kw):
    return {k: kw.pop(k) for k in ("pop_prev", "pop_next", "push_prev", "push_next") if k in kw}


def dma(op, buf, sram, dram, x, y=1, dram_stride=None, sram_stride=None, **kw):
    """LOAD / STORE of ``y`` rows of ``x`` bytes (strides default to ``x``: contiguous)."""
    deps = _deps(kw)
    assert not kw, kw
    return Insn(op, fields(op, buf=BUFFERS.index(buf), sram=sram, dram=dram, x=x, y=y,
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
         depthwise=0, dtype=0, wfmt=0, **kw):
    """A TACC or MAC instruction; the output size follows from the geometry."""
    deps = _deps(kw)
    assert not kw, kw
    oh, ow = out_hw(h, w, kh, kw_, sh, sw, pads)
    pt, pb, pl, pr = pads
    return Insn(op, fields(op, inp=inp, wgt=wgt, acc=acc, c=c, h=h, w=w, f=f, kh=kh, kw=kw_,
                           oh=oh, ow=ow, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr,
                           accumulate=accumulate, depthwise=depthwise, dtype=dtype, wfmt=wfmt),
                **deps)


SYNC, HALT = Insn("SYNC"), Insn("HALT")


# ---- DRAM image ---------------------------------------------------------------------------------

def pad16(n):
    return (n + 15) & ~15


class Dram:
    """Lays out a DRAM image: constants from address 0, then tensors (16-byte aligned).
    ``dtype``: the element type of tensors that do not name one."""

    def __init__(self, dtype="float32"):
        self.dtype = dtype
        self.consts = bytearray()
        self.tensors: list[Tensor] = []
        self.top = 0

    def const(self, data: bytes) -> int:
        addr = pad16(len(self.consts))
        self.consts.extend(b"\0" * (addr - len(self.consts)))
        self.consts.extend(data)
        self.top = pad16(len(self.consts))
        return addr

    def tensor(self, name, role, shape, dtype=None) -> Tensor:
        self.top = pad16(max(self.top, len(self.consts)))
        t = Tensor(name, role, tuple(shape), self.dtype if dtype is None else dtype, self.top)
        self.tensors.append(t)
        self.top += t.nbytes
        return t

    def program(self, insns, machine=M, layers=()) -> Program:
        dram = pad16(self.top) + 64
        return Program(machine, list(insns), bytes(self.consts), list(self.tensors),
                       {"dram_bytes": dram, "layers": list(layers), "host_ops": []})


# ---- data ---------------------------------------------------------------------------------------

def ints(rng, shape, lo=-8, hi=8):
    """Integer-valued float32: every sum of a few hundred products is exact."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float32)


def ternary(rng, shape, p_zero=0.5):
    t = rng.choice([-1, 1], size=shape).astype(np.int8)
    t[rng.random(shape) < p_zero] = 0
    return t


# ---- independent references (direct loops) ------------------------------------------------------

def conv_ref(x, w, sh, sw, pads, depthwise=False, scalar=float):
    """Direct-loop convolution in Python numbers: ``scalar=float`` sums in float64 (exact
    for integer-valued data), ``scalar=int`` in Python integers (no overflow, no rounding)
    and returns int64."""
    c, h, wd = x.shape
    nf, _, kh, kw = w.shape
    pt, _, pl, _ = pads
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    out = np.zeros((nf, oh, ow), np.float64 if scalar is float else np.int64)
    for fi in range(nf):
        chans = [fi] if depthwise else range(c)
        for oy in range(oh):
            for ox in range(ow):
                s = scalar(0)
                for ci in chans:
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh + ky - pt, ox * sw + kx - pl
                            if 0 <= iy < h and 0 <= ix < wd:
                                s += scalar(w[fi, 0 if depthwise else ci, ky, kx]) * scalar(x[ci, iy, ix])
                out[fi, oy, ox] = s
    return out


def pool_windows(x, kh, kw, sh, sw, pads, scalar=float):
    """(channel, oy, ox, the window's values inside ``x``) for every output position of a
    pooling window (padding left out), in direct loops."""
    c, h, wd = x.shape
    pt, _, pl, _ = pads
    oh, ow = out_hw(h, wd, kh, kw, sh, sw, pads)
    for ci in range(c):
        for oy in range(oh):
            for ox in range(ow):
                yield ci, oy, ox, [scalar(x[ci, oy * sh + ky - pt, ox * sw + kx - pl])
                                   for ky in range(kh) for kx in range(kw)
                                   if 0 <= oy * sh + ky - pt < h and 0 <= ox * sw + kx - pl < wd]
