"""A section's bytes to a checked :class:`Graph`: decompression under the size cap and every
structural rule of the format (see the package docstring), in plain Python (no TVM)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

from target_dlac.core.errors import BinaryFormatError

from . import vocabulary as V
from . import weights as W
from .vocabulary import _NAME, DTYPES, OPS, _shape

MAGIC = b"DLACGRF1"
#: the only non-finite scalars (clip's open bounds: ``clip(x, 0, inf)``); JSON has no inf, no NaN
INFINITIES = {"inf": math.inf, "-inf": -math.inf}
ALIGN = 16

@dataclass
class Graph:
    """A checked section: the JSON description, the constant data (a view, no copy) and the
    ``CONSTS`` image that constants described by their weight blocks come from."""
    doc: dict
    data: memoryview
    section: str
    consts: bytes | None = None


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
            if size > V.LIMITS.decompressed:
                raise BinaryFormatError(f"decompresses to more than {V.LIMITS.decompressed} bytes (the limit)",
                                        section=section)
            if not chunk and not tail:
                break
    except zlib.error as e:
        raise BinaryFormatError(f"not zlib data: {e}", section=section) from None
    if not d.eof:
        raise BinaryFormatError("truncated zlib stream", section=section)
    return b"".join(parts)


def parse(blob: bytes, section: str, consts: bytes | None = None) -> Graph:
    """Decompress and check a section (see the module docstring); no TVM needed.
    ``consts``: the binary's ``CONSTS`` section, which constants may refer to (default: the
    one a :class:`~target_dlac.binary.hostgraph.weights.Section` carries)."""
    if consts is None:
        consts = getattr(blob, "consts", None)
    raw = inflate(blob, section)
    if len(raw) < 12 or raw[:8] != MAGIC:
        raise BinaryFormatError("not a dlac graph (bad magic; binaries from dlac before the closed "
                                "graph format must be recompiled)", section=section)
    (jlen,) = struct.unpack_from("<I", raw, 8)
    if jlen > min(V.LIMITS.json_bytes, len(raw) - 12):
        raise BinaryFormatError(f"graph description of {jlen} bytes runs past the section or the "
                                f"limit of {V.LIMITS.json_bytes}", section=section)
    try:
        doc = json.loads(raw[12:12 + jlen].decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BinaryFormatError(f"graph description is not valid JSON: {str(e)[:120]}", section=section) from None
    data_at = (12 + jlen + ALIGN - 1) // ALIGN * ALIGN
    g = Graph(doc, memoryview(raw)[data_at:], section, consts)
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
    if not 1 <= len(funcs) <= V.LIMITS.functions:
        w.fail(f"{len(funcs)} functions (1 to {V.LIMITS.functions} allowed)")
    decoded = tiles = records = 0
    for i, c in enumerate(consts):
        w.at = f"constant {i}"
        if not isinstance(c, dict) or set(c) not in ({"shape", "dtype", "offset"}, {"shape", "dtype", "consts"}):
            w.fail("must be {shape, dtype, offset} or {shape, dtype, consts}")
        try:
            shape = _shape(c["shape"], "shape")
        except ValueError as e:
            w.fail(str(e))
        if not isinstance(c["dtype"], str) or c["dtype"] not in DTYPES:
            w.fail(f"dtype {str(c['dtype'])[:20]!r} is not one of {tuple(DTYPES)}")
        nbytes = math.prod(shape) * DTYPES[c["dtype"]]
        decoded += nbytes
        if decoded > V.LIMITS.constants:
            w.fail(f"the section's constants exceed {V.LIMITS.constants} bytes (the limit)")
        if "consts" in c:
            try:         # without CONSTS (parse(blob) of a bare section): all but the offsets
                t, r = W.check_ref(c["consts"], shape, c["dtype"], None if g.consts is None else len(g.consts),
                                   V.LIMITS.tiles - tiles)
            except ValueError as e:
                w.at = f"constant {i} ({_user(funcs, i)})"
                w.fail(str(e))
            tiles, records = tiles + t, records + r
            if tiles > V.LIMITS.tiles or records > V.LIMITS.swis_filters:
                w.fail(f"more than {V.LIMITS.tiles} weight blocks or {V.LIMITS.swis_filters} SWIS filter "
                       "records in the section (the limit)")
            continue
        off = c["offset"]
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
        if not isinstance(name, str) or len(name) > V.LIMITS.name or not _NAME.match(name) or name in names:
            w.fail(f"name {str(name)[:40]!r} is not a new identifier of at most {V.LIMITS.name} characters")
        names.add(name)
        w.at = f"function {name}"
        params, nodes = f["params"], f["nodes"]
        if not isinstance(params, list) or len(params) > V.LIMITS.params:
            w.fail(f"params must be a list of at most {V.LIMITS.params}")
        for p in params:
            if (not isinstance(p, dict) or set(p) != {"name", "shape", "dtype"} or not isinstance(p["name"], str)
                    or not 0 < len(p["name"]) <= V.LIMITS.name or not p["name"].isprintable()
                    or not isinstance(p["dtype"], str) or p["dtype"] not in DTYPES):
                w.fail(f"parameter {ascii(p)[:60]} is not {{name, shape, dtype}} with a printable name of at "
                       f"most {V.LIMITS.name} characters and a dtype")
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
        if total > V.LIMITS.nodes:
            w.fail(f"more than {V.LIMITS.nodes} nodes in the section")
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


def _user(funcs, i: int) -> str:
    """Where constant ``i`` is first used (for error messages): ``function F node N (op)``."""
    def uses(a, depth=0):
        return isinstance(a, list) and depth <= V.LIMITS.depth and (
            a == ["c", i] or any(uses(e, depth + 1) for e in a if isinstance(e, list)))
    for f in funcs if isinstance(funcs, list) else ():
        nodes = f.get("nodes") if isinstance(f, dict) else None
        for ni, node in enumerate(nodes if isinstance(nodes, list) else ()):
            args = node.get("args") if isinstance(node, dict) else None
            if isinstance(node, dict) and uses((args if isinstance(args, list) else []) + [node.get("value")]):
                op = f" ({node['op']})" if isinstance(node.get("op"), str) else ""
                return f"used by function {str(f.get('name'))[:40]} node {ni}{op}"
    return "not used by any node"


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
        if not isinstance(args, list) or len(args) > V.LIMITS.args:
            w.fail(f"args must be a list of at most {V.LIMITS.args}")
        for a in args:
            _check_arg(a, refs, w, 0)
        return
    if keys != {"op", "args", "attrs"}:
        w.fail("a node is {op, args, attrs}, {call, args} or {value}")
    op = node["op"]
    if not isinstance(op, str) or op not in OPS:
        w.fail(f"op {str(op)[:60]!r} is not in the closed vocabulary of host and reference graphs")
    w.at += f" ({op})"
    patterns = OPS[op][0]
    args = node["args"]
    if not isinstance(args, list) or len(args) > V.LIMITS.args:
        w.fail(f"args must be a list of at most {V.LIMITS.args}")
    kinds = "".join(_kind(a) for a in args)
    if kinds not in patterns:
        w.fail(f"operands of kinds {kinds!r}; {op} takes {' or '.join(patterns)} "
               "(T tensor, L tuple of tensors, S shape, P scalar, I tuple of integer scalars)")
    for a in args:
        _check_arg(a, refs, w, 0)
    problem = V.attr_problem(op, node["attrs"])
    if problem:
        w.fail(problem)


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
    if depth > V.LIMITS.depth:
        w.fail(f"operand nested deeper than {V.LIMITS.depth}")
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
        bits = {"int32": 31, "int64": 63}.get(a[2]) if len(a) == 3 and isinstance(a[2], str) else None
        if (bits is None or not isinstance(a[1], int) or isinstance(a[1], bool)
                or not -2 ** bits <= a[1] < 2 ** bits):     # int64: open slice ends (2^63 - 1)
            w.fail(f"operand {str(a)[:40]} is not [\"int\", value in range of its dtype, int32|int64]")
    elif tag == "float":
        if (len(a) != 3 or a[2] not in ("float32", "float64") or isinstance(a[1], bool)
                or not (a[1] in INFINITIES or isinstance(a[1], (int, float)) and math.isfinite(a[1]))):
            w.fail(f"operand {str(a)[:40]} is not [\"float\", finite value or \"inf\" or \"-inf\", "
                   "float32|float64]")
    elif tag == "tuple":
        if len(a) != 2 or not isinstance(a[1], list) or len(a[1]) > V.LIMITS.args:
            w.fail(f"tuple operand must hold at most {V.LIMITS.args} operands")
        for e in a[1]:
            _check_arg(e, refs, w, depth + 1)
    elif tag == "item":
        if len(a) != 3 or not isinstance(a[2], int) or isinstance(a[2], bool) or not 0 <= a[2] < V.LIMITS.args:
            w.fail(f"operand {str(a)[:40]} is not [\"item\", operand, index]")
        _check_arg(a[1], refs, w, depth + 1)
    else:
        w.fail(f"operand tag {tag[:20]!r} is not one of p, c, v, shape, int, float, tuple, item")


def pack(doc: dict, data: bytes) -> bytes:
    """The uncompressed section: magic, JSON length, JSON, padding, constant data."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    head = MAGIC + struct.pack("<I", len(text)) + text
    return head + b"\0" * (-len(head) % ALIGN) + bytes(data)
