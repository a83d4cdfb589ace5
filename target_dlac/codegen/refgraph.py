"""The reference graph of an fp16 or int8 program: its computation as a TVM Relax module.

The fp16 and int8 codegens (:mod:`target_dlac.codegen.modes.ref`) build it op by op alongside
the instructions.  The int8 ops use the same integer parameters as the instructions
(multipliers, biases, shifts, exponents; see :mod:`target_dlac.codegen.modes.intmath`) and only
standard Relax ops (``conv2d`` with ``out_dtype="int32"``, ``astype``, ``multiply``,
``add``, ``left_shift``, ``right_shift``, ``clip``, ``max_pool2d``, ``floor``; ``greater`` and
``where`` for a ReLU threshold).
``tvm.compile(..., "llvm")`` of it is the oracle the interpreter must match (exactly for
int8: ``dlac run --check``, the tests).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from target_dlac.core.ir import make_const
from target_dlac.codegen.composites import strip_attrs


def _i64(v) -> relax.Expr:
    return make_const(np.asarray(v, np.int64), "int64")


def _chan(v: np.ndarray, rank: int, dtype: str) -> relax.Expr:
    shape = [1] * rank
    shape[1] = -1
    return make_const(np.asarray(v).reshape(shape), dtype)


class RefGraph:
    """``main(params)`` being built; :meth:`finish` returns the module."""

    def __init__(self, params: list[relax.Var]):
        self.bb = relax.BlockBuilder()
        self.params = params
        self._funcs = 0
        self._fn = self.bb.function("main", params, {"num_input": len(params)})
        self._fn.__enter__()
        self._df = self.bb.dataflow()
        self._df.__enter__()

    def emit(self, expr) -> relax.Var:
        return self.bb.emit(expr)

    def astype(self, x, dtype: str):
        return self.emit(relax.op.astype(x, dtype))

    def quantize(self, x, exp: int):
        y = relax.op.floor(relax.op.add(relax.op.multiply(x, relax.const(2.0 ** exp, "float32")),
                                        relax.const(0.5, "float32")))
        return self.emit(relax.op.astype(relax.op.clip(y, -128, 127), "int8"))

    def dequantize(self, q, exp: int):
        return self.emit(relax.op.multiply(relax.op.astype(q, "float32"),
                                           relax.const(2.0 ** -exp, "float32")))

    def _requant(self, t, shift: int, lo: int, hi: int):
        if shift:
            t = relax.op.right_shift(relax.op.add(t, _i64(1 << (shift - 1))), _i64(shift))
        return self.emit(relax.op.astype(relax.op.clip(t, lo, hi), "int8"))

    def layer(self, x, w: np.ndarray, kind: str, strides, pads, groups: int, m, b, shift: int,
              res=None, rshift: int = 0, lo: int = -128, hi: int = 127, tq: int = 0):
        """conv2d (OIHW ``w``) or dense (``w`` [N, K, 1, 1]) with the integer epilogue;
        ``tq > 0``: a ReLU threshold after the clip, ``y > tq ? y : 0``."""
        if kind == "dense":
            wt = make_const(np.ascontiguousarray(w.reshape(w.shape[0], -1).T), str(w.dtype))
            acc = self.emit(relax.op.matmul(x, wt, out_dtype="int32"))
            rank = 2
        else:
            acc = self.emit(relax.op.nn.conv2d(x, make_const(w, str(w.dtype)), strides=list(strides),
                                               padding=list(pads), groups=groups, out_dtype="int32"))
            rank = 4
        t = relax.op.astype(acc, "int64")
        t = relax.op.add(relax.op.multiply(t, _chan(m.astype(np.int64), rank, "int64")),
                         _chan(b, rank, "int64"))
        if res is not None:
            t = relax.op.add(t, relax.op.left_shift(relax.op.astype(res, "int64"), _i64(rshift)))
        y = self._requant(t, shift, lo, hi)
        if tq > 0:
            y = self.emit(relax.op.where(relax.op.greater(y, make_const(np.int8(tq), "int8")), y,
                                         make_const(np.int8(0), "int8")))
        return y

    def max_pool(self, x, kernel, strides, pads):
        return self.emit(relax.op.nn.max_pool2d(x, pool_size=list(kernel), strides=list(strides),
                                                padding=list(pads)))

    def avg_pool(self, x, channels: int, kernel, strides, pads, mult: int, shift: int, out_shape):
        """Window sums as a depthwise conv with a ones kernel (int32), then requantize."""
        ones = np.ones((channels, 1, kernel[0], kernel[1]), np.int8)
        s = self.emit(relax.op.nn.conv2d(x, make_const(ones, "int8"), strides=list(strides),
                                         padding=list(pads), groups=channels, out_dtype="int32"))
        y = self._requant(relax.op.multiply(relax.op.astype(s, "int64"), _i64(mult)), shift, -128, 127)
        if len(out_shape) != 4:
            y = self.emit(relax.op.reshape(y, list(out_shape)))
        return y

    def add(self, a, b, sa: int, sb: int, shift: int, relu: bool):
        t = relax.op.add(relax.op.left_shift(relax.op.astype(a, "int64"), _i64(sa)),
                         relax.op.left_shift(relax.op.astype(b, "int64"), _i64(sb)))
        return self._requant(t, shift, 0 if relu else -128, 127)

    def relu(self, x):
        return self.emit(relax.op.maximum(x, relax.const(0, "int8")))

    def reshape(self, x, shape):
        return self.emit(relax.op.reshape(x, list(shape)))

    def call(self, fn: relax.Function, args):
        """``fn`` (a host op's or a composite's function) called on ``args``."""
        fn = strip_attrs(fn)
        if fn.attrs is not None and "global_symbol" in fn.attrs:
            fn = fn.without_attr("global_symbol")
        self._funcs += 1
        gv = self.bb.add_func(fn, f"ref_{self._funcs}")
        return self.emit(relax.Call(gv, list(args)))

    def finish(self, outputs: list):
        out = self.bb.emit_output(relax.Tuple(outputs))
        self._df.__exit__(None, None, None)
        self.bb.emit_func_output(out)
        self._fn.__exit__(None, None, None)
        return self.bb.get()
