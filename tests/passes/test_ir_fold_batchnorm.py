"""FoldBatchNorm on tiny modules (TVM's Before / Expected style).

``conv -> add(bias) -> batch_norm[0]`` becomes ``conv(W * s) -> add((b - mean) * s + beta)``
with ``s = gamma / sqrt(var + eps)``; a batch-norm after a non-layer becomes
``x * s + t``.  The numbers are chosen so that every product is exact: the Expected
values are written out, not computed by the pass's code.  The pass leaves the replaced
bindings dead (the pipeline's RemoveDeadTuples drops them): as in TVM's tests, the output
goes through DeadCodeElimination before the comparison."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.relax.transform import DeadCodeElimination
from tvm.script import ir as I
from tvm.script import relax as R

from passes.fold_batchnorm import FoldBatchNorm, fold_batchnorm
from target_dlac.core.ir import iter_bindings

F = "float32"
W = np.array([2.0, -1.0], F).reshape(2, 1, 1, 1)           # conv 1x1, 1 -> 2 channels
BIAS = np.array([2.0, 1.0], F).reshape(1, 2, 1, 1)
GAMMA, BETA = np.array([1.0, 3.0], F), np.array([0.5, -1.0], F)
MEAN, VAR = np.array([1.0, 2.0], F), np.array([4.0, 0.25], F)   # eps = 0: s = [0.5, 6]


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


def test_batchnorm_folds_into_the_conv_and_its_bias():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(W, F))
                b: R.Tensor((1, 2, 2, 2), "float32") = R.add(conv, R.const(BIAS, F))
                bn = R.nn.batch_norm(b, R.const(GAMMA, F), R.const(BETA, F), R.const(MEAN, F),
                                     R.const(VAR, F), axis=1, epsilon=0.0)
                y: R.Tensor((1, 2, 2, 2), "float32") = bn[0]
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(
                    x, R.const(np.array([1.0, -6.0], F).reshape(2, 1, 1, 1), F))
                y: R.Tensor((1, 2, 2, 2), "float32") = R.add(
                    conv, R.const(np.array([1.0, -7.0], F).reshape(1, 2, 1, 1), F))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = DeadCodeElimination()(fold_batchnorm(Before))
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["conv", "y"]
    tvm.ir.assert_structural_equal(DeadCodeElimination()(FoldBatchNorm(Before)), Expected)      # the module pass
    # a layer named in keep (pre-quantized) keeps its weights: the batch-norm becomes x * s + t
    kept = DeadCodeElimination()(fold_batchnorm(Before, keep={"conv"}))
    assert _differs(kept, Expected)
    assert [b.value.op.name for b in iter_bindings(kept["main"])] == \
        ["relax.nn.conv2d", "relax.add", "relax.multiply", "relax.add"]


def test_batchnorm_without_a_layer_becomes_a_multiply_add():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                r: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(x)
                bn = R.nn.batch_norm(r, R.const(GAMMA, F), R.const(BETA, F), R.const(MEAN, F),
                                     R.const(VAR, F), axis=1, epsilon=0.0)
                y: R.Tensor((1, 2, 2, 2), "float32") = bn[0]
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                r: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(x)
                s: R.Tensor((1, 2, 2, 2), "float32") = R.multiply(
                    r, R.const(np.array([0.5, 6.0], F).reshape(1, 2, 1, 1), F))
                y: R.Tensor((1, 2, 2, 2), "float32") = R.add(
                    s, R.const(np.array([0.0, -13.0], F).reshape(1, 2, 1, 1), F))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = DeadCodeElimination()(fold_batchnorm(Before))
    tvm.ir.assert_structural_equal(after, Expected)
