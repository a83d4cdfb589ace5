"""RemoveDeadTuples on a tiny module (TVM's Before / Expected style): the
``(a, zeros_like(a))[0]`` tuple that torch.export's max-pool leaves, and a batch-norm
``[0]`` alias, become direct uses; the dead bindings go."""

from __future__ import annotations

import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.remove_dead_tuples import RemoveDeadTuples, remove_dead_tuples
from target_dlac.core.ir import iter_bindings


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _differs(a, b) -> bool:
    try:
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return True
    return False


def test_remove_dead_tuples():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                a: R.Tensor((1, 2, 2, 2), "float32") = R.nn.max_pool2d(x, pool_size=[2, 2], strides=[2, 2])
                z: R.Tensor((1, 2, 2, 2), "float32") = R.zeros_like(a)
                t: R.Tuple(R.Tensor((1, 2, 2, 2), "float32"), R.Tensor((1, 2, 2, 2), "float32")) = (a, z)
                b: R.Tensor((1, 2, 2, 2), "float32") = t[0]
                y: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(b)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 2, 2, 2), "float32"):
            with R.dataflow():
                a: R.Tensor((1, 2, 2, 2), "float32") = R.nn.max_pool2d(x, pool_size=[2, 2], strides=[2, 2])
                y: R.Tensor((1, 2, 2, 2), "float32") = R.nn.relu(a)
                R.output(y)
            return y

    assert _differs(Before, Expected)
    after = remove_dead_tuples(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == _names(Expected) == ["a", "y"]
    tvm.ir.assert_structural_equal(RemoveDeadTuples(Before), Expected)     # the module pass
