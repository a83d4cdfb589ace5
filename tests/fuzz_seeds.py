"""Seed binaries of the fuzzers (tests/security/test_fuzz_binaries.py, tools/bench/fuzz_binaries.py):
five small hand-written programs (TACC, MAC, POOL, ALU, the int8 EPI path) and, built on
demand (torch + TVM), the MNIST CNN.  A plain module: no tests."""

from __future__ import annotations

import numpy as np

from target_dlac.binary.container import to_bytes
from target_dlac.isa.encoding import ACTS, ALU_OPS, Insn
from target_dlac.binary.program import Program
from tests.container_helpers import make_program
from tests.isa_programs import HALT, SMALL, SYNC, Dram, conv, fields, load, out_hw, store


# ---- seeds --------------------------------------------------------------------------------------

def _mac_program() -> Program:
    rng = np.random.default_rng(3)
    C, h, w, kh, kw, sh, sw, pads = 4, 6, 7, 2, 3, 1, 2, (1, 0, 2, 1)
    F = 3
    wt = rng.integers(-4, 5, (F, C, kh, kw)).astype(np.float32)
    oh, ow = out_hw(h, w, kh, kw, sh, sw, pads)
    d = Dram()
    wa = d.const(wt.tobytes())
    xt, yt = d.tensor("x", "input", (C, h, w)), d.tensor("y", "output", (F, oh, ow))
    insns = [load("WGT", 256, wa, wt.nbytes), load("INP", 512, xt.addr, C * h * w * 4), SYNC,
             conv("MAC", 512, 256, 1024, C, h, w, F, kh, kw, sh, sw, pads), SYNC,
             store("ACC", 1024, yt.addr, F * oh * ow * 4), SYNC, HALT]
    return d.program(insns)


def _pool_program() -> Program:
    c, h, w, kh, kw, sh, sw, (pt, pb, pl, pr) = 3, 7, 6, 3, 3, 2, 2, (1, 1, 1, 1)
    oh, ow = out_hw(h, w, kh, kw, sh, sw, (pt, pb, pl, pr))
    d = Dram()
    xt, yt = d.tensor("x", "input", (c, h, w)), d.tensor("y", "output", (c, oh, ow))
    pool = Insn("POOL", fields("POOL", src=16, dst=32, mode=1, count_pad=0, c=c, h=h, w=w, oh=oh,
                               ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr),
                pop_prev=1, push_next=1)
    insns = [load("INP", 16, xt.addr, c * h * w * 4, push_next=1), pool,
             store("ACC", 32, yt.addr, c * oh * ow * 4, pop_prev=1), SYNC, HALT]
    return d.program(insns)


def _alu_program() -> Program:
    n = 37
    d = Dram()
    at, bt, yt = d.tensor("a", "input", (n,)), d.tensor("b", "input", (n,)), d.tensor("y", "output", (n,))
    alu = Insn("ALU", fields("ALU", a=0, b=400, op=ALU_OPS.index("add_relu"), dst=800, n=n),
               pop_prev=1, push_next=1)
    insns = [load("INP", 0, at.addr, n * 4), load("INP", 400, bt.addr, n * 4, push_next=1), alu,
             store("ACC", 800, yt.addr, n * 4, pop_prev=1), SYNC, HALT]
    return d.program(insns)


def _int8_program() -> Program:
    """ALU quantize -> int8 EPI (scale, bias, residual, clip) -> ALU dequantize."""
    F, P = 2, 8
    n = F * P
    d = Dram()
    mult = np.array([3, 5], "<i4").tobytes()
    bias = np.array([7, -9], "<i8").tobytes()
    prm = d.const(mult + bias)                           # M at 0, B at 8 (8-aligned)
    xt, yt = d.tensor("x", "input", (n,)), d.tensor("y", "output", (n,))
    insns = [load("INP", 0, xt.addr, n * 4), load("WGT", 64, prm, len(mult) + len(bias)), SYNC,
             Insn("ALU", fields("ALU", a=0, op=ALU_OPS.index("quantize"), dst=0, n=n, dtype=2, exp=130)),
             SYNC, Insn("ALU", fields("ALU", a=256, op=ALU_OPS.index("relu"), dst=512, n=n, dtype=2)),
             SYNC, load("ACC", 2048, xt.addr, n * 4), SYNC,
             Insn("EPI", fields("EPI", acc=2048, dst=1024, has_scale=1, has_res=1, act=ACTS.index("clip"),
                                prm=64, res=0, f=F, p=P, lo_bits=(-20) & 0xFFFFFFFF, hi_bits=100, dtype=2,
                                shift=2, rshift=1)),
             SYNC, store("ACC", 1024, 4096, n), SYNC, load("INP", 64, 4096, n), SYNC,
             Insn("ALU", fields("ALU", a=64, op=ALU_OPS.index("dequantize"), dst=128, n=n, exp=126)),
             SYNC, store("ACC", 128, yt.addr, n * 4), SYNC, HALT]
    p = d.program(insns, SMALL)
    p.meta["dram_bytes"] = 8192
    return p


def small_programs() -> dict[str, Program]:
    return {"tacc": make_program(), "mac": _mac_program(), "pool": _pool_program(),
            "alu": _alu_program(), "int8": _int8_program()}


def small_blobs() -> dict[str, bytes]:
    return {k: to_bytes(p) for k, p in small_programs().items()}


def mnist_blob() -> bytes:
    """The MNIST CNN (default QuantConfig) as a ``.dlac`` binary (~0.5 MB, ~5 s to build)."""
    import torch

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from compiler.datasets import mnist_cnn
    from target_dlac.isa.machine import Machine

    result = compile_model(mnist_cnn(), (torch.zeros(1, 1, 28, 28),), config=QuantConfig())
    return to_bytes(build_program(result, Machine(), reference=False))



def host_net():
    """conv -> relu -> concat (host) -> pool -> linear -> softmax (host), seeded, and its
    example input (1x1x8x8): a program with HOST and REF sections."""
    import torch
    from torch import nn

    class HostNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = torch.cat([y, y * 0.5], 1)
            y = torch.nn.functional.max_pool2d(y, 2)
            return torch.softmax(self.fc(torch.flatten(y, 1)), 1)

    torch.manual_seed(0)
    return HostNet().eval(), (torch.randn(1, 1, 8, 8),)


def host_blob(activations: str = "fp32") -> bytes:
    """:func:`host_net` as a ``.dlac`` binary with host ops and a REF section (a few seconds)."""
    import numpy as np

    from compiler import QuantConfig, compile_model
    from compiler.build import build_program

    model, example = host_net()
    result = compile_model(model, example, config=QuantConfig())
    calib = {"x": np.random.default_rng(0).standard_normal((4, 1, 1, 8, 8)).astype(np.float32)}
    prog = build_program(result, activations=activations, calib=calib if activations == "int8" else None)
    assert prog.host is not None and prog.reference is not None
    return to_bytes(prog)
