"""ONNX graphs as real exporters write them (compiler/onnx_fold.py, compiler/onnx_rewrite.py):
initializers listed as graph inputs, weights built by ConstantOfShape, shape arithmetic on
static shapes, Expand of constants, inference-mode Dropout, the variadic Sum and LRN, each
compiled with full-precision weights, run on the ISA interpreter and compared with
onnxruntime; and the refusals (training-mode Dropout, a folded tensor over the size limit),
each one DlacError naming the node."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from target_dlac.core.errors import DlacError, ModelLoadError  # noqa: E402
from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.onnx_fold import fold_constants, strip_initializer_inputs  # noqa: E402

TOL = 1e-5
RNG = np.random.default_rng(0)


def _model(nodes, inits, x_shape, y_name="y", opset=13, ir=8, init_inputs=False, x_dtype=TensorProto.FLOAT,
           y_shape=None):
    inputs = [helper.make_tensor_value_info("x", x_dtype, list(x_shape))]
    if init_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, y_shape)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    if y_shape is not None:
        return m
    return onnx.shape_inference.infer_shapes(m)     # the output's type and shape, as exporters write


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _ort(model, feed):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, 10)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _dlac(model, feed, quant="none"):
    from compiler.build import build_program
    from target_dlac.isa.machine import Machine
    from target_dlac.sim.host import HostRunner
    from target_dlac.sim.interpreter import run

    cfg = QuantConfig.full_precision() if quant == "none" else QuantConfig()
    result = compile_model(model, config=cfg)
    prog = build_program(result, Machine(), reference=False)
    outs, _ = run(prog, {t.name: feed[t.name] for t in prog.inputs},
                  host_runner=HostRunner(prog) if prog.host is not None else None)
    return outs["output_0"], result


def _check(model, x, quant="none"):
    ref = _ort(model, {"x": x})
    out, result = _dlac(model, {"x": x}, quant)
    assert out.shape == ref.shape
    err = np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= TOL, err
    return result


def _conv_layers(result):
    return [p for p in result.layers if p.op == "conv2d"]


# ----------------------------------------------------------- initializers as graph inputs

def test_initializers_listed_as_inputs_are_constants():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["c"], ["y"])],
               [_init("w", w), _init("b", b)], (1, 3, 8, 8), opset=9, ir=3, init_inputs=True)
    result = _check(m, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    assert result.input_names == ["x"]
    assert len(_conv_layers(result)) == 1          # constant weights: a dLAC layer


def test_strip_initializer_inputs_keeps_the_real_ones():
    m = _model([helper.make_node("Add", ["x", "b"], ["y"])], [_init("b", np.ones(3, np.float32))],
               (3,), ir=3, init_inputs=True)
    strip_initializer_inputs(m)
    assert [i.name for i in m.graph.input] == ["x"] and m.ir_version >= 4


# ------------------------------------------------------------------------ folding

def _const_of_shape(shape_name, out, value):
    return helper.make_node("ConstantOfShape", [shape_name], [out],
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value]))


def test_constant_of_shape_weights_fold_to_a_dlac_layer():
    nodes = [_const_of_shape("ws", "w", 0.05), _const_of_shape("bs", "b", 0.1),
             helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    m = _model(nodes, [_init("ws", np.array([6, 3, 3, 3], np.int64)), _init("bs", np.array([6], np.int64))],
               (1, 3, 7, 7), opset=9, ir=3, init_inputs=True)
    result = _check(m, RNG.standard_normal((1, 3, 7, 7)).astype(np.float32))
    assert len(_conv_layers(result)) == 1
    assert not [h for h in result.host_ops if "conv" in h.op]
    # ternary: the folded weight is quantized like any other
    x = RNG.standard_normal((1, 3, 7, 7)).astype(np.float32)
    _dlac(m, {"x": x}, quant="ternary")


def test_shape_gather_concat_arithmetic_folds():
    """Reshape(x, Concat(Gather(Shape(x), 0), [-1])): the target shape is static."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"])]
    inits = [_init("i0", np.array(0, np.int64)), _init("ax", np.array([0], np.int64)),
             _init("minus1", np.array([-1], np.int64)),
             _init("w", RNG.standard_normal((48, 5)).astype(np.float32))]
    m = _model(nodes, inits, (2, 3, 4, 4))
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    _check(m, x)
    from compiler.onnx_fold import static_shapes
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    n = fold_constants(m2, "<test>", static_shapes(m2, {}))
    assert n == 4 and [node.op_type for node in m2.graph.node] == ["Reshape", "Gemm"]


def test_expand_of_constant_folds():
    nodes = [helper.make_node("Expand", ["b", "shape"], ["bb"]),
             helper.make_node("Add", ["x", "bb"], ["y"])]
    m = _model(nodes, [_init("b", RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)),
                       _init("shape", np.array([1, 4, 5, 5], np.int64))], (1, 4, 5, 5))
    _check(m, RNG.standard_normal((1, 4, 5, 5)).astype(np.float32))
    fold_constants(m, "<test>")
    assert [n.op_type for n in m.graph.node] == ["Add"]
    assert [list(t.dims) for t in m.graph.initializer] == [[1, 4, 5, 5]]


def test_fold_size_limit_names_the_node():
    nodes = [_const_of_shape("ws", "w", 1.0), helper.make_node("Conv", ["x", "w"], ["y"], name="big_conv")]
    nodes[0].name = "huge_weight"
    m = _model(nodes, [_init("ws", np.array([1 << 16, 1 << 16, 3, 3], np.int64))], (1, 1 << 16, 3, 3))
    with pytest.raises(ModelLoadError) as ei:
        compile_model(m, config=QuantConfig.full_precision())
    msg = str(ei.value)
    assert "huge_weight" in msg and "ConstantOfShape" in msg and "limit" in msg
    assert "\n" not in msg


