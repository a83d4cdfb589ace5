"""Lowering of an activation x activation matmul (``dlac.matmul``: attention's ``q @ k^T``
and ``softmax @ v``, both operands computed at run time) to MAC instructions.

``C[b] = A[b] @ B[b]`` with ``A[b]`` of shape ``(M, K)`` and ``B[b]`` of ``(K, N)`` (the
same leading batch dimensions ``b`` on both, row-major float32 in DRAM) is, per batch, a
1x1 convolution whose *weights are the left operand*: ``M`` filters of ``K`` taps (the rows
of ``A[b]``, which are exactly MAC's dense float32 block ``f32[f][K]``) over an input of
``K`` channels x 1 row x ``N`` columns (``B[b]`` as it lies in DRAM), giving ``[M][1][N]``
(``C[b]`` as it lies in DRAM).  No operand is transposed or copied: the LOAD that brings a
weight block into WGT reads ``A[b]``'s rows from the activation's DRAM address instead of
the constants.  Two forms:

* :func:`one_segment`, when all of ``A``, ``B`` and ``C`` fit on chip at once (small
  attention heads): one LOAD of all ``B`` into INP, one of all ``A`` into WGT, then per
  batch a MAC and an EPI (zero bias) on its own accumulator tile, one STORE of all ``C``;
* otherwise each batch is a tiled layer of its own through
  :func:`target_dlac.codegen.lower.lower_conv` (epilogue with a zero bias).  A filter tile is
  the contiguous row range ``A[b][f0:f1]``; input-channel tiles would cut every row, so the
  schedule keeps all ``K`` channels in one tile (if no such schedule fits the buffers, the
  matmul runs on the host).

Cost (docs/isa.md, "Matmul of two activations"): per batch and tile, MAC's
``S + ceil(N / R') * ceil(f / P') * K`` plus the DMA of the ``A`` rows, ``B`` tile and
``C`` tile, on the timeline.  Only float32 programs lower it: the fp16 / int8 codegens build their reference
graphs op by op and have no matmul there, so there it stays on the host.  The tuner does not
list these (``composites.conv_layers`` holds constant-weight layers only): they always use
the default schedule (:func:`matmul_schedule`); the cost model predicts their cycles
(:func:`target_dlac.tune.costmodel.matmul_cycles`).
"""

from __future__ import annotations

import math

import numpy as np

from target_dlac.codegen.composites import MatmulSpec, Unlowerable
from target_dlac.codegen.emitter import Segment
from target_dlac.codegen.lower import Epilogue, lower_conv
from target_dlac.codegen.schedule import ConvShape, Schedule, acc_per_pe, align, default_schedule, fits, \
    filter_tiles
from target_dlac.isa.encoding import ACTS, BUFFERS, MAX_DIM, MAX_PIXELS, Insn, fbits

_F32 = 4


def matmul_shape(a_shape: tuple, b_shape: tuple) -> tuple[int, int, int, int, ConvShape]:
    """``(batches, M, K, N, per-batch ConvShape)`` of ``A @ B``, or :class:`Unlowerable`."""
    if len(a_shape) < 2 or len(a_shape) != len(b_shape) or a_shape[:-2] != b_shape[:-2]:
        raise Unlowerable(f"matmul of {list(a_shape)} and {list(b_shape)}: dLAC takes operands of "
                          "equal rank >= 2 with the same batch dimensions (no broadcasting)")
    (m, k), (k2, n) = a_shape[-2:], b_shape[-2:]
    batches = math.prod(a_shape[:-2])
    if k != k2:
        raise Unlowerable(f"matmul of {list(a_shape)} and {list(b_shape)}: inner dimensions differ")
    if max(m, k, n) > MAX_DIM:
        raise Unlowerable(f"matmul dimension {max(m, k, n)} exceeds the {MAX_DIM} of a tile field")
    shape = ConvShape(1, k, 1, n, m, 1, 1, 1, 1, (0, 0, 0, 0), 1, n, ternary=False)
    return batches, m, k, n, shape


def matmul_schedule(shape: ConvShape, machine) -> Schedule:
    """The default schedule with every input channel (``K``) in one tile, or Unlowerable."""
    def wbytes(f_t, c_t):
        return _F32 * f_t * c_t

    s = default_schedule(shape, machine, wbytes)
    if s.c_tile >= shape.c:
        return s
    w_t = shape.ow
    while w_t >= 1:                     # the widest tile first, then the most filters
        f_t = min(shape.f, MAX_DIM)
        while f_t >= 1:
            cand = Schedule(f_t, shape.c, 1, w_t)
            if fits(shape, cand, machine, wbytes):
                return cand
            f_t //= 2
        w_t //= 2
    raise Unlowerable(f"no schedule holds all {shape.c} reduction channels of the matmul in one tile")


