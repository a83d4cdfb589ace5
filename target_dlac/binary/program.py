"""A dLAC program in memory: what a ``.dlac`` file holds, before encoding / after decoding.

* ``insns``: the instruction stream (:class:`target_dlac.isa.encoding.Insn`).
* ``constants``: bytes placed in DRAM at address 0 before the run (packed weight
  blocks, epilogue parameters).
* ``tensors``: the tensor table: name, role (``input``, ``output``, ``activation``),
  shape, dtype and DRAM address of every tensor the program reads or writes.
* ``meta``: JSON-able metadata: compiler version, source hash, quantization config,
  DRAM size, layers (name, op, precision, pc range, schedule, minimum DRAM traffic)
  and host ops.
* ``host``: optional section of the host functions (``HOST``), in the closed graph
  format of :mod:`target_dlac.binary.hostgraph`.
* ``reference``: optional section of the quantized graph, for ``dlac run --check``
  (``REF``, same format).

NumPy only: reading and running a binary without host ops never imports TVM.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field


from target_dlac.isa.encoding import Insn
from target_dlac.isa.machine import Machine

DTYPE_SIZES = {"float32": 4, "float16": 2, "int8": 1, "int32": 4, "uint8": 1}


@dataclass
class Tensor:
    name: str
    role: str
    shape: tuple
    dtype: str
    addr: int

    @property
    def nbytes(self) -> int:
        return math.prod(int(d) for d in self.shape) * DTYPE_SIZES[self.dtype]      # no int64 wrap

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "shape": list(self.shape),
                "dtype": self.dtype, "addr": self.addr}


@dataclass
class Program:
    machine: Machine
    insns: list[Insn]
    constants: bytes
    tensors: list[Tensor]
    meta: dict = field(default_factory=dict)
    host: bytes | None = None
    reference: bytes | None = None

    @property
    def inputs(self) -> list[Tensor]:
        return [t for t in self.tensors if t.role == "input"]

    @property
    def outputs(self) -> list[Tensor]:
        return [t for t in self.tensors if t.role == "output"]

    @property
    def dram_bytes(self) -> int:
        return int(self.meta["dram_bytes"])

    def tensor(self, name: str) -> Tensor:
        """The first tensor called ``name`` (a dict lookup; the index is rebuilt when the
        table changed since it was built)."""
        index = self.__dict__.get("_index")
        t = index.get(name) if index is not None else None
        if t is None or t.name != name or index.get("\0len") != len(self.tensors):
            index = {"\0len": len(self.tensors)}
            for x in self.tensors:
                index.setdefault(x.name, x)
            self.__dict__["_index"] = index
            t = index.get(name)
        if not isinstance(t, Tensor):
            raise KeyError(name)
        return t
