"""PlanLayers: the layer plan of a graph, one :class:`~target_dlac.core.plan.LayerPlan`
per conv / dense layer.

Rewrites nothing: reads the layers of ``main`` (in binding order) and decides, per layer,
its precision (:meth:`compiler.config.QuantConfig.precision_for`'s rules, given here as
``precision_for``), the weight format it will be held in
(:func:`target_dlac.core.plan.format_of`: a depthwise SWIS layer, one input channel per
filter, is held as int8; a grouped one groups the C / G channels of its conv group) and its
activation type override.  A pre-quantized model's layers keep the model's own
quantization (its kind and integers), over the config's default and over keep_first /
keep_last (which keeps every output head, :func:`output_heads`); only an override
pattern that says ``fp32`` wins over it (the layer then keeps the float weights).  Legal on any graph: it only reads it.  The integers of the other
quantized layers are added by QuantizeWeights (:mod:`passes.quantize_weights`).
"""

from __future__ import annotations

from tvm import relax

from target_dlac.core.ir import iter_bindings
from target_dlac.core.plan import IntWeights, LayerPlan, format_of
from passes.layers import find_layers


def output_heads(func, layers) -> set[str]:
    """The variable names of the *output heads* among ``layers`` (of ``func``): the layers
    whose output reaches one of ``func``'s outputs along a path with no other layer on it.
    Walks back from the outputs through every binding's operands and stops at a layer."""
    names = {layer.var: layer.name for layer in layers}
    values = {b.var: b.value for b in iter_bindings(func)}
    heads: set[str] = set()
    seen: set = set()
    todo = [func.body.body]
    while todo:
        e = todo.pop()
        if isinstance(e, relax.Var):
            if e in seen:
                continue
            seen.add(e)
            if e in names:
                heads.add(names[e])
            elif e in values:
                todo.append(values[e])
        elif isinstance(e, relax.Tuple):
            todo.extend(e.fields)
        elif isinstance(e, relax.TupleGetItem):
            todo.append(e.tuple_value)
        elif isinstance(e, relax.Call):
            todo.extend(e.args)
    return heads


def _depthwise(layer) -> bool:
    """One input channel per filter (depthwise, or grouped with ``C / G = 1``): no SWIS
    input-channel groups.  Other grouped convolutions have their ``C / G`` channels."""
    return layer.op == "conv2d" and int(layer.attrs.get("groups", 1)) > 1 and layer.weight.shape[1] == 1


def plan_layers(mod, layer_names: dict[str, str], precision_for, prequantized: dict | None = None,
                activations_for=None) -> list[LayerPlan]:
    """The plan of every layer of ``mod['main']``.

    ``precision_for(display name, index, count, head=) -> (precision, why)``, ``head``:
    whether the layer is an output head (:func:`output_heads`);
    ``prequantized``: ``{layer var: (q, scale per output channel, kind)}`` of the layers
    whose weights the model itself quantized (FoldPrequantized);
    ``activations_for(display name) -> "fp32" | "fp16" | None``: the layer's activation
    type override."""
    layers = find_layers(mod["main"])
    heads = output_heads(mod["main"], layers)
    plans = []
    for i, layer in enumerate(layers):
        display = layer_names.get(layer.name, layer.name)
        prec, why = precision_for(display, i, len(layers), head=layer.name in heads)
        own = (prequantized or {}).get(layer.name)
        integers = None
        if own is not None and not (why.startswith("override") and prec == "fp32"):
            prec, why = own[2], "pre-quantized"
            integers = IntWeights(own[0], own[1], layer.out_axis)
        plans.append(LayerPlan(display, layer.name, layer.op, tuple(layer.weight.shape), prec, why,
                               format_of(prec, _depthwise(layer)), integers,
                               activations=activations_for(display) if activations_for else None))
    return plans
