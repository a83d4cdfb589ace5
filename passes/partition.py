"""PartitionForDlac: group what dLAC executes into regions; the rest is host.

Rewrites the graph with Relax's pattern partitioning (``FuseOpsByPattern``
then ``MergeCompositeFunctions``): each match becomes a composite function
``dlac.<pattern>`` and adjacent composites merge into region functions with
``Codegen = "dlac"``.  Patterns, most specific first:

* a layer (conv2d or dense with a constant weight) with its epilogue
  (``acc * scale + bias`` or ``acc + bias``), optionally a residual add, and
  optionally ReLU or clip: ``dlac.conv2d[_residual][_relu|_clip]``,
  ``dlac.dense[_relu|_clip]``;
* pooling: ``dlac.max_pool2d``, ``dlac.avg_pool2d``, ``dlac.global_avg_pool``
  (mean over H, W or adaptive average pool to 1x1);
* element-wise: ``dlac.add[_relu]`` of two same-shape tensors, ``dlac.relu``;
* views: ``dlac.reshape`` (flatten/reshape are address views on dLAC).

Each composite that holds a layer gets the attribute ``dlac.layer`` (its
name), so later stages can find per-layer data, and, when the layer plans are given,
``dlac.precision`` and ``dlac.weight_format`` (the plan's; the decomposition itself
travels in the plan, :class:`target_dlac.core.plan.LayerPlan`).  Legal: partitioning moves
computation into functions without changing it (``unpartition`` undoes it
for the TVM CPU reference).  Conv2d is placed on dLAC only for NCHW/OIHW,
dilation 1 and groups 1 or depthwise; anything else stays on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern, FuseOpsByPattern, MergeCompositeFunctions

from target_dlac.core.ir import carries_errors, mutate, attrs_to_dict, ints, iter_bindings, module_pass, op_name, relax_functions, shape_of
from passes.layers import find_layers


def _epilogue(acc):
    scaled = is_op("relax.multiply")(acc, is_const())
    return is_op("relax.add")(scaled | acc, is_const())


def _conv_ok(ctx) -> bool:
    conv = ctx.annotated_expr["layer"]
    a = attrs_to_dict(conv.attrs)
    if a["data_layout"] != "NCHW" or a["kernel_layout"] != "OIHW" or ints(a["dilation"]) != [1, 1]:
        return False
    groups = int(a["groups"])
    cin = shape_of(conv.args[0])[1]
    cout = shape_of(conv)[1]
    return groups == 1 or (groups == cin == cout)


def _residual_ok(ctx) -> bool:
    """The residual operand must not itself be computed from the layer's epilogue
    (``relu(y) + y``): fusing that add with the layer would make a cycle."""
    if not _conv_ok(ctx):
        return False
    ep_var = ctx.value_to_bound_var.get(ctx.annotated_expr["epilogue"])
    other = ctx.annotated_expr["residual"]
    other = ctx.value_to_bound_var.get(other, other)     # patterns match bound values, not vars
    if ep_var is None:
        return True
    add = ctx.annotated_expr["add"]
    add_var = ctx.value_to_bound_var.get(add)
    seen, todo = set(), [ep_var]
    while todo:
        var = todo.pop()
        if var.same_as(other):
            return False
        for user in ctx.var_usages.get(var, []):
            if user not in seen and not (add_var is not None and user.same_as(add_var)):
                seen.add(user)
                todo.append(user)
    return True


def _dense_ok(ctx) -> bool:
    return len(shape_of(ctx.annotated_expr["layer"].args[0])) == 2


def _same_shape_add(ctx) -> bool:
    add = ctx.annotated_expr["add"]
    a, b = add.args
    return shape_of(a) is not None and shape_of(a) == shape_of(b)


def _global_pool(ctx) -> bool:
    call = ctx.annotated_expr["pool"]
    if op_name(call) == "relax.mean":
        axes = sorted(int(x) % 4 for x in attrs_to_dict(call.attrs)["axis"])
        return len(shape_of(call.args[0])) == 4 and axes == [2, 3]
    return ints(attrs_to_dict(call.attrs).get("output_size") or [1, 1]) == [1, 1]


def _contained(ctx) -> bool:
    """No value computed inside the match but before its result is used outside it (a conv
    whose pre-ReLU output has a second consumer, ``hardswish(conv(x))``'s ``conv + 3``):
    such a match would make a composite with several results, which dLAC's lowering has no
    form for.  Refused, the pattern's smaller variants match instead (the conv alone)."""
    root = ctx.value_to_bound_var.get(ctx.matched_expr)
    inside = set(ctx.matched_bindings.keys())
    for var in inside:
        if root is not None and var.same_as(root):
            continue
        if not isinstance(var, relax.DataflowVar):
            return False                  # visible outside the dataflow block
        if any(user not in inside for user in ctx.var_usages.get(var, [])):
            return False
    return True


def _checked(ok):
    return (lambda ctx: _contained(ctx) and ok(ctx)) if ok is not None else _contained


def patterns() -> list[FusionPattern]:
    """The patterns, most specific first; each refuses a match that a value escapes
    (:func:`_contained`)."""
    return [FusionPattern(p.name, p.pattern, p.annotation_patterns, _checked(p.check)) for p in _patterns()]


def _patterns() -> list[FusionPattern]:
    pats = []
    for kind, layer_pat, ok in (
        ("conv2d", is_op("relax.nn.conv2d")(wildcard(), is_const()), _conv_ok),
        ("dense", is_op("relax.matmul")(wildcard(), is_const()), _dense_ok),
    ):
        ep = _epilogue(layer_pat)
        other = wildcard()
        residual = is_op("relax.add")(ep, other)
        annotations = {"layer": layer_pat}
        if kind == "conv2d":
            res_ann = {"layer": layer_pat, "epilogue": ep, "residual": other, "add": residual}
            pats += [FusionPattern("dlac.conv2d_residual_relu", is_op("relax.nn.relu")(residual),
                                   res_ann, _residual_ok),
                     FusionPattern("dlac.conv2d_residual", residual, res_ann, _residual_ok)]
        for suffix, pat in (("_relu", is_op("relax.nn.relu")(ep)),
                            ("_clip", is_op("relax.clip")(ep, wildcard(), wildcard())), ("", ep)):
            pats.append(FusionPattern(f"dlac.{kind}{suffix}", pat, annotations, ok))
    x, y = wildcard(), wildcard()
    add = is_op("relax.add")(x, y)
    mean = is_op("relax.mean")(wildcard())
    adaptive = is_op("relax.nn.adaptive_avg_pool2d")(wildcard())
    pats += [
        FusionPattern("dlac.max_pool2d", is_op("relax.nn.max_pool2d")(wildcard()), {}),
        FusionPattern("dlac.avg_pool2d", is_op("relax.nn.avg_pool2d")(wildcard()), {}),
        FusionPattern("dlac.global_avg_pool", mean, {"pool": mean}, _global_pool),
        FusionPattern("dlac.global_avg_pool", adaptive, {"pool": adaptive}, _global_pool),
        FusionPattern("dlac.add_relu", is_op("relax.nn.relu")(add), {"add": add}, _same_shape_add),
        FusionPattern("dlac.add", add, {"add": add}, _same_shape_add),
        FusionPattern("dlac.relu", is_op("relax.nn.relu")(wildcard()), {}),
        FusionPattern("dlac.reshape", is_op("relax.reshape")(wildcard(), wildcard()), {}),
    ]
    return pats


def _tag_layers(mod: tvm.IRModule, weight_owner: dict, plans: dict) -> tvm.IRModule:
    """Add ``dlac.layer`` (and the plan's ``dlac.precision``, ``dlac.weight_format``) to
    every composite function that holds a layer's weight."""
    out = mod.clone()
    for gv, region in relax_functions(mod):
        if region.attrs is None or "Codegen" not in region.attrs:
            continue

        @relax.expr_functor.mutator
        @carries_errors
        class _Tag(relax.PyExprMutator):
            def visit_function_(self, func):
                func = super().visit_function_(func)
                if func.attrs is not None and "Composite" in func.attrs:
                    for layer in find_layers(func):
                        name = weight_owner.get(layer.call.args[1])
                        if name:
                            func = func.with_attr("dlac.layer", name)
                            plan = plans.get(name)
                            if plan is not None:
                                func = func.with_attr("dlac.precision", plan.precision)
                                func = func.with_attr("dlac.weight_format", plan.weight_format.value)
                return func

        out[gv] = mutate(_Tag(mod), region)
    return out


@dataclass
class HostOp:
    op: str
    var: str
    shape: tuple | None


def partition(mod: tvm.IRModule, plans: dict | None = None) -> tuple[tvm.IRModule, list[HostOp]]:
    """Partition ``mod``; returns the module and the ops left on the host.  ``plans``:
    ``{layer var: LayerPlan}``, whose facts are attached to the layers' composites."""
    owners = {}
    for _, func in relax_functions(mod):
        for layer in find_layers(func):
            owners[layer.call.args[1]] = layer.name
    part = FuseOpsByPattern(patterns(), bind_constants=True)(mod)
    part = MergeCompositeFunctions()(part)
    part = _rename_regions(_tag_layers(part, owners, plans or {}))
    return part, host_ops(part)


def _rename_regions(mod: tvm.IRModule) -> tvm.IRModule:
    """``fused_relax_nn_conv2d_relax_add_...`` -> ``dlac_region_<i>``, in call order."""
    order = []
    for b in iter_bindings(mod["main"]):
        v = b.value
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.GlobalVar):
            func = mod[v.op]
            if func.attrs is not None and "Codegen" in func.attrs and v.op not in order:
                order.append(v.op)

    @relax.expr_functor.mutator
    @carries_errors
    class _Rename(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, tvm.ir.GlobalVar) and call.op in new_gv:
                return relax.Call(new_gv[call.op], call.args, call.attrs)
            return call

    renamer = _Rename(mod)
    new_gv = {}
    for i, old in enumerate(order):
        name = f"dlac_region_{i}"
        new_gv[old] = renamer.builder_.add_func(mod[old].with_attr("global_symbol", name), name)
    main_gv = mod.get_global_var("main")
    renamer.builder_.update_func(main_gv, mutate(renamer, mod["main"]))
    built = renamer.builder_.get()
    out = tvm.IRModule({gv: f for gv, f in built.functions_items() if gv not in new_gv}, attrs=mod.attrs)
    return out


