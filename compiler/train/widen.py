"""WRPN widening: ``k`` times the filters of chosen layers, function-preserving.

WRPN (wide reduced-precision networks, papers.md) widens layers while lowering their
precision.  dlac's training starts from a pretrained float model, so the widening is done
in place and preserves the function (Net2WiderNet, Chen et al. 2016):

- the widened layer's filters (and biases) are tiled ``k`` times along the output channels:
  output channel ``j * C + c`` is copy ``j`` of channel ``c``.  Copy 0 is the pretrained
  filter itself; copies 1..k-1 are perturbed by seeded Gaussian noise of ``noise`` times the
  std of the layer's weights, so their quantizations can diverge in training;
- the data flow is followed from the layer through channel-preserving ops (elementwise
  activations, pools, dropout, identity, BatchNorm, whose per-channel parameters and running
  statistics are tiled too) and through a flatten to ``(N, -1)``, to the consumer layers;
- each consumer's input weights are tiled ``k`` times along its input axis and divided by
  ``k``.  With tiled channels a flatten of ``(N, kC, H, W)`` is the flatten of ``(N, C, H, W)``
  tiled ``k`` times, so a consumer ``Linear`` after a flatten is tiled the same way (the
  spatial size comes from a ``ShapeProp`` run on the example input; it checks the flatten and
  rewrites a literal feature count such as ``view(-1, 1152)``).

With ``noise=0`` the widened network computes the original function (up to float rounding).

:func:`widen` works on a ``torch.fx`` symbolic trace of a deep copy of the model and returns
that ``GraphModule``: the user's class is not rebuilt, its layers are widened in place inside
the traced copy (same module paths, so dlac's layer names, ``conv_layers.0`` or
``layer1.0.conv1``, are unchanged); ``model`` itself is not modified.  Anything the widening
cannot carry through (an add with another branch, a concat, a grouped conv, the graph output,
a module called twice) is refused with a :class:`ConfigError` naming the layer and the node.
:func:`parse_widen` reads the CLI's ``--widen LAYER=K`` items.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
import re
import zlib

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from target_dlac.core.errors import ConfigError, quoted

#: modules that compute each element from the same element (any channel axis)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
                        nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Identity, nn.Dropout)
#: modules acting on each channel of an (N, C, H, W) tensor on its own
_SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                    nn.Dropout2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.gelu, F.silu, F.elu,
                          F.dropout, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
_SPATIAL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                      F.dropout2d}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
_FLATTEN_METHODS = {"view", "reshape", "flatten"}
_FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}


def parse_widen(items: list[str]) -> dict[str, int]:
    """``["conv_layers.0=2", "fc_layers.0=2,conv_layers.3=4"]`` -> ``{layer: k}``.

    Each item is ``LAYER=K`` or a comma-separated list of them (``--widen`` is repeatable);
    ``K`` must be a whole number (its range is checked by :func:`widen`, which knows the
    layers).  A layer given twice is an error."""
    factors: dict[str, int] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            name, eq, k = part.partition("=")
            name, k = name.strip(), k.strip()
            if not eq or not name or not re.fullmatch(r"[+-]?\d+", k):
                raise ConfigError(f"--widen {part!r}: expected LAYER=K with K a whole number "
                                  "(e.g. conv_layers.0=2)")
            if name in factors:
                raise ConfigError(f"--widen: layer {quoted(name)} is given twice")
            factors[name] = int(k)
    return factors


def widen(model: nn.Module, factors: dict[str, int], example: tuple, noise: float = 0.01,
          seed: int = 0) -> fx.GraphModule:
    """A traced copy of ``model`` with layer ``name`` widened ``factors[name]`` times.

    ``example``: the model's example inputs (a tensor or a tuple of them), run once through
    the copy in eval mode to learn the shapes.  ``noise``: the perturbation of the filter
    copies, relative to the std of the layer's weights (0: an exact copy, the function is
    preserved).  ``seed``: the noise seed (each layer's noise depends on it and the layer's
    name only).  Widenable layers: ``nn.Conv2d`` with ``groups == 1`` and ``nn.Linear``,
    each called once.  ``k = 1`` leaves the layer as it is."""
    if not isinstance(factors, dict):
        raise ConfigError(f"widen factors must be a dict {{layer: k}}, not {type(factors).__name__}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < math.inf:
        raise ConfigError(f"widen noise={noise!r}; expected a number >= 0 (relative to the weights' std)")
    gm = _trace(model)
    example = example if isinstance(example, (tuple, list)) else (example,)
    _shape_prop(gm, example)
    calls = _module_calls(gm)
    widenable = [name for name, nodes in calls.items()
                 if len(nodes) == 1 and _is_widenable(gm.get_submodule(name))]
    plans = []
    for name, k in factors.items():
        k = _check_factor(gm, calls, widenable, name, k)
        if k > 1:
            plans.append((name, k, _follow(gm, calls, name)))
    with torch.no_grad():   # output axes first: a layer's noise is drawn on its own weights
        for name, k, _ in plans:
            _widen_producer(gm.get_submodule(name), k, noise, seed, name)
        for name, k, (passes, consumers, flattens) in plans:
            for bn in passes:
                _tile_batchnorm(gm.get_submodule(bn), k)
            for c in consumers:
                _tile_consumer(gm.get_submodule(c), k)
            for node, features in flattens:
                _rewrite_flatten(node, features, k)
    gm.recompile()
    gm.training = model.training
    return gm


# -- tracing -------------------------------------------------------------------------

def _trace(model: nn.Module) -> fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"widen needs a torch.nn.Module, not {type(model).__name__}")
    try:
        return fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--widen needs a model torch.fx can trace symbolically "
                          f"(no data-dependent control flow): {first}") from None


def _shape_prop(gm: fx.GraphModule, example: tuple) -> None:
    """Record each node's output shape, in eval mode (running stats stay as they are)."""
    modes = {name: m.training for name, m in gm.named_modules()}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"widen: the example input does not run through the model: {first}") from None
    finally:
        for name, m in gm.named_modules():
            m.training = modes[name]


