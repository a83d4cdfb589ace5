"""Static validation of a decoded program, before anything executes.

Checks the metadata (DRAM size within the machine's, tensor table inside DRAM,
layer pc ranges, table sizes within :mod:`target_dlac.isa.limits`), and every instruction:
operand codes defined, tile geometry consistent (output size from input, kernel, stride
and padding), every buffer and DRAM range it touches inside its memory, its work and
temporary memory within the per-instruction budgets, and the program's total work within
the per-run budget.  Errors are
:class:`BinaryFormatError` naming the section, the byte offset and, for an
instruction, its pc and disassembly.  The interpreter runs the same instruction
checks (:func:`first_insn_problem`) before it executes a program, and at run time
only what depends on data (a weight block's contents and length, overflow).
"""

from __future__ import annotations

from target_dlac.core.errors import BinaryFormatError

from target_dlac.isa.encoding import ACTS, ALU_ACTS, ALU_OPS, BUFFERS, DTYPES, EXP_BIAS, INSN_BYTES, INT_ACTS, WFMTS, \
    Insn, alu_bytes, disassemble, elem_bytes, epi_param_layout, s32
from target_dlac.isa.formats import WFMT_BYTES
from target_dlac.binary.layer_meta import LayerMetaError, layer_table
from target_dlac.isa.limits import MAX_DRAM_BYTES, MAX_META_ENTRIES, MAX_RUN_WORK, insn_budget, insn_budget_problem

#: Largest shift of the int8 requantization: 127 << 55 < 2^62 leaves room for the sum.
MAX_SHIFT = 55
#: Largest |exponent| of ALU quantize/dequantize (2^64 stays far inside float32's range).
ALU_MAX_EXP = 64


