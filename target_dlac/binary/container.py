"""The ``.dlac`` binary container: write atomically, read with full validation.

Layout (little-endian)::

    0   8  magic  b"DLAC\\x00BIN"
    8   2  format major version (1)     10  2  minor version (2)
    12  4  header bytes (64 + 32 * sections)
    16  4  number of sections           20  4  flags (0)
    24 32  SHA-256 of the machine configuration (canonical JSON)
    56  4  CRC32 of bytes 0..55 and the section table
    60  4  reserved (0)
    64     section table, 32 bytes per section:
           tag (8 bytes, ASCII, NUL-padded), u64 offset, u64 length, u32 CRC32, u32 reserved
           then the sections, each 16-byte aligned

Sections: ``MACHINE`` (JSON), ``INSTS`` (32-byte instructions), ``CONSTS`` (DRAM image of
the constants), ``TENSORS`` (JSON tensor table), ``META`` (JSON), and optionally
``HOST`` / ``REF`` (the host functions / the quantized graph for ``--check``, in dlac's
closed graph format, :mod:`target_dlac.binary.hostgraph`; checked when they are loaded, never
TVM's own serialization).  Since 1.2 a ``REF`` constant may name weight blocks of ``CONSTS``
instead of holding its bytes (:mod:`target_dlac.binary.hostgraph.weights`): the sections are
read as :class:`~target_dlac.binary.hostgraph.weights.Section` objects that carry ``CONSTS``.
Files of 1.0 and 1.1 read as before (their graphs hold all their constants).

:func:`read_program` validates everything before anything runs: sizes, magic,
version, CRCs, JSON, the machine hash, every instruction's encoding and static
bounds (:mod:`target_dlac.binary.validate`).  Errors name the section and the byte offset.
Nothing in a file is ever executed as code (JSON only, no pickle, no eval).
"""

from __future__ import annotations

import json
import struct
import zlib

from target_dlac.core.atomic import atomic_write_bytes
from target_dlac.core.errors import BinaryFormatError, ConfigError

from target_dlac.isa.encoding import decode, encode
from target_dlac.isa.machine import LEGACY_ACT_SKIP, Machine
from target_dlac.binary.hostgraph.weights import Section
from target_dlac.binary.program import DTYPE_SIZES, Program, Tensor
from target_dlac.binary.validate import validate_program

MAGIC = b"DLAC\x00BIN"
VERSION = (1, 2)      # 1.1: int8/fp16 fields, SACC, ALU conversions; 1.2: REF weights from CONSTS
HEADER = struct.Struct("<8sHHIII32sII")
ENTRY = struct.Struct("<8sQQII")
REQUIRED = ("MACHINE", "INSTS", "CONSTS", "TENSORS", "META")
OPTIONAL = ("HOST", "REF")
MAX_SECTIONS = 16


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def to_bytes(p: Program) -> bytes:
    sections = {
        "MACHINE": _json(p.machine.to_dict()),
        "INSTS": encode(p.insns),
        "CONSTS": bytes(p.constants),
        "TENSORS": _json([t.to_dict() for t in p.tensors]),
        "META": _json(p.meta),
    }
    if p.host is not None:
        sections["HOST"] = p.host
    if p.reference is not None:
        sections["REF"] = p.reference
    return pack_sections(sections, bytes.fromhex(p.machine.hash()))


def pack_sections(sections: dict[str, bytes], machine_hash: bytes) -> bytes:
    """The container around ``sections`` (tag -> bytes, in file order): header, section
    table, 16-byte aligned sections, every CRC.  (The fuzzers wrap mutated sections with
    it; the reader still checks their contents.)"""
    n = len(sections)
    header_bytes = HEADER.size + ENTRY.size * n
    table, body, offset = [], bytearray(), header_bytes
    for tag, data in sections.items():
        offset = (offset + 15) & ~15
        pad = offset - header_bytes - len(body)
        body.extend(b"\0" * pad)
        table.append(ENTRY.pack(tag.encode().ljust(8, b"\0"), offset, len(data), zlib.crc32(data), 0))
        body.extend(data)
        offset += len(data)
    head = HEADER.pack(MAGIC, *VERSION, header_bytes, n, 0, machine_hash, 0, 0)
    crc = zlib.crc32(head[:56] + b"".join(table))
    head = HEADER.pack(MAGIC, *VERSION, header_bytes, n, 0, machine_hash, crc, 0)
    return head + b"".join(table) + bytes(body)


def write_program(path, p: Program) -> None:
    """Write ``p`` to ``path`` atomically (temporary file, then rename)."""
    atomic_write_bytes(path, to_bytes(p))


def read_program(path) -> Program:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"binary {path!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path!r} is a directory, not a .dlac binary") from None
    return from_bytes(data)


