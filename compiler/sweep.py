"""Design-space sweeps (``dlac sweep``): a model's conv / dense layers costed on many machines
and compile options by the analytic cost model, each point's latency, energy and area, and
the Pareto front over them.

A sweep is a list of **points**, each a dict of parameter values: the grid (every
combination of the values given, in the order given: the first parameter varies
slowest) or a random sample of it without replacement (``random=N``, ``seed``).  A
point's *id* is its index in the grid, so a point has the same id in every sweep of the
same parameters.  Parameters are :class:`target_dlac.isa.machine.Machine` fields and the
compile options in :data:`COMPILE_PARAMS`.

**What a point's numbers cover**: the conv / dense layers the tuner lists
(:func:`compiler.tune.collect_layers`), each with the codegen's default schedule for the
point's machine (:func:`target_dlac.codegen.schedule.default_schedule`), costed by
:func:`target_dlac.tune.costmodel.layer_cost` for an input without zeros (dense
activations: the most any input costs).  Pooling, element-wise and host layers are not in
the figures (``layers_modelled`` in the header counts what is).  ``latency_s`` = the sum
of the layers' cycles over the clock; ``energy_pj`` = their energy
(docs/isa.md "Energy model"); ``area_mm2`` = the machine's modelled area; ``edp_js`` =
energy x latency.  A point whose machine is invalid, or with a layer no tiling fits, is
``status: "invalid"`` with the reason; it is kept in the file, never dropped.

**The file** (:mod:`compiler.sweep_file`): a header line, then one line per point, appended
as points finish; an interrupted sweep resumes where it stopped, and the finished file is
rewritten sorted by id, so a resumed sweep's file equals an uninterrupted one byte for byte.
"""

from __future__ import annotations

import itertools
import random as _random
from dataclasses import dataclass, fields, replace

from target_dlac.core.errors import ConfigError, DlacError

#: compile options a sweep may vary (each compile-option combination compiles once)
COMPILE_PARAMS = ("quant", "cluster_size", "swis_shifts", "activations")
#: activation types the sweep's cost model covers (int8 needs calibration, the int8 codegen)
SWEEP_ACTIVATIONS = ("fp32", "fp16")
#: at most this many points in one sweep
MAX_POINTS = 1_000_000


def machine_params() -> dict:
    from target_dlac.isa.machine import Machine

    return {f.name: f.type for f in fields(Machine)}


def _coerce(name: str, text: str, kind: str):
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"--param {name}: {text[:40]!r} is not {'an integer' if kind == 'int' else 'a number'}") \
            from None


def parse_params(specs) -> dict:
    """``{name: [values]}`` of ``NAME=V1,V2,...`` strings (machine parameters by their type;
    compile options: ``quant`` / ``activations`` text, ``cluster_size`` int, ``swis_shifts``
    float), in the order given; a name twice, unknown, or without values is an error."""
    from compiler.cli_common import QUANT_CHOICES

    kinds = machine_params()
    kinds.update(quant="str", cluster_size="int", swis_shifts="float", activations="str")
    out: dict = {}
    for spec in specs:
        name, sep, values = str(spec).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param {str(spec)[:60]!r}: expected NAME=V1,V2,...")
        if name not in kinds:
            raise ConfigError(f"--param {name[:40]!r}: not a machine parameter or compile option; "
                              f"known: {', '.join(sorted(kinds))}")
        if name in out:
            raise ConfigError(f"--param {name}: given twice")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise ConfigError(f"--param {name}: no values")
        vals = [_coerce(name, v, kinds[name]) for v in vals]
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--param {name}: a value is repeated")
        if name == "quant" and any(v not in QUANT_CHOICES for v in vals):
            raise ConfigError(f"--param quant: choose from {', '.join(QUANT_CHOICES)}")
        if name == "activations" and any(v not in SWEEP_ACTIVATIONS for v in vals):
            raise ConfigError(f"--param activations: the sweep costs {', '.join(SWEEP_ACTIVATIONS)} "
                              "(int8 needs calibration data and the int8 codegen: compile and run it)")
        out[name] = vals
    return out


def grid_size(params: dict) -> int:
    n = 1
    for v in params.values():
        n *= len(v)
    return n


def points(params: dict, sample: int | None = None, seed: int = 0) -> list[tuple[int, dict]]:
    """``(id, point)`` of the grid, or of a random sample of ``sample`` grid points (ids
    ascending)."""
    n = grid_size(params)
    if n > MAX_POINTS:
        raise ConfigError(f"the grid has {n:,} points; at most {MAX_POINTS:,} (use --random N)")
    names = list(params)
    ids = range(n)
    if sample is not None:
        if sample < 1:
            raise ConfigError("--random must be at least 1")
        ids = sorted(_random.Random(seed).sample(range(n), min(sample, n)))
    grid = list(itertools.product(*params.values()))
    return [(i, dict(zip(names, grid[i]))) for i in ids]


