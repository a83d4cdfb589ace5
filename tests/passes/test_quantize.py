"""The quantized graph vs an independent fake-quant PyTorch implementation of the
same math, BN folding parity, the accumulate-only check and the multiplies report."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compiler import QuantConfig, compile_model, run_reference
from target_dlac.core.errors import ConfigError, QuantizationError
from passes.accumulate import check_accumulate_only
from passes.fold_batchnorm import fold_batchnorm
from tests.ir_helpers import op_histogram
from passes.layers import find_layers
from tests.conftest import max_rel_err
from tests.passes.test_twn import twn_reference


def fuse_resnet_bn(model: nn.Module) -> nn.Module:
    """PyTorch's own conv+BN fusion on our ResNet (an independent BN fold)."""
    m = copy.deepcopy(model).eval()
    m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
    for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in stage.children() if isinstance(stage, nn.Sequential) else []:
            blk.conv1, blk.bn1 = fuse_conv_bn_eval(blk.conv1, blk.bn1), nn.Identity()
            blk.conv2, blk.bn2 = fuse_conv_bn_eval(blk.conv2, blk.bn2), nn.Identity()
            if blk.downsample is not None:
                blk.downsample = nn.Sequential(fuse_conv_bn_eval(blk.downsample[0], blk.downsample[1]))
    return m


def fake_quant_torch(model: nn.Module, skip: set[str], per_filter=True) -> nn.Module:
    """Replace the weights of every conv/linear not in ``skip`` by alpha * t (test's own TWN)."""
    m = fuse_resnet_bn(model)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in skip:
                w = mod.weight.numpy()
                t, alpha = twn_reference(w, 0, per_filter)       # torch Linear weight is (N, K)
                shape = (-1,) + (1,) * (w.ndim - 1)
                mod.weight.copy_(torch.from_numpy((t * alpha.reshape(shape)).astype(np.float32)))
    return m


@pytest.mark.parametrize("config,skip", [
    (QuantConfig(), {"conv1", "fc"}),
    (QuantConfig.all_ternary(), set()),
    (QuantConfig(granularity="layer"), {"conv1", "fc"}),
    (QuantConfig(overrides={"layer2.*": "fp32"}),
     {"conv1", "fc", "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"}),
])
@pytest.mark.slow
def test_quantized_graph_matches_fake_quant_torch(resnet_small, resnet_input, config, skip):
    result = compile_model(resnet_small, (resnet_input,), config=config)
    assert {l.name for l in result.layers if l.precision == "fp32"} == skip
    ref_model = fake_quant_torch(resnet_small, skip, per_filter=config.granularity == "filter")
    with torch.no_grad():
        ref = ref_model(resnet_input).numpy()
    for stage in ("quantize", "fold", "partition"):
        out = run_reference(result.reference_module(stage), resnet_input.numpy())[0]
        assert max_rel_err(out, ref) < 1e-5, stage
    # quantization really changed the network (the check above is not vacuous)
    with torch.no_grad():
        assert max_rel_err(resnet_small(resnet_input).numpy(), ref) > 1e-3


def test_bn_fold_matches_torch_fusion(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), config=QuantConfig.full_precision(),
                           stop_after="canonicalize")
    fused = fuse_resnet_bn(resnet_small)
    weights = {l.name: l.weight for l in find_layers(result.stages["canonicalize"]["main"])}
    np.testing.assert_allclose(weights["layer1_0_conv2"], fused.layer1[0].conv2.weight.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights["conv1"], fused.conv1.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


class ConvBiasBN(nn.Module):
    """conv with bias + BN, linear + BN1d, and a BN that follows no layer."""

    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.bn1d = nn.BatchNorm1d(5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(self.bn0(x))))
        return self.bn1d(self.fc(torch.flatten(y, 1)))


def test_bn_fold_variants():
    from compiler.models import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(ConvBiasBN(), seed=3)
    x = torch.randn(2, 3, 8, 8)
    result = compile_model(model, (x,), config=QuantConfig.full_precision(), stop_after="canonicalize")
    hist = op_histogram(result.stages["canonicalize"])
    assert "nn.batch_norm" not in hist
    assert hist["multiply"] == 1          # only the standalone BN became x * s + t
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_reference(result.stages["canonicalize"], x.numpy())[0]
    assert np.abs(out - ref).max() < 1e-5


def test_fold_batchnorm_leaves_input_module_unchanged(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), stop_after="import")
    before = op_histogram(result.stages["import"])
    fold_batchnorm(result.stages["import"])
    assert op_histogram(result.stages["import"]) == before


def test_ternary_layers_only_accumulate(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), config=QuantConfig())
    ternary = {l.var for l in result.layers if l.precision == "ternary"}
    assert len(ternary) == 5
    fold = result.stages["fold"]
    for layer in find_layers(fold["main"]):
        w = layer.weight
        if layer.name in ternary:
            assert w.dtype == np.int8 and set(np.unique(w)) <= {-1, 0, 1}
        else:
            assert w.dtype == np.float32
    check_accumulate_only(fold, ternary)
    # the float weights of the quantize stage would fail the same check
    with pytest.raises(QuantizationError, match="multiplication by a weight remains"):
        check_accumulate_only(result.stages["quantize"], ternary)


def test_epilogue_is_one_multiply_add_per_channel(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), config=QuantConfig())
    hist = op_histogram(result.stages["fold"])
    ternary = sum(l.precision == "ternary" for l in result.layers)
    assert hist["multiply"] == ternary     # one scale multiply per ternary layer, none elsewhere
    assert hist["add"] == len(result.layers) + 2    # one bias per layer + two residual adds


def test_multiplies_report_counts(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), config=QuantConfig())
    rows = {r.name: r for r in result.multiplies}
    # independent count from torch module shapes: out pixels * Cout * Cin * kh * kw
    conv = resnet_small.layer1[0].conv2
    n, ho, wo = 2, 4, 4
    dense = n * ho * wo * conv.weight.numel()
    r = rows["layer1_0_conv2"]
    assert r.precision == "ternary" and r.dense_macs == dense and r.replaced == dense
    assert r.left == n * conv.out_channels * ho * wo
    w = find_layers(result.stages["fold"]["main"])
    nnz = {l.name: int(np.count_nonzero(l.weight)) for l in w}
    assert r.accumulations == n * ho * wo * nnz["layer1_0_conv2"]
    first = rows["conv1"]
    assert first.precision == "fp32" and first.replaced == 0 and first.left == first.dense_macs
    t = result.totals()
    assert t["replaced"] == sum(x.replaced for x in rows.values())
    assert 0.5 < t["replaced_share"] < 1.0


def test_first_last_defaults_and_config_errors():
    cfg = QuantConfig()
    assert cfg.precision_for("a", 0, 3)[0] == "fp32"
    assert cfg.precision_for("b", 1, 3) == ("ternary", "default")
    assert cfg.precision_for("c", 2, 3)[0] == "fp32"
    assert QuantConfig(overrides={"c": "ternary"}).precision_for("c", 2, 3) == ("ternary", "override 'c'")
    with pytest.raises(ConfigError):
        QuantConfig(weights="int3")
    with pytest.raises(ConfigError):
        QuantConfig(overrides={"x": "binary"})
