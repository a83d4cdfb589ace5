"""BoundedTake on tiny modules (TVM's Before / Expected style): a ``fast`` take of computed
indices becomes ``clip``; constant indices and other modes stay."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.bounded_take import BoundedTake, bounded_take


def test_computed_indices_become_clip():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), i: R.Tensor((8,), "int64")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                j: R.Tensor((8,), "int64") = R.floor_mod(R.add(i, R.const(3, "int64")), R.const(8, "int64"))
                y: R.Tensor((2, 8), "float32") = R.take(x, j, axis=1, mode="fast")
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), i: R.Tensor((8,), "int64")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                j: R.Tensor((8,), "int64") = R.floor_mod(R.add(i, R.const(3, "int64")), R.const(8, "int64"))
                y: R.Tensor((2, 8), "float32") = R.take(x, j, axis=1, mode="clip")
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(bounded_take(Before), Expected)
    tvm.ir.assert_structural_equal(BoundedTake(Before), Expected)


def test_constant_indices_and_other_modes_stay():
    idx = np.array([1, 0], "int64")

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), i: R.Tensor((8,), "int64")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                a: R.Tensor((2, 8), "float32") = R.take(x, R.const(idx), axis=0, mode="fast")
                b: R.Tensor((2, 8), "float32") = R.take(a, i, axis=1, mode="wrap")
                R.output(b)
            return b

    tvm.ir.assert_structural_equal(bounded_take(Before), Before)
