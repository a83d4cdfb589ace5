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

**Dense block** (operand of ``MAC``): float32 (``wfmt`` 0) or int8 (``wfmt`` 1)
``[F, C, KH, KW]`` (depthwise: ``[F, 1, KH, KW]``), row-major.

Every block holds one tile: ``F`` filters by ``C`` input channels of the tile (a grouped
convolution's tile lies in one group, ``C <= C_layer / groups``: the blocks have no group
field, docs/isa.md "Grouped convolutions").

**Epilogue parameters** (operand of ``EPI``): float32 ``scale[F]`` (if ``has_scale``)
followed by float32 ``bias[F]``; int8 mode: int32 ``M[F]`` then int64 ``B[F]`` at the
next 8-byte boundary (:func:`target_dlac.isa.encoding.epi_param_layout`).

**SWIS block** (operand of ``SACC``): see the comment above :data:`SWIS_M`.
"""

from __future__ import annotations

import numpy as np

from target_dlac.isa.formats import SWIS_BITS, SWIS_GROUP, SWIS_MAX_SHIFTS, TERNARY_MAX_WEIGHTS

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
    if flat.shape[1] > TERNARY_MAX_WEIGHTS:
        raise ValueError(f"ternary tile has {flat.shape[1]} weights per filter; the u16 index "
                         f"allows {TERNARY_MAX_WEIGHTS} (tile fewer input channels)")
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


def ternary_order(buf: np.ndarray, addr: int, nfilters: int) -> np.ndarray:
    """The PE order of a ternary block at ``addr``: ``order[j]`` the filter (accumulator
    row) on PE column ``j`` (read as stored; :func:`unpack_ternary` checks it)."""
    o = addr + 4 * nfilters
    return buf[o:o + 2 * nfilters].view("<u2").astype(np.int64)


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


# ---- SWIS blocks (operand of SACC) ------------------------------------------------------
#
#     u8   count[F]     shift count S_f of each filter, in PE order (padded to 4 bytes)
#     u16  row[F]       accumulator row of each filter (padded to 4 bytes)
#     then, for each filter in PE order, for each kernel position (ky, kx), for each group of
#     SWIS_M consecutive input channels (the last group zero-padded):
#         u8   shift[S_f]        bit positions (0..7) shared by the group
#         u16  code[SWIS_M]      bit 15: sign (1 = negative); bit j < S_f: mask of shift j
#     each filter's record padded to 4 bytes.
#     weight = (-1 if sign) * sum_j mask_j * 2^shift_j

SWIS_M = SWIS_GROUP


def swis_groups(c: int, kh: int, kw: int) -> int:
    return kh * kw * -(-c // SWIS_M)


def swis_filter_bytes(count: int, groups: int) -> int:
    return pad4(groups * (count + 2 * SWIS_M))


def swis_block_bytes(counts, groups: int) -> int:
    f = len(counts)
    return pad4(f) + pad4(2 * f) + sum(swis_filter_bytes(int(s), groups) for s in counts)


def pack_swis(values: np.ndarray, shifts: np.ndarray, counts: np.ndarray, order: np.ndarray) -> bytes:
    """``values`` [F, C, KH, KW] SWIS integers; ``shifts`` [F, KH*KW, ceil(C/M), >= max count]
    their groups' bit positions; ``counts`` [F]; ``order``: PE order of the filters."""
    f, c, kh, kw = values.shape
    g_c = -(-c // SWIS_M)
    vals = np.zeros((f, g_c * SWIS_M, kh, kw), np.int64)
    vals[:, :c] = values
    # [F, kpos, group, M]
    grp = vals.reshape(f, g_c, SWIS_M, kh * kw).transpose(0, 3, 1, 2)
    out = bytearray()
    out += np.asarray(counts, np.uint8)[order].tobytes().ljust(pad4(f), b"\0")
    out += np.asarray(order, "<u2").tobytes().ljust(pad4(2 * f), b"\0")
    for fi in order:
        s = int(counts[fi])
        sh = np.asarray(shifts[fi, :, :, :s], np.int64)                   # [kpos, group, S]
        mag = np.abs(grp[fi])                                              # [kpos, group, M]
        masks = (mag[..., None] >> sh[:, :, None, :]) & 1                  # [kpos, group, M, S]
        rebuilt = (masks << sh[:, :, None, :]).sum(axis=-1)
        if not np.array_equal(rebuilt, mag):
            raise ValueError(f"filter {fi}: weights are not representable by their shift sets")
        code = (masks << np.arange(s)).sum(axis=-1) | ((grp[fi] < 0).astype(np.int64) << 15)
        rec = np.concatenate([np.ascontiguousarray(sh.astype(np.uint8).reshape(-1, s)),
                              np.ascontiguousarray(code.astype("<u2").reshape(-1, SWIS_M)).view(np.uint8)],
                             axis=1)
        out += rec.tobytes().ljust(swis_filter_bytes(s, kh * kw * g_c), b"\0")
    return bytes(out)


def swis_counts(buf: np.ndarray, addr: int, nfilters: int) -> np.ndarray:
    """Shift counts (PE order) from a SWIS block's header, checked to be 1..SWIS_MAX_SHIFTS."""
    head = pad4(nfilters) + pad4(2 * nfilters)
    if addr + head > len(buf):
        raise BlockError(f"SWIS block header [{addr}, {addr + head}) runs past WGT ({len(buf)} bytes)")
    counts = buf[addr:addr + nfilters].astype(np.int64)
    if nfilters and (counts.min() < 1 or counts.max() > SWIS_MAX_SHIFTS):
        raise BlockError(f"SWIS shift counts must be 1..{SWIS_MAX_SHIFTS}")
    return counts


def unpack_swis(buf: np.ndarray, addr: int, nfilters: int, c: int, kh: int, kw: int):
    """Read a SWIS block; returns (dense float32 ``[F, C*KH*KW]`` by accumulator row,
    shift counts in PE order, block bytes).  Every field is checked."""
    g_c = -(-c // SWIS_M)
    groups = swis_groups(c, kh, kw)
    head = pad4(nfilters) + pad4(2 * nfilters)
    counts = swis_counts(buf, addr, nfilters)
    rows = buf[addr + pad4(nfilters):addr + pad4(nfilters) + 2 * nfilters].view("<u2").astype(np.int64)
    if nfilters and (rows.max() >= nfilters or np.bincount(rows, minlength=nfilters).max() != 1):
        raise BlockError(f"SWIS block rows are not a permutation of 0..{nfilters - 1}")
    total = swis_block_bytes(counts, groups)
    if addr + total > len(buf):
        raise BlockError(f"SWIS block [{addr}, {addr + total}) runs past WGT ({len(buf)} bytes)")
    dense = np.zeros((nfilters, c, kh * kw), np.float32)
    o = addr + head
    for fi in range(nfilters):
        s = int(counts[fi])
        rec = buf[o:o + groups * (s + 2 * SWIS_M)].reshape(groups, s + 2 * SWIS_M)
        sh = rec[:, :s].astype(np.int64)
        if sh.size and sh.max() > SWIS_BITS - 1:
            raise BlockError(f"SWIS shift position above {SWIS_BITS - 1}")
        code = np.ascontiguousarray(rec[:, s:]).view("<u2").astype(np.int64)       # [groups, M]
        if (code & ~((1 << s) - 1 | 1 << 15)).any():
            raise BlockError("SWIS weight code has bits set beyond its shift count")
        mags = (((code[..., None] >> np.arange(s)) & 1) << sh[:, None, :]).sum(axis=-1)
        vals = np.where(code >> 15, -mags, mags).reshape(kh * kw, g_c * SWIS_M)[:, :c]
        dense[rows[fi]] = vals.T
        o += swis_filter_bytes(s, groups)
    return dense.reshape(nfilters, -1), counts, total
