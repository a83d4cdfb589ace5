"""Cycle cost of each dLAC instruction: the machine model's arithmetic, in one place.

Documented per instruction in ``docs/isa.md``; used by the interpreter (with the
non-zero counts it reads from the weight buffer) and by the analytic cost model.

* ``LOAD`` / ``STORE``: ``dma_latency + ceil(y * x / dram_bytes_per_cycle)``.
* ``TACC``: ``compute_setup + passes * sum_g max_{f in g} nnz_f`` where the filters are
  taken in PE order in groups ``g`` of ``cols`` (filters running together wait for
  the one with most non-zeros) and ``passes = ceil(oh * ow / (rows * lanes))``, with
  ``(rows, cols) = (pe_rows >> pxshift, pe_cols << pxshift)`` the PE-array mapping of
  the instruction (``Machine.pe_grid``; ``pxshift = 0``: 16 pixel rows x 32 filters).
* ``MAC``: as TACC with every filter holding ``c * kh * kw`` weights (``kh * kw``
  for depthwise): nothing is skipped.
* ``SACC`` (SWIS, bit-serial): ``compute_setup + passes * sum_g G * ceil(S_g / k)`` with
  ``G = kh * kw * ceil(c / 4)`` weight groups per filter (4 weights per PE per pass),
  ``S_g`` the largest shift count in PE group ``g`` and ``k = swis_shifts_per_pass``
  (1 for a single-shift PE, 2 for a double-shift PE).
* ``EPI``: ``compute_setup + ceil(f * p / (pes * lanes)) * act_steps(act)``.
* ``POOL``: ``compute_setup + ceil(c * oh * ow / (pes * lanes)) * kh * kw``.
* ``ALU``: ``compute_setup + ceil(n / (pes * lanes)) * act_steps(op)`` (1 for the
  arithmetic and conversion ops).

With the machine's ``act_skip`` on, a conv instruction's cycles also depend on its
activations: :func:`steps_cycles` of the per-pass step counts of
:func:`target_dlac.isa.actskip.step_matrix` (``docs/isa.md`` "Activation zero-skip"), which
are the formulas above when no activation is zero.

``act_steps`` (:data:`ACT_STEPS`) is an assumption of this model, not a published figure:
each PE's epilogue has one multiply-add, a compare/select and a small table, so
relu/clip/leaky/PReLU/the int8 table take one step per element; hardsigmoid one (add,
clamp, multiply by 1/6), hardswish two (one more multiply); sigmoid, tanh, SiLU and GELU
are a piecewise-polynomial unit (segment select, then 3 pipelined multiply-add steps:
4 steps per element).
* ``SYNC``: 1 cycle after every queue has drained; ``HALT``: 0; ``HOST``: 0 on the
  accelerator (host ops are reported separately, not in dLAC cycles).
"""

from __future__ import annotations

import numpy as np

from target_dlac.isa.encoding import ACTS, ALU_OPS, DTYPES, Insn
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import swis_groups


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: Steps per element of each EPI activation / ALU op (see the module docstring); anything
#: not listed takes 1.
ACT_STEPS = {"hardswish": 2, "sigmoid": 4, "tanh": 4, "silu": 4, "gelu": 4, "gelu_tanh": 4}


def act_steps(name: str | None) -> int:
    return ACT_STEPS.get(name, 1)


def lanes(ins: Insn, m: Machine) -> int:
    """MAC lanes per PE for the instruction's activation type (fp16: twice fp32's)."""
    dtype = DTYPES[ins.f["dtype"]] if ins.f["dtype"] < len(DTYPES) else "float32"
    return m.lanes_for(dtype)


def grid(ins: Insn, m: Machine) -> tuple[int, int]:
    """(pixel rows, filter columns) of a conv instruction's PE-array mapping."""
    return m.pe_grid(ins.f.get("pxshift", 0))


def passes(ins: Insn, m: Machine) -> int:
    return ceil_div(ins.f["oh"] * ins.f["ow"], grid(ins, m)[0] * lanes(ins, m))


def filter_steps(ins: Insn, m: Machine, counts: np.ndarray) -> np.ndarray:
    """Steps each filter takes per pixel pass, in PE order: its non-zero count (TACC), or
    its weight groups times its shift passes (SACC).  Filters running together wait for
    the one with the most steps."""
    counts = np.asarray(counts, np.int64)
    if ins.op == "TACC":
        return counts
    f = ins.f
    return swis_groups(f["c"], f["kh"], f["kw"]) * shift_passes(m, counts)


