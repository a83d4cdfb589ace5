"""FlattenDense on tiny modules (TVM's Before / Expected style): a 3-D ``matmul`` with a
constant 2-D weight becomes ``reshape -> 2-D matmul (same name) [-> add of a (1, N) bias]
-> reshape``; an activation x activation matmul and a 2-D dense are left alone; values are
checked against NumPy on TVM's CPU build."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from passes.flatten_dense import FlattenDense, flatten_dense
from passes.layers import find_layers
from target_dlac.core.ir import iter_bindings

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 7 - 0.5           # (F=4, N=3)
B = np.array([0.25, -1.0, 2.0], np.float32)


def _names(mod) -> list[str]:
    return [b.var.name for b in iter_bindings(mod["main"])]


def _run(mod, *args):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(a) for a in args))
    return out.numpy()


def test_3d_linear_with_bias_becomes_2d_dense():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 5, 4), "float32")) -> R.Tensor((2, 5, 3), "float32"):
            with R.dataflow():
                fc: R.Tensor((2, 5, 3), "float32") = R.matmul(x, R.const(W, "float32"))
                y: R.Tensor((2, 5, 3), "float32") = R.add(R.const(B, "float32"), fc)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 5, 4), "float32")) -> R.Tensor((2, 5, 3), "float32"):
            with R.dataflow():
                fc_rows: R.Tensor((10, 4), "float32") = R.reshape(x, R.shape([10, 4]))
                fc: R.Tensor((10, 3), "float32") = R.matmul(fc_rows, R.const(W, "float32"))
                y_rows: R.Tensor((10, 3), "float32") = R.add(fc, R.const(B.reshape(1, 3), "float32"))
                y: R.Tensor((2, 5, 3), "float32") = R.reshape(y_rows, R.shape([2, 5, 3]))
                R.output(y)
            return y

    assert not find_layers(Before["main"])                  # a 3-D matmul is no dLAC layer
    after = flatten_dense(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert _names(after) == ["fc_rows", "fc", "y_rows", "y"]
    assert [l.name for l in find_layers(after["main"])] == ["fc"]
    tvm.ir.assert_structural_equal(FlattenDense(Before), Expected)       # the module pass
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    want = x @ W + B
    np.testing.assert_allclose(_run(after, x), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(Before, x), want, rtol=1e-6, atol=1e-6)


def test_4d_linear_without_bias_and_a_shared_output():
    """No bias (and a per-row constant that is not a bias stays outside); rank 4 input."""
    other = np.arange(6, dtype=np.float32).reshape(2, 1, 1, 3)     # varies along axis 0

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 1, 5, 4), "float32")) -> R.Tensor((2, 1, 5, 3), "float32"):
            with R.dataflow():
                fc: R.Tensor((2, 1, 5, 3), "float32") = R.matmul(x, R.const(W, "float32"))
                y: R.Tensor((2, 1, 5, 3), "float32") = R.add(fc, R.const(other, "float32"))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 1, 5, 4), "float32")) -> R.Tensor((2, 1, 5, 3), "float32"):
            with R.dataflow():
                fc_rows: R.Tensor((10, 4), "float32") = R.reshape(x, R.shape([10, 4]))
                fc: R.Tensor((10, 3), "float32") = R.matmul(fc_rows, R.const(W, "float32"))
                fc_nd: R.Tensor((2, 1, 5, 3), "float32") = R.reshape(fc, R.shape([2, 1, 5, 3]))
                y: R.Tensor((2, 1, 5, 3), "float32") = R.add(fc_nd, R.const(other, "float32"))
                R.output(y)
            return y

    after = flatten_dense(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    x = np.random.default_rng(1).standard_normal((2, 1, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), x @ W + other, rtol=1e-6, atol=1e-6)


def test_activation_matmul_and_2d_dense_unchanged():
    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 4, 6, 8), "float32"), k: R.Tensor((1, 4, 8, 6), "float32"),
                 x: R.Tensor((3, 4), "float32")) -> R.Tuple(R.Tensor((1, 4, 6, 6), "float32"),
                                                          R.Tensor((3, 3), "float32")):
            with R.dataflow():
                s: R.Tensor((1, 4, 6, 6), "float32") = R.matmul(q, k)
                fc: R.Tensor((3, 3), "float32") = R.matmul(x, R.const(W, "float32"))
                gv = (s, fc)
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(flatten_dense(Before), Before)
