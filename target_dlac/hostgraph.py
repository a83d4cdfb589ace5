"""The graph format of the ``HOST`` and ``REF`` sections: a Relax graph in a closed vocabulary.

A ``.dlac`` file may carry two Relax modules: the host functions (ops dLAC does not run,
``HOST``) and the quantized graph that ``dlac run --check`` builds as its oracle (``REF``).
Neither is stored as TVM's own serialization (``tvm.ir.save_json`` can name any IR node,
external functions and low-level code among them, and ``load_json`` crashes on
self-referencing graphs).  Instead a section holds dlac's own description of the graph,
which dlac rebuilds itself from a closed vocabulary:

* every call is to a Relax operator of :data:`OPS` (high-level ops such as
  ``relax.nn.conv2d``; no ``call_tir``, ``call_packed``, externs or TIR), with the
  argument kinds the operator takes and the attributes of its attribute type, each
  checked against :data:`ATTRS` (types, ranges, layouts, dtypes);
* or to a function defined *earlier* in the section (no recursion);
* every operand refers to a parameter, a constant of the section, or an earlier node,
  so a graph is acyclic by construction; tuples and tuple items are the only other
  expressions;
* shapes are static; sizes, depths and counts are bounded (:data:`LIMITS`), and the
  estimated work of the whole graph too.

:func:`check_graph` validates all of that with plain Python (no TVM); :func:`decode`
then rebuilds the module with ``relax.BlockBuilder`` (TVM infers and checks every
node's type) and :mod:`target_dlac.host` lowers it with ``tvm.compile``.
:func:`encode` (compile time) refuses a module with anything outside the vocabulary,
so an op that cannot be written in this form cannot be a host op.

Section layout, zlib-compressed (decompressed size capped at ``LIMITS.decompressed``)::

    0   8  magic b"DLACGRF1"
    8   4  u32 length J of the JSON description
    12  J  JSON (UTF-8): {"functions": [...], "constants": [...]}
    ...    constant data (each constant 16-byte aligned, offsets relative to this point)

JSON: ``functions`` is a list of ``{"name", "params": [{"name", "shape", "dtype"}],
"num_input"?: int, "nodes": [NODE...], "output": ARG}``; a NODE is
``{"op": NAME, "args": [ARG...], "attrs": {...}}``, ``{"call": FUNCTION_INDEX, "args": [...]}``
or ``{"value": ARG}``; an ARG is ``["p", i]`` (parameter), ``["c", i]`` (constant),
``["v", i]`` (node), ``["shape", [ints]]``, ``["int", v, dtype]``, ``["float", v, dtype]``,
``["tuple", [ARG...]]`` or ``["item", ARG, i]``.  ``constants`` is a list of
``{"shape", "dtype", "offset"}``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from compiler.errors import BinaryFormatError, CodegenError

MAGIC = b"DLACGRF1"
ALIGN = 16


@dataclass(frozen=True)
class Limits:
    """Bounds on what one section may describe (documented in docs/isa.md, "Limits").
    Measured: torchvision ResNet-50 at 224x224 (the largest model of the zoo) has a REF
    graph of 102 MB uncompressed and 177 nodes with fp32 weights (32 MB, 229 nodes
    ternary), and 4.1 G multiply-accumulates."""
    decompressed: int = 512 << 20          # bytes after zlib
    json_bytes: int = 64 << 20
    functions: int = 4096
    nodes: int = 50_000                    # over all functions
    params: int = 256                      # per function
    args: int = 64                         # operands of one node (tuple fields included)
    depth: int = 4                         # nesting of tuple / item operands
    rank: int = 8
    elements: int = 1 << 28                # of any one tensor (1 GiB of float32)
    work: int = 1 << 33                    # estimated operations of a whole graph (~10 s untuned)
    name: int = 128                        # characters of a function or parameter name


LIMITS = Limits()

DTYPES = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
          "int32": 4, "int64": 8, "bool": 1}
PRIM_DTYPES = ("int32", "int64", "float32", "float64")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---- the vocabulary ---------------------------------------------------------------------
# attribute validators: value (JSON) -> normalized value, or raise ValueError
def _int(lo, hi):
    def check(v):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"an integer in [{lo}, {hi}]")
        return v
    return check


def _ints(lo, hi, lengths, optional=False):
    elem = _int(lo, hi)

    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, list) or len(v) not in lengths:
            raise ValueError(f"a list of {' or '.join(map(str, lengths))} integers in [{lo}, {hi}]")
        return [elem(e) for e in v]
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _float(lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"a finite number in [{lo}, {hi}]")
        return float(v)
    return check


def _enum(*values):
    def check(v):
        if v not in values:
            raise ValueError(f"one of {values}")
        return v
    return check


def _dtype(optional=False):
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or v not in DTYPES:
            raise ValueError(f"a dtype of {tuple(DTYPES)}" + (" or null" if optional else ""))
        return v
    return check


def _axis_or_axes(v):
    if v is None:
        return None
    return _ints(-LIMITS.rank, LIMITS.rank - 1, range(0, LIMITS.rank + 1))(v)


BIG = 1 << 16
_AXIS = _int(-LIMITS.rank, LIMITS.rank - 1)
_WINDOW = _ints(1, BIG, (2,))
_PAD = _ints(0, BIG, (2, 4))

#: attribute type -> {field: validator}; a node's attrs must have exactly these fields
ATTRS = {
    "relax.attrs.Conv2DAttrs": {
        "strides": _WINDOW, "padding": _PAD, "dilation": _WINDOW, "groups": _int(1, BIG),
        "data_layout": _enum("NCHW"), "kernel_layout": _enum("OIHW"), "out_layout": _enum("NCHW"),
        "out_dtype": _dtype(optional=True)},
    "relax.attrs.Pool2DAttrs": {
        "pool_size": _WINDOW, "strides": _WINDOW, "dilation": _WINDOW, "padding": _PAD,
        "ceil_mode": _bool, "count_include_pad": _bool, "layout": _enum("NCHW"),
        "out_layout": _enum("NCHW")},
    "relax.attrs.AdaptivePool2DAttrs": {
        "output_size": _ints(1, BIG, (1, 2), optional=True), "layout": _enum("NCHW"),
        "out_layout": _enum("NCHW")},
    "relax.attrs.StridedSliceAttrs": {"assume_inbound": _enum(False)},
    "relax.attrs.ConcatAttrs": {"axis": _AXIS},
    "relax.attrs.SplitAttrs": {"indices_or_sections": lambda v: (
        _int(1, BIG)(v) if isinstance(v, int) else _ints(0, 1 << 31, range(1, 257))(v)), "axis": _AXIS},
    "relax.attrs.SoftmaxAttrs": {"axis": _AXIS},
    "relax.attrs.StatisticalAttrs": {"axis": _axis_or_axes, "keepdims": _bool},
    "relax.attrs.PermuteDimsAttrs": {"axes": _axis_or_axes},
    "relax.attrs.AstypeAttrs": {"dtype": _dtype()},
    "relax.attrs.MatmulAttrs": {"out_dtype": _dtype(optional=True)},
    "relax.attrs.PadAttrs": {"pad_width": _ints(0, BIG, range(2, 2 * LIMITS.rank + 1, 2)),
                             "pad_value": _float(-3.4e38, 3.4e38), "pad_mode": _enum("constant")},
    "relax.attrs.QuantizeAttrs": {"out_dtype": _dtype(), "axis": _AXIS},
    "relax.attrs.InitAttrs": {"dtype": _dtype(optional=True)},
    "relax.attrs.TakeAttrs": {"axis": _AXIS, "mode": _enum("fast", "clip", "wrap")},
    "relax.attrs.SqueezeAttrs": {"axis": _axis_or_axes},
    "relax.attrs.ExpandDimsAttrs": {"axis": _ints(-LIMITS.rank, LIMITS.rank - 1, range(1, LIMITS.rank + 1))},
    "relax.attrs.LeakyReluAttrs": {"alpha": _float(-1e6, 1e6)},
    "relax.attrs.DropoutAttrs": {"rate": _float(0.0, 1.0)},
    "relax.attrs.BatchNormAttrs": {"axis": _AXIS, "epsilon": _float(0.0, 1.0), "center": _bool,
                                   "scale": _bool, "momentum": _float(0.0, 1.0), "training": _enum(False)},
}

# operand kinds: T tensor, L tuple of tensors, S shape, P scalar, I tuple of integer scalars
_UNARY = ("T",)
_BINARY = ("TT",)
#: Relax op -> (accepted operand patterns, attribute type or None)
OPS = {
    **{f"relax.{n}": (_UNARY, None) for n in (
        "nn.relu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "negative", "abs", "round", "floor",
        "ceil", "isnan", "flatten", "nn.gelu", "nn.silu")},
    **{f"relax.{n}": (_BINARY, None) for n in (
        "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "right_shift",
        "left_shift")},
    "relax.where": (("TTT",), None),
    "relax.clip": (("TPP",), None),
    "relax.reshape": (("TS",), None),
    "relax.broadcast_to": (("TS",), None),
    "relax.nn.conv2d": (_BINARY, "relax.attrs.Conv2DAttrs"),
    "relax.nn.max_pool2d": (_UNARY, "relax.attrs.Pool2DAttrs"),
    "relax.nn.avg_pool2d": (_UNARY, "relax.attrs.Pool2DAttrs"),
    "relax.nn.adaptive_avg_pool2d": (_UNARY, "relax.attrs.AdaptivePool2DAttrs"),
    "relax.strided_slice": (("TIII", "TIIII"), "relax.attrs.StridedSliceAttrs"),
    "relax.concat": (("L",), "relax.attrs.ConcatAttrs"),
    "relax.split": (_UNARY, "relax.attrs.SplitAttrs"),
    "relax.nn.softmax": (_UNARY, "relax.attrs.SoftmaxAttrs"),
    "relax.nn.log_softmax": (_UNARY, "relax.attrs.SoftmaxAttrs"),
    **{f"relax.{n}": (_UNARY, "relax.attrs.StatisticalAttrs") for n in ("mean", "sum", "max", "min")},
    "relax.permute_dims": (_UNARY, "relax.attrs.PermuteDimsAttrs"),
    "relax.astype": (_UNARY, "relax.attrs.AstypeAttrs"),
    "relax.matmul": (_BINARY, "relax.attrs.MatmulAttrs"),
    "relax.nn.pad": (_UNARY, "relax.attrs.PadAttrs"),
    "relax.quantize": (("TTT",), "relax.attrs.QuantizeAttrs"),
    "relax.dequantize": (("TTT",), "relax.attrs.QuantizeAttrs"),
    "relax.zeros": (("S",), "relax.attrs.InitAttrs"),
    "relax.ones": (("S",), "relax.attrs.InitAttrs"),
    "relax.full": (("ST",), "relax.attrs.InitAttrs"),
    "relax.zeros_like": (_UNARY, "relax.attrs.InitAttrs"),
    "relax.take": (_BINARY, "relax.attrs.TakeAttrs"),
    "relax.squeeze": (_UNARY, "relax.attrs.SqueezeAttrs"),
    "relax.expand_dims": (_UNARY, "relax.attrs.ExpandDimsAttrs"),
    "relax.nn.leakyrelu": (_UNARY, "relax.attrs.LeakyReluAttrs"),
    "relax.nn.dropout": (_UNARY, "relax.attrs.DropoutAttrs"),
    "relax.nn.batch_norm": (("TTTTT",), "relax.attrs.BatchNormAttrs"),
}


def _shape(v, what: str) -> tuple:
    if (not isinstance(v, list) or len(v) > LIMITS.rank
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 31 for d in v)):
        raise ValueError(f"{what} must be a list of at most {LIMITS.rank} non-negative integers")
    if math.prod(v) > LIMITS.elements:
        raise ValueError(f"{what} {v} has more than {LIMITS.elements} elements")
    return tuple(v)


# ---- decompression and structural check (no TVM) -------------------------------------------
@dataclass
class Graph:
    """A checked section: the JSON description and the constant data (a view, no copy)."""
    doc: dict
    data: memoryview
    section: str


def inflate(blob: bytes, section: str) -> bytes:
    """zlib-decompress ``blob`` in steps, never holding more than ``LIMITS.decompressed``
    bytes (plus one step) of output: a zlib bomb stops at the limit."""
    step = 8 << 20
    d = zlib.decompressobj()
    parts, size = [], 0          # a list of steps: growing one buffer would copy it (2x peak)
    tail = blob
    try:
        while not d.eof:
            chunk = d.decompress(tail, step)
            tail = d.unconsumed_tail
            parts.append(chunk)
            size += len(chunk)
            if size > LIMITS.decompressed:
                raise BinaryFormatError(f"decompresses to more than {LIMITS.decompressed} bytes (the limit)",
                                        section=section)
            if not chunk and not tail:
                break
    except zlib.error as e:
        raise BinaryFormatError(f"not zlib data: {e}", section=section) from None
    if not d.eof:
        raise BinaryFormatError("truncated zlib stream", section=section)
    return b"".join(parts)


def parse(blob: bytes, section: str) -> Graph:
    """Decompress and check a section (see the module docstring); no TVM needed."""
    raw = inflate(blob, section)
    if len(raw) < 12 or raw[:8] != MAGIC:
        raise BinaryFormatError("not a dlac graph (bad magic; binaries from dlac before the closed "
                                "graph format must be recompiled)", section=section)
    (jlen,) = struct.unpack_from("<I", raw, 8)
    if jlen > min(LIMITS.json_bytes, len(raw) - 12):
        raise BinaryFormatError(f"graph description of {jlen} bytes runs past the section or the "
                                f"limit of {LIMITS.json_bytes}", section=section)
    try:
        doc = json.loads(raw[12:12 + jlen].decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BinaryFormatError(f"graph description is not valid JSON: {str(e)[:120]}", section=section) from None
    data_at = (12 + jlen + ALIGN - 1) // ALIGN * ALIGN
    g = Graph(doc, memoryview(raw)[data_at:], section)
    check_graph(g)
    return g


def _no_constant(name):
    raise ValueError(f"{name} is not allowed")


class _Where:
    def __init__(self, section):
        self.section, self.at = section, "graph"

    def fail(self, msg):
        raise BinaryFormatError(f"{self.at}: {msg}", section=self.section)


def check_graph(g: Graph) -> None:
    """Every rule of the module docstring, or :class:`BinaryFormatError` naming the function,
    node and operand."""
    w = _Where(g.section)
    doc = g.doc
    if not isinstance(doc, dict) or set(doc) != {"functions", "constants"}:
        w.fail("the description must be an object with exactly 'functions' and 'constants'")
    consts, funcs = doc["constants"], doc["functions"]
    if not isinstance(consts, list) or not isinstance(funcs, list):
        w.fail("'functions' and 'constants' must be lists")
    if not 1 <= len(funcs) <= LIMITS.functions:
        w.fail(f"{len(funcs)} functions (1 to {LIMITS.functions} allowed)")
    for i, c in enumerate(consts):
        w.at = f"constant {i}"
        if not isinstance(c, dict) or set(c) != {"shape", "dtype", "offset"}:
            w.fail("must be {shape, dtype, offset}")
        try:
            shape = _shape(c["shape"], "shape")
        except ValueError as e:
            w.fail(str(e))
        if not isinstance(c["dtype"], str) or c["dtype"] not in DTYPES:
            w.fail(f"dtype {str(c['dtype'])[:20]!r} is not one of {tuple(DTYPES)}")
        off = c["offset"]
        nbytes = math.prod(shape) * DTYPES[c["dtype"]]
        if (not isinstance(off, int) or isinstance(off, bool) or off < 0 or off % ALIGN
                or off + nbytes > len(g.data)):
            w.fail(f"data [{off}, +{nbytes}) is not an aligned range inside the {len(g.data)} bytes of data")
    names, total = set(), 0
    for fi, f in enumerate(funcs):
        w.at = f"function {fi}"
        if not isinstance(f, dict) or not {"name", "params", "nodes", "output"} <= set(f) \
                or not set(f) <= {"name", "params", "nodes", "output", "num_input"}:
            w.fail("must be {name, params, nodes, output[, num_input]}")
        name = f["name"]
        if not isinstance(name, str) or len(name) > LIMITS.name or not _NAME.match(name) or name in names:
            w.fail(f"name {str(name)[:40]!r} is not a new identifier of at most {LIMITS.name} characters")
        names.add(name)
        w.at = f"function {name}"
        params, nodes = f["params"], f["nodes"]
        if not isinstance(params, list) or len(params) > LIMITS.params:
            w.fail(f"params must be a list of at most {LIMITS.params}")
        for p in params:
            if (not isinstance(p, dict) or set(p) != {"name", "shape", "dtype"} or not isinstance(p["name"], str)
                    or not 0 < len(p["name"]) <= LIMITS.name or not p["name"].isprintable()
                    or not isinstance(p["dtype"], str) or p["dtype"] not in DTYPES):
                w.fail(f"parameter {ascii(p)[:60]} is not {{name, shape, dtype}} with a printable name of at "
                       f"most {LIMITS.name} characters and a dtype")
            try:
                _shape(p["shape"], f"parameter {p['name']}")
            except ValueError as e:
                w.fail(str(e))
        if "num_input" in f and (not isinstance(f["num_input"], int) or isinstance(f["num_input"], bool)
                                 or not 0 <= f["num_input"] <= len(params)):
            w.fail("num_input must be an integer between 0 and the number of parameters")
        if not isinstance(nodes, list):
            w.fail("nodes must be a list")
        total += len(nodes)
        if total > LIMITS.nodes:
            w.fail(f"more than {LIMITS.nodes} nodes in the section")
        refs = dict(p=len(params), c=len(consts), f=fi)
        for ni, node in enumerate(nodes):
            w.at = f"function {name} node {ni}"
            refs["v"] = ni
            _check_node(node, refs, w)
        w.at = f"function {name} output"
        refs["v"] = len(nodes)
        if _kind(f["output"]) not in ("T", "L") or f["output"] == ["tuple", []]:
            w.fail("a function returns a tensor or a non-empty tuple of tensors")
        _check_arg(f["output"], refs, w, 0)


def _check_node(node, refs, w) -> None:
    if not isinstance(node, dict):
        w.fail("a node must be an object")
    keys = set(node)
    if keys == {"value"}:
        if _kind(node["value"]) not in ("T", "L"):
            w.fail("a value node must be a tensor or a tuple of tensors")
        _check_arg(node["value"], refs, w, 0)
        return
    if keys == {"call", "args"}:
        fi = node["call"]
        if not isinstance(fi, int) or isinstance(fi, bool) or not 0 <= fi < refs["f"]:
            w.fail(f"calls function {str(fi)[:20]}: only functions defined before this one can be called")
        args = node["args"]
        if not isinstance(args, list) or len(args) > LIMITS.args:
            w.fail(f"args must be a list of at most {LIMITS.args}")
        for a in args:
            _check_arg(a, refs, w, 0)
        return
    if keys != {"op", "args", "attrs"}:
        w.fail("a node is {op, args, attrs}, {call, args} or {value}")
    op = node["op"]
    if not isinstance(op, str) or op not in OPS:
        w.fail(f"op {str(op)[:60]!r} is not in the closed vocabulary of host and reference graphs")
    w.at += f" ({op})"
    patterns, attrs_type = OPS[op]
    args = node["args"]
    if not isinstance(args, list) or len(args) > LIMITS.args:
        w.fail(f"args must be a list of at most {LIMITS.args}")
    kinds = "".join(_kind(a) for a in args)
    if kinds not in patterns:
        w.fail(f"operands of kinds {kinds!r}; {op} takes {' or '.join(patterns)} "
               "(T tensor, L tuple of tensors, S shape, P scalar, I tuple of integer scalars)")
    for a in args:
        _check_arg(a, refs, w, 0)
    attrs = node["attrs"]
    if attrs_type is None:
        if attrs is not None:
            w.fail(f"{op} takes no attributes")
        return
    if not isinstance(attrs, dict) or set(attrs) != {"type", "fields"} or attrs["type"] != attrs_type:
        w.fail(f"attributes must be {{'type': {attrs_type!r}, 'fields': {{...}}}}")
    schema, fields = ATTRS[attrs_type], attrs["fields"]
    if not isinstance(fields, dict) or set(fields) != set(schema):
        w.fail(f"attributes must have exactly the fields {sorted(schema)}")
    for k, check in schema.items():
        try:
            check(fields[k])
        except ValueError as e:
            w.fail(f"attribute {k}={str(fields[k])[:40]} must be {e}")


def _kind(a) -> str:
    if isinstance(a, list) and a:
        tag = a[0]
        if tag in ("p", "c", "v", "item"):
            return "T"
        if tag == "shape":
            return "S"
        if tag in ("int", "float"):
            return "P"
        if tag == "tuple" and len(a) == 2 and isinstance(a[1], list):
            if a[1] and all(isinstance(e, list) and e and e[0] == "int" for e in a[1]):
                return "I"
            return "L"
    return "?"


def _check_arg(a, refs, w, depth) -> None:
    if depth > LIMITS.depth:
        w.fail(f"operand nested deeper than {LIMITS.depth}")
    if not isinstance(a, list) or not a or not isinstance(a[0], str):
        w.fail(f"operand {str(a)[:40]} is not a tagged list")
    tag = a[0]
    if tag in ("p", "c", "v"):
        if len(a) != 2 or not isinstance(a[1], int) or isinstance(a[1], bool) or not 0 <= a[1] < refs[tag]:
            kind = {"p": "parameter", "c": "constant", "v": "earlier node"}[tag]
            w.fail(f"operand {str(a)[:40]} names no {kind} (there are {refs[tag]})")
    elif tag == "shape":
        try:
            _shape(a[1] if len(a) == 2 else None, "shape operand")
        except ValueError as e:
            w.fail(str(e))
    elif tag == "int":
        if (len(a) != 3 or a[2] not in ("int32", "int64") or not isinstance(a[1], int) or isinstance(a[1], bool)
                or not -2 ** 31 <= a[1] < 2 ** 31):
            w.fail(f"operand {str(a)[:40]} is not [\"int\", 32-bit value, int32|int64]")
    elif tag == "float":
        if (len(a) != 3 or a[2] not in ("float32", "float64") or isinstance(a[1], bool)
                or not isinstance(a[1], (int, float)) or not math.isfinite(a[1])):
            w.fail(f"operand {str(a)[:40]} is not [\"float\", finite value, float32|float64]")
    elif tag == "tuple":
        if len(a) != 2 or not isinstance(a[1], list) or len(a[1]) > LIMITS.args:
            w.fail(f"tuple operand must hold at most {LIMITS.args} operands")
        for e in a[1]:
            _check_arg(e, refs, w, depth + 1)
    elif tag == "item":
        if len(a) != 3 or not isinstance(a[2], int) or isinstance(a[2], bool) or not 0 <= a[2] < LIMITS.args:
            w.fail(f"operand {str(a)[:40]} is not [\"item\", operand, index]")
        _check_arg(a[1], refs, w, depth + 1)
    else:
        w.fail(f"operand tag {tag[:20]!r} is not one of p, c, v, shape, int, float, tuple, item")


# ---- rebuild (TVM) -------------------------------------------------------------------------
def decode(blob: bytes, section: str):
    """The section as a Relax ``IRModule``, rebuilt from the checked description."""
    return build(parse(blob, section))


def build(g: Graph):
    from tvm import relax

    w = _Where(g.section)
    consts = []
    for c in g.doc["constants"]:
        n = math.prod(c["shape"])
        arr = np.frombuffer(g.data, dtype=np.dtype(c["dtype"]).newbyteorder("<"), count=n,
                            offset=c["offset"]).reshape(c["shape"])
        consts.append(relax.const(np.array(arr, dtype=c["dtype"], order="C"), c["dtype"]))   # keeps 0-d
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
                        w.fail(f"{node.get('op', 'call')}: TVM rejects the node: {_first_line(e)}")
                    if not _tensors_only(v.ty):
                        w.fail(f"{node.get('op', 'node')}: its result is not a tensor or a tuple of tensors")
                    work += _work(node, v, expr, w)
                    if work > LIMITS.work:
                        w.fail(f"the graph's estimated work exceeds {LIMITS.work} operations (the limit)")
                    vals.append(v)
                w.at = f"function {f['name']} output"
                out = _arg(f["output"], params, consts, vals, w)
                if isinstance(out, relax.Tuple) and not all(_tensors_only(e.ty) for e in out.fields):
                    w.fail("the output holds something that is not a tensor")
                try:
                    bb.emit_func_output(out)
                except Exception as e:  # noqa: BLE001
                    w.fail(f"TVM rejects the output: {_first_line(e)}")
        except BinaryFormatError:
            raise
        gvs.append(bb.get().get_global_var(f["name"]))
    mod = bb.get()
    for gv, fn in list(mod.functions_items()):
        mod[gv] = fn.with_attr("global_symbol", gv.name_hint)
    return mod


def _first_line(e) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


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
        attrs = tvm.ir.make_node(node["attrs"]["type"], **node["attrs"]["fields"])
    return relax.Call(tvm.ir.Op.get(op), args, attrs)


def _check_take(args, fields, w) -> None:
    """``take`` in ``fast`` mode does no bounds check: its indices must be constants in range."""
    from passes.ir_util import is_const

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
    (conv2d: C/groups x kh x kw; matmul: K; pooling: the window; reductions: the input)."""
    from tvm import relax

    out = _elements(v.ty)
    if out < 0:
        w.fail("the node's result has no static shape")
    if out > LIMITS.elements:
        w.fail(f"the node's result has {out} elements (the limit is {LIMITS.elements})")
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
    return max([out] + ins)


