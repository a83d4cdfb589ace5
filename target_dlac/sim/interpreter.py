"""The dLAC ISA interpreter: executes a program one instruction at a time on simulated
DRAM and on-chip buffers (INP, WGT, ACC), each instruction vectorized with NumPy,
and places every instruction on the load/compute/store timeline.  Activations are
float32, float16 (stored; float32 arithmetic inside an op) or int8 (int32 accumulators,
integer requantization), per instruction (field ``dtype``).

Before anything runs, every instruction passes the static checks of
:func:`target_dlac.binary.validate.first_insn_problem` (codes defined, tile geometry, ranges
inside their memories); at run time every access is bounds-checked again, with what
only the data tells (a weight block's length), and an error names the pc, the
instruction and the buffer.  The ISA has no branches, so a run executes each
instruction at most once and always terminates; the static checks include the budgets of
:mod:`target_dlac.isa.limits` (work and temporary memory per instruction, work per run), so
it also terminates soon, in bounded memory: the DRAM image is at most
``limits.MAX_DRAM_BYTES``, the cache of decoded weight blocks at most
``limits.MAX_WEIGHT_CACHE_BYTES``, and a run keeps a few numbers per instruction.

Entry point: :func:`run` (or :class:`Interpreter`).  Returns the outputs and a
:class:`target_dlac.sim.report.RunReport`.  A ``HOST`` instruction's wall time (the host
runner's call) is recorded apart from the cycles: host ops run on the host CPU, not on
dLAC, and the report gives their seconds, never dLAC cycles.
"""

from __future__ import annotations

import time

import numpy as np

from target_dlac.core.errors import ConfigError, DlacError, ExecutionError

from target_dlac.isa.limits import MAX_DRAM_BYTES, MAX_INSN_TEMP_BYTES, MAX_INSN_WORK, MAX_RUN_WORK, \
    MAX_WEIGHT_CACHE_BYTES, block_decode_budget, block_key_budget, insn_budget
from target_dlac.isa import cycles
from target_dlac.isa.energy import EnergyTable, insn_actions, program_table
from target_dlac.isa.encoding import Insn, disassemble
from target_dlac.isa.blocks import BlockError, swis_block_bytes, swis_counts, swis_groups, ternary_block_bytes, \
    ternary_counts, unpack_swis, unpack_ternary
from target_dlac.binary.program import Program
from target_dlac.sim.kernels import F32, Kernels
from target_dlac.sim.report import InsnRecord, RunReport, build_report, conv_stats
from target_dlac.sim.timeline import Replay, Timeline, dense_cost
from target_dlac.binary.validate import first_insn_problem

WBYTES = (4, 1)            # bytes per weight of each MAC weight format (isa.WFMTS)


