"""The arithmetic of the interpreter's instruction families: DMA (``LOAD`` / ``STORE``),
the convolutions (``TACC`` / ``MAC`` / ``SACC``), ``EPI``, ``POOL`` and ``ALU``, each one
instruction vectorized with NumPy over its elements and over the inputs of a batch.

:class:`Kernels` is a mixin of :class:`target_dlac.sim.interpreter.Interpreter`: its methods
use the interpreter's memories (``banks``: one row per input of the batch) and checked
accessors (``acc``, ``_span``, ``_arr``, ``_f32``, ``_put``, ``_fail``: arrays with a
leading batch axis) and its decoded weight blocks (``_weights``), which stay with the
interpreter along with the budgets they are charged to.  Every input of a batch gets the
arithmetic of a single run: the same NumPy calls on the same operands, so the same bits
(``tests/sim/test_batch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from target_dlac.isa import actskip, cycles
from target_dlac.isa.blocks import ternary_order
from target_dlac.isa.encoding import ACTS, ALU_ACTS, ALU_OPS, BUFFERS, EXP_BIAS, INT8, LUT_ENTRIES, POOL_MODES, \
    Insn, bits_f, epi_param_layout, s32
from target_dlac.sim.float_acts import float_act

F32 = np.dtype("<f4")
F16 = np.dtype("<f2")
FLOAT_TYPES = {0: F32, 1: F16}     # activation dtype code -> storage type of the float modes
#: Largest |value| of the int64 requantization sum before its shift (no silent wrap-around).
INT64_LIMIT = 2 ** 62
#: Bytes of TACC non-zero masks kept between instructions (zero-activation skipping).
MASK_CACHE_BYTES = 64 << 20


def _pad_hw(x: np.ndarray, top: int, bottom: int, left: int, right: int, value=0) -> np.ndarray:
    """``x`` ``[..., h, w]`` with its last two axes padded by ``value`` (``np.pad``'s result,
    made with one allocation and one copy); ``x`` itself when there is no padding."""
    if not (top or bottom or left or right):
        return x
    h, w = x.shape[-2:]
    out = np.full(x.shape[:-2] + (h + top + bottom, w + left + right), value, x.dtype)
    out[..., top:top + h, left:left + w] = x
    return out


def _row_nonzeros(flags: np.ndarray) -> np.ndarray:
    """The ``True`` entries of each input's bool ``flags[i]`` (int64 ``[n]``), counted 8
    flags per machine word (a bool is one byte, 0 or 1; NumPy's ``count_nonzero(axis=...)``
    converts and sums instead, several times slower)."""
    a = np.ascontiguousarray(flags).reshape(len(flags), -1)
    if not hasattr(np, "bitwise_count"):        # NumPy < 2
        return np.array([np.count_nonzero(row) for row in a], np.int64)
    whole = a.shape[1] // 8 * 8
    got = np.bitwise_count(a[:, :whole].view(np.uint64)).sum(axis=1, dtype=np.int64)
    return got + a[:, whole:].sum(axis=1, dtype=np.int64) if whole < a.shape[1] else got


@dataclass
class ActSteps:
    """A conv instruction's activations as the cycle model sees them, per input of the batch
    (arrays with a leading batch axis): ``nonzero`` of the ``values`` in its input tile, and
    with ``act_skip`` on the ``[n, F, passes]`` step counts with zero activations skipped
    (``total``: weights as issued; ``acts``: every weight issued),
    :func:`actskip.step_matrix`, and the useful ``work``."""
    nonzero: np.ndarray
    values: int
    total: np.ndarray | None = None
    acts: np.ndarray | None = None
    #: useful PE-cycles with zero activations skipped (:func:`actskip.useful_steps` over the
    #: lane ratio), the compute term of the layer's lower bound
    work: np.ndarray | None = None
    #: the PE steps it executes with zero activations skipped (:func:`actskip.useful_steps`,
    #: the energy model's count; ``None`` without skipping: every issued step)
    useful: np.ndarray | None = None
    #: the non-zero values of its pixels' input windows (with skipping: the INP reads)
    window: np.ndarray | None = None


class Kernels:
    """What each instruction family computes (see the module docstring)."""

    def _dma(self, ins: Insn):
        f = ins.f
        buf = BUFFERS[f["buf"]]
        y, x = f["y"], f["x"]
        if y == 0 or x == 0:
            return
        load = ins.op == "LOAD"
        src_mem, src, s_stride = ("DRAM", f["dram"], f["dram_stride"]) if load else (buf, f["sram"], f["sram_stride"])
        dst_mem, dst, d_stride = (buf, f["sram"], f["sram_stride"]) if load else ("DRAM", f["dram"], f["dram_stride"])
        spans = []
        for mem, lo, stride, w in ((src_mem, src, s_stride, False), (dst_mem, dst, d_stride, True)):
            a, b = self._span(mem, lo, (y - 1) * stride + x, "DMA")
            self.acc.append((mem, a, b, w))
            spans.append((a, b))
        s = self.banks[src_mem]
        d = self.banks[dst_mem]
        same = len(s) > 1 and self._same_rows(src_mem, *spans[0])
        whole = d_stride == x or y == 1
        if same:                    # every input's source bytes are equal: copy one row
            s = s[:1]
        if dst_mem == "WGT":        # (a strided copy leaves its gaps as they were)
            same = same and (whole or self._same_rows("WGT", *spans[1]))
            self._set_same(*spans[1], same)
            if same:                # WGT keeps such bytes in row 0 only
                d = d[:1]
        if not whole and self._trace is not None:  # (the gaps are not written: the trace's rows)
            self._rows = (dst_mem, dst, x, y, d_stride)
        if (s_stride == x or y == 1) and whole:
            d[:, dst:dst + y * x] = s[:, src:src + y * x]
        else:
            sv = as_strided(s[:, src:], shape=(len(s), y, x), strides=(s.strides[0], s_stride, 1),
                            writeable=False)
            dv = as_strided(d[:, dst:], shape=(len(d), y, x), strides=(d.strides[0], d_stride, 1))
            dv[...] = sv

    def _input_tile(self, f) -> np.ndarray:
        dt = np.int8 if f["dtype"] == INT8 else FLOAT_TYPES[f["dtype"]]
        x = self._arr("INP", f["inp"], (f["c"], f["h"], f["w"]), dt, "input tile")
        if dt == F16:               # fp16 mode: fp16 activations, fp32 products and sums
            x = x.astype(F32)
        return _pad_hw(x, f["pt"], f["pb"], f["pl"], f["pr"])

    def _conv(self, ins: Insn):
        f = ins.f
        integer = f["dtype"] == INT8
        x = self._input_tile(f)              # [n, c, h', w']
        cols = actskip.windows(x, f)         # [n, c, kh*kw, oh*ow]
        kk = f["kh"] * f["kw"]
        k = kk if f["depthwise"] else f["c"] * kk
        w, counts = self._weights(ins, k)
        skip = self._act_steps(ins, x, cols, w, counts)
        if integer:       # exact: |partial sums| <= 127 * 127 * 65536 < 2^53
            cols, w = cols.astype(np.float64), w.astype(np.float64)
        n = len(cols)
        if f["depthwise"]:
            out = np.einsum("fk,nfkp->nfp" if w.ndim == 2 else "nfk,nfkp->nfp", w, cols)
        else:
            out = self._products(w, cols.reshape(n, k, -1), integer)
        shape = (f["f"], f["oh"] * f["ow"])
        if integer:
            out = np.rint(out).astype(np.int64)
            if f["accumulate"]:
                out += self._arr("ACC", f["acc"], shape, np.int32, "accumulator tile")
            if out.size and (out.max() > 2 ** 31 - 1 or out.min() < -2 ** 31):
                self._fail("int32 accumulator overflow")
            self._put("ACC", f["acc"], out.astype(np.int32), "accumulator tile")
            return counts, skip
        if f["accumulate"]:         # (a + b is b + a in IEEE arithmetic: the same bits)
            acc = self._f32("ACC", f["acc"], shape, "accumulator tile")
            np.add(acc, out, out=self._out("ACC", f["acc"], shape, F32, "accumulator tile"))
        else:
            self._put("ACC", f["acc"], out.astype(F32, copy=False), "accumulator tile")
        return counts, skip

    @staticmethod
    def _products(w: np.ndarray, cols: np.ndarray, integer: bool) -> np.ndarray:
        """``w @ cols[i]`` for each input ``i`` (``w`` ``[f, k]``, or ``[n, f, k]``; ``cols``
        ``[n, k, p]``).  Float modes make one BLAS call per input, the call a single run makes,
        so each input gets a single run's bits (a BLAS's rounding depends on the shape of the
        call: one product over the whole batch differs in the last bits); the integer mode's
        float64 products are exact, so the batch is one call."""
        n, k, p = cols.shape
        if integer and n > 1 and w.ndim == 2:
            both = w @ np.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(k, n * p)
            return both.reshape(len(w), n, p).transpose(1, 0, 2)
        out = np.empty((n, w.shape[-2], p), np.result_type(w, cols))
        for i in range(n):
            np.matmul(w[i] if w.ndim == 3 else w, cols[i], out=out[i])
        return out

    def _act_steps(self, ins: Insn, x: np.ndarray, cols: np.ndarray, w: np.ndarray, counts) -> ActSteps:
        """What the instruction's activations give the cycle model (:class:`ActSteps`): the
        non-zero activations of its (padded) input tile, and with ``act_skip`` on the step
        counts :func:`actskip.step_matrix` derives from the windows each pixel reads."""
        f = ins.f
        n = len(x)
        nzx = x != 0                        # the padded tile's flags: zero padding is zero
        nonzero = _row_nonzeros(nzx)
        values = f["c"] * f["h"] * f["w"]
        if self.m.act_skip == "none":
            return ActSteps(nonzero, values)
        wnz = order = wmat = wcol = None
        if ins.op == "TACC":
            order, wnz, wmat, wcol = self._tacc_masks(ins, w)
        # the flags of the windows, the pixels padded with zeros to whole passes (so that the
        # pass OR does not copy them again; zeros change nothing)
        p = f["oh"] * f["ow"]
        per_pass = cycles.grid(ins, self.m)[0] * cycles.lanes(ins, self.m)
        whole = -(-p // per_pass) * per_pass if p > per_pass else p      # (one pass: no padding)
        if whole == p:
            nz = cols != 0
        else:
            nz = np.zeros(cols.shape[:-1] + (whole,), bool)
            np.not_equal(cols, 0, out=nz[..., :p])
        total, acts = actskip.conv_steps(ins, self.m, nz, counts, order, wnz, wmat)
        if self.probe is not None:          # the same data under every PE mapping (act_stats)
            self._probe(ins, nz[..., :p], counts, order, wnz, wmat)
        shifts = cycles.shift_passes(self.m, counts) if ins.op == "SACC" else None
        per_k = actskip.window_counts(nzx, f).reshape(n, -1)               # [n, K] non-zero reads
        useful = actskip.useful_steps(ins, nz, wnz, shifts, order, wcol, per_k)
        return ActSteps(nonzero, values, total, acts, useful * self.m.lanes / cycles.lanes(ins, self.m), useful,
                        per_k.sum(axis=1))

    def _tacc_masks(self, ins: Insn, w: np.ndarray) -> tuple:
        """``(order, wnz, count_matrix, wcol)`` of a TACC's block: its PE order, non-zero
        weights in PE order as float32 0 / 1 (the decoded matrix ``w`` is in accumulator
        rows; ``wnz`` is the count matrix's view) and per weight position.  Kept per decoded
        block (``w`` is the weight cache's) up to :data:`MASK_CACHE_BYTES`."""
        got = self._masks.get(id(w))
        if got is not None and got[0] is w:
            return got[1:]
        order = ternary_order(self.banks["WGT"][0], ins.f["wgt"], ins.f["f"])
        # the decoded weights are -1 / 0 / +1: their magnitude is the mask (a block that names
        # a weight twice with one sign walks it twice: 2)
        wmat = np.ones((len(order) + 1, w.shape[1]), np.float32)
        np.take(w, order, axis=0, out=wmat[:-1])
        np.abs(wmat[:-1], out=wmat[:-1])
        wnz = wmat[:-1]
        wcol = wnz.sum(axis=0, dtype=np.float64).astype(np.int64)
        size = wmat.nbytes + wcol.nbytes
        if self._mask_bytes + size > MASK_CACHE_BYTES:
            self._masks.clear()
            self._mask_bytes = 0
        if size <= MASK_CACHE_BYTES:
            self._masks[id(w)] = (w, order, wnz, wmat, wcol)
            self._mask_bytes += size
        return order, wnz, wmat, wcol

    def _probe(self, ins: Insn, nz, counts, order, wnz, wmat):
        """Add to ``probe[pc][pxshift]`` the instruction's compute steps with zero activations
        skipped and with dense ones (``compute_setup`` left out) under each PE mapping."""
        m = self.m
        got = self.probe.setdefault(self.pc, {})
        n = len(nz)
        for px in range(m.max_pxshift + 1):
            alt = Insn(ins.op, dict(ins.f, pxshift=px))
            total, _ = actskip.conv_steps(alt, m, nz, counts, order, wnz, wmat)
            live, dense = got.get(px, (0, 0))
            got[px] = (live + int((cycles.steps_cycles(alt, m, total) - m.compute_setup).sum()),
                       dense + n * (cycles.cost(alt, m, counts) - m.compute_setup))

    def _requant(self, t: np.ndarray, shift: int, lo: int, hi: int) -> np.ndarray:
        """``clip((t + 2^(shift-1)) >> shift, lo, hi)`` in int64 (round half up), as int8."""
        if t.size and np.abs(t).max() >= INT64_LIMIT:
            self._fail("int64 requantization sum out of range (a multiplier, bias or shift is too large)")
        if shift:
            t = (t + (1 << (shift - 1))) >> shift
        return np.clip(t, lo, hi).astype(np.int8)

    def _epi(self, ins: Insn):
        f = ins.f
        nf, p = f["f"], f["p"]
        act = ACTS[f["act"]]
        _, boff, nbytes = epi_param_layout(nf, f["has_scale"], f["dtype"])
        aoff = boff + (8 if f["dtype"] == INT8 else 4) * nf      # the activation's parameters
        if f["dtype"] == INT8:
            t = self._arr("ACC", f["acc"], (nf, p), np.int32, "accumulator tile").astype(np.int64)
            if f["has_scale"]:
                t *= self._arr("WGT", f["prm"], (nf,), np.int32, "epilogue multipliers")[..., None]
            t += self._arr("WGT", f["prm"] + boff, (nf,), np.int64, "epilogue biases")[..., None]
            if f["has_res"]:
                res = self._arr("INP", f["res"], (nf, p), np.int8, "residual tile").astype(np.int64)
                t += res << f["rshift"]
            lo, hi, tq = -128, 127, s32(f["lo_bits"])
            if act == "relu":       # a threshold tq > 0 also clips to hi_bits (a low-bit output)
                lo, hi = 0, min(hi, s32(f["hi_bits"])) if tq > 0 else hi
            elif act == "clip":
                lo, hi = max(lo, s32(f["lo_bits"])), min(hi, s32(f["hi_bits"]))
            q = self._requant(t, f["shift"], lo, hi)
            if act == "relu" and tq > 0:        # ReLU threshold: q > tq ? q : 0
                q = np.where(q > tq, q, np.int8(0))
            if act == "lut":        # the table of the activation, indexed by the int8 value + 128
                table = self._arr("WGT", f["prm"] + aoff, (LUT_ENTRIES,), np.int8, "activation table")
                idx = q.astype(np.int64).reshape(len(q), -1) + 128
                q = np.take_along_axis(table, idx, axis=1).reshape(q.shape)
            self._put("ACC", f["dst"], q, "epilogue output")
            return
        fdt = FLOAT_TYPES[f["dtype"]]
        acc = self._f32("ACC", f["acc"], (nf, p), "accumulator tile")
        bias = self._f32("WGT", f["prm"] + boff, (nf,), "epilogue biases")[..., None]
        if f["has_scale"]:
            y = acc * self._f32("WGT", f["prm"], (nf,), "epilogue scales")[..., None]
            y += bias
        else:
            y = acc + bias
        if f["has_res"]:
            y += self._arr("INP", f["res"], (nf, p), fdt, "residual tile").astype(F32)
        lo = np.float32(bits_f(f["lo_bits"]))
        relu = act == "relu" and not lo > 0          # a plain ReLU: done as the result is written
        if act == "clip":
            np.clip(y, lo, np.float32(bits_f(f["hi_bits"])), out=y)
        elif act == "relu" and not relu:             # ReLU threshold T = f32(lo_bits) > 0: y > T ? y : 0
            y = np.where(y > lo, y, np.float32(0))
        elif act not in ("none", "relu"):
            slopes = self._f32("WGT", f["prm"] + aoff, (nf,), "PReLU slopes") if act == "prelu" else None
            y = float_act(act, y, lo, slopes)
        if fdt != F32:
            self._put("ACC", f["dst"], (np.maximum(y, np.float32(0)) if relu else y).astype(fdt),
                      "epilogue output")
            return
        dst = self._out("ACC", f["dst"], (nf, p), F32, "epilogue output")   # (y is this instruction's own)
        if relu:
            np.maximum(y, np.float32(0), out=dst)
        else:
            dst[...] = y

    def _pool(self, ins: Insn):
        f = ins.f
        c, h, w, oh, ow = f["c"], f["h"], f["w"], f["oh"], f["ow"]
        kh, kw, sh, sw = f["kh"], f["kw"], f["sh"], f["sw"]
        integer = f["dtype"] == INT8
        odt = np.int8 if integer else FLOAT_TYPES[f["dtype"]]
        x = self._arr("INP", f["src"], (c, h, w), odt, "pool input")
        if odt == F16:
            x = x.astype(F32)
        pads = (f["pt"], f["pb"], f["pl"], f["pr"])
        mode = POOL_MODES[f["mode"]]

        def reduce(a, fn):
            """``fn`` over each window, folded over its positions in row-major order (one
            whole-tile operation per position, not a strided reduction per window)."""
            out = None
            for i in range(kh):
                for j in range(kw):
                    v = a[..., i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
                    if v.shape[-2:] != (oh, ow):
                        self._fail(f"the pooling windows of the {a.shape[-2]}x{a.shape[-1]} padded input "
                                   f"do not give the {oh}x{ow} output")
                    out = v.copy() if out is None else fn(out, v, out=out)
            return out

        if mode == "max":
            out = reduce(_pad_hw(x, *pads, value=-128 if integer else -np.inf), np.maximum)
        elif integer:       # window sum, then the multiplier/shift requantization
            total = reduce(_pad_hw(x.astype(np.int64), *pads), np.add)
            out = self._requant(total * f["mult"], f["shift"], -128, 127)
        else:
            out = reduce(_pad_hw(x, *pads).astype(np.float32, copy=False), np.add)
            if f["count_pad"]:
                out /= np.float32(kh * kw)
            else:
                ones = _pad_hw(np.ones((1, 1, h, w), np.float32), *pads)
                out /= np.maximum(reduce(ones, np.add), 1)
        self._put("ACC", f["dst"], out.astype(odt, copy=False), "pool output")

    def _alu(self, ins: Insn):
        f = ins.f
        op, n = ALU_OPS[f["op"]], f["n"]
        exp = f["exp"] - EXP_BIAS
        if op == "quantize":        # float32 -> int8: clip(floor(a * 2^exp + 0.5))
            a = self._f32("INP", f["a"], (n,), "ALU operand a")
            q = np.floor(a * np.float32(2.0 ** exp) + np.float32(0.5))
            self._put("ACC", f["dst"], np.clip(q, -128, 127).astype(np.int8), "ALU output")
            return
        if op == "dequantize":      # int8 -> float32: a * 2^-exp
            a = self._arr("INP", f["a"], (n,), np.int8, "ALU operand a")
            self._put("ACC", f["dst"], a.astype(F32) * np.float32(2.0 ** -exp), "ALU output")
            return
        if op in ("narrow", "widen"):       # float32 <-> float16 (round to nearest even)
            src, dst = (F32, F16) if op == "narrow" else (F16, F32)
            a = self._arr("INP", f["a"], (n,), src, "ALU operand a")
            self._put("ACC", f["dst"], a.astype(dst), "ALU output")
            return
        if f["dtype"] == INT8:
            a = self._arr("INP", f["a"], (n,), np.int8, "ALU operand a").astype(np.int64)
            if op == "relu":
                out = np.maximum(a, 0).astype(np.int8)
            else:
                b = self._arr("INP", f["b"], (n,), np.int8, "ALU operand b").astype(np.int64)
                out = self._requant((a << f["sa"]) + (b << f["sb"]), f["shift"],
                                    0 if op == "add_relu" else -128, 127)
            self._put("ACC", f["dst"], out, "ALU output")
            return
        fdt = FLOAT_TYPES[f["dtype"]]
        a = self._arr("INP", f["a"], (n,), fdt, "ALU operand a").astype(F32)
        if op == "relu":
            out = np.maximum(a, 0)
        elif op in ALU_ACTS:
            out = float_act(op, a)
        else:
            out = a + self._arr("INP", f["b"], (n,), fdt, "ALU operand b").astype(F32)
            if op == "add_relu":
                np.maximum(out, 0, out=out)
        self._put("ACC", f["dst"], out.astype(fdt), "ALU output")
