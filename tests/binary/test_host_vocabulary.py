"""The host graph vocabulary (issue 13): one source of truth for "placeable on the host"
and "writable in a binary", and the ops added for real models, each with its attributes
checked before TVM sees them (a bad attribute in a hand-written graph is refused naming the
node), its work estimated, and a valid hand-written node rebuilt and run."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

pytest.importorskip("tvm")

from compiler.oplist import DLAC_RELAX_OPS, HOST_RELAX_OPS, placement  # noqa: E402
from target_dlac.binary import hostgraph  # noqa: E402
from target_dlac.core.errors import BinaryFormatError  # noqa: E402


def test_host_ops_are_the_graph_vocabulary():
    assert HOST_RELAX_OPS == {op.removeprefix("relax.") for op in hostgraph.OPS}
    assert DLAC_RELAX_OPS <= HOST_RELAX_OPS          # every dLAC op can fall back to the host
    for op in ("nn.layer_norm", "nn.group_norm", "greater", "equal", "full_like", "nn.prelu",
               "image.resize2d", "erf", "variance", "std", "cumsum", "split"):
        assert placement(f"relax.{op}") == "host", op
    for op, (_, attrs) in hostgraph.OPS.items():
        assert attrs is None or attrs in hostgraph.ATTRS, op


def _section(nodes, params, consts=(), output=None):
    body, meta = b"", []
    for c in consts:
        body += b"\0" * (-len(body) % 16)
        meta.append({"shape": list(c.shape), "dtype": str(c.dtype), "offset": len(body)})
        body += c.tobytes()
    doc = {"functions": [{"name": "main", "params": [{"name": f"x{i}", "shape": list(s), "dtype": d}
                                                     for i, (s, d) in enumerate(params)],
                          "nodes": nodes, "output": output or ["v", len(nodes) - 1]}],
           "constants": meta}
    return zlib.compress(hostgraph.pack(doc, body))


def _node(op, args, kind=None, **fields):
    return {"op": op, "args": args, "attrs": None if kind is None else {"type": kind, "fields": fields}}


X = ((1, 4, 6, 6), "float32")
G = ((4,), "float32")
LN = _node("relax.nn.layer_norm", [["p", 0], ["p", 1], ["p", 2]], "relax.attrs.LayerNormAttrs",
           axes=[-1], epsilon=1e-5, center=True, scale=True)
GN = _node("relax.nn.group_norm", [["p", 0], ["p", 1], ["p", 1]], "relax.attrs.GroupNormAttrs",
           num_groups=2, channel_axis=1, axes=[2, 3], epsilon=1e-5, center=True, scale=True)
PRELU = _node("relax.nn.prelu", [["p", 0], ["p", 1]], "relax.attrs.PReluAttrs", axis=1)
CUMSUM = _node("relax.cumsum", [["p", 0]], "relax.attrs.ScanopAttrs", axis=1, dtype=None, exclusive=False)
RESIZE = _node("relax.image.resize2d", [["p", 0], ["shape", [12, 12]]], "relax.attrs.Resize2DAttrs",
               roi=[0.0, 0.0, 0.0, 0.0], layout="NCHW", method="linear",
               coordinate_transformation_mode="half_pixel", rounding_method="round", cubic_alpha=-0.75,
               cubic_exclude=0, extrapolation_value=0.0, out_dtype=None)
VAR = _node("relax.variance", [["p", 0]], "relax.attrs.StatisticalAttrs", axis=[2, 3], keepdims=True)
FULL_LIKE = _node("relax.full_like", [["p", 0], ["c", 0]], "relax.attrs.InitAttrs", dtype=None)
TILE = _node("relax.tile", [["p", 0]], "relax.attrs.TileAttrs", repeats=[1, 2, 1, 1])

#: (name, node, params, constants, a bad field, the word the refusal names)
CASES = [
    ("layer_norm", LN, [X, ((6,), "float32"), ((6,), "float32")], [], {"epsilon": -1.0}, "epsilon"),
    ("layer_norm_axes", LN, [X, ((6,), "float32"), ((6,), "float32")], [], {"axes": []}, "axes"),
    ("group_norm", GN, [X, G], [], {"num_groups": 0}, "num_groups"),
    ("group_norm_center", GN, [X, G], [], {"center": 1}, "center"),
    ("prelu", PRELU, [X, G], [], {"axis": 99}, "axis"),
    ("cumsum", CUMSUM, [X], [], {"exclusive": "no"}, "exclusive"),
    ("resize_layout", RESIZE, [X], [], {"layout": "NHWC"}, "layout"),
    ("resize_method", RESIZE, [X], [], {"method": "lanczos"}, "method"),
    ("resize_roi", RESIZE, [X], [], {"roi": [0.0, 1e300, 0.0, 0.0]}, "roi"),
    ("variance", VAR, [X], [], {"keepdims": None}, "keepdims"),
    ("full_like", FULL_LIKE, [X], [np.array(2.5, np.float32)], {"dtype": "handle"}, "dtype"),
    ("tile", TILE, [X], [], {"repeats": [0, 1, 1, 1]}, "repeats"),
]


@pytest.mark.parametrize("name, node, params, consts, bad, word", CASES, ids=[c[0] for c in CASES])
def test_new_op_attributes_are_checked_naming_the_node(name, node, params, consts, bad, word):
    good = _section([node], params, consts)
    hostgraph.decode(good, "HOST")                    # the valid node rebuilds under TVM
    wrong = json.loads(json.dumps(node))
    wrong["attrs"]["fields"].update(bad)
    with pytest.raises(BinaryFormatError, match=word) as e:
        hostgraph.parse(_section([wrong], params, consts), "HOST")
    assert "section HOST" in str(e.value) and "main node 0" in str(e.value) and node["op"] in str(e.value)
    extra = json.loads(json.dumps(node))
    extra["attrs"]["fields"]["code"] = "x"
    with pytest.raises(BinaryFormatError, match="exactly the fields"):
        hostgraph.parse(_section([extra], params, consts), "HOST")


def test_comparisons_and_where_build_and_compute():
    """A bool intermediate (PReLU's ``x > 0``) inside one host function."""
    from compiler.reference import run_reference

    nodes = [_node("relax.greater", [["p", 0], ["c", 0]]),
             _node("relax.multiply", [["p", 0], ["c", 1]]),
             _node("relax.where", [["v", 0], ["p", 0], ["v", 1]])]
    blob = _section(nodes, [X], [np.array(0.0, np.float32), np.array(0.25, np.float32)])
    x = np.random.default_rng(0).standard_normal(X[0]).astype(np.float32)
    out = run_reference(hostgraph.decode(blob, "HOST"), {"x0": x})[0]
    np.testing.assert_allclose(out, np.where(x > 0, x, 0.25 * x), rtol=1e-6)
    bad = json.loads(json.dumps(nodes))
    bad[0]["attrs"] = {"type": "relax.attrs.InitAttrs", "fields": {"dtype": None}}
    with pytest.raises(BinaryFormatError, match="takes no attributes"):
        hostgraph.parse(_section(bad, [X], [np.array(0.0, np.float32), np.array(0.25, np.float32)]), "HOST")


def test_split_with_indices_rebuilds():
    """``torch.chunk`` / ``split`` import as split with a list of indices: the rebuild gives TVM
    typed integers (plain ints make it abort)."""
    node = _node("relax.split", [["p", 0]], "relax.attrs.SplitAttrs", indices_or_sections=[1, 3], axis=1)
    blob = _section([node], [X], output=["item", ["v", 0], 2])
    mod = hostgraph.decode(blob, "HOST")
    assert [int(d) for d in mod["main"].body.body.ty.shape.values] == [1, 1, 6, 6]


@pytest.mark.parametrize("value, ok", [("inf", True), ("-inf", True), ("nan", False), ("Infinity", False),
                                       (1e308, True)])
def test_clip_bounds_may_be_infinite(value, ok):
    """``clip(x, 0, inf)`` (torch relu6 / hardswish pieces): infinities are spelled "inf" and
    "-inf", NaN never."""
    node = _node("relax.clip", [["p", 0], ["float", 0.0, "float64"], ["float", value, "float64"]])
    blob = _section([node], [X])
    if ok:
        hostgraph.decode(blob, "HOST")
    else:
        with pytest.raises(BinaryFormatError, match="not \\[\"float\""):
            hostgraph.parse(blob, "HOST")


def test_encode_round_trips_an_infinite_bound():
    from tvm import relax
    from tvm.ir.prim.expr import FloatImm

    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("host_0", [x]):
        y = bb.emit(relax.op.clip(x, FloatImm("float64", 0.0), FloatImm("float64", float("inf"))))
        bb.emit_func_output(y)
    blob = hostgraph.encode(bb.get(), "host")
    doc = hostgraph.parse(blob, "HOST").doc
    assert doc["functions"][0]["nodes"][0]["args"][2][1] == "inf"


def test_multi_pass_ops_count_their_work(monkeypatch):
    """A layer norm counts ``WORK`` operations per element against the graph's bound."""
    params = [X, ((6,), "float32"), ((6,), "float32")]
    elements = int(np.prod(X[0]))
    factor = hostgraph.vocabulary.WORK["relax.nn.layer_norm"]
    assert factor > 1
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(work=elements * factor))
    hostgraph.decode(_section([LN], params), "HOST")
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(work=elements * factor - 1))
    with pytest.raises(BinaryFormatError, match="estimated work"):
        hostgraph.decode(_section([LN], params), "HOST")
