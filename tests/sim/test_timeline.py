"""The interpreter's timeline on tiny hand-written programs: double buffering overlaps
load and compute, a missing token is a race, a pop without a push a deadlock, exact cycle
counts; and the run-time bounds checks (the pc and the buffer named).  NumPy only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.isa import cycles
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import Insn
from tests.isa_programs import HALT, SYNC, Dram, M, conv, conv_ref, fields, ints, load, store


def _pipeline(double_buffered: bool):
    """4 input tiles through one MAC layer.  Double-buffered: two INP slots, tokens let
    the load of tile i+1 overlap the MAC of tile i.  Otherwise: SYNC after everything."""
    rng = np.random.default_rng(7)
    T, C, F, h, w = 4, 2, 4, 6, 6
    wt = ints(rng, (F, C, 3, 3), -3, 3)
    x = ints(rng, (T, C, h, w))
    d = Dram()
    wa = d.const(wt.tobytes())
    xt, yt = d.tensor("x", "input", x.shape), d.tensor("y", "output", (T, F, h * w))
    tile, otile = C * h * w * 4, F * h * w * 4
    slots = [0, 4096]
    L = [load("INP", slots[i % 2], xt.addr + i * tile, tile) for i in range(T)]
    Cx = [conv("MAC", slots[i % 2], 0, i * otile, C, h, w, F, 3, 3, pads=(1, 1, 1, 1)) for i in range(T)]
    LW = load("WGT", 0, wa, wt.nbytes)
    ST = store("ACC", 0, yt.addr, T * otile)
    if double_buffered:
        for i in range(T):
            L[i].push_next = 1
            Cx[i].pop_prev = 1
            if i + 2 < T:
                Cx[i].push_prev = 1
                L[i + 2].pop_next = 1
        insns = [LW, L[0], L[1], Cx[0], L[2], Cx[1], L[3], Cx[2], Cx[3], SYNC, ST, SYNC, HALT]
    else:
        insns = [LW, SYNC]
        for i in range(T):
            insns += [L[i], SYNC, Cx[i], SYNC]
        insns += [ST, SYNC, HALT]
    ref = np.stack([conv_ref(x[i], wt, 1, 1, (1, 1, 1, 1)).reshape(F, -1) for i in range(T)])
    return d.program(insns), x, ref.astype(np.float32)


def test_double_buffering_overlaps():
    p, x, ref = _pipeline(True)
    out, rep = run(p, {"x": x})
    np.testing.assert_array_equal(out["y"], ref)
    work = sum(cycles.cost(i, M) for i in p.insns if i.unit != "barrier")
    lw, ld, mac, st = (cycles.cost(p.insns[k], M) for k in (0, 1, 3, 10))
    assert (lw, ld, mac, st) == (105, 105, 62, 136)   # 288 B, 288 B, 3 passes x 18, 2304 B
    # by hand: L0 105-210, L1 210-315, C0 210-272, L2 315-420, C1 315-377, L3 420-525,
    # C2 420-482, C3 525-587, SYNC -588, STORE -724, SYNC -725
    assert rep.cycles["total"] == 725
    assert rep.cycles["total"] < work

    ps, _, _ = _pipeline(False)
    out_s, rep_s = run(ps, {"x": x})
    np.testing.assert_array_equal(out_s["y"], ref)
    nsync = sum(1 for i in ps.insns if i.op == "SYNC")
    assert rep_s.cycles["total"] == work + nsync      # serialized: exactly the sum of costs


def _race_program(kind: str, tokens: bool):
    rng = np.random.default_rng(8)
    wt = ints(rng, (2, 1, 1, 1), -2, 2)
    d = Dram()
    wa = d.const(wt.tobytes())
    wb = d.const((wt + 1).tobytes())
    xt, yt = d.tensor("x", "input", (1, 4, 4)), d.tensor("y", "output", (2, 16))
    mac = conv("MAC", 0, 0, 0, 1, 4, 4, 2, 1, 1)
    pre = [load("WGT", 0, wa, 8), load("INP", 0, xt.addr, 64), SYNC]
    if kind == "load overwrites weights":
        reload = load("WGT", 0, wb, 8)
        if tokens:
            mac.push_prev, reload.pop_next = 1, 1
        insns = pre + [mac, reload, SYNC, store("ACC", 0, yt.addr, 128), SYNC, HALT]
    else:   # "store reads an accumulator being written"
        st_ = store("ACC", 0, yt.addr, 128)
        if tokens:
            mac.push_next, st_.pop_prev = 1, 1
        insns = pre + [mac, st_, SYNC, HALT]
    return d.program(insns), {"x": ints(rng, (1, 4, 4))}


@pytest.mark.parametrize("kind", ["load overwrites weights", "store reads an accumulator being written"])
def test_missing_token_is_a_race(kind):
    p, inputs = _race_program(kind, tokens=True)
    run(p, inputs)                                     # with the token: fine
    p, inputs = _race_program(kind, tokens=False)
    with pytest.raises(ExecutionError, match="race") as ei:
        run(p, inputs)
    assert ei.value.pc == 4 and "pc 3" in str(ei.value)
    run(p, inputs, check_races=False)                  # the check is what refuses it


@pytest.mark.parametrize("kind", ["load overwrites weights", "store reads an accumulator being written"])
def test_race_check_after_the_fact_gives_the_same_error(kind):
    """Later runs of one Interpreter check races only when their steps differ from the
    checked run's (Timeline.check_steps, afterwards): the same verdict and message."""
    from target_dlac.sim.interpreter import Interpreter
    from target_dlac.sim.timeline import Timeline

    p, inputs = _race_program(kind, tokens=False)
    with pytest.raises(ExecutionError, match="race") as online:
        run(p, inputs)
    recorded = Interpreter(p, check_races=False)
    recorded.check_races = True                 # record the steps, but do not check them
    recorded._race_signature = []               # (a signature no run has: forces the replay)
    with pytest.raises(ExecutionError, match="race") as later:
        recorded.run(inputs)
    assert str(later.value) == str(online.value) and later.value.pc == online.value.pc
    ok, ok_inputs = _race_program(kind, tokens=True)
    it = Interpreter(ok)
    first = it.run(ok_inputs)
    second = it.run(ok_inputs)                  # deferred: same steps, no race, same report
    assert first[1].to_dict() == second[1].to_dict()
    tl = Timeline(False, record=True)
    assert tl.signature() == [] and Timeline.check_steps([]) is None


