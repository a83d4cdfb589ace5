"""Fuzzing the ``.dlac`` reader, decoder, validator and interpreter (hypothesis).

Seeds: valid binaries (``to_bytes`` of the small programs in tests/fuzz_seeds.py, and
the MNIST CNN).  Mutations: bit flips, byte overwrites, truncation, junk appended,
splices of two binaries, and "smart" mutations that change instruction fields / opcodes,
constants or JSON values and then recompute every CRC (and the machine hash), so the
change gets past the integrity checks into decode, validation and the interpreter.

Property, for every input: ``from_bytes`` and (if it loads) ``run`` with inputs of the
declared shapes and dtypes raise nothing but :class:`target_dlac.core.errors.DlacError`
subclasses (a NumPy IndexError / ValueError from an access outside the simulated
memories would escape and fail), and finish: the ISA has no branches, so a run executes
at most ``len(program.insns)`` instructions; each example also runs under a SIGALRM
bound (:func:`tests.fuzz_helpers.time_limit`) so one pathologically expensive
instruction shows up as a ``Hang`` instead of stalling the suite.

The inputs the fuzzers found escaping with another exception (eight, all fixed in the
library) are kept at the end as regression tests.
"""

from __future__ import annotations

import functools
import json
import os
import random
import traceback
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.isa.encoding import INSN_BYTES, LAYOUTS
from tests.fuzz_mutators import BY_CODE
from tests.container_helpers import refix_crcs, table
from tests.fuzz_helpers import RAW, SMART, _sections, exercise, json_bytes, m_section_swap, rebuild, time_limit
from tests.fuzz_seeds import mnist_blob, small_blobs

TIME_LIMIT_S = 5.0
# derandomize: the same examples on every run (a green suite stays green); raise max_examples or
# drop derandomize locally to explore further.
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize=True)


@functools.cache
def seeds() -> dict[str, bytes]:
    return small_blobs()


SEED_NAMES = sorted(seeds())


#: Escapes the random tests tolerate (exception type, file, function of the innermost project
#: frame) -> reproducer id.  Empty: every escape the fuzzers found is fixed, and kept below as
#: a regression test; add an entry only with a reproducer, and only while it is being fixed.
KNOWN: dict = {}


def _known(e: BaseException) -> str | None:
    frames = traceback.extract_tb(e.__traceback__)
    for (typ, path, func), name in KNOWN.items():
        path = os.path.normpath(path)
        if isinstance(e, typ) and any(f.filename.endswith(path) and f.name == func for f in frames):
            return name
    return None


