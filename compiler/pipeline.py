"""The dlac pipeline driver: named stages from a model to a partitioned,
quantized Relax graph.

Stages, in order (each one's module is kept and can be dumped as TVMScript):

``import``        frontend; weights bound as constants, layers named
``canonicalize``  FoldPrequantized, FoldConstantViews, FoldBatchNorm, CanonicalBias,
                  RemoveDeadTuples
``quantize``      QuantizeWeights (precision per layer from :class:`QuantConfig`; a
                  pre-quantized model's layers keep their own integers)
``fold``          FoldScales, MultiplyToAccumulate (+ the accumulate-only check)
``partition``     PartitionForDlac (dLAC regions vs host ops)

Entry point: :func:`compile_model`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

from passes.accumulate import LayerMultiplies, check_accumulate_only, multiplies_report, \
    multiply_to_accumulate
from passes.canonical_bias import canonical_bias
from passes.fold_batchnorm import fold_batchnorm
from passes.fold_constant_views import fold_constant_views
from passes.fold_prequantized import fold_prequantized, prequantized_weights
from passes.fold_scales import fold_scales
from passes.layers import find_layers
from passes.partition import HostOp, partition, regions
from target_dlac.core.text import printable
from passes.remove_dead_tuples import remove_dead_tuples
from passes.quantize_weights import WeightSpec, quantize_weights

from target_dlac.core.atomic import atomic_write_text
from compiler.config import QuantConfig
from target_dlac.core.errors import ConfigError
from compiler.loader import load_model

STAGES = ("import", "canonicalize", "quantize", "fold", "partition")


@dataclass
class LayerInfo:
    name: str              # source name, e.g. "layer1.0.conv1"
    var: str               # Relax variable name of the weighted op
    op: str                # "conv2d" or "dense"
    weight_shape: tuple
    precision: str         # "fp32", "ternary", "int4" or "int8"
    reason: str            # why this precision (default, first layer, override ...)


@dataclass
class CompileResult:
    stages: dict                      # stage name -> IRModule, in order
    layers: list[LayerInfo]
    multiplies: list[LayerMultiplies]
    host_ops: list[HostOp]
    regions: list
    input_names: list[str]
    input_shapes: dict
    config: QuantConfig
    source: str
    source_hash: str
    timings: dict = field(default_factory=dict)
    swis: dict = field(default_factory=dict)     # layer var -> passes.swis.SwisResult

    @property
    def mod(self):
        """The last stage's module."""
        return self.stages[next(reversed(self.stages))]

    def reference_module(self, stage: str | None = None):
        """The module of ``stage`` (default: the last one run), for :func:`run_reference`
        (which builds partitioned modules through ``unpartition``)."""
        stage = stage or next(reversed(self.stages))
        if stage not in self.stages:
            raise ConfigError(f"stage {stage!r} was not run; have {list(self.stages)}")
        return self.stages[stage]

    def codegen_args(self, schedules=None, progress=None) -> dict:
        """What the codegen takes from this result (``target_dlac.codegen.generator.Codegen``'s
        keyword arguments): display names, precisions and SWIS decompositions by layer
        variable, plus the given ``schedules`` and ``progress``."""
        return dict(layer_names={i.var: i.name for i in self.layers},
                    precisions={i.var: i.precision for i in self.layers},
                    schedules=schedules, swis=self.swis, progress=progress)

    def totals(self) -> dict:
        dense = sum(r.dense_macs for r in self.multiplies)
        replaced = sum(r.replaced for r in self.multiplies)
        return {"dense_macs": dense, "replaced": replaced,
                "left": sum(r.left for r in self.multiplies),
                "replaced_share": replaced / dense if dense else 0.0}

    def cluster_counts(self, n: int | None = None) -> dict:
        """Multiplies replaced with the counting of papers.md section 2 (one real multiply
        per cluster of ``n`` k x k kernel slices of an output channel; default: the
        config's cluster size, whole layer for 0), over the layers quantized ternary."""
        from passes.mult_count import count_layers, totals

        n = n if n is not None else (self.config.cluster or None)
        by_var = {r.name: r for r in self.multiplies}
        rows = []
        for info in self.layers:
            w = info.weight_shape
            kh, kw, cin = (w[2], w[3], w[1]) if info.op == "conv2d" else (1, 1, w[0])
            rows.append({"name": info.name, "kind": "conv" if info.op == "conv2d" else "dense",
                         "kh": kh, "kw": kw, "cin": cin, "dense_macs": by_var[info.var].dense_macs})
        keep = [i.name for i in self.layers if i.precision != "ternary"]
        return totals(count_layers(rows, n, full_precision=keep)) | {"n": n}

    def layer_table(self) -> str:
        lines = [f"{'layer':<28} {'op':<7} {'precision':<9} {'why':<14} {'dense MACs':>12} "
                 f"{'replaced':>12} {'left':>10}"]
        by_var = {r.name: r for r in self.multiplies}
        for info in self.layers:
            r = by_var.get(info.var)
            lines.append(f"{printable(info.name):<28} {info.op:<7} {info.precision:<9} {info.reason:<14} "
                         f"{r.dense_macs if r else 0:>12,} {r.replaced if r else 0:>12,} "
                         f"{r.left if r else 0:>10,}")
        t = self.totals()
        lines.append(f"{'total':<28} {'':<7} {'':<9} {'':<14} {t['dense_macs']:>12,} "
                     f"{t['replaced']:>12,} {t['left']:>10,}   "
                     f"({100 * t['replaced_share']:.1f}% of multiplies replaced)")
        if any(i.precision == "ternary" for i in self.layers):
            c = self.cluster_counts()
            lines.append(f"papers.md section 2 counting (one multiply per cluster of "
                         f"{c['n'] or 'all'} kernel slices): {100 * c['replaced_share']:.1f}% replaced")
        return "\n".join(lines)


