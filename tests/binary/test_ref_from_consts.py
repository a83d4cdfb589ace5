"""The REF graph takes its layer weights from the CONSTS section (container format 1.2):
the decoded constants are bit for bit the ones a self-contained REF holds (the oracle is
the same graph encoded the old way, every constant inline), in every weight format
(ternary, ternary clusters, int4 / int8 dense blocks, SWIS, fp32) and activation mode, the
``--check`` outputs are unchanged, the section shrinks, and 1.1 binaries still read."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from compiler.build import build_program  # noqa: E402
from compiler.cli_common import QUANT_WEIGHTS  # noqa: E402
from compiler.config import QuantConfig  # noqa: E402
from target_dlac.binary import container, hostgraph  # noqa: E402
from target_dlac.binary.container import from_bytes, to_bytes  # noqa: E402
from target_dlac.codegen.schedule import Schedule  # noqa: E402
from target_dlac.core.errors import BinaryFormatError  # noqa: E402
from target_dlac.sim.cpu_build import CpuBuild  # noqa: E402
from target_dlac.sim.host import reference_module  # noqa: E402

X = np.random.default_rng(3).standard_normal((1, 1, 16, 16)).astype(np.float32)
CALIB = {"x": np.random.default_rng(4).standard_normal((4, 1, 1, 16, 16)).astype(np.float32)}
#: the dtype of the dLAC blocks' weights in the graph, by --quant (the two non-first/last layers)
FORMATS = {"none": "float32", "ternary": "ternary", "cluster": "ternary", "int4": "int8", "int8": "int8",
           "swis": "swis"}


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    from tests.cli_helpers import FACTORY

    path = tmp_path_factory.mktemp("ref") / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:make"


_RESULTS: dict = {}


#: small tiles: several blocks per layer (filter and channel tiles), decoded into one weight
SCHEDULES = {"conv1": Schedule(8, 1, 8, 16), "conv2": Schedule(16, 8, 8, 8), "conv3": Schedule(8, 16, 4, 8),
             "fc": Schedule(4, 8, 1, 1)}


def _build(factory, monkeypatch, quant="ternary", activations="fp32"):
    """(program, the old self-contained REF of the same module, compile result); the
    program is tiled under :data:`SCHEDULES` (float32 and int8 activations)."""
    from compiler.pipeline import compile_model

    weights, n = QUANT_WEIGHTS[quant]
    if quant not in _RESULTS:          # one import per quantization (a torch.export each)
        _RESULTS[quant] = compile_model(factory, config=QuantConfig(weights=weights, cluster_size=n))
    result = _RESULTS[quant]
    seen = []
    encode = hostgraph.encode

    def spy(mod, what="graph", level=6, weights=None):
        seen.append(mod)
        return encode(mod, what, level, weights=weights)

    monkeypatch.setattr(hostgraph, "encode", spy)
    prog = build_program(result, activations=activations, calib=CALIB if activations == "int8" else None,
                         schedules=None if activations == "fp16" or quant == "swis" else SCHEDULES)
    monkeypatch.setattr(hostgraph, "encode", encode)
    (mod,) = seen
    return prog, hostgraph.encode(mod, "reference", level=1), result


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    u = np.dtype(f"u{a.dtype.itemsize}")
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(u), b.view(u))


CASES = [(q, "fp32") for q in FORMATS] + [("ternary", "fp16"), ("ternary", "int8"), ("swis", "int8"),
                                           ("none", "int8")]


@pytest.mark.parametrize("quant, activations", CASES)
def test_decoded_constants_are_the_old_ones(factory, monkeypatch, quant, activations):
    prog, old, result = _build(factory, monkeypatch, quant, activations)
    back = from_bytes(to_bytes(prog))                     # through the file format
    g_new = hostgraph.parse(back.reference, "REF")
    g_old = hostgraph.parse(old, "REF")
    new, ref = hostgraph.constant_arrays(g_new), hostgraph.constant_arrays(g_old)
    assert len(new) == len(ref)
    for i, (a, b) in enumerate(zip(new, ref)):
        assert _same_bits(a, b), f"constant {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    shared = [c["consts"] for c in g_new.doc["constants"] if "consts" in c]
    # every conv / dense weight the program packed is taken from CONSTS, none is inline
    n_layers = sum(1 for layer in prog.meta["layers"] if layer["op"] in ("conv2d", "dense"))
    assert len(shared) == n_layers == 4
    assert all("offset" not in c for c in g_new.doc["constants"] if "consts" in c)
    formats = [r["format"] for r in shared]
    inner = FORMATS[quant] if activations != "int8" or quant != "none" else "int8"
    assert formats[1:3] == [inner, inner]                # conv2, conv3; conv1 / fc keep fp32 ...
    assert formats[0] == formats[3] == ("int8" if activations == "int8" else "float32")  # (int8: held as int8)
    assert [r["layout"] for r in shared] == ["oihw", "oihw", "oihw", "kn"]   # fc: the (K, N) matmul weight
    for r in shared:                                        # the blocks lie inside CONSTS
        assert all(0 <= off and off + n <= len(prog.constants) for *_, off, n in r["tiles"])
    if activations != "fp16" and quant != "swis":           # several blocks per weight
        assert [len(r["tiles"]) for r in shared] == [2, 4, 8, 12]
    assert len(hostgraph.inflate(back.reference, "REF")) < len(hostgraph.inflate(old, "REF"))
    # a section without its CONSTS is checked as far as it can be, and refused when decoded
    bare = hostgraph.parse(bytes(back.reference), "REF")
    with pytest.raises(BinaryFormatError, match="CONSTS section, which was not given"):
        hostgraph.constant_arrays(bare)


@pytest.mark.slow
@pytest.mark.parametrize("quant, activations", [("ternary", "fp32"), ("swis", "fp32"), ("ternary", "int8"),
                                                ("none", "fp16")])
def test_check_outputs_are_unchanged(factory, monkeypatch, quant, activations):
    """The TVM CPU build of the decoded REF computes exactly what the old REF computed."""
    prog, old, _ = _build(factory, monkeypatch, quant, activations)
    back = from_bytes(to_bytes(prog))
    new_out = CpuBuild(reference_module(back))({"x": X})
    old_out = CpuBuild(hostgraph.decode(old, "REF"))({"x": X})
    assert len(new_out) == len(old_out) == 1
    assert np.array_equal(new_out[0], old_out[0]) and np.isfinite(new_out[0]).all()
    assert np.abs(new_out[0]).max() > 0


def test_version_1_1_binaries_still_read_and_check(factory, monkeypatch):
    """A 1.1 file (its REF holds every constant) is read and its reference decoded as before
    (the TVM build of both graphs: test_check_outputs_are_unchanged)."""
    prog, old, _ = _build(factory, monkeypatch)
    assert container.VERSION == (1, 2)
    new = prog.reference
    prog.reference = old
    monkeypatch.setattr(container, "VERSION", (1, 1))
    data = to_bytes(prog)
    monkeypatch.undo()
    assert data[8:12] == b"\x01\x00\x01\x00"
    back = from_bytes(data)
    g = hostgraph.parse(back.reference, "REF")
    assert not any("consts" in c for c in g.doc["constants"])
    mine = hostgraph.constant_arrays(hostgraph.parse(new, "REF"))
    assert all(_same_bits(a, b) for a, b in zip(hostgraph.constant_arrays(g), mine))
    reference_module(back)                                 # rebuilds under TVM


def test_another_major_version_is_refused(factory, monkeypatch):
    prog, _, _ = _build(factory, monkeypatch)
    monkeypatch.setattr(container, "VERSION", (2, 0))
    data = to_bytes(prog)
    monkeypatch.undo()
    with pytest.raises(BinaryFormatError, match="format version 2.0; this dlac reads 1.x"):
        from_bytes(data)


def test_a_reencoded_reference_reproduces_its_description(factory, monkeypatch):
    prog, _, _ = _build(factory, monkeypatch)
    back = from_bytes(to_bytes(prog))
    again = hostgraph.encode(reference_module(back), "reference", level=1,
                             weights=hostgraph.weight_index(back.reference))
    assert hostgraph.parse(again, "REF").doc == hostgraph.parse(back.reference, "REF").doc


def test_a_weight_that_differs_in_one_bit_is_not_shared():
    """Matching is bit for bit: -0.0 is not 0.0, so that constant stays in the section."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    idx = hostgraph.WeightIndex([(w, "float32", [(0, 2, 0, 3, 0, 24)])], bytes(24))
    assert idx.lookup(np.zeros((2, 3, 1, 1), np.float32))["layout"] == "oihw"
    assert idx.lookup(np.zeros((3, 2), np.float32))["layout"] == "kn"
    assert idx.lookup(-np.zeros((2, 3, 1, 1), np.float32)) is None
    assert idx.lookup(np.zeros((2, 3, 1, 1), np.int8)) is None
