"""Codegen of the all-integer pipeline: int8 activations with per-tensor exponents.

The same walk as :class:`target_dlac.codegen.Codegen`; every op result becomes an int8
tensor whose exponent comes from calibration (``stats``: Relax var -> largest |value|
seen, see :func:`compiler.build.calibrate`), except ReLU and max-pool, which keep
their input's exponent, and reshapes (views).  Graph inputs are quantized on dLAC
(ALU ``quantize``), outputs and host-op inputs dequantized (ALU ``dequantize``).
Layers with float weights (first and last, by default) get int8 weights with one
scale per filter.  Every op is also emitted into the integer reference graph
(:mod:`target_dlac.intref`) with the same integer parameters, so the TVM CPU build
of that graph checks the interpreter exactly.
"""

from __future__ import annotations

import numpy as np

from compiler.errors import CodegenError
from passes.weight_quant import quantize_weight

from . import composites as C
from . import intmode as Q
from .codegen import Codegen, Ref
from .intref import IntGraphBuilder
from .lower import Elt, Epilogue, PoolShape, lower_eltwise, lower_pool


class IntCodegen(Codegen):
    def __init__(self, mod, machine, *, stats: dict, **kw):
        super().__init__(mod, machine, **kw)
        self.stats = stats
        self.rv: dict = {}          # tensor name -> Relax var of the integer reference graph
        self.reference_mod = None

    def _exp_of(self, var) -> int:
        if var is None or var not in self.stats:
            raise CodegenError(f"no calibration statistics for {getattr(var, 'name', var)}")
        return Q.exponent(self.stats[var])

    # ---- conversions ------------------------------------------------------------------
    def _convert(self, src: Ref, op: str, exp: int, name: str) -> Ref:
        out = self._alloc(name, src.shape, "int8" if op == "quantize" else "float32",
                          exp=exp if op == "quantize" else None)
        start = len(self.insns)
        self.insns += lower_eltwise(Elt(op, exp=exp), int(np.prod(src.shape)), self.m,
                                    a_addr=src.addr, b_addr=None, out_addr=out.addr)
        self.layers.append({"name": f"{op}:{out.name}", "var": out.name, "op": op,
                            "precision": "int8", "pc_start": start, "pc_end": len(self.insns),
                            "min_dram_bytes": src.nbytes + out.nbytes})
        fn = self.ib.quantize if op == "quantize" else self.ib.dequantize
        self.rv[out.name] = fn(self.rv[src.name], exp)
        return out

    def _as_int(self, ref: Ref, var) -> Ref:
        if ref.dtype == "int8":
            return ref
        return self._convert(ref, "quantize", self._exp_of(var), f"{ref.name}_q")

    def _as_float(self, ref: Ref) -> Ref:
        if ref.dtype == "float32":
            return ref
        return self._convert(ref, "dequantize", ref.exp, f"{ref.name}_f")

    # ---- hooks of the walk ------------------------------------------------------------
    def _begin(self, main):
        from tvm import relax

        params = [relax.Var(p.name, p.ty) for p in main.params]
        self.ib = IntGraphBuilder(params)
        for p, rp in zip(main.params, params):
            self.rv[self.env[p].name] = rp

    def _outputs(self, outs):
        flat = outs if isinstance(outs, tuple) else (outs,)
        done = tuple(self._as_float(r) for r in flat)
        self.reference_mod = self.ib.finish([self.rv[r.name] for r in done])
        return done if isinstance(outs, tuple) else done[0]

    def _view(self, src: Ref, shape: tuple, var) -> Ref:
        out = Ref(self._unique(f"{src.name}_view"), src.addr, shape, src.dtype, src.exp)
        self.rv[out.name] = self.ib.reshape(self.rv[src.name], shape)
        return out

    def _composite(self, fn, args, var):
        args = [self._as_int(a, self.producer.get(a.name)) for a in args]
        return super()._composite(fn, args, var)

    def _out(self, var, spec, env) -> Ref:
        """The int8 result: exponent from calibration, or the input's for max-pool and ReLU."""
        if isinstance(spec, C.PoolSpec) and spec.mode == "max":
            exp = env[spec.data].exp
        elif isinstance(spec, C.EltSpec) and spec.op == "relu":
            exp = env[spec.args[0]].exp
        else:
            exp = self._exp_of(var)
        return self._alloc(var.name, spec.out_shape, "int8", exp=exp)

    # ---- lowering ---------------------------------------------------------------------
    def _layer_weights(self, spec: C.ConvSpec, x: Ref, out: Ref, res: Ref | None):
        w, scale = spec.weight, spec.scale
        if w.dtype.kind == "f":                       # float weights: int8, a scale per filter
            w, s = quantize_weight(w, 0, "int8", 1)
            scale = s.astype(np.float64) if scale is None else s * scale
        if scale is None:
            scale = np.ones(w.shape[0])
        m, b, shift, rshift = Q.conv_params(scale, spec.bias, x.exp, out.exp,
                                            None if res is None else res.exp, f"layer {spec.layer}")
        lo, hi = Q.clip_bounds(spec.act, spec.lo, spec.hi, out.exp)
        epi = Epilogue(True, spec.act, lo, hi, None if res is None else res.addr, shift, rshift)
        groups = w.shape[0] if spec.depthwise else 1
        self.rv[out.name] = self.ib.layer(self.rv[x.name], w, spec.kind, spec.strides, spec.pads, groups,
                                          m, b, shift, None if res is None else self.rv[res.name],
                                          rshift, lo, hi)
        return w, [m, b], epi

    def _conv(self, spec: C.ConvSpec, env, out: Ref) -> dict:
        entry = super()._conv(spec, env, out)
        if spec.weight.dtype.kind == "f":
            entry["precision"] = "int8w"      # full-precision weights held as int8 (per filter)
        return entry

    def _param_block(self, prm: list, f0: int, f1: int) -> bytes:
        m, b = prm
        n = f1 - f0
        head = m[f0:f1].astype("<i4").tobytes() + b"\0" * (((4 * n + 7) & ~7) - 4 * n)
        return head + b[f0:f1].astype("<i8").tobytes()

    def _pool(self, spec: C.PoolSpec, env, out: Ref) -> dict:
        x = env[spec.data]
        n, c, h, w = x.shape
        oh, ow = (spec.out_shape[2], spec.out_shape[3]) if len(spec.out_shape) == 4 else (1, 1)
        mult = shift = 0
        if spec.mode == "avg":
            if any(spec.pads) and not spec.count_pad:
                raise CodegenError(f"{out.name}: average pooling with padding left out of the count "
                                   "has no integer lowering; use --activations fp32")
            mult, shift = Q.avg_params(spec.kernel[0] * spec.kernel[1], x.exp, out.exp)
        p = PoolShape(n, c, h, w, oh, ow, spec.kernel[0], spec.kernel[1], spec.strides[0],
                      spec.strides[1], spec.pads, spec.mode, spec.count_pad, "int8", mult, shift)
        self.insns += lower_pool(p, self.m, x_addr=x.addr, out_addr=out.addr, name=out.name)
        xv = self.rv[x.name]
        if spec.mode == "max":
            self.rv[out.name] = self.ib.max_pool(xv, spec.kernel, spec.strides, spec.pads)
        else:
            self.rv[out.name] = self.ib.avg_pool(xv, c, spec.kernel, spec.strides, spec.pads, mult, shift,
                                                 spec.out_shape)
        kind = "global_avg_pool" if spec.kernel == (h, w) and spec.mode == "avg" else f"{spec.mode}_pool2d"
        return {"name": f"{kind}:{out.name}", "var": out.name, "op": kind, "precision": "int8",
                "min_dram_bytes": x.nbytes + out.nbytes}

    def _elt(self, spec: C.EltSpec, env, out: Ref) -> dict:
        if any(a not in env for a in spec.args):
            raise CodegenError(f"{out.name}: constant operands of element-wise ops have no integer "
                               "lowering; use --activations fp32")
        refs = [env[a] for a in spec.args]
        if spec.op == "relu":
            e = Elt("relu", "int8")
        else:
            e = Elt(spec.op, "int8", *Q.add_params(refs[0].exp, refs[1].exp, out.exp))
        self.insns += lower_eltwise(e, int(np.prod(spec.out_shape)), self.m, a_addr=refs[0].addr,
                                    b_addr=refs[1].addr if len(refs) > 1 else None, out_addr=out.addr)
        if spec.op == "relu":
            self.rv[out.name] = self.ib.relu(self.rv[refs[0].name])
        else:
            self.rv[out.name] = self.ib.add(self.rv[refs[0].name], self.rv[refs[1].name], e.sa, e.sb,
                                            e.shift, spec.op == "add_relu")
        return {"name": f"{spec.op}:{out.name}", "var": out.name, "op": spec.op, "precision": "int8",
                "min_dram_bytes": sum(r.nbytes for r in refs) + out.nbytes}

    def _host(self, name, fn, args, out_shape, op=None):
        fargs = [self._as_float(a) for a in args]
        out = super()._host(name, fn, fargs, out_shape, op)
        self.rv[out.name] = self.ib.call(fn, [self.rv[a.name] for a in fargs])
        return out
