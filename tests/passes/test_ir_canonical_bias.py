"""CanonicalBias on tiny modules (TVM's Before / Expected style): an ONNX-style
``(C, 1, 1)`` bias added before the layer output becomes ``add(layer, (1, C, 1, 1))``; a
dense layer with no bias gets a zero ``(1, N)`` bias named ``<layer>_bias``."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.canonical_bias import CanonicalBias, canonical_bias
from target_dlac.core.ir import iter_bindings

W = np.array([[[[1.0]], [[2.0]]], [[[-1.0]], [[0.5]]], [[[0.0]], [[3.0]]]], np.float32)   # (3, 2, 1, 1)
B = np.array([0.25, -1.0, 2.0], np.float32)
D = np.array([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0]], np.float32)                          # (K=2, N=3)


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


def test_onnx_bias_becomes_canonical():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3, 4, 4), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(W, "float32"))
                y: R.Tensor((1, 3, 4, 4), "float32") = R.add(R.const(B.reshape(3, 1, 1), "float32"), conv)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3, 4, 4), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(W, "float32"))
                y: R.Tensor((1, 3, 4, 4), "float32") = R.add(conv, R.const(B.reshape(1, 3, 1, 1), "float32"))
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = canonical_bias(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["conv", "y"]
    tvm.ir.assert_structural_equal(CanonicalBias(Before), Expected)       # the module pass


def test_missing_bias_becomes_a_zero_add():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                fc: R.Tensor((1, 3), "float32") = R.matmul(x, R.const(D, "float32"))
                y: R.Tensor((1, 3), "float32") = R.nn.relu(fc)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2), "float32")) -> R.Tensor((1, 3), "float32"):
            with R.dataflow():
                fc: R.Tensor((1, 3), "float32") = R.matmul(x, R.const(D, "float32"))
                fc_bias: R.Tensor((1, 3), "float32") = R.add(fc, R.const(np.zeros((1, 3), np.float32), "float32"))
                y: R.Tensor((1, 3), "float32") = R.nn.relu(fc_bias)
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = canonical_bias(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["fc", "fc_bias", "y"]
