"""ReluThreshold on tiny modules (TVM's Before / Expected style): the ReLU after a chosen
layer's epilogue becomes ``where(x > T, x, 0)``; T == 0 leaves the graph alone; the
partitioner fuses the thresholded form into the layer's composite as ``relu`` with
``lo = T``; patterns that match nothing or only layers without a ReLU are refused."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from passes.partition import partition
from passes.relu_threshold import ReluThreshold, check_fused, layer_activations, relu_threshold, resolve
from target_dlac.codegen import composites as C
from target_dlac.codegen.composites import composite_calls
from target_dlac.core.errors import ConfigError

W = np.array([[[[1.0]], [[2.0]]], [[[-1.0]], [[0.5]]], [[[0.0]], [[3.0]]]], np.float32)   # (3, 2, 1, 1)
B = np.array([0.25, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1)
S = np.array([0.5, 2.0, 1.0], np.float32).reshape(1, 3, 1, 1)
D = np.array([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0], [1.0, 1.0, 1.0]], np.float32)        # (K=3, N=3)


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(W, "float32"))
            s: R.Tensor((1, 3, 4, 4), "float32") = R.multiply(conv, R.const(S, "float32"))
            b: R.Tensor((1, 3, 4, 4), "float32") = R.add(s, R.const(B, "float32"))
            r: R.Tensor((1, 3, 4, 4), "float32") = R.nn.relu(b)
            m: R.Tensor((1, 3), "float32") = R.mean(r, axis=[2, 3])
            fc: R.Tensor((1, 3), "float32") = R.matmul(m, R.const(D, "float32"))
            y: R.Tensor((1, 3), "float32") = R.add(fc, R.const(np.zeros((1, 3), np.float32), "float32"))
            R.output(y)
        return y


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(W, "float32"))
            s: R.Tensor((1, 3, 4, 4), "float32") = R.multiply(conv, R.const(S, "float32"))
            b: R.Tensor((1, 3, 4, 4), "float32") = R.add(s, R.const(B, "float32"))
            r_gt: R.Tensor((1, 3, 4, 4), "bool") = R.greater(b, R.const(0.5, "float32"))
            r: R.Tensor((1, 3, 4, 4), "float32") = R.where(r_gt, b, R.const(0.0, "float32"))
            m: R.Tensor((1, 3), "float32") = R.mean(r, axis=[2, 3])
            fc: R.Tensor((1, 3), "float32") = R.matmul(m, R.const(D, "float32"))
            y: R.Tensor((1, 3), "float32") = R.add(fc, R.const(np.zeros((1, 3), np.float32), "float32"))
            R.output(y)
        return y


def _run(mod, x):
    from compiler.reference import run_reference

    return run_reference(mod, x)[0]


def test_relu_becomes_thresholded_where():
    with pytest.raises(ValueError):
        tvm.ir.assert_structural_equal(Before, Expected)
    after = relu_threshold(Before, {"conv": 0.5})
    tvm.ir.assert_structural_equal(after, Expected)
    tvm.ir.assert_structural_equal(ReluThreshold({"conv": 0.5})(Before), Expected)     # the module pass
    # the values: NumPy's conv (1x1) * scale + bias, then x > 0.5 ? x : 0, mean, dense
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    pre = np.einsum("oc,nchw->nohw", W[:, :, 0, 0], x) * S + B
    want = np.where(pre > np.float32(0.5), pre, 0).mean(axis=(2, 3)) @ D
    np.testing.assert_allclose(_run(after, x), want, rtol=1e-5, atol=1e-6)
    plain = np.maximum(pre, 0).mean(axis=(2, 3)) @ D
    assert np.abs(_run(Before, x) - plain).max() < 1e-5 < np.abs(want - plain).max()


def test_zero_threshold_and_no_entry_keep_the_graph():
    assert relu_threshold(Before, {}) is Before
    assert resolve(Before, {}, {"conv": 0.0}) == {}         # T == 0: nothing to rewrite
    assert resolve(Before, {}, {"*": 0.25}) == {"conv": 0.25}   # '*' takes the ReLU layers only


def test_layer_activations_name_what_ends_the_chain():
    acts = layer_activations(Before)
    assert acts["conv"][1] == "relu" and acts["conv"][0].name == "r"
    assert acts["fc"] == (None, "no activation")


def test_bad_patterns_are_refused():
    with pytest.raises(ConfigError, match=r"'conv9'.*matches no layer.*conv, fc"):
        resolve(Before, {}, {"conv9": 0.5})
    with pytest.raises(ConfigError, match=r"'fc'.*no matched layer ends in a fused ReLU.*layer fc: no activation"):
        resolve(Before, {}, {"fc": 0.5})


def _clip_module():
    @I.ir_module
    class Clip:
        @R.function
        def main(x: R.Tensor((1, 2, 4, 4), "float32")) -> R.Tensor((1, 3, 4, 4), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(W, "float32"))
                b: R.Tensor((1, 3, 4, 4), "float32") = R.add(conv, R.const(B, "float32"))
                y: R.Tensor((1, 3, 4, 4), "float32") = R.clip(b, 0, 6)
                R.output(y)
            return y
    return Clip


def test_relu6_layer_is_refused():
    with pytest.raises(ConfigError, match=r"layer conv6: activation clip, not relu"):
        resolve(_clip_module(), {"conv": "conv6"}, {"conv6": 0.5})


def test_partition_fuses_the_threshold_into_the_layer():
    part, host = partition(relu_threshold(Before, {"conv": 0.5}))
    kinds = {str(fn.attrs["Composite"]): fn for _, fn in composite_calls(part)}
    assert "dlac.conv2d_relu" in kinds and not [h for h in host if h.op in ("where", "greater")]
    spec = C.parse(kinds["dlac.conv2d_relu"])
    assert (spec.act, spec.lo) == ("relu", 0.5)
    np.testing.assert_array_equal(spec.scale, S.reshape(-1))
    check_fused(part, {"conv": 0.5}, {})
    plain = C.parse({str(fn.attrs["Composite"]): fn for _, fn in composite_calls(partition(Before)[0])}
                    ["dlac.conv2d_relu"])
    assert (plain.act, plain.lo) == ("relu", 0.0)


def test_unfused_threshold_is_refused():
    part, _ = partition(Before)         # no where: the check finds no thresholded ReLU in conv's EPI
    with pytest.raises(ConfigError, match=r"layer conv: its ReLU is not fused"):
        check_fused(part, {"conv": 0.5}, {})


def test_residual_relu_takes_the_threshold():
    @I.ir_module
    class Res:
        @R.function
        def main(x: R.Tensor((1, 3, 4, 4), "float32")) -> R.Tensor((1, 3, 4, 4), "float32"):
            with R.dataflow():
                conv: R.Tensor((1, 3, 4, 4), "float32") = R.nn.conv2d(x, R.const(np.ones((3, 3, 1, 1), np.float32), "float32"))
                b: R.Tensor((1, 3, 4, 4), "float32") = R.add(conv, R.const(B, "float32"))
                a: R.Tensor((1, 3, 4, 4), "float32") = R.add(b, x)
                y: R.Tensor((1, 3, 4, 4), "float32") = R.nn.relu(a)
                R.output(y)
            return y

    assert resolve(Res, {}, {"conv": 1.5}) == {"conv": 1.5}
    part, _ = partition(relu_threshold(Res, {"conv": 1.5}))
    kinds = {str(fn.attrs["Composite"]): fn for _, fn in composite_calls(part)}
    spec = C.parse(kinds["dlac.conv2d_residual_relu"])
    assert (spec.act, spec.lo) == ("relu", 1.5) and spec.residual is not None
    check_fused(part, {"conv": 1.5}, {})
