"""Read a partitioned module's composite functions into plain specs for the lowering.

Each ``dlac.*`` composite (see ``docs/ir-conventions.md``) becomes a :class:`ConvSpec`,
:class:`PoolSpec`, :class:`EltSpec` or :class:`ViewSpec`.  Anything the dLAC lowering
cannot take (an attribute outside the encoding's fields, an unusual epilogue) raises
:class:`Unlowerable` with the reason; the codegen then runs that composite on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from target_dlac.core.ir import attrs_to_dict, const_np, dtype_of, ints, is_const, iter_bindings, op_name, shape_of


class Unlowerable(Exception):
    """This composite has no dLAC lowering (the reason is the message)."""


@dataclass
class ConvSpec:
    layer: str                 # Relax variable of the weighted op
    kind: str                  # conv2d | dense
    data: relax.Expr           # composite parameter holding the input
    weight: np.ndarray         # OIHW filters ([N, K, 1, 1] for dense)
    ternary: bool
    strides: tuple
    pads: tuple                # top, left, bottom, right
    depthwise: bool
    scale: np.ndarray | None   # per output channel
    bias: np.ndarray
    residual: relax.Expr | None
    act: str = "none"
    lo: float = 0.0
    hi: float = 0.0
    out_shape: tuple = ()


@dataclass
class PoolSpec:
    data: relax.Expr
    mode: str
    kernel: tuple
    strides: tuple
    pads: tuple
    count_pad: bool
    out_shape: tuple


@dataclass
class EltSpec:
    op: str                    # add | add_relu | relu
    args: list
    out_shape: tuple


@dataclass
class ViewSpec:
    data: relax.Expr
    out_shape: tuple


def _prim(v) -> float:
    """Python value of a clip bound (a FloatImm / IntImm in TVM 0.27, or a wrapper of one)."""
    while hasattr(v, "value") and not isinstance(v, (int, float)):
        v = v.value
    try:
        return float(v)
    except (TypeError, ValueError):
        raise Unlowerable(f"clip bound {v!r} is not a constant") from None


def _per_channel(c: np.ndarray, channels: int, what: str) -> np.ndarray:
    flat = np.asarray(c, np.float32)
    if flat.size != channels:
        raise Unlowerable(f"{what} of shape {flat.shape} is not one value per output channel")
    return flat.reshape(channels)


def parse(fn: relax.Function) -> ConvSpec | PoolSpec | EltSpec | ViewSpec:
    kind = str(fn.attrs["Composite"]).removeprefix("dlac.")
    binds = list(iter_bindings(fn))
    out_shape = shape_of(fn.body.body)
    if out_shape is None or dtype_of(fn.body.body) != "float32":
        raise Unlowerable("the output is not a static float32 tensor")
    for p in fn.params:
        if shape_of(p) is None or dtype_of(p) != "float32":
            raise Unlowerable(f"input {p.name} is not a static float32 tensor")
    if kind.startswith(("conv2d", "dense")):
        return _conv(kind, binds, out_shape)
    if kind in ("max_pool2d", "avg_pool2d", "global_avg_pool"):
        return _pool(binds[0].value, out_shape)
    if kind in ("add", "add_relu", "relu"):
        call = next(b.value for b in binds if op_name(b.value) in ("relax.add", "relax.nn.relu"))
        args = list(call.args)
        if any(shape_of(a) != out_shape for a in args):
            raise Unlowerable("element-wise operands differ in shape (broadcasting)")
        return EltSpec(kind, args, out_shape)
    if kind == "reshape":
        return ViewSpec(binds[0].value.args[0], out_shape)
    raise Unlowerable(f"composite {kind} has no dLAC lowering")


def _conv(kind: str, binds, out_shape) -> ConvSpec:
    layer = binds[0]
    call = layer.value
    w = const_np(call.args[1])
    ternary = w.dtype == np.int8 and bool(np.isin(w, (-1, 0, 1)).all())
    if w.dtype not in (np.int8, np.int16, np.float32):
        raise Unlowerable(f"weights of dtype {w.dtype}")
    in_shape = shape_of(call.args[0])
    if kind.startswith("dense"):
        k, nout = w.shape
        weight = np.ascontiguousarray(w.T).reshape(nout, k, 1, 1)
        strides, pads, depthwise = (1, 1), (0, 0, 0, 0), False
    else:
        a = attrs_to_dict(call.attrs)
        strides, pads = tuple(ints(a["strides"])), tuple(ints(a["padding"]))
        if ints(a["dilation"]) != [1, 1]:
            raise Unlowerable("dilated convolution")
        groups = int(a["groups"])
        depthwise = groups > 1
        if depthwise and not (groups == in_shape[1] == w.shape[0] and w.shape[1] == 1):
            raise Unlowerable(f"grouped convolution with {groups} groups")
        weight = w
    if max(weight.shape[2:]) > 15 or max(strides) > 15:
        raise Unlowerable(f"kernel {weight.shape[2:]} or stride {strides} exceeds the 4-bit fields")
    nout = weight.shape[0]
    spec = ConvSpec(layer.var.name, "dense" if kind.startswith("dense") else "conv2d", call.args[0],
                    weight, ternary, strides, pads, depthwise, None, np.zeros(nout, np.float32), None,
                    out_shape=tuple(out_shape))
    if w.dtype == np.int8 and np.abs(w).max(initial=0) > 127:
        raise Unlowerable("int8 weight -128 is outside the symmetric range")
    if w.dtype == np.int16 and (depthwise or np.abs(w).max(initial=0) > 255):
        raise Unlowerable("int16 weights are SWIS values (|w| <= 255, not depthwise)")
    prev, seen_bias = layer.var, False
    for b in binds[1:]:
        v, name = b.value, op_name(b.value)
        args = list(v.args) if isinstance(v, relax.Call) else []
        if name == "relax.multiply" and args[0].same_as(prev) and is_const(args[1]) \
                and spec.scale is None and not seen_bias:
            spec.scale = _per_channel(const_np(args[1]), nout, "scale")
        elif name == "relax.add" and args[0].same_as(prev) and is_const(args[1]) and not seen_bias:
            spec.bias, seen_bias = _per_channel(const_np(args[1]), nout, "bias"), True
        elif name == "relax.add" and spec.residual is None and any(a.same_as(prev) for a in args):
            other = args[1] if args[0].same_as(prev) else args[0]
            if shape_of(other) != tuple(out_shape):
                raise Unlowerable("residual operand does not match the output shape")
            spec.residual = other
        elif name == "relax.nn.relu":
            spec.act = "relu"
        elif name == "relax.clip":
            spec.act, spec.lo, spec.hi = "clip", _prim(args[1]), _prim(args[2])
        else:
            raise Unlowerable(f"epilogue op {name} is not part of the dLAC epilogue")
        prev = b.var
    return spec


def _pool(call: relax.Call, out_shape) -> PoolSpec:
    name = op_name(call)
    n, c, h, w = shape_of(call.args[0])
    if name in ("relax.mean", "relax.nn.adaptive_avg_pool2d"):
        return PoolSpec(call.args[0], "avg", (h, w), (1, 1), (0, 0, 0, 0), False, tuple(out_shape))
    a = attrs_to_dict(call.attrs)
    if ints(a["dilation"]) != [1, 1] or a.get("layout", "NCHW") != "NCHW":
        raise Unlowerable("dilated or non-NCHW pooling")
    kernel, strides, pads = tuple(ints(a["pool_size"])), tuple(ints(a["strides"])), tuple(ints(a["padding"]))
    oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    if (n, c, oh, ow) != tuple(out_shape):
        raise Unlowerable("ceil_mode pooling (output larger than the floor formula)")
    if max(pads[0], pads[2]) >= kernel[0] or max(pads[1], pads[3]) >= kernel[1]:
        raise Unlowerable(f"pool padding {pads} is not smaller than the window {kernel}")
    if max(pads) > 15 or max(kernel) > 4095 or max(strides) > 255 or w > 4095:
        raise Unlowerable("pool window, stride, padding or width exceeds the encoding's fields")
    mode = "max" if name == "relax.nn.max_pool2d" else "avg"
    return PoolSpec(call.args[0], mode, kernel, strides, pads, bool(a.get("count_include_pad", False)),
                    tuple(out_shape))
