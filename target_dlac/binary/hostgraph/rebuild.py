"""A checked :class:`~target_dlac.binary.hostgraph.check.Graph` to a Relax ``IRModule``, rebuilt with
``relax.BlockBuilder`` (TVM infers and checks every node's type), with the work bound."""

from __future__ import annotations

import math

import numpy as np

from target_dlac.core.errors import BinaryFormatError, tvm_error_line

from . import vocabulary as V
from . import weights as W
from .check import Graph, _user, _Where, parse


def decode(blob: bytes, section: str):
    """The section as a Relax ``IRModule``, rebuilt from the checked description."""
    return build(parse(blob, section))


def constant_arrays(g: Graph) -> list[np.ndarray]:
    """The section's constants as NumPy arrays (fresh, C order): its own data, or the weight
    blocks of ``CONSTS`` they name, decoded and checked (:mod:`.weights`)."""
    w = _Where(g.section)
    out = []
    for i, c in enumerate(g.doc["constants"]):
        if "consts" in c:
            try:
                if g.consts is None:
                    raise ValueError("its weights are in the CONSTS section, which was not given")
                W.check_ref(c["consts"], c["shape"], c["dtype"], len(g.consts))
                out.append(W.decode(c["consts"], c["dtype"], g.consts).reshape(c["shape"]))
            except ValueError as e:
                w.at = f"constant {i} ({_user(g.doc['functions'], i)})"
                w.fail(str(e))
            continue
        n = math.prod(c["shape"])
        arr = np.frombuffer(g.data, dtype=np.dtype(c["dtype"]).newbyteorder("<"), count=n,
                            offset=c["offset"]).reshape(c["shape"])
        out.append(np.array(arr, dtype=c["dtype"], order="C"))        # keeps 0-d
    return out


def weight_index(blob: bytes, section: str = "REF") -> W.WeightIndex:
    """The CONSTS weights of a section (a :class:`~.weights.Section`), to encode its graph again."""
    g = parse(blob, section)
    return W.WeightIndex.of_graph(g, constant_arrays(g))


def build(g: Graph, arrays: list | None = None, stats: dict | None = None):
    """The checked graph ``g`` as a Relax module (``arrays``: its constants, if already
    decoded by :func:`constant_arrays`; the list is emptied as TVM takes them).  ``stats``,
    if given, receives ``work``: the graph's estimated operations (what
    ``LIMITS.work`` bounds)."""
    from tvm import relax

    w = _Where(g.section)
    arrays = constant_arrays(g) if arrays is None else arrays
    consts = []
    for i, c in enumerate(g.doc["constants"]):
        consts.append(relax.const(arrays[i], c["dtype"]))
        arrays[i] = None                # TVM holds its own copy: keep one at a time
    bb = relax.BlockBuilder()
    gvs, work = [], 0
    for f in g.doc["functions"]:
        params = [relax.Var(p["name"], relax.TensorType(p["shape"], p["dtype"])) for p in f["params"]]
        attrs = {"num_input": f["num_input"]} if "num_input" in f else None
        vals: list = []
        try:
            with bb.function(f["name"], params, attrs):
                for ni, node in enumerate(f["nodes"]):
                    w.at = f"function {f['name']} node {ni}"
                    expr = _expr(node, params, consts, vals, gvs, w)
                    try:
                        v = bb.emit(expr)
                    except Exception as e:  # noqa: BLE001 - TVM's type inference rejected it
                        w.fail(f"{node.get('op', 'call')}: TVM rejects the node: {tvm_error_line(e)}")
                    if not _tensors_only(v.ty):
                        w.fail(f"{node.get('op', 'node')}: its result is not a tensor or a tuple of tensors")
                    work += _work(node, v, expr, w)
                    if work > V.LIMITS.work:
                        w.fail(f"the graph's estimated work exceeds {V.LIMITS.work} operations (the limit)")
                    vals.append(v)
                w.at = f"function {f['name']} output"
                out = _arg(f["output"], params, consts, vals, w)
                if isinstance(out, relax.Tuple) and not all(_tensors_only(e.ty) for e in out.fields):
                    w.fail("the output holds something that is not a tensor")
                try:
                    bb.emit_func_output(out)
                except Exception as e:  # noqa: BLE001
                    w.fail(f"TVM rejects the output: {tvm_error_line(e)}")
        except BinaryFormatError:
            raise
        gvs.append(bb.get().get_global_var(f["name"]))
    mod = bb.get()
    for gv, fn in list(mod.functions_items()):
        mod[gv] = fn.with_attr("global_symbol", gv.name_hint)
    if stats is not None:
        stats["work"] = work
    return mod


