"""A Relax ``IRModule`` to a section (compile time): refused if it uses anything outside the
vocabulary, and loaded back before it is returned."""

from __future__ import annotations

import math
import zlib

import numpy as np

from target_dlac.core.errors import BinaryFormatError, CodegenError

from . import vocabulary as V
from .check import ALIGN, pack, parse
from .rebuild import build, constant_arrays
from .weights import Section, WeightIndex, digest
from .vocabulary import _NAME, DTYPES, OPS


def encode(mod, what: str = "graph", level: int = 6, weights: WeightIndex | None = None) -> bytes:
    """``mod`` as a section; :class:`CodegenError` naming the function and op if it uses
    anything outside the vocabulary.  The section is loaded back (checked and rebuilt, as
    ``dlac run`` will) before it is returned, so a binary never holds a graph that its
    own loader refuses (a limit, ``take`` indices out of range, ...).

    ``weights``: the program's packed layer weights; a constant equal to one of them bit
    for bit is written as a reference to its blocks in ``CONSTS`` (:mod:`.weights`), and
    the result is a :class:`Section` carrying that ``CONSTS`` image.  Loading back decodes
    those constants and checks them against the originals (their SHA-256)."""
    enc = _Encoder(what, weights)
    doc, data = enc.module(mod)
    raw = pack(doc, data)
    if len(raw) > V.LIMITS.decompressed:
        raise CodegenError(f"the {what} graph needs {len(raw)} bytes, more than the section limit of "
                           f"{V.LIMITS.decompressed}" + (" (compile with --no-reference to leave it out)"
                                                       if what == "reference" else ""))
    blob = zlib.compress(raw, level)
    consts = weights.consts if weights is not None else None
    try:
        g = parse(blob, what.upper(), consts)
        arrays = constant_arrays(g)
        for i, want in enc.shared.items():
            if digest(arrays[i]) != want:
                raise CodegenError(f"the {what} graph's constant {i} does not decode from its CONSTS "
                                   "blocks to the same array (a dlac bug: please report it)")
        build(g, arrays)
    except BinaryFormatError as e:
        raise CodegenError(f"the {what} graph cannot be loaded back: {e}"
                           + (" (compile with --no-reference to leave it out)" if what == "reference" else "")
                           ) from None
    return Section(blob, consts) if consts is not None else blob




