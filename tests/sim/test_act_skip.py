"""Zero-activation skipping (machine parameter ``act_skip``, docs/isa.md "Activation zero-skip").

* each granularity's step formula (:func:`actskip.step_matrix` + :func:`cycles.steps_cycles`)
  equals a brute-force walk of the PE array, pass by pass, filter group by filter group,
  step by step, on small random tiles of every conv form;
* without zeros the formula is the weight-only cost exactly; skipping never changes a value
  (fp32, fp16, int8: the outputs of the MNIST CNN are bit-identical with it on and off);
* an all-zero input costs far fewer cycles than a dense positive one, which costs exactly
  what it costs without skipping; the report's bound stays below the run's cycles.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from target_dlac.core.errors import BinaryFormatError, ConfigError
from target_dlac.isa import actskip, cycles
from target_dlac.isa.encoding import Insn
from target_dlac.isa.machine import Machine

GRANULARITIES = ("column", "pe")


def _insn(op, c, kh, kw, oh, ow, nf, depthwise=False, dtype=0, pxshift=0):
    return Insn(op, dict(f=nf, c=c, kh=kh, kw=kw, oh=oh, ow=ow, h=oh + kh - 1, w=ow + kw - 1, sh=1, sw=1,
                         pt=0, pb=0, pl=0, pr=0, depthwise=int(depthwise), dtype=dtype, wfmt=0,
                         pxshift=pxshift, accumulate=0, inp=0, wgt=0, acc=0))


def _brute(ins, m, nz, gran, wnz=None, shift_passes=None):
    """Cycles by walking the array: pass by pass, group by group, each filter's steps in
    order (a step = one weight, SACC: one 4-channel group for its shift passes), each unit
    checking the activations it reads at the step."""
    f = ins.f
    rows, ncols = cycles.grid(ins, m)
    lanes = cycles.lanes(ins, m)
    c, kk, p = nz.shape
    nf = f["f"]
    per_pass = rows * lanes
    total = m.compute_setup
    for i in range(-(-p // per_pass)):
        units = [[i * per_pass + r * lanes + l for l in range(lanes)] for r in range(rows)]
        units = [[q for q in u if q < p] for u in units]
        if gran == "column":
            units = [[q for u in units for q in u]]
        for g0 in range(0, nf, ncols):
            group_cost = 0
            for fi in range(g0, min(nf, g0 + ncols)):
                worst = 0
                for u in units:
                    steps = 0
                    if ins.op == "SACC":
                        for cg in range(0, c, 4):
                            for k in range(kk):
                                if any(nz[ch, k, q] for ch in range(cg, min(c, cg + 4)) for q in u):
                                    steps += shift_passes[fi]
                    else:
                        chans = [fi] if f["depthwise"] else range(c)
                        for j, (ch, k) in enumerate(itertools.product(chans, range(kk))):
                            if ins.op == "TACC" and not wnz[fi, j]:
                                continue
                            if any(nz[ch, k, q] for q in u):
                                steps += 1
                    worst = max(worst, steps)
                group_cost = max(group_cost, worst)
            total += group_cost
    return total


CASES = [  # op, c, kh, kw, oh, ow, filters, depthwise, dtype (1: fp16 = 2 lanes), pxshift
    ("TACC", 3, 3, 3, 5, 7, 6, False, 0, 0),
    ("TACC", 2, 1, 1, 9, 4, 9, False, 1, 1),
    ("MAC", 3, 2, 2, 4, 6, 5, False, 0, 0),
    ("MAC", 4, 3, 3, 3, 3, 4, True, 0, 1),
    ("TACC", 5, 3, 3, 4, 5, 5, True, 1, 0),
    ("SACC", 6, 3, 3, 4, 6, 7, False, 0, 0),
    ("SACC", 9, 1, 1, 7, 3, 5, False, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}_c{c[1]}_k{c[2]}{'_dw' if c[7] else ''}_d{c[8]}")
@pytest.mark.parametrize("gran", GRANULARITIES)
def test_step_formula_equals_brute_force(case, gran):
    op, c, kh, kw, oh, ow, nf, dw, dtype, px = case
    m = Machine(pe_rows=4, pe_cols=2, act_skip=gran)
    ins = _insn(op, c, kh, kw, oh, ow, nf, dw, dtype, px)
    rng = np.random.default_rng(sum(map(ord, op)) + c * 7 + nf)
    k = kh * kw * (1 if dw else c)
    for density in (0.0, 0.1, 0.5, 1.0):
        nz = rng.random((c, kh * kw, oh * ow)) < density
        wnz = rng.random((nf, k)) < 0.6 if op == "TACC" else None
        shifts = rng.integers(1, 4, nf) if op == "SACC" else None
        total, acts = actskip.step_matrix(ins, nz, cycles.grid(ins, m)[0], cycles.lanes(ins, m), gran,
                                          wnz, shifts)
        assert cycles.steps_cycles(ins, m, total) == _brute(ins, m, nz, gran, wnz, shifts), density
        dense_ins = Insn("MAC", ins.f)
        assert cycles.steps_cycles(ins, m, acts) == _brute(dense_ins, m, nz, gran), density
        if density == 1.0:          # no zeros: the weight-only cost exactly
            counts = wnz.sum(axis=1) if op == "TACC" else shifts
            static = cycles.cost(ins, m, counts)
            assert cycles.steps_cycles(ins, m, total) == static
            assert cycles.steps_cycles(ins, m, acts) == cycles.dense_cycles(ins, m)
        if density == 0.0:
            assert cycles.steps_cycles(ins, m, total) == m.compute_setup


def test_pe_skips_at_least_what_column_skips():
    rng = np.random.default_rng(3)
    ins = _insn("TACC", 8, 3, 3, 8, 8, 40)
    m = Machine(pe_rows=4, pe_cols=8)
    nz = rng.random((8, 9, 64)) < 0.3
    wnz = rng.random((40, 72)) < 0.5
    got = {g: cycles.steps_cycles(ins, m, actskip.step_matrix(ins, nz, 4, 1, g, wnz)[0]) for g in GRANULARITIES}
    assert m.compute_setup < got["pe"] < got["column"] < cycles.cost(ins, m, wnz.sum(axis=1))


def test_useful_steps_counts_nonzero_products():
    rng = np.random.default_rng(4)
    ins = _insn("TACC", 3, 3, 3, 4, 4, 5)
    nz = rng.random((3, 9, 16)) < 0.4
    wnz = rng.random((5, 27)) < 0.5
    brute = sum(int(wnz[f, j]) * int(nz.reshape(27, 16)[j, p]) for f in range(5) for j in range(27)
                for p in range(16))
    assert actskip.useful_steps(ins, nz, wnz) == brute
    mac = Insn("MAC", ins.f)
    assert actskip.useful_steps(mac, nz) == 5 * int(nz.sum())


def test_machine_parameter():
    assert Machine().act_skip == "column"
    with pytest.raises(ConfigError, match="act_skip='rows'.*none, column, pe"):
        Machine(act_skip="rows")
    with pytest.raises(ConfigError, match="act_skip"):
        Machine.from_dict({"act_skip": 1})
    assert Machine(act_skip="pe").hash() != Machine().hash() != Machine(act_skip="none").hash()


def test_binary_without_act_skip_reads_as_none():
    """A binary written before the parameter existed (no ``act_skip`` in MACHINE) keeps its
    hash and runs without activation skipping, as it was costed; a section naming another
    granularity does not match that hash."""
    import json

    from target_dlac.binary.container import _json, encode, from_bytes, pack_sections
    from tests.container_helpers import make_program

    legacy_machine = Machine(pe_rows=4, pe_cols=8, dram_mib=1, act_skip="none")
    p = make_program(legacy_machine)

    def blob(machine_dict):
        return pack_sections({"MACHINE": _json(machine_dict), "INSTS": encode(p.insns),
                              "CONSTS": bytes(p.constants), "TENSORS": _json([t.to_dict() for t in p.tensors]),
                              "META": _json(p.meta)}, bytes.fromhex(legacy_machine.hash()))

    old = {k: v for k, v in legacy_machine.to_dict().items() if k != "act_skip"}
    assert from_bytes(blob(old)).machine == legacy_machine
    with pytest.raises(BinaryFormatError, match="does not match the hash"):
        from_bytes(blob(dict(old, act_skip="column")))
    assert json.loads(_json(old))["pe_rows"] == 4


@pytest.mark.parametrize("gran", GRANULARITIES)
def test_depthwise_channels_follow_the_pe_order(gran):
    """A depthwise TACC's PE column ``j`` holds filter ``order[j]``, which reads channel
    ``order[j]``: the step counts are the brute force's on the channels in that order."""
    m = Machine(pe_rows=4, pe_cols=2, act_skip=gran)
    ins = _insn("TACC", 6, 3, 3, 5, 5, 6, depthwise=True)
    rng = np.random.default_rng(9)
    nz = rng.random((6, 9, 25)) < 0.3
    nz[2] = nz[4] = False                           # two silent channels
    order = np.array([3, 0, 5, 2, 1, 4])
    wnz = rng.random((6, 9)) < 0.7                  # in PE order
    total, _ = actskip.step_matrix(ins, nz, 4, 1, gran, wnz, order=order)
    assert cycles.steps_cycles(ins, m, total) == _brute(ins, m, nz[order], gran, wnz)
    assert cycles.steps_cycles(ins, m, total) != cycles.steps_cycles(
        ins, m, actskip.step_matrix(ins, nz, 4, 1, gran, wnz)[0])


