"""The HOST / REF graph mutator of the binary fuzzers (re-exported by tests/fuzz_helpers.py):
:func:`m_graph` changes the graph structurally (ops, operands, attributes, order, shapes)
and repacks it.  A plain module: no tests.  TVM is imported only when a binary has a graph.
"""

from __future__ import annotations

import json
import random
import struct
import zlib


from tests.container_helpers import table
from tests.fuzz_mutators import _sections, m_json, rebuild


#: values a graph mutation swaps in: other ops (outside the vocabulary too), operand tags,
#: attribute values at and past the edges of their ranges
_GRAPH_EDGES = ["relax.call_tir", "relax.call_packed", "relax.call_dps_packed", "relax.nn.conv2d",
                "relax.add", "relax.reshape", "relax.take", "relax.strided_slice", "relax.concat",
                ["v", 0], ["v", 10 ** 6], ["p", 0], ["c", 0], ["shape", [1, -1]], ["shape", [2 ** 31]],
                ["tuple", []], ["item", ["v", 0], 3], ["int", 0, "int64"], ["float", 1e308, "float64"],
                0, -1, 1, 2, 3, 2 ** 16, 2 ** 31, 2 ** 63, -2 ** 31, 1.5, -0.0, True, False, None, "",
                "NHWC", "OIHW", "float32", "int8", "int64", "bool", "fast", [0], [0, 0], [1, 1, 1, 1],
                [2 ** 20, 1], [], {}]


def _graph_edge(rng: random.Random, old):
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        return rng.choice([old + 1, old - 1, old * 2, -old, 0, old + 1000])
    return rng.choice(_GRAPH_EDGES)


def _mutate_graph_doc(rng: random.Random, doc: dict) -> str:
    """One structure-aware change of a graph description, in place."""
    funcs = doc["functions"]
    f = rng.choice(funcs)
    nodes = f["nodes"]
    r = rng.random()
    if nodes and r < 0.15:                            # reorder: a use before its definition
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        nodes[i], nodes[j] = nodes[j], nodes[i]
        return f"{f['name']}: swap nodes {i}, {j}"
    if nodes and r < 0.25:                            # an operand names itself or a later node
        i = rng.randrange(len(nodes))
        node = nodes[i]
        args = node.get("args") or [node.get("value")]
        if args and isinstance(args, list):
            args[rng.randrange(len(args))] = ["v", i + rng.choice([0, 0, 1, 5])]
        return f"{f['name']}: node {i} refers to itself or later"
    if nodes and r < 0.35:                            # duplicate or delete a node
        i = rng.randrange(len(nodes))
        if rng.random() < 0.5:
            nodes.insert(i, json.loads(json.dumps(nodes[i])))
            return f"{f['name']}: dup node {i}"
        del nodes[i]
        return f"{f['name']}: del node {i}"
    if r < 0.45 and len(funcs) > 1:                   # reorder functions (a call to a later one)
        i, j = rng.randrange(len(funcs)), rng.randrange(len(funcs))
        funcs[i], funcs[j] = funcs[j], funcs[i]
        return f"swap functions {i}, {j}"
    target = rng.choice([doc, f, f, f["params"] or f, nodes or f, nodes or f, nodes or f, doc["constants"] or f])
    _, d = _mutate_json_with(rng, target, _graph_edge)
    return f"{f['name']}: {d}"


def _mutate_json_with(rng, obj, edge, depth=0):
    is_dict = isinstance(obj, dict)
    if not obj or not isinstance(obj, (dict, list)) or (depth and rng.random() < 0.15):
        return edge(rng, obj), "replace"
    k = rng.choice(sorted(obj)) if is_dict else rng.randrange(len(obj))
    where = k if is_dict else f"[{k}]"
    if rng.random() < 0.05:
        del obj[k]
        return obj, f"del {where}"
    if isinstance(obj[k], (dict, list)) and obj[k] and rng.random() < 0.85:
        obj[k], d = _mutate_json_with(rng, obj[k], edge, depth + 1)
        return obj, f"{where}.{d}"
    obj[k] = edge(rng, obj[k])
    return obj, f"{where}={json.dumps(obj[k])[:40]}"


def m_graph(rng, blobs):
    """A structure-aware mutation of the HOST or REF graph (:mod:`target_dlac.binary.hostgraph`):
    its JSON description (ops, operands, attributes, node and function order, shapes) or its
    constant bytes or the compressed stream, repacked with every CRC fixed."""
    from target_dlac.binary import hostgraph

    with_graph = [b for b in blobs if {"HOST", "REF"} & set(table(b))] or blobs
    data = rng.choice(with_graph)
    tags = [t for t in ("HOST", "REF") if t in table(data)]
    if not tags:
        return m_json(rng, blobs)
    tag = rng.choice(tags)
    raw = zlib.decompress(_sections(data)[tag])
    (jlen,) = struct.unpack_from("<I", raw, 8)
    doc = json.loads(raw[12:12 + jlen])
    body = bytearray(raw[(12 + jlen + 15) // 16 * 16:])
    r = rng.random()
    if r < 0.1 and body:
        for _ in range(rng.choice([1, 4, 32])):
            body[rng.randrange(len(body))] = rng.randrange(256)
        desc = "constant bytes"
    elif r < 0.15:
        comp = bytearray(_sections(data)[tag])
        comp[rng.randrange(len(comp))] ^= 1 << rng.randrange(8)
        return rebuild(data, {tag: bytes(comp)}), f"graph {tag}: compressed bit flip"
    else:
        done = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            try:
                done.append(_mutate_graph_doc(rng, doc))
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                break              # an earlier change broke the structure the next one walks
        desc = "; ".join(done) or "nothing"
    try:
        packed = hostgraph.pack(doc, body)
    except (TypeError, ValueError):                  # a value JSON cannot hold: keep the seed
        packed = raw
    return rebuild(data, {tag: zlib.compress(packed, 1)}), f"graph {tag}: {desc}"
