"""MACs of the conv2d / matmul ops inside a binary's host functions (:func:`host_macs`),
read from the ``HOST`` section's checked graph in plain Python (no TVM), so a run report can
say how much of a model's arithmetic runs on the host CPU rather than on dLAC."""

from __future__ import annotations

import math

import numpy as np


def host_macs(program) -> dict[int, int | None]:
    """``{host op index: MACs}`` of the conv2d / matmul ops of each host function, from the
    ``HOST`` section's checked graph (plain Python, no TVM); ``None`` for a function with
    such an op whose operand shapes cannot be followed.  ``{}`` without host ops."""
    entries = program.meta.get("host_ops", []) if program.meta else []
    if not entries or program.host is None:
        return {}
    from target_dlac.binary.hostgraph import parse

    doc = parse(program.host, "HOST").doc
    funcs = doc["functions"]
    consts = [tuple(c["shape"]) for c in doc["constants"]]
    memo: dict[int, int | None] = {}

    def func_macs(fi: int) -> int | None:
        if fi not in memo:
            memo[fi] = _function_macs(funcs, fi, consts, func_macs)
        return memo[fi]

    index = {f["name"]: i for i, f in enumerate(funcs)}
    return {i: (func_macs(index[e["func"]]) if e.get("func") in index else None)
            for i, e in enumerate(entries)}


_ELEMENTWISE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
                "relax.minimum", "relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh",
                "relax.exp", "relax.negative", "relax.sqrt", "relax.power"}


def _function_macs(funcs, fi, consts, func_macs) -> int | None:
    """MACs of one host function: a shape per operand where it can be followed (parameters,
    constants, element-wise ops, conv2d, matmul, permute_dims, reshape)."""
    f = funcs[fi]
    params = [tuple(p["shape"]) for p in f["params"]]
    shapes: list = []
    total = 0

    def shape(a):
        tag = a[0]
        if tag == "p":
            return params[a[1]]
        if tag == "c":
            return consts[a[1]]
        if tag == "v":
            return shapes[a[1]]
        return None

    for node in f["nodes"]:
        out, macs = None, 0
        if "call" in node:
            macs = func_macs(node["call"])
        elif "op" in node:
            op, args = node["op"], node["args"]
            fields = (node.get("attrs") or {}).get("fields", {})
            ins = [_operand_shape(a, shape) for a in args]
            if op == "relax.nn.conv2d":
                out = _conv_out(ins, fields)
                macs = None if out is None else math.prod(out) * math.prod(ins[1][1:])
            elif op == "relax.matmul":
                out, macs = _matmul(ins)
            elif op in _ELEMENTWISE and ins and all(s is not None for s in ins):
                try:
                    out = tuple(np.broadcast_shapes(*ins))
                except ValueError:
                    out = None
            elif op == "relax.permute_dims" and ins and ins[0] is not None:
                axes = fields.get("axes")
                out = tuple(ins[0][i] for i in axes) if axes else tuple(reversed(ins[0]))
            elif op == "relax.reshape" and len(args) > 1 and args[1][0] == "shape":
                out = tuple(args[1][1])
        if macs is None:
            return None
        total += macs
        shapes.append(out)
    return total


def _operand_shape(a, shape):
    """A tensor operand's shape (``None`` if unknown); ``()`` for a scalar operand."""
    if not isinstance(a, list) or not a:
        return None
    if a[0] in ("p", "c", "v"):
        return shape(a)
    return () if a[0] in ("int", "float") else None


def _conv_out(ins, a) -> tuple | None:
    if len(ins) < 2 or ins[0] is None or ins[1] is None or len(ins[0]) != 4 or len(ins[1]) != 4 \
            or a.get("data_layout", "NCHW") != "NCHW" or a.get("kernel_layout", "OIHW") != "OIHW":
        return None
    n, _, h, w = ins[0]
    kh, kw = ins[1][2:]
    st, dil = list(a.get("strides", [1, 1])), list(a.get("dilation", [1, 1]))
    pad = list(a.get("padding", [0, 0, 0, 0]))
    pad = pad * 2 if len(pad) == 2 else pad
    oh = (h + pad[0] + pad[2] - dil[0] * (kh - 1) - 1) // st[0] + 1
    ow = (w + pad[1] + pad[3] - dil[1] * (kw - 1) - 1) // st[1] + 1
    return (n, ins[1][0], oh, ow)


def _matmul(ins) -> tuple:
    """``(output shape, MACs)`` of ``matmul(a, b)`` (``(None, None)`` if a shape is unknown)."""
    if len(ins) < 2 or ins[0] is None or ins[1] is None or not ins[0] or not ins[1]:
        return None, None
    a, b = ins[0], ins[1]
    if len(b) == 1:
        return a[:-1], math.prod(a)
    if len(a) == 1:
        return b[:-2] + b[-1:], math.prod(b)
    try:
        batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
    except ValueError:
        return None, None
    out = batch + (a[-2], b[-1])
    return out, math.prod(out) * a[-1]
