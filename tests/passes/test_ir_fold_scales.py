"""FoldScales on tiny modules (TVM's Before / Expected style): a layer's bias add and the
per-channel multiply / add chain after it become one epilogue.  A quantized (ternary)
layer keeps its integer weights ``q`` and gets ``acc * (alpha * m) + (b * m + c)``; a
full-precision layer gets ``W * m`` and ``acc + (b * m + c)``.  The numbers are exact in
float32; the Expected values are written out.  The replaced bindings are left dead (the
pipeline's RemoveDeadTuples drops them): the output goes through DeadCodeElimination, as
in TVM's tests."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.relax.transform import DeadCodeElimination
from tvm.script import ir as I
from tvm.script import relax as R

from target_dlac.core.errors import QuantizationError
from passes.fold_scales import FoldScales, fold_scales
from target_dlac.core.ir import iter_bindings

F = "float32"
Q = np.array([[1, 0, -1], [-1, 1, 0]], F).reshape(2, 3, 1, 1)        # ternary, conv 1x1 3 -> 2
ALPHA = np.array([0.5, 2.0], F)
W = Q * ALPHA.reshape(2, 1, 1, 1)
BIAS, M, C = (np.array(v, F).reshape(1, 2, 1, 1) for v in ([1.0, -1.0], [2.0, 0.25], [0.5, 1.0]))


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 3, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(W, F))
            b: R.Tensor((1, 2, 2, 2), "float32") = R.add(conv, R.const(BIAS, F))
            m: R.Tensor((1, 2, 2, 2), "float32") = R.multiply(b, R.const(M, F))
            y: R.Tensor((1, 2, 2, 2), "float32") = R.add(R.const(C, F), m)
            R.output(y)
        return y


def test_quantized_layer_gets_one_scale_and_bias_epilogue():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(Q, F))
                s: R.Tensor((1, 2, 2, 2), "float32") = R.multiply(
                    conv, R.const(np.array([1.0, 0.5], F).reshape(1, 2, 1, 1), F))
                y: R.Tensor((1, 2, 2, 2), "float32") = R.add(
                    s, R.const(np.array([2.5, 0.75], F).reshape(1, 2, 1, 1), F))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = DeadCodeElimination()(fold_scales(Before, {"conv"}))
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after)[0] == "conv" and _names(after)[-1] == "y"
    # the decomposition given explicitly ({name: (q, alpha)}, as QuantizeWeights returns it)
    explicit = DeadCodeElimination()(FoldScales({"conv": (Q.astype(np.int8), ALPHA)})(Before))
    tvm.ir.assert_structural_equal(explicit, Expected)


def test_full_precision_layer_gets_the_scale_in_its_weights():
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(
                    x, R.const(np.array([[1.0, 0.0, -1.0], [-0.5, 0.5, 0.0]], F).reshape(2, 3, 1, 1), F))
                y: R.Tensor((1, 2, 2, 2), "float32") = R.add(
                    conv, R.const(np.array([2.5, 0.75], F).reshape(1, 2, 1, 1), F))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = DeadCodeElimination()(fold_scales(Before))
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["conv", "y"]


def test_a_decomposition_that_does_not_reproduce_the_weights_is_refused():
    with pytest.raises(Exception, match=r"layer conv: the weights are not scale \* q"):
        fold_scales(Before, {"conv": (Q.astype(np.int8), ALPHA * 2)})


def test_the_refusal_is_a_quantization_error():
    with pytest.raises(QuantizationError):
        fold_scales(Before, {"conv": (Q.astype(np.int8), ALPHA * 2)})
