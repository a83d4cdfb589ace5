"""Per-layer and total results of a run: cycles on the timeline and what they mean.

For each layer (a pc range recorded by the codegen in the binary's metadata):

* ``cycles``: end of the layer's last instruction minus the end of the previous
  layer's (layers end with ``SYNC``, so these add up to the total);
* ``compute``: busy cycles of the compute unit; ``load_stall``: cycles the compute
  unit waited for a load token; ``store_stall``: the rest (waiting for stores to free
  an accumulator slot, plus draining the last stores);
* ``dense_macs``: multiply-accumulates of the layer with every weight present;
  ``issued_macs``: those issued (non-zero weights only for ternary layers);
* ``zero_skip_speedup``: cycles of the same program with every weight issued and every
  activation read (the same timeline with ``TACC`` / ``SACC`` costed as ``MAC``, no zero
  activation skipped) divided by ``cycles``; ``speedup_weights``, ``speedup_acts`` and
  ``speedup_total`` split it: the same ratio with only zero weights skipped, with only
  zero activations skipped (machine parameter ``act_skip``; 1.0 when it is ``none``), and
  with both (``= zero_skip_speedup``); ``act_density``: the fraction of non-zero values in
  the input tiles the layer's conv instructions read (``None`` for a layer without one);
* ``load_balance``: work done over work paid for in ternary (SWIS) steps: the sum of
  the filters' non-zero (shift) counts over the sum of (filters x the largest count)
  of every group of filters that ran together (1.0 = perfectly balanced);
* ``lower_bound_cycles`` = max(issued MACs / MAC lanes, minimum DRAM bytes read /
  bandwidth, bytes written / bandwidth) (the load and store units have separate DRAM
  read and write channels, each at ``dram_bytes_per_cycle``; a conv's minimum read is
  the input it touches, its weights and its residual) and ``pct_of_bound`` = 100 * cycles / lower bound (for SWIS layers the
  compute term counts PE passes: weight groups x shift passes, 4 weights per pass);
* ``tflops_equiv`` = 2 * dense MACs / time (the paper's "equivalent" TFLOP/s) and
  ``tflops_per_mm2`` over the machine's modelled area (:mod:`target_dlac.isa.area`; the
  report's ``area_mm2`` and ``area_breakdown_mm2``), per layer and per run;
* ``energy_pj`` = ``{total, compute, onchip, dram, static}`` of the layer's instructions
  (:mod:`target_dlac.isa.energy`, docs/isa.md "Energy model": its actions priced by the
  energy table, leakage over its cycles) and ``pj_per_mac`` (over its dense MACs); the run's
  ``extra`` holds the same for the run, with ``tops_per_w``, ``edp_js``, the action
  counts (``actions``; ``conv_actions``: those of the conv instructions alone) and the
  ``energy_table`` used.

Host ops (layer op ``host``) run on the host CPU through TVM's build, not on dLAC: a row
of theirs is marked as such and gives ``host_seconds``, the wall time of the host call
(measured by the interpreter), and ``host_macs``, the MACs of the conv2d / matmul ops in it
(read from the ``HOST`` section's graph, :func:`host_macs`; ``None`` when a shape there is
not known).  Their ``HOST`` / ``SYNC`` instructions keep their cycle cost (a hand-off, 1
cycle each): the dLAC cycle numbers do not depend on the host.  The report's ``extra``
holds ``host_seconds`` (all host ops), ``dlac_macs`` and ``host_macs``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from itertools import accumulate

import numpy as np

from target_dlac.binary.layer_meta import layer_table
from target_dlac.isa import cycles
from target_dlac.isa import energy
from target_dlac.isa.area import area_breakdown, area_mm2
from target_dlac.isa.encoding import Insn
from target_dlac.sim.host_macs import host_macs
from target_dlac.sim.timeline import Slot


@dataclass
class InsnRecord:
    ins: Insn
    cycles: int
    slot: Slot
    dense_end: int
    counts: np.ndarray | None = None
    #: :func:`conv_stats` of a conv instruction, computed when it ran (the interpreter keeps
    #: these few numbers instead of the per-filter ``counts``: a record's size is bounded)
    stats: tuple | None = None
    #: wall seconds of a HOST instruction's host call (0 for every other instruction)
    host_seconds: float = 0.0
    #: end cycle on the timeline with only zero weights skipped / only zero activations
    #: skipped (``None``: the same as ``slot.end`` / ``dense_end``, no activation skipping)
    wgt_end: int | None = None
    act_end: int | None = None
    #: :func:`energy.insn_actions` of the instruction as it ran (``None``: no actions)
    actions: dict | None = None


@dataclass
class LayerReport:
    name: str
    op: str
    precision: str
    pc_start: int
    pc_end: int
    cycles: int = 0
    compute: int = 0
    load_stall: int = 0
    store_stall: int = 0
    dense_macs: int = 0
    issued_macs: int = 0
    dense_cycles: int = 0
    zero_skip_speedup: float = 1.0
    speedup_weights: float = 1.0
    speedup_acts: float = 1.0
    speedup_total: float = 1.0
    act_density: float | None = None
    load_balance: float = 1.0
    lower_bound_cycles: int = 0
    pct_of_bound: float = 0.0
    dram_bytes: int = 0
    instructions: int = 0
    host_seconds: float = 0.0        # host ops: wall time on the host CPU
    host_macs: int | None = None     # host ops: MACs of their conv2d / matmul (None: unknown)
    tflops_equiv: float = 0.0        # 2 * dense MACs / the layer's time
    tflops_per_mm2: float = 0.0
    #: ``{total, compute, onchip, dram, static}`` pJ of the layer's instructions (energy model)
    energy_pj: dict | None = None
    pj_per_mac: float | None = None      # energy over dense-equivalent MACs

    @property
    def on_host(self) -> bool:
        return self.op == "host"

    def to_dict(self) -> dict:
        return asdict(self) | {"on": "host" if self.on_host else "dlac"}


@dataclass
class RunReport:
    machine: dict
    cycles: dict
    layers: list[LayerReport]
    host_ops: int = 0
    seconds: float = 0.0
    tflops_equiv: float = 0.0
    tflops_per_mm2: float = 0.0
    instructions: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "layers": [l.to_dict() for l in self.layers],
                "machine": self.machine, "host_ops": self.host_ops, "seconds": self.seconds,
                "tflops_equiv": self.tflops_equiv, "tflops_per_mm2": self.tflops_per_mm2,
                "instructions": self.instructions, **self.extra}

    def table(self) -> str:
        head = (f"{'layer':<24} {'op':<11} {'prec':<7} {'cycles':>10} {'compute':>9} {'ld stall':>9} "
                f"{'st stall':>9} {'dens':>5} {'w x':>5} {'a x':>5} {'skip x':>6} {'bal':>5} {'bound':>9} "
                f"{'%bound':>7} {'uJ':>8}")
        lines = [head]
        for l in self.layers:
            if l.on_host:
                macs = "" if not l.host_macs else f", {l.host_macs:,} MACs"
                lines.append(f"{l.name[:24]:<24} {'HOST':<11} {l.precision[:7]:<7} {l.cycles:>10,}   "
                             f"on the host CPU: {l.host_seconds * 1e3:.3f} ms wall{macs}")
                continue
            lines.append(f"{l.name[:24]:<24} {l.op[:11]:<11} {l.precision[:7]:<7} {l.cycles:>10,} "
                         f"{l.compute:>9,} {l.load_stall:>9,} {l.store_stall:>9,} "
                         f"{'' if l.act_density is None else format(l.act_density, '.2f'):>5} "
                         f"{l.speedup_weights:>5.2f} {l.speedup_acts:>5.2f} "
                         f"{l.zero_skip_speedup:>6.2f} {l.load_balance:>5.2f} "
                         f"{l.lower_bound_cycles:>9,} {l.pct_of_bound:>6.0f}% "
                         f"{'' if l.energy_pj is None else format(l.energy_pj['total'] / 1e6, '.4g'):>8}")
        c = self.cycles
        lines.append(f"{'total':<24} {'':<11} {'':<7} {c['total']:>10,} {c['compute']:>9,} "
                     f"{c['load_stall']:>9,} {c['store_stall']:>9,}")
        lines.append("dens: non-zero fraction of the activations the layer's convs read; w x / a x / skip x: "
                     "speed-up from skipping zero weights / zero activations (act_skip = "
                     f"{self.machine.get('act_skip', 'none')}) / both; uJ: the layer's energy (model)")
        lines.append(f"{self.seconds * 1e6:.1f} us at {self.machine['clock_mhz']:g} MHz; "
                     f"{self.tflops_equiv:.3f} dense-equivalent TFLOP/s, "
                     f"{self.tflops_per_mm2:.3f} TFLOP/s/mm^2 (of {self.extra.get('area_mm2', 0.0):.3g} mm^2, "
                     "the area model's)"
                     + (f"; {self.host_ops} host op(s) not in the cycle count" if self.host_ops else ""))
        en = self.extra.get("energy_pj")
        if en:
            e = self.extra
            lines.append(self.energy_line(en, e.get("pj_per_mac"), e.get("tops_per_w"), e.get("edp_js")))
        if self.host_ops:
            lines.append(self.host_line())
        return "\n".join(lines)

    @staticmethod
    def energy_line(en: dict, pj_per_mac, tops_per_w, edp_js) -> str:
        """``energy: ... uJ (compute ..%, on-chip ..%, DRAM ..%, static ..%); ... pJ/MAC, ...``."""
        tot = en["total"]
        share = ", ".join(f"{name} {100 * en[k] / tot:.0f}%" if tot else f"{name} -"
                          for k, name in (("compute", "compute"), ("onchip", "on-chip"), ("dram", "DRAM"),
                                          ("static", "static")))
        eff = "" if pj_per_mac is None else f"; {pj_per_mac:.3g} pJ per dense-equivalent MAC, " \
                                           f"{tops_per_w:.3g} TOPS/W"
        return (f"energy (model, docs/isa.md \"Energy model\"): {tot / 1e6:.4g} uJ ({share}){eff}; "
                f"EDP {edp_js:.3g} J*s (dLAC only: host ops not included)")

    def host_line(self) -> str:
        """``host wall time: ... ms over N host op(s) ...; MACs: ... on dLAC, ... on the host``."""
        e = self.extra
        line = (f"host wall time: {e.get('host_seconds', 0.0) * 1e3:.3f} ms over {self.host_ops} host "
                f"op(s) (TVM's CPU build on this machine; each HOST hand-off counts 1 dLAC cycle)")
        d, h = e.get("dlac_macs", 0), e.get("host_macs")
        if h is None:
            return line + f"; MACs: {d:,} on dLAC, host share not known (a host op's shapes are not)"
        total = d + h
        pct = (lambda v: f"{100 * v / total:.1f}%") if total else (lambda v: "-")
        return line + f"; MACs: {d:,} on dLAC ({pct(d)}), {h:,} on the host ({pct(h)})"


def input_spread(reports: list[RunReport]) -> dict:
    """The spread of several runs of one program (one input each): ``count``; ``cycles`` and
    ``tflops_equiv`` as ``{min, median, max}``; ``per_input_cycles``; and per layer
    ``{name: {min, median, max}}`` of its cycles (``layer_cycles``)."""
    def mmm(values) -> dict:
        return {"min": min(values), "median": float(np.median(values)), "max": max(values)}

    totals = [r.cycles["total"] for r in reports]
    layers = {}
    for i, l in enumerate(reports[0].layers):
        layers.setdefault(l.name, mmm([r.layers[i].cycles for r in reports]))
    return {"count": len(reports), "cycles": mmm(totals), "per_input_cycles": totals,
            "tflops_equiv": mmm([r.tflops_equiv for r in reports]), "layer_cycles": layers}


def conv_stats(ins: Insn, m, counts, work: float | None = None) -> tuple:
    """``(dense_macs, issued_macs, work, done, paid)`` of a TACC / MAC / SACC: its MACs with
    every weight present and as issued, its useful PE-cycles (:func:`cycles.pe_work`, or
    ``work`` when the caller knows better: with zero activations skipped, the steps no input
    skips), and the steps done and paid for by its filter groups (the load balance)."""
    px = ins.f["oh"] * ins.f["ow"]
    k = cycles.weights_per_filter(ins)
    dense = ins.f["f"] * k * px
    work = cycles.pe_work(ins, m, counts) if work is None else work
    if ins.op == "MAC":
        return dense, dense, work, 0, 0
    # TACC / SACC: the steps each filter takes, as the cost counts them
    steps = cycles.filter_steps(ins, m, counts)
    issued = (int(np.sum(counts)) if ins.op == "TACC" else ins.f["f"] * k) * px
    npass = cycles.passes(ins, m)
    ncols = cycles.grid(ins, m)[1]
    pad = (-len(steps)) % ncols
    groups = np.concatenate([steps, np.full(pad, -1)]).reshape(-1, ncols)
    sizes = (groups >= 0).sum(axis=1)
    return (dense, issued, work, npass * int(steps.sum()),
            npass * int((sizes * groups.max(axis=1)).sum()))


_STATS = ("dense_macs", "issued_macs", "work", "done", "paid", "act_nonzero", "act_values")


def _per_insn(records: list[InsnRecord], m) -> dict[str, list]:
    """What each instruction adds to its layers' sums, one list per quantity, indexed by pc
    (computed once per instruction, whatever the number of layers that contain it)."""
    cols = {k: [0] * len(records) for k in ("compute", "load_stall") + _STATS}
    for pc, r in enumerate(records):
        ins = r.ins
        if ins.unit == "compute":
            cols["compute"][pc] = r.cycles
            cols["load_stall"][pc] = r.slot.load_stall
        if ins.op not in ("TACC", "MAC", "SACC"):
            continue
        stats = r.stats if r.stats is not None else conv_stats(ins, m, r.counts) + (0, 0)
        for k, v in zip(_STATS, stats):
            cols[k][pc] = v
    return cols


def _range_max(values: list, ranges: list[tuple[int, int]]) -> list:
    """``max(values[a:b])`` for every ``(a, b)`` with ``a < b`` (``None`` if empty), offline:
    the ranges in order of ``b``, a stack of the suffix maxima of ``values[:b]`` and a
    binary search for ``a``.  O((n + q) log n) for any overlap of the ranges."""
    out = [None] * len(ranges)
    idx: list[int] = []         # positions of the suffix maxima, increasing
    val: list = []              # their values, strictly decreasing
    pos = 0
    for q in sorted(range(len(ranges)), key=lambda q: ranges[q][1]):
        a, b = ranges[q]
        while pos < b:
            v = values[pos]
            while val and val[-1] <= v:
                val.pop()
                idx.pop()
            idx.append(pos)
            val.append(v)
            pos += 1
        if a < b:
            out[q] = val[bisect_left(idx, a)]
    return out


def _prefix(xs: list) -> list:
    return [0, *accumulate(xs)]


def _action_columns(records: list[InsnRecord]) -> dict[str, list]:
    """Prefix sums over the pcs of each energy action's count (:func:`energy.insn_actions`)."""
    cols = {a: [0] * len(records) for a in energy.ACTIONS}
    for pc, r in enumerate(records):
        if r.actions:
            for k, v in r.actions.items():
                cols[k][pc] = v
    return {k: _prefix(v) for k, v in cols.items()}