def _arg(a, params, consts, vals, w):
    from tvm import relax
    from tvm.ir.prim.expr import FloatImm, IntImm

    tag = a[0]
    if tag == "p":
        return params[a[1]]
    if tag == "c":
        return consts[a[1]]
    if tag == "v":
        return vals[a[1]]
    if tag == "shape":
        return relax.ShapeExpr([int(d) for d in a[1]])
    if tag == "int":
        return IntImm(a[2], int(a[1]))
    if tag == "float":
        return FloatImm(a[2], float(a[1]))
    if tag == "tuple":
        return relax.Tuple([_arg(e, params, consts, vals, w) for e in a[1]])
    inner = _arg(a[1], params, consts, vals, w)
    ty = inner.ty
    if not isinstance(ty, relax.TupleType) or a[2] >= len(ty.fields):
        w.fail(f"item {a[2]} of an operand that is not a tuple of more than {a[2]} fields")
    return relax.TupleGetItem(inner, a[2])


def _expr(node, params, consts, vals, gvs, w):
    import tvm
    from tvm import relax

    if "value" in node:
        return _arg(node["value"], params, consts, vals, w)
    args = [_arg(a, params, consts, vals, w) for a in node["args"]]
    if "call" in node:
        return relax.Call(gvs[node["call"]], args)
    op = node["op"]
    if op == "relax.take":
        _check_take(args, node["attrs"]["fields"], w)
    attrs = None
    if node["attrs"] is not None:
        attrs = tvm.ir.make_node(node["attrs"]["type"], **_fields(node["attrs"]["type"], node["attrs"]["fields"]))
    return relax.Call(tvm.ir.Op.get(op), args, attrs)


def _fields(kind: str, fields: dict) -> dict:
    """Attribute fields as TVM's node constructor takes them: split indices and the
    resize region of interest are arrays of typed scalars (plain ints make TVM abort)."""
    from tvm.ir.prim.expr import FloatImm, IntImm

    if kind == "relax.attrs.SplitAttrs" and isinstance(fields["indices_or_sections"], list):
        return {**fields, "indices_or_sections": [IntImm("int64", v) for v in fields["indices_or_sections"]]}
    if kind == "relax.attrs.Resize2DAttrs":
        return {**fields, "roi": [FloatImm("float32", v) for v in fields["roi"]]}
    return fields


def _check_take(args, fields, w) -> None:
    """``take`` in ``fast`` mode does no bounds check: its indices must be constants in range."""
    from target_dlac.core.ir import is_const

    if fields["mode"] != "fast":
        return
    data, idx = args
    if not is_const(idx):
        w.fail("relax.take in 'fast' mode (no bounds check) needs constant indices")
    dim = [int(s) for s in data.ty.shape.values][fields["axis"]]
    values = idx.value.numpy()
    if values.size and (values.min() < 0 or values.max() >= dim):
        w.fail(f"relax.take indices outside [0, {dim})")


def _tensors_only(ty) -> bool:
    """A static tensor, or a non-empty tuple of them (nested at most once more)."""
    from tvm import relax

    if isinstance(ty, relax.TensorType):
        return ty.shape is not None
    if isinstance(ty, relax.TupleType):
        return bool(len(ty.fields)) and all(isinstance(f, relax.TensorType) and f.shape is not None
                                            for f in ty.fields)
    return False


def _elements(ty) -> int:
    from tvm import relax

    if isinstance(ty, relax.TensorType):
        if ty.shape is None:
            return -1
        try:
            return math.prod(int(s) for s in ty.shape.values)
        except (TypeError, ValueError):
            return -1
    if isinstance(ty, relax.TupleType):
        parts = [_elements(f) for f in ty.fields]
        return -1 if any(p < 0 for p in parts) else sum(parts)
    return 0


def _work(node, v, expr, w) -> int:
    """Estimated operations of a node: output elements times the reduction each needs
    (conv2d: C/groups x kh x kw; matmul: K; pooling: the window; reductions: the input;
    multi-pass ops: the input times their ``vocabulary.WORK`` factor)."""
    from tvm import relax

    out = _elements(v.ty)
    if out < 0:
        w.fail("the node's result has no static shape")
    if out > V.LIMITS.elements:
        w.fail(f"the node's result has {out} elements (the limit is {V.LIMITS.elements})")
    op = node.get("op")
    if op is None:
        return out
    ins = [_elements(a.ty) for a in expr.args if isinstance(a.ty, (relax.TensorType, relax.TupleType))]
    fields = (node["attrs"] or {}).get("fields", {})
    if op == "relax.nn.conv2d":
        wshape = [int(s) for s in expr.args[1].ty.shape.values]
        return out * max(1, wshape[1] * wshape[2] * wshape[3])
    if op == "relax.matmul":
        return out * max(1, int(expr.args[0].ty.shape.values[-1]))
    if op in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d"):
        return out * fields["pool_size"][0] * fields["pool_size"][1]
    return max([out] + ins) * V.WORK.get(op, 1)