def from_bytes(data: bytes) -> Program:
    size = len(data)
    if size < HEADER.size:
        raise BinaryFormatError(f"truncated file: {size} bytes, the header alone needs {HEADER.size}",
                                section="header", offset=size)
    magic, major, minor, header_bytes, n, flags, mhash, crc, reserved = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BinaryFormatError(f"not a dLAC binary (magic {magic!r}, expected {MAGIC!r})",
                                section="header", offset=0)
    if major != VERSION[0]:
        raise BinaryFormatError(f"format version {major}.{minor}; this dlac reads {VERSION[0]}.x "
                                "(recompile the model)", section="header", offset=8)
    if flags != 0:
        raise BinaryFormatError(f"unknown header flags {flags:#x}", section="header", offset=20)
    if reserved != 0:
        raise BinaryFormatError("reserved header word is not zero", section="header", offset=60)
    if not 1 <= n <= MAX_SECTIONS or header_bytes != HEADER.size + ENTRY.size * n:
        raise BinaryFormatError(f"bad section count {n} / header size {header_bytes}", section="header",
                                offset=12)
    if size < header_bytes:
        raise BinaryFormatError(f"truncated file: {size} bytes, the section table ends at {header_bytes}",
                                section="header", offset=size)
    table = data[HEADER.size:header_bytes]
    if zlib.crc32(data[:56] + table) != crc:
        raise BinaryFormatError("header CRC mismatch (the header or section table is damaged)",
                                section="header", offset=56)
    sections: dict[str, bytes] = {}
    spans = []
    for i in range(n):
        at = HEADER.size + i * ENTRY.size
        raw_tag, off, length, scrc, entry_reserved = ENTRY.unpack_from(data, at)
        tag = raw_tag.rstrip(b"\0").decode("ascii", "replace")
        if entry_reserved != 0:
            raise BinaryFormatError("reserved word of a section entry is not zero", section="header",
                                    offset=at + 28)
        if tag not in REQUIRED + OPTIONAL or tag in sections:
            raise BinaryFormatError(f"unknown or repeated section tag {tag!r}", section="header", offset=at)
        if off < header_bytes or off + length > size:
            raise BinaryFormatError(f"section [{off}, {off + length}) runs outside the file ({size} bytes)",
                                    section=tag, offset=off)
        for a, b, other in spans:
            if off < b and a < off + length:
                raise BinaryFormatError(f"overlaps section {other}", section=tag, offset=off)
        spans.append((off, off + length, tag))
        body = data[off:off + length]
        if zlib.crc32(body) != scrc:
            raise BinaryFormatError("CRC32 mismatch (the section is damaged)", section=tag, offset=off)
        sections[tag] = body
    offsets = {tag: a for a, _, tag in spans}
    missing = [t for t in REQUIRED if t not in sections]
    if missing:
        raise BinaryFormatError(f"missing section(s) {', '.join(missing)}", section="header",
                                offset=HEADER.size)

    def load_json(tag):
        try:
            return json.loads(sections[tag].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BinaryFormatError(f"invalid JSON: {e}", section=tag, offset=offsets[tag]) from None
        except ValueError as e:     # int() of a number over sys.get_int_max_str_digits() digits
            raise BinaryFormatError(f"invalid JSON: a number too long to read ({str(e).split(';')[0]})",
                                    section=tag, offset=offsets[tag]) from None
        except RecursionError:
            raise BinaryFormatError("JSON nested too deeply", section=tag, offset=offsets[tag]) from None

    try:
        mdict = load_json("MACHINE")
        if isinstance(mdict, dict):         # written before act_skip existed: costed without it
            mdict.setdefault("act_skip", LEGACY_ACT_SKIP)
        machine = Machine.from_dict(mdict, where="MACHINE section")
    except ConfigError as e:
        raise BinaryFormatError(str(e), section="MACHINE", offset=offsets["MACHINE"]) from None
    if bytes.fromhex(machine.hash()) != mhash:
        raise BinaryFormatError("machine configuration does not match the hash in the header",
                                section="MACHINE", offset=offsets["MACHINE"])
    insns = decode(sections["INSTS"], offsets["INSTS"])
    meta = load_json("META")
    tensors = _tensors(load_json("TENSORS"), offsets["TENSORS"])
    graphs = [None if sections.get(t) is None else Section(sections[t], sections["CONSTS"])
              for t in OPTIONAL]     # their constants may name weight blocks of CONSTS
    p = Program(machine, insns, sections["CONSTS"], tensors, meta if isinstance(meta, dict) else {}, *graphs)
    validate_program(p, offsets)
    return p


def _tensors(raw, offset: int) -> list[Tensor]:
    if not isinstance(raw, list):
        raise BinaryFormatError("tensor table is not a list", section="TENSORS", offset=offset)
    out = []
    for i, t in enumerate(raw):
        try:
            shape = tuple(t["shape"])
            ok = (isinstance(t["name"], str) and t["role"] in ("input", "output", "activation", "constant")
                  and t["dtype"] in DTYPE_SIZES and isinstance(t["addr"], int) and t["addr"] >= 0
                  and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 31 for d in shape)
                  and len(shape) <= 8 and not isinstance(t["addr"], bool))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise BinaryFormatError(f"tensor entry {i} is malformed: {str(t)[:120]}", section="TENSORS",
                                    offset=offset)
        out.append(Tensor(t["name"], t["role"], shape, t["dtype"], t["addr"]))
    return out
