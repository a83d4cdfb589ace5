"""The byte-level and section-level mutators of the binary fuzzers (re-exported by
tests/fuzz_helpers.py, which holds the harness and :func:`~tests.fuzz_helpers.mutate`).
A plain module: no tests.  NumPy only.

Every mutator takes a :class:`random.Random` and the seed blobs and returns
``(bytes, description)``.  The "raw" mutators (bit flips, byte overwrites, truncation,
junk, splices) mostly stop at the CRC checks; the "smart" ones change instruction fields,
opcodes, constants or the JSON sections and then recompute every CRC (and the machine hash)
so the change reaches decode, validation and the interpreter.  The HOST / REF graph
mutator is in tests/fuzz_graph_mutators.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct


from target_dlac.binary.container import ENTRY, HEADER, pack_sections
from target_dlac.isa.encoding import FORMATS, INSN_BYTES, LAYOUTS
from tests.container_helpers import refix_crcs, table

BY_CODE = {code: name for name, (code, _, _) in FORMATS.items()}     # opcode -> name


# ---- raw mutators ---------------------------------------------------------------------------------

def _pick(rng: random.Random, blobs: list[bytes]) -> bytes:
    return rng.choice(blobs)


def m_bitflip(rng, blobs):
    d = bytearray(_pick(rng, blobs))
    k = rng.choice([1, 1, 2, 4, 16])
    # half the time aim at the header + section table, where one flip decides the most
    hb = min(len(d), HEADER.size + ENTRY.size * 8)
    pos = [rng.randrange(hb if rng.random() < 0.5 else len(d)) for _ in range(k)]
    for p in pos:
        d[p] ^= 1 << rng.randrange(8)
    return bytes(d), f"bitflip x{k} at {pos[:4]}"


INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]


def m_overwrite(rng, blobs):
    d = bytearray(_pick(rng, blobs))
    n = rng.choice([1, 2, 4, 8])
    at = rng.randrange(min(len(d), 256) if rng.random() < 0.5 else len(d))
    for i in range(at, min(len(d), at + n)):
        d[i] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(d), f"overwrite {n}B at {at}"


def m_u32(rng, blobs):
    """Overwrite one aligned 32/64-bit word of the header / table with an edge value."""
    d = bytearray(_pick(rng, blobs))
    hb = min(len(d), HEADER.size + ENTRY.size * 8)
    at = rng.randrange(0, hb - 8, 4)
    v = rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(d), len(d) + 1, 64, rng.getrandbits(32)])
    struct.pack_into("<I", d, at, v & 0xFFFFFFFF)
    if rng.random() < 0.5:
        try:
            refix_crcs(d)
        except (struct.error, OverflowError, ValueError):      # the table no longer fits the file
            pass
    return bytes(d), f"u32 {v:#x} at {at}"


def m_truncate(rng, blobs):
    d = _pick(rng, blobs)
    cut = rng.randrange(len(d))
    return d[:cut], f"truncate to {cut}"


def m_extend(rng, blobs):
    d = _pick(rng, blobs)
    n = rng.choice([1, 15, 16, 32, rng.randrange(1, 4096)])
    junk = bytes(rng.getrandbits(8) for _ in range(n)) if rng.random() < 0.5 else b"\0" * n
    return d + junk, f"extend by {n}"


def m_splice(rng, blobs):
    a, b = _pick(rng, blobs), _pick(rng, blobs)
    i, j = rng.randrange(len(a)), rng.randrange(len(b))
    return a[:i] + b[j:], f"splice a[:{i}] + b[{j}:]"


def m_section_swap(rng, blobs):
    """Take one section's bytes from another blob, rebuild the table and CRCs."""
    a, b = _pick(rng, blobs), _pick(rng, blobs)
    tag = rng.choice(["INSTS", "CONSTS", "TENSORS", "META", "MACHINE"])
    return rebuild(a, {tag: _sections(b)[tag]}, fix_hash=False), f"section {tag} from another seed"


# ---- container surgery ----------------------------------------------------------------------------