def test_row_counts_equal_numpy_sum():
    rng = np.random.default_rng(5)
    for p in (1, 7, 63, 64, 65, 196, 3136):
        flags = rng.random((5, p)) < 0.37
        assert np.array_equal(actskip.row_counts(flags), flags.sum(axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_window_counts_equal_the_windows_flags_counted(seed):
    """The summed-tap counts equal ``row_counts(windows(x) != 0)`` for every kernel, stride,
    tile margin and batch shape; a 1x1 tile (a dense layer) and a tile large enough for the
    two-product path included."""
    rng = np.random.default_rng(seed)
    cases = [(1, 1, 1, 1, 1, 1, 0, 0), (1, 1, 2, 2, 1, 1, 0, 0), (7, 7, 2, 2, 9, 40, 1, 0),
             (3, 3, 1, 1, 200, 180, 0, 1)]
    cases += [tuple(int(v) for v in (*rng.integers(1, 6, 2), *rng.integers(1, 4, 2), *rng.integers(1, 12, 2),
                                     *rng.integers(0, 3, 2))) for _ in range(40)]
    for kh, kw, sh, sw, oh, ow, mh, mw in cases:
        h, w = (oh - 1) * sh + kh + mh, (ow - 1) * sw + kw + mw
        f = dict(kh=kh, kw=kw, sh=sh, sw=sw, oh=oh, ow=ow)
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        x[rng.random(x.shape) < 0.6] = 0
        want = actskip.row_counts((actskip.windows(x, f) != 0).reshape(2, -1, oh * ow))
        got = actskip.window_counts(x != 0, f)
        assert got.dtype == np.int64 and np.array_equal(got, want), (f, h, w)


def test_one_pass_live_flags_are_the_pixels_or():
    rng = np.random.default_rng(2)
    for p in (1, 5, 16):
        nz = rng.random((3, 7, p)) < 0.2
        live = actskip.unit_live(nz, 16, 1, "column")
        assert live.shape == (3, 7, 1, 1)
        assert np.array_equal(live[..., 0, 0], nz.any(axis=-1))
        padded = np.zeros((3, 7, 32), bool)
        padded[..., :p] = nz
        assert np.array_equal(actskip.unit_live(padded, 16, 1, "column")[..., :1, :], live)


def test_row_nonzeros_count_each_input():
    from target_dlac.sim.kernels import _row_nonzeros

    rng = np.random.default_rng(4)
    for shape in ((1, 1), (3, 7), (2, 8), (4, 3, 5, 13), (2, 64, 9, 9)):
        flags = rng.random(shape) < 0.4
        want = [np.count_nonzero(row) for row in flags]
        assert _row_nonzeros(flags).tolist() == want