class _Encoder:
    def __init__(self, what, weights=None):
        self.what = what
        self.weights = weights
        self.consts: list[dict] = []
        self.const_ids: dict = {}
        self.shared: dict = {}           # constant index -> SHA-256 of a constant taken from CONSTS
        self.data = bytearray()

    def fail(self, msg):
        raise CodegenError(f"{self.what} graph: {msg}")

    def module(self, mod):
        from tvm import relax

        funcs = {gv.name_hint: fn for gv, fn in mod.functions_items()}
        for name, fn in funcs.items():
            if not isinstance(fn, relax.Function):
                self.fail(f"function {name} is not a Relax function ({type(fn).__name__})")
        order, index = [], {}

        def visit(name, stack=()):
            if name in index:
                return
            if name in stack:
                self.fail(f"function {name} is recursive")
            for callee in _callees(funcs[name]):
                if callee not in funcs:
                    self.fail(f"function {name} calls {callee}, which is not in the module")
                visit(callee, stack + (name,))
            index[name] = len(order)
            order.append(name)
        for name in funcs:
            visit(name)
        out = [self.function(name, funcs[name], index) for name in order]
        return {"functions": out, "constants": self.consts}, bytes(self.data)

    def const(self, c) -> list:
        if c in self.const_ids:
            return ["c", self.const_ids[c]]
        value = c.value.numpy()
        dtype = str(value.dtype)
        if dtype not in DTYPES:
            self.fail(f"a constant of dtype {dtype} (allowed: {tuple(DTYPES)})")
        i = len(self.consts)
        ref = self.weights.lookup(value) if self.weights is not None and value.ndim in (2, 4) else None
        if ref is not None:
            self.consts.append({"shape": [int(d) for d in value.shape], "dtype": dtype, "consts": ref})
            self.shared[i] = digest(value)
            self.const_ids[c] = i
            return ["c", i]
        off = len(self.data)
        self.data.extend(np.ascontiguousarray(value, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
        self.data.extend(b"\0" * (-len(self.data) % ALIGN))
        self.consts.append({"shape": [int(d) for d in value.shape], "dtype": dtype, "offset": off})
        self.const_ids[c] = i
        return ["c", i]

    def function(self, name, fn, index):
        from tvm import relax

        from target_dlac.core.ir import dtype_of, shape_of

        self.at = f"function {name}"
        if not _NAME.match(name) or len(name) > V.LIMITS.name:
            self.fail(f"function name {name!r} is not an identifier of at most {V.LIMITS.name} characters")
        env = {}
        params = []
        for i, p in enumerate(fn.params):
            shape = shape_of(p)
            if not isinstance(p.ty, relax.TensorType) or shape is None:
                self.fail(f"{self.at}: parameter {p.name} is not a static tensor")
            if not 0 < len(p.name) <= V.LIMITS.name or not p.name.isprintable():
                self.fail(f"{self.at}: parameter name {p.name[:V.LIMITS.name]!r} is empty, too long or "
                          "not printable")
            params.append({"name": p.name, "shape": list(shape), "dtype": dtype_of(p)})
            env[p] = ["p", i]
        nodes = []
        body = fn.body
        for block in body.blocks:
            for b in block.bindings:
                if not isinstance(b, relax.VarBinding):
                    self.fail(f"{self.at}: binding {b.var.name} is a {type(b).__name__}")
                nodes.append(self.node(b.value, env, index))
                env[b.var] = ["v", len(nodes) - 1]
        rec = {"name": name, "params": params, "nodes": nodes, "output": self.arg(body.body, env)}
        if fn.attrs is not None and "num_input" in fn.attrs:
            rec["num_input"] = int(fn.attrs["num_input"])
        return rec

    def node(self, value, env, index):
        import tvm
        from tvm import relax

        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
            return {"call": index[value.op.name_hint], "args": [self.arg(a, env) for a in value.args]}
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            op = str(value.op.name)
            if not isinstance(op, str) or op not in OPS:
                self.fail(f"{self.at}: op {op} has no safe form in a binary (not in the closed "
                          "vocabulary of target_dlac/binary/hostgraph.py), so it cannot be a host op")
            if value.ty_args is not None and len(value.ty_args):
                self.fail(f"{self.at}: op {op} with type arguments")
            return {"op": op, "args": [self.arg(a, env) for a in value.args], "attrs": call_attrs(value)}
        if isinstance(value, relax.Call):
            self.fail(f"{self.at}: a call to {type(value.op).__name__}")
        return {"value": self.arg(value, env)}

    def arg(self, a, env):
        from tvm import relax
        from tvm.ir.prim.expr import FloatImm, IntImm

        from target_dlac.core.ir import is_const

        if isinstance(a, relax.Var):
            if a not in env:
                self.fail(f"{self.at}: variable {a.name} is not defined before its use")
            return env[a]
        if is_const(a):
            return self.const(a)
        if isinstance(a, IntImm):
            return ["int", int(a.value), str(a.ty.dtype)]
        if isinstance(a, FloatImm):
            v = float(a.value)
            if math.isnan(v):
                self.fail(f"{self.at}: a NaN scalar operand")
            return ["float", v if math.isfinite(v) else ("inf" if v > 0 else "-inf"), str(a.ty.dtype)]
        if isinstance(a, relax.ShapeExpr):
            try:
                return ["shape", [int(v) for v in a.values]]
            except (TypeError, ValueError):
                self.fail(f"{self.at}: a symbolic shape")
        if isinstance(a, relax.Tuple):
            return ["tuple", [self.arg(f, env) for f in a.fields]]
        if isinstance(a, relax.TupleGetItem):
            return ["item", self.arg(a.tuple_value, env), int(a.index)]
        self.fail(f"{self.at}: operand of kind {type(a).__name__}")


def call_attrs(call) -> dict | None:
    """A Relax call's attributes in the section's JSON form: ``{"type", "fields"}`` or None."""
    from target_dlac.core.ir import attrs_to_dict

    if call.attrs is None:
        return None
    kind = type(call.attrs).__tvm_ffi_type_info__.type_key
    return {"type": kind, "fields": {k: _jsonable(v) for k, v in attrs_to_dict(call.attrs).items()}}


def _jsonable(v):
    from tvm.ir.prim.expr import FloatImm, IntImm

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, IntImm):
        return int(v.value)
    if isinstance(v, FloatImm):
        return float(v.value)
    if isinstance(v, (list, tuple)) or type(v).__name__ == "Array":
        return [_jsonable(e) for e in v]
    return str(v)         # dtype, String


def _callees(fn) -> list[str]:
    import tvm
    from tvm import relax

    out = []
    for block in fn.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.GlobalVar):
                out.append(v.op.name_hint)
    return out
