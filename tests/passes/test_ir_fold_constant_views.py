"""FoldConstantViews on tiny modules (TVM's Before / Expected style): ``permute_dims`` of
a constant weight (torch ``linear``), ``reshape`` of a constant bias (ONNX) and
``astype`` become constants; so does ONNX Clip's ``where(isnan(b), -inf, b)`` bound."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.fold_constant_views import FoldConstantViews, fold_constant_views
from target_dlac.core.ir import iter_bindings

W = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 4.0]], np.float32)        # torch (out=3, in=2)
B = np.array([1.0, 2.0, -3.0], np.float64)
LO = np.array(0.0, np.float32)
LO1 = np.array([0.0], np.float32)


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


def test_weight_transpose_and_bias_reshape_fold():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                wt: R.Tensor((2, 3), "float32") = R.permute_dims(R.const(W, "float32"), axes=[1, 0])
                fc: R.Tensor((1, 3), "float32") = R.matmul(x, wt)
                b32: R.Tensor((3,), "float32") = R.astype(R.const(B, "float64"), "float32")
                b: R.Tensor((1, 3), "float32") = R.reshape(b32, R.shape([1, 3]))
                y: R.Tensor((1, 3), "float32") = R.add(fc, b)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                fc: R.Tensor((1, 3), "float32") = R.matmul(x, R.const(W.T.copy(), "float32"))
                y: R.Tensor((1, 3), "float32") = R.add(fc, R.const(B.astype(np.float32).reshape(1, 3), "float32"))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = fold_constant_views(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["fc", "y"]
    tvm.ir.assert_structural_equal(FoldConstantViews(Before), Expected)     # the module pass


def test_clip_bound_selection_folds():
    """A one-element bound (the rank-0 case: the next test)."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                nan: R.Tensor((1,), "bool") = R.isnan(R.const(LO1, "float32"))
                lo: R.Tensor((1,), "float32") = R.where(nan, R.const(np.full(1, -np.inf, np.float32), "float32"), R.const(LO1, "float32"))
                y: R.Tensor((1, 3), "float32") = R.maximum(x, lo)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                y: R.Tensor((1, 3), "float32") = R.maximum(x, R.const(LO1, "float32"))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = fold_constant_views(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["y"]


def test_clip_scalar_bound_keeps_its_rank():
    """ONNX Clip's bounds are rank-0: the folded bound should stay rank-0."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                nan: R.Tensor((), "bool") = R.isnan(R.const(LO, "float32"))
                lo: R.Tensor((), "float32") = R.where(nan, R.const(-np.inf, "float32"), R.const(LO, "float32"))
                y: R.Tensor((1, 3), "float32") = R.maximum(x, lo)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                y: R.Tensor((1, 3), "float32") = R.maximum(x, R.const(LO, "float32"))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = fold_constant_views(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["y"]
