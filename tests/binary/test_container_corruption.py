"""The ``.dlac`` container refuses every kind of damage with the section and byte offset
named (truncation, bit flips, bad table entries, malformed JSON, bad instruction words), and
validates the program statically at read time.  NumPy only."""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from target_dlac.core.errors import BinaryFormatError
from target_dlac.binary.container import from_bytes, read_program, to_bytes
from target_dlac.isa.encoding import Insn
from target_dlac.isa.machine import Machine
from target_dlac.binary.program import Tensor
from tests.container_helpers import MACHINE, TAGS, make_program, refix_crcs, refused, row_dma, table
from tests.isa_programs import fields


@pytest.fixture(scope="module")
def blob():
    return to_bytes(make_program())


# ---- truncation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [0, 1, 10, 63])
def test_truncated_header(tmp_path, blob, cut):
    path = tmp_path / "t.dlac"
    path.write_bytes(blob[:cut])
    with pytest.raises(BinaryFormatError) as ei:
        read_program(path)
    assert (ei.value.section, ei.value.offset) == ("header", cut)
    assert f"byte offset {cut}" in str(ei.value) and "truncated" in str(ei.value)


@pytest.mark.parametrize("cut", [64, 65, 64 + 40, 64 + 32 * 5 - 1])
def test_truncated_section_table(blob, cut):
    refused(blob[:cut], "header", cut, "truncated")


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("where", ["start", "middle", "last byte"])
def test_truncated_inside_a_section(tmp_path, blob, tag, where):
    off, length = table(blob)[tag]
    cut = {"start": off, "middle": off + length // 2, "last byte": off + length - 1}[where]
    path = tmp_path / "t.dlac"
    path.write_bytes(blob[:cut])
    with pytest.raises(BinaryFormatError) as ei:
        read_program(path)
    assert (ei.value.section, ei.value.offset) == (tag, off)
    assert f"section {tag}, byte offset {off}" in str(ei.value)


# ---- header damage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("magic", [b"DLAC\x00BIM", b"\x00" * 8, b"\x7fELF\x02\x01\x01\x00"])
def test_wrong_magic(blob, magic):
    refused(magic + blob[8:], "header", 0, "not a dLAC binary")


@pytest.mark.parametrize("major", [0, 2, 0xFFFF])
def test_wrong_major_version(blob, major):
    data = bytearray(blob)
    struct.pack_into("<H", data, 8, major)
    refused(data, "header", 8, "format version")
    refused(refix_crcs(data), "header", 8, "format version")


def test_other_minor_version_is_read(blob):
    data = bytearray(blob)
    struct.pack_into("<H", data, 10, 7)
    assert from_bytes(bytes(refix_crcs(data))).insns == from_bytes(blob).insns


def _expected_header_offset(byte: int) -> int:
    if byte < 8:
        return 0        # magic
    if byte < 10:
        return 8        # major version
    if 12 <= byte < 20:
        return 12       # header size / section count
    if 20 <= byte < 24:
        return 20       # flags (must be 0)
    return 56           # everything else: header CRC


def test_every_bit_flip_in_header_and_table(blob):
    """A flipped bit anywhere in the header (but its reserved word) or the section table
    is refused, naming the header and the field's offset."""
    hb = 64 + 32 * 5
    for byte in [b for b in range(hb) if not 60 <= b < 64]:
        for bit in range(8):
            data = bytearray(blob)
            data[byte] ^= 1 << bit
            with pytest.raises(BinaryFormatError) as ei:
                from_bytes(bytes(data))
            assert ei.value.section == "header", (byte, bit, str(ei.value))
            assert ei.value.offset == _expected_header_offset(byte), (byte, bit, str(ei.value))


@pytest.mark.parametrize("byte", [60, 63])
def test_bit_flip_in_reserved_header_word(blob, byte):
    data = bytearray(blob)
    data[byte] ^= 0x01
    with pytest.raises(BinaryFormatError):
        from_bytes(bytes(data))


# ---- section damage ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bit", [0, 7])
def test_bit_flip_in_each_section(blob, tag, where, bit):
    off, length = table(blob)[tag]
    at = {"first": off, "middle": off + length // 2, "last": off + length - 1}[where]
    data = bytearray(blob)
    data[at] ^= 1 << bit
    refused(data, tag, off, "CRC32 mismatch")


def test_bit_flip_read_from_file(tmp_path, blob):
    off, length = table(blob)["CONSTS"]
    data = bytearray(blob)
    data[off + 3] ^= 0x20
    path = tmp_path / "x.dlac"
    path.write_bytes(bytes(data))
    with pytest.raises(BinaryFormatError, match=rf"section CONSTS, byte offset {off}"):
        read_program(path)


def test_unknown_and_repeated_tags(blob):
    data = bytearray(blob)
    data[64 + 32 * 2: 64 + 32 * 2 + 8] = b"BOGUS\0\0\0"
    refused(refix_crcs(data), "header", 64 + 64, "unknown or repeated")
    data = bytearray(blob)
    data[64 + 32 * 2: 64 + 32 * 2 + 8] = b"INSTS\0\0\0"
    refused(refix_crcs(data), "header", 64 + 64, "unknown or repeated")


def test_section_outside_file_and_overlap(blob):
    t = table(blob)
    data = bytearray(blob)
    struct.pack_into("<Q", data, 64 + 32 * 4 + 16, t["META"][1] + 100)     # META length too long
    refused(refix_crcs(data), "META", t["META"][0], "outside the file")
    data = bytearray(blob)
    struct.pack_into("<Q", data, 64 + 32 * 2 + 8, t["INSTS"][0])            # CONSTS on top of INSTS
    refused(refix_crcs(data), "CONSTS", t["INSTS"][0], "overlaps section INSTS")


def _patch(blob, tag, fn) -> bytearray:
    off, length = table(blob)[tag]
    data = bytearray(blob)
    body = bytearray(data[off:off + length])
    fn(body)
    assert len(body) == length
    data[off:off + length] = body
    return refix_crcs(data)


@pytest.mark.parametrize("tag", ["MACHINE", "TENSORS", "META"])
def test_invalid_json_with_good_crc(blob, tag):
    data = _patch(blob, tag, lambda b: b.__setitem__(0, ord("X")))
    refused(data, tag, table(blob)[tag][0], "invalid JSON")


def _replacing(old: bytes, new: bytes):
    """A change for _patch: ``old`` replaced by ``new`` in the section body (it must occur)."""
    def change(b):
        s = bytes(b).replace(old, new)
        assert s != bytes(b)
        b[:] = s
    return change


def test_machine_hash_mismatch(blob):
    change = _replacing(b'"dma_latency":100', b'"dma_latency":999')
    refused(_patch(blob, "MACHINE", change), "MACHINE", table(blob)["MACHINE"][0], "hash")


def test_malformed_tensor_entry(blob):
    change = _replacing(b'"role":"input"', b'"role":"inpux"')
    refused(_patch(blob, "TENSORS", change), "TENSORS", table(blob)["TENSORS"][0], "malformed")


# ---- instruction damage and static validation (CRCs correct) -------------------------------------

def _set_bits(pc, word, value):
    def fn(b):
        at = pc * 32 + 8 * word
        w = int.from_bytes(b[at:at + 8], "little") | value
        b[at:at + 8] = w.to_bytes(8, "little")
    return fn


def _clear_opcode(pc):
    def fn(b):
        b[pc * 32] &= ~63
    return fn


INSN_DAMAGE = {"reserved bit": _set_bits(6, 2, 1 << 40),     # SYNC at pc 6: word 2 unused
               "unknown opcode": _clear_opcode(3)}


@pytest.mark.parametrize("kind", sorted(INSN_DAMAGE))
def test_bad_instruction_word_with_good_crc(blob, kind):
    pc = 6 if kind == "reserved bit" else 3
    e = refused(_patch(blob, "INSTS", INSN_DAMAGE[kind]), "INSTS", table(blob)["INSTS"][0] + 32 * pc)
    assert f"pc {pc}" in str(e)


def test_instruction_section_not_a_multiple_of_32(blob):
    """INSTS one byte short (the following sections moved up, every CRC correct)."""
    p = from_bytes(blob)
    data = bytearray(to_bytes(p))
    t = table(data)
    off, length = t["INSTS"]
    struct.pack_into("<Q", data, 64 + 32 * 1 + 16, length - 1)
    refused(refix_crcs(data), "INSTS", off + length - 32, "not a multiple of 32")


BAD_INSNS = {
    "LOAD past INP": (row_dma("LOAD", "INP", MACHINE.inp_bytes - 4, 0, 8), "outside INP"),
    "STORE past DRAM": (row_dma("STORE", "ACC", 0, 10 ** 9, 4), "outside DRAM"),
    "TACC acc past ACC": (Insn("TACC", fields("TACC", acc=MACHINE.acc_bytes - 4, c=1, h=2, w=2, f=1,
                                              kh=1, kw=1, oh=2, ow=2, sh=1, sw=1)), "outside ACC"),
    "ALU past INP": (Insn("ALU", fields("ALU", a=MACHINE.inp_bytes, n=1)), "outside INP"),
    "LOAD buffer code 3": (Insn("LOAD", fields("LOAD", buf=3, x=4, y=1)), "names no buffer"),
    "MAC bad geometry": (Insn("MAC", fields("MAC", c=1, h=4, w=4, f=1, kh=3, kw=3, oh=4, ow=4, sh=1,
                                            sw=1)), "does not match"),
    "EPI act 13": (Insn("EPI", fields("EPI", act=13, f=1, p=1)), "activation code 13"),
    "EPI float lut": (Insn("EPI", fields("EPI", act=12, f=1, p=1)), "lut is int8 only"),
    "EPI int8 sigmoid": (Insn("EPI", fields("EPI", act=8, f=1, p=1, dtype=2)), "not defined for int8"),
    "ALU int8 gelu": (Insn("ALU", fields("ALU", op=12, n=1, dtype=2)), "not defined for int8"),
    "HOST without table": (Insn("HOST", {"index": 0}), "host op #0"),
}


@pytest.mark.parametrize("case", sorted(BAD_INSNS))
def test_instruction_refused_statically(case):
    """The encoding is fine and the CRCs match: validate_program must still refuse it."""
    bad, what = BAD_INSNS[case]
    p = make_program(extra_insns=[bad])        # pc 7, between SYNC and HALT
    data = to_bytes(p)
    e = refused(data, "INSTS", table(data)["INSTS"][0] + 7 * 32, what)
    assert "pc 7" in str(e)


def test_missing_halt_refused():
    p = make_program()
    p.insns = p.insns[:-1]
    data = to_bytes(p)
    refused(data, "INSTS", table(data)["INSTS"][0] + 6 * 32, "HALT")


def test_halt_before_the_end_refused():
    p = make_program(extra_insns=[Insn("HALT"), Insn("SYNC")])     # HALT at pc 7
    data = to_bytes(p)
    refused(data, "INSTS", table(data)["INSTS"][0] + 7 * 32, "HALT before the end")


def test_flags_must_be_zero_even_with_good_crc(blob):
    data = bytearray(blob)
    struct.pack_into("<I", data, 20, 4)
    refused(refix_crcs(data), "header", 20, "flags")


@pytest.mark.parametrize("meta,section,what", [
    ({"dram_bytes": 0}, "META", "DRAM size"),
    ({"dram_bytes": -5}, "META", "DRAM size"),
    ({"dram_bytes": "4096"}, "META", "DRAM size"),
    ({"dram_bytes": 200}, "CONSTS", "constants exceed"),       # the constants are 224 bytes
    ({"layers": [{"name": "l", "op": "conv", "pc_start": 3, "pc_end": 99}]}, "META", "layer table"),
    ({"layers": "x"}, "META", "layer table"),
    ({"host_ops": [{"func": "f", "inputs": ["x"], "outputs": ["y"]}]}, "META", "HOST section"),
])
def test_bad_meta_refused(meta, section, what):
    p = make_program(**meta)
    if section == "CONSTS":
        assert len(p.constants) > p.meta["dram_bytes"]
    data = to_bytes(p)
    refused(data, section, table(data)[section][0], what)


def test_bad_tensor_table_refused():
    p = make_program()
    p.tensors[1] = Tensor("y", "output", (1, 4, 5, 5), "float32", p.dram_bytes - 4)
    data = to_bytes(p)
    refused(data, "TENSORS", table(data)["TENSORS"][0], "outside DRAM")
    p.tensors[1] = Tensor("y", "activation", (1, 4, 5, 5), "float32", 0)
    data = to_bytes(p)
    refused(data, "TENSORS", table(data)["TENSORS"][0], "no outputs")


def test_dram_bytes_at_the_machine_limit_is_read():
    p = make_program(dram_bytes=MACHINE.dram_bytes)
    assert from_bytes(to_bytes(p)).dram_bytes == MACHINE.dram_bytes


@pytest.mark.parametrize("machine,dram", [(MACHINE, MACHINE.dram_bytes + 1),
                                          (Machine(), 8 << 30),
                                          (Machine(), 1 << 39)])
def test_dram_bytes_beyond_machine_refused_without_allocating(machine, dram):
    data = to_bytes(make_program(machine=machine, dram_bytes=dram))
    tracemalloc.start()
    try:
        refused(data, "META", table(data)["META"][0], "DRAM size")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"reading allocated {peak} bytes"