def _module_calls(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    return calls


def _is_widenable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _check_factor(gm, calls, widenable, name, k) -> int:
    listing = f"widenable layers: {', '.join(widenable) or '(none)'}"
    if name not in calls:
        raise ConfigError(f"cannot widen {quoted(name)}: no such layer; {listing}")
    if name not in widenable:
        m = gm.get_submodule(name)
        if len(calls[name]) > 1:
            why = f"the module is called {len(calls[name])} times (shared weights)"
        elif isinstance(m, nn.Conv2d):
            why = f"it is a grouped Conv2d (groups={m.groups})"
        else:
            why = f"it is a {type(m).__name__}, not a Conv2d (groups=1) or Linear"
        raise ConfigError(f"cannot widen {quoted(name)}: {why}; {listing}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"cannot widen {quoted(name)} by {k!r}: the factor must be an "
                          f"integer >= 1; {listing}")
    return int(k)


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# -- following the data flow ---------------------------------------------------------

def _what(gm, node: fx.Node) -> str:
    """How a blocking node is named in a message: ``add 'add_1'``, ``Conv2d 'conv2'``."""
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} {quoted(node.target)}"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', str(node.target))} {quoted(node.name)}"
    return f"{node.target} {quoted(node.name)}"


def _follow(gm, calls, name):
    """The BatchNorm modules, consumer layers and flattens on the data flow from ``name``;
    a ConfigError at the first node the widening cannot pass."""
    start = calls[name][0]
    shape = _shape(start)
    m = gm.get_submodule(name)
    if shape is None or (isinstance(m, nn.Conv2d) and len(shape) != 4):
        raise ConfigError(f"cannot widen {quoted(name)}: its output shape is not (N, C, H, W) "
                          f"on the example input (got {shape})")
    axis = 1 if isinstance(m, nn.Conv2d) else len(shape) - 1
    passes, consumers, flattens, seen = [], [], [], set()
    todo = [(start, axis)]

    def refuse(node, why=""):
        if node.op == "output":
            raise ConfigError(f"cannot widen {quoted(name)}: its output reaches the model's "
                              "output (widening an output layer changes the output)")
        raise ConfigError(f"cannot widen {quoted(name)}: its output reaches {_what(gm, node)}"
                          + (f" ({why})" if why else ""))

    while todo:
        src, axis = todo.pop()
        for user in src.users:
            if user in seen:
                refuse(user, "it takes the widened channels twice")
            seen.add(user)
            nxt = _step(gm, calls, src, user, axis, refuse, passes, consumers, flattens)
            if nxt is not None:
                todo.append((user, nxt))
    return passes, consumers, flattens


