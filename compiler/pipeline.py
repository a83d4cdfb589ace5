"""The dlac pipeline driver: named stages from a model to a partitioned,
quantized Relax graph.

The pipeline is data: :data:`PIPELINE`, a list of :class:`Stage` (name, function) run in
order over one typed :class:`PipelineState`.  Each stage function reads the state and
returns its module; the driver keeps every stage's module (it can be dumped as
TVMScript), times it and reports progress.  Stages, in order:

``import``        frontend; weights bound as constants, layers named
``canonicalize``  FoldPrequantized, FoldConstantViews, FlattenDense, FoldBatchNorm,
                  CanonicalBias, RemoveDeadTuples
``quantize``      PlanLayers (the layer plan: precision per layer from
                  :class:`QuantConfig`, weight format; a pre-quantized model's layers keep
                  their own integers), QuantizeWeights (the plan's integers / SWIS
                  decompositions, SWIS groups on the machine's PE columns)
``fold``          FoldScales, MultiplyToAccumulate (+ the accumulate-only check),
                  ReluThreshold (the fused ReLU of the layers :attr:`QuantConfig.relu_thresholds`
                  names becomes ``x if x > T else 0``; also in the reference built from here)
``partition``     PartitionForDlac (dLAC regions vs host ops; the plan's facts on the
                  layers' composites; a thresholded ReLU must be fused into its layer's EPI)

Entry point: :func:`compile_model`; it returns a :class:`compiler.result.CompileResult`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

from passes.accumulate import check_accumulate_only, multiplies_report, multiply_to_accumulate
from passes.bounded_take import bounded_take
from passes.canonical_bias import canonical_bias
from passes.fold_batchnorm import fold_batchnorm
from passes.fold_constant_views import fold_constant_views
from passes.flatten_dense import flatten_dense
from passes.fold_prequantized import PrequantInfo, fold_prequantized, prequantized_weights
from passes.fold_scales import fold_scales
from passes.partition import partition, regions
from passes.plan_layers import plan_layers
from passes.relu_threshold import check_fused, relu_threshold, resolve as resolve_relu_thresholds
from passes.remove_dead_tuples import remove_dead_tuples
from passes.quantize_weights import WeightSpec, quantize_layers

from target_dlac.core.atomic import atomic_write_text
from target_dlac.core.errors import ConfigError
from target_dlac.core.plan import LayerPlan, WeightFormat
from target_dlac.isa.machine import Machine
from compiler.config import QuantConfig
from compiler.loader import load_model
from compiler.result import CompileResult, LayerInfo  # noqa: F401 - re-exported

STAGES = ("import", "canonicalize", "quantize", "fold", "partition")


@dataclass
class PipelineState:
    """What the stages read and write, besides each stage's module (``stages``)."""

    model: object
    example_inputs: object
    input_shapes: dict | None
    config: QuantConfig
    machine: Machine
    stages: dict = field(default_factory=dict)      # stage name -> IRModule, in order
    timings: dict = field(default_factory=dict)     # stage name -> seconds
    imported: object = None                          # compiler.loader's imported model
    prequant: PrequantInfo | None = None             # FoldPrequantized's records
    plans: list[LayerPlan] | None = None             # the layer plan (quantize stage on)
    relu_thresholds: dict = field(default_factory=dict)  # layer var -> ReLU threshold T > 0 (fold)
    host: list = field(default_factory=list)         # passes.partition.HostOp

    @property
    def plan(self) -> dict[str, LayerPlan]:
        return {p.var: p for p in self.plans or ()}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[PipelineState], object]          # state -> the stage's module


def stage_import(st: PipelineState):
    st.imported = load_model(st.model, st.example_inputs, st.input_shapes)
    return st.imported.mod


def stage_canonicalize(st: PipelineState):
    # a pre-quantized model's weight subgraphs -> float constants + their integers;
    # BN after such a layer is not folded into its weights (it goes to the epilogue)
    mod, st.prequant = fold_prequantized(st.stages["import"])
    mod = bounded_take(mod)           # computed take indices: clip mode, never out of bounds
    mod = fold_constant_views(mod)
    mod = flatten_dense(mod)          # linear layers on N-D inputs as 2-D dense layers
    mod = fold_batchnorm(mod, keep=set(st.prequant.layers))
    for p in (canonical_bias, remove_dead_tuples):
        mod = p(mod)
    return mod


def _weight_spec(config: QuantConfig, machine: Machine):
    def spec_for(plan: LayerPlan) -> WeightSpec:
        # a depthwise SWIS layer is planned as int8 (no input-channel groups)
        kind = "int8" if plan.precision == "swis" and plan.weight_format is WeightFormat.INT8 \
            else plan.precision
        return WeightSpec(kind, config.cluster, config.threshold_factor, config.swis_shifts,
                          config.swis_consecutive, machine.pe_cols)
    return spec_for


