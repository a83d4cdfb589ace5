"""The closed vocabulary of host and reference graphs: the operators (:data:`OPS`), the
schema of their attributes (:data:`ATTRS`), the dtypes, and the bounds (:data:`LIMITS`).
Plain Python: nothing here imports TVM."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds on what one section may describe (documented in docs/isa.md, "Limits").
    Measured: torchvision ResNet-50 at 224x224 (the largest model of the zoo) has a REF
    graph of 102 MB uncompressed and 177 nodes with fp32 weights (32 MB, 229 nodes
    ternary), and 4.1 G multiply-accumulates."""
    decompressed: int = 512 << 20          # bytes after zlib
    json_bytes: int = 64 << 20
    functions: int = 4096
    nodes: int = 50_000                    # over all functions
    params: int = 256                      # per function
    args: int = 64                         # operands of one node (tuple fields included)
    depth: int = 4                         # nesting of tuple / item operands
    rank: int = 8
    elements: int = 1 << 28                # of any one tensor (1 GiB of float32)
    work: int = 1 << 35                    # estimated operations of a whole graph (VGG19 224: 2.0e10)
    name: int = 128                        # characters of a function or parameter name
    constants: int = 1 << 30               # bytes of all constants once decoded (CONSTS weights too)
    tiles: int = 1 << 20                   # weight blocks the constants name in CONSTS
    swis_filters: int = 1 << 20            # SWIS filter records decoded (a Python loop, ~25 us each)


LIMITS = Limits()

DTYPES = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
          "int32": 4, "int64": 8, "bool": 1}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---- the vocabulary ---------------------------------------------------------------------
# attribute validators: value (JSON) -> normalized value, or raise ValueError
def _int(lo, hi):
    def check(v):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"an integer in [{lo}, {hi}]")
        return v
    return check


def _ints(lo, hi, lengths, optional=False):
    elem = _int(lo, hi)

    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, list) or len(v) not in lengths:
            raise ValueError(f"a list of {' or '.join(map(str, lengths))} integers in [{lo}, {hi}]")
        return [elem(e) for e in v]
    return check


def _floats(lo, hi, lengths):
    elem = _float(lo, hi)

    def check(v):
        if not isinstance(v, list) or len(v) not in lengths:
            raise ValueError(f"a list of {' or '.join(map(str, lengths))} finite numbers in [{lo}, {hi}]")
        return [elem(e) for e in v]
    return check


def _optional(check):
    def opt(v):
        return None if v is None else check(v)
    return opt


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _float(lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"a finite number in [{lo}, {hi}]")
        return float(v)
    return check


def _enum(*values):
    def check(v):
        if v not in values:
            raise ValueError(f"one of {values}")
        return v
    return check


def _dtype(optional=False):
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or v not in DTYPES:
            raise ValueError(f"a dtype of {tuple(DTYPES)}" + (" or null" if optional else ""))
        return v
    return check


def _axis_or_axes(v):
    if v is None:
        return None
    return _ints(-LIMITS.rank, LIMITS.rank - 1, range(0, LIMITS.rank + 1))(v)


BIG = 1 << 16
_AXIS = _int(-LIMITS.rank, LIMITS.rank - 1)
_WINDOW = _ints(1, BIG, (2,))
_PAD = _ints(0, BIG, (2, 4))
_AXES = _ints(-LIMITS.rank, LIMITS.rank - 1, range(1, LIMITS.rank + 1))
_EPS = _float(0.0, 1.0)

