"""Human- and machine-readable views of a program: summary and disassembly listing."""

from __future__ import annotations

from collections import Counter

from target_dlac.binary.container import VERSION
from target_dlac.binary.layer_meta import layer_table
from target_dlac.isa.encoding import disassemble
from target_dlac.core.text import printable


def opcode_counts(p) -> dict:
    """``{opcode: count}`` of a program, in first-use order."""
    return dict(Counter(i.op for i in p.insns))


def describe(p) -> dict:
    """Summary of a program as plain JSON-able data."""
    meta = p.meta
    return {
        "file": {"format": f"{VERSION[0]}.{VERSION[1]}", "compiler": meta.get("compiler", "dlac")},
        "source": meta.get("source"), "source_hash": meta.get("source_hash"),
        "quant_config": meta.get("quant_config"),
        "activations": meta.get("activations"), "act_bits": meta.get("act_bits", 8),
        "low_bit_tensors": meta.get("low_bit_tensors", []),
        "machine": p.machine.to_dict() | {"hash": p.machine.hash()},
        "instructions_total": len(p.insns),
        "opcodes": opcode_counts(p),
        "constants_bytes": len(p.constants), "dram_bytes": p.dram_bytes,
        "tensors": [t.to_dict() for t in p.tensors if t.role in ("input", "output")],
        "layers": [{"name": l.name, "op": l.op, "precision": l.precision, "pc_start": l.pc_start,
                    "pc_end": l.pc_end, "schedule": l.schedule, "min_dram_bytes": l.min_dram_bytes}
                   for l in layer_table(meta)],
        "host_ops": meta.get("host_ops", []), "fallbacks": meta.get("fallbacks", []),
        "sections": {"host": p.host is not None, "reference": p.reference is not None},
    }


def listing(p) -> list[tuple[str | None, str]]:
    """``(layer header or None, "pc  text")`` for every instruction."""
    starts = {l.pc_start: l for l in layer_table(p.meta)}
    out = []
    for pc, ins in enumerate(p.insns):
        l = starts.get(pc)
        header = (f"; --- {printable(l.name)} ({printable(l.op)}, {printable(l.precision)})"
                  if l else None)
        out.append((header, f"{pc:6d}  {disassemble(ins)}"))
    return out
