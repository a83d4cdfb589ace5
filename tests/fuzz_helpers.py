"""The harness and the mutator mix of the binary fuzzers (tests/security/test_fuzz_binaries.py and
tools/bench/fuzz_binaries.py; the seeds are in tests/fuzz_seeds.py).  A plain module:
no tests.  NumPy only, except for
the HOST / REF graphs (TVM, imported when a binary has them).

The mutators are in tests/fuzz_mutators.py (raw, instruction, constants, JSON) and
tests/fuzz_graph_mutators.py (HOST / REF graphs), re-exported here.  Every mutator takes a
:class:`random.Random` and the seed blobs and returns
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
import json
import random
import signal

import numpy as np

from target_dlac.core.errors import DlacError
from target_dlac.binary.container import from_bytes
from target_dlac.sim.interpreter import run
from target_dlac.binary.program import Program
from tests.fuzz_mutators import (  # noqa: F401 - re-exported for the fuzzers and tests
    INTERESTING, SAME_LAYOUT, _field_value, _json_edge, _mhash, _mutate_json, _pick, _sections, json_bytes,
    m_bitflip, m_consts, m_extend, m_insn_field, m_insn_opcode, m_insn_random, m_insn_stream, m_json,
    m_overwrite, m_section_swap, m_splice, m_truncate, m_u32, rebuild)
from tests.fuzz_graph_mutators import _GRAPH_EDGES, _graph_edge, _mutate_graph_doc, _mutate_json_with, m_graph  # noqa: F401

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
