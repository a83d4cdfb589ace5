"""Graph constants that live in the binary's ``CONSTS`` section (the packed weight blocks).

A reference graph (``REF``) holds every layer weight the dLAC program also holds.  Instead
of a second copy, such a constant is described by the blocks the codegen packed
(:mod:`target_dlac.isa.blocks`) and rebuilt from ``CONSTS`` when the section is loaded,
bit for bit the array the compiler had (the writer decodes it once and compares)::

    {"shape": [...], "dtype": D, "consts": {"format": FMT, "layout": "oihw" | "kn",
                                           "kernel": [F, C, KH, KW],
                                           "tiles": [[f0, f1, c0, c1, offset, nbytes], ...]}}

* ``format``: the block format: ``ternary`` (TACC block, ``D`` int8), ``swis`` (SACC block,
  int16), ``float32`` / ``int8`` (dense MAC blocks ``[f1-f0, c1-c0, KH, KW]`` row-major);
* ``kernel``: the weight in the codegen's OIHW layout; ``layout`` ``oihw``: the constant is
  that array (``shape == kernel``), ``kn``: a dense layer's ``(K, N)`` weight, the transpose
  of ``[N, K, 1, 1]`` (``shape == [C, F]``, ``KH == KW == 1``);
* ``tiles``: one block per (filter range, input-channel range) of the kernel at a
  ``CONSTS`` offset: filter-major, the channel ranges of each filter range covering
  ``[0, C)`` in order and the filter ranges covering ``[0, F)`` (so every weight comes from
  exactly one block).

Plain Python and NumPy (no TVM).  :func:`check_ref` bounds every field against the
``CONSTS`` section (structure, offsets, sizes), :func:`decode` checks each block's
contents as it rebuilds the array; both raise :class:`ValueError` with the tile and the
offset, which the caller turns into a :class:`BinaryFormatError` naming the constant.
"""

from __future__ import annotations

import hashlib

import numpy as np

from target_dlac.isa.blocks import CODE_NEG, CODE_POS, pad4, swis_filter_bytes, swis_groups, ternary_block_bytes
from target_dlac.isa.blocks import unpack_swis
from target_dlac.isa.formats import TERNARY_MAX_WEIGHTS

#: block format -> dtype of the constant it decodes to
FORMAT_DTYPES = {"ternary": "int8", "swis": "int16", "float32": "float32", "int8": "int8"}
#: bytes per weight of the dense formats
DENSE_BYTES = {"float32": 4, "int8": 1}
LAYOUTS = ("oihw", "kn")
KEYS = {"format", "layout", "kernel", "tiles"}


