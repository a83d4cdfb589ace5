"""Read a partitioned module's composite functions into plain specs for the lowering.

Each ``dlac.*`` composite (see ``docs/ir-conventions.md``) becomes a :class:`ConvSpec`, :class:`PoolSpec`,
:class:`EltSpec`, :class:`ViewSpec`, :class:`MatmulSpec` or :class:`ConcatSpec`.  Anything the dLAC lowering
cannot take (an attribute outside the encoding's fields, an unusual epilogue) raises
:class:`Unlowerable` with the reason; the codegen then runs that composite on the host.

A layer's precision and weight format come from its :class:`~target_dlac.core.plan.LayerPlan`
(given by the codegen, else the composite's ``dlac.precision`` / ``dlac.weight_format``
attributes written by the partitioner, else full precision); the weights' dtype is only
checked against the plan, never used to guess it.  :func:`conv_layer` and
:func:`conv_layers` give the :class:`ConvLayer` of a layer without lowering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from target_dlac.core.ir import attrs_to_dict, const_np, dtype_of, ints, is_const, iter_bindings, op_name, shape_of
from target_dlac.core.plan import LayerPlan, WeightFormat, fp32_plan
from target_dlac.isa.encoding import ALU_ACTS, FLOAT_ACTS, MAX_CONV_STRIDE, MAX_KERNEL, MAX_PAD, MAX_POOL_DIM, MAX_POOL_KERNEL, \
    MAX_POOL_STRIDE
from target_dlac.isa.formats import facts
from target_dlac.codegen.layer_weights import LayerWeights
from target_dlac.codegen.schedule import ConvShape


class Unlowerable(Exception):
    """This composite has no dLAC lowering (the reason is the message)."""


@dataclass
class ConvSpec:
    layer: str                 # Relax variable of the weighted op
    kind: str                  # conv2d | dense
    data: relax.Expr           # composite parameter holding the input
    weight: np.ndarray         # OIHW filters ([N, K, 1, 1] for dense)
    plan: LayerPlan
    strides: tuple
    pads: tuple                # top, left, bottom, right
    depthwise: bool
    groups: int = field(default=1, kw_only=True)    # grouped (not depthwise) convolution: G > 1
    scale: np.ndarray | None   # per output channel
    bias: np.ndarray
    residual: relax.Expr | None
    act: str = "none"          # an EPI activation (isa.ACTS, float names)
    lo: float = 0.0            # clip bounds; leaky_relu: the slope; relu: its threshold T
    hi: float = 0.0
    out_shape: tuple = ()
    slopes: np.ndarray | None = None    # prelu: one slope per output channel

    @property
    def epi_params(self) -> list:
        """The per-channel vectors of the layer's float EPI parameter block, in order: the
        scale (if any), the bias, PReLU's slopes (``isa.epi_param_layout``)."""
        return ([self.scale] if self.scale is not None else []) + [self.bias] + \
            ([self.slopes] if self.act == "prelu" else [])

    @property
    def weight_format(self) -> WeightFormat:
        return self.plan.weight_format

    @property
    def ternary(self) -> bool:
        return self.plan.weight_format is WeightFormat.TERNARY


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
    op: str                    # add | add_relu | relu | a unary activation (isa.ALU_ACTS)
    args: list
    out_shape: tuple


@dataclass
class ViewSpec:
    data: relax.Expr
    out_shape: tuple


@dataclass
class MatmulSpec:
    """``a @ b`` of two computed tensors (``dlac.matmul``; lowered by ``codegen/matmul.py``)."""
    a: relax.Expr
    b: relax.Expr
    out_shape: tuple


@dataclass
class ConcatSpec:
    """``concat(args, axis)`` (``dlac.concat``; lowered by ``codegen/concat.py``)."""
    args: list
    axis: int
    out_shape: tuple


@dataclass
class ConvLayer:
    """A conv / dense layer as the codegen sees it before scheduling it: what the
    tuner searches over and what a tuning-log record is keyed by."""
    name: str                  # display (source) name
    op: str                    # conv2d | dwconv2d | dense
    precision: str             # the plan's precision
    shape: ConvShape
    weights: LayerWeights
    has_scale: bool
    weight_format: WeightFormat = WeightFormat.FLOAT32     # as lowered (the mode's format)


