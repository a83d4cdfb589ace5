"""Lowering of a channel concat (``dlac.concat``: ``torch.cat(xs, 1)``, ONNX ``Concat`` with
``axis=1``) to DMA copies through INP and ACC.  No new instruction.

In NCHW (or ``(N, C)``) memory, input ``i``'s part of output image ``b`` is one contiguous
DRAM range: ``C_i·H·W`` elements from element ``(b·C + off_i)·H·W``, where ``off_i`` is the
channel count of the inputs before it.  So each (image, input) pair is one flat copy,
split into chunks of half of INP or ACC (the smaller), and each chunk is

    LOAD  INP[slot] <- input bytes
    ALU   ACC[slot] = add(INP[slot], INP[slot]) as int8, sa, sb, shift
    STORE ACC[slot] -> output bytes

double-buffered in one segment (load, ALU and store overlap; one ``SYNC`` at the end).
The load and store units have no token queue between them, so the copy goes through the
compute unit: ALU's int8 ``add`` of a vector with itself with ``sa = sb = 0, shift = 1``
is ``(2a + 1) >> 1 = a`` for every byte, i.e. an exact copy of any bytes (float32 and
float16 tensors are copied as their bytes, bit for bit, -0.0 and NaN payloads included).

int8 programs: the output has one exponent ``fy`` (calibration's for the concat's result)
and input ``i`` its own ``fa``; :func:`requant` gives the ALU shifts that requantize it
exactly as ``add(a, a)`` of two tensors of exponent ``fa + 1`` (``intmath.add_params``):
``fa >= fy``: ``round(a / 2^(fa - fy))`` (round half up, ``shift = 1 + fa - fy``);
``fa < fy``: ``clip(a · 2^(fy - fa))`` (``sa = sb = fy - fa``, at most 8: anything
non-zero is clipped by then).  ``fa == fy`` is the plain copy.  The int8 codegen builds
the same integers in its reference graph (``modes/integer.py``).

Refused (:class:`Unlowerable`: the concat runs on the host): another axis, a rank other
than 2 or 4, inputs of different dtypes or of shapes that differ beyond axis 1, and, in
int8 programs, a constant input (it has no calibrated exponent).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from target_dlac.codegen.composites import ConcatSpec, Unlowerable
from target_dlac.codegen.emitter import Segment, SlotSet
from target_dlac.codegen.modes import intmath as Q
from target_dlac.codegen.schedule import ALIGN, align
from target_dlac.isa.encoding import ALU_OPS, BUFFERS, DTYPES, EXP_BIAS, Insn
from target_dlac.binary.program import DTYPE_SIZES

#: left shift beyond which every non-zero int8 value is clipped (|a| << 8 >= 256)
MAX_UP = 8


def requant(fa: int, fy: int) -> tuple[int, int, int]:
    """``(sa, sb, shift)`` of ALU int8 ``add(a, a)`` giving ``a`` (exponent ``fa``) at
    exponent ``fy``; ``(0, 0, 1)`` (a copy) when they are equal."""
    return Q.add_params(fa + 1, fa + 1, min(fy, fa + MAX_UP))


def pieces(spec: ConcatSpec, refs: list) -> list[tuple[int, int, int, int]]:
    """``(input index, source byte offset, destination byte offset, bytes)`` of each
    contiguous copy, image by image."""
    out = spec.out_shape
    n, inner = int(out[0]), int(np.prod(out[2:], dtype=np.int64))
    bs = DTYPE_SIZES[refs[0].dtype]
    got = []
    for b in range(n):
        off = 0
        for i, r in enumerate(refs):
            ci = int(r.shape[1])
            got.append((i, b * ci * inner * bs, (b * int(out[1]) + off) * inner * bs, ci * inner * bs))
            off += ci
    return got


def check(spec: ConcatSpec, refs: list) -> None:
    out = spec.out_shape
    if spec.axis % len(out) != 1 or len(out) not in (2, 4):
        raise Unlowerable(f"concat along axis {spec.axis} of rank-{len(out)} tensors (dLAC: axis 1 "
                          "of rank 2 or 4)")
    if len({r.dtype for r in refs}) != 1:
        raise Unlowerable("concat of inputs of different dtypes")
    for r in refs:
        if len(r.shape) != len(out) or r.shape[0] != out[0] or tuple(r.shape[2:]) != tuple(out[2:]):
            raise Unlowerable(f"concat input {r.name} {r.shape} does not match the output "
                              f"{out} beyond axis 1")
    if sum(int(r.shape[1]) for r in refs) != out[1]:
        raise Unlowerable(f"concat inputs' channels do not add up to the output's {out[1]}")


def lower_concat(cg, spec: ConcatSpec, env: dict, out) -> dict:
    """Emit the copies of ``spec`` into ``cg.insns``; returns the layer's report entry."""
    if out.dtype == "int8" and any(not (isinstance(a, relax.Var) and a in env) for a in spec.args):
        raise Unlowerable("int8 concat with a constant input (it has no calibrated exponent)")
    refs = [env[a] if isinstance(a, relax.Var) and a in env else cg.ref(a) for a in spec.args]
    check(spec, refs)
    if refs[0].dtype != out.dtype:
        raise Unlowerable(f"concat of {refs[0].dtype} inputs into a {out.dtype} output")
    shifts = [requant(r.exp, out.exp) if out.dtype == "int8" else (0, 0, 1) for r in refs]
    m = cg.m
    chunk = max(ALIGN, min(m.acc_bytes, m.inp_bytes) // 2 // ALIGN * ALIGN)     # two slots of each
    seg, inp, acc = Segment(), SlotSet(0, align(chunk), 2), SlotSet(0, align(chunk), 2)
    stored, k = [-1, -1], 0
    for i, src, dst, nbytes in pieces(spec, refs):
        sa, sb, shift = shifts[i]
        for k0 in range(0, nbytes, chunk):
            x = min(chunk, nbytes - k0)
            slot, free_after = inp.take(k)
            last = seg.load(dict(buf=BUFFERS.index("INP"), sram=inp.addr(slot), dram=refs[i].addr + src + k0,
                                 y=1, x=x, dram_stride=0, sram_stride=0), free_after)
            aslot, _ = acc.take(k)
            j = seg.compute(Insn("ALU", dict(a=inp.addr(slot), b=inp.addr(slot), op=ALU_OPS.index("add"),
                                             dst=acc.addr(aslot), n=x, dtype=DTYPES.index("int8"), sa=sa,
                                             sb=sb, shift=shift, exp=EXP_BIAS)), last, stored[aslot])
            inp.use(slot, j)
            stored[aslot] = seg.store(dict(buf=BUFFERS.index("ACC"), sram=acc.addr(aslot),
                                           dram=out.addr + dst + k0, y=1, x=x, dram_stride=0, sram_stride=0), j)
            k += 1
    cg.insns += seg.finish()
    label = {"float32": "fp32", "float16": "fp16", "int8": "int8"}[out.dtype]
    return {"name": f"concat:{out.name}", "var": out.name, "op": "concat", "precision": label,
            "min_dram_bytes": sum(r.nbytes for r in refs) + out.nbytes, "min_write_bytes": out.nbytes}
