"""Per-layer tiling schedules: the explicit object the codegen follows (and the autotuner
searches), its validation against the machine's buffers, and the greedy default.

A :class:`ConvShape` describes a conv or dense layer (dense = 1x1 conv on ``[B, K, 1, 1]``).
A :class:`Schedule` fixes:

* ``f_tile``, ``c_tile``: output / input channels per tile (depthwise: ``c_tile`` is
  ignored; each filter reads its own channel; grouped convolutions, ``groups`` = G > 1:
  output / input channels *of one group* per tile, at most ``F / G`` and ``C / G``: a
  filter tile never straddles two groups, and each of its input-channel tiles is a slice
  of its group's ``C / G`` channels, see :func:`filter_tiles` / :func:`channel_tiles`);
* ``h_tile``, ``w_tile``: output rows / columns per tile;
* ``order``: ``spatial_outer`` (for each output tile, all filter tiles: inputs stay,
  weights stream) or ``filter_outer`` (for each filter tile, all output tiles:
  weights stay, inputs stream);
* ``double_buffer``: two slots per buffer (loads and stores overlap compute) or one;
* ``pe_order``: filter-to-PE assignment, ``as_is`` or ``sorted`` (by non-zero count,
  so filters that run together have similar counts);
* ``pxshift``: PE-array mapping, ``pe_rows >> pxshift`` pixel rows by ``pe_cols <<
  pxshift`` filter columns (:meth:`Machine.pe_grid`); the default schedule keeps 0.

:func:`footprint` gives the bytes each buffer needs; :func:`check` refuses a schedule
that does not fit (naming the buffer); :func:`default_schedule` is the greedy
"fill the buffers" choice (as Gemmini's ``tiled_matmul_auto``): largest filter tile
first, then the most output rows the accumulators hold, then the most input channels
the input and weight buffers hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from target_dlac.core.errors import CodegenError

from target_dlac.isa.cycles import ceil_div
from target_dlac.isa.encoding import ACTS, DTYPES, MAX_DIM, MAX_PIXELS, epi_param_layout
from target_dlac.isa.formats import SWIS_GROUP, TERNARY_MAX_WEIGHTS
from target_dlac.isa.machine import Machine
from target_dlac.binary.program import DTYPE_SIZES

ALIGN = 64              # on-chip slots and DRAM blocks start on 64-byte boundaries
ORDERS = ("spatial_outer", "filter_outer")
PE_ORDERS = ("as_is", "sorted")
MAX_KIDX = TERNARY_MAX_WEIGHTS      # u16 weight index of a ternary block
# MAX_DIM (the 12-bit tile fields) and MAX_PIXELS (EPI's 16-bit pixel field): isa.encoding


def _touched(n_out: int, stride: int, k: int, pad: int, size: int) -> int:
    """Input positions in ``[0, size)`` that ``n_out`` windows of ``k`` at ``stride``
    (after ``pad`` leading zeros) read."""
    return len({o * stride - pad + i for o in range(n_out) for i in range(k)} & set(range(size)))


@dataclass(frozen=True)
class ConvShape:
    n: int
    c: int
    h: int
    w: int
    f: int
    kh: int
    kw: int
    sh: int
    sw: int
    pads: tuple          # (top, left, bottom, right)
    oh: int
    ow: int
    depthwise: bool = False
    residual: bool = False
    ternary: bool = True
    dtype: str = "float32"     # activation type: float32 | int8
    swis: bool = False         # SWIS weights: input-channel tiles in whole groups (SWIS_GROUP)
    groups: int = 1            # grouped convolution (not depthwise): G groups of C/G -> F/G channels
    act: str = "none"          # the EPI activation as lowered (isa.ACTS): its cost and parameter bytes

    @property
    def elem_bytes(self) -> int:
        return DTYPE_SIZES[self.dtype]

    def in_rows(self, rows: int) -> int:
        """Input rows (padded coordinates) that ``rows`` output rows read."""
        return (rows - 1) * self.sh + self.kh

    def in_cols(self, cols: int) -> int:
        return (cols - 1) * self.sw + self.kw

    def min_input_bytes(self) -> int:
        """Bytes of the input any output reads (a strided 1x1 conv skips rows and
        columns): the read-side DRAM term of the layer's lower bound."""
        pt, pl = self.pads[0], self.pads[1]
        rows = _touched(self.oh, self.sh, self.kh, pt, self.h)
        cols = _touched(self.ow, self.sw, self.kw, pl, self.w)
        return self.n * self.c * rows * cols * self.elem_bytes

    @property
    def cg(self) -> int:
        """Input channels each filter reads: ``C / groups`` (1 for depthwise)."""
        return 1 if self.depthwise else self.c // self.groups

    @property
    def fg(self) -> int:
        """Filters per group (``F`` unless grouped)."""
        return self.f // self.groups

    @property
    def k(self) -> int:
        return self.cg * self.kh * self.kw