#: attribute type -> {field: validator}; a node's attrs must have exactly these fields
ATTRS = {
    "relax.attrs.Conv2DAttrs": {
        "strides": _WINDOW, "padding": _PAD, "dilation": _WINDOW, "groups": _int(1, BIG),
        "data_layout": _enum("NCHW"), "kernel_layout": _enum("OIHW"), "out_layout": _enum("NCHW"),
        "out_dtype": _dtype(optional=True)},
    "relax.attrs.Pool2DAttrs": {
        "pool_size": _WINDOW, "strides": _WINDOW, "dilation": _WINDOW, "padding": _PAD,
        "ceil_mode": _bool, "count_include_pad": _bool, "layout": _enum("NCHW"),
        "out_layout": _enum("NCHW")},
    "relax.attrs.AdaptivePool2DAttrs": {
        "output_size": _ints(1, BIG, (1, 2), optional=True), "layout": _enum("NCHW"),
        "out_layout": _enum("NCHW")},
    "relax.attrs.StridedSliceAttrs": {"assume_inbound": _enum(False)},
    "relax.attrs.ConcatAttrs": {"axis": _AXIS},
    "relax.attrs.SplitAttrs": {"indices_or_sections": lambda v: (
        _int(1, BIG)(v) if isinstance(v, int) else _ints(0, 1 << 31, range(1, 257))(v)), "axis": _AXIS},
    "relax.attrs.SoftmaxAttrs": {"axis": _AXIS},
    "relax.attrs.StatisticalAttrs": {"axis": _axis_or_axes, "keepdims": _bool},
    "relax.attrs.PermuteDimsAttrs": {"axes": _axis_or_axes},
    "relax.attrs.AstypeAttrs": {"dtype": _dtype()},
    "relax.attrs.MatmulAttrs": {"out_dtype": _dtype(optional=True)},
    "relax.attrs.PadAttrs": {"pad_width": _ints(0, BIG, range(2, 2 * LIMITS.rank + 1, 2)),
                             "pad_value": _float(-3.4e38, 3.4e38), "pad_mode": _enum("constant")},
    "relax.attrs.QuantizeAttrs": {"out_dtype": _dtype(), "axis": _AXIS},
    "relax.attrs.InitAttrs": {"dtype": _dtype(optional=True)},
    "relax.attrs.TakeAttrs": {"axis": _AXIS, "mode": _enum("fast", "clip", "wrap")},
    "relax.attrs.SqueezeAttrs": {"axis": _axis_or_axes},
    "relax.attrs.ExpandDimsAttrs": {"axis": _ints(-LIMITS.rank, LIMITS.rank - 1, range(1, LIMITS.rank + 1))},
    "relax.attrs.LeakyReluAttrs": {"alpha": _float(-1e6, 1e6)},
    "relax.attrs.DropoutAttrs": {"rate": _float(0.0, 1.0)},
    "relax.attrs.LayerNormAttrs": {"axes": _AXES, "epsilon": _EPS, "center": _bool, "scale": _bool},
    "relax.attrs.GroupNormAttrs": {"num_groups": _int(1, BIG), "channel_axis": _AXIS, "axes": _AXES,
                                   "epsilon": _EPS, "center": _bool, "scale": _bool},
    "relax.attrs.PReluAttrs": {"axis": _AXIS},
    "relax.attrs.ScanopAttrs": {"axis": _optional(_AXIS), "dtype": _dtype(optional=True), "exclusive": _bool},
    "relax.attrs.Resize2DAttrs": {
        "roi": _floats(-BIG, BIG, (4,)), "layout": _enum("NCHW"),
        "method": _enum("nearest_neighbor", "linear", "cubic"),
        "coordinate_transformation_mode": _enum("half_pixel", "align_corners", "asymmetric",
                                                "pytorch_half_pixel", "tf_half_pixel_for_nn"),
        "rounding_method": _enum("round", "floor", "ceil", "round_prefer_floor", "round_prefer_ceil", ""),
        "cubic_alpha": _float(-BIG, BIG), "cubic_exclude": _int(0, 1),
        "extrapolation_value": _float(-3.4e38, 3.4e38), "out_dtype": _dtype(optional=True)},
    "relax.attrs.TileAttrs": {"repeats": _ints(1, BIG, range(1, LIMITS.rank + 1))},
    "relax.attrs.FlipAttrs": {"axis": _AXIS},
    "relax.attrs.SliceScatterAttrs": {"axis": _AXIS},
    "relax.attrs.RepeatAttrs": {"repeats": _int(1, BIG), "axis": _optional(_AXIS)},
    "relax.attrs.SoftplusAttrs": {"beta": _float(1e-6, 1e6), "threshold": _float(0.0, 1e6)},
    "relax.attrs.ArgmaxArgminAttrs": {"axis": _optional(_AXIS), "keepdims": _bool},
    "relax.attrs.BatchNormAttrs": {"axis": _AXIS, "epsilon": _float(0.0, 1.0), "center": _bool,
                                   "scale": _bool, "momentum": _float(0.0, 1.0), "training": _enum(False)},
}