# ---- encode (compile time) -----------------------------------------------------------------
def encode(mod, what: str = "graph", level: int = 6) -> bytes:
    """``mod`` as a section; :class:`CodegenError` naming the function and op if it uses
    anything outside the vocabulary.  The section is loaded back (checked and rebuilt, as
    ``dlac run`` will) before it is returned, so a binary never holds a graph that its
    own loader refuses (a limit, ``take`` indices out of range, ...)."""
    doc, data = _Encoder(what).module(mod)
    raw = pack(doc, data)
    if len(raw) > LIMITS.decompressed:
        raise CodegenError(f"the {what} graph needs {len(raw)} bytes, more than the section limit of "
                           f"{LIMITS.decompressed}" + (" (compile with --no-reference to leave it out)"
                                                       if what == "reference" else ""))
    blob = zlib.compress(raw, level)
    try:
        build(parse(blob, what.upper()))
    except BinaryFormatError as e:
        raise CodegenError(f"the {what} graph cannot be loaded back: {e}"
                           + (" (compile with --no-reference to leave it out)" if what == "reference" else "")
                           ) from None
    return blob


def pack(doc: dict, data: bytes) -> bytes:
    """The uncompressed section: magic, JSON length, JSON, padding, constant data."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    head = MAGIC + struct.pack("<I", len(text)) + text
    return head + b"\0" * (-len(head) % ALIGN) + bytes(data)


class _Encoder:
    def __init__(self, what):
        self.what = what
        self.consts: list[dict] = []
        self.const_ids: dict = {}
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
        off = len(self.data)
        self.data.extend(np.ascontiguousarray(value, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
        self.data.extend(b"\0" * (-len(self.data) % ALIGN))
        i = len(self.consts)
        self.consts.append({"shape": [int(d) for d in value.shape], "dtype": dtype, "offset": off})
        self.const_ids[c] = i
        return ["c", i]

    def function(self, name, fn, index):
        from tvm import relax

        from passes.ir_util import dtype_of, shape_of

        self.at = f"function {name}"
        if not _NAME.match(name) or len(name) > LIMITS.name:
            self.fail(f"function name {name!r} is not an identifier of at most {LIMITS.name} characters")
        env = {}
        params = []
        for i, p in enumerate(fn.params):
            shape = shape_of(p)
            if not isinstance(p.ty, relax.TensorType) or shape is None:
                self.fail(f"{self.at}: parameter {p.name} is not a static tensor")
            if not 0 < len(p.name) <= LIMITS.name or not p.name.isprintable():
                self.fail(f"{self.at}: parameter name {p.name[:LIMITS.name]!r} is empty, too long or "
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

        from passes.ir_util import attrs_to_dict

        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
            return {"call": index[value.op.name_hint], "args": [self.arg(a, env) for a in value.args]}
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            op = str(value.op.name)
            if not isinstance(op, str) or op not in OPS:
                self.fail(f"{self.at}: op {op} has no safe form in a binary (not in the closed "
                          "vocabulary of target_dlac/hostgraph.py), so it cannot be a host op")
            if value.ty_args is not None and len(value.ty_args):
                self.fail(f"{self.at}: op {op} with type arguments")
            attrs = None
            if value.attrs is not None:
                kind = type(value.attrs).__tvm_ffi_type_info__.type_key
                fields = {k: _jsonable(v) for k, v in attrs_to_dict(value.attrs).items()}
                attrs = {"type": kind, "fields": fields}
            return {"op": op, "args": [self.arg(a, env) for a in value.args], "attrs": attrs}
        if isinstance(value, relax.Call):
            self.fail(f"{self.at}: a call to {type(value.op).__name__}")
        return {"value": self.arg(value, env)}

    def arg(self, a, env):
        from tvm import relax
        from tvm.ir.prim.expr import FloatImm, IntImm

        from passes.ir_util import is_const

        if isinstance(a, relax.Var):
            if a not in env:
                self.fail(f"{self.at}: variable {a.name} is not defined before its use")
            return env[a]
        if is_const(a):
            return self.const(a)
        if isinstance(a, IntImm):
            return ["int", int(a.value), str(a.ty.dtype)]
        if isinstance(a, FloatImm):
            return ["float", float(a.value), str(a.ty.dtype)]
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
