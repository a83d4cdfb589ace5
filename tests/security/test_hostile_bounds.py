"""Hostile-but-valid binaries (issue 11): bounded work and memory from tiny inputs.

Every binary here is well formed (``to_bytes``: CRCs right, the machine hash matching), so
only the limits of ``target_dlac/isa/limits.py`` (documented in ``docs/isa.md``, "Limits") stand
between it and hours of interpretation or gigabytes of memory:

1. the race check is O(n log n): 50,000 loads without a barrier (one unit idle), or a load
   unit running 20,000 instructions ahead of the compute unit, are checked in seconds
   (the quadratic check took minutes), with the verdicts of a brute-force reference;
2. one instruction's work and temporary memory are budgeted from its fields before it runs
   (a POOL on a large-buffer machine, a TACC decoding a huge all-zero block, a conv whose
   windows take gigabytes), a run's total work too, and the run-time parts (weight blocks
   hashed and decoded) are charged at the instruction;
3. machine parameters and the DRAM image are bounded;
4. metadata tables are bounded (one entry per instruction, and a hard cap), and the
   report is linear in the program however the layers overlap;
5. under an address-space limit of a few GB, the memory attacks fail with the same clean
   error (a subprocess).

Each refusal is one line naming the pc and the instruction (or the section), and comes
within a few seconds.  NumPy only.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from target_dlac.core.errors import BinaryFormatError, ExecutionError
from target_dlac.isa import limits
from target_dlac.sim import timeline
from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import ALU_OPS, Insn
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import pad4
from target_dlac.binary.program import Program
from target_dlac.sim.timeline import Timeline
from tests.cli_helpers import script_env
from tests.isa_programs import HALT, SYNC, Dram, conv, fields, load, store

#: Wall-clock bound of each check (generous: 2 shared cores; the attacks took minutes).
FAST_S = 15.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _refused(data: bytes, *needles) -> BinaryFormatError:
    """``data`` is refused at load, quickly, in one line containing every needle."""
    def load():
        with pytest.raises(BinaryFormatError) as ei:
            from_bytes(data)
        return ei.value
    e, secs = _timed(load)
    msg = str(e)
    assert secs < FAST_S, (secs, msg)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return e


def _program(insns, machine=Machine(), dram_bytes=None, consts=bytes(4096), **meta) -> Program:
    """``insns`` then SYNC, HALT; ``consts`` at DRAM address 0; one 4-element output."""
    d = Dram()
    d.const(consts)
    d.tensor("y", "output", (4,))
    p = d.program(list(insns) + [SYNC, HALT], machine)
    if dram_bytes is not None:
        p.meta["dram_bytes"] = dram_bytes
    p.meta.update(meta)
    return p


def _alu(a, dst, n=1, **deps):
    return Insn("ALU", fields("ALU", a=a, b=a, op=ALU_OPS.index("relu"), dst=dst, n=n), **deps)


def _pool(**kw):
    return Insn("POOL", fields("POOL", **kw))


# ---- 1. the race check ----------------------------------------------------------------------------

def _loads(n: int) -> bytes:
    """``n`` LOADs, no barrier, no token: the compute and store units stay idle."""
    return to_bytes(_program(load("INP", (4 * i) % 65536, (4 * i) % 4096, 4) for i in range(n)))


def test_50k_loads_without_barriers_are_checked_in_seconds():
    p = from_bytes(_loads(50_000))          # 1.6 MB; the quadratic check took 6 min 16 s
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 50_002


def _run_ahead(n: int, race_at: int | None = None) -> Program:
    """``n`` LOADs into distinct INP words, then ``n`` ALUs on the compute unit reading an
    INP word no load writes: the loads end long after the ALUs start, so every load stays
    live for every ALU (a list scan is n^2).  ``race_at``: one more ALU reads the word of
    load ``race_at`` without a token."""
    insns = [load("INP", 4 * i, (4 * i) % 4096, 4) for i in range(n)]
    insns += [_alu(200_000, 4 * (i % 60_000)) for i in range(n)]
    if race_at is not None:
        insns.append(_alu(4 * race_at, 0))
    return _program(insns)


def test_load_unit_far_ahead_is_checked_in_seconds():
    p = from_bytes(to_bytes(_run_ahead(20_000)))
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 40_002


def test_loads_at_descending_addresses_are_checked_in_seconds():
    """One ALU and one STORE first, so the compute and store units look at the load unit's
    accesses; then 60,000 one-byte LOADs, each below the last: every one lands at the front
    of the coverage maps (a flat sorted list would move all of them each time)."""
    insns = [_alu(0, 0), store("ACC", 8, 0, 1)]
    insns += [load("INP", 262_143 - i, 4095 - i % 4096, 1) for i in range(60_000)]
    p = from_bytes(to_bytes(_program(insns)))
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert rep.instructions == 60_004


def test_late_race_is_still_found_and_named():
    p = _run_ahead(20_000, race_at=12_345)
    with pytest.raises(ExecutionError, match="race on INP") as ei:
        run(p, {})
    e = ei.value
    assert e.pc == 40_000 and "pc 12345 (load) writes it" in str(e), str(e)
    assert "\n" not in str(e)


def _brute_force_race(live, pc, unit, start, accesses):
    """The old quadratic check: the first access of this instruction that overlaps a live
    access of another unit (one of them writing) ending after ``start``, and the first such
    live access; ``(pc, earlier pc)`` or ``None``."""
    for mem, lo, hi, w in accesses:
        if hi <= lo:
            continue
        for e_mem, e_lo, e_hi, e_end, e_unit, e_w, e_pc in live:
            if e_mem == mem and e_unit != unit and (w or e_w) and lo < e_hi and e_lo < hi and start < e_end:
                return pc, e_pc
    return None


UNIT_BASE = {"load": 1 << 20, "compute": 2 << 20, "store": 3 << 20}
NEIGHBOURS = {"load": (None, "compute"), "compute": ("load", "store"), "store": ("compute", None)}


@pytest.mark.parametrize("seed", range(40))
def test_race_verdicts_match_brute_force(seed, monkeypatch):
    """Random timelines (tokens, barriers, costs, overlapping accesses), timed by a timeline
    without the race check: the coverage maps refuse exactly the instruction the brute-force
    check refuses, naming the same earlier pc, and accept everything else (odd seeds with
    one-segment blocks, so the maps' blocks split, span and empty all the time)."""
    if seed % 2:
        monkeypatch.setattr(timeline, "_BLOCK", 1)
    rng = random.Random(seed)
    checked, timing = Timeline(True), Timeline(False)
    pending = dict.fromkeys([("load", "compute"), ("compute", "load"), ("compute", "store"),
                             ("store", "compute")], 0)
    own, span = rng.choice([0.9, 0.99, 0.999]), rng.choice([64, 4096])
    live = []
    for pc in range(rng.randrange(50, 1500)):
        if rng.random() < 0.02 and not any(pending.values()):
            unit, deps, acc = "barrier", (0, 0, 0, 0), []
        else:
            unit = rng.choice(list(NEIGHBOURS))
            prev, nxt = NEIGHBOURS[unit]
            pp = int(prev is not None and pending[(prev, unit)] > 0 and rng.random() < 0.9)
            pn = int(nxt is not None and pending[(nxt, unit)] > 0 and rng.random() < 0.9)
            hp = int(prev is not None and rng.random() < 0.7)
            hn = int(nxt is not None and rng.random() < 0.7)
            for flag, key, d in ((pp, (prev, unit), -1), (pn, (nxt, unit), -1), (hp, (unit, prev), 1),
                                 (hn, (unit, nxt), 1)):
                if flag:
                    pending[key] += d
            deps, acc = (pp, pn, hp, hn), []
            for _ in range(rng.randrange(4)):
                lo = rng.randrange(span) + (UNIT_BASE[unit] if rng.random() < own else 0)
                acc.append((rng.choice(["DRAM", "INP", "ACC"]), lo, lo + rng.randrange(17),
                            rng.random() < 0.4))
        cost = rng.choice([0, 1, 5, 50])
        slot = timing.step(pc, unit, deps, cost, (), f"insn {pc}")
        want = None if unit == "barrier" else _brute_force_race(live, pc, unit, slot.start, acc)
        if want is not None:
            with pytest.raises(ExecutionError, match="race on") as ei:
                checked.step(pc, unit, deps, cost, acc, f"insn {pc}")
            assert ei.value.pc == pc and f"but pc {want[1]} (" in str(ei.value), (want, str(ei.value))
            return
        assert checked.step(pc, unit, deps, cost, acc, f"insn {pc}") == slot
        if unit == "barrier":
            live = []
        else:
            live += [(mem, lo, hi, slot.end, unit, w, pc) for mem, lo, hi, w in acc if hi > lo]


# ---- 2. per-instruction and per-run budgets ---------------------------------------------------------

BIG = Machine(inp_buf_kib=16384, wgt_buf_kib=16384, obuf_bytes_per_pe=32768)   # 16 MiB buffers


def test_pool_on_a_large_buffer_machine_is_refused_before_running():
    """One POOL with a 1024 x 1024 window over a 2048 x 2048 map (16 MiB INP): ~1.1e12 window
    elements, projected at 37 min of interpretation; now refused at load."""
    pool = _pool(src=0, dst=0, c=1, h=2048, w=2048, oh=1025, ow=1025, kh=1024, kw=1024, sh=1, sw=1)
    data = to_bytes(_program([pool], BIG, consts=b""))
    assert len(data) < 1000
    e = _refused(data, "pc 0 (POOL", "limits.MAX_INSN_WORK")
    assert e.section == "INSTS"


def _zero_tacc_block(nf: int) -> bytes:
    """A ternary block of ``nf`` filters with no non-zero weight (rows 0..nf-1)."""
    return bytes(4 * nf) + np.arange(nf, dtype="<u2").tobytes().ljust(pad4(2 * nf), b"\0")


def test_tacc_decoding_a_huge_empty_block_is_refused():
    """An all-zero ternary block is 6 bytes a filter, but it decodes to a dense [f, c*kh*kw]
    matrix: f = c = 4095 with a 15 x 15 kernel is 3.8e9 weights (30 GB in float64)."""
    ins = conv("TACC", 0, 0, 0, 4095, 4, 4, 4095, 15, 15, pads=(7, 7, 7, 7))
    data = to_bytes(_program([load("WGT", 0, 0, 64), SYNC, ins], consts=bytes(64)))
    assert len(data) < 1000
    _refused(data, "pc 2 (TACC", "limits.MAX_INSN_WORK")


def test_tacc_over_the_memory_budget_alone_is_refused():
    """Little work (one output pixel), but the decoded weights take 1.3 GB of temporaries."""
    ins = conv("TACC", 0, 0, 0, 4095, 2, 2, 4095, 2, 2)
    work, temp = limits.insn_budget(ins)
    assert work <= limits.MAX_INSN_WORK // 4 and temp > limits.MAX_INSN_TEMP_BYTES
    _refused(to_bytes(_program([ins])), "pc 0 (TACC", "limits.MAX_INSN_TEMP_BYTES")


def test_conv_windows_over_the_memory_budget_are_refused():
    """int8 4 x 256 x 256 tile, 15 x 15 kernel: the windows alone are 59 M elements (float32
    and float64 copies: 700 MB)."""
    ins = conv("MAC", 0, 0, 0, 4, 256, 256, 1, 15, 15, pads=(7, 7, 7, 7), dtype=2, wfmt=1)
    _refused(to_bytes(_program([ins])), "pc 0 (MAC", "limits.MAX_INSN_TEMP_BYTES")


def _max_pool():
    """An int8 max POOL of ~8.3e8 window elements: within one instruction's budget."""
    return _pool(src=0, dst=0, c=1, h=512, w=512, oh=449, ow=449, kh=64, kw=64, sh=1, sw=1, dtype=2)


def test_total_work_of_a_run_is_bounded():
    """200 POOLs, each within its budget; their sum is not: refused at the pc where the total
    crosses limits.MAX_RUN_WORK, before anything runs (it would take minutes)."""
    work, temp = limits.insn_budget(_max_pool())
    assert work <= limits.MAX_INSN_WORK
    cross = limits.MAX_RUN_WORK // (work + temp)     # pc of the POOL that crosses the budget
    data = to_bytes(_program([_max_pool() for _ in range(200)], consts=b""))
    assert len(data) < 8192
    _refused(data, f"pc {cross} (POOL", "limits.MAX_RUN_WORK")


def test_weight_block_hashing_is_charged_to_the_run(monkeypatch):
    """Ternary blocks are decoded once (cached by their bytes), but every use copies and
    hashes the block: each TACC is charged its block's bytes at run time, and the run stops
    at the instruction where the total crosses the run budget (here one that 30 uses of a
    24 KB block exhaust; the real budget takes 2.8 million)."""
    import target_dlac.sim.interpreter as interp

    nf = 4095
    blk = _zero_tacc_block(nf)
    tacc = conv("TACC", 0, 0, 0, 1, 1, 1, nf, 1, 1)
    p = from_bytes(to_bytes(_program([load("WGT", 0, 0, len(blk)), SYNC] + [tacc] * 40, consts=blk)))
    key = sum(limits.block_key_budget(len(blk)))
    budget = sum(sum(limits.insn_budget(i)) for i in p.insns) + 30 * key
    monkeypatch.setattr(interp, "MAX_RUN_WORK", budget)
    total, cross = 0, None
    for pc, ins in enumerate(p.insns):          # the pc where the charged total crosses it
        total += sum(limits.insn_budget(ins)) + (key if ins.op == "TACC" else 0)
        if total > budget:
            cross = pc
            break
    with pytest.raises(ExecutionError, match="limits.MAX_RUN_WORK") as ei:
        run(p, {})
    assert ei.value.pc == cross < len(p.insns) - 2, str(ei.value)   # static work alone: within


def test_weight_cache_is_bounded(monkeypatch):
    """The decode cache keeps its newest blocks within MAX_WEIGHT_CACHE_BYTES (here three
    blocks' worth): results are the same, the oldest blocks are decoded again."""
    import target_dlac.sim.interpreter as interp

    rng = np.random.default_rng(0)
    from target_dlac.isa.blocks import pack_ternary
    blocks = [pack_ternary(rng.choice([-1, 0, 1], size=(8, 4, 1, 1)).astype(np.int8)) for _ in range(6)]
    d = Dram()
    addrs = [d.const(b) for b in blocks]
    xt, yt = d.tensor("x", "input", (4, 2, 2)), d.tensor("y", "output", (6, 8, 4))
    insns = [load("INP", 0, xt.addr, 64)]
    for i, (a, b) in enumerate(zip(addrs, blocks)):
        insns += [load("WGT", 0, a, len(b)), SYNC, conv("TACC", 0, 0, 128 * i, 4, 2, 2, 8, 1, 1), SYNC]
    insns += [store("ACC", 0, yt.addr, 6 * 128), SYNC, HALT]
    p = d.program(insns)
    x = {"x": rng.integers(-3, 4, (4, 2, 2)).astype(np.float32)}
    want, _ = run(p, x)
    per_block = max(map(len, blocks)) + 8 * 4 * 4 + 8 * 8     # key, dense matrix, counts
    monkeypatch.setattr(interp, "MAX_WEIGHT_CACHE_BYTES", 3 * per_block)
    it = interp.Interpreter(p)
    for _ in range(2):
        got, _ = it.run(x)
        np.testing.assert_array_equal(got["y"], want["y"])
        assert len(it._wcache) == 3 and it._wcache_bytes <= 3 * per_block


def test_every_limit_is_documented():
    """docs/isa.md, "Limits", names every constant of target_dlac/isa/limits.py."""
    with open("docs/isa.md") as f:
        doc = f.read().split("\n## Limits\n", 1)[1]
    names = [n for n in vars(limits) if n.startswith(("MAX_", "SWIS_"))]
    assert len(names) >= 10
    for name in names:
        assert f"`{name}`" in doc or f"`{name}`," in doc or f", `{name}`" in doc, name


def test_real_programs_fit_the_budgets():
    """The fuzz seeds (TACC, MAC, POOL, ALU, int8 EPI programs) fit with room to spare; the
    numbers measured on ResNet-50 and the rest of the zoo are in docs/isa.md."""
    from tests.fuzz_seeds import small_blobs

    for name, blob in small_blobs().items():
        p = from_bytes(blob)
        for ins in p.insns:
            work, temp = limits.insn_budget(ins)
            assert work < limits.MAX_INSN_WORK // 1000 and temp < limits.MAX_INSN_TEMP_BYTES // 1000, name


# ---- 3. machine and DRAM -------------------------------------------------------------------------

@pytest.mark.parametrize("param, value, needle", [
    ("dram_mib", limits.MAX_DRAM_MIB + 1, "limits.MAX_DRAM_MIB"),
    ("dram_mib", 1 << 20, "limits.MAX_DRAM_MIB"),
    ("pe_rows", 1 << 12, "limits.MAX_PES"),
    ("lanes", limits.MAX_LANES + 1, "limits.MAX_LANES"),
    ("inp_buf_kib", 16385, "limits.MAX_BUFFER_BYTES"),
])
def test_machine_parameters_are_bounded(param, value, needle):
    from target_dlac.core.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        Machine(**{param: value})
    # in a binary: the MACHINE section is refused, before any allocation
    blob = to_bytes(_program([]))
    from tests.fuzz_helpers import _sections, json_bytes, rebuild
    machine = dict(json.loads(_sections(blob)["MACHINE"]), **{param: value})
    _refused(rebuild(blob, {"MACHINE": json_bytes(machine)}), "section MACHINE", needle)


def test_largest_machine_is_accepted():
    m = Machine(inp_buf_kib=16384, wgt_buf_kib=16384, pe_rows=256, pe_cols=256, obuf_bytes_per_pe=256,
                lanes=limits.MAX_LANES, dram_mib=limits.MAX_DRAM_MIB)
    assert m.dram_bytes == limits.MAX_DRAM_BYTES and m.pes == limits.MAX_PES


def test_dram_image_is_bounded():
    p = _program([], Machine(), dram_bytes=limits.MAX_DRAM_BYTES + 16)
    _refused(to_bytes(p), "section META", "DRAM size")
    with pytest.raises(ExecutionError, match="limits.MAX_DRAM_BYTES"):
        run(p, {})                      # an in-memory program: the interpreter refuses it too


def test_dram_at_the_limit_is_not_touched():
    """The largest DRAM image (1 GiB) of a program that touches a few bytes: allocated
    lazily (zero pages), so it runs, quickly."""
    p = from_bytes(to_bytes(_program([load("INP", 0, 0, 64)], dram_bytes=limits.MAX_DRAM_BYTES)))
    _, secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S


# ---- 4. metadata and the report --------------------------------------------------------------------

def _layers(n: int, lo: int, hi: int) -> list:
    return [{"name": f"l{i}", "op": "conv2d", "pc_start": lo, "pc_end": hi} for i in range(n)]


def test_more_layers_than_instructions_are_refused():
    """20,000 layers over 2,000 pcs made the report O(layers x pcs)."""
    p = _program([SYNC] * 1998)
    p.meta["layers"] = _layers(20_000, 0, 2000)
    _refused(to_bytes(p), "section META", "20000 layers entries for 2000 instructions",
             "limits.MAX_META_ENTRIES")


@pytest.mark.parametrize("table", ["host_ops", "fallbacks"])
def test_more_host_ops_or_fallbacks_than_instructions_are_refused(table):
    p = _program([])
    p.meta[table] = [{"func": "f", "inputs": [], "outputs": []}] * 3
    p.host = b"x"
    _refused(to_bytes(p), "section META", f"3 {table} entries for 2 instructions")


def test_hard_cap_on_layers():
    n = limits.MAX_META_ENTRIES + 10
    p = _program([SYNC] * (n - 2))
    p.meta["layers"] = _layers(limits.MAX_META_ENTRIES + 1, 0, 1)
    _refused(to_bytes(p), "section META", f"{limits.MAX_META_ENTRIES} in all")


def test_report_is_linear_in_overlapping_layers():
    """As many layers as instructions (allowed), every one covering every pc: the report
    sums them with prefix sums (the per-layer scan was 4e8 record visits here)."""
    n = 20_000
    p = _program([load("INP", 0, 0, 4), SYNC] * ((n - 2) // 2))
    p.meta["layers"] = _layers(n, 0, n)
    p = from_bytes(to_bytes(p))
    (_, rep), secs = _timed(lambda: run(p, {}))
    assert secs < FAST_S, secs
    assert len(rep.layers) == n and rep.layers[0].instructions == n
    assert rep.layers[0].cycles == rep.cycles["total"] and rep.layers[1].cycles == 0


# ---- 5. memory, in a subprocess under an address-space limit ------------------------------------------

AS_LIMIT = 3 << 30          # the interpreter's own imports take ~150 MB of address space

_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from target_dlac.core.errors import DlacError
from target_dlac.binary.container import from_bytes
from target_dlac.sim.interpreter import run
try:
    p = from_bytes(open(sys.argv[1], "rb").read())
    run(p, {{}})
except DlacError as e:
    print(type(e).__name__ + ": " + str(e))
    sys.exit(3)
except MemoryError:
    print("MemoryError")
    sys.exit(4)
print("ran")
"""


def _in_subprocess(tmp_path, data: bytes) -> tuple[int, str, float]:
    path = tmp_path / "hostile.dlac"
    path.write_bytes(data)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD.format(limit=AS_LIMIT), str(path)],
                       capture_output=True, text=True, env=script_env(), timeout=120)
    return r.returncode, (r.stdout + r.stderr).strip(), time.perf_counter() - t0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS semantics")
@pytest.mark.parametrize("case", ["empty-block-tacc", "temp-tacc", "windows-mac", "large-pool"])
def test_memory_attacks_fail_cleanly_under_an_address_space_limit(tmp_path, case):
    make = {
        "empty-block-tacc": lambda: _program([conv("TACC", 0, 0, 0, 4095, 4, 4, 4095, 15, 15,
                                                   pads=(7, 7, 7, 7))]),
        "temp-tacc": lambda: _program([conv("TACC", 0, 0, 0, 4095, 2, 2, 4095, 2, 2)]),
        "windows-mac": lambda: _program([conv("MAC", 0, 0, 0, 4, 256, 256, 1, 15, 15, pads=(7, 7, 7, 7),
                                              dtype=2, wfmt=1)]),
        "large-pool": lambda: _program([_pool(src=0, dst=0, c=1, h=2048, w=2048, oh=1025, ow=1025,
                                              kh=1024, kw=1024, sh=1, sw=1)], BIG),
    }[case]
    code, out, secs = _in_subprocess(tmp_path, to_bytes(make()))
    assert code == 3 and out.startswith("BinaryFormatError: ") and "limits.MAX_INSN" in out, out
    assert "\n" not in out and secs < 60, (secs, out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS semantics")
def test_largest_accepted_instructions_run_under_the_limit(tmp_path):
    """Instructions just inside the budgets, on the largest DRAM: they run (or fail cleanly)
    under the address-space limit, so the budgets bound the real memory use."""
    ins = [conv("MAC", 0, 0, 0, 4, 128, 128, 1, 15, 15, pads=(7, 7, 7, 7), dtype=2, wfmt=1), SYNC,
           _max_pool(), SYNC, conv("TACC", 0, 0, 0, 4095, 2, 2, 512, 2, 2)]
    for i in ins:
        assert limits.insn_budget_problem(i) is None
    blk = _zero_tacc_block(512)
    p = _program([load("WGT", 0, 0, len(blk)), SYNC] + ins, dram_bytes=limits.MAX_DRAM_BYTES, consts=blk)
    code, out, secs = _in_subprocess(tmp_path, to_bytes(p))
    assert code == 0 and out == "ran", out