def conv_shape(spec: ConvSpec, x_shape: tuple, x_dtype: str, fmt: WeightFormat, act: str | None = None) -> ConvShape:
    """The :class:`ConvShape` of a conv / dense composite on an input of ``x_shape``; ``act``:
    the EPI activation as the mode lowers it (default: the composite's)."""
    act = spec.act if act is None else act
    w = spec.weight
    ternary, swis = fmt is WeightFormat.TERNARY, fmt is WeightFormat.SWIS
    if spec.kind == "dense":
        b, k = x_shape
        return ConvShape(b, k, 1, 1, w.shape[0], 1, 1, 1, 1, (0, 0, 0, 0), 1, 1, False,
                         spec.residual is not None, ternary, x_dtype, swis, act=act)
    n, c, h, wd = x_shape
    _, f, oh, ow = spec.out_shape
    return ConvShape(n, c, h, wd, f, w.shape[2], w.shape[3], spec.strides[0], spec.strides[1],
                     spec.pads, oh, ow, spec.depthwise, spec.residual is not None, ternary,
                     x_dtype, swis, groups=spec.groups, act=act)


def conv_layer(spec: ConvSpec, x_shape: tuple, x_dtype: str, weights: np.ndarray, fmt: WeightFormat,
               has_scale: bool, name: str | None = None, act: str | None = None) -> ConvLayer:
    """The :class:`ConvLayer` of ``spec`` holding ``weights`` (OIHW) in format ``fmt``; ``act``
    as in :func:`conv_shape`."""
    sw = spec.plan.swis if fmt is WeightFormat.SWIS else None
    op = "dense" if spec.kind == "dense" else ("dwconv2d" if spec.depthwise else "conv2d")
    return ConvLayer(name or spec.plan.name, op, spec.plan.precision,
                     conv_shape(spec, x_shape, x_dtype, fmt, act),
                     LayerWeights(weights, fmt is WeightFormat.TERNARY, spec.depthwise, sw, fmt=fmt,
                                  groups=spec.groups),
                     has_scale, fmt)


def composite_calls(mod):
    """``(region-local variable name, composite function)`` of every composite ``main``
    calls through its dLAC regions, in program order (the order the codegen lowers them)."""
    for b in iter_bindings(mod["main"]):
        v = b.value
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.GlobalVar)):
            continue
        func = mod[v.op]
        if func.attrs is None or "Codegen" not in func.attrs:
            continue
        comps = {}
        for rb in iter_bindings(func):
            rv = rb.value
            if isinstance(rv, relax.Function):
                comps[rb.var] = rv
            elif isinstance(rv, relax.Call) and isinstance(rv.op, relax.Var) and rv.op in comps:
                yield rb.var.name, comps[rv.op]


def conv_layers(mod, plans: dict) -> list[ConvLayer]:
    """Every conv / dense layer the float32 codegen lowers from the partitioned ``mod``
    (``plans``: ``{layer var: LayerPlan}``), in program order, without lowering or
    packing anything: what the tuner lists."""
    out = []
    for _, fn in composite_calls(mod):
        kind = str(fn.attrs["Composite"]).removeprefix("dlac.")
        if not kind.startswith(("conv2d", "dense")):
            continue
        try:
            spec = parse(fn, plans)
        except Unlowerable:
            continue
        out.append(conv_layer(spec, shape_of(spec.data), "float32", spec.weight, spec.weight_format,
                              spec.scale is not None))
    return out


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


def plan_from_attrs(fn: relax.Function, var: str, op: str, weight_shape: tuple) -> LayerPlan | None:
    """The plan facts the partitioner attached to a composite (``dlac.precision``,
    ``dlac.weight_format``), without the decomposition; ``None`` if it has none."""
    a = fn.attrs
    if a is None or "dlac.weight_format" not in a:
        return None
    prec = str(a["dlac.precision"]) if "dlac.precision" in a else "fp32"
    return LayerPlan(var, var, op, tuple(weight_shape), prec, "composite attributes",
                     WeightFormat(str(a["dlac.weight_format"])))


