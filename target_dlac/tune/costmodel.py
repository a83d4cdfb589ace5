"""Analytic cost model: a conv / dense layer's cycle count under a schedule, without
computing any value.

:func:`layer_cycles` predicts what the interpreter reports for the layer
(``RunReport.layers[i].cycles`` and its compute / load-stall / store-stall split), for
every weight format: dense (``MAC``), ternary (``TACC``) and SWIS (``SACC``).  It equals
the interpreter's count because it replays the same machine model on the same
instructions, skipping only the arithmetic:

* the weight blocks are sized as the codegen packs them for this schedule
  (:meth:`target_dlac.codegen.layer_weights.LayerWeights.blocks`, the same tiles and PE
  order the codegen packs), with the per-filter counts a ``TACC`` / ``SACC`` is costed
  by, in PE order: a ternary block's non-zero counts (what :func:`blocks.pack_ternary`
  writes and the interpreter reads back), a SWIS block's shift counts (the layer's
  :class:`SwisResult` counts of the tile's filters, in the order
  :func:`blocks.pack_swis` writes them: :func:`block_counts`); the epilogue parameter
  blocks as :func:`isa.epi_param_layout`;
* the instructions (with their dependency tokens) come from the same
  :func:`lower.lower_conv` the codegen calls (DRAM addresses are dummies: no cost
  depends on an address), which says which weight block each conv instruction reads;
* they are costed by :func:`cycles.cost` and placed on a timeline by the same
  :class:`target_dlac.sim.timeline.Replay` the interpreter places its instructions with
  (race check off: it only refuses programs, never moves an instruction).

A layer of a program starts after the previous layer's closing ``SYNC`` (a barrier:
every unit idle) and ends with its own, so the interpreter's per-layer cycles (end of
the layer minus end of the previous one, :mod:`report`) equal the end of this
stand-alone timeline started at 0.
"""

from __future__ import annotations

import numpy as np

from target_dlac.isa import cycles, energy
from target_dlac.isa.energy import EnergyTable
from target_dlac.isa.encoding import ACTS, DTYPES, Insn, epi_param_layout
from target_dlac.codegen.layer_weights import LayerWeights
from target_dlac.codegen.lower import Epilogue, conv_op, input_window, lower_conv, tile_dmas
from target_dlac.codegen.matmul import matmul_schedule, matmul_shape, one_segment
from target_dlac.isa.formats import facts
from target_dlac.isa.machine import Machine
from target_dlac.codegen.schedule import ConvShape, Schedule, align, channel_tiles, filter_tiles, input_tiles, ranges
from target_dlac.isa import actskip
from target_dlac.sim.timeline import Replay, replay


def _as_weights(shape: ConvShape, weights) -> LayerWeights:
    if isinstance(weights, LayerWeights):
        if shape.swis and weights.swis is None:
            raise ValueError("a SWIS layer's LayerWeights needs its SWIS decomposition (swis=...)")
        return weights
    if shape.swis:
        raise ValueError("the weights of a SWIS layer are a LayerWeights with its SWIS decomposition, "
                         "not an array")
    w = np.asarray(weights)
    if w.ndim == 2:
        w = w.reshape(*w.shape, 1, 1)
    return LayerWeights(w, shape.ternary, shape.depthwise, groups=shape.groups)


def block_counts(shape: ConvShape, sched: Schedule, weights) -> dict:
    """``{(fi, ci): (bytes, counts)}`` of the weight blocks packed under ``sched``:
    ``counts`` are what the block's conv instruction is costed by, in PE order
    (:meth:`LayerWeights.blocks`: non-zero counts for ternary, shift counts for SWIS,
    ``None`` for dense)."""
    return _as_weights(shape, weights).blocks(shape, sched)


