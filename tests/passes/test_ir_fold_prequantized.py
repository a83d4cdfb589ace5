"""FoldPrequantized on tiny modules (TVM's Before / Expected style): the weight subgraphs
of pre-quantized ONNX models become float constants, and the layer's integers are
recorded.  QDQ: ``dequantize(int8 q, scale, 0)``; QCDQ (brevitas ternary):
``quantize(W) -> maximum(-1) -> minimum(1) -> dequantize``.  The scales are powers of two,
so the folded values are exact: the Expected values are written out.  Activation
quantize / dequantize (non-constant input) stays."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.fold_prequantized import FoldPrequantized, fold_prequantized

F = "float32"
Q = np.array([[3, 0], [-1, 2]], np.int8).reshape(2, 2, 1, 1)          # conv 1x1 2 -> 2, int4 range
S = np.array([0.5, 0.25], F)
ZP = np.zeros(2, np.int8)
WQ = np.array([[1.5, 0.0], [-0.25, 0.5]], F).reshape(2, 2, 1, 1)     # S * Q per output channel
WT = np.array([[0.75, -0.25], [0.1, -2.0]], F).reshape(2, 2, 1, 1)    # QCDQ: round(W / 0.5), clip
TT = np.array([[0.5, 0.0], [0.0, -0.5]], F).reshape(2, 2, 1, 1)     # -> [[1, 0], [0, -1]] * 0.5


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


def test_qdq_weight_folds_and_is_recorded():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                xq: R.Tensor((1, 2, 2, 2), "int8") = R.quantize(x, R.const(0.5, F), R.const(0, "int8"), axis=1)
                xd: R.Tensor((1, 2, 2, 2), "float32") = R.dequantize(xq, R.const(0.5, F), R.const(0, "int8"), axis=1)
                w: R.Tensor((2, 2, 1, 1), "float32") = R.dequantize(R.const(Q, "int8"), R.const(S, F),
                                                                    R.const(ZP, "int8"), axis=0)
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(xd, w)
                R.output(conv)
            return conv

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                xq: R.Tensor((1, 2, 2, 2), "int8") = R.quantize(x, R.const(0.5, F), R.const(0, "int8"), axis=1)
                xd: R.Tensor((1, 2, 2, 2), "float32") = R.dequantize(xq, R.const(0.5, F), R.const(0, "int8"), axis=1)
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(xd, R.const(WQ, F))
                R.output(conv)
            return conv

    assert _differs(Before, Expected)
    after, info = fold_prequantized(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    rec = info.layers["conv"]
    assert np.array_equal(rec.q, Q) and np.array_equal(rec.scale, S) and rec.axis == 0 and rec.kind == "int4"
    assert info.skipped == {}
    tvm.ir.assert_structural_equal(FoldPrequantized(Before), Expected)      # the module pass


def test_qcdq_ternary_weight_folds_and_is_recorded():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                q: R.Tensor((2, 2, 1, 1), "int8") = R.quantize(R.const(WT, F), R.const(0.5, F),
                                                               R.const(0, "int8"), axis=0)
                lo: R.Tensor((2, 2, 1, 1), "int8") = R.maximum(q, R.const(np.array(-1, np.int8), "int8"))
                t: R.Tensor((2, 2, 1, 1), "int8") = R.minimum(lo, R.const(np.array(1, np.int8), "int8"))
                w: R.Tensor((2, 2, 1, 1), "float32") = R.dequantize(t, R.const(0.5, F), R.const(0, "int8"), axis=0)
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, w)
                R.output(conv)
            return conv

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(TT, F))
                R.output(conv)
            return conv

    assert _differs(Before, Expected)
    after, info = fold_prequantized(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    rec = info.layers["conv"]
    assert np.array_equal(rec.q, np.array([[1, 0], [0, -1]], np.int8).reshape(2, 2, 1, 1))
    assert rec.kind == "ternary" and np.array_equal(rec.scale, [0.5])


def test_asymmetric_weight_folds_but_is_not_recorded():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                w: R.Tensor((2, 2, 1, 1), "float32") = R.dequantize(R.const(Q, "int8"), R.const(0.5, F),
                                                                    R.const(1, "int8"), axis=0)
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, w)
                R.output(conv)
            return conv

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(
                    x, R.const(((Q.astype(F) - 1) * 0.5).astype(F), F))
                R.output(conv)
            return conv

    after, info = fold_prequantized(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert info.layers == {} and "zero point is not 0" in info.skipped["conv"]
