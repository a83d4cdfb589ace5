"""Codegen of dLAC's fp16 mode: float16 activations between ops, float32 products, sums
and epilogues inside each op (the paper's half-precision mode, twice the MAC lanes).

The same walk as :class:`target_dlac.codegen.generator.Codegen` with op results stored as float16:
graph inputs are narrowed on dLAC (ALU ``narrow``), outputs and host-op inputs widened
(ALU ``widen``).  Mixed precision: ``half(name)`` decides per layer (conv/dense, by its
source name) whether it runs in fp16 or fp32; other ops follow their first input.

The reference graph is the quantized graph with the same storage: each composite runs in
float32 on widened inputs and its result is narrowed to float16 (``astype``); the TVM
CPU build of it checks the interpreter (within float16 rounding: a float32 sum that
differs in its last bit can round to a neighbouring float16).
"""

from __future__ import annotations

from target_dlac.codegen.generator import Ref
from target_dlac.codegen.modes.ref import RefCodegen


class Fp16Codegen(RefCodegen):
    def __init__(self, mod, machine, *, half=lambda name: True, **kw):
        super().__init__(mod, machine, **kw)
        self.half = half

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
            ins = [self.graph.astype(self.rv[a.name], "float32") if half else self.rv[a.name] for a in args]
            y = self.graph.call(fn, ins)
            self.rv[out.name] = self.graph.astype(y, "float16") if half else y
        return out

    def _as_half(self, ref: Ref) -> Ref:
        return ref if ref.dtype == "float16" else self._convert(ref, "narrow")

    def _out(self, var, spec, env) -> Ref:
        return self._alloc(var.name, spec.out_shape, "float16" if self._half_out else "float32")