class Interpreter(Kernels):
    """Runs one program (any number of times: :meth:`run`); the instruction families' arithmetic
    is in :class:`target_dlac.sim.kernels.Kernels`."""

    def __init__(self, program: Program, *, check_races: bool = True, probe: bool = False,
                 energy_table: EnergyTable | None = None):
        """``probe``: also count, for every conv instruction and every PE mapping, its steps
        with zero activations skipped and with dense ones (:attr:`probe`, summed over runs;
        :mod:`target_dlac.tune.act_stats`).  ``energy_table``: the energy model's table
        (default: the binary's, :func:`target_dlac.isa.energy.program_table`)."""
        self.p = program
        self.energy_table = energy_table or program_table(program)
        self._actions: dict = {}     # energy actions of the non-conv instructions, by pc
        self.probe: dict | None = {} if probe else None
        self.m = program.machine
        self.check_races = check_races
        self._race_signature = None      # Timeline.signature() of the last race-checked run
        self._wcache: dict = {}      # decoded ternary / SWIS blocks, keyed by their bytes
        self._wcache_bytes = 0       # their keys' and matrices' bytes (<= MAX_WEIGHT_CACHE_BYTES)
        self._masks: dict = {}       # TACC non-zero masks per decoded block (Kernels._tacc_masks)
        self._mask_bytes = 0
        self.run_work = self.insn_work = self.insn_temp = 0     # budgets used (limits)
        found = first_insn_problem(program)
        if found:
            pc, problem = found
            raise ExecutionError(problem, pc=pc, insn=disassemble(program.insns[pc]))

    @property
    def text(self) -> str:
        """Disassembly of the executing instruction (for error messages only)."""
        return disassemble(self.ins)

    # ---- memory ------------------------------------------------------------------------
    def _reset(self):
        m = self.m
        if not 0 < self.p.dram_bytes <= MAX_DRAM_BYTES:      # (validation refuses it in a file)
            raise ExecutionError(f"the program's {self.p.dram_bytes}-byte DRAM image is not in "
                                 f"(0, {MAX_DRAM_BYTES}] (limits.MAX_DRAM_BYTES)")
        try:
            dram = np.zeros(self.p.dram_bytes, np.uint8)
        except MemoryError:
            raise ExecutionError(f"cannot allocate the program's {self.p.dram_bytes}-byte DRAM image "
                                 "on this host") from None
        self.mem = {"DRAM": dram,
                    "INP": np.zeros(m.inp_bytes, np.uint8),
                    "WGT": np.zeros(m.wgt_bytes, np.uint8),
                    "ACC": np.zeros(m.acc_bytes, np.uint8)}
        consts = np.frombuffer(self.p.constants, np.uint8)
        self.mem["DRAM"][:len(consts)] = consts

    def _span(self, mem: str, lo: int, nbytes: int, what: str) -> tuple[int, int]:
        size = len(self.mem[mem])
        if lo < 0 or nbytes < 0 or lo + nbytes > size:
            raise ExecutionError(f"{what} [{lo}, {lo + nbytes}) is outside {mem} ({size} bytes)",
                                 pc=self.pc, insn=self.text)
        if lo % 4 and what != "DMA":
            raise ExecutionError(f"{what} address {lo} in {mem} is not 4-byte aligned",
                                 pc=self.pc, insn=self.text)
        return lo, lo + nbytes

    def _arr(self, mem: str, lo: int, shape: tuple, dtype, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        a, b = self._span(mem, lo, int(np.prod(shape)) * dtype.itemsize, what)
        self.acc.append((mem, a, b, False))
        return self.mem[mem][a:b].view(dtype).reshape(shape)

    def _f32(self, mem: str, lo: int, shape: tuple, what: str) -> np.ndarray:
        return self._arr(mem, lo, shape, F32, what)

    def _put(self, mem: str, lo: int, value: np.ndarray, what: str):
        value = np.ascontiguousarray(value)
        a, b = self._span(mem, lo, value.nbytes, what)
        self.acc.append((mem, a, b, True))
        self.mem[mem][a:b] = value.reshape(-1).view(np.uint8)

    def _fail(self, msg: str):
        raise ExecutionError(msg, pc=self.pc, insn=self.text)

    def _charge(self, work: int, temp: int = 0, what: str | None = None):
        """Add ``work`` element operations and ``temp`` temporary bytes to the executing
        instruction and both to the run (:mod:`target_dlac.isa.limits`); past a budget, fail at
        this pc (``what``: the run-time part being charged, for the message)."""
        self.insn_work += work
        self.insn_temp += temp
        self.run_work += work + temp
        part = f" ({what} included)" if what else ""
        if self.insn_work > MAX_INSN_WORK:
            self._fail(f"the instruction needs {self.insn_work:,} element operations{part}, over the "
                       f"budget of {MAX_INSN_WORK:,} per instruction (limits.MAX_INSN_WORK)")
        if self.insn_temp > MAX_INSN_TEMP_BYTES:
            self._fail(f"the instruction needs {self.insn_temp:,} bytes of temporary memory{part}, over "
                       f"the budget of {MAX_INSN_TEMP_BYTES:,} per instruction (limits.MAX_INSN_TEMP_BYTES)")
        if self.run_work > MAX_RUN_WORK:
            self._fail(f"the run reaches {self.run_work:,} (element operations and temporary bytes) "
                       f"here{part}, over the budget of {MAX_RUN_WORK:,} per run (limits.MAX_RUN_WORK)")

    # ---- instructions ------------------------------------------------------------------
    def _weights(self, ins: Insn, k: int):
        """The weight block of a TACC/MAC/SACC as a dense float32 ``[f, k]`` matrix (and the
        non-zero counts (TACC) or shift counts (SACC) of its filters in PE order).  The
        block's length comes from its header; decoding a ternary or SWIS block is memoized
        on the block's bytes, so a block loaded again (next tile, next run) is decoded once
        (the oldest entries go beyond ``limits.MAX_WEIGHT_CACHE_BYTES``)."""
        f = ins.f
        addr, nf = f["wgt"], f["f"]
        wgt = self.mem["WGT"]
        try:
            if ins.op == "TACC":
                hi = addr + ternary_block_bytes(nf, int(ternary_counts(wgt, addr, nf).sum()))
            elif ins.op == "SACC":
                hi = addr + swis_block_bytes(swis_counts(wgt, addr, nf), swis_groups(f["c"], f["kh"], f["kw"]))
            else:
                hi = addr + WBYTES[f["wfmt"]] * nf * k
        except BlockError as e:
            self._fail(f"WGT[{addr:#x}]: {e}")
        a, b = self._span("WGT", addr, hi - addr, "weight block")
        self.acc.append(("WGT", a, b, False))
        self.block_bytes = b - a            # the energy model's weight reads
        if ins.op == "MAC":             # dense: nothing to decode
            if f["wfmt"] == 1:
                return wgt[a:b].view(np.int8).reshape(nf, k).astype(np.float32), None
            return wgt[a:b].view(F32).reshape(nf, k).copy(), None
        self._charge(*block_key_budget(b - a), what="hashing its weight block")
        key = (ins.op, nf, k, f["c"], f["kh"], f["kw"], wgt[a:b].tobytes())
        hit = self._wcache.get(key)
        if hit is None:
            try:
                if ins.op == "TACC":
                    counts = ternary_counts(wgt, addr, nf)
                    self._charge(*block_decode_budget("TACC", b - a, int(counts.sum())),
                                 what="decoding its ternary block")
                    hit = unpack_ternary(wgt, addr, nf, k)
                else:
                    counts = swis_counts(wgt, addr, nf)
                    groups = swis_groups(f["c"], f["kh"], f["kw"])
                    self._charge(*block_decode_budget("SACC", b - a, 0, nf, groups,
                                                      int(counts.max(initial=0))),
                                 what="decoding its SWIS block")
                    hit = unpack_swis(wgt, addr, nf, f["c"], f["kh"], f["kw"])[:2]
            except BlockError as e:
                self._fail(f"WGT[{addr:#x}]: {e}")
            self._remember(key, hit)
        return hit

    def _remember(self, key: tuple, hit: tuple):
        """Cache a decoded block, evicting the oldest entries to stay within
        ``limits.MAX_WEIGHT_CACHE_BYTES`` (a block larger than that is not cached)."""
        size = len(key[-1]) + hit[0].nbytes + hit[1].nbytes
        if size > MAX_WEIGHT_CACHE_BYTES:
            return
        cache = self._wcache
        while cache and self._wcache_bytes + size > MAX_WEIGHT_CACHE_BYTES:
            old_key = next(iter(cache))
            old = cache.pop(old_key)
            self._wcache_bytes -= len(old_key[-1]) + old[0].nbytes + old[1].nbytes
        cache[key] = hit
        self._wcache_bytes += size

    # ---- run ---------------------------------------------------------------------------
    def run(self, inputs: dict, host_runner=None, progress=None) -> tuple[dict, RunReport]:
        p = self.p
        self._reset()
        self._write_inputs(inputs)
        # The race check runs in full on the first run; a later run records its steps and
        # is checked only if they differ from the checked run's (the timeline depends on the
        # instruction stream, the weight blocks and, with act_skip on, the input's zero
        # activations: a race that only some inputs' cycles expose is still found).
        deferred = self.check_races and self._race_signature is not None
        real = Replay(self.m, check_races=self.check_races and not deferred, record=self.check_races)
        dense = Replay(self.m, dense_cost)        # the same program with every weight issued
        skipping = self.m.act_skip != "none"
        # with activation skipping: the weights' part alone (real's cost without it) and the
        # activations' part alone (every weight issued, zero activations skipped)
        wonly = Replay(self.m) if skipping else None
        aonly = Replay(self.m) if skipping else None
        records: list[InsnRecord] = []
        n = len(p.insns)
        halted = False
        self.run_work = 0
        for pc, ins in enumerate(p.insns):
            self.pc, self.ins, self.acc = pc, ins, []
            self.insn_work = self.insn_temp = 0
            self._charge(*insn_budget(ins))     # within budget: validation checked it up front
            op = ins.op
            counts = skip = None
            host_secs = 0.0             # wall time of a HOST op (TVM's CPU build, not dLAC cycles)
            if op in ("LOAD", "STORE"):
                self._dma(ins)
            elif op in ("TACC", "MAC", "SACC"):
                counts, skip = self._conv(ins)
            elif op == "EPI":
                self._epi(ins)
            elif op == "POOL":
                self._pool(ins)
            elif op == "ALU":
                self._alu(ins)
            elif op == "HOST":
                if host_runner is None:
                    self._fail("this program has host ops; run it through `dlac run` (which builds "
                               "them with TVM) or pass host_runner")
                t0 = time.perf_counter()
                try:
                    host_runner(ins.f["index"], self.mem["DRAM"])
                except DlacError:
                    raise
                except Exception as e:          # TVM's error in a host op, named by its pc
                    self._fail(f"host op {ins.f['index']} failed: {type(e).__name__}: "
                               f"{str(e).strip()[:300]}")
                host_secs = time.perf_counter() - t0
            elif op == "HALT":
                halted = True
            conv = skip is not None
            acts_cost = None
            if skipping:
                _, wslot = wonly.place(pc, ins, counts)
                acts_cost = cycles.steps_cycles(ins, self.m, skip.acts) if conv else None
                _, aslot = aonly.place(pc, ins, counts, cost=acts_cost)
            cyc, slot = real.place(pc, ins, counts, self.acc,
                                   cost=cycles.steps_cycles(ins, self.m, skip.total) if skipping and conv else None)
            _, dslot = dense.place(pc, ins, counts)
            stats = conv_stats(ins, self.m, counts, skip.work) + (skip.nonzero, skip.values) if conv else None
            if conv:
                actions = insn_actions(ins, self.m, counts, self.block_bytes, skip.useful, skip.window)
            else:           # the fields alone decide them: once per pc, for every run
                actions = self._actions.get(pc)
                if actions is None:
                    actions = self._actions[pc] = insn_actions(ins, self.m)
            records.append(InsnRecord(ins, cyc, slot, dslot.end, None, stats, host_secs,
                                      wslot.end if skipping else slot.end,
                                      aslot.end if skipping else dslot.end, actions))
            if progress and pc % 2000 == 0:
                progress(pc, n)
            if halted:
                break
        if not halted:
            raise ExecutionError("the program ended without HALT", pc=n - 1 if n else 0)
        if self.check_races:
            sig = real.timeline.signature()
            if deferred and sig != self._race_signature:
                Timeline.check_steps(real.timeline.steps)
            self._race_signature = sig
        outputs = {t.name: self._read(t) for t in p.outputs}
        return outputs, build_report(p, records, self.energy_table)

    def _write_inputs(self, inputs: dict):
        want = {t.name: t for t in self.p.inputs}
        missing = sorted(set(want) - set(inputs))
        extra = sorted(set(inputs) - set(want))
        if missing or extra:
            raise ConfigError(f"inputs: missing {missing or 'none'}, unexpected {extra or 'none'}; "
                              f"the program takes {sorted(want)}")
        for name, t in want.items():
            a = np.asarray(inputs[name])
            if tuple(a.shape) != tuple(t.shape):
                raise ConfigError(f"input {name!r} has shape {tuple(a.shape)}; the program was "
                                  f"compiled for {tuple(t.shape)}")
            a = np.ascontiguousarray(a, dtype=t.dtype)
            self.mem["DRAM"][t.addr:t.addr + t.nbytes] = a.view(np.uint8).reshape(-1)

    def _read(self, t) -> np.ndarray:
        raw = self.mem["DRAM"][t.addr:t.addr + t.nbytes]
        return raw.view(np.dtype(t.dtype).newbyteorder("<")).reshape(t.shape).copy()


def run(program: Program, inputs: dict, *, host_runner=None, check_races: bool = True,
        progress=None) -> tuple[dict, RunReport]:
    """Execute ``program`` on ``inputs`` (name -> array); returns (outputs, report)."""
    return Interpreter(program, check_races=check_races).run(inputs, host_runner, progress)

