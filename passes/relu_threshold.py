"""ReluThreshold: the fused ReLU of chosen layers outputs ``x if x > T else 0``.

Rewrites, for each layer ``L`` (conv2d / dense with a constant weight, by variable name)
given a threshold ``T > 0``, the ReLU that ends its epilogue chain

    L -> [multiply(., const)] -> [add(., const)] -> [add(., other)] -> relu

(each value in the chain used once: the ReLU dLAC's EPI would fuse) into

    g = greater(x, T);  y = where(g, x, 0)

with ``x`` the ReLU's input, ``T`` and ``0`` scalar constants of ``x``'s dtype; ``y`` keeps
the ReLU's variable.  :func:`passes.partition` fuses that form into the layer's composite
as the EPI activation ``relu`` with the threshold (docs/isa.md "EPI").

Legal when asked for: it changes the computation on purpose (values in ``(0, T]`` become
0; ``T == 0`` would be today's ReLU, so no layer with ``T == 0`` is touched and the graph
stays the same).  A layer whose chain does not end in a ReLU (none, clip / ReLU6, leaky
ReLU, a pre-activation value used elsewhere) is refused by :func:`resolve` with the reason.
"""

from __future__ import annotations

import fnmatch

import numpy as np
from tvm import relax

from target_dlac.core.errors import ConfigError
from target_dlac.core.ir import (binding_map, call_users, carries_errors, dtype_of, emit_like, is_call, is_const,
                                 make_const, map_functions, module_pass, mutate, op_name, relax_functions,
                                 use_counts)
from passes.layers import layer_op


def _chain_end(var, values, users, uses) -> tuple[relax.Var | None, str]:
    """``(relu binding var or None, what ends the chain)`` after layer ``var``."""
    steps, residual = 0, False
    while True:
        nxt = users.get(var, [])
        if uses[var] != 1 or len(nxt) != 1:
            return None, (f"its output has {uses[var]} uses" if uses[var] != 1 else "no activation")
        user = nxt[0]
        call = values[user]
        if is_call(call, "relax.nn.relu"):
            return user, "relu"
        consts = [a for a in call.args if is_const(a)]
        if is_call(call, "relax.multiply", "relax.add") and consts and steps < 2:
            steps += 1
        elif is_call(call, "relax.add") and not consts and not residual:
            residual, steps = True, 2
        else:
            name = (op_name(call) or "a non-op binding").removeprefix("relax.")
            return None, "no activation" if name in ("add", "multiply", "reshape", "nn.max_pool2d") \
                else f"activation {name}, not relu"
        var = user


def layer_activations(mod) -> dict[str, tuple[relax.Var | None, str]]:
    """``{layer variable name: (relu var or None, description)}`` for every layer of ``mod``
    (the description says what ends its epilogue: ``relu``, ``no activation``, ...)."""
    out = {}
    for _, func in relax_functions(mod):
        if func.attrs is not None and "Composite" in func.attrs:
            continue
        values, users, uses = binding_map(func), call_users(func), use_counts(func)
        for var, value in values.items():
            if layer_op(value):
                out[var.name] = _chain_end(var, values, users, uses)
    return out


def choose(display: dict, ends: dict, thresholds: dict, pattern_for=None) -> dict:
    """The rule that gives layers their thresholds (the compiler's :func:`resolve` and
    training's ``qat_modules.resolve_relu_thresholds`` both apply it): ``{layer: T}`` of the
    layers whose threshold is above 0.  ``display[layer]``: the name patterns are matched on;
    ``ends[layer]``: ``None`` if the layer ends in a fused ReLU, else what it ends in;
    ``pattern_for(name)``: the pattern that applies (default: the first ``fnmatch`` match in
    order, as ``QuantConfig.relu_pattern_for``).  A pattern that matches no layer, or only
    layers without a fused ReLU, is a :class:`ConfigError` naming it and what the matched
    layers end in."""
    pattern_for = pattern_for or (lambda name: next((p for p in thresholds if fnmatch.fnmatchcase(name, p)), None))
    chosen, matched = {}, {p: [] for p in thresholds}
    for layer, name in display.items():
        pattern = pattern_for(name)
        if pattern is None:
            continue
        matched[pattern].append(layer)
        if ends[layer] is None and thresholds[pattern] > 0:
            chosen[layer] = float(thresholds[pattern])
    for pattern, layers in matched.items():
        if not layers:
            raise ConfigError(f"relu threshold {pattern!r}: the pattern matches no layer "
                              f"(layers: {', '.join(display.values()) or 'none'})")
        if all(ends[v] is not None for v in layers):
            what = "; ".join(f"layer {display[v]}: {ends[v]}" for v in layers[:4])
            raise ConfigError(f"relu threshold {pattern!r}: no matched layer ends in a fused ReLU "
                              f"({what})")
    return chosen


