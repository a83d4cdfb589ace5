"""Hostile-but-valid binaries (issue 11): bounded machines, DRAM images and metadata.

1. machine parameters and the DRAM image are bounded;
2. metadata tables are bounded (one entry per instruction, and a hard cap), and the
   report is linear in the program however the layers overlap.

Every binary here is well formed (``to_bytes``), so only the limits of
``target_dlac/isa/limits.py`` (documented in ``docs/isa.md``, "Limits") stand between it and
hours of interpretation or gigabytes of memory.  Each refusal is one line naming the
section, and comes within a few seconds.  NumPy only.  (The race check:
test_hostile_races.py; instruction and run budgets: test_hostile_budgets.py.)
"""

from __future__ import annotations

import json

import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.isa import limits
from target_dlac.binary.container import from_bytes, to_bytes
from target_dlac.sim.interpreter import run
from target_dlac.isa.machine import Machine
from tests.isa_programs import SYNC, load
from tests.security.bounds_helpers import FAST_S, _program, _refused, _timed


# ---- 1. machine and DRAM -------------------------------------------------------------------------

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


# ---- 2. metadata and the report --------------------------------------------------------------------

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