def layer_instructions(shape: ConvShape, sched: Schedule, machine: Machine, weights, *,
                       has_scale: bool = True):
    """``(pc, instruction, counts)`` of the layer's instructions from :func:`lower_conv`
    (dummy addresses), ``counts`` those of the weight block a conv instruction reads
    (:func:`block_counts`; ``None`` for the others)."""
    info = _as_weights(shape, weights)
    blocks = block_counts(shape, sched, info)
    return [(pc, ins, None if tag is None else blocks[tag.block][1])
            for pc, (ins, tag) in enumerate(_lowered(shape, sched, machine, info, has_scale))]


def _lowered(shape: ConvShape, sched: Schedule, machine: Machine, info: LayerWeights, has_scale: bool):
    """The layer's instructions from :func:`lower_conv` (dummy addresses), each with its tag
    (:class:`ConvTag` for a conv instruction, ``None`` for the others)."""
    blocks = block_counts(shape, sched, info)
    wblock, addr = {}, 0
    for key, (nbytes, _) in blocks.items():
        wblock[key] = (addr, nbytes)
        addr = align(addr + nbytes)
    pblock = {}
    for fi, (f0, f1) in enumerate(filter_tiles(shape, sched.f_tile)):
        pbytes = epi_param_layout(f1 - f0, has_scale, DTYPES.index(shape.dtype), ACTS.index(shape.act))[2]
        pblock[fi] = (addr, pbytes)
        addr = align(addr + pbytes)
    x_addr = align(addr)
    out_addr = x_addr + align(shape.n * shape.c * shape.h * shape.w * shape.elem_bytes)
    res_addr = out_addr + align(shape.n * shape.f * shape.oh * shape.ow * shape.elem_bytes)
    epi = Epilogue(has_scale, shape.act, residual_addr=res_addr if shape.residual else None)
    insns = lower_conv(shape, sched, machine, x_addr=x_addr, out_addr=out_addr, wblock=wblock,
                       pblock=pblock, epi=epi, name="costmodel",
                       wfmt=facts(info.fmt).wfmt)
    return list(zip(insns, insns.tags))


def layer_cycles(shape: ConvShape, sched: Schedule, machine: Machine, weights, *,
                 has_scale: bool = True, acts: np.ndarray | None = None,
                 live_ratio: dict | None = None) -> dict:
    """Predicted cycles of one conv / dense layer under ``sched`` on ``machine``.

    ``weights``: a :class:`LayerWeights` (build it once per layer when costing many
    schedules; a SWIS layer's must hold its decomposition), or the OIHW array (dense:
    ``[F, K, 1, 1]`` or ``[F, K]``): ternary int8 (-1/0/+1) when ``shape.ternary``, else
    the dense float32 / int8 weights the codegen stores.  ``has_scale``: the epilogue has
    a per-filter scale (ternary and SWIS layers do; int8 mode always).  Returns
    ``{"total", "compute", "load_stall", "store_stall"}`` as the interpreter's per-layer
    report (``cycles`` and its split).

    With the machine's ``act_skip`` on, the conv instructions' cycles depend on the
    activations (:mod:`target_dlac.isa.actskip`): ``acts``, the layer's input ``[n, C, H, W]``
    of one run (as stored: any dtype, only its zeros matter), gives the interpreter's
    cycles for that input exactly; ``live_ratio`` (``{pxshift: ratio}``,
    :func:`target_dlac.tune.act_stats.live_ratios`) gives the expected cycles, each conv
    instruction costing ``compute_setup + round(ratio * (its cycles with dense activations -
    compute_setup))`` with the ratio measured on sample inputs for the schedule's PE mapping
    (1.0 for a mapping without one); with neither, the cycles of an input without zeros
    (the most any input costs)."""
    return _replay_layer(shape, sched, machine, weights, has_scale, acts, live_ratio, None)