def as_oihw(w: np.ndarray, kind: str) -> np.ndarray:
    """A layer weight in the codegen's layout: OIHW; a dense ``(K, N)`` as ``[N, K, 1, 1]``."""
    if kind.startswith("dense"):
        k, nout = w.shape
        return np.ascontiguousarray(w.T).reshape(nout, k, 1, 1)
    return w


def parse(fn: relax.Function, plans: dict | None = None) -> ConvSpec | PoolSpec | EltSpec | ViewSpec:
    """The spec of a composite; ``plans``: ``{layer var: LayerPlan}``."""
    kind = str(fn.attrs["Composite"]).removeprefix("dlac.")
    binds = list(iter_bindings(fn))
    out_shape = shape_of(fn.body.body)
    if out_shape is None or dtype_of(fn.body.body) != "float32":
        raise Unlowerable("the output is not a static float32 tensor")
    for p in fn.params:
        if shape_of(p) is None or dtype_of(p) != "float32":
            raise Unlowerable(f"input {p.name} is not a static float32 tensor")
    if kind.startswith(("conv2d", "dense")):
        return _conv(kind, binds, out_shape, fn, plans or {})
    if kind in ("max_pool2d", "avg_pool2d", "global_avg_pool"):
        return _pool(binds[0].value, out_shape)
    if kind in ("add", "add_relu", "relu"):
        call = next(b.value for b in binds if op_name(b.value) in ("relax.add", "relax.nn.relu"))
        args = list(call.args)
        if any(shape_of(a) != out_shape for a in args):
            raise Unlowerable("element-wise operands differ in shape (broadcasting)")
        return EltSpec(kind, args, out_shape)
    if kind in ALU_ACTS:
        x = fn.params[0]
        if len(fn.params) != 1 or shape_of(x) != out_shape:
            raise Unlowerable(f"{kind}: not one operand of the output's shape")
        _match_act(kind, _act_tree(binds, x), None, int(out_shape[1]) if len(out_shape) > 1 else 1)
        return EltSpec(kind, [x], out_shape)
    if kind == "reshape":
        return ViewSpec(binds[0].value.args[0], out_shape)
    if kind == "matmul":
        return MatmulSpec(*binds[0].value.args[:2], out_shape)
    if kind == "concat":
        return ConcatSpec(list(binds[0].value.args[0].fields), int(attrs_to_dict(binds[0].value.attrs)["axis"]),
                          tuple(out_shape))
    raise Unlowerable(f"composite {kind} has no dLAC lowering")


