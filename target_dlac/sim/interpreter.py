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

Entry points: :func:`run` (or :meth:`Interpreter.run`): one input, its outputs and a
:class:`target_dlac.sim.report.RunReport`; :meth:`Interpreter.run_batch` (or
:func:`target_dlac.sim.batch.run_batch`, which chunks a large request): N inputs in one walk
of the instruction stream, each instruction vectorized over the batch (N copies of the
memories, one decode of each weight block), with the outputs of N single runs bit for bit
and each input's cycles and energy (:class:`target_dlac.sim.batch.BatchReport`).  A single
run is a batch of one.  In a batch, the first input's timeline is race-checked and gives
the full run report; the other inputs' timelines are placed without the race check
(:class:`target_dlac.sim.batch_timeline.BatchReplay`), which the values never depend on.
A batch whose TACC / SACC weight blocks differ between its inputs (weights loaded from
activations) runs as single runs.  A ``HOST`` instruction's wall time (the host
runner's call) is recorded apart from the cycles: host ops run on the host CPU, not on
dLAC, and the report gives their seconds, never dLAC cycles.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from target_dlac.core.errors import ConfigError, DlacError, ExecutionError

from target_dlac.isa.limits import MAX_INSN_TEMP_BYTES, MAX_INSN_WORK, MAX_RUN_WORK, \
    MAX_WEIGHT_CACHE_BYTES, block_decode_budget, block_key_budget, insn_budget
from target_dlac.isa import cycles
from target_dlac.isa.area import area_mm2
from target_dlac.isa.energy import EnergyTable, add_into, energy_pj, insn_actions, program_table
from target_dlac.isa.encoding import Insn, disassemble
from target_dlac.isa.blocks import BlockError, swis_block_bytes, swis_counts, swis_groups, ternary_block_bytes, \
    ternary_counts, unpack_swis, unpack_ternary
from target_dlac.binary.program import Program
from target_dlac.sim.batch import CYCLE_KEYS, ENERGY_KEYS, BatchReport, stack_inputs
from target_dlac.sim.batch_timeline import BatchReplay
from target_dlac.sim.kernels import F32, Kernels
from target_dlac.sim.memory import Memories
from target_dlac.sim.report import InsnRecord, RunReport, build_report, conv_stats, report_static
from target_dlac.sim.timeline import Replay, Timeline, dense_cost
from target_dlac.binary.validate import first_insn_problem

WBYTES = (4, 1)            # bytes per weight of each MAC weight format (isa.WFMTS)


class _Varying(Exception):
    """A TACC / SACC weight block differs between the inputs of a batch."""


_BLAS = []      # the threadpoolctl controller of the BLAS NumPy loaded, made on first use


def _blas_threads(n: int | None):
    """A context in which NumPy's BLAS runs ``n`` threads (``None``: as it is).  The
    interpreter's products are small (one per input per conv instruction): a second BLAS
    thread gains little on them and, with another process on the core, stalls every call
    (measured: 100x slower on a loaded 2-core machine), so runs default to one thread and
    get their parallelism from processes (``dlac eval --jobs``)."""
    if n is None:
        return contextlib.nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=n, user_api="blas")


