"""FoldPrequantized: take a pre-quantized model's weights as the integers they are.

Rewrites every binding that is a ``quantize``, ``dequantize``, ``clip``,
``maximum``, ``minimum`` or ``astype`` whose tensor inputs are all constants
(chains included) into the constant it computes.  That covers the weight
subgraphs of pre-quantized ONNX models:

* QDQ (onnxruntime ``quantize_static``): ``dequantize(q, s, zp)`` on an int8
  initializer (per tensor or per output channel), and the int32 bias
  ``dequantize``;
* QCDQ (brevitas ternary export): ``quantize(W, s, 0) -> clip(-1, 1) ->
  dequantize(., s, 0)`` on a float initializer (ONNX ``Clip`` imports as
  ``maximum`` / ``minimum``).

The values are computed in NumPy exactly as TVM legalizes the ops (quantize:
``x / s`` in float32, round half to even, ``+ zp``, saturate; dequantize:
``(q - zp)`` in int32, then ``* s`` in float32), so the folded graph computes
bit for bit what the imported one did.  Quantize/dequantize of activations
(non-constant inputs) are left alone: they stay host ops (fake quantization).

For a folded ``dequantize`` that feeds a layer's weight (conv2d / matmul,
directly or through reshape / permute_dims / expand_dims / squeeze views, which
FoldConstantViews folds next) it records the integer decomposition of that
layer: ``Prequantized(q, scale, axis, kind)`` with ``kind`` ``"ternary"``
(q in {-1, 0, 1}), ``"int4"`` (|q| <= 7) or ``"int8"``.

Legal: the folding always (constant evaluation, same values).  A weight is
recorded as pre-quantized only when its zero point is 0 (symmetric), its
integers lie in [-127, 127] (what dLAC holds as int8 weights) and its scales
are positive; otherwise it is folded to float, the reason goes to ``skipped``
and the layer is treated like any float layer.

The recorded ``q`` is in the dequantize's layout, which may differ from the
layer's final weight layout (FoldConstantViews turns a Gemm's ``(N, K)``
weight into ``(K, N)``).  :func:`recover` re-derives ``(q, scale)`` in the
final layout at quantize time from the float weight and the per-output-channel
scale, and checks that ``dequantize(q, scale)`` reproduces the weight bit for
bit and that ``q`` holds the recorded integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm

from target_dlac.core.ir import IntImm, attrs_to_dict, const_np, dtype_of, is_const, iter_bindings, make_const, \
    map_functions, module_pass, op_name, substitute_constants
from target_dlac.isa.formats import INT8_MAX_MAGNITUDE, PRECISION_MAX
from passes.weight_quant import dequantize as dequantize_weight

FOLDED_OPS = ("relax.quantize", "relax.dequantize", "relax.clip", "relax.maximum",
              "relax.minimum", "relax.astype")
VIEW_OPS = ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze")
LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")
_PRIM = (IntImm, tvm.ir.prim.expr.FloatImm)


@dataclass
class Prequantized:
    """The model's own integer weights of one layer (in the dequantize's layout)."""

    q: np.ndarray              # integers (int8 values)
    scale: np.ndarray          # float32, one per entry along ``axis`` (or a single one)
    axis: int                  # axis of ``q`` the scales run along
    kind: str                  # "ternary", "int4" or "int8"


@dataclass
class PrequantInfo:
    layers: dict = field(default_factory=dict)     # layer var name -> Prequantized
    skipped: dict = field(default_factory=dict)    # layer var name -> why it stays float


#: the precisions a model's own integers can be, smallest first
_KINDS = ("ternary", "int4", "int8")


def weight_kind(q: np.ndarray) -> str:
    """The precision of a model's own integers: the smallest whose largest magnitude
    (:data:`target_dlac.isa.formats.PRECISION_MAX`) holds them (this is where a
    pre-quantized layer's precision is decided; the layer plan carries it on)."""
    a = int(np.abs(q).max()) if q.size else 0
    return next((k for k in _KINDS if a <= PRECISION_MAX[k]), "int8")


def _per_axis(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A quantization parameter broadcast against a rank-``ndim`` tensor along ``axis``."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def _bound(value, dtype: np.dtype):
    """A clip bound (an IntImm / FloatImm) as a value of ``dtype``, saturated to its range."""
    v = value.value
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return dtype.type(min(max(v, info.min), info.max))
    return dtype.type(v)


def _evaluate(call, args: list) -> np.ndarray | None:
    """Value of ``call`` on constant tensor ``args`` as TVM computes it, or ``None``."""
    name = op_name(call)
    a = attrs_to_dict(call.attrs)
    out_dtype = np.dtype(dtype_of(call))
    if name == "relax.quantize":
        x, s, zp = args
        if x.dtype != np.float32 or s.dtype != np.float32 or out_dtype.kind not in "iu":
            return None
        axis = int(a["axis"])
        scaled = x / _per_axis(s, axis, x.ndim)                      # float32 division
        r = np.rint(scaled) + _per_axis(zp, axis, x.ndim).astype(np.float32)
        info = np.iinfo(out_dtype)
        return np.clip(r, info.min, info.max).astype(out_dtype)
    if name == "relax.dequantize":
        q, s, zp = args
        if out_dtype != np.float32 or s.dtype != np.float32:
            return None
        axis = int(a["axis"])
        if q.dtype.kind == "f":
            sub = q.astype(np.float32) - _per_axis(zp, axis, q.ndim).astype(np.float32)
        else:
            sub = q.astype(np.int32) - _per_axis(zp, axis, q.ndim).astype(np.int32)
        return (sub.astype(np.float32) * _per_axis(s, axis, q.ndim)).astype(np.float32)
    if name == "relax.clip":
        (x,) = args
        lo, hi = _bound(call.args[1], x.dtype), _bound(call.args[2], x.dtype)
        return np.minimum(np.maximum(x, lo), hi).astype(out_dtype)
    if name in ("relax.maximum", "relax.minimum"):
        x, y = args
        if x.dtype != y.dtype:
            return None
        f = np.maximum if name == "relax.maximum" else np.minimum
        return f(x, y).astype(out_dtype)
    if name == "relax.astype":
        (x,) = args
        if x.dtype.kind == "f" and out_dtype.kind in "iu":
            info = np.iinfo(out_dtype)          # float -> int only when exact (no truncation)
            if not (np.all(x == np.rint(x)) and x.min(initial=0) >= info.min
                    and x.max(initial=0) <= info.max):
                return None
        return x.astype(out_dtype)
    return None


def _tensor_args(call) -> list:
    """The call's tensor arguments (clip's scalar IntImm / FloatImm bounds excluded)."""
    return [e for e in call.args if not isinstance(e, _PRIM)]


def _plan(func):
    """``(folded, dequantized)``: var -> constant value; var -> (q, scale, zp, axis)."""
    folded: dict = {}
    dequantized: dict = {}
    for b in iter_bindings(func):
        value = b.value
        if op_name(value) not in FOLDED_OPS:
            continue
        args = []
        for e in _tensor_args(value):
            if e in folded:
                args.append(folded[e])
            elif is_const(e):
                args.append(const_np(e))
            else:
                break
        else:
            out = _evaluate(value, args)
            if out is not None:
                folded[b.var] = out
                if op_name(value) == "relax.dequantize":
                    dequantized[b.var] = (args[0], args[1], args[2], int(attrs_to_dict(value.attrs)["axis"]))
    return folded, dequantized


def _record(func, dequantized, info: PrequantInfo) -> None:
    """Record the integer decomposition of each layer whose weight is a folded dequantize."""
    values = {b.var: b.value for b in iter_bindings(func)}
    for var, value in values.items():
        if op_name(value) not in LAYER_OPS or len(value.args) < 2:
            continue
        w = value.args[1]
        while w not in dequantized and op_name(values.get(w)) in VIEW_OPS:
            w = values[w].args[0]
        if w not in dequantized:
            continue
        q, s, zp, axis = dequantized[w]
        name = var.name
        if q.dtype.kind not in "iu":
            info.skipped[name] = f"dequantized weights are {q.dtype}, not integers"
        elif np.any(zp != 0):
            info.skipped[name] = "weight zero point is not 0 (asymmetric quantization)"
        elif not (np.all(np.isfinite(s)) and np.all(s > 0)):
            info.skipped[name] = "weight scale is not positive"
        elif q.size and (int(q.min()) < -INT8_MAX_MAGNITUDE or int(q.max()) > INT8_MAX_MAGNITUDE):
            info.skipped[name] = f"weight integers outside [-{INT8_MAX_MAGNITUDE}, {INT8_MAX_MAGNITUDE}]"
        else:
            axis = axis % q.ndim
            scale = s.reshape(-1).astype(np.float32)
            if scale.size not in (1, q.shape[axis]):
                info.skipped[name] = "weight scale is neither per tensor nor per channel"
                continue
            info.layers[name] = Prequantized(q.astype(np.int8), scale, axis, weight_kind(q))


def _fold_func(mod, func, info: PrequantInfo):
    folded, dequantized = _plan(func)
    if not folded:
        return func
    _record(func, dequantized, info)
    return substitute_constants(mod, func, {v: make_const(x, x.dtype.name) for v, x in folded.items()})


def fold_prequantized(mod):
    """Returns ``(module, PrequantInfo)``; the input module is not changed."""
    info = PrequantInfo()
    out = map_functions(mod, lambda f: _fold_func(mod, f, info))
    return out, info


FoldPrequantized = module_pass("dlac.FoldPrequantized")(lambda mod: fold_prequantized(mod)[0])


def recover(layer, record: Prequantized):
    """``((q int8, scale per output channel float32), None)`` for ``layer`` (a
    :class:`passes.layers.Layer`) in its final weight layout, or ``(None, why)``.

    ``q = rint(W / scale)`` along the layer's output axis, accepted only when
    ``dequantize(q, scale)`` equals ``W`` bit for bit and ``q`` holds exactly the
    recorded integers (the same multiset: views only move them).
    """
    w = layer.weight
    axis = layer.out_axis
    n = w.shape[axis]
    s = record.scale
    if s.size == 1:
        s = np.full(n, s[0], np.float32)
    elif s.size != n:
        return None, "weight scales do not run along the output channels"
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.rint(w.astype(np.float64) / s.astype(np.float64).reshape(shape))
    if q.size and np.abs(q).max() > INT8_MAX_MAGNITUDE:
        return None, "weight scales do not run along the output channels"
    q = q.astype(np.int8)
    if not np.array_equal(dequantize_weight(q, s, axis), w) or \
            not np.array_equal(np.sort(q, axis=None), np.sort(record.q, axis=None)):
        return None, "weights are not the recorded integers times a per-output-channel scale"
    return (q, s), None


def prequantized_weights(mod, info: PrequantInfo | None) -> tuple[dict, dict]:
    """For each recorded layer of ``mod['main']``: ``{name: (q, scale, kind)}`` and
    ``{name: why not}`` for those (recorded or skipped) that stay float."""
    from passes.layers import find_layers

    found, why = {}, dict(info.skipped) if info else {}
    if not info or not info.layers:
        return found, why
    for layer in find_layers(mod["main"]):
        record = info.layers.get(layer.name)
        if record is None:
            continue
        qs, reason = recover(layer, record)
        if qs is None:
            why[layer.name] = reason
        else:
            found[layer.name] = (qs[0], qs[1], record.kind)
    return found, why
