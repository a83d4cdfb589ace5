"""Weight block formats in the weight buffer (WGT), as the codegen packs them and the
interpreter walks them.

**Ternary block** (operand of ``TACC``), for ``F`` filters of one tile, all sections
4-byte aligned, little-endian::

    u32  count[F]        non-zero weights of each filter, in PE order
    u16  row[F]          accumulator row (output channel within the tile) of each filter
    u16  index[total]    flat index c*KH*KW + ky*KW + kx of each non-zero weight
    u8   codes[ceil(total/4)]   2-bit code per non-zero weight, 4 per byte, low bits
                                first: 0b01 = +1, 0b10 = -1 (zero is never stored)

Filters are listed in PE order: consecutive groups of ``pe_cols`` filters run
together on the PE columns, so the codegen's filter order is its load balancing.

**Dense block** (operand of ``MAC``): float32 ``[F, C, KH, KW]`` (depthwise:
``[F, 1, KH, KW]``), row-major.

**Epilogue parameters** (operand of ``EPI``): float32 ``scale[F]`` (if ``has_scale``)
followed by float32 ``bias[F]``.
"""

from __future__ import annotations

import numpy as np

CODE_POS, CODE_NEG = 1, 2


def pad4(n: int) -> int:
    return (n + 3) & ~3


def ternary_block_bytes(nfilters: int, total: int) -> int:
    return 4 * nfilters + pad4(2 * nfilters) + pad4(2 * total) + pad4((total + 3) // 4)


def pack_ternary(t: np.ndarray, order: np.ndarray | None = None) -> bytes:
    """Pack ternary weights ``t`` ``[F, C, KH, KW]`` (values -1/0/+1) as a ternary block.
    ``order``: PE order of the filters (default: as given)."""
    nf = t.shape[0]
    flat = t.reshape(nf, -1)
    if flat.shape[1] > 65536:
        raise ValueError(f"ternary tile has {flat.shape[1]} weights per filter; the u16 index "
                         "allows 65536 (tile fewer input channels)")
    order = np.arange(nf) if order is None else np.asarray(order)
    rows, idx = np.nonzero(flat[order])          # row-major: filters in PE order, indices ascending
    counts = np.bincount(rows, minlength=nf)
    codes = np.where(flat[order][rows, idx] > 0, CODE_POS, CODE_NEG).astype(np.uint8)
    idx = idx.astype("<u2")
    total = len(idx)
    packed = np.zeros(((total + 3) // 4) * 4, np.uint8)
    packed[:total] = codes
    packed = (packed.reshape(-1, 4) << np.array([0, 2, 4, 6], np.uint8)).sum(axis=1).astype(np.uint8)
    out = bytearray(ternary_block_bytes(nf, total))
    o = 0
    out[o:o + 4 * nf] = np.asarray(counts, "<u4").tobytes()
    o += 4 * nf
    out[o:o + 2 * nf] = np.asarray(order, "<u2").tobytes()
    o += pad4(2 * nf)
    out[o:o + 2 * total] = idx.tobytes()
    o += pad4(2 * total)
    out[o:o + len(packed)] = packed.tobytes()
    return bytes(out)


class BlockError(ValueError):
    """A ternary block is malformed (the interpreter adds pc and instruction)."""


def ternary_counts(buf: np.ndarray, addr: int, nfilters: int) -> np.ndarray:
    end = addr + 4 * nfilters
    if end > len(buf):
        raise BlockError(f"ternary block header [{addr}, {end}) runs past WGT ({len(buf)} bytes)")
    return buf[addr:end].view("<u4").astype(np.int64)


def unpack_ternary(buf: np.ndarray, addr: int, nfilters: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a ternary block from ``buf`` at ``addr``; returns (dense float32 matrix
    ``[F, k]`` indexed by accumulator row, counts in PE order).  Every entry is
    checked; duplicates accumulate twice (as the hardware's walk would)."""
    counts = ternary_counts(buf, addr, nfilters)
    total = int(counts.sum())
    o = addr + 4 * nfilters
    end = o + pad4(2 * nfilters) + pad4(2 * total) + pad4((total + 3) // 4)
    if end > len(buf):
        raise BlockError(f"ternary block [{addr}, {end}) with {total} non-zeros runs past WGT "
                         f"({len(buf)} bytes)")
    rows = buf[o:o + 2 * nfilters].view("<u2").astype(np.int64)
    o += pad4(2 * nfilters)
    if nfilters and (rows.max() >= nfilters or np.bincount(rows, minlength=nfilters).max() != 1):
        raise BlockError(f"ternary block rows are not a permutation of 0..{nfilters - 1}")
    idx = buf[o:o + 2 * total].view("<u2").astype(np.int64)
    o += pad4(2 * total)
    if total and idx.max() >= k:
        raise BlockError(f"ternary weight index {int(idx.max())} is outside the tile's {k} weights")
    raw = buf[o:o + (total + 3) // 4]
    codes = ((raw[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)[:total]
    if total and not ((codes == CODE_POS) | (codes == CODE_NEG)).all():
        raise BlockError("ternary block holds a code other than +1 (0b01) or -1 (0b10)")
    vals = np.where(codes == CODE_POS, 1.0, -1.0)
    filt = np.repeat(rows, counts)
    dense = np.bincount(filt * k + idx, weights=vals, minlength=nfilters * k)
    return dense.reshape(nfilters, k).astype(np.float32), counts