def PartitionForDlac(plans: dict | None = None):  # noqa: N802 - TVM pass naming
    """PartitionForDlac as a TVM module pass (``plans``: as :func:`partition`'s)."""
    return module_pass("dlac.PartitionForDlac")(lambda mod: partition(mod, plans)[0])


def host_ops(mod: tvm.IRModule) -> list[HostOp]:
    """Op calls in ``main`` that are not inside a dLAC region."""
    out = []
    for b in iter_bindings(mod["main"]):
        name = op_name(b.value)
        if name is not None:
            out.append(HostOp(name.removeprefix("relax."), b.var.name, shape_of(b.var)))
    return out


def regions(mod: tvm.IRModule) -> list[tuple[str, list[str]]]:
    """``[(region name, [composite names])]`` of a partitioned module."""
    out = []
    for gv, func in relax_functions(mod):
        if func.attrs is None or "Codegen" not in func.attrs:
            continue
        comps = []
        for b in iter_bindings(func):
            if isinstance(b.value, relax.Function) and "Composite" in b.value.attrs:
                comps.append(str(b.value.attrs["Composite"]))
        out.append((gv.name_hint, comps))
    return out


def unpartition(mod: tvm.IRModule) -> tvm.IRModule:
    """Make a partitioned module buildable by ``tvm.compile`` for the CPU reference:
    region functions lose their ``Codegen`` attribute and local composite functions
    are lifted to module level (same computation, run by TVM on the host)."""
    out = tvm.IRModule({}, attrs=mod.attrs)
    changed = False
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.attrs is not None and "Codegen" in func.attrs:
            func = func.without_attr("Codegen")
            changed = True
        out[gv] = func
    return relax.transform.LambdaLift()(out) if changed else mod