def layer_cost(shape: ConvShape, sched: Schedule, machine: Machine, weights, *, has_scale: bool = True,
               acts: np.ndarray | None = None, live_ratio: dict | None = None,
               table: EnergyTable | None = None) -> dict:
    """:func:`layer_cycles` and the layer's energy (:mod:`target_dlac.isa.energy`): adds
    ``energy_pj`` ``{total, compute, onchip, dram, static}``, ``actions`` (the counts it is
    the sum of), ``dense_macs`` and ``pj_per_mac``, ``tops_per_w``, ``edp_js``.  With
    ``acts`` the energy is the interpreter's for that input; with ``live_ratio`` each conv
    instruction executes ``round(ratio * issued steps)`` steps and reads ``round(ratio *
    window values)`` activations, an estimate (the ratio is of the steps the skipping units
    take, at least the useful ones); with neither, every issued step and value of an input
    without zeros."""
    actions: dict = {}
    out = _replay_layer(shape, sched, machine, weights, has_scale, acts, live_ratio, actions)
    secs = machine.seconds(out["total"])
    dense = out["dense_macs"]
    out["energy_pj"] = energy.energy_pj(actions, machine, out["total"], table)
    out["actions"] = actions
    out.update(energy.efficiency(out["energy_pj"], dense, secs))
    return out


def _replay_layer(shape, sched, machine, weights, has_scale, acts, live_ratio, actions: dict | None) -> dict:
    """The layer's timeline totals; with ``actions`` (a dict) also its energy actions added
    into it and ``dense_macs`` in the result."""
    info = _as_weights(shape, weights)
    blocks = block_counts(shape, sched, info)
    lowered = _lowered(shape, sched, machine, info, has_scale)
    costs = [None] * len(lowered)
    executed = [None] * len(lowered)
    window = [None] * len(lowered)
    skipping = machine.act_skip != "none" and (acts is not None or live_ratio is not None)
    if skipping:
        masks = info.block_masks(shape, sched) if shape.ternary else {}
        for pc, (ins, tag) in enumerate(lowered):
            if tag is None:
                continue
            counts = blocks[tag.block][1]
            if acts is not None:
                tile = tile_flags(acts, ins, tag)
                nz = actskip.windows(tile, ins.f)
                order, wnz = masks.get(tag.block, (None, None))
                total, _ = actskip.conv_steps(ins, machine, nz, counts, order, wnz)
                costs[pc] = cycles.steps_cycles(ins, machine, total)
                if actions is not None:     # (the interpreter's counts: each position's non-zero reads)
                    per_k = actskip.window_counts(tile[None], ins.f)
                    shifts = cycles.shift_passes(machine, counts) if ins.op == "SACC" else None
                    executed[pc] = actskip.useful_steps(ins, nz, wnz if ins.op == "TACC" else None, shifts,
                                                        order, per_k=per_k)
                    window[pc] = int(per_k.sum())
            else:
                costs[pc] = expected_cost(cycles.cost(ins, machine, counts), machine, live_ratio, sched)
                if actions is not None:
                    ratio = live_ratio.get(sched.pxshift, 1.0)
                    executed[pc] = int(round(ratio * energy.issued_steps(ins, machine, counts)))
                    window[pc] = int(round(ratio * energy.window_values(ins)))
    r = Replay(machine)
    dense = 0
    for pc, ((ins, tag), cost) in enumerate(zip(lowered, costs)):
        counts = None if tag is None else blocks[tag.block][1]
        r.place(pc, ins, counts, cost=cost)
        if actions is not None:
            if tag is None:
                energy.add_into(actions, energy.insn_actions(ins, machine))
            else:
                energy.add_into(actions, energy.insn_actions(ins, machine, counts, blocks[tag.block][0],
                                                             executed[pc], window[pc]))
                dense += ins.f["f"] * cycles.weights_per_filter(ins) * ins.f["oh"] * ins.f["ow"]
    out = r.totals()
    if actions is not None:
        out["dense_macs"] = dense
    return out


