"""Hostile REF constants that name weight blocks of CONSTS (container format 1.2): every
offset, size, tiling and block is checked against the CONSTS section before (or while) it is
decoded, the error names the constant, the node that uses it, the tile and the offset, and
the decoded total is bounded.  Each attack has every CRC right, so it reaches the graph
loader; what must hold: a BinaryFormatError (one ``dlac: error:`` line from the CLI), never
another exception, never a large allocation."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("tvm")

from target_dlac.binary import hostgraph  # noqa: E402
from target_dlac.binary.container import from_bytes, to_bytes  # noqa: E402
from target_dlac.core.errors import BinaryFormatError  # noqa: E402
from target_dlac.sim.host import reference_module  # noqa: E402
from tests.cli_helpers import cli, error_line  # noqa: E402
from tests.fuzz_helpers import _sections, rebuild  # noqa: E402


@pytest.fixture(scope="module")
def blob(tiny):
    from compiler.build import build_program
    from target_dlac.codegen.schedule import Schedule

    sched = {"conv2": Schedule(16, 8, 8, 8), "conv3": Schedule(8, 16, 4, 8), "fc": Schedule(4, 8, 1, 1)}
    return to_bytes(build_program(tiny, schedules=sched))


def _doc(data: bytes):
    raw = zlib.decompress(_sections(data)["REF"])
    (n,) = struct.unpack_from("<I", raw, 8)
    return json.loads(raw[12:12 + n]), raw[(12 + n + 15) // 16 * 16:]


def _shared(doc, fmt: str) -> dict:
    """The first constant taken from CONSTS blocks of format ``fmt``."""
    return next(c for c in doc["constants"] if c.get("consts", {}).get("format") == fmt)


def _refused(data: bytes, doc, body, match: str) -> str:
    p = from_bytes(rebuild(data, {"REF": zlib.compress(hostgraph.pack(doc, body))}))
    with pytest.raises(BinaryFormatError, match=match) as e:
        reference_module(p)
    msg = str(e.value)
    assert "section REF" in msg and "constant " in msg
    return msg


def _mutant(blob, fmt, change):
    doc, body = _doc(blob)
    change(_shared(doc, fmt)["consts"])
    return doc, body


def test_the_base_binary_shares_its_weights(blob):
    doc, _ = _doc(blob)
    shared = [c["consts"] for c in doc["constants"] if "consts" in c]
    assert [r["format"] for r in shared] == ["float32", "ternary", "ternary", "float32"]
    assert [len(r["tiles"]) for r in shared] == [1, 4, 8, 12]
    reference_module(from_bytes(blob))            # and loads


@pytest.mark.parametrize("offset", [-16, 10 ** 9, 2 ** 62])
def test_a_block_outside_consts_is_refused_naming_the_node_and_offset(blob, offset):
    doc, body = _mutant(blob, "ternary", lambda r: r["tiles"][2].__setitem__(4, offset))
    msg = _refused(blob, doc, body, "outside the")
    assert "tile 2" in msg and str(offset) in msg and "CONSTS" in msg
    assert "used by function main node" in msg and "relax.nn.conv2d" in msg


def test_a_block_running_past_consts_is_refused(blob):
    size = len(_sections(blob)["CONSTS"])
    doc, body = _mutant(blob, "ternary", lambda r: r["tiles"][0].__setitem__(5, size))
    assert "outside the" in _refused(blob, doc, body, f"outside the {size} bytes of CONSTS")


@pytest.mark.parametrize("change, match", [
    (lambda r: r["tiles"].pop(1), "does not continue the tiling"),                  # a gap
    (lambda r: r["tiles"].insert(1, list(r["tiles"][0])), "does not continue the tiling"),  # a repeat
    (lambda r: r["tiles"].pop(), "tiles end at"),                                    # short
    (lambda r: r["tiles"][0].__setitem__(1, 10 ** 6), "does not continue the tiling"),
    (lambda r: r["tiles"].__setitem__(0, [0, 1, 0]), "is not \\[f0, f1, c0, c1, offset, nbytes\\]"),
    (lambda r: r["tiles"][0].__setitem__(0, True), "is not \\[f0, f1, c0, c1, offset, nbytes\\]"),
    (lambda r: r.__setitem__("tiles", []), "non-empty list of at most"),
    (lambda r: r.__setitem__("tiles", [[0, 0, 0, 0, 0, 0]] * 3), "does not continue the tiling"),
    (lambda r: r.__setitem__("format", "int8"), "int8 blocks decode to int8|is \\d+ bytes, not"),
    (lambda r: r.__setitem__("format", "float32"), "float32 blocks decode to float32"),
    (lambda r: r.__setitem__("format", "code"), "block format 'code' is not one of"),
    (lambda r: r.__setitem__("layout", "kn"), "layout kn needs a 1x1 kernel"),
    (lambda r: r.__setitem__("kernel", [32, 16, 3]), "kernel must be 4 positive integers"),
    (lambda r: r.__setitem__("kernel", [64, 16, 3, 3]), "is not the oihw form"),
    (lambda r: r.__setitem__("evil", "__import__('os')"), "'consts' must be"),
])
def test_malformed_descriptions_are_refused(blob, change, match):
    doc, body = _mutant(blob, "ternary", change)
    _refused(blob, doc, body, match)


def test_a_dense_tile_of_the_wrong_size_is_refused(blob):
    doc, body = _mutant(blob, "float32", lambda r: r["tiles"][0].__setitem__(5, r["tiles"][0][5] - 4))
    assert "CONSTS offset" in _refused(blob, doc, body, "a float32 block of")


@pytest.mark.parametrize("what", ["float32 data", "epilogue parameters", "zeros", "another tile"])
def test_a_ternary_tile_pointing_at_other_bytes_is_refused_or_decodes(blob, what):
    """Pointing a ternary tile at bytes that are not its block: a clear error at the tile's
    offset (or, if those bytes happen to form a valid block, a weight of the right shape)."""
    doc, body = _doc(blob)
    dense = _shared(doc, "float32")["consts"]["tiles"][0]
    tern = _shared(doc, "ternary")["consts"]
    t = tern["tiles"][1]
    t[4] = {"float32 data": dense[4], "epilogue parameters": dense[4] + dense[5],
            "zeros": len(_sections(blob)["CONSTS"]) - t[5], "another tile": tern["tiles"][0][4]}[what]
    p = from_bytes(rebuild(blob, {"REF": zlib.compress(hostgraph.pack(doc, body))}))
    try:
        mod = reference_module(p)
    except BinaryFormatError as e:
        assert f"tile 1 at CONSTS offset {t[4]}" in str(e)
    else:
        assert mod is not None


def test_damaged_block_contents_are_refused_when_decoded(blob):
    """CONSTS itself damaged under the REF's tiles (CRC fixed): the ternary decoder checks
    the counts, the row permutation, the indices and the codes."""
    doc, _ = _doc(blob)
    t = _shared(doc, "ternary")["consts"]["tiles"][0]
    consts = bytearray(_sections(blob)["CONSTS"])
    for damage, match in ((lambda b, o: b.__setitem__(slice(o, o + 4), b"\xff\xff\xff\x00"), "non-zeros is"),
                          (lambda b, o: b.__setitem__(slice(o + 4 * 16, o + 4 * 16 + 2), b"\x00\x7f"),
                           "not a permutation")):
        bad = bytearray(consts)
        damage(bad, t[4])
        p = from_bytes(rebuild(blob, {"CONSTS": bytes(bad)}))
        with pytest.raises(BinaryFormatError, match=match) as e:
            reference_module(p)
        assert f"tile 0 at CONSTS offset {t[4]}" in str(e.value)


def test_the_decoded_total_is_bounded(blob, monkeypatch):
    """Many constants naming the same blocks cannot multiply the memory: the sum of every
    constant's decoded bytes is bounded (``LIMITS.constants``), as is the number of tiles."""
    doc, body = _doc(blob)
    c = _shared(doc, "ternary")
    doc["constants"] += [json.loads(json.dumps(c)) for _ in range(50)]
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(constants=100_000))
    _refused(blob, doc, body, "constants exceed 100000 bytes")
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(tiles=100))
    _refused(blob, doc, body, "more than 100 weight blocks|of at most \\d+ blocks")
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(tiles=7))     # one constant's 8
    _refused(blob, doc, body, "non-empty list of at most \\d blocks")


def test_a_section_read_without_consts_is_refused_when_built(blob):
    ref = bytes(from_bytes(blob).reference)                # the bare bytes, no CONSTS
    g = hostgraph.parse(ref, "REF")                        # everything but the offsets checks out
    with pytest.raises(BinaryFormatError, match="CONSTS section, which was not given"):
        hostgraph.build(g)


def test_the_cli_prints_one_line(blob, tmp_path):
    doc, body = _mutant(blob, "ternary", lambda r: r["tiles"][3].__setitem__(4, 10 ** 9))
    bad = tmp_path / "bad.dlac"
    bad.write_bytes(rebuild(blob, {"REF": zlib.compress(hostgraph.pack(doc, body))}))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 16, 16), np.float32))
    line = error_line(cli(["run", bad, "--input", tmp_path / "x.npy", "--check"]), stdout_empty=False)
    assert "section REF" in line and "tile 3" in line and "1000000000" in line