class Interpreter(Memories, Kernels):
    """Runs one program (any number of times: :meth:`run`); the instruction families' arithmetic
    is in :class:`target_dlac.sim.kernels.Kernels`."""

    def __init__(self, program: Program, *, check_races: bool = True, probe: bool = False,
                 energy_table: EnergyTable | None = None, blas_threads: int | None = 1):
        """``probe``: also count, for every conv instruction and every PE mapping, its steps
        with zero activations skipped and with dense ones (:attr:`probe`, summed over runs;
        :mod:`target_dlac.tune.act_stats`).  ``energy_table``: the energy model's table
        (default: the binary's, :func:`target_dlac.isa.energy.program_table`).
        ``blas_threads``: NumPy's BLAS threads during a run (:func:`_blas_threads`;
        ``None``: leave them as they are)."""
        self.p = program
        self.blas_threads = blas_threads
        self.energy_table = energy_table or program_table(program)
        self._actions: dict = {}     # energy actions of the non-conv instructions, by pc
        self.probe: dict | None = {} if probe else None
        self.m = program.machine
        self.check_races = check_races
        self._race_signature = None      # Timeline.signature() of the last race-checked run
        self._wcache: dict = {}      # decoded ternary / SWIS blocks, keyed by their bytes
        self._wcache_bytes = 0       # their keys' and matrices' bytes (<= MAX_WEIGHT_CACHE_BYTES)
        self._masks: dict = {}       # TACC non-zero masks per decoded block (Kernels._tacc_masks)
        # the dense timeline's end cycle per pc (every weight issued: the fields alone decide
        # it, the same every run) and the report's program-static parts, after a first run
        self._dense_ends: list | None = None
        self._report_static = None
        # the bytes the program reads before writing them (Memories: traced on a first run),
        # and whether that trace gave up (TRACE_RANGES)
        self._fresh: dict | None = None
        self._give_up = False
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
        bank = self.banks["WGT"]
        wgt = bank[0]
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
        varying = len(bank) > 1 and not self._same_rows("WGT", a, b) and not (bank[1:, a:b] == wgt[a:b]).all()
        if ins.op == "MAC":             # dense: nothing to decode ([n, f, k] if the inputs' differ)
            src, shape = (bank[:, a:b], (len(bank), nf, k)) if varying else (wgt[a:b], (nf, k))
            if f["wfmt"] == 1:
                return src.view(np.int8).reshape(shape).astype(np.float32), None
            return src.view(F32).reshape(shape).copy(), None
        if varying:
            raise _Varying
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
        """One input (name -> array of the tensor's shape): its outputs and run report."""
        arrays, _ = stack_inputs(self.p, inputs, batched=False)
        with _blas_threads(self.blas_threads):
            outs, rep = self._execute(arrays, 1, host_runner, progress)
        return {k: v[0] for k, v in outs.items()}, rep.first

    def run_batch(self, inputs: dict, host_runner=None, progress=None) -> tuple[dict, BatchReport]:
        """One batch: name -> ``(N,) + shape`` arrays, run together (the caller bounds N:
        :func:`target_dlac.sim.batch.run_batch` chunks a request); returns (name -> ``(N,) +
        shape`` outputs, :class:`target_dlac.sim.batch.BatchReport`)."""
        arrays, n = stack_inputs(self.p, inputs)
        if n == 0:
            raise ConfigError("an empty batch: give at least one input")
        try:
            with _blas_threads(self.blas_threads):
                return self._execute(arrays, n, host_runner, progress)
        except _Varying:        # per-input weight blocks: the inputs one at a time
            parts = [self._execute({k: v[i:i + 1] for k, v in arrays.items()}, 1, host_runner, progress)
                     for i in range(n)]
            return ({k: np.concatenate([o[k] for o, _ in parts]) for k in parts[0][0]},
                    BatchReport.join([r for _, r in parts]))

    def _execute(self, arrays: dict, n: int, host_runner, progress) -> tuple[dict, BatchReport]:
        t_start = time.perf_counter()
        self._reset(n)
        try:
            return self._walk(arrays, n, host_runner, progress, t_start)
        except BaseException:
            self.banks = None       # what a failed run wrote is not known: fresh memories next time
            raise

    def _walk(self, arrays: dict, n: int, host_runner, progress, t_start: float) -> tuple[dict, BatchReport]:
        p = self.p
        self._write_inputs(arrays)
        # The race check runs in full on the first run; a later run records its steps and
        # is checked only if they differ from the checked run's (the timeline depends on the
        # instruction stream, the weight blocks and, with act_skip on, the input's zero
        # activations: a race that only some inputs' cycles expose is still found).  In a
        # batch this is the first input's timeline.
        deferred = self.check_races and self._race_signature is not None
        real = Replay(self.m, check_races=self.check_races and not deferred, record=self.check_races)
        dense_ends = self._dense_ends
        dense = Replay(self.m, dense_cost) if dense_ends is None else None   # every weight issued
        skipping = self.m.act_skip != "none"
        # with activation skipping: the weights' part alone (real's cost without it) and the
        # activations' part alone (every weight issued, zero activations skipped)
        wonly = Replay(self.m) if skipping else None
        aonly = Replay(self.m) if skipping else None
        batch = BatchReplay(n) if n > 1 else None       # every input's timeline
        batch_actions: dict = {}                         # every input's actions (arrays)
        records: list[InsnRecord] = []
        count = len(p.insns)
        halted = False
        self.run_work = 0
        self._host_seconds = 0.0        # every input's host calls
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
                host_secs = self._host(ins, host_runner)
            elif op == "HALT":
                halted = True
            self._note_accesses()
            if op == "HOST":
                self._wrote("DRAM", 0, self.p.dram_bytes)
            conv = skip is not None
            costs = cycles.steps_cycles(ins, self.m, skip.total) if skipping and conv else None  # [n]
            if skipping:
                _, wslot = wonly.place(pc, ins, counts)
                acts_cost = int(cycles.steps_cycles(ins, self.m, skip.acts[0])) if conv else None
                _, aslot = aonly.place(pc, ins, counts, cost=acts_cost)
            cyc, slot = real.place(pc, ins, counts, self.acc, cost=None if costs is None else int(costs[0]))
            if batch is not None:
                batch.place(ins, cyc if costs is None else costs)
            dend = dense.place(pc, ins, counts)[1].end if dense is not None else dense_ends[pc]
            if conv:
                stats = conv_stats(ins, self.m, counts, skip.work[0] if skipping else None) + \
                    (int(skip.nonzero[0]), skip.values)
                every = insn_actions(ins, self.m, counts, self.block_bytes, skip.useful, skip.window)
                actions = {k: v[0].item() if isinstance(v, np.ndarray) else v for k, v in every.items()}
            else:           # the fields alone decide them: once per pc, for every run
                stats = None
                actions = every = self._actions.get(pc)
                if actions is None:
                    actions = every = self._actions[pc] = insn_actions(ins, self.m)
            if batch is not None:
                add_into(batch_actions, every)
            records.append(InsnRecord(ins, cyc, slot, dend, None, stats, host_secs,
                                      wslot.end if skipping else slot.end,
                                      aslot.end if skipping else dend, actions))
            if progress and pc % 2000 == 0:
                progress(pc, count)
            if halted:
                break
        if not halted:
            raise ExecutionError("the program ended without HALT", pc=count - 1 if count else 0)
        if self.check_races:
            sig = real.timeline.signature()
            if deferred and sig != self._race_signature:
                Timeline.check_steps(real.timeline.steps)
            self._race_signature = sig
        self._end_trace()
        if dense is not None:
            self._dense_ends = [r.dense_end for r in records]
        if self._report_static is None:
            self._report_static = report_static(p)
        outputs = {t.name: self._read(t) for t in p.outputs}
        first = build_report(p, records, self.energy_table, self._report_static)
        host_secs = first.extra["host_seconds"]
        if batch is None:
            per_cycles = {k: np.array([first.cycles[k]], np.int64) for k in CYCLE_KEYS}
            per_energy = {k: np.array([first.extra["energy_pj"][k]], np.float64) for k in ENERGY_KEYS}
        else:
            per_cycles = batch.totals()
            e = energy_pj(batch_actions, self.m, per_cycles["total"], self.energy_table, area_mm2(self.m))
            per_energy = {k: np.broadcast_to(np.asarray(e[k], np.float64), (n,)).copy() for k in ENERGY_KEYS}
            host_secs = self._host_seconds
        return outputs, BatchReport(n, per_cycles, per_energy, first, host_secs, time.perf_counter() - t_start, [n])

    def _host(self, ins: Insn, host_runner) -> float:
        """Run a ``HOST`` op on every input's DRAM through ``host_runner``; returns the first
        input's wall seconds (its run report's), adding all inputs' to ``_host_seconds``."""
        if host_runner is None:
            self._fail("this program has host ops; run it through `dlac run` (which builds "
                       "them with TVM) or pass host_runner")
        first = None
        for row in self.banks["DRAM"]:
            t0 = time.perf_counter()
            try:
                host_runner(ins.f["index"], row)
            except DlacError:
                raise
            except Exception as e:          # TVM's error in a host op, named by its pc
                self._fail(f"host op {ins.f['index']} failed: {type(e).__name__}: "
                           f"{str(e).strip()[:300]}")
            secs = time.perf_counter() - t0
            first = secs if first is None else first
            self._host_seconds += secs
        return first

def run(program: Program, inputs: dict, *, host_runner=None, check_races: bool = True,
        progress=None) -> tuple[dict, RunReport]:
    """Execute ``program`` on ``inputs`` (name -> array); returns (outputs, report)."""
    return Interpreter(program, check_races=check_races).run(inputs, host_runner, progress)