# operand kinds: T tensor, L tuple of tensors, S shape, P scalar, I tuple of integer scalars
_UNARY = ("T",)
_BINARY = ("TT",)
#: Relax op -> (accepted operand patterns, attribute type or None)
OPS = {
    **{f"relax.{n}": (_UNARY, None) for n in (
        "nn.relu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "negative", "abs", "round", "floor",
        "ceil", "isnan", "flatten", "nn.gelu", "nn.silu",
        "erf", "log", "sign", "square", "sin", "cos", "trunc", "logical_not", "nn.gelu_tanh", "nn.selu")},
    **{f"relax.{n}": (_BINARY, None) for n in (
        "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "right_shift",
        "left_shift", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
        "logical_and", "logical_or", "floor_divide", "floor_mod", "mod")},
    "relax.where": (("TTT",), None),
    "relax.clip": (("TPP",), None),
    "relax.reshape": (("TS",), None),
    "relax.broadcast_to": (("TS",), None),
    "relax.nn.conv2d": (_BINARY, "relax.attrs.Conv2DAttrs"),
    "relax.nn.max_pool2d": (_UNARY, "relax.attrs.Pool2DAttrs"),
    "relax.nn.avg_pool2d": (_UNARY, "relax.attrs.Pool2DAttrs"),
    "relax.nn.adaptive_avg_pool2d": (_UNARY, "relax.attrs.AdaptivePool2DAttrs"),
    "relax.strided_slice": (("TIII", "TIIII"), "relax.attrs.StridedSliceAttrs"),
    "relax.concat": (("L",), "relax.attrs.ConcatAttrs"),
    "relax.split": (_UNARY, "relax.attrs.SplitAttrs"),
    "relax.nn.softmax": (_UNARY, "relax.attrs.SoftmaxAttrs"),
    "relax.nn.log_softmax": (_UNARY, "relax.attrs.SoftmaxAttrs"),
    **{f"relax.{n}": (_UNARY, "relax.attrs.StatisticalAttrs") for n in (
        "mean", "sum", "max", "min", "prod", "variance", "std")},
    "relax.permute_dims": (_UNARY, "relax.attrs.PermuteDimsAttrs"),
    "relax.astype": (_UNARY, "relax.attrs.AstypeAttrs"),
    "relax.matmul": (_BINARY, "relax.attrs.MatmulAttrs"),
    "relax.nn.pad": (_UNARY, "relax.attrs.PadAttrs"),
    "relax.quantize": (("TTT",), "relax.attrs.QuantizeAttrs"),
    "relax.dequantize": (("TTT",), "relax.attrs.QuantizeAttrs"),
    "relax.zeros": (("S",), "relax.attrs.InitAttrs"),
    "relax.ones": (("S",), "relax.attrs.InitAttrs"),
    "relax.full": (("ST",), "relax.attrs.InitAttrs"),
    "relax.zeros_like": (_UNARY, "relax.attrs.InitAttrs"),
    "relax.ones_like": (_UNARY, "relax.attrs.InitAttrs"),
    "relax.arange": (("PPP",), "relax.attrs.InitAttrs"),      # start, end, step (swin's masks)
    "relax.full_like": (_BINARY, "relax.attrs.InitAttrs"),
    "relax.nn.layer_norm": (("TTT",), "relax.attrs.LayerNormAttrs"),
    "relax.nn.group_norm": (("TTT",), "relax.attrs.GroupNormAttrs"),
    "relax.nn.prelu": (_BINARY, "relax.attrs.PReluAttrs"),
    "relax.cumsum": (_UNARY, "relax.attrs.ScanopAttrs"),
    "relax.image.resize2d": (("TS",), "relax.attrs.Resize2DAttrs"),
    "relax.tile": (_UNARY, "relax.attrs.TileAttrs"),
    "relax.flip": (_UNARY, "relax.attrs.FlipAttrs"),
    "relax.slice_scatter": (("TTPPP",), "relax.attrs.SliceScatterAttrs"),   # data, src, start, end, step
    "relax.repeat": (_UNARY, "relax.attrs.RepeatAttrs"),
    "relax.nn.softplus": (_UNARY, "relax.attrs.SoftplusAttrs"),
    "relax.argmax": (_UNARY, "relax.attrs.ArgmaxArgminAttrs"),
    "relax.argmin": (_UNARY, "relax.attrs.ArgmaxArgminAttrs"),
    "relax.take": (_BINARY, "relax.attrs.TakeAttrs"),
    "relax.squeeze": (_UNARY, "relax.attrs.SqueezeAttrs"),
    "relax.expand_dims": (_UNARY, "relax.attrs.ExpandDimsAttrs"),
    "relax.nn.leakyrelu": (_UNARY, "relax.attrs.LeakyReluAttrs"),
    "relax.nn.dropout": (_UNARY, "relax.attrs.DropoutAttrs"),
    "relax.nn.batch_norm": (("TTTTT",), "relax.attrs.BatchNormAttrs"),
}

