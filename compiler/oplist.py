"""Which ops dlac can place: on dLAC itself, or on the host (TVM CPU build).

Two vocabularies are checked: ONNX op types (before conversion, so an error
can name the ONNX node) and Relax ops (after import, for every frontend).
An op in neither list is refused with :class:`UnsupportedOpError`.
"""

from __future__ import annotations

#: Relax ops that dLAC executes (alone or fused with their epilogue).
DLAC_RELAX_OPS = frozenset({
    "nn.conv2d", "matmul", "add", "multiply", "nn.relu", "clip",
    "nn.max_pool2d", "nn.avg_pool2d", "nn.adaptive_avg_pool2d", "mean",
    "nn.batch_norm", "reshape", "flatten", "permute_dims", "astype",
})

#: Relax ops the host runs through TVM's CPU build (dLAC has no unit for them).
HOST_RELAX_OPS = frozenset({
    "subtract", "divide", "nn.softmax", "nn.log_softmax", "sigmoid", "tanh", "exp",
    "sqrt", "rsqrt", "power", "concat", "split", "strided_slice", "squeeze",
    "expand_dims", "nn.leakyrelu", "nn.gelu", "nn.silu", "maximum", "minimum",
    "nn.pad", "zeros_like", "zeros", "ones", "full", "sum", "max", "min",
    "nn.dropout", "negative", "abs", "round", "floor", "ceil",
    "quantize", "dequantize", "right_shift", "left_shift", "where",
    "take", "broadcast_to", "nn.hardswish", "nn.relu6",
    "isnan",        # ONNX Clip's bounds check; folds away when the bounds are constants
})

#: ONNX op types accepted by the ONNX frontend (they import into the ops above).
ONNX_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Add", "Sub", "Mul", "Div", "Concat",
    "BatchNormalization", "Flatten", "Reshape", "Transpose", "Softmax",
    "LogSoftmax", "Sigmoid", "Tanh", "Exp", "Sqrt", "Pow", "Identity", "Constant",
    "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast", "Dropout", "ReduceMean",
    "ReduceSum", "ReduceMax", "Pad", "LeakyRelu", "HardSigmoid", "HardSwish",
    "Slice", "Split", "Max", "Min", "QuantizeLinear", "DequantizeLinear", "Neg",
    "Abs", "Floor", "Ceil", "Round", "Where", "Expand", "ConstantOfShape", "Gelu",
})


def placement(relax_op: str) -> str | None:
    """``'dlac'``, ``'host'`` or ``None`` (unplaceable) for a Relax op name."""
    name = relax_op.removeprefix("relax.")
    if name in DLAC_RELAX_OPS:
        return "dlac"
    if name in HOST_RELAX_OPS:
        return "host"
    return None