@pytest.mark.parametrize("ins", [
    conv("MAC", 0, 0, 0, 1, 4, 4, 2, 1, 1, pop_prev=1),   # no LOAD pushed
    store("ACC", 0, 0, 16, pop_prev=1),                 # no compute pushed
    load("INP", 0, 0, 16, pop_next=1),                  # no compute pushed back
])
def test_pop_without_push_is_deadlock(ins):
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="deadlock") as ei:
        run(d.program([SYNC, ins, SYNC, HALT]), {})
    assert ei.value.pc == 1


def test_unconsumed_token_at_barrier():
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="unconsumed tokens") as ei:
        run(d.program([load("INP", 0, 0, 16, push_next=1), SYNC, HALT]), {})
    assert ei.value.pc == 1


@pytest.mark.parametrize("nbytes", [1, 64, 1000, 4096])
def test_single_load_cycles(nbytes):
    d = Dram()
    d.const(bytes(range(256)) * 16)
    d.tensor("y", "output", (4,))
    _, rep = run(d.program([load("INP", 0, 0, nbytes), SYNC, HALT]), {})
    assert rep.cycles["total"] == M.dma_latency + math.ceil(nbytes / M.dram_bytes_per_cycle) + 1


def test_missing_halt():
    d = Dram()
    d.tensor("y", "output", (4,))
    with pytest.raises(ExecutionError, match="without HALT"):
        run(d.program([SYNC]), {})


