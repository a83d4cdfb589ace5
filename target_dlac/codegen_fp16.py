"""Codegen of dLAC's fp16 mode: float16 activations between ops, float32 products, sums
and epilogues inside each op (the paper's half-precision mode, twice the MAC lanes).

The same walk as :class:`target_dlac.codegen.Codegen` with op results stored as float16:
graph inputs are narrowed on dLAC (ALU ``narrow``), outputs and host-op inputs widened
(ALU ``widen``).  Mixed precision: ``half(name)`` decides per layer (conv/dense, by its
source name) whether it runs in fp16 or fp32; other ops follow their first input.  The reference graph is the quantized graph with the
same storage: each composite runs in float32 on widened inputs and its result is
narrowed to float16 (``astype``), built op by op here; the TVM CPU build of it checks
the interpreter (within float16 rounding: a float32 sum that differs in its last bit
can round to a neighbouring float16).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from .codegen import Codegen, Ref
from .lower import Elt, lower_eltwise


def _plain(fn: relax.Function) -> relax.Function:
    for attr in ("Composite", "dlac.layer"):
        if fn.attrs is not None and attr in fn.attrs:
            fn = fn.without_attr(attr)
    return fn


class Fp16Codegen(Codegen):
    def __init__(self, mod, machine, *, half=lambda name: True, **kw):
        super().__init__(mod, machine, **kw)
        self.half = half
        self.rv: dict = {}
        self.reference_mod = None

    # ---- conversions ------------------------------------------------------------------
    def _convert(self, src: Ref, op: str) -> Ref:
        dtype = "float16" if op == "narrow" else "float32"
        out = self._alloc(f"{src.name}_{'h' if op == 'narrow' else 'f'}", src.shape, dtype)
        start = len(self.insns)
        self.insns += lower_eltwise(Elt(op), int(np.prod(src.shape)), self.m, a_addr=src.addr,
                                    b_addr=None, out_addr=out.addr)
        self.layers.append({"name": f"{op}:{out.name}", "var": out.name, "op": op, "precision": "fp16",
                            "pc_start": start, "pc_end": len(self.insns),
                            "min_dram_bytes": src.nbytes + out.nbytes})
        self.rv[out.name] = self.bb.emit(relax.op.astype(self.rv[src.name], dtype))
        return out

    def _as_half(self, ref: Ref) -> Ref:
        return ref if ref.dtype == "float16" else self._convert(ref, "narrow")

    def _as_float(self, ref: Ref) -> Ref:
        return ref if ref.dtype == "float32" else self._convert(ref, "widen")

    # ---- hooks of the walk ------------------------------------------------------------
    def _begin(self, main):
        params = [relax.Var(p.name, p.ty) for p in main.params]
        self.bb = relax.BlockBuilder()
        self._fn = self.bb.function("main", params, {"num_input": len(params)})
        self._fn.__enter__()
        self._df = self.bb.dataflow()
        self._df.__enter__()
        for p, rp in zip(main.params, params):
            self.rv[self.env[p].name] = rp

    def _outputs(self, outs):
        flat = outs if isinstance(outs, tuple) else (outs,)
        done = tuple(self._as_float(r) for r in flat)
        out = self.bb.emit_output(relax.Tuple([self.rv[r.name] for r in done]))
        self._df.__exit__(None, None, None)
        self.bb.emit_func_output(out)
        self._fn.__exit__(None, None, None)
        self.reference_mod = self.bb.get()
        return done if isinstance(outs, tuple) else done[0]

    def _view(self, src: Ref, shape: tuple, var) -> Ref:
        out = Ref(self._unique(f"{src.name}_view"), src.addr, shape, src.dtype, src.exp)
        self.rv[out.name] = self.bb.emit(relax.op.reshape(self.rv[src.name], list(shape)))
        return out

    def _composite(self, fn, args, var):
        layer = fn.attrs.get("dlac.layer") if fn.attrs is not None else None
        if layer is not None:
            half = self.half(self.layer_names.get(str(layer), str(layer)))
        else:
            half = bool(args) and args[0].dtype == "float16"
        args = [self._as_half(a) if half else self._as_float(a) for a in args]
        self._half_out = half
        out = super()._composite(fn, args, var)
        if out.name not in self.rv:        # lowered on dLAC: the reference runs the composite
            gv = self.bb.add_func(_plain(fn), f"ref_{len(self.rv)}")
            ins = [self.bb.emit(relax.op.astype(self.rv[a.name], "float32")) if half else self.rv[a.name]
                   for a in args]
            y = self.bb.emit(relax.Call(gv, ins))
            self.rv[out.name] = self.bb.emit(relax.op.astype(y, "float16")) if half else y
        return out

    def _out(self, var, spec, env) -> Ref:
        return self._alloc(var.name, spec.out_shape, "float16" if self._half_out else "float32")

    def _host(self, name, fn, args, out_shape, op=None):
        fargs = [self._as_float(a) for a in args]
        out = super()._host(name, fn, fargs, out_shape, op)
        gv = self.bb.add_func(_plain(fn).without_attr("global_symbol") if fn.attrs is not None
                              and "global_symbol" in fn.attrs else _plain(fn), f"host_ref_{len(self.rv)}")
        self.rv[out.name] = self.bb.emit(relax.Call(gv, [self.rv[a.name] for a in fargs]))
        return out
