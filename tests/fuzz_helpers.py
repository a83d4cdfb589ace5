"""Mutators and the harness of the binary fuzzers (tests/security/test_fuzz_binaries.py and
tools/bench/fuzz_binaries.py; the seeds are in tests/fuzz_seeds.py).  A plain module:
no tests.  NumPy only, except for
the HOST / REF graphs (TVM, imported when a binary has them).

Every mutator takes a :class:`random.Random` and the seed blobs and returns
``(bytes, description)``.  The "raw" mutators (bit flips, byte overwrites, truncation,
junk, splices) mostly stop at the CRC checks; the "smart" ones change instruction fields,
opcodes, constants or the JSON sections and then recompute every CRC (and the machine hash)
so the change reaches decode, validation and the interpreter; :func:`m_graph` changes the
HOST / REF graph structurally (ops, operands, attributes, order, shapes) and repacks it.

:func:`exercise` loads a blob and, if it loads, runs it with inputs of the declared shapes
and dtypes.  It returns an outcome name; any exception other than a ``DlacError`` escapes
(that is the property the fuzzers check).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import struct
import zlib

import numpy as np

from target_dlac.core.errors import DlacError
from target_dlac.binary.container import ENTRY, HEADER, from_bytes, pack_sections
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import BY_CODE, FORMATS, INSN_BYTES, LAYOUTS
from target_dlac.binary.program import Program
from tests.container_helpers import refix_crcs, table

#: Inputs larger than this are passed as zero-stride (broadcast) views instead of real arrays.
MAX_INPUT_BYTES = 64 << 20


class Hang(Exception):
    """An example ran past its time bound (not a DlacError: a fuzz failure)."""


# ---- harness ------------------------------------------------------------------------------------

@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` if the body runs longer than ``seconds`` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"example ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_inputs(p: Program, rng: np.random.Generator) -> dict:
    """An array of the declared shape and dtype for every input tensor."""
    out = {}
    for t in p.inputs:
        if t.nbytes > MAX_INPUT_BYTES:
            out[t.name] = np.broadcast_to(np.zeros((), t.dtype), t.shape)
            continue
        dt = np.dtype(t.dtype)
        if dt.kind == "f":
            out[t.name] = rng.standard_normal(t.shape).astype(dt) * 4
        else:
            info = np.iinfo(dt)
            out[t.name] = rng.integers(info.min, int(info.max) + 1, t.shape).astype(dt)
    return out


def exercise(data: bytes, *, seed: int = 0, check_races: bool = True, cache: dict | None = None) -> str:
    """Load ``data`` and run it if it loads, with its host ops (TVM) if it has any, then
    build and run its REF graph if it has one (what ``dlac run --check`` does).  Returns
    ``"ran-ok"``, ``"load:<DlacError class>"``, ``"host:<DlacError class>"``,
    ``"run:<DlacError class>"`` or ``"ref:<DlacError class>"``; any other exception
    escapes.  The ISA has no branches, so a run executes at most ``len(p.insns)``
    instructions: only a pathologically expensive single instruction could take long
    (the callers add a SIGALRM bound as well).  ``cache`` (a dict the caller keeps) reuses
    the TVM builds of HOST / REF graphs seen before, keyed by their bytes and signature."""
    try:
        p = from_bytes(data)
    except DlacError as e:
        return "load:" + type(e).__name__
    inputs = make_inputs(p, np.random.default_rng(seed))
    host = None
    if p.host is not None and p.meta.get("host_ops"):
        from target_dlac.sim.host import HostRunner
        key = ("host", p.host, json.dumps(p.meta.get("host_ops")), json.dumps([t.to_dict() for t in p.tensors]))
        try:
            host = cache.get(key) if cache is not None else None
            if host is None:
                host = HostRunner(p)
        except DlacError as e:
            return "host:" + type(e).__name__
        if cache is not None:
            cache[key] = host
            host.p = p
    try:
        run(p, inputs, check_races=check_races, host_runner=host)
    except DlacError as e:
        return "run:" + type(e).__name__
    if p.reference is not None:
        from compiler.reference import Reference
        from target_dlac.sim.host import reference_module
        key = ("ref", p.reference)
        try:
            ref = cache.get(key) if cache is not None else None
            if ref is None:
                ref = Reference(reference_module(p))
            if cache is not None:
                cache[key] = ref
            ref(inputs)
        except DlacError as e:
            return "ref:" + type(e).__name__
    return "ran-ok"


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


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


RAW = [m_bitflip, m_overwrite, m_u32, m_truncate, m_extend, m_splice]
SMART = [m_insn_field, m_insn_field, m_insn_field, m_insn_opcode, m_insn_random, m_insn_stream,
         m_consts, m_json, m_json, m_section_swap]
#: the HOST / REF graph mutations (TVM: each input that passes the checks is built and run)
GRAPH = [m_graph]


def mutate(rng: random.Random, blobs: list[bytes], smart_share: float = 0.5,
           graph_share: float = 0.0) -> tuple[bytes, str]:
    """One mutated blob: a HOST / REF graph mutation (a ``graph_share`` of them), else a raw
    or a smart (CRC-fixed) mutation, sometimes two stacked."""
    if rng.random() < graph_share:
        data, desc = m_graph(rng, blobs)
        return data, f"m_graph: {desc}"
    fn = rng.choice(SMART if rng.random() < smart_share else RAW)
    data, desc = fn(rng, blobs)
    if rng.random() < 0.15 and len(data) > 64 and fn in SMART:
        try:
            data2, desc2 = rng.choice(SMART[:-1])(rng, [data])
            data, desc = data2, desc + " | " + desc2
        except Exception:  # noqa: BLE001, S110 - the first mutation broke the table: keep it as is
            pass
    return data, f"{fn.__name__}: {desc}"