# ---- bounds -------------------------------------------------------------------------------

def _bounds_cases():
    f = lambda opcode, **kw: Insn(opcode, fields(opcode, **kw))  # noqa: E731
    return {
        "LOAD into INP": (load("INP", M.inp_bytes - 4, 0, 8), "INP"),
        "LOAD from DRAM": (load("WGT", 0, 1000, 64), "DRAM"),
        "strided LOAD rows": (load("ACC", M.acc_bytes - 100, 0, 8, y=3, sram_stride=48), "ACC"),
        "STORE from ACC": (store("ACC", M.acc_bytes, 0, 4), "ACC"),
        "STORE into DRAM": (store("INP", 0, 1020, 8), "DRAM"),
        "MAC accumulator": (conv("MAC", 0, 0, M.acc_bytes - 4, 1, 2, 2, 1, 1, 1), "ACC"),
        "MAC input tile": (conv("MAC", M.inp_bytes - 8, 0, 0, 1, 2, 2, 1, 1, 1), "INP"),
        "MAC weights": (conv("MAC", 0, M.wgt_bytes - 4, 0, 2, 2, 2, 1, 1, 1), "WGT"),
        "TACC block header": (conv("TACC", 0, M.wgt_bytes - 4, 0, 1, 2, 2, 2, 1, 1), "WGT"),
        "EPI params": (f("EPI", acc=0, dst=0, prm=M.wgt_bytes - 4, f=2, p=1), "WGT"),
        "EPI residual": (f("EPI", acc=0, dst=0, prm=0, has_res=1, res=M.inp_bytes - 4, f=2, p=1), "INP"),
        "POOL source": (f("POOL", src=M.inp_bytes - 12, dst=0, c=1, h=2, w=2, oh=1, ow=1, kh=2, kw=2,
                          sh=1, sw=1), "INP"),
        "ALU output": (f("ALU", a=0, b=0, dst=M.acc_bytes - 8, n=4), "ACC"),
        "ALU operand b": (f("ALU", a=0, b=M.inp_bytes, dst=0, n=1), "INP"),
    }


@pytest.mark.parametrize("case", sorted(_bounds_cases()))
def test_out_of_bounds_names_pc_and_buffer(case):
    ins, buf = _bounds_cases()[case]
    d = Dram()
    d.tensor("y", "output", (4,))
    p = d.program([SYNC, ins, SYNC, HALT])
    p.meta["dram_bytes"] = 1024
    with pytest.raises(ExecutionError) as ei:
        run(p, {})
    msg = str(ei.value)
    assert ei.value.pc == 1 and msg.startswith("pc 1 (")
    assert f"outside {buf}" in msg or f"past {buf}" in msg, msg


@pytest.mark.parametrize("double_buffered", [True, False])
def test_interpreter_and_replay_place_alike(double_buffered):
    """The interpreter places its instructions with :class:`timeline.Replay` (the cost
    model too): replaying a MAC-only program (no counts) outside the interpreter gives the
    report's cycles and split exactly, and the dense-equivalent replay (TACC / SACC costed
    as MAC: :func:`timeline.dense_cost`) the same, there being nothing to skip."""
    from target_dlac.sim.timeline import dense_cost, replay

    p, x, _ = _pipeline(double_buffered)
    _, rep = run(p, {"x": x})
    steps = [(pc, ins, None) for pc, ins in enumerate(p.insns)]
    assert replay(steps, M).totals() == rep.cycles
    assert replay(steps, M, dense_cost).totals() == rep.cycles
    tacc = conv("TACC", 0, 0, 0, 2, 6, 6, 4, 3, 3)
    assert dense_cost(tacc, M, np.zeros(4, np.int64)) == cycles.dense_cycles(tacc, M) > \
        cycles.cost(tacc, M, np.zeros(4, np.int64))
