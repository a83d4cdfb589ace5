"""The small valid program of the ``.dlac`` container tests and the tools to look
into and damage its bytes (section table, CRCs).  A plain module: no tests.  NumPy only."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from target_dlac.core.errors import BinaryFormatError
from target_dlac.binary.container import ENTRY, HEADER, from_bytes
from target_dlac.isa.encoding import ACTS, Insn
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import pack_ternary
from target_dlac.binary.program import Program, Tensor
from tests.isa_programs import dma, fields, pad16

MACHINE = Machine(pe_rows=4, pe_cols=8, dram_mib=1)     # not the default: its JSON must travel
TAGS = ("MACHINE", "INSTS", "CONSTS", "TENSORS", "META")


def row_dma(opcode, buf, sram, dram, x, **deps):
    """LOAD / STORE of one row of ``x`` bytes, both strides left 0."""
    return dma(opcode, buf, sram, dram, x, dram_stride=0, sram_stride=0, **deps)


def make_program(machine=MACHINE, extra_insns=(), **meta_over) -> Program:
    """ternary 3x3 conv (pad 1) -> EPI (scale, bias, relu) -> STORE, with tokens."""
    rng = np.random.default_rng(0)
    F, C, H, W = 4, 3, 5, 5
    wt = rng.choice([-1, 0, 1], size=(F, C, 3, 3))
    blk = pack_ternary(wt, rng.permutation(F))
    prm = np.concatenate([rng.integers(1, 4, F), rng.integers(-3, 4, F)]).astype(np.float32)
    consts = bytearray(blk)
    prm_addr = pad16(len(consts))
    consts += bytes(prm_addr - len(consts)) + prm.tobytes()
    x_addr = pad16(len(consts))
    y_addr = x_addr + C * H * W * 4
    dram = pad16(y_addr + F * H * W * 4)
    insns = [
        row_dma("LOAD", "WGT", 0, 0, len(blk)),
        row_dma("LOAD", "WGT", 1024, prm_addr, prm.nbytes),
        row_dma("LOAD", "INP", 0, x_addr, C * H * W * 4, push_next=1),
        Insn("TACC", fields("TACC", inp=0, wgt=0, acc=0, c=C, h=H, w=W, f=F, kh=3, kw=3, oh=H, ow=W,
                            sh=1, sw=1, pt=1, pb=1, pl=1, pr=1), pop_prev=1),
        Insn("EPI", fields("EPI", acc=0, dst=0, has_scale=1, act=ACTS.index("relu"), prm=1024, f=F,
                           p=H * W), push_next=1),
        row_dma("STORE", "ACC", 0, y_addr, F * H * W * 4, pop_prev=1),
        Insn("SYNC"),
        *extra_insns,
        Insn("HALT"),
    ]
    tensors = [Tensor("x", "input", (1, C, H, W), "float32", x_addr),
               Tensor("y", "output", (1, F, H, W), "float32", y_addr)]
    meta = {"dram_bytes": dram, "host_ops": [], "compiler": "test", "quant": {"weights": "ternary"},
            "layers": [{"name": "conv1", "op": "conv2d", "precision": "ternary", "pc_start": 0,
                        "pc_end": 7}]}
    meta.update(meta_over)
    return Program(machine, insns, bytes(consts), tensors, meta)


X = np.random.default_rng(1).integers(-4, 5, size=(1, 3, 5, 5)).astype(np.float32)



def table(data: bytes) -> dict:
    """tag -> (offset, length) from the section table."""
    n = struct.unpack_from("<I", data, 16)[0]
    out = {}
    for i in range(n):
        tag, off, length, _, _ = ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)
        out[tag.rstrip(b"\0").decode()] = (off, length)
    return out


def refix_crcs(data: bytearray) -> bytearray:
    """Recompute every section CRC and the header CRC (to smuggle in a change that only
    the deeper checks can catch)."""
    n = struct.unpack_from("<I", data, 16)[0]
    for i in range(n):
        at = HEADER.size + i * ENTRY.size
        tag, off, length, _, res = ENTRY.unpack_from(data, at)
        ENTRY.pack_into(data, at, tag, off, length, zlib.crc32(bytes(data[off:off + length])), res)
    hb = HEADER.size + n * ENTRY.size
    struct.pack_into("<I", data, 56, zlib.crc32(bytes(data[:56]) + bytes(data[HEADER.size:hb])))
    return data


def refused(data, section, offset, match=None) -> BinaryFormatError:
    with pytest.raises(BinaryFormatError) as ei:
        from_bytes(bytes(data))
    e = ei.value
    assert (e.section, e.offset) == (section, offset), str(e)
    assert f"section {section}, byte offset {offset}" in str(e)
    if match:
        assert match in str(e), str(e)
    return e
