"""Energy model of the dLAC machine: the actions each instruction performs, and what each
action costs (``docs/isa.md`` "Energy model").

An instruction's **actions** (:func:`insn_actions`) are counts of arithmetic primitives
and of bytes moved, derived from its fields, its weight block and, for a conv instruction,
the PE steps it executes; a run's energy is ``sum(count * table entry)``
(:func:`energy_pj`) plus leakage, ``leakage_pj_per_mm2_cycle * area * cycles``.  The
interpreter and the cost model count the same actions through this one function, so their
energies agree whenever their cycles do.

What each instruction does, in actions (``b`` = bytes per activation of its type; the
arithmetic type is the instruction's: fp32, fp16 (fp16 products, fp32 sums, as the
interpreter computes) or int8 (int32 sums)):

* ``LOAD``: ``y*x`` bytes read from DRAM and written to its buffer; ``STORE``: read from
  its buffer, written to DRAM.
* conv (``MAC`` / ``TACC`` / ``SACC``): per executed PE step one multiply-add (``MAC``:
  ``mul`` + ``add``), one accumulate (``TACC``: ``add``; the sign is a select) or one
  shift pass of a 4-weight group (``SACC``: 4 ``shift`` + 4 ``add``); each filter group's
  pass reads its pixels' input windows from ``INP`` once, broadcast along each PE row
  (:func:`inp_reads`; with skipping only the non-zero values, the flags name the zeros);
  each pass streams the weight block from ``WGT`` once, broadcast down each PE column
  (skipped steps still read their weight: the column walks its list); the accumulator
  tile is written to ``ACC`` once
  (4 bytes per output) and read once first when the instruction accumulates.
  *Executed steps*: with ``act_skip = none`` every issued weight of every pixel (``MAC``:
  ``f*K*pixels``; ``TACC``: the non-zeros; ``SACC``: weight groups x shift passes); with
  skipping, the steps whose activation is non-zero (:func:`actskip.useful_steps`; a PE
  step with a zero operand is gated off, its flag known), and every issued step costs a
  ``zero_check`` (reading and OR-ing its zero flag).  Skipped steps cost no arithmetic, no
  ``INP`` read; they still cost their weight read, their flag check and the leakage of
  the cycles the array waits for the slowest unit.  The PE-local registers holding a
  window and the partial sums are not modelled.
* ``EPI``: per element: ``ACC`` read of the 4-byte sum; the scale (``mul``; int8: an int32
  multiply), the bias (``add``), the residual (``add``, its ``INP`` read), the rounding
  shift (int8: ``add``) and ``act_steps`` steps of the activation (each ``mul`` + ``add``;
  none for ``none``); the result written to ``ACC``; the parameter block read from ``WGT``
  once.
* ``POOL``: per output element and window position one ``add`` (max: a compare, costed as
  an add) and its ``INP`` read; avg: one ``mul`` per output; the output written to ``ACC``.
* ``ALU``: per element its operands read from ``INP``, ``act_steps`` ``add`` steps (a
  float activation: ``mul`` + ``add`` per step), the result written to ``ACC``.
* ``SYNC`` / ``HALT``: nothing.  ``HOST``: nothing on dLAC (host work is the host CPU's,
  reported as host wall time, never as dLAC energy).

The default table (:class:`EnergyTable`) is Horowitz's 45 nm figures (ISSCC 2014,
"Computing's energy problem", as quoted in ``anchors.md``) scaled to 14 nm by
:data:`PROCESS_SCALE`; every entry's source is in :data:`SOURCES`.  A machine TOML file may
override any entry in an ``[energy]`` table (:meth:`EnergyTable.from_toml`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from target_dlac.core.errors import ConfigError
from target_dlac.core.tomlfile import read_toml
from target_dlac.isa import cycles
from target_dlac.isa.encoding import ACTS, ALU_ACTS, ALU_OPS, BUFFERS, DTYPES, INT8, Insn, alu_bytes, \
    elem_bytes, epi_param_layout
from target_dlac.isa.formats import SWIS_GROUP

#: 45 nm -> 14 nm energy factor: switched capacitance with feature size (14 / 45) times
#: the supply voltage squared (0.9 V of Horowitz's figures -> 0.8 V): 0.246.  An
#: assumption of ours (a first-order CV^2 scaling), not a published 14 nm figure.
PROCESS_SCALE = (14 / 45) * (0.8 / 0.9) ** 2

#: Horowitz's SRAM figures (anchors.md): a 32-bit read costs 5 pJ from an 8 KB array and
#: 50 pJ from a 1 MB one; between and beyond them the cost per byte follows the power law
#: through both points: ``(size / 8 KiB) ** SRAM_EXPONENT`` (exponent log 10 / log 128).
SRAM_REF_BYTES = 8 * 1024
SRAM_EXPONENT = math.log(10) / math.log(128)

#: The counted actions: arithmetic primitives (counts) and bytes moved (per buffer, DRAM).
COMPUTE_ACTIONS = ("fp32_add", "fp32_mul", "fp16_mul", "int8_mul", "int32_add", "int32_mul", "shift",
                   "zero_check")
ONCHIP_ACTIONS = tuple(f"{b}_{rw}" for b in BUFFERS for rw in ("read", "write"))
DRAM_ACTIONS = ("DRAM_read", "DRAM_write")
ACTIONS = COMPUTE_ACTIONS + ONCHIP_ACTIONS + DRAM_ACTIONS
PARTS = ("compute", "onchip", "dram", "static")


def _h45(pj: float) -> float:
    return pj * PROCESS_SCALE


@dataclass(frozen=True)
class EnergyTable:
    """Energy of each action in pJ at the machine's process (14 nm); see :data:`SOURCES`."""
    fp32_add: float = _h45(0.9)
    fp32_mul: float = _h45(3.7)
    fp16_mul: float = _h45(1.1)
    int8_mul: float = _h45(0.2)
    int32_add: float = _h45(0.1)
    int32_mul: float = _h45(3.1)
    shift: float = _h45(0.03)
    zero_check: float = _h45(0.03)
    #: SRAM read / write energy per byte of an 8 KiB array; larger arrays by the power law
    sram_read_pj_per_byte_8kib: float = _h45(5.0 / 4)
    sram_write_pj_per_byte_8kib: float = _h45(5.0 / 4)
    sram_size_exponent: float = SRAM_EXPONENT
    dram_read_pj_per_byte: float = 1300.0 / 8
    dram_write_pj_per_byte: float = 1300.0 / 8
    leakage_pj_per_mm2_cycle: float = 20.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or v > 1e9:
                raise ConfigError(f"energy table entry {f.name}={str(v)[:40]}: must be a number in "
                                  "[0, 1e9] (pJ)")

    def sram_pj_per_byte(self, nbytes: int, write: bool = False) -> float:
        """Energy per byte read (written) from an SRAM array of ``nbytes``."""
        ref = self.sram_write_pj_per_byte_8kib if write else self.sram_read_pj_per_byte_8kib
        return ref * (max(nbytes, 1) / SRAM_REF_BYTES) ** self.sram_size_exponent

    def prices(self, m) -> dict:
        """pJ per unit of every action in :data:`ACTIONS` on machine ``m`` (buffer sizes:
        ``INP`` and ``WGT`` whole, ``ACC`` one PE's output buffer, the array a PE reads)."""
        out = {a: getattr(self, a) for a in COMPUTE_ACTIONS}
        sizes = {"INP": m.inp_bytes, "WGT": m.wgt_bytes, "ACC": m.obuf_bytes_per_pe}
        for b in BUFFERS:
            out[f"{b}_read"] = self.sram_pj_per_byte(sizes[b])
            out[f"{b}_write"] = self.sram_pj_per_byte(sizes[b], write=True)
        out["DRAM_read"] = self.dram_read_pj_per_byte
        out["DRAM_write"] = self.dram_write_pj_per_byte
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "energy table") -> "EnergyTable":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a table of energy entries (pJ)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k)[:40] for k in set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown energy entr{'y' if len(unknown) == 1 else 'ies'} "
                              f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return replace(cls(), **d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def from_toml(cls, path: str) -> "EnergyTable":
        """The ``[energy]`` table of a machine TOML file (the defaults where it has none)."""
        data = read_toml(path, "machine file")
        return cls.from_dict(data.get("energy", {}), where=f"[energy] of {path!r}")


DEFAULT_TABLE = EnergyTable()

_H = "Horowitz, ISSCC 2014 (45 nm, 0.9 V), x PROCESS_SCALE (0.246: 14/45 x (0.8/0.9)^2, our assumption)"
#: Where each default comes from.
SOURCES = {
    "fp32_add": f"0.9 pJ, {_H}",
    "fp32_mul": f"3.7 pJ, {_H}",
    "fp16_mul": f"1.1 pJ, {_H}",
    "int8_mul": f"0.2 pJ, {_H}",
    "int32_add": f"0.1 pJ, {_H}",
    "int32_mul": f"3.1 pJ, {_H}",
    "shift": f"assumed = an 8-bit add (0.03 pJ, {_H}); Horowitz gives no shifter figure",
    "zero_check": f"assumed = an 8-bit add (0.03 pJ, {_H}): read and OR one step's zero flags",
    "sram_read_pj_per_byte_8kib": f"5 pJ per 32-bit read of an 8 KB SRAM / 4 bytes, {_H}",
    "sram_write_pj_per_byte_8kib": "assumed equal to the read energy (Horowitz gives reads)",
    "sram_size_exponent": "log(50/5) / log(1 MB / 8 KB) = 0.475: the power law through Horowitz's "
                          "8 KB (5 pJ) and 1 MB (50 pJ) 32-bit reads",
    "dram_read_pj_per_byte": "1.3 nJ per 64-bit access / 8 bytes (Horowitz's lower end of 1.3-2.6 nJ); "
                             "off-chip, not process-scaled",
    "dram_write_pj_per_byte": "assumed equal to the read energy",
    "leakage_pj_per_mm2_cycle": "assumed: 10 mW/mm^2 of leakage at 500 MHz (no published dLAC or "
                                "14 nm figure in our sources); scales with the modelled area",
}


# ---- counting ---------------------------------------------------------------------------
def _dtype(ins: Insn) -> str:
    d = ins.f.get("dtype", 0)
    return DTYPES[d] if d < len(DTYPES) else "float32"


def _add(dt: str) -> str:
    return "int32_add" if dt == "int8" else "fp32_add"


def _mul(dt: str) -> str:
    return {"int8": "int8_mul", "float16": "fp16_mul"}.get(dt, "fp32_mul")


def issued_steps(ins: Insn, m, counts=None) -> int:
    """PE steps a conv instruction issues with every activation read: ``MAC`` every weight
    of every pixel, ``TACC`` the non-zeros, ``SACC`` weight groups x shift passes."""
    f = ins.f
    px = f["oh"] * f["ow"]
    if ins.op == "MAC":
        return f["f"] * cycles.weights_per_filter(ins) * px
    return int(cycles.filter_steps(ins, m, counts).sum()) * px


def window_values(ins: Insn) -> int:
    """The activations a conv instruction's pixels read, counted once per pixel and kernel
    position: ``c * kh * kw * pixels`` (depthwise: each channel its own filter, the same)."""
    f = ins.f
    return f["c"] * f["kh"] * f["kw"] * f["oh"] * f["ow"]


def inp_reads(ins: Insn, m, window: int) -> int:
    """Activations a conv instruction reads from INP: each filter group's pass reads each of
    its pixels' windows once and broadcasts it along the PE row (``ceil(f / cols)`` groups;
    depthwise: every column its own channel, so once in all); ``window``: the window values
    read (:func:`window_values`, or the non-zero ones with skipping)."""
    if ins.f["depthwise"]:
        return window
    return cycles.ceil_div(ins.f["f"], cycles.grid(ins, m)[1]) * window


def conv_actions(ins: Insn, m, counts, block_bytes: int, executed: int | None = None,
                 window: int | None = None) -> dict:
    """Actions of a conv instruction (module docstring): ``executed``, the PE steps it
    executes (``None``: every issued step: ``act_skip = none``, or an input without zeros);
    ``block_bytes``, its weight block's size; ``window``, the non-zero values of its
    pixels' windows when zero activations are skipped (``None``: :func:`window_values`).
    With ``m.act_skip`` on, every issued step checks its zero flags."""
    f = ins.f
    dt = _dtype(ins)
    issued = issued_steps(ins, m, counts)
    steps = issued if executed is None else executed
    out = {}
    if ins.op == "MAC":
        out[_mul(dt)] = steps
        out[_add(dt)] = steps
    elif ins.op == "TACC":
        out[_add(dt)] = steps
    else:
        out["shift"] = SWIS_GROUP * steps
        out[_add(dt)] = SWIS_GROUP * steps
    if m.act_skip != "none":
        out["zero_check"] = issued
    out["INP_read"] = inp_reads(ins, m, window_values(ins) if window is None else window) * \
        elem_bytes(f["dtype"])
    out["WGT_read"] = block_bytes * cycles.passes(ins, m)
    acc = 4 * f["f"] * f["oh"] * f["ow"]
    out["ACC_write"] = acc
    if f["accumulate"]:
        out["ACC_read"] = acc
    return out


def _act_name(table, code: int) -> str | None:
    return table[code] if code < len(table) else None


def insn_actions(ins: Insn, m, counts=None, block_bytes: int = 0, executed: int | None = None,
                 window: int | None = None) -> dict:
    """``{action: count}`` of one instruction on machine ``m`` (module docstring): conv
    instructions need their block's ``counts`` (TACC / SACC) and size, and the ``executed``
    steps and non-zero ``window`` values when zero activations are skipped."""
    op, f = ins.op, ins.f
    if op in ("LOAD", "STORE"):
        n = f["y"] * f["x"]
        buf = BUFFERS[f["buf"]] if f["buf"] < len(BUFFERS) else "INP"
        if op == "LOAD":
            return {"DRAM_read": n, f"{buf}_write": n}
        return {f"{buf}_read": n, "DRAM_write": n}
    if op in ("MAC", "TACC", "SACC"):
        return conv_actions(ins, m, counts, block_bytes, executed, window)
    dt = _dtype(ins)
    out: dict = {}
    if op == "EPI":
        n = f["f"] * f["p"]
        act = _act_name(ACTS, f.get("act", 0))
        integer = f["dtype"] == INT8
        if f["has_scale"]:
            out["int32_mul" if integer else "fp32_mul"] = n
        adds = 1 + bool(f["has_res"]) + integer
        steps = 0 if act in (None, "none") else cycles.act_steps(act)
        if steps and not integer:
            out["fp32_mul"] = out.get("fp32_mul", 0) + steps * n
        out[_add(dt)] = (adds + steps) * n
        out["ACC_read"] = 4 * n
        out["ACC_write"] = elem_bytes(f["dtype"]) * n
        if f["has_res"]:
            out["INP_read"] = elem_bytes(f["dtype"]) * n
        out["WGT_read"] = epi_param_layout(f["f"], f["has_scale"], f["dtype"], f.get("act", 0))[2]
        return out
    if op == "POOL":
        outs = f["c"] * f["oh"] * f["ow"]
        window = f["kh"] * f["kw"]
        out[_add(dt)] = outs * window
        if f["mode"] == 1:
            out["int32_mul" if dt == "int8" else "fp32_mul"] = outs
        out["INP_read"] = outs * window * elem_bytes(f["dtype"])
        out["ACC_write"] = outs * elem_bytes(f["dtype"])
        return out
    if op == "ALU":
        n = f["n"]
        name = _act_name(ALU_OPS, f.get("op", 0))
        inb, outb = alu_bytes(name, f["dtype"])
        operands = 2 if name in ("add", "add_relu") else 1
        steps = cycles.act_steps(name)
        out[_add(dt)] = steps * n
        if name in ALU_ACTS:
            out["fp32_mul"] = steps * n
        out["INP_read"] = operands * inb * n
        out["ACC_write"] = outb * n
        return out
    return out


def add_into(total: dict, actions: dict) -> dict:
    """``total += actions`` (in place; returns ``total``)."""
    for k, v in actions.items():
        total[k] = total.get(k, 0) + v
    return total


def energy_pj(actions: dict, m, cycles_: int, table: EnergyTable | None = None,
              area: float | None = None) -> dict:
    """``{total, compute, onchip, dram, static}`` in pJ of ``actions`` over ``cycles_`` on
    machine ``m`` (``area``: its modelled mm^2, :func:`target_dlac.isa.area.area_mm2` by
    default)."""
    table = table or DEFAULT_TABLE
    prices = table.prices(m)
    unknown = set(actions) - set(prices)
    if unknown:
        raise ValueError(f"unknown energy action(s) {sorted(unknown)}")
    if area is None:
        from target_dlac.isa.area import area_mm2
        area = area_mm2(m)
    parts = {
        "compute": sum(actions.get(a, 0) * prices[a] for a in COMPUTE_ACTIONS),
        "onchip": sum(actions.get(a, 0) * prices[a] for a in ONCHIP_ACTIONS),
        "dram": sum(actions.get(a, 0) * prices[a] for a in DRAM_ACTIONS),
        "static": table.leakage_pj_per_mm2_cycle * area * cycles_,
    }
    return {"total": sum(parts.values()), **parts}


def efficiency(energy: dict, dense_macs: int, seconds: float) -> dict:
    """``pj_per_mac`` (per dense-equivalent MAC), ``tops_per_w`` (2 ops per dense MAC per
    pJ: 1 op/pJ = 1 TOPS/W) and ``edp_js`` (energy in J x time in s) of a run or a layer
    (``None`` where undefined)."""
    e = energy["total"]
    return {"pj_per_mac": e / dense_macs if dense_macs else None,
            "tops_per_w": 2 * dense_macs / e if e > 0 and dense_macs else None,
            "edp_js": e * 1e-12 * seconds}


def program_table(program) -> EnergyTable:
    """The energy table a binary was compiled with (its META ``energy``, written when the
    ``--machine`` file had an ``[energy]`` table), else :data:`DEFAULT_TABLE`."""
    got = (program.meta or {}).get("energy")
    if got is None:
        return DEFAULT_TABLE
    return EnergyTable.from_dict(got, where="the binary's META energy table")


def machine_file_table(path: str | None) -> EnergyTable | None:
    """The ``[energy]`` table of a machine TOML file, ``None`` without a file or a table."""
    if not path:
        return None
    data = read_toml(path, "machine file")
    if "energy" not in data:
        return None
    return EnergyTable.from_dict(data["energy"], where=f"[energy] of {path!r}")
