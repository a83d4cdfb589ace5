"""Which ops dlac can place: on dLAC itself, or on the host (TVM CPU build).

Two vocabularies are checked: ONNX op types (before conversion, so an error
can name the ONNX node) and Relax ops (after import, for every frontend).
An op in neither list is refused with :class:`UnsupportedOpError`.
"""

from __future__ import annotations

from target_dlac.binary.hostgraph.vocabulary import OPS as _HOST_GRAPH_OPS

#: Relax ops that dLAC executes (alone or fused with their epilogue).
DLAC_RELAX_OPS = frozenset({
    "nn.conv2d", "matmul", "add", "multiply", "nn.relu", "clip",
    "nn.max_pool2d", "nn.avg_pool2d", "nn.adaptive_avg_pool2d", "mean",
    "nn.batch_norm", "reshape", "flatten", "permute_dims", "astype",
})

#: Relax ops the host can run through TVM's CPU build: exactly the closed vocabulary of the
#: binary's host graphs (target_dlac/binary/hostgraph/vocabulary.py ``OPS``), so "placeable on
#: the host" and "writable in a binary" cannot drift.  Every dLAC op is in it too: a layer
#: the lowering cannot take (a grouped conv, ...) falls back to the host.
HOST_RELAX_OPS = frozenset(op.removeprefix("relax.") for op in _HOST_GRAPH_OPS)

#: ONNX ops beyond the first list that TVM's importer converts into Relax ops the host runs;
#: each passes ONNX's own node tests (``python tools/conformance.py --ops ...``) or, for ops
#: whose node tests feed their parameters at run time (Resize scales, reduction axes), a
#: test with the constant parameters of an exported model (tests/compiler/test_onnx_host_ops.py).
#: Left out on purpose: Upsample (TVM's converter fails on opset 9's scales), Mod (TVM's floor_mod differs from ONNX on inf / NaN), SpaceToDepth
#: (TVM's converter gives wrong values in CRD mode), ops whose Relax op the host vocabulary
#: lacks (trigonometric inverses, bitwise ops, tril / triu, topk, scatter, one_hot, ...).
HOST_ONNX_OPS = ("PRelu", "Resize", "Erf", "Elu", "Selu", "Softplus", "Softsign", "Mish",
                 "ThresholdedRelu", "Shrink", "Log", "Reciprocal", "Sign", "Sin", "Cos",
                 "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or",
                 "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                 "ReduceLogSumExp", "ArgMax", "ArgMin", "CumSum", "Tile", "DepthToSpace",
                 "InstanceNormalization", "LayerNormalization", "GroupNormalization",
                 "MeanVarianceNormalization", "LpPool")

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
    # rewritten before import (compiler/onnx_rewrite.py): Sum as a chain of Add, LRN as
    # Mul / Reshape / AveragePool / Add / Pow / Div (TVM's own LRN needs avg_pool3d);
    # LSTM / GRU unrolled over the sequence (compiler/onnx_rnn.py)
    "Sum", "LRN", "LSTM", "GRU",
    *HOST_ONNX_OPS,
})


def placement(relax_op: str) -> str | None:
    """``'dlac'``, ``'host'`` or ``None`` (unplaceable) for a Relax op name."""
    name = relax_op.removeprefix("relax.")
    if name in DLAC_RELAX_OPS:
        return "dlac"
    if name in HOST_RELAX_OPS:
        return "host"
    return None
