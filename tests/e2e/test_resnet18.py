"""Torchvision-shaped ResNet-18 at 224x224: the whole front half at real scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler import QuantConfig, compile_model, run_reference
from compiler.models import randomize_bn, resnet18
from tests.conftest import max_rel_err
from tests.passes.test_quantize import fake_quant_torch

pytestmark = pytest.mark.slow


def test_resnet18_ternary_matches_fake_quant_torch():
    torch.manual_seed(0)
    model = randomize_bn(resnet18(), seed=2)
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32))
    result = compile_model(model, (x,), config=QuantConfig())
    assert len(result.layers) == 21 and result.host_ops == []
    assert [l.name for l in result.layers if l.precision == "fp32"] == ["conv1", "fc"]
    ref_model = fake_quant_torch(model, {"conv1", "fc"})
    with torch.no_grad():
        ref = ref_model(x).numpy()
    out = run_reference(result.reference_module("partition"), x.numpy())[0]
    assert max_rel_err(out, ref) < 1e-5
    # share of multiplies replaced, counted independently from the torch module's shapes
    hooks, macs = [], {}

    def count(name):
        def hook(mod, inp, out):
            macs[name] = out.numel() // out.shape[1] * mod.weight.numel() if out.dim() == 4 \
                else out.shape[0] * mod.weight.numel()
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(mod.register_forward_hook(count(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    replaced = sum(v for k, v in macs.items() if k not in ("conv1", "fc"))
    assert result.totals()["dense_macs"] == sum(macs.values())
    assert result.totals()["replaced_share"] == pytest.approx(replaced / sum(macs.values()))