def plan_precisions(layer_names: dict[str, str], mod, config: QuantConfig,
                    prequantized: dict[str, str] | None = None) -> list[LayerInfo]:
    """Precision of each layer.  ``prequantized`` maps the layers whose weights the model
    itself quantized (FoldPrequantized) to their kind: the model's own quantization wins
    over the config's default and over keep_first / keep_last; only an override pattern
    that says ``fp32`` wins over it (the layer then keeps the float weights)."""
    layers = find_layers(mod["main"])
    infos = []
    for i, layer in enumerate(layers):
        display = layer_names.get(layer.name, layer.name)
        prec, why = config.precision_for(display, i, len(layers))
        kind = (prequantized or {}).get(layer.name)
        if kind is not None and not (why.startswith("override") and prec == "fp32"):
            prec, why = kind, "pre-quantized"
        infos.append(LayerInfo(display, layer.name, layer.op, tuple(layer.weight.shape), prec, why))
    return infos


def dump_stage(directory: str, index: int, stage: str, mod) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{index:02d}_{stage}.py")
    atomic_write_text(path, mod.script(show_meta=False))
    return path


def compile_model(model, example_inputs=None, *, config: QuantConfig | None = None,
                  input_shapes: dict | None = None, dump_ir: str | None = None,
                  stop_after: str = "partition", progress=None) -> CompileResult:
    """Import ``model`` and run the stages up to ``stop_after``.

    ``model``: a torch module (with ``example_inputs``), an ONNX ModelProto, or
    a path (``.onnx``, ``.pt2``, ``file.py:factory``).  ``progress(stage, secs)``
    is called after each stage.
    """
    config = config or QuantConfig()
    if stop_after not in STAGES:
        raise ConfigError(f"unknown stage {stop_after!r}; stages are {', '.join(STAGES)}")
    stages, timings = {}, {}
    state: dict = {"swis": {}}

    def run(stage, fn):
        t0 = time.perf_counter()
        stages[stage] = fn()
        timings[stage] = time.perf_counter() - t0
        if dump_ir:
            dump_stage(dump_ir, len(stages) - 1, stage, stages[stage])
        if progress:
            progress(stage, timings[stage])
        return stage == stop_after

    def do_import():
        imported = load_model(model, example_inputs, input_shapes)
        state["imported"] = imported
        return imported.mod

    def do_canonicalize():
        # a pre-quantized model's weight subgraphs -> float constants + their integers;
        # BN after such a layer is not folded into its weights (it goes to the epilogue)
        mod, state["prequant"] = fold_prequantized(stages["import"])
        mod = fold_constant_views(mod)
        mod = fold_batchnorm(mod, keep=set(state["prequant"].layers))
        for p in (canonical_bias, remove_dead_tuples):
            mod = p(mod)
        return mod

    def do_quantize():
        mod = stages["canonicalize"]
        pre, why_not = prequantized_weights(mod, state.get("prequant"))
        for name, why in why_not.items():
            warnings.warn(f"layer {name}: the model's quantized weights are used as float ({why})")
        infos = plan_precisions(state["imported"].layer_names, mod, config,
                                {name: kind for name, (_, _, kind) in pre.items()})
        state["layers"] = infos
        own = {i.var for i in infos if i.var in pre and i.precision != "fp32"}
        plan = {i.var: WeightSpec(i.precision, config.cluster, config.threshold_factor,
                                  config.swis_shifts, config.swis_consecutive)
                for i in infos if i.precision != "fp32" and i.var not in own}
        mod, state["decomp"] = quantize_weights(mod, plan, state["swis"])
        # pre-quantized layers: weights unchanged (already scale * q), integers from the model
        state["decomp"].update({v: pre[v][:2] for v in own})
        return mod

    def do_fold():
        quantized = {i.var: i.precision for i in state["layers"] if i.precision != "fp32"}
        ternary = {v for v, p in quantized.items() if p == "ternary"}
        mod = multiply_to_accumulate(fold_scales(stages["quantize"], state["decomp"]), quantized)
        mod = remove_dead_tuples(mod)
        check_accumulate_only(mod, ternary)
        return mod

    def do_partition():
        mod, host = partition(stages["fold"])
        state["host"] = host
        return mod

    for stage, fn in zip(STAGES, (do_import, do_canonicalize, do_quantize, do_fold, do_partition)):
        if run(stage, fn):
            break

    imported = state["imported"]
    last = stages[next(reversed(stages))]
    if "layers" in state:
        infos = state["layers"]
    else:     # stopped before quantize: every layer is still full precision
        infos = plan_precisions(imported.layer_names, last, QuantConfig.full_precision())
    # multiplies are only replaced once the fold stage holds ternary weights as int8
    if "fold" in stages:
        mults = multiplies_report(stages["fold"], {i.var: i.precision for i in infos})
    else:
        mults = multiplies_report(last, {})
    return CompileResult(stages, infos, mults, state.get("host", []),
                         regions(last) if "partition" in stages else [], imported.input_names,
                         imported.input_shapes, config, imported.source, imported.source_hash,
                         timings, state["swis"])
