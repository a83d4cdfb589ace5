"""What :func:`compiler.pipeline.compile_model` returns: :class:`CompileResult`, the
stages' modules with the layer plan, the multiplies report and the host ops, and its
reports (the layer table, the multiply counts, where each layer runs, the quantization
damage).

Where a layer runs (:meth:`CompileResult.placement`): a conv / dense layer the partitioner
left in ``main`` runs on the host (TVM's CPU build), and so does one whose composite the
codegen could not lower (its ``fallbacks`` in the program's metadata, given as
``fallbacks=``).  A host layer computes its (quantized) weights in float: none of its
multiplies is replaced, and the report says so.  The MAC shares count every conv / matmul
of the graph (layers, and matmuls of two computed tensors), on dLAC or on the host.

The quantization damage (:meth:`CompileResult.damage`) runs the float graph
(``canonicalize``) and the quantized one (``fold``) through the TVM CPU reference on one
input and gives, per output, the relative L2 error and the SQNR; see :data:`DAMAGE_SQNR_DB`
for the warning threshold.  It costs two TVM builds (about 1 s for a small model, 5.5 s
for ResNet-18 at 224x224), so the CLI runs it only with ``--damage``; the per-layer weight
SQNR (:meth:`CompileResult.weight_sqnr`) is NumPy only and always in the layer table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from target_dlac.core.errors import ConfigError
from target_dlac.core.plan import LayerPlan
from target_dlac.core.text import printable

from compiler.config import QuantConfig

#: the old name of a layer plan (``CompileResult.layers``)
LayerInfo = LayerPlan

#: Below this SQNR (dB) of an output, quantized vs float graph, the compile report warns:
#: 3 dB is a relative L2 error of 0.71, an error carrying half the output's power.  The
#: bundled MNIST CNN in the default ternary config, whose predictions agree with the float
#: model's on 99.5% of 200 test images, sits at 11-13 dB (relative error 0.23-0.28; 0.55 at
#: worst with every layer ternary, 98.5% agreement), so a working low-precision network stays
#: well above it; an output whose error is about as large as itself (0 dB) no longer carries
#: the float model's signal.
DAMAGE_SQNR_DB = 3.0


@dataclass
class CompileResult:
    stages: dict                      # stage name -> IRModule, in order
    layers: list[LayerPlan]           # the layer plan, one per conv / dense layer, in order
    multiplies: list                  # passes.accumulate.LayerMultiplies
    host_ops: list                    # passes.partition.HostOp
    regions: list
    input_names: list[str]
    input_shapes: dict
    config: QuantConfig
    source: str
    source_hash: str
    timings: dict = field(default_factory=dict)
    machine: object = None            # the Machine the front half planned for
    _memo: dict = field(default_factory=dict, repr=False, compare=False)   # weight_sqnr

    @property
    def mod(self):
        """The last stage's module."""
        return self.stages[next(reversed(self.stages))]

    @property
    def plan(self) -> dict[str, LayerPlan]:
        """The layer plan by layer variable."""
        return {p.var: p for p in self.layers}

    @property
    def swis(self) -> dict:
        """The SWIS decompositions by layer variable (``passes.swis.SwisResult``; from the plan)."""
        return {p.var: p.swis for p in self.layers if p.swis is not None}

    def reference_module(self, stage: str | None = None):
        """The module of ``stage`` (default: the last one run), for :func:`run_reference`
        (which builds partitioned modules through ``unpartition``)."""
        stage = stage or next(reversed(self.stages))
        if stage not in self.stages:
            raise ConfigError(f"stage {stage!r} was not run; have {list(self.stages)}")
        return self.stages[stage]

    def codegen_args(self, schedules=None, progress=None, plan: dict | None = None) -> dict:
        """What the codegen takes from this result (``target_dlac.codegen.generator.Codegen``'s
        keyword arguments): the layer plan by layer variable (``plan`` replaces it, e.g.
        with the int8 forms of an int8 build), plus the given ``schedules`` and ``progress``."""
        return dict(plan=plan if plan is not None else self.plan, schedules=schedules,
                    progress=progress)

    # ---------------------------------------------------------------- placement
    def placement(self, fallbacks=None) -> dict:
        """Where each conv / dense layer runs and the shares of layers and MACs on dLAC and
        on the host.  ``fallbacks``: the codegen's (``program.meta["fallbacks"]``), composites
        it left on the host.  ``{"known": bool (the partition stage ran), "layers": {var:
        {"on": "dlac" | "host", "reason"}}, "layer_counts" / "macs": {"dlac", "host"},
        "other_macs": {"dlac", "host"} (conv / matmul ops that are not layers)}``."""
        return _placement(self, fallbacks)

    def host_warnings(self, fallbacks=None) -> list[str]:
        """One line per conv / dense layer that runs on the host, with the reason."""
        pl = self.placement(fallbacks)
        by_var = {r.name: r for r in self.multiplies}
        out = []
        for info in self.layers:
            where = pl["layers"].get(info.var)
            if where and where["on"] == "host":
                macs = by_var[info.var].dense_macs if info.var in by_var else 0
                out.append(f"layer {printable(info.name)} ({info.op}, {macs:,} MACs) runs on the host, "
                           f"not on dLAC: {where['reason']}")
        return out

    def _host_vars(self, fallbacks=None) -> set:
        pl = self.placement(fallbacks)
        return {v for v, w in pl["layers"].items() if w["on"] == "host"}

    def totals(self, fallbacks=None) -> dict:
        """Dense MACs and multiplies replaced / left over every layer; a layer on the host
        replaces none (its weights are computed in float there)."""
        host = self._host_vars(fallbacks)
        dense = sum(r.dense_macs for r in self.multiplies)
        replaced = sum(r.replaced for r in self.multiplies if r.name not in host)
        left = sum(r.dense_macs if r.name in host else r.left for r in self.multiplies)
        return {"dense_macs": dense, "replaced": replaced, "left": left,
                "replaced_share": replaced / dense if dense else 0.0}

    def cluster_counts(self, n: int | None = None, fallbacks=None) -> dict:
        """Multiplies replaced with the counting of papers.md section 2 (one real multiply
        per cluster of ``n`` k x k kernel slices of an output channel; default: the
        config's cluster size, whole layer for 0), over the layers quantized ternary that
        run on dLAC."""
        from passes.mult_count import count_layers, totals

        n = n if n is not None else (self.config.cluster or None)
        by_var = {r.name: r for r in self.multiplies}
        host = self._host_vars(fallbacks)
        rows = []
        for info in self.layers:
            w = info.weight_shape
            kh, kw, cin = (w[2], w[3], w[1]) if info.op == "conv2d" else (1, 1, w[0])
            rows.append({"name": info.name, "kind": "conv" if info.op == "conv2d" else "dense",
                         "kh": kh, "kw": kw, "cin": cin, "dense_macs": by_var[info.var].dense_macs})
        keep = [i.name for i in self.layers if i.precision != "ternary" or i.var in host]
        return totals(count_layers(rows, n, full_precision=keep)) | {"n": n}

    # ---------------------------------------------------------------- quantization damage
    def weight_sqnr(self) -> dict[str, float]:
        """``{layer var: SQNR in dB}`` of each quantized layer's weights (``quantize`` stage)
        against its float weights (``canonicalize`` stage); ``inf`` when they are equal (a
        pre-quantized model's own integers).  NumPy only."""
        if "quantize" not in self.stages:
            return {}
        if "weight_sqnr" not in self._memo:
            self._memo["weight_sqnr"] = self._weight_sqnr()
        return dict(self._memo["weight_sqnr"])

    def _weight_sqnr(self) -> dict[str, float]:
        from passes.layers import find_layers

        before = {l.name: l for l in find_layers(self.stages["canonicalize"]["main"])}
        out = {}
        for l in find_layers(self.stages["quantize"]["main"]):
            plan = self.plan.get(l.name)
            if plan is None or not plan.quantized or l.name not in before:
                continue
            out[l.name] = sqnr_db(before[l.name].weight, l.weight)
        return out

    def damage_inputs(self, seed: int = 0) -> dict:
        """A fixed input per model input: standard normal floats (seeded), zeros for
        integer inputs (token ids, indices)."""
        from target_dlac.core.ir import dtype_of

        rng = np.random.default_rng(seed)
        main = self.stages[next(iter(self.stages))]["main"]
        out = {}
        for p in main.params:
            shape, dtype = tuple(self.input_shapes[p.name]), dtype_of(p) or "float32"
            if np.issubdtype(np.dtype(dtype), np.floating):
                out[p.name] = rng.standard_normal(shape).astype(dtype)
            else:
                out[p.name] = np.zeros(shape, dtype)
        return out

    def damage(self, inputs=None, seed: int = 0) -> list[dict]:
        """Per output of the graph: the quantized graph (``fold``) against the float graph
        (``canonicalize``), both through the TVM CPU reference, on ``inputs`` (default:
        :meth:`damage_inputs`): ``{"output", "shape", "rel_err" (||q - f|| / ||f||),
        "sqnr_db", "argmax_agrees" (last axis, for outputs with more than one value there;
        else None), "warn" (SQNR below DAMAGE_SQNR_DB)}``."""
        from compiler.reference import Reference

        for stage in ("canonicalize", "fold"):
            if stage not in self.stages:
                raise ConfigError(f"the damage needs the {stage} stage; have {list(self.stages)}")
        x = inputs if inputs is not None else self.damage_inputs(seed)
        if isinstance(x, dict):
            x = [np.asarray(x[n]) for n in self.input_names]
        floats = Reference(self.stages["canonicalize"])(x)
        quants = Reference(self.stages["fold"])(x)
        rows = []
        for i, (f, q) in enumerate(zip(floats, quants)):
            f64, q64 = np.asarray(f, np.float64), np.asarray(q, np.float64)
            norm = float(np.linalg.norm(f64))
            err = float(np.linalg.norm(q64 - f64))
            rel = err / norm if norm else (0.0 if err == 0 else math.inf)
            agree = None
            if f64.ndim and f64.shape[-1] > 1:
                agree = bool(np.array_equal(f64.argmax(-1), q64.argmax(-1)))
            db = sqnr_db(f64, q64)
            rows.append({"output": i, "shape": list(f64.shape), "rel_err": rel, "sqnr_db": db,
                         "argmax_agrees": agree, "warn": bool(db < DAMAGE_SQNR_DB)})
        return rows

    # ---------------------------------------------------------------- the table
    def layer_table(self, fallbacks=None) -> str:
        """Per layer: precision, why, where it runs, weight SQNR, MACs, multiplies replaced
        (none on the host), then the totals and the shares on dLAC and on the host."""
        pl = self.placement(fallbacks)
        wsq = self.weight_sqnr()
        lines = [f"{'layer':<28} {'op':<7} {'precision':<9} {'why':<14} {'on':<5} {'w SQNR':>7} "
                 f"{'dense MACs':>12} {'replaced':>12} {'left':>10}"]
        by_var = {r.name: r for r in self.multiplies}
        for info in self.layers:
            r = by_var.get(info.var)
            on = pl["layers"].get(info.var, {}).get("on", "?")
            dense = r.dense_macs if r else 0
            replaced, left = (0, dense) if on == "host" else (r.replaced if r else 0, r.left if r else 0)
            db = wsq.get(info.var)
            db_text = "-" if db is None else ("exact" if math.isinf(db) else f"{db:.1f}")
            lines.append(f"{printable(info.name):<28} {info.op:<7} {info.precision:<9} {info.reason:<14} "
                         f"{'dLAC' if on == 'dlac' else on:<5} {db_text:>7} "
                         f"{dense:>12,} {replaced:>12,} {left:>10,}")
        t = self.totals(fallbacks)
        lines.append(f"{'total':<28} {'':<7} {'':<9} {'':<14} {'':<5} {'':>7} {t['dense_macs']:>12,} "
                     f"{t['replaced']:>12,} {t['left']:>10,}   "
                     f"({100 * t['replaced_share']:.1f}% of multiplies replaced)")
        if any(i.precision == "ternary" for i in self.layers):
            c = self.cluster_counts(fallbacks=fallbacks)
            lines.append(f"papers.md section 2 counting (one multiply per cluster of "
                         f"{c['n'] or 'all'} kernel slices): {100 * c['replaced_share']:.1f}% replaced")
        if pl["known"]:
            lines.append(share_line(pl))
        return "\n".join(lines)


