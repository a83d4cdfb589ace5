"""Pareto fronts of design-space sweep results (``dlac sweep``, ``dlac report``).

:func:`pareto_front` returns the rows no other row dominates, every key minimized: row
``j`` dominates row ``i`` when it is no worse on every key and better on at least one.
Rows that lack a key (an invalid design point, ``None``, NaN) are never on the front and
dominate nothing.  Equal rows do not dominate each other, so duplicates of a front point
are all on the front.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_KEYS = ("latency_s", "energy_pj.total", "area_mm2")
#: rows compared at once against all the others (bounds the temporary memory)
_CHUNK = 512


def value(row: dict, key: str):
    """``row[key]``, a dotted key following nested dicts (``"energy_pj.total"``); a key naming
    a dict with a ``total`` takes it (``"energy_pj"``); ``None`` if absent."""
    v = row
    for part in key.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    if isinstance(v, dict):
        v = v.get("total")
    return v


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def pareto_front(rows: list[dict], keys=DEFAULT_KEYS) -> list[int]:
    """Indices (ascending) of the rows on the Pareto front of ``keys``, all minimized."""
    keys = tuple(keys)
    if not keys:
        raise ValueError("pareto_front needs at least one key")
    valid, vals = [], []
    for i, r in enumerate(rows):
        got = [_number(value(r, k)) for k in keys]
        if r.get("status", "ok") == "ok" and None not in got:
            valid.append(i)
            vals.append(got)
    if not valid:
        return []
    v = np.asarray(vals, np.float64)                     # [n, k]
    keep = np.ones(len(v), bool)
    for a in range(0, len(v), _CHUNK):
        block = v[a:a + _CHUNK]                         # [b, k]
        le = (v[None, :, :] <= block[:, None, :]).all(axis=2)     # [b, n]: j no worse than i
        lt = (v[None, :, :] < block[:, None, :]).any(axis=2)      # j better somewhere
        keep[a:a + _CHUNK] = ~(le & lt).any(axis=1)
    return [valid[i] for i in np.flatnonzero(keep)]