def _conv(kind: str, binds, out_shape, fn, plans: dict) -> ConvSpec:
    layer = binds[0]
    call = layer.value
    w = const_np(call.args[1])
    op = "dense" if kind.startswith("dense") else "conv2d"
    var = layer.var.name
    plan = plans.get(var) or plan_from_attrs(fn, var, op, w.shape) or fp32_plan(var, op, w.shape)
    fmt = facts(plan.weight_format)
    if w.dtype != np.dtype(fmt.dtype):
        raise Unlowerable(f"weights of dtype {w.dtype}; the layer's plan says {plan.weight_format} "
                          f"weights (held as {fmt.dtype})")
    in_shape = shape_of(call.args[0])
    weight = as_oihw(w, kind)
    groups = 1
    if op == "dense":
        strides, pads, depthwise = (1, 1), (0, 0, 0, 0), False
    else:
        a = attrs_to_dict(call.attrs)
        strides, pads = tuple(ints(a["strides"])), tuple(ints(a["padding"]))
        if ints(a["dilation"]) != [1, 1]:
            raise Unlowerable("dilated convolution")
        groups = int(a["groups"])
        # depthwise (one channel per filter, as many filters as channels): its own TACC/MAC
        # form; any other grouping: G convolutions on channel slices (schedule.channel_tiles)
        depthwise = groups > 1 and groups == in_shape[1] == w.shape[0] and w.shape[1] == 1
        if depthwise:
            groups = 1
        elif groups > 1 and (in_shape[1] % groups or w.shape[0] % groups or w.shape[1] * groups != in_shape[1]):
            raise Unlowerable(f"grouped convolution with {groups} groups: {in_shape[1]} input channels "
                              f"and weights {tuple(w.shape)} do not split into {groups} groups")
    if max(weight.shape[2:]) > MAX_KERNEL or max(strides) > MAX_CONV_STRIDE:
        raise Unlowerable(f"kernel {weight.shape[2:]} or stride {strides} exceeds the encoding's "
                          f"fields ({MAX_KERNEL}, {MAX_CONV_STRIDE})")
    nout = weight.shape[0]
    spec = ConvSpec(var, op, call.args[0], weight, plan, strides, pads, depthwise, None,
                    np.zeros(nout, np.float32), None, out_shape=tuple(out_shape), groups=groups)
    if fmt.integer and np.abs(w).max(initial=0) > fmt.max_magnitude:
        raise Unlowerable(f"{plan.weight_format} weights beyond the format's magnitude "
                          f"{fmt.max_magnitude}")
    if plan.weight_format is WeightFormat.SWIS and depthwise:
        raise Unlowerable("SWIS weights of a depthwise layer (it has no input-channel groups)")
    act = kind.split("_", 1)[1] if "_" in kind else ""
    prev, seen_bias, gt = layer.var, False, None
    for i, b in enumerate(binds[1:], 1):
        v, name = b.value, op_name(b.value)
        args = list(v.args) if isinstance(v, relax.Call) else []
        if seen_bias and act in FLOAT_ACTS:        # the rest is the activation, on the biased value
            _match_act(act, _act_tree(binds[i:], prev), spec, nout)
            return spec
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
        elif name == "relax.greater" and args[0].same_as(prev) and is_const(args[1]) and gt is None:
            spec.lo, gt = float(const_np(args[1]).reshape(-1)[0]), b.var     # where(x > T, x, 0): relu, lo = T
            continue
        elif name == "relax.where" and gt is not None and args[0].same_as(gt) and args[1].same_as(prev) \
                and is_const(args[2]) and not const_np(args[2]).any():
            spec.act = "relu"
        elif name == "relax.clip":
            spec.act, spec.lo, spec.hi = "clip", _prim(args[1]), _prim(args[2])
        else:
            raise Unlowerable(f"epilogue op {name} is not part of the dLAC epilogue")
        prev = b.var
    return spec


def _act_tree(binds, x) -> tuple:
    """The activation bindings ``binds`` applied to ``x`` as a tree (the last one is the
    root): ``x`` as ``"x"``, a call as ``(op, args, attrs)``, a scalar constant or clip bound
    as its float, a non-scalar constant as its array."""
    env = []

    def term(a):
        if a.same_as(x):
            return "x"
        for var, t in env:
            if a.same_as(var):
                return t
        if is_const(a):
            c = const_np(a)
            return float(c) if c.ndim == 0 else c
        return _prim(a)         # a clip bound; anything else is refused there

    for b in binds:
        if op_name(b.value) is None:
            raise Unlowerable("activation binding is not an op call")
        env.append((b.var, (op_name(b.value), tuple(term(a) for a in b.value.args), attrs_to_dict(b.value.attrs))))
    return env[-1][1]


def _is(t, op: str, *args) -> bool:
    """Tree ``t`` is ``op(args)`` (add, multiply: either order); an arg ``None`` matches
    anything, a tuple ``(op, args...)`` a call."""
    if not (isinstance(t, tuple) and t[0] == op and len(t[1]) == len(args)):
        return False
    orders = [t[1], t[1][::-1]] if op in ("relax.add", "relax.multiply") else [t[1]]
    return any(all(a is None or (_is(b, *a) if isinstance(a, tuple) else (isinstance(b, (str, float)) and a == b))
                   for a, b in zip(args, got)) for got in orders)


def _relu6(v) -> tuple:
    return (("relax.clip", v, 0.0, 6.0),             # clip(v, 0, 6), or torch's two clips
            ("relax.clip", ("relax.clip", v, 0.0, float("inf")), -float("inf"), 6.0))