def expected_cost(dense: int, m: Machine, live_ratio: dict, sched: Schedule) -> int:
    """A conv instruction's expected cycles from its cycles with dense activations and the
    layer's ``live_ratio`` for the schedule's PE mapping (1.0 for a mapping without one):
    ``compute_setup + round(ratio * (dense - compute_setup))``."""
    return m.compute_setup + int(round(live_ratio.get(sched.pxshift, 1.0) * (dense - m.compute_setup)))


def tile_flags(x: np.ndarray, ins: Insn, tag) -> np.ndarray:
    """``[c, h', w']`` non-zero flags of conv instruction ``ins``'s padded input tile (what
    :func:`actskip.windows` takes), from the layer's input ``x`` ``[n, C, H, W]`` and the
    instruction's tag (:class:`ConvTag`: where its tile starts)."""
    f = ins.f
    if x.ndim == 2:                         # a dense layer's [n, K]
        x = x.reshape(x.shape[0], x.shape[1], 1, 1)
    tile = x[tag.n, tag.c0:tag.c0 + f["c"], tag.ih0:tag.ih0 + f["h"], tag.iw0:tag.iw0 + f["w"]] != 0
    return np.pad(tile, ((0, 0), (f["pt"], f["pb"]), (f["pl"], f["pr"])))


def matmul_cycles(a_shape: tuple, b_shape: tuple, machine: Machine) -> dict:
    """Predicted cycles of an activation x activation matmul ``A @ B``
    (:mod:`target_dlac.codegen.matmul`): the replay of its single segment when all operands fit
    on chip (:func:`one_segment`), else per batch a dense float32 layer whose weights are the
    rows of ``A`` (their values never change a MAC's cost) with a bias-only epilogue, under
    :func:`matmul_schedule`, the batches one after another (each ends with ``SYNC``).  The
    same dict as :func:`layer_cycles`."""
    batches, m, k, n, shape = matmul_shape(tuple(a_shape), tuple(b_shape))
    fast = one_segment(batches, m, k, n, machine, a_addr=0, b_addr=0, out_addr=0, prm_addr=0)
    if fast is not None:
        return replay([(pc, ins, None) for pc, ins in enumerate(fast)], machine).totals()
    per = layer_cycles(shape, matmul_schedule(shape, machine), machine, np.zeros((m, k), np.float32),
                       has_scale=False)
    return {key: batches * v for key, v in per.items()}


def layer_lower_bound(shape: ConvShape, sched: Schedule, machine: Machine, weights, *,
                      has_scale: bool = True, skipped_acts: bool = False) -> int:
    """The interpreter's ``lower_bound_cycles`` of the layer under ``sched`` for an input
    without zeros (:func:`cycles.lower_bound` of the useful PE work and the minimum DRAM
    traffic: the input the conv touches, the packed constants, the residual; the output).
    ``skipped_acts``: a bound for every input with the machine's ``act_skip`` (an all-zero
    input skips every step: the DRAM terms alone).  Not on the search's path: the tuner
    asks it once per layer, for the table."""
    work = 0 if skipped_acts and machine.act_skip != "none" else sum(
        cycles.pe_work(ins, machine, counts)
        for _, ins, counts in layer_instructions(shape, sched, machine, weights, has_scale=has_scale)
        if ins.op in ("TACC", "MAC", "SACC"))
    out_bytes = shape.n * shape.f * shape.oh * shape.ow * shape.elem_bytes
    read = shape.min_input_bytes() + _const_bytes(shape, sched, weights, has_scale) + \
        (out_bytes if shape.residual else 0)
    return cycles.lower_bound(work, read, out_bytes, machine)


def _const_bytes(shape: ConvShape, sched: Schedule, weights, has_scale: bool) -> int:
    """Bytes of the layer's packed weight and epilogue parameter blocks under ``sched``."""
    info = _as_weights(shape, weights)
    wb = sum(nb for nb, _ in info.blocks(shape, sched).values())
    return wb + sum(epi_param_layout(f1 - f0, has_scale, DTYPES.index(shape.dtype), ACTS.index(shape.act))[2]
                    for f0, f1 in filter_tiles(shape, sched.f_tile))


