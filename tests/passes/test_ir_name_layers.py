"""NameLayers on a tiny module (TVM's Before / Expected style).  Only variable names
change, and TVM's structural equality does not compare names: the test compares the
structure and then the binding names, which is where Before and Expected differ."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.name_layers import name_layers
from target_dlac.core.ir import iter_bindings

F = "float32"
K = np.ones((2, 2, 1, 1), F)


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 2, 2, 2), "float32"), p_conv_weight: R.Tensor((2, 2, 1, 1), "float32"),
             fc_weight: R.Tensor((3, 8), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            lv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, p_conv_weight)
            lv1: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(lv, R.const(K, F))
            lv2: R.Tensor((1, 8), "float32") = R.reshape(lv1, R.shape([1, 8]))
            lv3: R.Tensor((8, 3), "float32") = R.permute_dims(fc_weight, axes=[1, 0])
            lv4: R.Tensor((1, 3), "float32") = R.matmul(lv2, lv3)
            R.output(lv4)
        return lv4


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 2, 2, 2), "float32"), p_conv_weight: R.Tensor((2, 2, 1, 1), "float32"),
             fc_weight: R.Tensor((3, 8), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            conv_layers_0: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, p_conv_weight)
            conv2d_0: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(conv_layers_0, R.const(K, F))
            lv2: R.Tensor((1, 8), "float32") = R.reshape(conv2d_0, R.shape([1, 8]))
            lv3: R.Tensor((8, 3), "float32") = R.permute_dims(fc_weight, axes=[1, 0])
            fc: R.Tensor((1, 3), "float32") = R.matmul(lv2, lv3)
            R.output(fc)
        return fc


def test_name_layers():
    assert _names(Before) != _names(Expected)
    after, display = name_layers(Before, {"p_conv_weight": "conv_layers.0.weight"})
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == _names(Expected)
    assert display == {"conv_layers_0": "conv_layers.0", "conv2d_0": "conv2d_0", "fc": "fc"}
    assert list(display) == ["conv_layers_0", "conv2d_0", "fc"]           # layer order
