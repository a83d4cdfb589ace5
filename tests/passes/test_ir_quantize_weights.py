"""QuantizeWeights on a tiny module (TVM's Before / Expected style): each planned layer's
weights become ``scale * q`` (ternary: TWN per filter; int4: ``max|W| / 7`` per filter),
the others stay; the exact ``(q, scale)`` are returned.  The weights are chosen so that
the thresholds, means and scales are exact: the Expected values are written out."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.quantize_weights import QuantizeWeights, WeightSpec, quantize_weights
from target_dlac.core.ir import iter_bindings

F = "float32"
# conv 1x1, 4 -> 2.  Filter 0: mean|W| = 0.575, threshold 0.7 * 0.575 = 0.4025, kept
# {1.0, -1.0}: alpha 1.0.  Filter 1: mean 0.3875, threshold 0.27125, kept {0.5, -0.5, 0.5}: alpha 0.5.
W = np.array([[1.0, 0.125, -1.0, 0.25], [0.5, -0.5, 0.0625, 0.5]], F).reshape(2, 4, 1, 1)
T = np.array([[1.0, 0.0, -1.0, 0.0], [0.5, -0.5, 0.0, 0.5]], F).reshape(2, 4, 1, 1)
# dense (K=2, N=2), int4 per output column: max 3.5 -> scale 0.5 (3.5 / 0.5 = 7, 0.25 / 0.5
# rounds to 0); max 1.75 -> scale 0.25
D = np.array([[3.5, 1.75], [0.25, -1.0]], F)
D4 = np.array([[3.5, 1.75], [0.0, -1.0]], F)
E = np.array([[2.0, 3.0]], F)        # a layer with no plan: unchanged


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 2), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 2, 1, 1), "float32") = R.nn.conv2d(x, R.const(W, F))
            flat: R.Tensor((1, 2), "float32") = R.reshape(conv, R.shape([1, 2]))
            fc: R.Tensor((1, 2), "float32") = R.matmul(flat, R.const(D, F))
            last: R.Tensor((1, 2), "float32") = R.matmul(R.const(E, F), R.const(np.eye(2, dtype=F), F))
            y: R.Tensor((1, 2), "float32") = R.add(fc, last)
            R.output(y)
        return y


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 2), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 2, 1, 1), "float32") = R.nn.conv2d(x, R.const(T, F))
            flat: R.Tensor((1, 2), "float32") = R.reshape(conv, R.shape([1, 2]))
            fc: R.Tensor((1, 2), "float32") = R.matmul(flat, R.const(D4, F))
            last: R.Tensor((1, 2), "float32") = R.matmul(R.const(E, F), R.const(np.eye(2, dtype=F), F))
            y: R.Tensor((1, 2), "float32") = R.add(fc, last)
            R.output(y)
        return y


PLAN = {"conv": WeightSpec("ternary"), "fc": WeightSpec("int4")}


def test_quantize_weights():
    assert _differs(Before, Expected)
    after, decomp = quantize_weights(Before, PLAN)
    tvm.ir.assert_structural_equal(after, Expected)
    assert [b.var.name for b in iter_bindings(after["main"])] == ["conv", "flat", "fc", "last", "y"]
    q, scale = decomp["conv"]
    assert np.array_equal(q, np.array([[1, 0, -1, 0], [1, -1, 0, 1]], np.int8).reshape(2, 4, 1, 1))
    assert np.array_equal(scale, np.array([1.0, 0.5], F))
    q, scale = decomp["fc"]
    assert np.array_equal(q, np.array([[7, 7], [0, -4]], np.int8)) and np.array_equal(scale, [0.5, 0.25])
    assert set(decomp) == {"conv", "fc"}
    tvm.ir.assert_structural_equal(QuantizeWeights(PLAN)(Before), Expected)      # the module pass
