"""compiler.pareto.pareto_front against a brute-force front on random data with ties."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.pareto import pareto_front


def _brute(rows, keys):
    ok = [i for i, r in enumerate(rows) if r.get("status", "ok") == "ok"
          and all(r[k] is not None for k in keys)]
    out = []
    for i in ok:
        a = [rows[i][k] for k in keys]
        dom = any(all(rows[j][k] <= x for k, x in zip(keys, a)) and any(rows[j][k] < x for k, x in zip(keys, a))
                  for j in ok)
        if not dom:
            out.append(i)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_front_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    vals = rng.integers(0, 6, size=(n, 3))                # small range: many ties and duplicates
    rows = [{"latency_s": float(a), "energy_pj": {"total": float(b)}, "area_mm2": int(c)} for a, b, c in vals]
    for i in rng.choice(n, size=n // 10, replace=False):
        rows[i] = {**rows[i], "status": "invalid"} if i % 2 else {**rows[i], "area_mm2": None}
    flat = [{"a": r["latency_s"], "b": r["energy_pj"]["total"], "c": r["area_mm2"], "status": r.get("status", "ok")}
            for r in rows]
    assert pareto_front(rows, ("latency_s", "energy_pj.total", "area_mm2")) == _brute(flat, ("a", "b", "c"))
    assert pareto_front(rows, ("latency_s", "energy_pj", "area_mm2")) == _brute(flat, ("a", "b", "c"))


def test_front_edge_cases():
    assert pareto_front([], ("x",)) == []
    assert pareto_front([{"x": 1}, {"x": 1}, {"x": 2}], ("x",)) == [0, 1]
    assert pareto_front([{"x": float("nan")}, {"x": 3}], ("x",)) == [1]
    with pytest.raises(ValueError):
        pareto_front([{"x": 1}], ())