class Section(bytes):
    """A ``HOST`` / ``REF`` section's bytes together with the ``CONSTS`` image its constants
    may refer to (``consts``; None: the section must hold all its constants itself)."""

    consts: bytes | None

    def __new__(cls, data: bytes, consts: bytes | None = None):
        obj = super().__new__(cls, data)
        obj.consts = consts
        return obj


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_ref(ref, shape: tuple, dtype: str, consts_len: int | None, max_tiles: int = 1 << 20) -> tuple[int, int]:
    """Check a constant's ``consts`` description against its ``shape`` / ``dtype`` and a
    ``CONSTS`` section of ``consts_len`` bytes (None: not known yet, the offsets are checked
    when the constant is decoded) and at most ``max_tiles`` blocks; returns (tiles, SWIS
    filter records)."""
    if not isinstance(ref, dict) or set(ref) != KEYS:
        raise ValueError(f"'consts' must be {{{', '.join(sorted(KEYS))}}}")
    fmt, layout, kernel, tiles = ref["format"], ref["layout"], ref["kernel"], ref["tiles"]
    if not isinstance(fmt, str) or fmt not in FORMAT_DTYPES:
        raise ValueError(f"block format {str(fmt)[:20]!r} is not one of {tuple(FORMAT_DTYPES)}")
    if dtype != FORMAT_DTYPES[fmt]:
        raise ValueError(f"{fmt} blocks decode to {FORMAT_DTYPES[fmt]}, the constant is {dtype}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout {str(layout)[:20]!r} is not one of {LAYOUTS}")
    if (not isinstance(kernel, list) or len(kernel) != 4
            or not all(_int(d) and 1 <= d < 2 ** 31 for d in kernel)):
        raise ValueError("kernel must be 4 positive integers [F, C, KH, KW]")
    F, C, KH, KW = kernel
    want = tuple(kernel) if layout == "oihw" else (C, F)
    if layout == "kn" and (KH, KW) != (1, 1):
        raise ValueError(f"layout kn needs a 1x1 kernel, not {KH}x{KW}")
    if tuple(shape) != want:
        raise ValueError(f"shape {list(shape)} is not the {layout} form {list(want)} of kernel {kernel}")
    if not isinstance(tiles, list) or not 0 < len(tiles) <= max_tiles:
        raise ValueError(f"tiles must be a non-empty list of at most {max_tiles} blocks")
    f_at, c_at, f_end, records = 0, 0, 0, 0
    for ti, t in enumerate(tiles):
        if not isinstance(t, list) or len(t) != 6 or not all(_int(v) for v in t):
            raise ValueError(f"tile {ti} is not [f0, f1, c0, c1, offset, nbytes]")
        f0, f1, c0, c1, off, n = t
        if c0 == 0 and c_at in (0, C) and f0 == f_end:         # a new filter range
            f_at, f_end, c_at = f0, f1, 0
        if not (f0 == f_at and f1 == f_end and c0 == c_at and f0 < f1 <= F and c0 < c1 <= C):
            raise ValueError(f"tile {ti} [{f0}:{f1}, {c0}:{c1}] does not continue the tiling of "
                             f"kernel {kernel} (filter-major, each weight in one tile)")
        c_at = c1
        if off < 0 or n < 0 or consts_len is not None and off + n > consts_len:
            raise ValueError(f"tile {ti}: CONSTS range [{off}, +{n}) is outside the {consts_len} bytes "
                             "of CONSTS")
        nf, k = f1 - f0, (c1 - c0) * KH * KW
        if fmt in DENSE_BYTES and n != nf * k * DENSE_BYTES[fmt]:
            raise ValueError(f"tile {ti} at CONSTS offset {off}: a {fmt} block of {nf}x{k} weights is "
                             f"{nf * k * DENSE_BYTES[fmt]} bytes, not {n}")
        if fmt == "ternary" and (k > TERNARY_MAX_WEIGHTS or n < ternary_block_bytes(nf, 0)):
            raise ValueError(f"tile {ti} at CONSTS offset {off}: not a ternary block of {nf} filters x "
                             f"{k} weights (at most {TERNARY_MAX_WEIGHTS}) in {n} bytes")
        if fmt == "swis":
            records += nf
            least = pad4(nf) + pad4(2 * nf) + nf * swis_filter_bytes(1, swis_groups(c1 - c0, KH, KW))
            if n < least:                         # (swis_block_bytes with one shift per filter)
                raise ValueError(f"tile {ti} at CONSTS offset {off}: {n} bytes cannot hold a SWIS block "
                                 f"of {nf} filters")
    if (f_end, c_at) != (F, C):
        raise ValueError(f"tiles end at [{f_end}, {c_at}], not at the kernel's [{F}, {C}]")
    return len(tiles), records