def attr_problem(op: str, attrs) -> str | None:
    """What is wrong with ``attrs`` (JSON: ``None`` or ``{"type", "fields"}``) for ``op`` of
    :data:`OPS`, or None.  The one check of the schema: graph loading (``check.py``) and the
    frontends (``compiler.frontend_common.check_ops``, naming the model's layer) use it."""
    attrs_type = OPS[op][1]
    if attrs_type is None:
        return None if attrs is None else f"{op} takes no attributes"
    if not isinstance(attrs, dict) or set(attrs) != {"type", "fields"} or attrs["type"] != attrs_type:
        return f"attributes must be {{'type': {attrs_type!r}, 'fields': {{...}}}}"
    schema, fields = ATTRS[attrs_type], attrs["fields"]
    if not isinstance(fields, dict) or set(fields) != set(schema):
        return f"attributes must have exactly the fields {sorted(schema)}"
    for k, check in schema.items():
        try:
            check(fields[k])
        except ValueError as e:
            return f"attribute {k}={str(fields[k])[:40]} must be {e}"
    return None


#: estimated operations per element (of the largest operand or result) for ops that make
#: several passes or read several inputs per output; every other op counts 1 (conv2d,
#: matmul and pooling are estimated from their reduction, in rebuild._work)
WORK = {
    "relax.nn.layer_norm": 8, "relax.nn.group_norm": 8, "relax.nn.batch_norm": 4,
    "relax.variance": 3, "relax.std": 3, "relax.nn.softmax": 4, "relax.nn.log_softmax": 4,
    "relax.image.resize2d": 16,            # up to 4 x 4 taps (cubic)
    "relax.erf": 4, "relax.nn.gelu": 4, "relax.nn.gelu_tanh": 4, "relax.nn.softplus": 4,
    "relax.cumsum": 2,
}


def _shape(v, what: str) -> tuple:
    if (not isinstance(v, list) or len(v) > LIMITS.rank
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 31 for d in v)):
        raise ValueError(f"{what} must be a list of at most {LIMITS.rank} non-negative integers")
    if math.prod(v) > LIMITS.elements:
        raise ValueError(f"{what} {v} has more than {LIMITS.elements} elements")
    return tuple(v)