def shift_passes(m: Machine, counts: np.ndarray) -> np.ndarray:
    """SACC: the passes each filter takes per weight group, ``ceil(S_f / swis_shifts_per_pass)``
    of its shift counts ``S_f``."""
    return -(-np.asarray(counts, np.int64) // m.swis_shifts_per_pass)


def group_max_sum(counts: np.ndarray, pe_cols: int) -> int:
    """Sum over consecutive groups of ``pe_cols`` filters of the group's largest count."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return 0
    pad = (-len(counts)) % pe_cols
    if pad:
        counts = np.concatenate([counts, np.zeros(pad, np.int64)])
    return int(counts.reshape(-1, pe_cols).max(axis=1).sum())


def weights_per_filter(ins: Insn) -> int:
    f = ins.f
    return (1 if f["depthwise"] else f["c"]) * f["kh"] * f["kw"]


def dma_cycles(nbytes: int, m: Machine) -> int:
    return m.dma_latency + ceil_div(nbytes, m.dram_bytes_per_cycle)


def sparse_cycles(ins: Insn, m: Machine, counts: np.ndarray) -> int:
    """TACC / SACC: ``compute_setup + passes * sum over PE groups of the largest step count``."""
    return m.compute_setup + passes(ins, m) * group_max_sum(filter_steps(ins, m, counts), grid(ins, m)[1])


def steps_cycles(ins: Insn, m: Machine, steps: np.ndarray) -> int:
    """A conv instruction's cycles from ``steps[f, i]``, the steps filter ``f`` takes in pass
    ``i`` (:func:`actskip.step_matrix`): ``compute_setup + sum_i sum_g max_{f in g}
    steps[f, i]`` over consecutive groups ``g`` of ``pe_cols << pxshift`` filters.  With the
    same count in every pass this is :func:`sparse_cycles` / :func:`dense_cycles`.  A batch
    ``steps[n, f, i]`` gives the ``[n]`` cycles of each input (int64)."""
    steps = np.asarray(steps, np.int64)
    ncols = grid(ins, m)[1]
    lead = steps.shape[:-2]
    nf, npass = steps.shape[-2:]
    if not nf:
        return np.full(lead, m.compute_setup, np.int64) if lead else m.compute_setup
    pad = (-nf) % ncols
    if pad:
        steps = np.concatenate([steps, np.zeros(lead + (pad, npass), np.int64)], axis=-2)
    got = steps.reshape(lead + (-1, ncols, npass)).max(axis=-2).sum(axis=(-2, -1))
    return m.compute_setup + (got if lead else int(got))


def dense_cycles(ins: Insn, m: Machine) -> int:
    """Cycles of a conv instruction if no weight were skipped (MAC's cost)."""
    return m.compute_setup + passes(ins, m) * ceil_div(ins.f["f"], grid(ins, m)[1]) * weights_per_filter(ins)


def elementwise_cycles(n: int, m: Machine, per_element: int = 1) -> int:
    return m.compute_setup + ceil_div(n, m.macs_per_cycle) * per_element


def pe_work(ins: Insn, m: Machine, counts: np.ndarray | None = None) -> float:
    """Useful PE-cycles of a conv instruction (the compute term of a layer's lower bound):
    fp32-lane MACs issued (MAC: every weight; TACC: the non-zeros; SACC: the PE passes,
    weight groups x shift passes) over the lane ratio (fp16 runs twice as many)."""
    px = ins.f["oh"] * ins.f["ow"]
    ratio = lanes(ins, m) / m.lanes
    if ins.op == "MAC":
        return ins.f["f"] * weights_per_filter(ins) * px / ratio
    return int(filter_steps(ins, m, counts).sum()) * px / ratio


def lower_bound(work: float, read_bytes: int, write_bytes: int, m: Machine) -> int:
    """A layer's lower bound in cycles: ``max(work / MAC lanes, bytes read / bandwidth,
    bytes written / bandwidth)``; the load and store units read and write DRAM over
    separate channels of ``dram_bytes_per_cycle`` each."""
    return max(int(np.ceil(work / m.macs_per_cycle)), ceil_div(read_bytes, m.dram_bytes_per_cycle),
               ceil_div(write_bytes, m.dram_bytes_per_cycle))


def cost(ins: Insn, m: Machine, counts: np.ndarray | None = None) -> int:
    """Cycles of ``ins`` on machine ``m``; TACC needs its filters' non-zero counts and
    SACC their shift counts (both read from the weight block)."""
    f, op = ins.f, ins.op
    if op in ("TACC", "SACC"):
        return sparse_cycles(ins, m, counts)
    if op in ("LOAD", "STORE"):
        return dma_cycles(f["y"] * f["x"], m)
    if op == "MAC":
        return dense_cycles(ins, m)
    if op == "EPI":
        act = f.get("act", 0)
        return elementwise_cycles(f["f"] * f["p"], m, act_steps(ACTS[act] if act < len(ACTS) else None))
    if op == "POOL":
        return elementwise_cycles(f["c"] * f["oh"] * f["ow"], m, f["kh"] * f["kw"])
    if op == "ALU":
        return elementwise_cycles(f["n"], m, act_steps(ALU_OPS[f.get("op", 0)] if f.get("op", 0) < len(ALU_OPS) else None))
    if op == "SYNC":
        return 1
    return 0
