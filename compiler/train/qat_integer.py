"""The exact integer forward of a fake-quantized model with int8 activations.

The float fake-quantization of :mod:`compiler.train.qat_modules` rounds a layer's output
``acc * scale + bias`` in float; dlac's integer pipeline computes ``(acc * M + B + 2^(s-1)) >>
s`` with ``M = round(scale * 2^(fy - fx + s))`` (:func:`target_dlac.codegen.modes.intmath.
conv_params`), so a value within about 2^-30 of a rounding boundary can land one step
apart.  This walk of the model's graph computes what the binary computes, from the same
integers and parameters:

* the graph input and every :class:`~compiler.train.qat_modules.ActQuant`:
  ``clip(floor(x * 2^f + 0.5), -128, 127)`` on the exact value (an add of two quantized
  tensors is exact in float64, and this is the integer add's round half up);
* a :class:`~compiler.train.qat_modules.QLayer`: the accumulator of the integer input and
  weights (exact), then the requantization with ``conv_params`` (plus a fused residual
  ``res_q << R``), the clip of the fused activation and the layer's ``act_bits``, and a
  ReLU threshold: ``q if q > Tq else 0``, ``Tq = floor(T * 2^fy)``;
* an average pool then its quantizer: the integer window sum and :func:`intmath.avg_params`;
* max-pool, ReLU, reshapes, concats: the op itself on the exact values.

Values are carried as float32 tensors holding exact multiples of ``2^-f`` (8-bit integers
times a power of two); adds and concats run in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compiler.train.qat_modules import ActQuant, QLayer
from target_dlac.codegen.modes import intmath as Q
from target_dlac.core.errors import CodegenError, ConfigError


class _AvgSum:
    """An average pool's integer window sums, waiting for the quantizer after it."""

    def __init__(self, sums: torch.Tensor, count: int, exp: int):
        self.sums, self.count, self.exp = sums, count, exp


def _round_shift(t: torch.Tensor, s: int) -> torch.Tensor:
    """``(t + 2^(s-1)) >> s`` on int64 (arithmetic shift: round half up)."""
    return torch.bitwise_right_shift(t + (1 << (s - 1)), s)


def _layer_bounds(m: QLayer, fy: int) -> tuple[int, int]:
    """The EPI's clip of the layer (the codegen's own function)."""
    return Q.clip_bounds(m.act, m.lo, m.hi, fy, Q.act_range(m.bits, m.signed))


def _layer(m: QLayer, x: torch.Tensor, fx_: int | None, res: torch.Tensor | None = None,
           fr: int | None = None) -> torch.Tensor:
    if fx_ is None:
        raise ConfigError(f"exact integer evaluation: the input of layer {m.name} is not quantized")
    ints = m.integers()
    q, scale = ints
    xi = x.to(torch.float64) * 2.0 ** fx_                  # exact integers
    # float32 sums are exact while every partial sum stays under 2^24; else float64 (2^53)
    bound = float(np.abs(q).reshape(q.shape[0], -1).sum(axis=1).max(initial=0)) * float(xi.abs().max())
    dt = torch.float32 if bound < 2.0 ** 24 else torch.float64
    xi, w = xi.to(dt), torch.from_numpy(q.astype(np.float64)).to(dt)
    inner = m.inner
    if isinstance(inner, nn.Conv2d):
        acc = F.conv2d(xi, w, None, inner.stride, inner.padding, inner.dilation, inner.groups)
    else:
        acc = F.linear(xi, w)
    fy = int(m.exp)
    bias = inner.bias.detach().numpy() if inner.bias is not None else np.zeros(q.shape[0], np.float32)
    if res is not None and fr is None:
        raise ConfigError(f"exact integer evaluation: the residual of layer {m.name} is not quantized")
    try:
        mult, b, s, rshift = Q.conv_params(np.asarray(scale, np.float64), bias, fx_, fy, fr, f"layer {m.name}")
    except CodegenError as e:
        raise ConfigError(str(e)) from None
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    t = acc.to(torch.int64)                                # exact: acc holds integers
    t.mul_(torch.from_numpy(mult.astype(np.int64)).reshape(shape))
    t.add_(torch.from_numpy(b + (1 << (s - 1))).reshape(shape))
    if res is not None:                                    # + (res_q << R), R = fy - fr + s
        t.add_(torch.bitwise_left_shift((res.to(torch.float64) * 2.0 ** fr).to(torch.int64), rshift))
    t.bitwise_right_shift_(s)                              # arithmetic: round half up
    lo, hi = _layer_bounds(m, fy)
    t.clamp_(lo, hi)
    if m.threshold > 0:                                    # the ReLU threshold, on the integers
        t = torch.where(t > Q.relu_threshold_q(m.threshold, fy, hi, f"layer {m.name}"), t, 0)
    return t.to(torch.float32).mul_(2.0 ** -fy)            # exact: b-bit ints * 2^-fy