def _sections(data: bytes) -> dict[str, bytes]:
    return {tag: data[off:off + n] for tag, (off, n) in table(data).items()}


def _mhash(data: bytes) -> bytes:
    return HEADER.unpack_from(data, 0)[6]


def rebuild(data: bytes, replace: dict[str, bytes], fix_hash: bool = True) -> bytes:
    """``data`` with the sections in ``replace`` swapped in, every CRC recomputed and (if
    MACHINE was replaced and ``fix_hash``) the header's machine hash made to match it."""
    secs = _sections(data)
    secs.update(replace)
    mhash = hashlib.sha256(secs["MACHINE"]).digest() if fix_hash and "MACHINE" in replace else _mhash(data)
    return pack_sections(secs, mhash)


def _field_value(rng: random.Random, bits: int, old: int) -> int:
    top = (1 << bits) - 1
    r = rng.random()
    if r < 0.25:
        return rng.choice([0, 1, 2, 3, 4, top, top - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1]) & top
    if r < 0.55:
        return max(0, min(top, old + rng.choice([-2, -1, 1, 2, 4, 8, -4, 16, 32])))
    if r < 0.75:
        return (old * 2 if rng.random() < 0.5 else old // 2) & top
    return rng.getrandbits(bits)


def m_insn_field(rng, blobs):
    """Set one field (or dependency bit) of one instruction to an edge / nearby / random value
    inside its width, in the raw words, then fix the CRCs: reaches validate and run."""
    d = bytearray(_pick(rng, blobs))
    off, length = table(bytes(d))["INSTS"]
    n = length // INSN_BYTES
    desc = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        pc = rng.randrange(n)
        at = off + pc * INSN_BYTES
        words = list(struct.unpack_from("<4Q", d, at))
        name = BY_CODE.get(words[0] & 63)
        if name is None:
            continue
        fname, word, shift, bits = rng.choice([l for l in LAYOUTS[name] if l[0] != "opcode"])
        old = (words[word] >> shift) & ((1 << bits) - 1)
        v = _field_value(rng, bits, old)
        words[word] = (words[word] & ~(((1 << bits) - 1) << shift)) | (v << shift)
        struct.pack_into("<4Q", d, at, *words)
        desc.append(f"pc {pc} {name}.{fname} {old}->{v}")
    refix_crcs(d)
    return bytes(d), "insn field: " + "; ".join(desc)


#: opcodes that share a field layout (changing between them keeps the reserved bits clear)
SAME_LAYOUT = [("LOAD", "STORE"), ("TACC", "MAC", "SACC"), ("SYNC", "HALT")]


def m_insn_opcode(rng, blobs):
    d = bytearray(_pick(rng, blobs))
    off, length = table(bytes(d))["INSTS"]
    pc = rng.randrange(length // INSN_BYTES)
    at = off + pc * INSN_BYTES
    w0 = struct.unpack_from("<Q", d, at)[0]
    old = BY_CODE.get(w0 & 63)
    fam = next((f for f in SAME_LAYOUT if old in f), None)
    if fam and rng.random() < 0.8:
        new = FORMATS[rng.choice(fam)][0]
    else:
        new = rng.randrange(64)
    struct.pack_into("<Q", d, at, (w0 & ~63) | new)
    refix_crcs(d)
    return bytes(d), f"pc {pc} opcode {old} -> {BY_CODE.get(new, new)}"


def m_insn_random(rng, blobs):
    """Replace one instruction by a well-encoded random one of any opcode (fields in width)."""
    d = bytearray(_pick(rng, blobs))
    off, length = table(bytes(d))["INSTS"]
    pc = rng.randrange(length // INSN_BYTES)
    name = rng.choice(list(FORMATS))
    words = [0, 0, 0, 0]
    for fname, word, shift, bits in LAYOUTS[name]:
        v = FORMATS[name][0] if fname == "opcode" else _field_value(rng, bits, rng.randrange(64))
        words[word] |= v << shift
    struct.pack_into("<4Q", d, off + pc * INSN_BYTES, *words)
    refix_crcs(d)
    return bytes(d), f"pc {pc} replaced by random {name}"


def m_insn_stream(rng, blobs):
    """Delete, duplicate or swap whole instructions; fix the CRCs."""
    data = _pick(rng, blobs)
    insts = _sections(data)["INSTS"]
    ins = [insts[i:i + INSN_BYTES] for i in range(0, len(insts), INSN_BYTES)]
    i, j = rng.randrange(len(ins)), rng.randrange(len(ins))
    kind = rng.choice(["delete", "duplicate", "swap", "raw word"])
    if kind == "delete" and len(ins) > 1:
        del ins[i]
    elif kind == "duplicate":
        ins.insert(j, ins[i])
    elif kind == "swap":
        ins[i], ins[j] = ins[j], ins[i]
    else:
        w = bytearray(ins[i])
        k = rng.randrange(4)
        struct.pack_into("<Q", w, 8 * k, rng.getrandbits(64) & rng.getrandbits(64))
        ins[i] = bytes(w)
    return rebuild(data, {"INSTS": b"".join(ins)}), f"insn stream {kind} {i},{j}"


def m_consts(rng, blobs):
    """Damage the constants (weight blocks, epilogue parameters) and fix the CRCs: reaches the
    interpreter's weight-block decoding."""
    d = bytearray(_pick(rng, blobs))
    off, length = table(bytes(d))["CONSTS"]
    if not length:
        return bytes(d), "consts (empty)"
    desc = []
    for _ in range(rng.choice([1, 2, 8])):
        p = off + rng.randrange(min(length, 4096) if rng.random() < 0.7 else length)
        if rng.random() < 0.5:
            d[p] ^= 1 << rng.randrange(8)
        else:
            d[p] = rng.choice([0, 1, 2, 3, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        desc.append(p - off)
    refix_crcs(d)
    return bytes(d), f"consts bytes at {desc[:4]}"


def _json_edge(rng: random.Random, old):
    pool = [0, -1, 1, 2 ** 31, 2 ** 31 - 1, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, 1e308, True,
            None, "", "x", [], {}, [1], "float32", "int8", "input", "output"]
    if isinstance(old, bool):
        return rng.choice(pool)
    if isinstance(old, int) and rng.random() < 0.5:
        return rng.choice([old + 1, old - 1, old * 2, old // 2, old + 16, old * 1024])
    return rng.choice(pool)


def _mutate_json(rng: random.Random, obj, depth=0):
    """Replace / delete / add one value somewhere inside ``obj`` (in place where possible)."""
    is_dict = isinstance(obj, dict)
    if not obj or not isinstance(obj, (dict, list)) or (is_dict and depth and rng.random() >= 0.8):
        return _json_edge(rng, obj), "replace"
    k = rng.choice(sorted(obj)) if is_dict else rng.randrange(len(obj))
    where = k if is_dict else f"[{k}]"
    r = rng.random()
    if r < 0.1:
        del obj[k]
        return obj, f"del {where}"
    if r < 0.2 and not is_dict:
        obj.append(obj[k])
        return obj, f"dup {where}"
    if r < 0.15 and is_dict:
        obj[rng.choice(["extra", "host_ops", "layers", "inputs", "outputs", "min_dram_bytes",
                        "precision"])] = _json_edge(rng, None)
        return obj, "add key"
    if isinstance(obj[k], (dict, list)) and obj[k] and rng.random() < 0.8:
        obj[k], d = _mutate_json(rng, obj[k], depth + 1)
        return obj, f"{where}.{d}"
    obj[k] = _json_edge(rng, obj[k])
    return obj, f"{where}={str(obj[k])[:30]}"


def m_json(rng, blobs):
    """Change one value inside META, TENSORS or MACHINE (JSON), re-serialize, and rebuild the
    container with fresh CRCs and, for MACHINE, the matching machine hash in the header."""
    data = _pick(rng, blobs)
    tag = rng.choice(["META", "META", "TENSORS", "TENSORS", "MACHINE"])
    obj, desc = _mutate_json(rng, json.loads(_sections(data)[tag]))
    return rebuild(data, {tag: json_bytes(obj)}), f"json {tag}: {desc}"


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
