"""The dLAC machine model: every hardware parameter in one dataclass.

Published facts (papers.md section 1, ``dlac-machine.md``): 500 MHz clock, 2.2 mm^2
in 14 nm, a 2-D grid of PEs with shared weight and input buffers, an output buffer
per PE, zero-skip control, fp32 activations (fp16 at twice the rate).

Everything else is an **assumption** of ours (the paper does not publish it), kept
here with its default and overridable from a TOML file (``--machine FILE.toml``):

=====================  ==========  ================================================
parameter              default     meaning
=====================  ==========  ================================================
``pe_rows``            16          PE rows; each row computes different output pixels
``pe_cols``            32          PE columns; each column holds one output channel
``lanes``              1           fp32 MAC lanes per PE (fp16 doubles them)
``wgt_buf_kib``        256         shared weight buffer (WGT)
``inp_buf_kib``        256         shared input-feature-map buffer (INP)
``obuf_bytes_per_pe``  512         output buffer per PE; all of them form ACC
``dram_bytes_per_cycle`` 64        DRAM bandwidth (32 GB/s at 500 MHz) per direction
                                   (separate read and write channels)
``dma_latency``        100         fixed cycles per DMA transfer
``compute_setup``      8           fixed cycles per compute instruction (pipeline fill)
``dram_mib``           1024        largest DRAM image a binary may declare (at most
                                   ``limits.MAX_DRAM_MIB``)
``swis_shifts_per_pass`` 1         SWIS bit-serial PE: 1 = single-shift, 2 = double-shift
``act_skip``           ``column``  zero-activation skipping (:data:`ACT_SKIP`): ``none``;
                                   ``column``: a PE column skips a step when every pixel
                                   of its pass reads a zero activation; ``pe``: each PE
                                   skips its own zero steps, the array waits for the
                                   slowest PE (``docs/isa.md`` "Activation zero-skip")
=====================  ==========  ================================================

Derived sizes (buffer bytes, address widths, PE count, peak rates) are properties,
never separate constants.  The sizes a machine may have are bounded
(:mod:`target_dlac.isa.limits`: each on-chip buffer at most ``MAX_BUFFER_BYTES``, at most
``MAX_PES`` PEs and ``MAX_LANES`` lanes, DRAM at most ``MAX_DRAM_MIB``), so a ``MACHINE``
section cannot make the runner allocate or loop without bound.  :meth:`Machine.hash`
(SHA-256 of the canonical JSON) is stored in every binary.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace

from target_dlac.core.tomlfile import read_toml
from target_dlac.core.errors import ConfigError

from target_dlac.isa.limits import MAX_BUFFER_BYTES, MAX_DRAM_MIB, MAX_LANES, MAX_PES

KIB = 1024


MAX_PARAM = 2 ** 40       # no machine parameter is larger (keeps huge JSON numbers out of float math)
#: The zero-activation skipping granularities (``act_skip``; docs/isa.md "Activation zero-skip").
ACT_SKIP = ("none", "column", "pe")
#: ``act_skip`` of a MACHINE section that does not name it: binaries written before the
#: parameter existed were costed without activation skipping.
LEGACY_ACT_SKIP = "none"


@dataclass(frozen=True)
class Machine:
    # published
    clock_mhz: float = 500.0
    area_mm2: float = 2.2
    # assumed (see the module docstring and dlac-machine.md)
    pe_rows: int = 16
    pe_cols: int = 32
    lanes: int = 1
    wgt_buf_kib: int = 256
    inp_buf_kib: int = 256
    obuf_bytes_per_pe: int = 512
    dram_bytes_per_cycle: int = 64
    dma_latency: int = 100
    compute_setup: int = 8
    dram_mib: int = 1024
    swis_shifts_per_pass: int = 1
    act_skip: str = "column"

    def __post_init__(self):
        if self.act_skip not in ACT_SKIP:
            raise ConfigError(f"machine parameter act_skip={str(self.act_skip)[:40]!r}: expected one of "
                              f"{', '.join(ACT_SKIP)}")
        for f in fields(self):
            if f.type == "str":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or abs(v) > MAX_PARAM \
                    or not math.isfinite(v) or v <= 0:
                if f.name == "compute_setup" and isinstance(v, int) and v == 0:
                    continue
                raise ConfigError(f"machine parameter {f.name}={str(v)[:40]}: must be a positive number "
                                  f"up to {MAX_PARAM:.0e}")
            if f.type == "int" and not isinstance(v, int):
                raise ConfigError(f"machine parameter {f.name}={v!r}: must be an integer")
        if self.pes > MAX_PES:
            raise ConfigError(f"machine: pe_rows*pe_cols = {self.pes} PEs; at most {MAX_PES} "
                              "(limits.MAX_PES)")
        if self.lanes > MAX_LANES:
            raise ConfigError(f"machine: lanes={self.lanes}; at most {MAX_LANES} (limits.MAX_LANES)")
        for buf in ("WGT", "INP", "ACC"):
            if self.buffer_bytes(buf) > MAX_BUFFER_BYTES or self.addr_bits(buf) > ADDR_FIELD_BITS:
                raise ConfigError(f"machine: the {buf} buffer ({self.buffer_bytes(buf)} bytes, "
                                  f"{buf.lower()}_bytes) needs {self.addr_bits(buf)}-bit addresses; the "
                                  f"encoding's address fields have {ADDR_FIELD_BITS} (at most "
                                  f"{MAX_BUFFER_BYTES} bytes, limits.MAX_BUFFER_BYTES)")
        if self.dram_mib > MAX_DRAM_MIB:
            raise ConfigError(f"machine: dram_mib={self.dram_mib}; the simulated DRAM is at most "
                              f"{MAX_DRAM_MIB} MiB (limits.MAX_DRAM_MIB)")
        if self.dram_bytes > (1 << DRAM_FIELD_BITS):
            raise ConfigError(f"machine: dram_mib={self.dram_mib} exceeds the "
                              f"{DRAM_FIELD_BITS}-bit DRAM address field")

    # ---- derived sizes -------------------------------------------------------------
    @property
    def pes(self) -> int:
        return self.pe_rows * self.pe_cols

    @property
    def wgt_bytes(self) -> int:
        return self.wgt_buf_kib * KIB

    @property
    def inp_bytes(self) -> int:
        return self.inp_buf_kib * KIB

    @property
    def acc_bytes(self) -> int:
        return self.pes * self.obuf_bytes_per_pe

    @property
    def dram_bytes(self) -> int:
        return self.dram_mib * KIB * KIB

    def buffer_bytes(self, buf: str) -> int:
        return {"INP": self.inp_bytes, "WGT": self.wgt_bytes, "ACC": self.acc_bytes}[buf]

    def addr_bits(self, buf: str) -> int:
        """Address width of an on-chip buffer, derived from its size."""
        return max(1, math.ceil(math.log2(self.buffer_bytes(buf))))

    def pe_grid(self, pxshift: int = 0) -> tuple[int, int]:
        """``(pixel rows, filter columns)`` of the PE array under mapping ``pxshift`` (the
        conv instructions' field): ``pe_rows >> pxshift`` rows compute different output
        pixels, ``pe_cols << pxshift`` columns different filters; the same PEs either way
        (0: the classic 16 x 32; the largest, ``max_pxshift``: one pixel by every filter)."""
        return self.pe_rows >> pxshift, self.pe_cols << pxshift

    @property
    def max_pxshift(self) -> int:
        """The largest mapping shift: ``pe_rows`` divided by ``2**pxshift`` stays whole."""
        return (self.pe_rows & -self.pe_rows).bit_length() - 1

    def lanes_for(self, dtype: str) -> int:
        """MAC lanes per PE: fp16 runs at twice the fp32 rate (published)."""
        return self.lanes * (2 if dtype == "float16" else 1)

    @property
    def macs_per_cycle(self) -> int:
        return self.pes * self.lanes

    def seconds(self, cycles: float) -> float:
        return cycles / (self.clock_mhz * 1e6)

    # ---- identity and files ---------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def canonical_json(self) -> str:
        """The JSON the hash is taken of; ``act_skip = "none"`` is left out, so a binary
        written before the parameter existed keeps its hash (:data:`LEGACY_ACT_SKIP`)."""
        d = self.to_dict()
        if d["act_skip"] == LEGACY_ACT_SKIP:
            del d["act_skip"]
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict, where: str = "machine") -> "Machine":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a table of machine parameters")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown machine parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        clean = {}
        for k, v in d.items():
            if known[k].type == "int" and isinstance(v, float) and v.is_integer():
                v = int(v)
            clean[k] = v
        return replace(cls(), **clean)

    @classmethod
    def from_toml(cls, path: str) -> "Machine":
        """A machine TOML file: its ``[machine]`` table, or its top level; an ``[energy]``
        table there is the energy model's (:meth:`target_dlac.isa.energy.EnergyTable.from_toml`)."""
        data = read_toml(path, "machine file")
        section = data.get("machine", {k: v for k, v in data.items() if k != "energy"})
        return cls.from_dict(section, where=f"machine file {path!r}")


#: Widths of the address fields in the fixed instruction encoding (see isa.py).
ADDR_FIELD_BITS = 24
DRAM_FIELD_BITS = 40

DEFAULT = Machine()