def _avg_count(m, node: fx.Node, x: torch.Tensor) -> int:
    if isinstance(m, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
        size = m.output_size if m is not None else node.args[1]
        if size not in (1, (1, 1)):
            raise ConfigError(f"exact integer evaluation covers global adaptive average pools only ({node.name})")
        return int(x.shape[-1] * x.shape[-2])
    k = m.kernel_size if m is not None else node.args[1]
    pad = m.padding if m is not None else node.kwargs.get("padding", 0)
    if pad not in (0, (0, 0)):
        raise ConfigError(f"exact integer evaluation: padded average pool {node.name}")
    k = (k, k) if isinstance(k, int) else tuple(k)
    return int(k[0] * k[1])


def _is_avg(m, node) -> bool:
    return isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or \
        (node.op == "call_function" and node.target in (F.avg_pool2d, F.adaptive_avg_pool2d))


def _quantize(val, f: int) -> torch.Tensor:
    if isinstance(val, _AvgSum):
        mult, s = Q.avg_params(val.count, val.exp, f)
        y = _round_shift(val.sums.to(torch.int64) * mult, s)
    else:
        y = torch.floor(val * 2.0 ** f + 0.5)
    return torch.clamp(y, -128, 127).to(torch.float32) * 2.0 ** -f      # exact: int8 * 2^-f


def passthrough_of(node: fx.Node) -> bool:
    """Whether ``node`` keeps its input's exponent (max-pool, ReLU, reshapes) rather than
    making a value for a quantizer (adds, concats)."""
    if node.op != "call_function":
        return True
    return node.target not in (torch.cat, torch.concat) and "add" not in getattr(node.target, "__name__", "")


@torch.no_grad()
def integer_forward(gm: fx.GraphModule, x: torch.Tensor, observe=None) -> torch.Tensor:
    """``gm``'s output computed as dlac's integer pipeline computes it (see the docstring);
    ``observe(layer, output)``, if given, is called with each QLayer's output."""
    env: dict = {}
    exps: dict = {}

    def load(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node], exps[node] = x.to(torch.float64), None     # quantized by the ActQuant after it
            continue
        if node.op == "output":
            out = load(node.args[0])
            return out.to(torch.float32) if isinstance(out, torch.Tensor) else out
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        args, kwargs = load(node.args), load(node.kwargs)
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, QLayer):
            res, fr = (args[1], exps.get(node.args[1])) if len(args) > 1 else (None, None)
            env[node], exps[node] = _layer(m, args[0], exps.get(src), res, fr), int(m.exp)
            if observe is not None:
                observe(m, env[node])
        elif isinstance(m, ActQuant):
            env[node], exps[node] = _quantize(args[0], int(m.exp)), int(m.exp)
        elif _is_avg(m, node):
            if exps.get(src) is None:
                raise ConfigError(f"exact integer evaluation: the input of {node.name} is not quantized")
            avg = m(args[0]) if m is not None else node.target(*args, **kwargs)
            count = _avg_count(m, node, args[0])
            env[node], exps[node] = _AvgSum(torch.round(avg * count * 2.0 ** exps[src]), count, exps[src]), None
        elif node.op == "get_attr":
            env[node], exps[node] = getattr(gm, node.target), None
        else:
            if any(isinstance(a, _AvgSum) for a in args):
                raise ConfigError(f"exact integer evaluation: average pool feeds {node.name}, not a quantizer")
            if not passthrough_of(node):     # adds, concats: in float64, exact for these operands
                args = tuple(a.to(torch.float64) if isinstance(a, torch.Tensor) else a for a in args)
            if node.op == "call_module":
                env[node] = m(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                env[node] = node.target(*args, **kwargs)
            exps[node] = exps.get(src) if passthrough_of(node) else None
    raise ConfigError("the model's graph has no output")
