"""A codegen that also builds the reference graph of the program it emits: the common
part of the fp16 (:mod:`codegen_fp16`) and int8 (:mod:`codegen_int`) modes.

Activations change type on dLAC with ALU conversions (float32 <-> int8 with an
exponent, float32 <-> float16), each mirrored in the reference graph
(:class:`target_dlac.codegen.refgraph.RefGraph`); graph outputs and host-op inputs are converted
back to float32, reshapes are views.  ``reference_mod`` holds the finished graph.
"""

from __future__ import annotations

import numpy as np

from target_dlac.binary.layer_meta import LayerMeta
from target_dlac.codegen.generator import Codegen, Ref
from target_dlac.codegen.lower import Elt, lower_eltwise
from target_dlac.codegen.refgraph import RefGraph

#: ALU conversion -> (result type, precision label of its report line, name suffix)
CONVERSIONS = {"quantize": ("int8", "int8", "q"), "dequantize": ("float32", "int8", "f"),
               "narrow": ("float16", "fp16", "h"), "widen": ("float32", "fp16", "f")}


class RefCodegen(Codegen):
    def __init__(self, mod, machine, **kw):
        super().__init__(mod, machine, **kw)
        self.rv: dict = {}          # tensor name -> Relax var of the reference graph
        self.reference_mod = None

    def _convert(self, src: Ref, op: str, exp: int = 0) -> Ref:
        """``src`` converted on dLAC by ALU ``op`` (and in the reference graph)."""
        dtype, label, suffix = CONVERSIONS[op]
        out = self._alloc(f"{src.name}_{suffix}", src.shape, dtype, exp=exp if dtype == "int8" else None)
        start = len(self.insns)
        self.insns += lower_eltwise(Elt(op, exp=exp), int(np.prod(src.shape)), self.m,
                                    a_addr=src.addr, b_addr=None, out_addr=out.addr)
        self.layers.append(LayerMeta(f"{op}:{out.name}", out.name, op, label, start, len(self.insns),
                                     min_dram_bytes=src.nbytes + out.nbytes, min_write_bytes=out.nbytes))
        x = self.rv[src.name]
        if op == "quantize":
            self.rv[out.name] = self.graph.quantize(x, exp)
        elif op == "dequantize":
            self.rv[out.name] = self.graph.dequantize(x, exp)
        else:
            self.rv[out.name] = self.graph.astype(x, dtype)
        return out

    def _as_float(self, ref: Ref) -> Ref:
        if ref.dtype == "int8":
            return self._convert(ref, "dequantize", ref.exp)
        if ref.dtype == "float16":
            return self._convert(ref, "widen")
        return ref

    # ---- hooks of the walk ------------------------------------------------------------
    def _begin(self, main):
        from tvm import relax

        params = [relax.Var(p.name, p.ty) for p in main.params]
        self.graph = RefGraph(params)
        for p, rp in zip(main.params, params):
            self.rv[self.env[p].name] = rp

    def _outputs(self, outs):
        flat = outs if isinstance(outs, tuple) else (outs,)
        done = tuple(self._as_float(r) for r in flat)
        self.reference_mod = self.graph.finish([self.rv[r.name] for r in done])
        return done if isinstance(outs, tuple) else done[0]

    def _view(self, src: Ref, shape: tuple, var) -> Ref:
        out = super()._view(src, shape, var)
        self.rv[out.name] = self.graph.reshape(self.rv[src.name], shape)
        return out

    def _host(self, name, fn, args, out_shape, op=None):
        fargs = [self._as_float(a) for a in args]
        out = super()._host(name, fn, fargs, out_shape, op)
        self.rv[out.name] = self.graph.call(fn, [self.rv[a.name] for a in fargs])
        return out
