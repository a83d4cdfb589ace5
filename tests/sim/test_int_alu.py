"""The int8 mode of the ALU, run by the interpreter on tiny hand-written programs and
compared for EXACT equality with independent references (Python integers / float64, not
the interpreter's NumPy vectorization): int8 add / add_relu / relu, quantize / dequantize
and the exponent range.  The conv, EPI and POOL families are in tests/sim/test_int_ops.py;
the exact definitions are those of :mod:`target_dlac.codegen.modes.intmath`.  NumPy only."""

from __future__ import annotations

import numpy as np
import pytest

from target_dlac.core.errors import ExecutionError
from target_dlac.sim.interpreter import run
from target_dlac.isa.encoding import ALU_OPS, EXP_BIAS, Insn
from tests.isa_programs import HALT, SYNC, fields, load, store
from tests.sim.test_int_ops import INT8, Dram, clamp, i8, rshift_round

# ---- ALU: int8 add / add_relu / relu ---------------------------------------------------

@pytest.mark.parametrize("op", ["add", "add_relu", "relu"])
@pytest.mark.parametrize("sa,sb,shift", [(1, 1, 1), (3, 1, 2), (0, 5, 5), (2, 0, 0), (9, 7, 9)])
def test_alu_int8(op, sa, sb, shift):
    rng = np.random.default_rng(15)
    n = 41
    a, b = i8(rng, n), i8(rng, n)
    a[:4] = [127, -128, 127, -128]
    b[:4] = [127, -128, -128, 1]
    d = Dram()
    at, bt, yt = d.tensor("a", "input", (n,)), d.tensor("b", "input", (n,)), d.tensor("y", "output", (n,))
    alu = Insn("ALU", fields("ALU", a=0, b=400, op=ALU_OPS.index(op), dst=800, n=n, dtype=INT8,
                             sa=sa, sb=sb, shift=shift), pop_prev=1, push_next=1)
    insns = [load("INP", 0, at.addr, n), load("INP", 400, bt.addr, n, push_next=1), alu,
             store("ACC", 800, yt.addr, n, pop_prev=1), SYNC, HALT]
    out, _ = run(d.program(insns), {"a": a, "b": b})
    if op == "relu":
        exp = [max(int(v), 0) for v in a]
    else:
        lo = 0 if op == "add_relu" else -128
        exp = [clamp(rshift_round(int(u) * 2 ** sa + int(v) * 2 ** sb, shift), lo, 127)
               for u, v in zip(a, b)]
    assert out["y"].dtype == np.int8
    np.testing.assert_array_equal(out["y"], np.array(exp, np.int8))


# ---- ALU: quantize / dequantize ------------------------------------------------------------

def _alu_convert(op, a, exp_field, out_dtype):
    n = len(a)
    d = Dram()
    at = d.tensor("a", "input", (n,), "float32" if op == "quantize" else "int8")
    yt = d.tensor("y", "output", (n,), out_dtype)
    alu = Insn("ALU", fields("ALU", a=0, op=ALU_OPS.index(op), dst=1024, n=n, exp=exp_field,
                             dtype=INT8))
    nbytes = n * (4 if op == "quantize" else 1)
    insns = [load("INP", 0, at.addr, nbytes), SYNC, alu, SYNC,
             store("ACC", 1024, yt.addr, n * (1 if op == "quantize" else 4)), SYNC, HALT]
    return run(d.program(insns), {"a": a})[0]["y"]


def quantize_ref(a: np.ndarray, exp: int) -> np.ndarray:
    """clip(floor(a * 2^exp + 0.5), -128, 127), evaluated in float32 as specified, one
    element at a time with Python's math on the float32-rounded intermediate."""
    out = []
    for v in a.tolist():
        scaled = np.float32(np.float32(v) * np.float32(2.0 ** exp))
        t = float(np.float32(scaled + np.float32(0.5)))
        assert not np.isnan(t)
        q = 127 if t == float("inf") else -128 if t == float("-inf") else int(np.floor(t))
        out.append(clamp(q, -128, 127))
    return np.array(out, np.int8)


@pytest.mark.parametrize("exp", [0, 3, 7, -2, -9, 30, -30, 64, -64])
def test_alu_quantize(exp):
    rng = np.random.default_rng(16)
    s = 2.0 ** -exp                 # one unit of the int8 grid in real terms
    edges = np.array([126.5, 127.0, 127.49, 127.5, 128.0, 1e9, -127.5, -128.0, -128.49, -128.5,
                      -128.51, -129.0, -1e9, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.0, -0.0,
                      0.49999997, -0.49999997, np.inf, -np.inf], np.float64)
    a = np.concatenate([edges * s, rng.uniform(-140, 140, 40) * s]).astype(np.float32)
    q = _alu_convert("quantize", a, exp + EXP_BIAS, "int8")
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, quantize_ref(a, exp))
    # the ties and edges, spelled out (all exactly representable after scaling)
    head = dict(zip(edges.tolist(), q[:len(edges)].tolist()))
    assert head[127.5] == 127 and head[126.5] == 127 and head[-128.5] == -128
    assert head[-128.51] == -128 and head[-129.0] == -128 and head[1e9] == 127 and head[-1e9] == -128
    assert (head[0.5], head[-0.5], head[1.5], head[-1.5], head[2.5], head[-2.5]) == (1, 0, 2, -1, 3, -2)
    assert head[np.inf] == 127 and head[-np.inf] == -128


@pytest.mark.parametrize("exp", [0, 4, 7, -3, -20, 64, -64])
def test_alu_dequantize(exp):
    q = np.concatenate([np.array([-128, -127, -1, 0, 1, 126, 127], np.int8),
                        np.arange(-128, 128, 5).astype(np.int8)])
    y = _alu_convert("dequantize", q, exp + EXP_BIAS, "float32")
    assert y.dtype == np.float32
    exact = [int(v) * 2.0 ** -exp for v in q.tolist()]           # Python floats: exact
    assert [float(v) for v in y.tolist()] == exact
    assert y[0] == np.float32(-128 * 2.0 ** -exp) and y[6] == np.float32(127 * 2.0 ** -exp)


def test_quantize_dequantize_round_trip():
    """dequantize(quantize(v)) == v for every v on the int8 grid of the exponent."""
    exp = 5
    grid = np.arange(-128, 128).astype(np.float32) * np.float32(2.0 ** -exp)
    q = _alu_convert("quantize", grid, exp + EXP_BIAS, "int8")
    np.testing.assert_array_equal(q, np.arange(-128, 128).astype(np.int8))
    back = _alu_convert("dequantize", q, exp + EXP_BIAS, "float32")
    np.testing.assert_array_equal(back, grid)


@pytest.mark.parametrize("op", ["quantize", "dequantize"])
@pytest.mark.parametrize("exp", [65, -65, 127, -128])
def test_alu_exponent_out_of_range(op, exp):
    a = np.zeros(4, np.float32 if op == "quantize" else np.int8)
    with pytest.raises(ExecutionError, match=f"exponent {exp} is outside") as ei:
        _alu_convert(op, a, exp + EXP_BIAS, "int8" if op == "quantize" else "float32")
    assert ei.value.pc == 2
