"""The layer table of a binary's metadata: one typed record per lowered layer.

The codegen writes a :class:`LayerMeta` per layer (conv / dense, pool, element-wise,
view, host op) into ``META["layers"]``; validation reads it back with
:meth:`LayerMeta.from_dict` (strict: a wrong type, a missing field or a pc range outside
the stream is an error naming the entry and the field), and the run report, ``dlac
inspect`` and the CLI read the records, never the raw dicts.

Fields:

- ``name``: display name (source layer name, ``pool:...``, ``host:...``);
- ``var``: the Relax variable it came from; ``op``: conv2d, dwconv2d, dense, a pool or
  element-wise kind, ``host``;
- ``precision``: the layer's weight precision, or its activation type for ops without
  weights (``-`` when a binary does not say);
- ``pc_start``, ``pc_end``: its instructions, ``[pc_start, pc_end)``;
- ``min_dram_bytes``, ``min_write_bytes``: the least DRAM traffic any schedule needs
  (the report's lower bound);
- ``schedule``: the tiling a conv / dense layer was lowered with (``Schedule.to_dict``);
  ``shape``: its ``ConvShape`` fields.  Both ``None`` for other layers;
- ``relu_threshold``: a conv / dense layer whose fused ReLU has a threshold ``T > 0``
  (``--relu-threshold``, ``QuantConfig.relu_thresholds``; the ReLU outputs ``x if x > T
  else 0``, docs/isa.md "EPI"): the user's ``T`` as a float; absent (``None``) otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: bounds on what a layer record may hold (a binary is untrusted input)
MAX_NAME = 512
MAX_DICT_ITEMS = 64


class LayerMetaError(ValueError):
    """A layer record is malformed (the message names the field)."""


def _int(d: dict, key: str, default=None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise LayerMetaError(f"{key} is {str(v)[:40]!r}, not a non-negative integer")
    return v


def _str(d: dict, key: str, default=None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or len(v) > MAX_NAME:
        raise LayerMetaError(f"{key} is not a string of at most {MAX_NAME} characters")
    return v


def _flat_dict(d: dict, key: str) -> dict | None:
    v = d.get(key)
    if v is None:
        return None
    if (not isinstance(v, dict) or len(v) > MAX_DICT_ITEMS
            or not all(isinstance(k, str) and (isinstance(x, (int, str, bool)) or
                                               (isinstance(x, (list, tuple)) and len(x) <= 8
                                                and all(isinstance(i, int) for i in x)))
                       for k, x in v.items())):
        raise LayerMetaError(f"{key} is not a table of at most {MAX_DICT_ITEMS} plain values")
    return v


def _threshold(d: dict) -> float | None:
    v = d.get("relu_threshold")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise LayerMetaError(f"relu_threshold is {str(v)[:40]!r}, not a finite number > 0")
    return float(v)


@dataclass(frozen=True)
class LayerMeta:
    name: str
    var: str
    op: str
    precision: str
    pc_start: int
    pc_end: int
    min_dram_bytes: int = 0
    min_write_bytes: int = 0
    schedule: dict | None = None
    shape: dict | None = None
    relu_threshold: float | None = None

    def to_dict(self) -> dict:
        """The JSON form (``schedule`` / ``shape`` only when set)."""
        d = {"name": self.name, "var": self.var, "op": self.op, "precision": self.precision,
             "pc_start": self.pc_start, "pc_end": self.pc_end,
             "min_dram_bytes": self.min_dram_bytes, "min_write_bytes": self.min_write_bytes}
        if self.schedule is not None:
            d["schedule"] = self.schedule
        if self.shape is not None:
            d["shape"] = self.shape
        if self.relu_threshold is not None:
            d["relu_threshold"] = self.relu_threshold
        return d

    @classmethod
    def from_dict(cls, d, n_insns: int | None = None) -> LayerMeta:
        """The record of ``d``; :class:`LayerMetaError` naming the bad field.  With
        ``n_insns``, the pc range must lie in a stream of that many instructions."""
        if not isinstance(d, dict):
            raise LayerMetaError("is not a table")
        m = cls(name=_str(d, "name"), var=_str(d, "var", ""), op=_str(d, "op"),
                precision=_str(d, "precision", "-"), pc_start=_int(d, "pc_start"),
                pc_end=_int(d, "pc_end"), min_dram_bytes=_int(d, "min_dram_bytes", 0),
                min_write_bytes=_int(d, "min_write_bytes", 0),
                schedule=_flat_dict(d, "schedule"), shape=_flat_dict(d, "shape"),
                relu_threshold=_threshold(d))
        if m.pc_start > m.pc_end:
            raise LayerMetaError(f"pc range {m.pc_start}-{m.pc_end} ends before it starts")
        if n_insns is not None and m.pc_end > n_insns:
            raise LayerMetaError(f"pc range {m.pc_start}-{m.pc_end} ends after the {n_insns} instructions")
        return m


def layer_table(meta: dict, n_insns: int | None = None) -> list[LayerMeta]:
    """``meta["layers"]`` as records (strict; the error names the entry)."""
    layers = meta.get("layers", [])
    if not isinstance(layers, list):
        raise LayerMetaError("the layer table is not a list")
    out = []
    for i, d in enumerate(layers):
        try:
            out.append(LayerMeta.from_dict(d, n_insns))
        except LayerMetaError as e:
            name = d.get("name") if isinstance(d, dict) and isinstance(d.get("name"), str) else None
            raise LayerMetaError(f"layer {i}" + (f" ({name[:40]!r})" if name else "") + f": {e}") from None
    return out
