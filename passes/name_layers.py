"""NameLayers: give each weighted op's binding the name of its layer.

Rewrites: in ``main``, the binding of every ``conv2d`` / ``matmul`` whose weight
is a function parameter (directly, or through ``permute_dims`` as torch and
ONNX import ``linear``/``Gemm``, and through the quantize / clip / dequantize
chain of a pre-quantized weight) gets a new variable named after that weight
(``conv_layers.0.weight`` -> ``conv_layers_0``).  Weighted ops whose weight
has no parameter name get ``<op>_<index>``.

Legal: always; only variable names change, values do not.  Must run before
parameters are bound as constants (the names live on the parameters).

Returns the module and ``{var_name: display_name}`` in layer order.  Later
dlac passes keep these variable names on the weighted ops they rewrite, so a
layer can be found by name at every stage.
"""

from __future__ import annotations

import re

from tvm import relax

from target_dlac.core.ir import carries_errors, mutate, is_call, map_functions, rename_var

WEIGHTED_OPS = ("relax.nn.conv2d", "relax.matmul")
#: ops between a pre-quantized weight parameter and its layer (ONNX QDQ / QCDQ)
WEIGHT_CHAIN_OPS = ("relax.dequantize", "relax.quantize", "relax.maximum", "relax.minimum",
                    "relax.clip")


def sanitize(name: str) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "layer"
    return ident if not ident[0].isdigit() else f"l_{ident}"


def layer_name_from_param(param_name: str) -> str:
    for suffix in (".weight", "_weight"):
        if param_name.endswith(suffix):
            return param_name[: -len(suffix)]
    return param_name


def name_layers(mod, param_display: dict[str, str]):
    """Rename weighted-op bindings of ``mod['main']``.

    ``param_display`` maps a parameter's Relax name to its source name (for
    torch.export: ``p_conv_weight`` -> ``conv.weight``); parameters not in it
    use their own name.  A parameter that is the weight of several layers (an ONNX
    exporter merges byte-identical initializers into one) may map to a list of source
    names, one per layer using it in graph order, so each layer keeps the name of its own
    place in the graph (``a``, ``b``), not that of the first layer with the same bytes
    (``a``, ``a_2``).
    """
    main = mod["main"]
    params = {p: p.name for p in main.params}
    transposed: dict = {}   # var bound to permute_dims(param) -> param
    plan: dict = {}          # binding var -> (var_name, display)
    used: set[str] = set()
    counters: dict[str, int] = {}
    uses: dict = {}          # param -> weighted ops named from it so far

    def unique(base: str) -> str:
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    for block in main.body.blocks:
        for b in block.bindings:
            v = b.value
            if is_call(v, "relax.permute_dims", *WEIGHT_CHAIN_OPS) and v.args:
                src = transposed.get(v.args[0], v.args[0])
                if src in params:
                    transposed[b.var] = src
            if not is_call(v, *WEIGHTED_OPS):
                continue
            w = v.args[1]
            w = transposed.get(w, w)
            op = "conv2d" if is_call(v, "relax.nn.conv2d") else "dense"
            if w in params:
                raw = param_display.get(params[w], params[w])
                if isinstance(raw, (list, tuple)):      # one name per use, in graph order
                    k = uses.get(w, 0)
                    uses[w] = k + 1
                    raw = raw[min(k, len(raw) - 1)] if raw else params[w]
                display = layer_name_from_param(raw)
            else:
                counters[op] = counters.get(op, -1) + 1
                display = f"{op}_{counters[op]}"
            plan[b.var] = (unique(sanitize(display)), display)

    @relax.expr_functor.mutator
    @carries_errors
    class _Renamer(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in plan:
                return super().visit_var_binding_(binding)
            value = self.visit_expr(binding.value)
            new_var = rename_var(binding.var, plan[binding.var][0])
            self.builder_.emit_normalized(relax.VarBinding(new_var, value))
            self.set_var_remap(binding.var, new_var)

    out = map_functions(mod, lambda f: mutate(_Renamer(mod), f))
    return out, {var_name: display for var_name, display in plan.values()}