def check(data: bytes, *, tolerate_known: bool = True) -> str:
    """The property: only DlacErrors escape, within the time bound (the escapes already kept
    as reproducers count as ``known:<id>`` unless ``tolerate_known`` is false)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # NumPy overflow on garbage data
        try:
            with time_limit(TIME_LIMIT_S):
                return exercise(bytes(data))
        except Exception as e:
            name = _known(e) if tolerate_known else None
            if name is None:
                raise
            return "known:" + name


def test_seeds_run():
    for name, blob in seeds().items():
        assert check(blob) == "ran-ok", name


# ---- raw byte mutations ------------------------------------------------------------------------------

@FUZZ
@given(name=st.sampled_from(SEED_NAMES), flips=st.lists(st.integers(0, 2 ** 20), min_size=1, max_size=8))
def test_bitflips(name, flips):
    d = bytearray(seeds()[name])
    for f in flips:
        bit = f % (len(d) * 8)
        d[bit // 8] ^= 1 << (bit % 8)
    check(d)


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), at=st.integers(0, 2 ** 20), junk=st.binary(min_size=1, max_size=16))
def test_overwrite(name, at, junk):
    d = bytearray(seeds()[name])
    at %= len(d)
    d[at:at + len(junk)] = junk
    check(d)


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), cut=st.integers(0, 2 ** 20), junk=st.binary(max_size=64))
def test_truncate_and_extend(name, cut, junk):
    d = seeds()[name]
    check(d[:cut % (len(d) + 1)] + junk)


@FUZZ
@given(a=st.sampled_from(SEED_NAMES), b=st.sampled_from(SEED_NAMES), i=st.integers(0, 2 ** 20),
       j=st.integers(0, 2 ** 20))
def test_splice(a, b, i, j):
    x, y = seeds()[a], seeds()[b]
    check(x[:i % len(x)] + y[j % len(y):])


# ---- structure-aware mutations (CRCs recomputed) -------------------------------------------------

@FUZZ
@given(name=st.sampled_from(SEED_NAMES), data=st.data())
def test_insn_fields_with_fixed_crcs(name, data):
    """Set fields of instructions to any value of their width; fix the CRCs so that the
    change reaches validation and the interpreter."""
    d = bytearray(seeds()[name])
    off, length = table(bytes(d))["INSTS"]
    for _ in range(data.draw(st.integers(1, 3), label="n")):
        pc = data.draw(st.integers(0, length // INSN_BYTES - 1), label="pc")
        at = off + pc * INSN_BYTES
        words = [int.from_bytes(d[at + 8 * k:at + 8 * k + 8], "little") for k in range(4)]
        lay = [l for l in LAYOUTS[BY_CODE[words[0] & 63]] if l[0] != "opcode"]
        _, word, shift, bits = data.draw(st.sampled_from(lay), label="field")
        top = (1 << bits) - 1
        v = data.draw(st.one_of(st.sampled_from([0, 1, 2, 3, top, top - 1, 1 << (bits - 1)]),
                                st.integers(0, top)), label="value") & top
        words[word] = (words[word] & ~(top << shift)) | (v << shift)
        d[at:at + INSN_BYTES] = b"".join(w.to_bytes(8, "little") for w in words)
    refix_crcs(d)
    check(d)


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), word=st.integers(0, 2 ** 64 - 1), data=st.data())
def test_insn_raw_word_with_fixed_crcs(name, word, data):
    d = bytearray(seeds()[name])
    off, length = table(bytes(d))["INSTS"]
    pc = data.draw(st.integers(0, length // INSN_BYTES - 1), label="pc")
    k = data.draw(st.integers(0, 3), label="word")
    at = off + pc * INSN_BYTES + 8 * k
    d[at:at + 8] = word.to_bytes(8, "little")
    refix_crcs(d)
    check(d)


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), mut=st.sampled_from(SMART), rnd=st.randoms(use_true_random=False))
def test_smart_mutators(name, mut, rnd):
    """The CRC-fixing mutators of tests/fuzz_mutators.py (fields, opcodes, instruction stream,
    constants, JSON sections with the machine hash redone, section swaps), stacked twice."""
    pool = list(seeds().values()) if mut is m_section_swap else [seeds()[name]]
    blob, _ = mut(rnd, pool)
    if rnd.random() < 0.3:
        blob, _ = rnd.choice(SMART[:-1])(rnd, [blob])
    check(blob)


@FUZZ
@given(mut=st.sampled_from(RAW), rnd=st.randoms(use_true_random=False))
def test_raw_mutators(mut, rnd):
    blob, _ = mut(rnd, list(seeds().values()))
    check(blob)


# ---- the MNIST binary as a seed ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    return mnist_blob()


@pytest.mark.slow
def test_mnist_fuzz(mnist):
    """Smart and raw mutations of the real MNIST binary (a fixed-seed loop, not hypothesis:
    each run of the 63-instruction program takes ~35 ms)."""
    assert check(mnist) == "ran-ok"
    rnd = random.Random(1234)
    outcomes = {}
    for i in range(200):
        mut = rnd.choice(SMART if i % 3 else RAW)
        blob, desc = mut(rnd, [mnist])
        try:
            out = check(blob)
        except Exception as e:
            raise AssertionError(f"{desc}: {type(e).__name__}: {e}") from e
        outcomes[out] = outcomes.get(out, 0) + 1
    assert outcomes.get("ran-ok", 0) + sum(v for k, v in outcomes.items() if k.startswith("run:")) > 0


# ---- reproducers of what the fuzzers found (library bugs, fixed) --------------------------

def _alu() -> bytes:
    return seeds()["alu"]


def _with_section(tag: str, fn) -> bytes:
    """The ALU seed with the JSON section ``tag`` replaced by ``fn(parsed)`` (bytes or JSON),
    CRCs and (for MACHINE) the header's machine hash recomputed."""
    blob = _alu()
    new = fn(json.loads(_sections(blob)[tag]))
    return rebuild(blob, {tag: new if isinstance(new, bytes) else json_bytes(new)})