def resolve(mod, layer_names: dict, thresholds: dict, pattern_for=None) -> dict[str, float]:
    """``{layer variable: T}`` of the layers of ``mod`` whose threshold is above 0
    (:func:`choose` on their display names ``layer_names.get(var, var)``)."""
    acts = layer_activations(mod)
    return choose({var: layer_names.get(var, var) for var in acts},
                  {var: None if relu is not None else what for var, (relu, what) in acts.items()},
                  thresholds, pattern_for)


def relu_threshold(mod, thresholds: dict[str, float]):
    """``mod`` with the ReLU after each layer in ``thresholds`` (layer variable -> T > 0)
    rewritten to ``where(x > T, x, 0)``; the module is not changed in place."""
    if not thresholds:
        return mod
    acts = layer_activations(mod)
    target = {}
    for var, t in thresholds.items():
        relu = acts.get(var, (None, "not a layer"))[0]
        if relu is None:
            raise ConfigError(f"relu threshold for {var}: {acts.get(var, (None, 'not a layer'))[1]}")
        target[relu] = float(t)

    def per_func(func):
        here = {v: t for v, t in target.items() if v in binding_map(func)}
        if not here:
            return func

        @relax.expr_functor.mutator
        @carries_errors
        class _Threshold(relax.PyExprMutator):
            def visit_var_binding_(self, binding):
                if binding.var not in here:
                    return super().visit_var_binding_(binding)
                x = self.visit_expr(binding.value.args[0])
                dt = dtype_of(x)
                g = self.builder_.emit(relax.op.greater(x, make_const(np.asarray(here[binding.var]), dt)),
                                       name_hint=binding.var.name + "_gt")
                y = relax.op.where(g, x, make_const(np.asarray(0.0), dt))
                self.set_var_remap(binding.var, emit_like(self.builder_, binding.var, y))

        return mutate(_Threshold(mod), func)

    return map_functions(mod, per_func)


def check_fused(part, thresholds: dict[str, float], layer_names: dict) -> None:
    """After partitioning: every layer in ``thresholds`` (variable -> T) sits in a composite
    whose EPI applies the thresholded ReLU (``dlac.<kind>[_residual]_relu`` holding the
    ``where``); else a :class:`ConfigError` (a standalone or host ReLU takes no threshold)."""
    found = {}
    for _, region in relax_functions(part):
        for b in (binding_map(region).items() if region.attrs is not None and "Codegen" in region.attrs else ()):
            fn = b[1]
            if isinstance(fn, relax.Function) and fn.attrs is not None and "dlac.layer" in fn.attrs:
                ops = {op_name(v) for v in binding_map(fn).values()}
                found[str(fn.attrs["dlac.layer"])] = (str(fn.attrs["Composite"]), "relax.where" in ops)
    for var in thresholds:
        comp, fused = found.get(var, ("the host", False))
        if not (fused and comp.endswith("_relu")):
            raise ConfigError(f"relu threshold on layer {layer_names.get(var, var)}: its ReLU is not "
                              f"fused into the layer's epilogue ({comp.removeprefix('dlac.')}); only "
                              "an EPI ReLU takes a threshold")


def ReluThreshold(thresholds: dict[str, float]):  # noqa: N802 - TVM pass naming
    """ReluThreshold as a TVM module pass (``thresholds``: as :func:`relu_threshold`'s)."""
    return module_pass("dlac.ReluThreshold")(lambda mod: relu_threshold(mod, thresholds))