def _step(gm, calls, src, node, axis, refuse, passes, consumers, flattens):
    """Where the widened channels are in ``node``'s output (their axis), or None when
    ``node`` is a consumer (or a size query); refuses what cannot be carried through."""
    rank = len(_shape(src) or ())
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if node.args[:1] != (src,) or len(node.args) > 1 or node.kwargs:
            refuse(node, "the widened tensor is not its only input")
        if len(calls[node.target]) > 1 and isinstance(m, (nn.Conv2d, nn.Linear, _BATCHNORMS)):
            refuse(node, f"the module is called {len(calls[node.target])} times")
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                refuse(node, f"a grouped convolution, groups={m.groups}")
            if rank != 4 or axis != 1:
                refuse(node, "the widened channels are not its input channels")
            consumers.append(node.target)
            return None
        if isinstance(m, nn.Linear):
            if axis != rank - 1:
                refuse(node, "the widened channels are not its input features; flatten first")
            consumers.append(node.target)
            return None
        if isinstance(m, _BATCHNORMS):
            if axis != 1:
                refuse(node, "the widened channels are not its channel axis")
            passes.append(node.target)
            return axis
        if isinstance(m, _ELEMENTWISE_MODULES):
            return axis
        if isinstance(m, _SPATIAL_MODULES):
            if getattr(m, "return_indices", False) or rank != 4 or axis != 1:
                refuse(node)
            return axis
        if isinstance(m, nn.Flatten):
            return _flatten(node, src, axis, refuse, flattens, literal_ok=False)
        refuse(node)
    if node.op == "call_function":
        if node.args[:1] != (src,) or _other_tensors(node, src):
            refuse(node, "it combines the widened tensor with another one")
        if node.target in _FLATTEN_FUNCTIONS:
            return _flatten(node, src, axis, refuse, flattens, literal_ok=node.target is torch.reshape)
        if node.target is getattr and node.args[1:] == ("shape",) \
                and all(u.op == "call_function" and u.target is operator.getitem
                        and u.args[1:] == (0,) for u in node.users):
            return None                      # x.shape[0]: the batch size, unchanged
        if node.target in _ELEMENTWISE_FUNCTIONS:
            return axis
        if node.target in _SPATIAL_FUNCTIONS and rank == 4 and axis == 1 \
                and not node.kwargs.get("return_indices", False):
            return axis
        refuse(node)
    if node.op == "call_method":
        if node.args[:1] != (src,) or _other_tensors(node, src):
            refuse(node, "it combines the widened tensor with another one")
        if node.target in ("size", "dim") and node.args[1:] in ((0,), ()) and not node.kwargs:
            if node.target == "size" and not node.args[1:]:
                refuse(node, "the full size() would change; use x.size(0)")
            return None                      # x.size(0) / x.dim(): unchanged
        if node.target in _ELEMENTWISE_METHODS:
            return axis
        if node.target in _FLATTEN_METHODS:
            return _flatten(node, src, axis, refuse, flattens, literal_ok=node.target != "flatten")
    refuse(node)


def _other_tensors(node, src) -> bool:
    """Whether ``node`` takes a tensor other than ``src`` (or ``src`` again)."""
    found = []
    fx.node.map_arg((node.args[1:], node.kwargs), lambda n: found.append(n))
    return any(n is src or _shape(n) is not None for n in found)


def _flatten(node, src, axis, refuse, flattens, literal_ok):
    """A flatten/view/reshape to (N, C*H*W...): the channels become blocks of features."""
    shape_in, shape_out = _shape(src), _shape(node)
    if shape_in is None or shape_out is None or len(shape_in) < 2 or axis != 1:
        refuse(node, "not a flatten of the channel axis")
    features = math.prod(shape_in[1:])
    if tuple(shape_out) != (shape_in[0], features):
        refuse(node, f"reshapes {list(shape_in)} to {list(shape_out)}; only a flatten to (N, -1) "
                     "keeps the widened channels together")
    if literal_ok:
        flattens.append((node, features))
    return 1


def _rewrite_flatten(node, features, k) -> None:
    """``view(-1, F)`` -> ``view(-1, k*F)``: a literal feature count grows with the layer."""
    def scale(a):
        if isinstance(a, (tuple, list)):
            return type(a)(scale(b) for b in a)
        return a * k if isinstance(a, int) and not isinstance(a, bool) and a == features else a
    node.args = (node.args[0],) + tuple(scale(a) for a in node.args[1:])
    if "shape" in node.kwargs:
        node.kwargs = {**node.kwargs, "shape": scale(node.kwargs["shape"])}


# -- changing the weights ------------------------------------------------------------

def _tile(t: torch.Tensor | None, k: int, dim: int) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.cat([t] * k, dim=dim)


def _widen_producer(m: nn.Module, k: int, noise: float, seed: int, name: str) -> None:
    w = m.weight.detach()
    copies = [w]
    if noise > 0 and w.numel() > 1:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        std = float(w.float().std())
        for _ in range(k - 1):
            eps = torch.randn(w.shape, generator=gen, dtype=torch.float32)
            copies.append(w + (noise * std * eps).to(w.dtype).to(w.device))
    else:
        copies += [w.clone() for _ in range(k - 1)]
    m.weight = nn.Parameter(torch.cat(copies, 0), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        m.bias = nn.Parameter(_tile(m.bias.detach(), k, 0), requires_grad=m.bias.requires_grad)
    if isinstance(m, nn.Conv2d):
        m.out_channels *= k
    else:
        m.out_features *= k


def _tile_consumer(m: nn.Module, k: int) -> None:
    w = m.weight.detach()
    m.weight = nn.Parameter(_tile(w, k, 1) / k, requires_grad=m.weight.requires_grad)
    if isinstance(m, nn.Conv2d):
        m.in_channels *= k
    else:
        m.in_features *= k


def _tile_batchnorm(m: nn.Module, k: int) -> None:
    for pname in ("weight", "bias"):
        p = getattr(m, pname)
        if p is not None:
            setattr(m, pname, nn.Parameter(_tile(p.detach(), k, 0), requires_grad=p.requires_grad))
    for bname in ("running_mean", "running_var"):
        b = getattr(m, bname)
        if b is not None:
            setattr(m, bname, _tile(b, k, 0))
    m.num_features *= k