def _set_role_shape(role, shape):
    def fn(tensors):
        for t in tensors:
            if t["role"] == role:
                t["shape"] = shape
        return tensors
    return fn


def _insn_field(name: str, pc: int, field: str, value: int) -> bytes:
    p = from_bytes(seeds()[name])
    p.insns[pc].f[field] = value
    return to_bytes(p)


def _host_op(entry) -> bytes:
    p = from_bytes(_alu())
    p.host, p.meta["host_ops"] = b"x", [entry]
    return to_bytes(p)


def _huge_dram() -> bytes:
    blob = _alu()
    secs = _sections(blob)
    machine = dict(json.loads(secs["MACHINE"]), dram_mib=1 << 20)   # 1 TiB: the 40-bit DRAM field's limit
    meta = dict(json.loads(secs["META"]), dram_bytes=1 << 40)
    return rebuild(blob, {"MACHINE": json_bytes(machine), "META": json_bytes(meta)})


def _overcommit_always() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


REPRODUCERS = [
    # container.py load_json caught only UnicodeDecodeError/JSONDecodeError: RecursionError
    pytest.param(lambda: _with_section("META", lambda _: b"[" * 100_000), RecursionError,
                 id="deeply-nested-json"),
    # machine.py: math.isfinite(10**400) raised OverflowError
    pytest.param(lambda: _with_section("MACHINE", lambda m: {**m, "clock_mhz": 10 ** 400}), OverflowError,
                 id="machine-huge-int"),
    # program.py Tensor.nbytes wrapped in int64 (2^66 bytes -> 0): validation passed, _read failed
    pytest.param(lambda: _with_section("TENSORS", _set_role_shape("output", [2 ** 30, 2 ** 30, 16])),
                 ValueError, id="tensor-nbytes-int64-overflow"),
    # container.py accepted JSON true as a dimension (bool is an int)
    pytest.param(lambda: _with_section("TENSORS", _set_role_shape("output", [True, 37])), TypeError,
                 id="tensor-shape-bool"),
    # validate.check_insn allowed a conv tile with c=0; the interpreter's reshape failed
    pytest.param(lambda: _insn_field("mac", 3, "c", 0), ValueError, id="conv-zero-channels"),
    # validate.py did not check a layer's byte counts; report.py's int() failed after the run
    pytest.param(lambda: _with_section("META", lambda m: {**m, "layers": [
        {"name": "l", "op": "x", "pc_start": 0, "pc_end": 1, "min_dram_bytes": "abc"}]}), ValueError,
                 id="layer-min-dram-bytes-string"),
    # validate.py concatenated a host op's "inputs" string with a list
    pytest.param(lambda: _host_op({"inputs": "a"}), TypeError, id="host-op-inputs-string"),
    # a 1 TiB DRAM image passed validation on a machine declaring it; np.zeros raised MemoryError
    pytest.param(_huge_dram, MemoryError, id="dram-1tib",
                 marks=pytest.mark.skipif(_overcommit_always(), reason="vm.overcommit_memory=1: "
                                          "a 1 TiB np.zeros may succeed here")),
]


@pytest.mark.parametrize("make,exc", REPRODUCERS)
def test_reproducer(make, exc):
    """What the fuzzers found escaping with ``exc`` (fixed): now a DlacError, or a clean run."""
    out = check(make(), tolerate_known=False)
    assert out == "ran-ok" or out.startswith(("load:", "run:")), out
