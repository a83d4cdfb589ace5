"""Hostile-but-valid binaries (issue 11): per-instruction and per-run budgets.

One instruction's work and temporary memory are budgeted from its fields before it runs
(a POOL on a large-buffer machine, a TACC decoding a huge all-zero block, a conv whose
windows take gigabytes), a run's total work too, and the run-time parts (weight blocks
hashed and decoded) are charged at the instruction.  Under an address-space limit of a few
GB, the memory attacks fail with the same clean error (a subprocess).

Every binary is well formed (``to_bytes``: CRCs right, the machine hash matching), so only
the limits of ``target_dlac/isa/limits.py`` (documented in ``docs/isa.md``, "Limits") stand
between it and gigabytes of memory.  Each refusal is one line naming the pc and the
instruction, and comes within a few seconds.  NumPy only.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.isa import limits
from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.sim.interpreter import run
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import pad4
from tests.cli_helpers import script_env
from tests.isa_programs import HALT, SYNC, Dram, conv, load, store
from tests.security.bounds_helpers import _pool, _program, _refused


# ---- 1. per-instruction and per-run budgets ---------------------------------------------------------

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


# ---- 2. memory, in a subprocess under an address-space limit ------------------------------------------

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
