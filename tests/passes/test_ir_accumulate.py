"""MultiplyToAccumulate on tiny modules (TVM's Before / Expected style): after FoldScales
a quantized layer's weight is a float constant of integers; the pass holds it as an int8
constant (``out_dtype`` float32), so a ternary layer only adds, subtracts or skips.
Weights that are not the format's integers are refused."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from target_dlac.core.errors import QuantizationError
from passes.accumulate import MultiplyToAccumulate, check_accumulate_only, multiply_to_accumulate
from target_dlac.core.ir import iter_bindings

F = "float32"
Q = np.array([[1, 0, -1], [-1, 1, 0]], F).reshape(2, 3, 1, 1)        # ternary, conv 1x1 3 -> 2
D = np.array([[7, -3], [0, 5], [-7, 1]], F)                          # 4-bit integers, dense (K=3, N=2)
S = np.array([0.5, 2.0], F).reshape(1, 2, 1, 1)


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
    def main(x: R.Tensor((1, 3, 2, 2), "float32"), v: R.Tensor((1, 3), "float32")) -> R.Tuple(
            R.Tensor((1, 2, 2, 2), "float32"), R.Tensor((1, 2), "float32")):
        with R.dataflow():
            conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(Q, F))
            y: R.Tensor((1, 2, 2, 2), "float32") = R.multiply(conv, R.const(S, F))
            fc: R.Tensor((1, 2), "float32") = R.matmul(v, R.const(D, F))
            out = (y, fc)
            R.output(out)
        return out


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 3, 2, 2), "float32"), v: R.Tensor((1, 3), "float32")) -> R.Tuple(
            R.Tensor((1, 2, 2, 2), "float32"), R.Tensor((1, 2), "float32")):
        with R.dataflow():
            conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(Q.astype(np.int8), "int8"),
                                                                  out_dtype="float32")
            y: R.Tensor((1, 2, 2, 2), "float32") = R.multiply(conv, R.const(S, F))
            fc: R.Tensor((1, 2), "float32") = R.matmul(v, R.const(D.astype(np.int8), "int8"), out_dtype="float32")
            out = (y, fc)
            R.output(out)
        return out


def test_multiply_to_accumulate():
    assert _differs(Before, Expected)
    after = multiply_to_accumulate(Before, {"conv": "ternary", "fc": "int4"})
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["conv", "y", "fc", "out"]
    tvm.ir.assert_structural_equal(MultiplyToAccumulate({"conv": "ternary", "fc": "int4"})(Before), Expected)
    check_accumulate_only(after, {"conv"})
    with pytest.raises(QuantizationError, match="a multiplication by a weight remains"):
        check_accumulate_only(Before, {"conv"})


def test_only_the_named_layers_change():
    """A set of names means ternary layers; the dense layer (not named) keeps float weights."""
    after = multiply_to_accumulate(Before, {"conv"})
    fc = [b.value for b in iter_bindings(after["main"]) if b.var.name == "fc"][0]
    assert fc.args[1].value.numpy().dtype == np.float32
    conv = [b.value for b in iter_bindings(after["main"]) if b.var.name == "conv"][0]
    assert np.array_equal(conv.args[1].value.numpy(), Q.astype(np.int8))


def test_weights_that_are_not_signs_are_refused():
    # raised inside the rewriting mutator: TVM's FFI turns the QuantizationError into a
    # RuntimeError with the same message (see test_ir_fold_scales.py)
    with pytest.raises(Exception, match="layer fc: weights are not ternary integers"):
        multiply_to_accumulate(Before, {"fc": "ternary"})
