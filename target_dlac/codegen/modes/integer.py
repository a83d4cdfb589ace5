"""Codegen of the all-integer pipeline: int8 activations with per-tensor exponents.

The same walk as :class:`target_dlac.codegen.generator.Codegen`; every op result becomes an int8
tensor whose exponent comes from calibration (``stats``: Relax var -> largest |value|
seen, see :func:`compiler.build.calibrate`), except ReLU and max-pool, which keep
their input's exponent, and reshapes (views); a channel concat's inputs are requantized to
its exponent in the copy (:mod:`target_dlac.codegen.concat`).  Graph inputs are quantized on dLAC
(ALU ``quantize``), outputs and host-op inputs dequantized (ALU ``dequantize``).
With ``act_bits`` 4 or 2, the output of a ReLU-like conv / dense layer without a residual
(:func:`intmath.unsigned_output`) is an unsigned ``act_bits``-bit tensor in an int8
container: its exponent from :func:`intmath.exponent` unsigned, its EPI clips to
``[0, 2^b - 1]`` (``relu`` becomes ``clip``: the interpreter's int8 ``relu`` clips to 127);
max-pool, standalone ReLU and reshapes of it stay low-bit (``low_bit``: their tensor names).
A ReLU threshold ``T`` (the layer's ``relu`` with ``spec.lo = T``) is the EPI's ``relu`` with
``lo_bits = Tq`` (:func:`intmath.relu_threshold_q`) and ``hi_bits`` the upper bound.
Layers with float weights (first and last, by default) get int8 weights with one
scale per filter: the integers their layer plan carries (``LayerPlan.int8``, filled by
:func:`passes.int8_weights.int8_weights` before this codegen runs).  Every op is also emitted into the reference graph
(:mod:`target_dlac.codegen.refgraph`) with the same integer parameters, so the TVM CPU build
of that graph checks the interpreter exactly.
"""

from __future__ import annotations

import numpy as np

from target_dlac.core.errors import CodegenError
from target_dlac.core.plan import WeightFormat

from target_dlac.codegen import composites as C
from target_dlac.codegen.modes import intmath as Q
from target_dlac.codegen.generator import Ref
from target_dlac.codegen.modes.ref import RefCodegen
from tvm import relax

from target_dlac.core.ir import make_const
from target_dlac.isa.encoding import ALU_ACTS, INT8, epi_param_layout
from target_dlac.codegen.lower import Elt, Epilogue
from target_dlac.codegen.concat import requant


