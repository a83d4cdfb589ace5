"""PartitionForDlac on a tiny module (TVM's Before / Expected style): a conv with its
bias and ReLU becomes the composite ``dlac.conv2d_relu`` (tagged ``dlac.layer``), the
reshape ``dlac.reshape``; both merge into the region ``dlac_region_0`` (``Codegen =
"dlac"``), and the softmax stays on the host.  (tests/passes/test_partition.py tests the
patterns on whole models.)"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.partition import HostOp, PartitionForDlac, partition, regions, unpartition

F = "float32"
W = np.array([1.0, -1.0], F).reshape(2, 1, 1, 1)
B = np.array([0.5, 1.0], F).reshape(1, 2, 1, 1)


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 8), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x, R.const(W, F))
            b: R.Tensor((1, 2, 2, 2), "float32") = R.add(conv, R.const(B, F))
            r: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(b)
            f: R.Tensor((1, 8), "float32") = R.reshape(r, R.shape([1, 8]))
            y: R.Tensor((1, 8), "float32") = R.nn.softmax(f)
            R.output(y)
        return y


@I.ir_module
class Expected:
    @R.function
    def dlac_region_0(x: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 8), "float32"):
        R.func_attr({"Codegen": "dlac"})

        @R.function
        def conv_relu(x_1: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            R.func_attr({"Composite": "dlac.conv2d_relu", "dlac.layer": "conv"})
            with R.dataflow():
                conv: R.Tensor((1, 2, 2, 2), "float32") = R.nn.conv2d(x_1, R.const(W, F))
                b: R.Tensor((1, 2, 2, 2), "float32") = R.add(conv, R.const(B, F))
                r: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(b)
                R.output(r)
            return r

        lv: R.Tensor((1, 2, 2, 2), "float32") = conv_relu(x)

        @R.function
        def reshape(lv_1: R.Tensor((1, 2, 2, 2), "float32")) -> R.Tensor((1, 8), "float32"):
            R.func_attr({"Composite": "dlac.reshape"})
            with R.dataflow():
                f: R.Tensor((1, 8), "float32") = R.reshape(lv_1, R.shape([1, 8]))
                R.output(f)
            return f

        out: R.Tensor((1, 8), "float32") = reshape(lv)
        return out

    @R.function
    def main(x: R.Tensor((1, 1, 2, 2), "float32")) -> R.Tensor((1, 8), "float32"):
        cls = Expected
        with R.dataflow():
            lv: R.Tensor((1, 8), "float32") = cls.dlac_region_0(x)
            y: R.Tensor((1, 8), "float32") = R.nn.softmax(lv, axis=-1)
            R.output(y)
        return y


def test_partition():
    assert _differs(Before, Expected)
    after, host = partition(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert host == [HostOp("nn.softmax", "y", (1, 8))]
    assert regions(after) == [("dlac_region_0", ["dlac.conv2d_relu", "dlac.reshape"])]
    tvm.ir.assert_structural_equal(PartitionForDlac()(Before), Expected)     # the module pass


def test_unpartition_is_buildable_and_computes_the_same():
    """unpartition (the CPU reference's view) keeps the computation: built and run by TVM,
    it gives Before's output."""
    x = np.array([1.0, -2.0, 3.0, 0.25], F).reshape(1, 1, 2, 2)
    outs = []
    for mod in (Before, unpartition(partition(Before)[0])):
        ex = tvm.compile(mod, target="llvm")
        vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    assert np.isfinite(outs[0]).all() and np.array_equal(outs[0], outs[1])
