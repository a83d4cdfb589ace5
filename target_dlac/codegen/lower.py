"""Lowering of one layer into a :class:`Segment` of instructions under its schedule.

* :func:`lower_conv`: conv2d / dense (as 1x1 conv) with its epilogue, tiled over
  batch, output rows x columns, filter tiles and input-channel tiles; inputs and
  weight blocks stay in their slots while the loop order reuses them.  A grouped
  convolution is G convolutions on channel slices: each filter tile lies in one group
  and loads only that group's input channels (:func:`schedule.filter_tiles`,
  :func:`schedule.channel_tiles`), so its TACC / MAC / SACC are ordinary ones.
* :func:`lower_pool`: max / average / global-average pooling, tiled over channels and
  output rows.
* :func:`lower_eltwise`: ``add``, ``add_relu``, ``relu``, the unary float activations and
  the conversions over flat chunks.

DRAM layout is NCHW float32; on-chip tiles are ``[channels, rows, cols]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from target_dlac.core.errors import CodegenError

from target_dlac.isa.cycles import ceil_div
from target_dlac.codegen.emitter import Lowered, Segment, SlotSet
from target_dlac.isa.encoding import ACTS, ALU_OPS, BUFFERS, DTYPES, EXP_BIAS, MAX_PAD, MAX_POOL_DIM, POOL_MODES, \
    Insn, alu_bytes, elem_bytes, fbits, field_bits, field_max, s32_bits
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import ConvShape, Schedule, align, capacity_problems, channel_tiles, filter_tiles, \
    footprint, ranges, slot_bytes, slots


def tile_dmas(base: int, dims: tuple, c: tuple, h: tuple, w: tuple, sram: int, elem: int = 4) -> list[dict]:
    """DMA field sets moving the tile ``[c0:c1, h0:h1, w0:w1]`` of an ``[C, H, W]`` tensor at
    DRAM ``base`` to/from a contiguous on-chip tile at ``sram``: one 2-D transfer when
    rows are whole, else one per channel."""
    C, H, W = dims
    (c0, c1), (h0, h1), (w0, w1) = c, h, w
    nc, nh, nw = c1 - c0, h1 - h0, w1 - w0
    if nc <= 0 or nh <= 0 or nw <= 0:
        return []
    if w0 == 0 and w1 == W:
        x = nh * W * elem
        start = base + ((c0 * H + h0) * W) * elem
        if h0 == 0 and h1 == H or nc == 1:
            return [dict(sram=sram, dram=start, y=1, x=nc * x if h0 == 0 and h1 == H else x,
                         dram_stride=0, sram_stride=0)]
        return [dict(sram=sram, dram=start, y=nc, x=x, dram_stride=H * W * elem, sram_stride=x)]
    out = []
    x = nw * elem
    for i, ch in enumerate(range(c0, c1)):
        out.append(dict(sram=sram + i * nh * x, dram=base + ((ch * H + h0) * W + w0) * elem,
                        y=nh, x=x, dram_stride=W * elem, sram_stride=x))
    return out


def _dma(buf: str, d: dict) -> dict:
    d = dict(d, buf=BUFFERS.index(buf))
    if d["y"] == 1:
        d["dram_stride"] = d["sram_stride"] = 0
    return d


def whole_rows(shape: ConvShape, ow: tuple, iw0: int, iw1: int, rp: int) -> int:
    """End of the input columns a tile loads: ``W`` instead of ``iw1`` when the tile spans
    the output width but its window stops short of the row end (a strided conv's last
    ``< stride`` columns are never read).  Whole rows make the tile one 2-D DMA instead
    of one per channel (``tile_dmas``); the extra columns cost fewer bytes than the
    per-transfer latency they save, and the conv geometry (``(w + pl + pr - kw) // sw + 1``
    output columns) is unchanged because the next output would start past ``W``."""
    if ow[0] == 0 and ow[1] == shape.ow and iw0 == 0 and rp == 0 and iw1 < shape.w:
        return shape.w
    return iw1


def input_window(shape: ConvShape, oh: tuple, ow: tuple) -> tuple:
    """``((ih0, ih1, pad_top, pad_bottom), (iw0, iw1, pad_left, pad_right))``: the input
    rows and columns a tile of outputs ``oh`` x ``ow`` loads, and its zero padding."""
    pt, pl = shape.pads[0], shape.pads[1]
    rows = _window(oh[0], oh[1], shape.sh, shape.kh, pt, shape.h)
    iw0, iw1, lp, rp = _window(ow[0], ow[1], shape.sw, shape.kw, pl, shape.w)
    return rows, (iw0, whole_rows(shape, ow, iw0, iw1, rp), lp, rp)


def _window(o0: int, o1: int, stride: int, k: int, pad: int, size: int) -> tuple[int, int, int, int]:
    """Input range [i0, i1) read by outputs [o0, o1) and the zero padding before/after."""
    a = o0 * stride - pad
    b = (o1 - 1) * stride + k - pad      # exclusive, padded coordinates
    i0, i1 = max(a, 0), min(b, size)
    return i0, i1, i0 - a, b - i1


class ConvTag(NamedTuple):
    """The tag of a conv instruction (:class:`emitter.Lowered`): the weight block it reads
    (``(fi, ci)`` of ``wblock``) and where its input tile starts in the layer's input
    (image ``n``, channel ``c0``, row ``ih0``, column ``iw0``; the instruction has the
    tile's size and padding)."""
    block: tuple
    n: int
    c0: int
    ih0: int
    iw0: int


@dataclass
class Epilogue:
    has_scale: bool
    act: str = "none"          # an EPI activation (isa.ACTS): none | relu | clip | leaky_relu | ...
    lo: float = 0.0            # clip bounds (int8 mode: integer bounds of the output);
    hi: float = 0.0            # leaky_relu: ``lo`` is the slope
    residual_addr: int | None = None
    shift: int = 0             # int8 mode: right shift of the requantization
    rshift: int = 0            # int8 mode: left shift of the residual


def threshold_meta(act: str, lo: float) -> dict:
    """The layer-table field of a thresholded ReLU (``relu`` with ``lo = T > 0``):
    ``{"relu_threshold": T}`` with T written as its shortest float32 decimal (the value the
    user gave, e.g. 0.3, not 0.30000001192...); ``{}`` for any other activation."""
    if act != "relu" or not lo > 0:
        return {}
    import numpy as np

    return {"relu_threshold": float(str(np.float32(lo)))}


def _epi_bounds(epi: Epilogue, integer: bool) -> tuple[int, int]:
    """EPI's ``lo_bits`` / ``hi_bits``: the clip bounds (float32 bits, int8: signed 32-bit),
    or leaky_relu's slope in ``lo_bits``."""
    if integer:
        return s32_bits(int(epi.lo)), s32_bits(int(epi.hi))
    return fbits(epi.lo), fbits(epi.hi)


def epi_slot(p_slot: int, pblock: dict, base: int, n_sl: int, m: Machine, name: str) -> int:
    """The parameter slot of a layer: the schedule's (scale and bias, :func:`schedule.slot_bytes`),
    grown when the activation's parameters make a block longer (PReLU slopes, the int8
    table); the grown slots must still fit WGT after the weight slots (``base``)."""
    need = align(max((nb for _, nb in pblock.values()), default=0))
    if need <= p_slot:
        return p_slot
    if base + n_sl * need > m.wgt_bytes:
        raise CodegenError(f"{name}: {n_sl} epilogue parameter slots of {need} bytes (with the "
                           f"activation's parameters) do not fit WGT after the weights")
    return need


def conv_op(shape: ConvShape) -> str:
    """The conv instruction of a layer: ``SACC`` (SWIS), ``TACC`` (ternary) or ``MAC``."""
    return "SACC" if shape.swis else ("TACC" if shape.ternary else "MAC")


def lower_conv(shape: ConvShape, s: Schedule, m: Machine, *, x_addr: int, out_addr: int,
               wblock: dict, pblock: dict, epi: Epilogue, name: str = "layer", wfmt: int = 0) -> Lowered:
    """Instructions of a conv/dense layer.  ``wblock[(fi, ci)]`` and ``pblock[fi]`` give
    the DRAM (address, bytes) of each packed weight block / parameter block.  The result
    is a list of instructions whose ``tags`` say which weight block each one reads: the
    key ``(fi, ci)`` of ``wblock`` for a ``TACC`` / ``MAC`` / ``SACC``, ``None`` for the
    others (:class:`emitter.Lowered`)."""
    seg = Segment()
    n_sl = slots(s)
    eb = shape.elem_bytes
    integer = shape.dtype == "int8"
    largest = max(nb for _, nb in wblock.values())
    sizes = slot_bytes(shape, s, lambda f_t, c_t: largest)      # the same slots the check sized
    over = capacity_problems(footprint(shape, s, m, lambda f_t, c_t: largest), m)
    if over:
        raise CodegenError(f"{name}: schedule {s} does not fit: " + "; ".join(over))
    in_slot, res_slot, w_slot, p_slot, acc_slot = (sizes[k] for k in ("inp", "res", "wgt", "prm", "acc"))
    p_slot = epi_slot(p_slot, pblock, n_sl * w_slot, n_sl, m, name)
    ins_ = SlotSet(0, in_slot, n_sl)
    ress = SlotSet(n_sl * in_slot, res_slot, n_sl)
    wts = SlotSet(0, w_slot, n_sl)
    prms = SlotSet(n_sl * w_slot, p_slot, n_sl)
    accs = SlotSet(0, acc_slot, n_sl)
    acc_stored = [-1] * n_sl             # last store index of each accumulator slot

    C, H, W = shape.c, shape.h, shape.w
    assert all(nb <= p_slot for _, nb in pblock.values())
    ftiles = filter_tiles(shape, s.f_tile)
    sp = [(hr, wr) for hr in ranges(shape.oh, s.h_tile) for wr in ranges(shape.ow, s.w_tile)]

    def loop():
        for n in range(shape.n):
            if s.order == "spatial_outer":
                for si in range(len(sp)):
                    for fi in range(len(ftiles)):
                        yield n, si, fi
            else:
                for fi in range(len(ftiles)):
                    for si in range(len(sp)):
                        yield n, si, fi

    def load_into(slotset: SlotSet, key, dmas_for) -> int:
        slot = slotset.find(key)
        if slot is None:
            slot, free_after = slotset.take(key)
            last = -1
            for d in dmas_for(slotset.addr(slot)):
                last = seg.load(d, free_after)
                free_after = -1
            slotset.filled_by[slot] = last
        return slot

    x_chw = C * H * W * eb
    o_chw = shape.f * shape.oh * shape.ow * eb
    for n, si, fi in loop():
        (oh0, oh1), (ow0, ow1) = sp[si]
        f0, f1 = ftiles[fi]
        (ih0, ih1, tp, bp), (iw0, iw1, lp, rp) = input_window(shape, (oh0, oh1), (ow0, ow1))
        if max(tp, bp, lp, rp) > MAX_PAD:
            raise CodegenError(f"{name}: tile padding {max(tp, bp, lp, rp)} exceeds the "
                               f"{field_bits(conv_op(shape), 'pt')}-bit pad field")
        cts = channel_tiles(shape, s, (f0, f1))
        acc_slot_i, _ = accs.take((n, si, fi))
        acc_addr = accs.addr(acc_slot_i)
        for ci, (c0, c1) in enumerate(cts):
            in_key = (n, si, c0)
            islot = load_into(ins_, in_key, lambda a: [_dma("INP", d) for d in tile_dmas(
                x_addr + n * x_chw, (C, H, W), (c0, c1), (ih0, ih1), (iw0, iw1), a, eb)])
            wkey = (fi, 0 if shape.depthwise else ci)
            wa, wn = wblock[wkey]
            wslot = load_into(wts, wkey, lambda a: [_dma("WGT", dict(sram=a, dram=wa, y=1, x=wn,
                                                                      dram_stride=0, sram_stride=0))])
            insn = Insn(conv_op(shape), dict(
                inp=ins_.addr(islot), wgt=wts.addr(wslot), acc=acc_addr, accumulate=int(ci > 0),
                depthwise=int(shape.depthwise), c=c1 - c0, h=ih1 - ih0, w=iw1 - iw0,
                kh=shape.kh, kw=shape.kw, f=f1 - f0, oh=oh1 - oh0, ow=ow1 - ow0,
                sh=shape.sh, sw=shape.sw, pt=tp, pb=bp, pl=lp, pr=rp, dtype=DTYPES.index(shape.dtype),
                wfmt=0 if shape.ternary or shape.swis else wfmt, pxshift=s.pxshift))
            j = seg.compute(insn, max(ins_.filled_by[islot], wts.filled_by[wslot]),
                            acc_stored[acc_slot_i] if ci == 0 else -1, tag=ConvTag(wkey, n, c0, ih0, iw0))
            ins_.use(islot, j)
            wts.use(wslot, j)
        # epilogue: parameters and the residual tile, then the stores
        pa, pn = pblock[fi]
        pslot = load_into(prms, fi, lambda a: [_dma("WGT", dict(sram=a, dram=pa, y=1, x=pn,
                                                                 dram_stride=0, sram_stride=0))])
        after = prms.filled_by[pslot]
        res_addr = 0
        if epi.residual_addr is not None:
            rslot = load_into(ress, (n, si, fi), lambda a: [_dma("INP", d) for d in tile_dmas(
                epi.residual_addr + n * o_chw, (shape.f, shape.oh, shape.ow), (f0, f1),
                (oh0, oh1), (ow0, ow1), a, eb)])
            after = max(after, ress.filled_by[rslot])
            res_addr = ress.addr(rslot)
        npx = (oh1 - oh0) * (ow1 - ow0)
        lo_bits, hi_bits = _epi_bounds(epi, integer)
        j = seg.compute(Insn("EPI", dict(
            acc=acc_addr, dst=acc_addr, has_scale=int(epi.has_scale),
            has_res=int(epi.residual_addr is not None), act=ACTS.index(epi.act), prm=prms.addr(pslot),
            res=res_addr, f=f1 - f0, p=npx, lo_bits=lo_bits, hi_bits=hi_bits,
            dtype=DTYPES.index(shape.dtype), shift=epi.shift, rshift=epi.rshift)), after)
        prms.use(pslot, j)
        if epi.residual_addr is not None:
            ress.use(rslot, j)
        for d in tile_dmas(out_addr + n * o_chw, (shape.f, shape.oh, shape.ow), (f0, f1),
                           (oh0, oh1), (ow0, ow1), acc_addr, eb):
            acc_stored[acc_slot_i] = seg.store(_dma("ACC", d), j)
    return seg.finish()


@dataclass(frozen=True)
class PoolShape:
    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pads: tuple        # (top, left, bottom, right)
    mode: str          # max | avg
    count_pad: bool = False
    dtype: str = "float32"
    mult: int = 0      # int8 average: requantization multiplier and shift
    shift: int = 0

    @property
    def elem_bytes(self) -> int:
        return elem_bytes(DTYPES.index(self.dtype))


def pool_tiles(p: PoolShape, m: Machine) -> tuple[int, int]:
    """Greedy (channels, output rows) per tile: as many as the buffers hold, double-buffered."""
    top = MAX_POOL_DIM
    for c_t in sorted({min(p.c, top), *[ceil_div(p.c, 2 ** i) for i in range(1, top.bit_length() + 1)]},
                      reverse=True):
        if c_t > top:
            continue
        for h_t in range(p.oh, 0, -1):
            in_rows = (h_t - 1) * p.sh + p.kh
            if 2 * align(c_t * in_rows * p.w * p.elem_bytes) <= m.inp_bytes and \
                    2 * ceil_div(c_t * h_t * p.ow, m.pes) * 4 <= m.obuf_bytes_per_pe and \
                    c_t * h_t * p.ow * 8 <= m.acc_bytes and in_rows <= top:
                return c_t, h_t
    raise CodegenError(f"pooling {p} does not fit the buffers")


def lower_pool(p: PoolShape, m: Machine, *, x_addr: int, out_addr: int, name: str = "pool") -> list[Insn]:
    c_t, h_t = pool_tiles(p, m)
    seg = Segment()
    eb = p.elem_bytes
    in_slot = align(c_t * ((h_t - 1) * p.sh + p.kh) * p.w * eb)
    acc_slot = align(c_t * h_t * p.ow * eb)
    ins_ = SlotSet(0, in_slot, 2)
    accs = SlotSet(0, acc_slot, 2)
    stored = [-1, -1]
    pt, pl, pb, pr = p.pads
    max_pad, pad_bits = field_max("POOL", "pt"), field_bits("POOL", "pt")
    if max(pl, pr) > max_pad:
        raise CodegenError(f"{name}: padding {max(pl, pr)} exceeds the {pad_bits}-bit pad field")
    for n in range(p.n):
        for c0, c1 in ranges(p.c, c_t):
            for oh0, oh1 in ranges(p.oh, h_t):
                ih0, ih1, tp, bp = _window(oh0, oh1, p.sh, p.kh, pt, p.h)
                if max(tp, bp) > max_pad:
                    raise CodegenError(f"{name}: padding {max(tp, bp)} exceeds the {pad_bits}-bit pad field")
                slot, free_after = ins_.take((n, c0, oh0))
                last = -1
                for d in tile_dmas(x_addr + n * p.c * p.h * p.w * eb, (p.c, p.h, p.w), (c0, c1),
                                   (ih0, ih1), (0, p.w), ins_.addr(slot), eb):
                    last = seg.load(_dma("INP", d), free_after)
                    free_after = -1
                aslot, _ = accs.take((n, c0, oh0))
                j = seg.compute(Insn("POOL", dict(
                    src=ins_.addr(slot), dst=accs.addr(aslot), mode=POOL_MODES.index(p.mode),
                    count_pad=int(p.count_pad), c=c1 - c0, h=ih1 - ih0, w=p.w, oh=oh1 - oh0, ow=p.ow,
                    kh=p.kh, kw=p.kw, sh=p.sh, sw=p.sw, pt=tp, pb=bp, pl=pl, pr=pr,
                    dtype=DTYPES.index(p.dtype), shift=p.shift, mult=p.mult)), last, stored[aslot])
                ins_.use(slot, j)
                for d in tile_dmas(out_addr + n * p.c * p.oh * p.ow * eb, (p.c, p.oh, p.ow), (c0, c1),
                                   (oh0, oh1), (0, p.ow), accs.addr(aslot), eb):
                    stored[aslot] = seg.store(_dma("ACC", d), j)
    return seg.finish()


@dataclass(frozen=True)
class Elt:
    """An element-wise op: ``op`` in ALU_OPS (the unary activations ``isa.ALU_ACTS`` take one
    float operand); int8 fields as in docs/isa.md (ALU)."""
    op: str
    dtype: str = "float32"      # element type of the operands (quantize: of the output)
    sa: int = 0
    sb: int = 0
    shift: int = 0
    exp: int = 0



def lower_eltwise(e: Elt, n: int, m: Machine, *, a_addr: int, b_addr: int | None,
                  out_addr: int) -> list[Insn]:
    """Element-wise ``e`` over ``n`` elements, chunked to fit, double-buffered."""
    bi, bo = alu_bytes(e.op, DTYPES.index(e.dtype))
    per_pe = m.obuf_bytes_per_pe // 2 // 4
    chunk = max(1, min(n, per_pe * m.pes, m.inp_bytes // 4 // 4))
    seg = Segment()
    half = align(chunk * bi)
    ins_ = SlotSet(0, 2 * half, 2)
    accs = SlotSet(0, align(chunk * 4), 2)
    stored = [-1, -1]
    for k0, k1 in ranges(n, chunk):
        slot, free_after = ins_.take(k0)
        base = ins_.addr(slot)
        last = seg.load(_dma("INP", dict(sram=base, dram=a_addr + bi * k0, y=1, x=(k1 - k0) * bi,
                                        dram_stride=0, sram_stride=0)), free_after)
        if b_addr is not None:
            last = seg.load(_dma("INP", dict(sram=base + half, dram=b_addr + bi * k0, y=1,
                                            x=(k1 - k0) * bi, dram_stride=0, sram_stride=0)))
        aslot, _ = accs.take(k0)
        j = seg.compute(Insn("ALU", dict(a=base, b=base + half if b_addr is not None else base,
                                         op=ALU_OPS.index(e.op), dst=accs.addr(aslot), n=k1 - k0,
                                         dtype=DTYPES.index(e.dtype), sa=e.sa, sb=e.sb, shift=e.shift,
                                         exp=e.exp + EXP_BIAS)), last, stored[aslot])
        ins_.use(slot, j)
        stored[aslot] = seg.store(_dma("ACC", dict(sram=accs.addr(aslot), dram=out_addr + bo * k0, y=1,
                                                   x=(k1 - k0) * bo, dram_stride=0, sram_stride=0)), j)
    return seg.finish()