def _geometry_ok(f: dict, kh: int, kw: int, sh: int, sw: int) -> bool:
    hp, wp = f["h"] + f["pt"] + f["pb"], f["w"] + f["pl"] + f["pr"]
    return (min(kh, kw, sh, sw) > 0 and hp >= kh and wp >= kw
            and (hp - kh) // sh + 1 == f["oh"] and (wp - kw) // sw + 1 == f["ow"])


def ranges_of(ins: Insn) -> list[tuple[str, int, int]]:
    """Memory ranges ``(memory, lo, hi)`` an instruction touches (TACC / SACC: the block
    header; their full length depends on the block's contents)."""
    f, op = ins.f, ins.op
    if op in ("LOAD", "STORE"):
        if f["y"] == 0 or f["x"] == 0:
            return []
        buf = BUFFERS[f["buf"]]
        return [("DRAM", f["dram"], f["dram"] + (f["y"] - 1) * f["dram_stride"] + f["x"]),
                (buf, f["sram"], f["sram"] + (f["y"] - 1) * f["sram_stride"] + f["x"])]
    eb = elem_bytes(f.get("dtype", 0))
    if op in ("TACC", "MAC", "SACC"):
        k = (1 if f["depthwise"] else f["c"]) * f["kh"] * f["kw"]
        w = 4 * f["f"] if op == "TACC" else 4 * ((f["f"] + 3) // 4) if op == "SACC" else \
            WFMT_BYTES.get(f["wfmt"], WFMT_BYTES[WFMTS.index("int8")]) * f["f"] * k
        return [("INP", f["inp"], f["inp"] + eb * f["c"] * f["h"] * f["w"]),
                ("WGT", f["wgt"], f["wgt"] + w),
                ("ACC", f["acc"], f["acc"] + 4 * f["f"] * f["oh"] * f["ow"])]
    if op == "EPI":
        n = f["f"] * f["p"]
        out = [("ACC", f["acc"], f["acc"] + 4 * n), ("ACC", f["dst"], f["dst"] + eb * n),
               ("WGT", f["prm"], f["prm"] + epi_param_layout(f["f"], f["has_scale"], f["dtype"], f["act"])[2])]
        if f["has_res"]:
            out.append(("INP", f["res"], f["res"] + eb * n))
        return out
    if op == "POOL":
        return [("INP", f["src"], f["src"] + eb * f["c"] * f["h"] * f["w"]),
                ("ACC", f["dst"], f["dst"] + eb * f["c"] * f["oh"] * f["ow"])]
    if op == "ALU":
        aop = ALU_OPS[f["op"]] if f["op"] < len(ALU_OPS) else None
        bi, bo = alu_bytes(aop, f["dtype"])
        reads_b = aop in ("add", "add_relu")
        return ([("INP", f["a"], f["a"] + bi * f["n"])]
                + ([("INP", f["b"], f["b"] + bi * f["n"])] if reads_b else [])
                + [("ACC", f["dst"], f["dst"] + bo * f["n"])])
    return []


def check_insn(ins: Insn, sizes: dict, n_host: int, max_pxshift: int = 0) -> str | None:
    """The first problem with ``ins`` (or ``None``); ``max_pxshift``: the machine's largest
    PE-array mapping (``Machine.max_pxshift``)."""
    f, op = ins.f, ins.op
    if op in ("LOAD", "STORE"):
        if f["buf"] >= len(BUFFERS):
            return f"buffer code {f['buf']} names no buffer"
        dst_stride = f["sram_stride"] if op == "LOAD" else f["dram_stride"]
        if f["y"] > 1 and dst_stride < f["x"]:
            return "destination rows overlap (stride smaller than the row)"
    elif op in ("TACC", "MAC", "SACC"):
        if f["dtype"] >= len(DTYPES):
            return f"activation dtype {f['dtype']} is not defined"
        if f["pxshift"] > max_pxshift:
            return f"PE mapping pxshift={f['pxshift']} exceeds the machine's {max_pxshift}"
        if min(f["c"], f["f"], f["h"], f["w"], f["oh"], f["ow"]) == 0:
            return "empty tile (a zero channel, filter, row or column count)"
        if f["depthwise"] and f["c"] != f["f"]:
            return "depthwise tile needs as many channels as filters"
        if op == "MAC" and f["wfmt"] >= len(WFMTS):
            return f"weight format {f['wfmt']} is not defined"
        if op == "MAC" and DTYPES[f["dtype"]] == "int8" and WFMTS[f["wfmt"]] != "int8":
            return "int8 activations need int8 weights (wfmt 1)"
        if op == "SACC" and f["depthwise"]:
            return "SACC has no depthwise form"
        if not _geometry_ok(f, f["kh"], f["kw"], f["sh"], f["sw"]):
            return "output tile does not match the padded input, kernel and stride"
    elif op == "EPI":
        if f["act"] >= len(ACTS):
            return f"activation code {f['act']} is not defined"
        if f["dtype"] >= len(DTYPES):
            return f"activation dtype {f['dtype']} is not defined"
        act, integer = ACTS[f["act"]], DTYPES[f["dtype"]] == "int8"
        if (act not in INT_ACTS) if integer else (act == "lut"):
            return (f"activation {ACTS[f['act']]} is not defined for {DTYPES[f['dtype']]} "
                    f"(int8 takes {', '.join(INT_ACTS)}; lut is int8 only)")
        if f["rshift"] > MAX_SHIFT or f["shift"] > MAX_SHIFT:
            return f"shifts above {MAX_SHIFT} would overflow the int64 requantization"
        if act == "relu" and integer and 0 < s32(f["lo_bits"]) and not s32(f["lo_bits"]) < s32(f["hi_bits"]):
            return "int8 relu threshold (lo_bits) must be below its upper bound (hi_bits)"
    elif op == "POOL":
        if f["dtype"] >= len(DTYPES):
            return f"activation dtype {f['dtype']} is not defined"
        if not _geometry_ok(f, f["kh"], f["kw"], f["sh"], f["sw"]):
            return "pool geometry is inconsistent"
        if max(f["pt"], f["pb"]) >= f["kh"] or max(f["pl"], f["pr"]) >= f["kw"]:
            return "pool padding must be smaller than the window (a window would hold only padding)"
    elif op == "ALU":
        if f["op"] >= len(ALU_OPS):
            return f"ALU op code {f['op']} is not defined"
        if f["dtype"] >= len(DTYPES):
            return f"activation dtype {f['dtype']} is not defined"
        if ALU_OPS[f["op"]] in ALU_ACTS and DTYPES[f["dtype"]] == "int8":
            return f"ALU {ALU_OPS[f['op']]} is not defined for int8 (float32 / float16 only)"
        if max(f["sa"], f["sb"], f["shift"]) > MAX_SHIFT:
            return f"shifts above {MAX_SHIFT} would overflow the int64 sum"
        exp = f["exp"] - EXP_BIAS
        if ALU_OPS[f["op"]] in ("quantize", "dequantize") and not -ALU_MAX_EXP <= exp <= ALU_MAX_EXP:
            return f"exponent {exp} is outside [-{ALU_MAX_EXP}, {ALU_MAX_EXP}]"
    elif op == "HOST":
        if f["index"] >= n_host:
            return f"host op #{f['index']} is not in the host table ({n_host} entries)"
    for mem, lo, hi in ranges_of(ins):
        if hi > sizes[mem]:
            return f"{mem} range [{lo}, {hi}) is outside {mem} ({sizes[mem]} bytes)"
    return insn_budget_problem(ins)


def first_insn_problem(p) -> tuple[int, str] | None:
    """``(pc, problem)`` of the first instruction of ``p`` that :func:`check_insn` refuses,
    or at which the program's total work first exceeds ``limits.MAX_RUN_WORK``."""
    m = p.machine
    sizes = {"DRAM": p.dram_bytes, "INP": m.inp_bytes, "WGT": m.wgt_bytes, "ACC": m.acc_bytes}
    n_host = len(p.meta.get("host_ops", []))
    total = 0
    for pc, ins in enumerate(p.insns):
        problem = check_insn(ins, sizes, n_host, m.max_pxshift)
        if problem:
            return pc, problem
        total += sum(insn_budget(ins))          # operations + temporary bytes
        if total > MAX_RUN_WORK:
            return pc, (f"the program's work reaches {total:,} (element operations and temporary "
                        f"bytes) here, over the budget of {MAX_RUN_WORK:,} per run (limits.MAX_RUN_WORK)")
    return None


def _table_problem(name: str, table, n_insns: int) -> str | None:
    """A metadata table longer than the limits allow: one entry per instruction at most,
    and ``limits.MAX_META_ENTRIES`` in any case."""
    if not isinstance(table, list):
        return None             # the table's own check names what is wrong with it
    cap = min(n_insns, MAX_META_ENTRIES)
    if len(table) > cap:
        return (f"{len(table)} {name} entries for {n_insns} instructions; at most one per "
                f"instruction and {MAX_META_ENTRIES} in all (limits.MAX_META_ENTRIES)")
    return None


def validate_program(p, offsets: dict | None = None) -> None:
    offsets = offsets or {}
    m = p.machine
    meta = p.meta

    def fail(msg, section, extra=0):
        raise BinaryFormatError(msg, section=section, offset=offsets.get(section, 0) + extra)

    dram = meta.get("dram_bytes")
    if not isinstance(dram, int) or not 0 < dram <= min(m.dram_bytes, MAX_DRAM_BYTES):
        fail(f"DRAM size {str(dram)[:40]} is not in (0, {min(m.dram_bytes, MAX_DRAM_BYTES)}] (the "
             f"machine's DRAM, at most limits.MAX_DRAM_BYTES)", "META")
    n = len(p.insns)
    for name in ("layers", "host_ops", "fallbacks"):
        problem = _table_problem(name, meta.get(name, []), n)
        if problem:
            fail(problem, "META")
    if len(p.tensors) > MAX_META_ENTRIES:
        fail(f"{len(p.tensors)} tensors; at most {MAX_META_ENTRIES} (limits.MAX_META_ENTRIES)", "TENSORS")
    if len(p.constants) > dram:
        fail(f"{len(p.constants)} bytes of constants exceed the {dram}-byte DRAM image", "CONSTS")
    for t in p.tensors:
        if t.addr + t.nbytes > dram:
            fail(f"tensor {t.name!r} [{t.addr}, {t.addr + t.nbytes}) lies outside DRAM ({dram} bytes)",
                 "TENSORS")
    if not p.outputs:
        fail("the tensor table has no outputs", "TENSORS")
    host_ops = meta.get("host_ops", [])
    if not isinstance(host_ops, list) or (host_ops and p.host is None):
        fail("host ops are listed but the HOST section is missing", "META")
    names = {t.name for t in p.tensors}
    if sum(len(h.get(k, [])) for h in host_ops if isinstance(h, dict) for k in ("inputs", "outputs")
           if isinstance(h.get(k, []), list)) > MAX_META_ENTRIES:
        fail(f"the host ops name more than {MAX_META_ENTRIES} tensors in all (limits.MAX_META_ENTRIES)",
             "META")
    for i, h in enumerate(host_ops):
        if (not isinstance(h, dict) or not isinstance(h.get("func"), str)
                or not isinstance(h.get("inputs"), list) or not isinstance(h.get("outputs"), list)
                or len(h["outputs"]) != 1):
            fail(f"host op entry {i} {ascii(h)[:80]} is not {{func, inputs, outputs: [one tensor]}}", "META")
        lists = [h["inputs"], h["outputs"]]
        if not all(isinstance(n, str) and n in names for x in lists for n in x):
            fail(f"host op entry {i} {ascii(h)[:80]} names tensors not in the tensor table", "META")
    if not isinstance(meta.get("fallbacks", []), list):
        fail("fallbacks is not a list", "META")
    if not n or p.insns[-1].op != "HALT":
        fail("the instruction stream does not end with HALT", "INSTS", max(0, n - 1) * INSN_BYTES)
    for pc, ins in enumerate(p.insns[:-1]):
        if ins.op == "HALT":
            fail(f"pc {pc}: HALT before the end of the stream (the rest would never run)", "INSTS",
                 pc * INSN_BYTES)
    try:
        layer_table(meta, n)
    except LayerMetaError as e:
        fail(f"layer table: {e}", "META")
    found = first_insn_problem(p)
    if found:
        pc, problem = found
        fail(f"pc {pc} ({disassemble(p.insns[pc])}): {problem}", "INSTS", pc * INSN_BYTES)