def _ternary(blk: np.ndarray, nf: int, k: int) -> np.ndarray:
    """A ternary block (:func:`target_dlac.isa.blocks.pack_ternary`) as int8 ``[nf, k]`` by
    accumulator row (the filter's place in the tile), every field checked."""
    counts = blk[:4 * nf].view("<u4").astype(np.int64)
    total = int(counts.sum())
    need = ternary_block_bytes(nf, total)
    if need != len(blk):
        raise ValueError(f"ternary block of {nf} filters with {total} non-zeros is {need} bytes, "
                         f"the tile gives {len(blk)}")
    o = 4 * nf
    rows = blk[o:o + 2 * nf].view("<u2").astype(np.int64)
    if rows.max() >= nf or np.bincount(rows, minlength=nf).max() != 1:
        raise ValueError(f"ternary block rows are not a permutation of 0..{nf - 1}")
    o += pad4(2 * nf)
    idx = blk[o:o + 2 * total].view("<u2").astype(np.int64)
    if total and idx.max() >= k:
        raise ValueError(f"ternary weight index {int(idx.max())} is outside the tile's {k} weights")
    o += pad4(2 * total)
    raw = blk[o:o + (total + 3) // 4]
    codes = ((raw[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)[:total]
    if total and not ((codes == CODE_POS) | (codes == CODE_NEG)).all():
        raise ValueError("ternary block holds a code other than +1 (0b01) or -1 (0b10)")
    out = np.zeros((nf, k), np.int8)
    out[np.repeat(rows, counts), idx] = np.where(codes == CODE_POS, 1, -1).astype(np.int8)
    return out


def decode(ref: dict, dtype: str, consts) -> np.ndarray:
    """The constant a checked description (:func:`check_ref`) stands for, rebuilt from the
    ``CONSTS`` bytes ``consts``; :class:`ValueError` naming the tile and offset of a
    malformed block."""
    fmt = ref["format"]
    F, C, KH, KW = ref["kernel"]
    buf = np.frombuffer(consts, np.uint8)
    out = np.zeros((F, C, KH, KW), np.dtype(dtype))
    for ti, (f0, f1, c0, c1, off, n) in enumerate(ref["tiles"]):
        blk = buf[off:off + n]
        nf, c = f1 - f0, c1 - c0
        try:
            if fmt in DENSE_BYTES:
                vals = blk.view(np.dtype(dtype).newbyteorder("<")).reshape(nf, c, KH, KW)
            elif fmt == "ternary":
                vals = _ternary(blk, nf, c * KH * KW).reshape(nf, c, KH, KW)
            else:
                dense, _, size = unpack_swis(blk, 0, nf, c, KH, KW)
                if size != n:
                    raise ValueError(f"SWIS block is {size} bytes, the tile gives {n}")
                vals = dense.astype(np.int16).reshape(nf, c, KH, KW)
        except ValueError as e:          # BlockError is a ValueError
            raise ValueError(f"tile {ti} at CONSTS offset {off}: {e}") from None
        out[f0:f1, c0:c1] = vals
    if ref["layout"] == "kn":
        return np.ascontiguousarray(out.reshape(F, C).T)
    return out


def digest(a: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).digest()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (0.0 and -0.0 differ; so do NaN payloads)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(u), b.view(u)))


class WeightIndex:
    """The layer weights a program's ``CONSTS`` holds (compile time): ``records`` are
    ``(w, format, tiles)``, ``w`` the OIHW array the codegen packed in ``format`` (a
    :data:`FORMAT_DTYPES` key) as ``tiles`` ``[(f0, f1, c0, c1, offset, nbytes)]``.
    :meth:`lookup` finds the blocks of a graph constant by value."""

    def __init__(self, records, consts: bytes):
        self.consts = consts
        self._by_key: dict = {}
        for w, fmt, tiles in records:
            fmt = str(fmt)
            if fmt not in FORMAT_DTYPES or str(w.dtype) != FORMAT_DTYPES[fmt] or w.ndim != 4 or not tiles:
                continue
            F, C, KH, KW = (int(d) for d in w.shape)
            ref = {"format": fmt, "kernel": [F, C, KH, KW], "tiles": [[int(v) for v in t] for t in tiles]}
            self._by_key.setdefault((str(w.dtype), (F, C, KH, KW)), []).append((w, ref, "oihw"))
            if (KH, KW) == (1, 1):
                self._by_key.setdefault((str(w.dtype), (C, F)), []).append((w, ref, "kn"))

    @classmethod
    def of_graph(cls, g, arrays: list) -> "WeightIndex":
        """The weights a loaded section (a checked ``Graph`` and its decoded constants) takes
        from ``CONSTS``: encoding its graph with them reproduces its description
        (:func:`target_dlac.binary.hostgraph.rebuild.weight_index`)."""
        records = []
        for c, a in zip(g.doc["constants"], arrays):
            if "consts" in c:
                r = c["consts"]
                w = a if r["layout"] == "oihw" else np.ascontiguousarray(a.T).reshape(r["kernel"])
                records.append((w, r["format"], r["tiles"]))
        return cls(records, g.consts)

    def lookup(self, value: np.ndarray) -> dict | None:
        """The ``consts`` description of ``value`` if a packed weight equals it bit for bit."""
        for w, ref, layout in self._by_key.get((str(value.dtype), tuple(value.shape)), ()):
            cand = w if layout == "oihw" else w.reshape(w.shape[0], w.shape[1]).T
            if _same(np.asarray(value), cand):
                return {**ref, "layout": layout}
        return None