def report_static(program) -> dict:
    """What a run report takes from the program alone (its layer table, the machine's
    parameters and hash, the area model's figures, the host ops' MACs): computed once by a
    caller that reports many runs of one program."""
    m = program.machine
    return {"layers": layer_table(program.meta), "machine": m.to_dict() | {"hash": m.hash()},
            "area": area_mm2(m), "area_breakdown": area_breakdown(m), "host_macs": host_macs(program)}


def build_report(program, records: list[InsnRecord], table: energy.EnergyTable | None = None,
                 static: dict | None = None) -> RunReport:
    """The run's report.  Linear in the program plus O(L log n) for L layers: the layers' pc
    ranges (which validation lets overlap) are summed with prefix sums of per-instruction
    columns and their last cycles found by :func:`_range_max`.  ``table``: the energy
    table (:data:`energy.DEFAULT_TABLE` if ``None``); ``static``: :func:`report_static` of
    the program, if the caller keeps it."""
    m = program.machine
    table = table or energy.DEFAULT_TABLE
    static = static or report_static(program)
    area = static["area"]               # the area model's, not a constant (docs/isa.md "Area model")
    n = len(records)
    metas = static["layers"]
    ranges = [(min(l.pc_start, n), min(l.pc_end, n)) for l in metas]
    ranges = [(a, max(a, b)) for a, b in ranges]
    cols = {k: _prefix(v) for k, v in _per_insn(records, m).items()}
    acts = _action_columns(records)
    ends = _range_max([r.slot.end for r in records], ranges)
    dense_ends = _range_max([r.dense_end for r in records], ranges)
    wgt_ends = _range_max([r.slot.end if r.wgt_end is None else r.wgt_end for r in records], ranges)
    act_ends = _range_max([r.dense_end if r.act_end is None else r.act_end for r in records], ranges)
    layers = []
    prev_end = prev_dense = prev_wgt = prev_act = 0
    for meta, (a, b), end, dense_end, wgt_end, act_end in zip(metas, ranges, ends, dense_ends, wgt_ends,
                                                              act_ends):
        lr = LayerReport(meta.name, meta.op, meta.precision, meta.pc_start, meta.pc_end)
        layers.append(lr)
        if a == b:
            continue
        s = {k: c[b] - c[a] for k, c in cols.items()}
        lr.cycles = max(0, end - prev_end)
        lr.dense_cycles = max(0, dense_end - prev_dense)
        lr.instructions = b - a
        lr.compute, lr.load_stall = s["compute"], s["load_stall"]
        lr.dense_macs, lr.issued_macs = s["dense_macs"], s["issued_macs"]
        lr.store_stall = max(0, lr.cycles - lr.compute - lr.load_stall)
        lr.zero_skip_speedup = lr.speedup_total = lr.dense_cycles / lr.cycles if lr.cycles else 1.0
        wgt, act = max(0, wgt_end - prev_wgt), max(0, act_end - prev_act)
        lr.speedup_weights = lr.dense_cycles / wgt if wgt else 1.0
        lr.speedup_acts = lr.dense_cycles / act if act else 1.0
        lr.act_density = s["act_nonzero"] / s["act_values"] if s["act_values"] else None
        secs = m.seconds(lr.cycles)
        lr.tflops_equiv = 2 * lr.dense_macs / secs / 1e12 if secs else 0.0
        lr.tflops_per_mm2 = lr.tflops_equiv / area
        lr.load_balance = s["done"] / s["paid"] if s["paid"] else 1.0
        lr.dram_bytes = meta.min_dram_bytes
        written = meta.min_write_bytes
        lr.lower_bound_cycles = cycles.lower_bound(s["work"], lr.dram_bytes - written, written, m)
        lr.pct_of_bound = 100.0 * lr.cycles / lr.lower_bound_cycles if lr.lower_bound_cycles else 0.0
        lr.energy_pj = energy.energy_pj({k: c[b] - c[a] for k, c in acts.items()}, m, lr.cycles, table, area)
        lr.pj_per_mac = lr.energy_pj["total"] / lr.dense_macs if lr.dense_macs else None
        prev_end = max(prev_end, end)
        prev_dense = max(prev_dense, dense_end)
        prev_wgt, prev_act = max(prev_wgt, wgt_end), max(prev_act, act_end)
    per_host = static["host_macs"]
    for lr, (a, b) in zip(layers, ranges):
        if lr.on_host:
            lr.host_seconds = sum(records[pc].host_seconds for pc in range(a, b))
            found = [per_host.get(records[pc].ins.f["index"]) for pc in range(a, b)
                     if records[pc].ins.op == "HOST"]
            lr.host_macs = None if None in found else sum(found)
    total = max((r.slot.end for r in records), default=0)
    compute = cols["compute"][-1]
    load_stall = sum(r.slot.load_stall for r in records)
    dense_macs = sum(l.dense_macs for l in layers)
    secs = m.seconds(total)
    tflops = 2 * dense_macs / secs / 1e12 if secs else 0.0
    actions = {k: c[-1] for k, c in acts.items()}
    conv_actions: dict = {}             # the conv instructions' alone (their arithmetic, their reads)
    for r in records:
        if r.actions and r.ins.op in ("MAC", "TACC", "SACC"):
            energy.add_into(conv_actions, r.actions)
    run_energy = energy.energy_pj(actions, m, total, table, area)
    return RunReport(
        machine=dict(static["machine"]),
        cycles={"total": total, "compute": compute, "load_stall": load_stall,
                "store_stall": max(0, total - compute - load_stall)},
        layers=layers, host_ops=sum(1 for r in records if r.ins.op == "HOST"), seconds=secs,
        tflops_equiv=tflops, tflops_per_mm2=tflops / area, instructions=len(records),
        extra={"dense_macs": dense_macs, "issued_macs": sum(l.issued_macs for l in layers),
               "host_seconds": sum(r.host_seconds for r in records), "dlac_macs": dense_macs,
               "host_macs": _total_host_macs(records, per_host), "area_mm2": area,
               "area_breakdown_mm2": dict(static["area_breakdown"]), "energy_pj": run_energy,
               **energy.efficiency(run_energy, dense_macs, secs), "actions": actions,
               "conv_actions": conv_actions, "energy_table": table.to_dict()})


def _total_host_macs(records, per_host: dict) -> int | None:
    found = [per_host.get(r.ins.f["index"]) for r in records if r.ins.op == "HOST"]
    return None if None in found else sum(found)