def cycles_lower_bound(shape: ConvShape, sched: Schedule, machine: Machine, weights, *,
                       has_scale: bool = True, live_ratio: dict | None = None) -> int:
    """A cheap lower bound on ``layer_cycles(...)["total"]`` (no instruction stream, no
    timeline), for pruning a search: each unit runs its instructions in order, so the
    layer takes at least as long as the busiest unit's own work:

    * compute: every conv instruction (one per image x spatial tile x weight block) and
      every epilogue (one per image x spatial tile x filter tile), costed exactly by
      :func:`cycles.cost`;
    * load: every weight and parameter block once, every input tile (image x spatial
      tile x channel tile) once, every residual tile once (reloads only add);
    * store: every output tile once (exact).

    It depends on the tiling, PE order and PE mapping only, not on the loop order or
    double buffering.  ``tests/tune/test_costmodel.py`` checks it never exceeds the exact count.
    ``live_ratio``: as :func:`layer_cycles` (a bound on its expected cycles: each conv
    instruction costed as there)."""
    info = _as_weights(shape, weights)
    m, eb, dt, act = machine, shape.elem_bytes, DTYPES.index(shape.dtype), ACTS.index(shape.act)
    sp = [(hr, wr) for hr in ranges(shape.oh, sched.h_tile) for wr in ranges(shape.ow, sched.w_tile)]
    ftiles = filter_tiles(shape, sched.f_tile)
    op = conv_op(shape)
    tile_shapes: dict = {}                      # (oh, ow) -> spatial tiles of that shape
    for (h0, h1), (w0, w1) in sp:
        tile_shapes[(h1 - h0, w1 - w0)] = tile_shapes.get((h1 - h0, w1 - w0), 0) + 1
    compute = 0
    blocks = block_counts(shape, sched, info)
    for (fi, ci), (nbytes, counts) in blocks.items():
        c0, c1 = channel_tiles(shape, sched, ftiles[fi])[ci]
        f0, f1 = ftiles[fi]
        for (oh, ow), k in tile_shapes.items():
            ins = Insn(op, dict(f=f1 - f0, c=c1 - c0, kh=shape.kh, kw=shape.kw, oh=oh, ow=ow,
                                depthwise=int(shape.depthwise), dtype=dt, pxshift=sched.pxshift))
            cost = cycles.cost(ins, m, counts)
            if live_ratio is not None and m.act_skip != "none":
                cost = expected_cost(cost, m, live_ratio, sched)
            compute += k * cost
    for f0, f1 in ftiles:
        for (oh, ow), k in tile_shapes.items():
            compute += k * cycles.cost(Insn("EPI", dict(f=f1 - f0, p=oh * ow, dtype=dt, act=act)), m)
    const_load = sum(cycles.dma_cycles(nb, m) for nb, _ in blocks.values())
    const_load += sum(cycles.dma_cycles(epi_param_layout(f1 - f0, has_scale, dt, act)[2], m) for f0, f1 in ftiles)
    load = store = 0                            # per image
    in_ctiles = input_tiles(shape, sched)       # depthwise: the filter tiles; grouped: every group's
    for oh_r, ow_r in sp:
        (ih0, ih1, _, _), (iw0, iw1, _, _) = input_window(shape, oh_r, ow_r)
        for cr in in_ctiles:
            load += _dma_sum(tile_dmas(0, (shape.c, shape.h, shape.w), cr, (ih0, ih1), (iw0, iw1), 0, eb), m)
        for fr in ftiles:
            out = _dma_sum(tile_dmas(0, (shape.f, shape.oh, shape.ow), fr, oh_r, ow_r, 0, eb), m)
            store += out
            if shape.residual:
                load += out
    return max(shape.n * compute, const_load + shape.n * load, shape.n * store)


def _dma_sum(dmas: list, m: Machine) -> int:
    return sum(cycles.dma_cycles(d["y"] * d["x"], m) for d in dmas)