@dataclass(frozen=True)
class Schedule:
    f_tile: int
    c_tile: int
    h_tile: int
    w_tile: int
    order: str = "spatial_outer"
    double_buffer: bool = True
    pe_order: str = "sorted"
    pxshift: int = 0            # PE-array mapping: pe_rows >> pxshift pixel rows (Machine.pe_grid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Schedule":
        """The schedule ``d`` describes (as :meth:`to_dict` writes it), read strictly: every
        field present and no other; tile sizes integers of at least 1, ``order`` in
        :data:`ORDERS`, ``double_buffer`` a boolean, ``pe_order`` in :data:`PE_ORDERS`,
        ``pxshift`` an integer of at least 0.  Otherwise :class:`CodegenError` naming the
        field.  (Whether it suits a layer and a machine: :func:`schedule_problems`.)"""
        if not isinstance(d, dict):
            raise CodegenError(f"schedule {d!r} is malformed: not a dict of its fields")
        names = tuple(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in d if k not in names)
        missing = [k for k in names if k not in d]
        if unknown or missing:
            raise CodegenError(f"schedule {d!r} is malformed: "
                               + "; ".join(([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
                                           + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))

        def bad(name, want):
            return CodegenError(f"schedule {d!r} is malformed: {name}={d[name]!r} is not {want}")

        for name in ("f_tile", "c_tile", "h_tile", "w_tile", "pxshift"):
            v, lo = d[name], 0 if name == "pxshift" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(name, f"an integer of at least {lo}")
        for name, opts in (("order", ORDERS), ("pe_order", PE_ORDERS)):
            if not isinstance(d[name], str) or d[name] not in opts:
                raise bad(name, f"one of {', '.join(opts)}")
        if not isinstance(d["double_buffer"], bool):
            raise bad("double_buffer", "true or false")
        return cls(**{k: d[k] for k in names})


def slots(s: Schedule) -> int:
    return 2 if s.double_buffer else 1


def align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def ranges(total: int, step: int) -> list[tuple[int, int]]:
    return [(i, min(i + step, total)) for i in range(0, total, step)]


def even_splits(n: int, max_k: int | None = None) -> list[int]:
    """Distinct tile sizes ``ceil(n / k)`` for ``k = 1 .. max_k`` (default: ``n``), ascending."""
    return sorted({ceil_div(n, k) for k in range(1, (max_k or n) + 1)})


def filter_tiles(shape: ConvShape, f_tile: int) -> list[tuple[int, int]]:
    """The filter tiles ``(f0, f1)`` in order: ``ranges(F, f_tile)``; grouped: the same
    within each group's ``F / G`` filters, so no tile straddles two groups."""
    if shape.groups == 1:
        return ranges(shape.f, f_tile)
    fg = shape.fg
    return [(g * fg + a, g * fg + b) for g in range(shape.groups) for a, b in ranges(fg, f_tile)]


def channel_tiles(shape: ConvShape, s: Schedule, ftile: tuple) -> list[tuple[int, int]]:
    """The input channels ``(c0, c1)`` (of the layer's input) of each input-channel tile of
    the filter tile ``ftile``: ``ranges(C, c_tile)``; depthwise: the filters' own channels;
    grouped: ``c_tile`` slices of the filters' group's ``C / G`` channels."""
    if shape.depthwise:
        return [ftile]
    base = ftile[0] // shape.fg * shape.cg
    return [(base + a, base + b) for a, b in ranges(shape.cg, s.c_tile)]


def input_tiles(shape: ConvShape, s: Schedule) -> list[tuple[int, int]]:
    """Every distinct input-channel tile the layer's filter tiles read, in order."""
    return list(dict.fromkeys(cr for fr in filter_tiles(shape, s.f_tile) for cr in channel_tiles(shape, s, fr)))


def weight_tiles(shape: ConvShape, s: Schedule) -> list[tuple[int, int, tuple, tuple]]:
    """``(fi, ci, (f0, f1), (c0, c1))`` of every weight block the codegen packs under ``s``:
    per filter tile and input-channel tile; ``(c0, c1)`` indexes the weights' input axis
    (depthwise: their single channel; grouped: the ``C / G`` channels of the group)."""
    ctiles = [(0, 1)] if shape.depthwise else ranges(shape.cg, s.c_tile)
    return [(fi, ci, fr, cr) for fi, fr in enumerate(filter_tiles(shape, s.f_tile))
            for ci, cr in enumerate(ctiles)]


def slot_bytes(shape: ConvShape, s: Schedule, wbytes) -> dict:
    """Bytes of one slot of each on-chip region a conv layer uses under ``s`` (aligned):
    ``inp`` input tile, ``res`` residual tile, ``wgt`` weight block (``wbytes(f_tile,
    c_tile)`` = the largest), ``prm`` epilogue parameters, ``acc`` accumulator tile."""
    c_t = s.f_tile if shape.depthwise else s.c_tile
    eb = shape.elem_bytes
    tile = s.f_tile * s.h_tile * s.w_tile
    cols = shape.in_cols(s.w_tile)
    if s.w_tile >= shape.ow:                    # whole rows are loaded (lower.whole_rows)
        cols = max(cols, shape.w)
    return {"inp": align(c_t * shape.in_rows(s.h_tile) * cols * eb),
            "res": align(tile * eb) if shape.residual else 0,
            "wgt": align(wbytes(s.f_tile, c_t)),
            "prm": align(epi_param_layout(s.f_tile, True, DTYPES.index(shape.dtype), ACTS.index(shape.act))[2]),
            "acc": align(tile * 4)}


def footprint(shape: ConvShape, s: Schedule, m: Machine, wbytes) -> dict:
    """Bytes per buffer under ``s`` (all slots).  ``ACC_PE`` counts one PE's output buffer
    (the tile is spread over the PE grid: ``f_tile / pe_cols`` filters by ``pixels /
    pe_rows`` pixels per PE)."""
    n = slots(s)
    b = slot_bytes(shape, s, wbytes)
    return {"INP": n * (b["inp"] + b["res"]), "WGT": n * (b["wgt"] + b["prm"]), "ACC": n * b["acc"],
            "ACC_PE": n * acc_per_pe(s.f_tile, s.h_tile * s.w_tile, m, s.pxshift)}


def acc_per_pe(filters: int, pixels: int, m: Machine, pxshift: int = 0) -> int:
    """Bytes of one PE's output buffer that a tile of ``filters`` x ``pixels`` uses."""
    rows, cols = m.pe_grid(pxshift)
    return ceil_div(filters, cols) * ceil_div(pixels, rows) * 4


def capacity_problems(fp: dict, m: Machine) -> list[str]:
    """The buffers a footprint overflows."""
    return [f"{buf} needs {fp[key]} bytes, has {have}"
            for buf, key, have in (("INP", "INP", m.inp_bytes), ("WGT", "WGT", m.wgt_bytes),
                                   ("ACC", "ACC", m.acc_bytes),
                                   ("ACC (per PE)", "ACC_PE", m.obuf_bytes_per_pe))
            if fp[key] > have]


def schedule_problems(shape: ConvShape, s: Schedule, m: Machine, wbytes) -> tuple[bool, list[str]]:
    """``(malformed, problems)``: what makes ``s`` illegal for ``shape`` on ``m`` (an empty
    list: legal).  ``malformed``: a field is out of its range (nothing else is checked)."""
    problems = []
    if s.order not in ORDERS:
        problems.append(f"order {s.order!r} is not one of {ORDERS}")
    if s.pe_order not in PE_ORDERS:
        problems.append(f"pe_order {s.pe_order!r} is not one of {PE_ORDERS}")
    if isinstance(s.pxshift, bool) or not isinstance(s.pxshift, int) or not 0 <= s.pxshift <= m.max_pxshift:
        problems.append(f"pxshift={s.pxshift!r} is outside [0, {m.max_pxshift}]")
    if not isinstance(shape.groups, int) or shape.groups < 1 or shape.depthwise and shape.groups != 1 \
            or shape.c % shape.groups or shape.f % shape.groups:
        return True, [f"groups={shape.groups!r} does not split {shape.c} input and {shape.f} output channels"]
    c_hi = shape.c if shape.depthwise else shape.cg
    for name, v, hi in (("f_tile", s.f_tile, shape.fg), ("c_tile", s.c_tile, c_hi),
                        ("h_tile", s.h_tile, shape.oh), ("w_tile", s.w_tile, shape.ow)):
        if not isinstance(v, int) or not 1 <= v <= min(hi, MAX_DIM):
            problems.append(f"{name}={v} is outside [1, {min(hi, MAX_DIM)}]")
    if problems:
        return True, problems
    c_t = s.f_tile if shape.depthwise else s.c_tile
    if shape.swis and s.c_tile % SWIS_GROUP and s.c_tile != shape.cg:
        problems.append(f"c_tile={s.c_tile}: SWIS layers tile input channels in groups of {SWIS_GROUP}")
    if shape.in_rows(s.h_tile) > MAX_DIM or shape.in_cols(s.w_tile) > MAX_DIM:
        problems.append(f"input tile exceeds {MAX_DIM} rows/columns")
    if shape.ternary and (1 if shape.depthwise else c_t) * shape.kh * shape.kw > MAX_KIDX:
        problems.append(f"{c_t}x{shape.kh}x{shape.kw} weights per filter exceed the 16-bit index")
    if s.h_tile * s.w_tile > MAX_PIXELS:
        problems.append(f"{s.h_tile * s.w_tile} pixels per tile exceed {MAX_PIXELS}")
    return False, problems + capacity_problems(footprint(shape, s, m, wbytes), m)


def check(shape: ConvShape, s: Schedule, m: Machine, wbytes, where: str = "layer") -> None:
    """Raise :class:`CodegenError` if ``s`` is not a legal schedule for ``shape`` on ``m``."""
    malformed, problems = schedule_problems(shape, s, m, wbytes)
    if problems:
        raise CodegenError(f"{where}: schedule {s}" + (": " if malformed else " does not fit: ")
                           + "; ".join(problems))


def fits(shape: ConvShape, s: Schedule, m: Machine, wbytes) -> bool:
    return not schedule_problems(shape, s, m, wbytes)[1]


def _halvings(n: int, align: int = 1) -> list[int]:
    """n, then smaller candidates (halving; multiples of ``align`` while possible)."""
    out, v = [n], n
    while v > 1:
        v = ceil_div(v, 2)
        if v >= align:
            v = ceil_div(v, align) * align if v % align else v
        out.append(v)
    return sorted(set(x for x in out if x >= 1), reverse=True)


def default_schedule(shape: ConvShape, m: Machine, wbytes, double_buffer: bool = True,
                     where: str = "layer") -> Schedule:
    """The greedy default: fill the buffers (see the module docstring).

    For each filter tile (all filters, then halves aligned to ``pe_cols``) and each row
    count the accumulators hold (full output width first), take the most input channels
    that fit; keep the candidate with the fewest compute steps (tiles), ties going to
    more input channels per tile (fewer input reloads), then to taller tiles.  A grouped
    convolution is tiled within a group: filter tiles of at most ``F / G``, channel tiles
    of at most ``C / G``."""
    n = 2 if double_buffer else 1
    best, best_key = None, None
    c_opts = even_splits(min(shape.c if shape.depthwise else shape.cg, MAX_DIM))[::-1]   # largest first
    if shape.swis:
        c_opts = [c for c in c_opts if c % SWIS_GROUP == 0 or c == shape.cg]
    for w_t in _halvings(min(shape.ow, MAX_DIM)):
        for f_t in _halvings(min(shape.fg, MAX_DIM), m.pe_cols):
            for h_t in range(min(shape.oh, MAX_DIM), 0, -1):
                if n * acc_per_pe(f_t, h_t * w_t, m) > m.obuf_bytes_per_pe:
                    continue
                opts = [f_t] if shape.depthwise else c_opts
                lo, hi, found = 0, len(opts) - 1, None      # opts descending; fit grows with index
                while lo <= hi:
                    mid = (lo + hi) // 2
                    if fits(shape, Schedule(f_t, min(opts[mid], shape.c), h_t, w_t,
                                            double_buffer=double_buffer), m, wbytes):
                        found, hi = mid, mid - 1
                    else:
                        lo = mid + 1
                if found is None:
                    continue
                c_t = min(opts[found], shape.c)
                steps = (ceil_div(shape.oh, h_t) * ceil_div(shape.ow, w_t) * shape.groups
                         * ceil_div(shape.fg, f_t) * (1 if shape.depthwise else ceil_div(shape.cg, c_t)))
                key = (steps, -c_t, -h_t)
                if best_key is None or key < best_key:
                    best, best_key = Schedule(f_t, c_t, h_t, w_t, double_buffer=double_buffer), key
        if best is not None:        # only tile the width when no full-width tiling fits
            return best
    raise CodegenError(f"{where}: no tiling of {shape} fits the machine's buffers "
                       f"(INP {m.inp_bytes} B, WGT {m.wgt_bytes} B, ACC {m.obuf_bytes_per_pe} B per PE)")