_RELU6_X3 = _relu6(("relax.add", "x", 3.0))
_FORMS = {     # act -> the trees that compute it exactly as dLAC's activation of that name
    "sigmoid": [("relax.sigmoid", "x")], "tanh": [("relax.tanh", "x")], "gelu": [("relax.nn.gelu", "x")],
    "gelu_tanh": [("relax.nn.gelu_tanh", "x")], "leaky_relu": [("relax.nn.leakyrelu", "x")],
    "silu": [("relax.nn.silu", "x"), ("relax.multiply", "x", ("relax.sigmoid", "x"))],
    "hardsigmoid": [("relax.divide", r, 6.0) for r in _RELU6_X3]
    + [("relax.divide", r, 6.0) for r in _relu6("x")],      # clip(x, 0, 6) / 6: the + 3 is in the bias
    "hardswish": [("relax.divide", ("relax.multiply", "x", r), 6.0) for r in _RELU6_X3]     # torch
    + [("relax.multiply", "x", ("relax.divide", r, 6.0)) for r in _RELU6_X3],     # ONNX: within an ulp
    "prelu": [("relax.nn.prelu", "x", None), ("relax.where", ("relax.greater", "x", 0.0), "x",
                                              ("relax.multiply", "x", None))],
}


def _match_act(act: str, t, spec: "ConvSpec | None", nout: int) -> None:
    """Check that tree ``t`` (:func:`_act_tree`) is a form of ``act`` (:data:`_FORMS`) and put
    its parameters into ``spec`` (leaky_relu's slope, PReLU's per-channel slopes)."""
    form = next((f for f in _FORMS.get(act, []) if _is(t, *f)), None)
    if form is None or act == "prelu" and form[0] == "relax.nn.prelu" and int(t[2].get("axis", 1)) != 1 \
            and np.size(t[1][1]) != 1:       # nn.prelu's slopes along the channel axis, or one slope
        raise Unlowerable(f"the {act} composite does not compute dLAC's {act}")
    folded = act == "hardsigmoid" and "relax.add" not in str(form)
    if spec is None:
        if folded:
            raise Unlowerable("hardsigmoid without its + 3")
        return
    spec.act = act
    if folded:       # the frontend folded the + 3 into the bias: EPI adds it back (within float32 rounding)
        spec.bias = (spec.bias - np.float32(3)).astype(np.float32)
    if act == "leaky_relu":
        spec.lo = _prim(t[2]["alpha"])
    elif act == "prelu":
        pair = t[1] if form[0] == "relax.nn.prelu" else t[1][2][1]         # (x, slope), either order
        c = np.asarray(pair[1] if isinstance(pair[0], str) else pair[0], np.float32)
        dims = (1,) * (len(spec.out_shape) - c.ndim) + c.shape
        along_axis = form[0] == "relax.nn.prelu" and c.ndim == 1      # relax.nn.prelu(x, a, axis=1)
        if c.size != 1 and not (along_axis and c.size == nout) and \
                (len(dims) != len(spec.out_shape) or dims[1] != nout or c.size != nout):
            raise Unlowerable(f"PReLU slope of shape {c.shape} is not one value per channel")
        spec.slopes = np.broadcast_to(c.reshape(-1), (nout,)).astype(np.float32)


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
    if max(pads) > MAX_PAD or max(kernel) > MAX_POOL_KERNEL or max(strides) > MAX_POOL_STRIDE \
            or w > MAX_POOL_DIM:
        raise Unlowerable("pool window, stride, padding or width exceeds the encoding's fields")
    mode = "max" if name == "relax.nn.max_pool2d" else "avg"
    return PoolSpec(call.args[0], mode, kernel, strides, pads, bool(a.get("count_include_pad", False)),
                    tuple(out_shape))


def strip_attrs(fn: relax.Function) -> relax.Function:
    """``fn`` without the partitioner's attributes (``Composite`` and every ``dlac.*``):
    a plain function, for a host op or the reference graph."""
    keys = [str(k) for k in fn.attrs.keys()] if fn.attrs is not None else []
    for key in keys:
        if key == "Composite" or key.startswith("dlac."):
            fn = fn.without_attr(key)
    return fn
