"""PartitionForDlac: group what dLAC executes into regions; the rest is host.

Rewrites the graph with Relax's pattern partitioning (``FuseOpsByPattern``
then ``MergeCompositeFunctions``): each match becomes a composite function
``dlac.<pattern>`` and adjacent composites merge into region functions with
``Codegen = "dlac"``.  Patterns, most specific first:

* a layer (conv2d or dense with a constant weight) with its epilogue
  (``acc * scale + bias`` or ``acc + bias``), optionally a residual add, and
  optionally ReLU (``nn.relu``, or a thresholded ReLU ``where(x > T, x, 0)`` with a scalar
  ``T > 0``, :mod:`passes.relu_threshold`) or clip: ``dlac.conv2d[_residual][_relu|_clip]``,
  ``dlac.dense[_relu|_clip]``; or (no residual) one of EPI's other activations in the
  forms the frontends emit (:func:`_act_patterns`): ``dlac.{conv2d,dense}_<act>`` for
  ``leaky_relu``, ``prelu``, ``hardswish``, ``hardsigmoid``, ``silu``, ``sigmoid``,
  ``tanh``, ``gelu``, ``gelu_tanh``;
* pooling: ``dlac.max_pool2d``, ``dlac.avg_pool2d``, ``dlac.global_avg_pool``
  (mean over H, W or adaptive average pool to 1x1);
* element-wise: ``dlac.add[_relu]`` of two same-shape tensors, ``dlac.relu``, and the
  standalone float activations ALU has (``dlac.<act>`` for ``isa.ALU_ACTS``: not leaky
  ReLU or PReLU, whose slopes ALU cannot hold);
* views: ``dlac.reshape`` (flatten/reshape are address views on dLAC).
* ``dlac.concat``: a concat along axis 1 (channels) of static float32 rank-4 or rank-2
  tensors (:func:`_concat_ok`; copies through INP/ACC, ``target_dlac/codegen/concat.py``).
* ``dlac.matmul``: a matmul of two computed tensors (attention's ``q @ k^T``,
  ``softmax @ v``) with the same batch dimensions; the left operand is the MAC weight
  block, read from its DRAM address at run time (``target_dlac/codegen/matmul.py``).

Each composite that holds a layer gets the attribute ``dlac.layer`` (its
name), so later stages can find per-layer data, and, when the layer plans are given,
``dlac.precision`` and ``dlac.weight_format`` (the plan's; the decomposition itself
travels in the plan, :class:`target_dlac.core.plan.LayerPlan`).  Legal: partitioning moves
computation into functions without changing it (``unpartition`` undoes it
for the TVM CPU reference).  Conv2d is placed on dLAC only for NCHW/OIHW and
dilation 1 (any groups: depthwise, or G convolutions on channel slices); anything else
stays on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern, FuseOpsByPattern, MergeCompositeFunctions

from target_dlac.isa.encoding import ALU_ACTS
from target_dlac.core.ir import const_np, is_const as is_constant, carries_errors, mutate, attrs_to_dict, ints, iter_bindings, module_pass, op_name, relax_functions, shape_of
from target_dlac.core.ir import dtype_of
from target_dlac.core.errors import CodegenError
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
    return groups >= 1 and cin % groups == 0 and cout % groups == 0     # any grouping (incl. depthwise)


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


def _act_matmul_ok(ctx) -> bool:
    """``dlac.matmul``: both operands computed (not constants), static float32, of equal rank
    >= 2 and the same batch dimensions (``target_dlac/codegen/matmul.py`` takes no broadcasting)."""
    mm = ctx.annotated_expr["mm"]
    a, b = mm.args
    sa, sb = shape_of(a), shape_of(b)
    if is_constant(a) or is_constant(b) or sa is None or sb is None or shape_of(mm) is None:
        return False
    if any(dtype_of(e) != "float32" for e in (a, b, mm)):
        return False
    return len(sa) == len(sb) >= 2 and sa[:-2] == sb[:-2] and sa[-1] == sb[-2]


def _same_shape_add(ctx) -> bool:
    add = ctx.annotated_expr["add"]
    a, b = add.args
    return shape_of(a) is not None and shape_of(a) == shape_of(b)


def _concat_ok(ctx) -> bool:
    """``dlac.concat``: a concat along axis 1 of static float32 tensors of rank 4 (NCHW
    channels) or 2, given as a tuple (``target_dlac/codegen/concat.py`` copies each input
    into its slice of the output)."""
    call = ctx.annotated_expr["cat"]
    tup, out = call.args[0], shape_of(call)
    if not isinstance(tup, relax.Tuple) or out is None or len(out) not in (2, 4) or dtype_of(call) != "float32":
        return False
    axis = attrs_to_dict(call.attrs).get("axis")
    return axis is not None and int(axis) % len(out) == 1 and all(
        shape_of(f) is not None and len(shape_of(f)) == len(out) and dtype_of(f) == "float32" for f in tup.fields)


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


def _scalar_is(ctx, key: str, value: float) -> bool:
    c = ctx.annotated_expr[key] if key in ctx.annotated_expr else None
    try:
        v = const_np(c) if c is not None and is_constant(c) else None
    except Exception:      # noqa: BLE001 - not a readable constant: not this activation
        v = None
    return v is not None and v.size == 1 and float(v.reshape(-1)[0]) == value


def _relu(v):
    """``(pattern, annotations)`` of a ReLU of ``v``: ``nn.relu(v)`` or the thresholded form
    ``where(greater(v, T), v, 0)`` (:func:`_threshold_ok` checks the constants)."""
    thr, zero = is_const(), is_const()
    pat = is_op("relax.nn.relu")(v) | is_op("relax.where")(is_op("relax.greater")(v, thr), v, zero)
    return pat, {"thr": thr, "zero": zero}


def _threshold_ok(ctx) -> bool:
    """A thresholded ReLU's ``T`` is one float32 value above 0 and its ``else`` value is 0
    (``T == 0`` is never emitted: the graph keeps ``nn.relu``)."""
    ann = ctx.annotated_expr
    if "thr" not in ann:
        return True
    try:
        t = const_np(ann["thr"])
    except Exception:      # noqa: BLE001 - not a readable constant: not this form
        return False
    return t.size == 1 and t.dtype == "float32" and float(t.reshape(-1)[0]) > 0 and _scalar_is(ctx, "zero", 0.0)


def _relu6_ok(ctx) -> bool:
    """The clip (or torch's two clips) of a hardswish / hardsigmoid bound to [0, 6], the
    constants 3 (when present: a hardsigmoid's ``+ 3`` may be folded into the bias) and 6."""
    ann = ctx.annotated_expr
    bounds = []
    for key in ("lo1", "hi1", "lo2", "hi2"):
        if key in ann:
            v = ann[key]
            while hasattr(v, "value") and not isinstance(v, (int, float)):
                v = v.value
            try:
                bounds.append(float(v))
            except (TypeError, ValueError):
                return False
    lo, hi = max(bounds[0::2]), min(bounds[1::2])
    return lo == 0.0 and hi == 6.0 and _scalar_is(ctx, "c6", 6.0) and ("c3" not in ann or _scalar_is(ctx, "c3", 3.0))


def _act_patterns(x, layer: bool = True):
    """``(act, pattern, annotations, check)`` of each float activation of dLAC's EPI / ALU
    applied to ``x``, in the forms the frontends emit (torch.export: hardswish as
    ``x * clip(x + 3, 0, 6) / 6``, hardsigmoid as ``clip(x + 3, 0, 6) / 6`` with the ``+ 3``
    folded into a layer's bias, PReLU as ``where(x > 0, x, x * slope)``, SiLU as
    ``x * sigmoid(x)``); the checks pin the constants (the composite parse checks the rest)."""
    c3, c6, c0 = is_const(), is_const(), is_const()
    lo1, hi1, lo2, hi2 = wildcard(), wildcard(), wildcard(), wildcard()

    def relu6(v):
        inner = is_op("relax.clip")(v, lo1, hi1)
        return inner | is_op("relax.clip")(inner, lo2, hi2)

    r6 = relu6(is_op("relax.add")(x, c3))
    ann = {"c3": c3, "c6": c6, "lo1": lo1, "hi1": hi1, "lo2": lo2, "hi2": hi2}
    yes = lambda ctx: True  # noqa: E731
    prelu = is_op("relax.nn.prelu")(x, is_const()) | is_op("relax.where")(
        is_op("relax.greater")(x, c0), x, is_op("relax.multiply")(x, is_const()))
    return [
        ("hardswish", is_op("relax.divide")(is_op("relax.multiply")(x, r6), c6)         # torch.export
         | is_op("relax.multiply")(x, is_op("relax.divide")(r6, c6)), ann, _relu6_ok),  # ONNX
        ("hardsigmoid", is_op("relax.divide")(r6 | relu6(x) if layer else r6, c6), ann, _relu6_ok),
        ("silu", is_op("relax.nn.silu")(x) | is_op("relax.multiply")(x, is_op("relax.sigmoid")(x)), {}, yes),
        ("prelu", prelu, {"c0": c0}, lambda ctx: "c0" not in ctx.annotated_expr or _scalar_is(ctx, "c0", 0.0)),
        ("leaky_relu", is_op("relax.nn.leakyrelu")(x), {}, yes),
        *[(act, is_op(f"relax.{op}")(x), {}, yes) for act, op in (
            ("sigmoid", "sigmoid"), ("tanh", "tanh"), ("gelu", "nn.gelu"), ("gelu_tanh", "nn.gelu_tanh"))],
    ]


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
            relu, relu_ann = _relu(residual)
            pats += [FusionPattern("dlac.conv2d_residual_relu", relu, {**res_ann, **relu_ann},
                                   lambda ctx: _residual_ok(ctx) and _threshold_ok(ctx)),
                     FusionPattern("dlac.conv2d_residual", residual, res_ann, _residual_ok)]
        for act, pat, ann, act_ok in _act_patterns(ep):
            pats.append(FusionPattern(f"dlac.{kind}_{act}", pat, {**annotations, **ann},
                                      lambda ctx, ok=ok, act_ok=act_ok: ok(ctx) and act_ok(ctx)))
        relu, relu_ann = _relu(ep)
        pats.append(FusionPattern(f"dlac.{kind}_relu", relu, {**annotations, **relu_ann},
                                  lambda ctx, ok=ok: ok(ctx) and _threshold_ok(ctx)))
        for suffix, pat in (("_clip", is_op("relax.clip")(ep, wildcard(), wildcard())), ("", ep)):
            pats.append(FusionPattern(f"dlac.{kind}{suffix}", pat, annotations, ok))
    mm = is_op("relax.matmul")(wildcard(), wildcard())      # activation x activation (attention)
    pats.append(FusionPattern("dlac.matmul", mm, {"mm": mm}, _act_matmul_ok))
    x, y = wildcard(), wildcard()
    add = is_op("relax.add")(x, y)
    mean = is_op("relax.mean")(wildcard())
    adaptive = is_op("relax.nn.adaptive_avg_pool2d")(wildcard())
    cat = is_op("relax.concat")(wildcard())
    pats += [
        FusionPattern("dlac.max_pool2d", is_op("relax.nn.max_pool2d")(wildcard()), {}),
        FusionPattern("dlac.avg_pool2d", is_op("relax.nn.avg_pool2d")(wildcard()), {}),
        FusionPattern("dlac.global_avg_pool", mean, {"pool": mean}, _global_pool),
        FusionPattern("dlac.global_avg_pool", adaptive, {"pool": adaptive}, _global_pool),
        FusionPattern("dlac.add_relu", is_op("relax.nn.relu")(add), {"add": add}, _same_shape_add),
        FusionPattern("dlac.add", add, {"add": add}, _same_shape_add),
        FusionPattern("dlac.relu", is_op("relax.nn.relu")(wildcard()), {}),
        *[FusionPattern(f"dlac.{act}", pat, ann, act_ok) for act, pat, ann, act_ok in _act_patterns(wildcard(), False)
          if act in ALU_ACTS],
        FusionPattern("dlac.reshape", is_op("relax.reshape")(wildcard(), wildcard()), {}),
        FusionPattern("dlac.concat", cat, {"cat": cat}, _concat_ok),
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
    part = _fuse_and_merge(mod, patterns())
    if _undefined(part):
        # TVM 0.27's MergeCompositeFunctions can drop a TupleGetItem of a multi-output region
        # when concat composites sit between recurrent steps (ONNX GRU): leave concats on the host
        part = _fuse_and_merge(mod, [p for p in patterns() if p.name != "dlac.concat"])
    if _undefined(part):
        raise CodegenError(f"partitioning left variables undefined in main: {', '.join(_undefined(part)[:5])} "
                         "(TVM MergeCompositeFunctions)")
    part = _rename_regions(_tag_layers(part, owners, plans or {}))
    return part, host_ops(part)


def _undefined(mod: tvm.IRModule) -> list[str]:
    """Names of the variables ``main`` uses but never defines (empty for a sound module)."""
    return [v.name for v in relax.analysis.free_vars(mod["main"])]


def _fuse_and_merge(mod: tvm.IRModule, pats) -> tvm.IRModule:
    return MergeCompositeFunctions()(FuseOpsByPattern(pats, bind_constants=True)(mod))


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
