"""Partitioning: what dLAC executes is grouped into regions, the rest is host."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model, run_reference
from target_dlac.core.ir import relax_functions


def _composites(mod):
    out = []
    for _, func in relax_functions(mod):
        if func.attrs is not None and "Codegen" in func.attrs:
            from target_dlac.core.ir import iter_bindings
            for b in iter_bindings(func):
                if hasattr(b.value, "attrs") and b.value.attrs is not None and "Composite" in b.value.attrs:
                    out.append((str(b.value.attrs["Composite"]),
                                str(b.value.attrs["dlac.layer"]) if "dlac.layer" in b.value.attrs else None))
    return out


@pytest.mark.slow
def test_resnet_runs_wholly_on_dlac(resnet_small, resnet_input):
    result = compile_model(resnet_small, (resnet_input,), config=QuantConfig())
    assert result.host_ops == []
    comps = _composites(result.stages["partition"])
    kinds = [c for c, _ in comps]
    assert kinds.count("dlac.conv2d_residual_relu") == 2
    assert "dlac.max_pool2d" in kinds and "dlac.global_avg_pool" in kinds and "dlac.dense" in kinds
    tagged = [layer for _, layer in comps if layer]
    assert sorted(tagged) == sorted(l.var for l in result.layers)   # every layer found by name
    x = resnet_input.numpy()
    np.testing.assert_allclose(run_reference(result.reference_module("partition"), x)[0],
                               run_reference(result.reference_module("fold"), x)[0], rtol=0, atol=1e-6)


class WithHostOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)   # grouped, not depthwise: on dLAC
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = self.grouped(y).mean((2, 3))
        return torch.softmax(self.fc(torch.exp(y)), dim=-1)      # (sigmoid would be an ALU op on dLAC)


def test_host_ops_are_reported():
    torch.manual_seed(0)
    model = WithHostOps().eval()
    x = torch.randn(1, 4, 6, 6)
    result = compile_model(model, (x,), config=QuantConfig.all_ternary())
    host = [h.op for h in result.host_ops]
    assert "nn.softmax" in host and "exp" in host
    assert "nn.conv2d" not in host      # the grouped conv went to dLAC (G convs on channel slices)
    assert len(result.regions) >= 2      # dLAC work on both sides of the host ops
    with torch.no_grad():
        assert run_reference(result.reference_module(), x.numpy())[0].shape == model(x).shape


def test_depthwise_conv_goes_to_dlac():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU()).eval()
    result = compile_model(model, (torch.randn(1, 4, 6, 6),), config=QuantConfig.full_precision())
    assert result.host_ops == []
    assert [c for c, _ in _composites(result.stages["partition"])] == ["dlac.conv2d_relu"]
