"""The pipeline driver: stages, IR dumps, layer names through every stage, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tvm import relax

from compiler import STAGES, QuantConfig, compile_model
from compiler.cli import main as cli
from target_dlac.core.errors import ConfigError
from passes.layers import find_layers


@pytest.fixture(scope="module")
def result(resnet_small, resnet_input, tmp_path_factory):
    dump = tmp_path_factory.mktemp("ir")
    seen = []
    r = compile_model(resnet_small, (resnet_input,), config=QuantConfig(), dump_ir=str(dump),
                      progress=lambda stage, secs: seen.append(stage))
    r.dump_dir, r.seen = dump, seen
    return r


def test_all_stages_run_in_order(result):
    assert list(result.stages) == list(STAGES) == result.seen
    assert set(result.timings) == set(STAGES)


def test_every_stage_is_well_formed(result):
    for mod in result.stages.values():
        relax.analysis.well_formed(mod)     # raises on the first violation


def test_layer_names_survive_every_stage(result):
    from target_dlac.core.ir import iter_bindings

    names = [l.var for l in result.layers]
    imported = [b.var.name for b in iter_bindings(result.stages["import"]["main"])]
    assert [n for n in imported if n in names] == names     # named at import (fc's weight is still transposed there)
    for stage in ("canonicalize", "quantize", "fold"):
        assert [l.name for l in find_layers(result.stages[stage]["main"])] == names, stage


def test_dump_ir_writes_tvmscript_per_stage(result):
    files = sorted(p.name for p in result.dump_dir.iterdir())
    assert files == [f"{i:02d}_{s}.py" for i, s in enumerate(STAGES)]
    fold = (result.dump_dir / "03_fold.py").read_text()
    assert "def main" in fold and '"int8"' not in fold or "R.nn.conv2d" in fold
    assert "Codegen" in (result.dump_dir / "04_partition.py").read_text()


def test_stop_after(resnet_small, resnet_input):
    r = compile_model(resnet_small, (resnet_input,), stop_after="canonicalize")
    assert list(r.stages) == ["import", "canonicalize"]
    with pytest.raises(ConfigError, match="unknown stage"):
        compile_model(resnet_small, (resnet_input,), stop_after="optimize")


def test_cli_compile_onnx(resnet_onnx, tmp_path):
    report = tmp_path / "report.json"
    dump = tmp_path / "ir"
    res = CliRunner().invoke(cli, ["compile", str(resnet_onnx), "--dump-ir", str(dump),
                                   "--report-json", str(report), "--precision", "layer2.*=fp32"])
    assert res.exit_code == 0, res.output
    assert "layer1.0.conv1" in res.output and "multiplies replaced" in res.output
    data = json.loads(report.read_text())
    precs = {l["name"]: l["precision"] for l in data["layers"]}
    assert precs["layer1.0.conv1"] == "ternary" and precs["layer2.0.conv1"] == "fp32"
    assert precs["conv1"] == "fp32" and precs["fc"] == "fp32"
    assert data["host_ops"] == [] and 0 < data["totals"]["replaced_share"] < 1
    assert len(list(dump.iterdir())) == len(STAGES)


def test_cli_quant_none_keeps_float(resnet_onnx):
    res = CliRunner().invoke(cli, ["compile", str(resnet_onnx), "--quant", "none"])
    assert res.exit_code == 0, res.output
    assert "ternary" not in res.output and "(0.0% of multiplies replaced)" in res.output


def test_passes_compose_as_tvm_module_passes(result):
    """Each pass is also a TVM module pass; a Sequential of them equals the pipeline stage."""
    import tvm

    from passes.canonical_bias import CanonicalBias
    from passes.fold_batchnorm import FoldBatchNorm
    from passes.fold_constant_views import FoldConstantViews
    from passes.remove_dead_tuples import RemoveDeadTuples

    seq = tvm.transform.Sequential([FoldConstantViews, FoldBatchNorm, CanonicalBias, RemoveDeadTuples])
    out = seq(result.stages["import"])
    tvm.ir.assert_structural_equal(out, result.stages["canonicalize"])


def test_quantize_to_partition_as_tvm_passes(result):
    import tvm

    from passes.accumulate import MultiplyToAccumulate
    from passes.fold_scales import FoldScales
    from passes.partition import PartitionForDlac
    from passes.remove_dead_tuples import RemoveDeadTuples
    from passes.quantize_weights import QuantizeWeights, WeightSpec

    ternary = {l.var for l in result.layers if l.precision == "ternary"}
    seq = tvm.transform.Sequential([
        QuantizeWeights({name: WeightSpec() for name in ternary}),
        FoldScales(ternary), MultiplyToAccumulate(ternary), RemoveDeadTuples,
        PartitionForDlac(result.plan)])
    tvm.ir.assert_structural_equal(seq(result.stages["canonicalize"]), result.stages["partition"])


def test_pipeline_is_a_list_of_named_stages(resnet_small, resnet_input):
    from compiler.pipeline import PIPELINE, PipelineState, Stage, result_of, run_pipeline
    from target_dlac.isa.machine import Machine

    assert tuple(s.name for s in PIPELINE) == STAGES
    st = PipelineState(resnet_small, (resnet_input,), None, QuantConfig(), Machine())
    run_pipeline(st, stop_after="quantize")
    assert list(st.stages) == ["import", "canonicalize", "quantize"] and st.plans
    assert all(p.integers is not None for p in st.plans if p.quantized)
    # a stage list is data: a custom one runs the same way
    seen = []
    st2 = PipelineState(resnet_small, (resnet_input,), None, QuantConfig(), Machine())
    extra = PIPELINE[:1] + (Stage("noop", lambda s: seen.append(1) or s.stages["import"]),)
    run_pipeline(st2, stop_after="noop", pipeline=extra)
    assert list(st2.stages) == ["import", "noop"] and seen == [1]
    r = result_of(st)
    assert list(r.stages) == ["import", "canonicalize", "quantize"] and r.layers == st.plans
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(st, stop_after="nope")