def test_quantize_dequantize_are_not_folded():
    w = numpy_helper.from_array(np.array([[1, -1], [0, 1]], np.int8), "wq")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = _model(nodes, [w, _init("s", np.float32(0.5))], (1, 2))
    assert fold_constants(m, "<test>") == 0


def test_graph_output_is_not_folded():
    m = _model([helper.make_node("Identity", ["c"], ["y"])], [_init("c", np.ones(2, np.float32))], (2,))
    assert fold_constants(m, "<test>") == 0


# --------------------------------------------------------------------- Dropout

@pytest.mark.parametrize("opset", [9, 13])
def test_inference_dropout_is_dropped(opset):
    ins = ["c"] if opset < 12 else ["c", "ratio", "train"]
    nodes = [helper.make_node("Relu", ["x"], ["c"]),
             helper.make_node("Dropout", ins, ["d"], **({"ratio": 0.3} if opset < 12 else {})),
             helper.make_node("Mul", ["d", "k"], ["y"])]
    inits = [_init("k", np.float32(2.0))]
    if opset >= 12:
        inits += [_init("ratio", np.float32(0.3)), _init("train", np.array(False))]
    m = _model(nodes, inits, (1, 4, 3, 3), opset=opset)
    _check(m, RNG.standard_normal((1, 4, 3, 3)).astype(np.float32))


def test_training_dropout_refused_naming_node():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], name="drop1")]
    m = _model(nodes, [_init("ratio", np.float32(0.3)), _init("train", np.array(True))], (1, 4))
    with pytest.raises(ModelLoadError, match=r"drop1 \(Dropout\).*training_mode is true"):
        compile_model(m, config=QuantConfig.full_precision())


def test_dropout_mask_read_refused_naming_node():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop2"),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["d", "mf"], ["y"])]
    m = _model(nodes, [], (1, 4), opset=9, y_shape=[1, 4])
    with pytest.raises(ModelLoadError, match=r"drop2 \(Dropout\).*mask"):
        compile_model(m, config=QuantConfig.full_precision())


# ------------------------------------------------------------------------- Sum

@pytest.mark.parametrize("n", [1, 2, 4])
def test_sum_variadic(n):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["m"])]
    terms = ["x", "r", "m", "k"][:n]
    nodes.append(helper.make_node("Sum", terms, ["s"]))
    nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    m = _model(nodes, [_init("k", RNG.standard_normal((1, 4, 1, 1)).astype(np.float32))], (1, 4, 5, 5), opset=9)
    _check(m, RNG.standard_normal((1, 4, 5, 5)).astype(np.float32))


def test_sum_residual_stays_on_dlac():
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    m = _model(nodes, [_init("w", w)], (1, 4, 6, 6), opset=9)
    result = _check(m, RNG.standard_normal((1, 4, 6, 6)).astype(np.float32))
    assert not [h.op for h in result.host_ops if h.op in ("stack", "sum", "add", "relax.add")]


# ------------------------------------------------------------------------- LRN

def _lrn_spec(x, size, alpha, beta, bias):
    """The ONNX spec's formula in float64 (onnx.reference's LRN loops over the batch axis
    instead of the channels, so it is no oracle for C != N)."""
    x64, c = x.astype(np.float64), x.shape[1]
    sq = np.zeros_like(x64)
    for ch in range(c):
        lo, hi = max(0, ch - (size - 1) // 2), min(c - 1, ch + -(-(size - 1) // 2))
        sq[:, ch] = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
    return x64 / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size,shape", [(5, (1, 8, 6, 6)), (1, (1, 3, 4, 4)), (3, (2, 16, 5, 5)),
                                        (4, (1, 7, 5, 5)), (3, (2, 6, 9))])
def test_lrn_matches_the_spec(size, shape):
    """onnxruntime (odd sizes, 4-D) and the spec's formula (every case: even sizes and 3-D
    inputs, which onnxruntime does not implement, too)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("LRN", ["r"], ["y"], size=size, alpha=0.05, beta=0.75, bias=2.0)]
    m = _model(nodes, [], shape, opset=9)
    x = (RNG.standard_normal(shape) * 3).astype(np.float32)
    if size % 2 and len(shape) == 4:
        _check(m, x)
    ref = _lrn_spec(np.maximum(x, 0), size, 0.05, 0.75, 2.0)
    out, _ = _dlac(m, {"x": x})
    assert np.abs(out - ref).max() / np.abs(ref).max() <= TOL


def test_lrn_after_conv_ternary_runs():
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("LRN", ["r"], ["l"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
             helper.make_node("Conv", ["l", "w2"], ["y"])]
    m = _model(nodes, [_init("w", w), _init("w2", RNG.standard_normal((4, 8, 1, 1)).astype(np.float32))],
               (1, 3, 8, 8), opset=9)
    _check(m, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    out, result = _dlac(m, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}, "ternary")
    assert np.isfinite(out).all() and len(_conv_layers(result)) == 2


def test_errors_are_dlac_errors_on_one_line():
    nodes = [helper.make_node("Reshape", ["c", "bad"], ["r"], name="bad_reshape"),
             helper.make_node("Add", ["x", "r"], ["y"])]
    m = _model(nodes, [_init("c", np.ones(6, np.float32)), _init("bad", np.array([4, 4], np.int64))], (4, 4))
    with pytest.raises(DlacError) as ei:
        compile_model(m, config=QuantConfig.full_precision())
    assert "bad_reshape" in str(ei.value) and "\n" not in str(ei.value)