def stage_quantize(st: PipelineState):
    mod = st.stages["canonicalize"]
    pre, why_not = prequantized_weights(mod, st.prequant)
    for name, why in why_not.items():
        warnings.warn(f"layer {name}: the model's quantized weights are used as float ({why})")
    config = st.config
    plans = plan_layers(mod, st.imported.layer_names, config.precision_for, pre,
                        lambda name: config.activations_for(name, None))
    # pre-quantized layers: weights unchanged (already scale * q), integers from the model
    mod, st.plans = quantize_layers(mod, plans, _weight_spec(config, st.machine))
    return mod


def stage_fold(st: PipelineState):
    quantized = {p.var: p.weight_format for p in st.plans if p.quantized}
    ternary = {v for v, f in quantized.items() if f is WeightFormat.TERNARY}
    decomp = {p.var: (p.integers.q, p.integers.scale) for p in st.plans if p.quantized}
    mod = multiply_to_accumulate(fold_scales(st.stages["quantize"], decomp), quantized)
    mod = remove_dead_tuples(mod)
    check_accumulate_only(mod, ternary)
    if st.config.relu_thresholds:       # patterns checked even when every T is 0 (graph unchanged)
        st.relu_thresholds = resolve_relu_thresholds(mod, st.imported.layer_names, st.config.relu_thresholds,
                                                     st.config.relu_pattern_for)
        mod = relu_threshold(mod, st.relu_thresholds)
    return mod


def stage_partition(st: PipelineState):
    mod, st.host = partition(st.stages["fold"], st.plan)
    check_fused(mod, st.relu_thresholds, st.imported.layer_names)
    return mod


#: The pipeline: its stages, in order (names as :data:`STAGES`).
PIPELINE: tuple[Stage, ...] = (Stage("import", stage_import), Stage("canonicalize", stage_canonicalize),
                               Stage("quantize", stage_quantize), Stage("fold", stage_fold),
                               Stage("partition", stage_partition))
assert tuple(s.name for s in PIPELINE) == STAGES


def dump_stage(directory: str, index: int, stage: str, mod) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{index:02d}_{stage}.py")
    atomic_write_text(path, mod.script(show_meta=False))
    return path


def run_pipeline(st: PipelineState, stop_after: str = "partition", dump_ir: str | None = None,
                 progress=None, pipeline: tuple[Stage, ...] = PIPELINE) -> PipelineState:
    """Run the stages of ``pipeline`` over ``st`` up to ``stop_after`` (included):
    each one's module goes to ``st.stages``, its time to ``st.timings``; ``dump_ir``:
    a directory for each module's TVMScript; ``progress(stage, secs)`` after each."""
    names = [s.name for s in pipeline]
    if stop_after not in names:
        raise ConfigError(f"unknown stage {stop_after!r}; stages are {', '.join(names)}")
    for stage in pipeline:
        t0 = time.perf_counter()
        st.stages[stage.name] = stage.run(st)
        st.timings[stage.name] = time.perf_counter() - t0
        if dump_ir:
            dump_stage(dump_ir, len(st.stages) - 1, stage.name, st.stages[stage.name])
        if progress:
            progress(stage.name, st.timings[stage.name])
        if stage.name == stop_after:
            break
    return st


def result_of(st: PipelineState) -> CompileResult:
    """The :class:`CompileResult` of a pipeline run (through any stage)."""
    imported, stages = st.imported, st.stages
    last = stages[next(reversed(stages))]
    if st.plans is not None:
        plans = st.plans
    else:     # stopped before quantize: every layer is still full precision
        plans = plan_layers(last, imported.layer_names, QuantConfig.full_precision().precision_for)
    # multiplies are only replaced once the fold stage holds ternary weights as int8
    if "fold" in stages:
        mults = multiplies_report(stages["fold"], {p.var: p.precision for p in plans})
    else:
        mults = multiplies_report(last, {})
    return CompileResult(stages, plans, mults, st.host, regions(last) if "partition" in stages else [],
                         imported.input_names, imported.input_shapes, st.config, imported.source,
                         imported.source_hash, st.timings, st.machine)


def compile_model(model, example_inputs=None, *, config: QuantConfig | None = None,
                  input_shapes: dict | None = None, dump_ir: str | None = None,
                  stop_after: str = "partition", progress=None, machine: Machine | None = None) -> CompileResult:
    """Import ``model`` and run the stages up to ``stop_after``.

    ``model``: a torch module (with ``example_inputs``), an ONNX ModelProto, or
    a path (``.onnx``, ``.pt2``, ``file.py:factory``).  ``progress(stage, secs)``
    is called after each stage.  ``machine`` (default :class:`Machine()`): the machine the
    layers are planned for (SWIS filters sharing a shift count are its PE columns).
    """
    if stop_after not in STAGES:
        raise ConfigError(f"unknown stage {stop_after!r}; stages are {', '.join(STAGES)}")
    st = PipelineState(model, example_inputs, input_shapes, config or QuantConfig(), machine or Machine())
    return result_of(run_pipeline(st, stop_after, dump_ir, progress))