def one_segment(batches: int, m: int, k: int, n: int, machine, *, a_addr: int, b_addr: int,
                out_addr: int, prm_addr: int):
    """All batches in one segment when every operand fits on chip at once: one LOAD of all
    ``B`` into INP, one of all ``A`` into WGT (after them the ``M`` zero biases), per batch a
    MAC and an EPI on its own accumulator tile, one STORE of all of ``C``; ``None`` when
    they do not fit (then each batch is a layer of its own, :func:`lower_matmul`)."""
    a_bytes, b_bytes, c_bytes = (_F32 * batches * x for x in (m * k, k * n, m * n))
    prm_off = align(a_bytes)
    if b_bytes > machine.inp_bytes or prm_off + _F32 * m > machine.wgt_bytes or c_bytes > machine.acc_bytes \
            or batches * acc_per_pe(m, n, machine) > machine.obuf_bytes_per_pe or m * n > MAX_PIXELS:
        return None
    seg = Segment()
    seg.load(dict(buf=BUFFERS.index("INP"), sram=0, dram=b_addr, y=1, x=b_bytes, dram_stride=0, sram_stride=0))
    wl = seg.load(dict(buf=BUFFERS.index("WGT"), sram=0, dram=a_addr, y=1, x=a_bytes, dram_stride=0,
                       sram_stride=0))
    pl = seg.load(dict(buf=BUFFERS.index("WGT"), sram=prm_off, dram=prm_addr, y=1, x=_F32 * m,
                       dram_stride=0, sram_stride=0))
    last = -1
    for i in range(batches):
        acc = _F32 * i * m * n
        seg.compute(Insn("MAC", dict(inp=_F32 * i * k * n, wgt=_F32 * i * m * k, acc=acc, accumulate=0,
                                     depthwise=0, c=k, h=1, w=n, kh=1, kw=1, f=m, oh=1, ow=n, sh=1, sw=1,
                                     pt=0, pb=0, pl=0, pr=0, dtype=0, wfmt=0, pxshift=0)), wl)
        last = seg.compute(Insn("EPI", dict(acc=acc, dst=acc, has_scale=0, has_res=0, act=ACTS.index("none"),
                                            prm=prm_off, res=0, f=m, p=n, lo_bits=fbits(0.0), dtype=0,
                                            shift=0, rshift=0, hi_bits=fbits(0.0))), pl)
    seg.store(dict(buf=BUFFERS.index("ACC"), sram=0, dram=out_addr, y=1, x=c_bytes, dram_stride=0,
                   sram_stride=0), last)
    return seg.finish()


def lower_matmul(cg, spec: MatmulSpec, env: dict, out) -> dict:
    """Append the instructions of ``spec`` (an activation x activation matmul) to ``cg``
    (a :class:`target_dlac.codegen.generator.Codegen`); returns its layer-table entry."""
    if hasattr(cg, "reference_mod"):          # fp16 / int8 codegens (modes/ref.py)
        raise Unlowerable("activation x activation matmul: only float32 programs lower it")
    a, b = env[spec.a], env[spec.b]
    if a.dtype != "float32" or b.dtype != "float32":
        raise Unlowerable("activation x activation matmul of non-float32 operands")
    batches, m, k, n, shape = matmul_shape(a.shape, b.shape)
    if tuple(spec.out_shape) != tuple(a.shape[:-2]) + (m, n):
        raise Unlowerable(f"matmul result {list(spec.out_shape)} is not {list(a.shape[:-2]) + [m, n]}")
    zeros = cg._const_bytes(np.zeros(m, "<f4").tobytes())        # the epilogue's bias
    name = f"matmul:{out.name}"
    entry = {"name": name, "var": out.name, "op": "matmul", "precision": "fp32",
             "min_dram_bytes": a.nbytes + b.nbytes + out.nbytes, "min_write_bytes": out.nbytes}
    fast = one_segment(batches, m, k, n, cg.m, a_addr=a.addr, b_addr=b.addr, out_addr=out.addr, prm_addr=zeros)
    if fast is not None:
        cg.insns += fast
        return entry
    sched = matmul_schedule(shape, cg.m)
    pblock = {fi: (zeros + _F32 * f0, _F32 * (f1 - f0))
              for fi, (f0, f1) in enumerate(filter_tiles(shape, sched.f_tile))}
    for i in range(batches):
        a_addr = a.addr + _F32 * i * m * k
        wblock = {(fi, 0): (a_addr + _F32 * f0 * k, _F32 * (f1 - f0) * k)
                  for fi, (f0, f1) in enumerate(filter_tiles(shape, sched.f_tile))}
        cg.insns += lower_conv(shape, sched, cg.m, x_addr=b.addr + _F32 * i * k * n,
                               out_addr=out.addr + _F32 * i * m * n, wblock=wblock, pblock=pblock,
                               epi=Epilogue(False), name=name, wfmt=0)
    return dict(entry, schedule=sched.to_dict(), shape={key: v for key, v in vars(shape).items()})