class IntCodegen(RefCodegen):
    def __init__(self, mod, machine, *, stats: dict, act_bits: int = 8, **kw):
        super().__init__(mod, machine, **kw)
        self.stats = stats
        self.act_bits = act_bits
        self.low_bit: list[str] = []        # names of the unsigned act_bits-bit tensors

    def _unsigned(self, spec) -> bool:
        return isinstance(spec, C.ConvSpec) and Q.unsigned_output(
            spec.act, spec.lo, spec.residual is not None, self.act_bits)

    def _keeps_low_bit(self, src: Ref, out: Ref, entry: dict | None = None) -> None:
        """``out`` (a max-pool, ReLU or view of ``src``) is low-bit when ``src`` is."""
        if src.name in self.low_bit:
            self.low_bit.append(out.name)
            if entry is not None:
                entry["precision"] = f"uint{self.act_bits}"

    def _exp_of(self, var, bits: int = 8, signed: bool = True) -> int:
        if var is None or var not in self.stats:
            raise CodegenError(f"no calibration statistics for {getattr(var, 'name', var)}")
        return Q.exponent(self.stats[var], bits, signed)

    def _as_int(self, ref: Ref, var) -> Ref:
        return ref if ref.dtype == "int8" else self._convert(ref, "quantize", self._exp_of(var))

    # ---- hooks of the walk ------------------------------------------------------------
    def _composite(self, fn, args, var):
        args = [self._as_int(a, self.producer.get(a.name)) for a in args]
        out = super()._composite(fn, args, var)
        if str(fn.attrs["Composite"]) == "dlac.concat" and out.name not in self.rv:     # on dLAC
            self._concat_ref(C.parse(fn), dict(zip(fn.params, args)), out)
        return out

    def _concat_ref(self, spec: C.ConcatSpec, env: dict, out: Ref) -> None:
        """The reference of a dLAC concat (``codegen/concat.py``): each input requantized to
        the output's exponent as ALU's ``add(a, a)`` with the same shifts, then concatenated."""
        parts = []
        for a in spec.args:
            r = env[a]
            sa, sb, shift = requant(r.exp, out.exp)
            x = self.rv[r.name]
            parts.append(x if r.exp == out.exp else self.graph.add(x, x, sa, sb, shift, False))
        self.rv[out.name] = self.graph.emit(relax.op.concat(parts, axis=spec.axis))

    def _out(self, var, spec, env) -> Ref:
        """The int8 result: exponent from calibration, or the input's for max-pool and ReLU."""
        if isinstance(spec, C.PoolSpec) and spec.mode == "max":
            exp = env[spec.data].exp
        elif isinstance(spec, C.EltSpec) and spec.op == "relu":
            exp = env[spec.args[0]].exp
        elif self._unsigned(spec):
            exp = self._exp_of(var, self.act_bits, signed=False)
        else:
            exp = self._exp_of(var)
        return self._alloc(var.name, spec.out_shape, "int8", exp=exp)

    # ---- lowering ---------------------------------------------------------------------
    def _weight_format(self, spec: C.ConvSpec) -> WeightFormat:
        """Float weights are held as int8 (a scale per filter); the others as planned."""
        fmt = spec.weight_format
        return WeightFormat.INT8 if fmt is WeightFormat.FLOAT32 else fmt

    def _layer_weights(self, spec: C.ConvSpec, x: Ref, out: Ref, res: Ref | None):
        w, scale = spec.weight, spec.scale
        if spec.weight_format is WeightFormat.FLOAT32:      # int8, a scale per filter (the plan's)
            held = spec.plan.int8
            if held is None:
                raise CodegenError(f"layer {spec.plan.name}: float weights without their int8 form "
                                   "(run passes.int8_weights on the layer plan first)")
            w, s = C.as_oihw(held.q, spec.kind), held.scale
            if w.shape != spec.weight.shape:
                raise CodegenError(f"layer {spec.plan.name}: the plan's int8 weights have shape "
                                   f"{w.shape}, the layer {spec.weight.shape}")
            scale = s.astype(np.float64) if scale is None else s * scale
        if scale is None:
            scale = np.ones(w.shape[0])
        table = self._act_table(spec, out)
        fy = out.exp if table is None else Q.table_input_exp(spec.act, out.exp)
        m, b, shift, rshift = Q.conv_params(scale, spec.bias, x.exp, fy,
                                            None if res is None else res.exp, f"layer {spec.layer}")
        unsigned = self._unsigned(spec)
        rng = Q.act_range(self.act_bits, signed=False) if unsigned else Q.act_range()
        lo, hi = Q.clip_bounds(spec.act, spec.lo, spec.hi, out.exp, rng)
        act = spec.act if table is None else "lut"
        tq = Q.relu_threshold_q(spec.lo, out.exp, hi, f"layer {self.layer_names.get(spec.layer, spec.layer)}") \
            if spec.act == "relu" and spec.lo > 0 else 0
        if unsigned and not tq:
            act = "clip"        # the int8 EPI's relu clips to [0, 127]; clip takes the bounds
        # a thresholded relu: Tq in lo_bits, the upper bound in hi_bits (docs/isa.md "EPI")
        epi = Epilogue(True, act, tq if tq else lo, hi, None if res is None else res.addr, shift, rshift)
        groups = w.shape[0] if spec.depthwise else spec.groups
        y = self.graph.layer(self.rv[x.name], w, spec.kind, spec.strides, spec.pads, groups,
                             m, b, shift, None if res is None else self.rv[res.name], rshift, lo, hi, tq)
        if table is not None:       # the EPI's table lookup: table[q + 128]
            idx = relax.op.add(relax.op.astype(y, "int32"), make_const(128, "int32"))
            y = self.graph.emit(relax.op.take(make_const(table, "int8"), idx, axis=0, mode="clip"))
        self.rv[out.name] = y
        return w, [m, b] + ([] if table is None else [table]), epi

    def _act_table(self, spec: C.ConvSpec, out: Ref) -> np.ndarray | None:
        """The int8 table of a layer's activation other than relu / clip (``None`` for those)."""
        if spec.act in ("none", "relu", "clip"):
            return None
        slope = spec.lo
        if spec.act == "prelu":
            if np.unique(spec.slopes).size != 1:
                raise C.Unlowerable(f"PReLU with per-channel slopes has no int8 lowering (one "
                                    f"activation table per EPI); layer {spec.plan.name} runs on the host")
            slope = float(spec.slopes[0])
        return Q.act_table(spec.act, Q.table_input_exp(spec.act, out.exp), out.exp, slope)

    def _conv(self, spec: C.ConvSpec, env, out: Ref) -> dict:
        entry = super()._conv(spec, env, out)
        if spec.weight_format is WeightFormat.FLOAT32:
            entry["precision"] = "int8w"      # full-precision weights held as int8 (per filter)
        if self._unsigned(spec):
            self.low_bit.append(out.name)
        return entry

    def _view(self, src: Ref, shape: tuple, var) -> Ref:
        out = super()._view(src, shape, var)
        self._keeps_low_bit(src, out)
        return out

    def _param_block(self, prm: list, f0: int, f1: int) -> bytes:
        """int32 multipliers, then int64 biases at the offset of :func:`isa.epi_param_layout`."""
        m, b = prm[:2]
        _, boff, _ = epi_param_layout(f1 - f0, True, INT8)
        head = m[f0:f1].astype("<i4").tobytes()
        table = prm[2].astype("<i1").tobytes() if len(prm) > 2 else b""      # act = lut: after the biases
        return head.ljust(boff, b"\0") + b[f0:f1].astype("<i8").tobytes() + table

    def _pool_requant(self, spec: C.PoolSpec, x: Ref, out: Ref) -> tuple[int, int]:
        if spec.mode == "max":
            return 0, 0
        if any(spec.pads) and not spec.count_pad:
            raise CodegenError(f"{out.name}: average pooling with padding left out of the count "
                               "has no integer lowering; use --activations fp32")
        return Q.avg_params(spec.kernel[0] * spec.kernel[1], x.exp, out.exp)

    def _pool(self, spec: C.PoolSpec, env, out: Ref) -> dict:
        entry = super()._pool(spec, env, out)
        x = env[spec.data]
        if spec.mode == "max":
            self.rv[out.name] = self.graph.max_pool(self.rv[x.name], spec.kernel, spec.strides, spec.pads)
            self._keeps_low_bit(x, out, entry)
        else:
            mult, shift = self._pool_requant(spec, x, out)
            self.rv[out.name] = self.graph.avg_pool(self.rv[x.name], x.shape[1], spec.kernel, spec.strides,
                                                  spec.pads, mult, shift, spec.out_shape)
        return entry

    def _elt_op(self, spec: C.EltSpec, refs: list, out: Ref) -> Elt:
        if spec.op in ALU_ACTS:
            raise C.Unlowerable(f"standalone {spec.op} has no int8 ALU op (the int8 table is in the "
                                "EPI of a conv / dense layer); it runs on the host")
        if spec.op == "relu":
            return Elt("relu", "int8")
        return Elt(spec.op, "int8", *Q.add_params(refs[0].exp, refs[1].exp, out.exp))

    def _elt(self, spec: C.EltSpec, env, out: Ref) -> dict:
        if any(a not in env for a in spec.args):
            raise CodegenError(f"{out.name}: constant operands of element-wise ops have no integer "
                               "lowering; use --activations fp32")
        entry = super()._elt(spec, env, out)
        a = [self.rv[env[arg].name] for arg in spec.args]
        e = self._elt_op(spec, [env[arg] for arg in spec.args], out)
        self.rv[out.name] = (self.graph.relu(a[0]) if spec.op == "relu"
                             else self.graph.add(a[0], a[1], e.sa, e.sb, e.shift, spec.op == "add_relu"))
        if spec.op == "relu":
            self._keeps_low_bit(env[spec.args[0]], out, entry)
        return entry