@dataclass
class SweepLayer:
    """What a point needs of one conv / dense layer (no codegen objects: it ships to workers)."""
    name: str
    shape: object       # ConvShape
    weights: object     # LayerWeights
    has_scale: bool


def split(point: dict) -> tuple[dict, dict]:
    """``(machine params, compile params)`` of a point."""
    return ({k: v for k, v in point.items() if k not in COMPILE_PARAMS},
            {k: v for k, v in point.items() if k in COMPILE_PARAMS})


def compile_key(point: dict) -> tuple:
    return tuple(sorted(split(point)[1].items()))


def sweep_layers(result, activations: str = "fp32") -> list[SweepLayer]:
    """The conv / dense layers of a compiled ``result`` (``activations``: fp16 costs the fp16
    instructions: 2 bytes per activation, twice the lanes)."""
    from target_dlac.isa.machine import Machine
    from compiler.tune import collect_layers

    dtype = {"fp32": "float32", "fp16": "float16"}[activations]
    return [SweepLayer(t.name, replace(t.layer.shape, dtype=dtype), t.layer.weights, t.layer.has_scale)
            for t in collect_layers(result, Machine())]


#: the Machine fields :func:`default_schedule` reads (target_dlac/codegen/schedule.py: the
#: buffers, the accumulators per PE, the PE grid); points equal on these share schedules
SCHEDULE_FIELDS = ("pe_rows", "pe_cols", "obuf_bytes_per_pe", "wgt_buf_kib", "inp_buf_kib")
#: (id(layer), schedule fields) -> (layer, schedule or the DlacError): per process
_SCHEDULES: dict = {}
_SCHEDULES_MAX = 1 << 16


def _schedule(layer: SweepLayer, m):
    from target_dlac.codegen.schedule import default_schedule

    key = (id(layer), tuple(getattr(m, f) for f in SCHEDULE_FIELDS))
    got = _SCHEDULES.get(key)
    if got is None or got[0] is not layer:
        try:
            s = default_schedule(layer.shape, m, layer.weights.max_bytes, where=layer.name)
        except DlacError as e:
            s = e
        if len(_SCHEDULES) >= _SCHEDULES_MAX:
            _SCHEDULES.clear()
        got = _SCHEDULES[key] = (layer, s)      # the layer kept alive: its id is not reused
    if isinstance(got[1], DlacError):
        raise got[1]
    return got[1]


def evaluate(layers: list[SweepLayer], base: dict, point: dict, table=None) -> dict:
    """One point's record (see the module docstring and docs/sweep.md)."""
    from target_dlac.isa import energy
    from target_dlac.isa.area import area_mm2
    from target_dlac.isa.machine import Machine
    from target_dlac.tune.costmodel import layer_cost

    mparams, _ = split(point)
    rec = {"kind": "point", "params": point, "machine": None, "status": "invalid", "error": None,
           "cycles": None, "latency_s": None, "energy_pj": None, "area_mm2": None, "edp_js": None,
           "tops_per_w": None, "pj_per_mac": None, "dense_macs": None, "layers": []}
    try:
        m = Machine.from_dict({**base, **mparams}, where="point")
    except ConfigError as e:
        rec["error"] = f"machine: {e}"
        return rec
    rec["machine"] = m.to_dict()
    total, dense = 0, 0
    parts = dict.fromkeys(("total",) + energy.PARTS, 0.0)
    for layer in layers:
        try:
            s = _schedule(layer, m)
            r = layer_cost(layer.shape, s, m, layer.weights, has_scale=layer.has_scale, table=table)
        except DlacError as e:
            rec["error"] = f"layer {layer.name}: {e}"
            rec["layers"] = []
            return rec
        total += r["total"]
        dense += r["dense_macs"]
        for k in parts:
            parts[k] += r["energy_pj"][k]
        rec["layers"].append({"name": layer.name, "cycles": r["total"], "compute": r["compute"],
                              "load_stall": r["load_stall"], "store_stall": r["store_stall"],
                              "energy_pj": r["energy_pj"]})
    secs = m.seconds(total)
    rec.update(status="ok", cycles=total, latency_s=secs, energy_pj=parts, area_mm2=area_mm2(m),
               dense_macs=dense, **energy.efficiency(parts, dense, secs))
    return rec


# ---- workers: the layers of every compile-option combination, set once per process ----
_STATE: dict = {}


def init_worker(state: dict) -> None:
    """Pool initializer: ``state`` = ``{"layers": {compile key: [SweepLayer]}, "base": dict,
    "table": EnergyTable | None}``."""
    _STATE.clear()
    _STATE.update(state)
    _SCHEDULES.clear()


def evaluate_chunk(chunk: list[tuple[int, dict]], state: dict | None = None) -> list[dict]:
    """Records of ``(id, point)`` pairs (in a worker: its :func:`init_worker` state)."""
    st = state if state is not None else _STATE
    out = []
    for i, point in chunk:
        rec = evaluate(st["layers"][compile_key(point)], st["base"], point, st.get("table"))
        out.append({"kind": "point", "id": i, **{k: v for k, v in rec.items() if k != "kind"}})
    return out
