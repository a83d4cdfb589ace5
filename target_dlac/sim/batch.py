"""Batched runs: N inputs through one binary, with per-input cycles and energy.

:func:`run_batch` splits a request of N inputs into chunks of at most :func:`batch_cap`
inputs (the memory bound: each input of a chunk holds its own DRAM image and on-chip
buffers, plus the temporaries of the largest instruction), runs each chunk through
:meth:`Interpreter.run_batch` (one walk of the instruction stream, every instruction
vectorized over the chunk), and joins the results.  Outputs equal N single runs bit for
bit (``tests/sim/test_batch.py``); per-input cycles and energy equal the single runs'.

:class:`BatchReport` carries the per-input figures as arrays and the full
:class:`target_dlac.sim.report.RunReport` of the first input (per-layer tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from target_dlac.core.errors import ConfigError
from target_dlac.isa import limits
from target_dlac.isa.limits import DEFAULT_BATCH, insn_budget

#: The per-input cycle figures of a :class:`BatchReport` (a run report's ``cycles`` keys).
CYCLE_KEYS = ("total", "compute", "load_stall", "store_stall")
#: Its per-input energy figures, in pJ (a run report's ``energy_pj`` keys).
ENERGY_KEYS = ("total", "compute", "onchip", "dram", "static")


def per_input_bytes(program) -> int:
    """What one input of a batch holds: the DRAM image, the three on-chip buffers and the
    temporaries of the program's largest instruction (:func:`limits.insn_budget`)."""
    m = program.machine
    temp = max((insn_budget(ins)[1] for ins in program.insns), default=0)
    return program.dram_bytes + m.inp_bytes + m.wgt_bytes + m.acc_bytes + temp


def batch_cap(program, requested: int | None = None) -> int:
    """The inputs one chunk runs: ``requested`` (default ``limits.DEFAULT_BATCH``), at most
    what ``limits.MAX_BATCH_BYTES`` holds (:func:`per_input_bytes`), at least 1."""
    if requested is not None and (not isinstance(requested, (int, np.integer)) or requested < 1):
        raise ConfigError(f"batch size {requested!r}: expected a positive integer")
    want = DEFAULT_BATCH if requested is None else int(requested)
    return max(1, min(want, limits.MAX_BATCH_BYTES // max(1, per_input_bytes(program))))


@dataclass
class BatchReport:
    """Per-input results of a batched run: ``cycles[key]`` and ``energy_pj[key]`` are int64 /
    float64 arrays of length ``n``; ``first`` is the first input's full run report;
    ``host_seconds``: wall time of all host ops; ``seconds``: the interpreter's wall time."""
    n: int
    cycles: dict
    energy_pj: dict
    first: object = None
    host_seconds: float = 0.0
    seconds: float = 0.0
    chunks: list = field(default_factory=list)

    def cycle_stats(self) -> dict:
        """``{mean, min, max, std}`` of the per-input total cycles."""
        c = np.asarray(self.cycles["total"], np.float64)
        if not len(c):
            return {"mean": None, "min": None, "max": None, "std": None}
        return {"mean": float(c.mean()), "min": int(c.min()), "max": int(c.max()), "std": float(c.std())}

    @classmethod
    def join(cls, parts: list) -> "BatchReport":
        """One report of consecutive chunks' reports (the first chunk's ``first``)."""
        if not parts:
            raise ValueError("no batch reports to join")
        return cls(sum(p.n for p in parts),
                   {k: np.concatenate([p.cycles[k] for p in parts]) for k in CYCLE_KEYS},
                   {k: np.concatenate([p.energy_pj[k] for p in parts]) for k in ENERGY_KEYS},
                   parts[0].first, sum(p.host_seconds for p in parts), sum(p.seconds for p in parts),
                   [p.n for p in parts])


def stack_inputs(program, inputs: dict, batched: bool = True) -> tuple[dict, int]:
    """Check a run's inputs: every input named, each of the shape the binary was compiled for
    (``batched``: of shape ``(N,) + the tensor's shape``, the same N for all).  Returns the
    arrays as the tensors' dtypes, with a leading batch axis (of 1 when not ``batched``), and N."""
    want = {t.name: t for t in program.inputs}
    missing = sorted(set(want) - set(inputs))
    extra = sorted(set(inputs) - set(want))
    if missing or extra:
        raise ConfigError(f"inputs: missing {missing or 'none'}, unexpected {extra or 'none'}; "
                          f"the program takes {sorted(want)}")
    out, n = {}, None
    for name, t in want.items():
        a = np.asarray(inputs[name])
        if not batched:
            if tuple(a.shape) != tuple(t.shape):
                raise ConfigError(f"input {name!r} has shape {tuple(a.shape)}; the program was "
                                  f"compiled for {tuple(t.shape)}")
            a = a[None]
        elif a.ndim != len(t.shape) + 1 or tuple(a.shape[1:]) != tuple(t.shape):
            raise ConfigError(f"batched input {name!r} has shape {tuple(a.shape)}; the program was "
                              f"compiled for {tuple(t.shape)}, so a batch is (N, "
                              f"{', '.join(map(str, t.shape))})")
        if n is not None and len(a) != n:
            raise ConfigError(f"batched inputs disagree on N: {name!r} has {len(a)}, another {n}")
        n = len(a)
        out[name] = np.ascontiguousarray(a, dtype=t.dtype)
    return out, (n or 0)


def run_batch(interp, inputs: dict, *, batch: int | None = None, host_runner=None,
              progress=None) -> tuple[dict, BatchReport]:
    """Run a batch (name -> ``(N,) + shape`` arrays) through ``interp`` (an
    :class:`target_dlac.sim.interpreter.Interpreter`) in chunks of :func:`batch_cap`
    inputs; returns (name -> ``(N,) + shape`` outputs, :class:`BatchReport`).
    ``progress(done, n)`` is called after each chunk."""
    arrays, n = stack_inputs(interp.p, inputs)
    if n == 0:
        raise ConfigError("an empty batch: give at least one input")
    step = batch_cap(interp.p, batch)
    outs, parts = [], []
    for lo in range(0, n, step):
        got, rep = interp.run_batch({k: v[lo:lo + step] for k, v in arrays.items()}, host_runner)
        outs.append(got)
        parts.append(rep)
        if progress:
            progress(min(n, lo + step), n)
    joined = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return joined, BatchReport.join(parts)