def share_line(pl: dict) -> str:
    """``on dLAC: 3 of 4 conv/dense layers (75.0%), 90.0% of MACs; on the host: ...``."""
    n, m = pl["layer_counts"], pl["macs"]
    layers, macs = n["dlac"] + n["host"], m["dlac"] + m["host"]

    def pct(a, b):
        return f"{100 * a / b:.1f}%" if b else "-"
    other = pl["other_macs"]
    extra = (f" (MACs include {other['dlac'] + other['host']:,} of conv/matmul ops that are not "
             "weighted layers)" if other["dlac"] + other["host"] else "")
    return (f"on dLAC: {n['dlac']} of {layers} conv/dense layers ({pct(n['dlac'], layers)}), "
            f"{m['dlac']:,} of {macs:,} MACs ({pct(m['dlac'], macs)}); on the host: {n['host']} "
            f"layer(s) ({pct(n['host'], layers)}), {m['host']:,} MACs ({pct(m['host'], macs)})" + extra)


def sqnr_db(ref, approx) -> float:
    """``10 log10(||ref||^2 / ||approx - ref||^2)`` in dB: ``inf`` when equal, ``-inf`` for a
    zero reference with an error."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((np.asarray(approx, np.float64) - ref) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


# -------------------------------------------------------------------- placement
_WEIGHTED = ("relax.nn.conv2d", "relax.matmul")


def _macs(call) -> int:
    """MACs of a conv2d / matmul call from its shapes (0 when a shape is not static)."""
    from target_dlac.core.ir import op_name, shape_of

    out, w = shape_of(call), shape_of(call.args[1])
    if out is None or w is None:
        return 0
    if op_name(call) == "relax.nn.conv2d":
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    a = shape_of(call.args[0])
    return int(np.prod(out, dtype=np.int64)) * int(a[-1]) if a else 0


def _partition_reason(call) -> str:
    """Why the partitioner left a conv / dense layer in ``main`` (from the call itself)."""
    from target_dlac.core.ir import attrs_to_dict, ints, op_name, shape_of

    if op_name(call) == "relax.nn.conv2d":
        a = attrs_to_dict(call.attrs)
        if a.get("data_layout") != "NCHW" or a.get("kernel_layout") != "OIHW":
            return f"partitioner: layout {a.get('data_layout')}/{a.get('kernel_layout')} (dLAC takes NCHW/OIHW)"
        if ints(a.get("dilation", [1, 1])) != [1, 1]:
            return f"partitioner: dilation {ints(a['dilation'])} (dLAC convolutions are not dilated)"
        return "partitioner: no dLAC pattern matched the convolution and its epilogue"
    x = shape_of(call.args[0])
    if x is not None and len(x) != 2:
        return f"partitioner: input of rank {len(x)} (dLAC dense layers take 2-D inputs)"
    return "partitioner: no dLAC pattern matched the dense layer and its epilogue"


def _placement(result, fallbacks=None) -> dict:
    from target_dlac.codegen.composites import composite_calls
    from target_dlac.core.ir import iter_bindings, op_name

    layer_vars = {p.var for p in result.layers}
    out = {"known": "partition" in result.stages, "layers": {},
           "layer_counts": {"dlac": 0, "host": 0}, "macs": {"dlac": 0, "host": 0},
           "other_macs": {"dlac": 0, "host": 0}}
    if not out["known"]:
        return out
    mod = result.stages["partition"]
    by_var = {r.name: r.dense_macs for r in result.multiplies}
    where: dict = {}

    def count(var, side, macs):
        if var in layer_vars:
            where[var] = side
        else:
            out["other_macs"][side[0]] += macs

    for b in iter_bindings(mod["main"]):                   # left in main by the partitioner
        if op_name(b.value) in _WEIGHTED:
            side = ("host", _partition_reason(b.value))
            count(b.var.name, side, _macs(b.value))
    pending = list(fallbacks or [])
    for var, fn in composite_calls(mod):
        kind = str(fn.attrs["Composite"])
        fell = bool(pending) and pending[0].get("var") == var and pending[0].get("composite") == kind
        side = ("host", f"codegen: {pending.pop(0).get('reason')}") if fell else ("dlac", None)
        for cb in iter_bindings(fn):
            if op_name(cb.value) in _WEIGHTED:
                name = str(fn.attrs["dlac.layer"]) if "dlac.layer" in fn.attrs else cb.var.name
                count(name if name in layer_vars else cb.var.name, side, _macs(cb.value))
    for var in layer_vars:
        side = where.get(var, ("dlac", None))
        out["layers"][var] = {"on": side[0], "reason": side[1]}
        out["layer_counts"][side[0]] += 1
        out["macs"][side[0]] += by_var.get(var, 0)
    for k in ("dlac", "host"):
        out["macs"][k] += out["other_macs"][k]
    return out
