"""Seeds, mutators and the harness of the binary fuzzers (tests/test_fuzz_binaries.py and
tools/bench/fuzz_binaries.py).  A plain module: no tests.  NumPy only (the MNIST seed
needs torch + TVM and is built on demand).

Every mutator takes a :class:`random.Random` and the seed blobs and returns
``(bytes, description)``.  The "raw" mutators (bit flips, byte overwrites, truncation,
junk, splices) mostly stop at the CRC checks; the "smart" ones change instruction fields,
opcodes, constants or the JSON sections and then recompute every CRC (and the machine hash)
so the change reaches decode, validation and the interpreter.

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

import numpy as np

from compiler.errors import DlacError
from target_dlac.container import ENTRY, HEADER, from_bytes, to_bytes
from target_dlac.interpreter import run
from target_dlac.isa import ACTS, ALU_OPS, BY_CODE, FORMATS, INSN_BYTES, LAYOUTS, Insn
from target_dlac.program import DTYPE_SIZES, Program
from tests.container_helpers import make_program, refix_crcs, table
from tests.isa_programs import (
    HALT,
    SMALL,
    SYNC,
    Dram,
    conv,
    fields,
    load,
    out_hw,
    store,
)

#: Inputs larger than this are passed as zero-stride (broadcast) views instead of real arrays.
MAX_INPUT_BYTES = 64 << 20


class Hang(Exception):
    """An example ran past its time bound (not a DlacError: a fuzz failure)."""


class HarnessInputError(AssertionError):
    """A loaded program declares an input the caller cannot build (e.g. a shape whose byte
    size overflows int64): validation let through a tensor no input can match."""


# ---- seeds --------------------------------------------------------------------------------------

def _mac_program() -> Program:
    rng = np.random.default_rng(3)
    C, h, w, kh, kw, sh, sw, pads = 4, 6, 7, 2, 3, 1, 2, (1, 0, 2, 1)
    F = 3
    wt = rng.integers(-4, 5, (F, C, kh, kw)).astype(np.float32)
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    wa = d.const(wt.tobytes())
    xt, yt = d.tensor("x", "input", (C, h, w)), d.tensor("y", "output", (F, oh, ow))
    insns = [load("WGT", 256, wa, wt.nbytes), load("INP", 512, xt.addr, C * h * w * 4), SYNC,
             conv("MAC", 512, 256, 1024, C, h, w, F, kh, kw, sh, sw, pads), SYNC,
             store("ACC", 1024, yt.addr, F * oh * ow * 4), SYNC, HALT]
    return d.program(insns)


def _pool_program() -> Program:
    c, h, w, kh, kw, sh, sw, (pt, pb, pl, pr) = 3, 7, 6, 3, 3, 2, 2, (1, 1, 1, 1)
    oh, ow = out_hw(h, w, kh, kw, sh, sw, (pt, pb, pl, pr))
    d = Dram()
    xt, yt = d.tensor("x", "input", (c, h, w)), d.tensor("y", "output", (c, oh, ow))
    pool = Insn("POOL", fields("POOL", src=16, dst=32, mode=1, count_pad=0, c=c, h=h, w=w, oh=oh,
                               ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr),
                pop_prev=1, push_next=1)
    insns = [load("INP", 16, xt.addr, c * h * w * 4, push_next=1), pool,
             store("ACC", 32, yt.addr, c * oh * ow * 4, pop_prev=1), SYNC, HALT]
    return d.program(insns)


def _alu_program() -> Program:
    n = 37
    d = Dram()
    at, bt, yt = d.tensor("a", "input", (n,)), d.tensor("b", "input", (n,)), d.tensor("y", "output", (n,))
    alu = Insn("ALU", fields("ALU", a=0, b=400, op=ALU_OPS.index("add_relu"), dst=800, n=n),
               pop_prev=1, push_next=1)
    insns = [load("INP", 0, at.addr, n * 4), load("INP", 400, bt.addr, n * 4, push_next=1), alu,
             store("ACC", 800, yt.addr, n * 4, pop_prev=1), SYNC, HALT]
    return d.program(insns)


def _int8_program() -> Program:
    """ALU quantize -> int8 EPI (scale, bias, residual, clip) -> ALU dequantize."""
    F, P = 2, 8
    n = F * P
    d = Dram()
    mult = np.array([3, 5], "<i4").tobytes()
    bias = np.array([7, -9], "<i8").tobytes()
    prm = d.const(mult + bias)                           # M at 0, B at 8 (8-aligned)
    xt, yt = d.tensor("x", "input", (n,)), d.tensor("y", "output", (n,))
    insns = [load("INP", 0, xt.addr, n * 4), load("WGT", 64, prm, len(mult) + len(bias)), SYNC,
             Insn("ALU", fields("ALU", a=0, op=ALU_OPS.index("quantize"), dst=0, n=n, dtype=2, exp=130)),
             SYNC, Insn("ALU", fields("ALU", a=256, op=ALU_OPS.index("relu"), dst=512, n=n, dtype=2)),
             SYNC, load("ACC", 2048, xt.addr, n * 4), SYNC,
             Insn("EPI", fields("EPI", acc=2048, dst=1024, has_scale=1, has_res=1, act=ACTS.index("clip"),
                                prm=64, res=0, f=F, p=P, lo_bits=(-20) & 0xFFFFFFFF, hi_bits=100, dtype=2,
                                shift=2, rshift=1)),
             SYNC, store("ACC", 1024, 4096, n), SYNC, load("INP", 64, 4096, n), SYNC,
             Insn("ALU", fields("ALU", a=64, op=ALU_OPS.index("dequantize"), dst=128, n=n, exp=126)),
             SYNC, store("ACC", 128, yt.addr, n * 4), SYNC, HALT]
    p = d.program(insns, SMALL)
    p.meta["dram_bytes"] = 8192
    return p


def small_programs() -> dict[str, Program]:
    return {"tacc": make_program(), "mac": _mac_program(), "pool": _pool_program(),
            "alu": _alu_program(), "int8": _int8_program()}


def small_blobs() -> dict[str, bytes]:
    return {k: to_bytes(p) for k, p in small_programs().items()}


def mnist_blob() -> bytes:
    """The MNIST CNN (default QuantConfig) as a ``.dlac`` binary (~0.5 MB, ~5 s to build)."""
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.datasets import mnist_cnn
    from target_dlac.machine import Machine

    result = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=QuantConfig())
    return to_bytes(build_program(result, Machine(), reference=False))


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
        true_bytes = DTYPE_SIZES[t.dtype]
        for d in t.shape:
            true_bytes *= d
        if true_bytes != t.nbytes:
            raise HarnessInputError(f"input {t.name!r} shape {t.shape} is {true_bytes} bytes but "
                                    f"Tensor.nbytes says {t.nbytes} (int64 overflow)")
        if true_bytes > MAX_INPUT_BYTES:
            out[t.name] = np.broadcast_to(np.zeros((), t.dtype), t.shape)
            continue
        dt = np.dtype(t.dtype)
        if dt.kind == "f":
            out[t.name] = rng.standard_normal(t.shape).astype(dt) * 4
        else:
            info = np.iinfo(dt)
            out[t.name] = rng.integers(info.min, int(info.max) + 1, t.shape).astype(dt)
    return out


def exercise(data: bytes, *, seed: int = 0, check_races: bool = True) -> str:
    """Load ``data`` and run it if it loads.  Returns ``"ran-ok"``, ``"load:<DlacError class>"`` or
    ``"run:<DlacError class>"``; any other exception escapes.  The ISA has no branches, so
    a run executes at most ``len(p.insns)`` instructions: only a pathologically expensive
    single instruction could take long (the callers add a SIGALRM bound as well)."""
    try:
        p = from_bytes(data)
    except DlacError as e:
        return "load:" + type(e).__name__
    inputs = make_inputs(p, np.random.default_rng(seed))
    try:
        run(p, inputs, check_races=check_races)
    except DlacError as e:
        return "run:" + type(e).__name__
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
    secs = _sections(a)
    secs[tag] = _sections(b)[tag]
    return _assemble(secs, _mhash(a)), f"section {tag} from another seed"


# ---- container surgery ----------------------------------------------------------------------------

def _sections(data: bytes) -> dict[str, bytes]:
    return {tag: data[off:off + n] for tag, (off, n) in table(data).items()}


def _mhash(data: bytes) -> bytes:
    return data[24:56]


def _assemble(sections: dict[str, bytes], mhash: bytes) -> bytes:
    """A container with valid layout and CRCs around arbitrary section bytes."""
    n = len(sections)
    hb = HEADER.size + ENTRY.size * n
    table_, body, offset = [], bytearray(), hb
    for tag, data in sections.items():
        offset = (offset + 15) & ~15
        body.extend(b"\0" * (offset - hb - len(body)))
        table_.append(ENTRY.pack(tag.encode().ljust(8, b"\0"), offset, len(data), 0, 0))
        body.extend(data)
        offset += len(data)
    head = HEADER.pack(b"DLAC\x00BIN", 1, 1, hb, n, 0, mhash, 0, 0)
    return bytes(refix_crcs(bytearray(head + b"".join(table_) + bytes(body))))


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
    secs = _sections(data)
    ins = [secs["INSTS"][i:i + INSN_BYTES] for i in range(0, len(secs["INSTS"]), INSN_BYTES)]
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
    secs["INSTS"] = b"".join(ins)
    return _assemble(secs, _mhash(data)), f"insn stream {kind} {i},{j}"


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
    if isinstance(obj, dict) and obj and (depth == 0 or rng.random() < 0.8):
        k = rng.choice(sorted(obj))
        r = rng.random()
        if r < 0.1:
            del obj[k]
            return obj, f"del {k}"
        if r < 0.15:
            obj[rng.choice(["extra", "host_ops", "layers", "inputs", "outputs", "min_dram_bytes", "precision"])] = _json_edge(rng, None)
            return obj, "add key"
        if isinstance(obj[k], (dict, list)) and obj[k] and rng.random() < 0.8:
            obj[k], d = _mutate_json(rng, obj[k], depth + 1)
            return obj, f"{k}.{d}"
        obj[k] = _json_edge(rng, obj[k])
        return obj, f"{k}={str(obj[k])[:30]}"
    if isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        r = rng.random()
        if r < 0.1:
            del obj[i]
            return obj, f"del [{i}]"
        if r < 0.2:
            obj.append(obj[i])
            return obj, f"dup [{i}]"
        if isinstance(obj[i], (dict, list)) and obj[i] and rng.random() < 0.8:
            obj[i], d = _mutate_json(rng, obj[i], depth + 1)
            return obj, f"[{i}].{d}"
        obj[i] = _json_edge(rng, obj[i])
        return obj, f"[{i}]={str(obj[i])[:30]}"
    return _json_edge(rng, obj), "replace"


def m_json(rng, blobs):
    """Change one value inside META, TENSORS or MACHINE (JSON), re-serialize, and rebuild the
    container with fresh CRCs and, for MACHINE, the matching machine hash in the header."""
    data = _pick(rng, blobs)
    secs = _sections(data)
    tag = rng.choice(["META", "META", "TENSORS", "TENSORS", "MACHINE"])
    obj, desc = _mutate_json(rng, json.loads(secs[tag]))
    secs[tag] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    mhash = _mhash(data)
    if tag == "MACHINE":
        mhash = hashlib.sha256(secs[tag]).digest()
    return _assemble(secs, mhash), f"json {tag}: {desc}"


RAW = [m_bitflip, m_overwrite, m_u32, m_truncate, m_extend, m_splice]
SMART = [m_insn_field, m_insn_field, m_insn_field, m_insn_opcode, m_insn_random, m_insn_stream,
         m_consts, m_json, m_json, m_section_swap]


def mutate(rng: random.Random, blobs: list[bytes], smart_share: float = 0.5) -> tuple[bytes, str]:
    """One mutated blob: a raw or a smart (CRC-fixed) mutation, sometimes two stacked."""
    fn = rng.choice(SMART if rng.random() < smart_share else RAW)
    data, desc = fn(rng, blobs)
    if rng.random() < 0.15 and len(data) > 64 and fn in SMART:
        try:
            data2, desc2 = rng.choice(SMART[:-1])(rng, [data])
            data, desc = data2, desc + " | " + desc2
        except Exception:  # noqa: BLE001, S110 - the first mutation broke the table: keep it as is
            pass
    return data, f"{fn.__name__}: {desc}"
