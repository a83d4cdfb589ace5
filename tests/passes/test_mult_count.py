"""Multiplication counting for cluster-based ternary (passes/mult_count.py).

Acceptance: ResNet-101 at 224x224 replaces 84.7% of its multiplies at N=4 and
97.6% at N=64 (Mellempudi et al., arXiv 1701.08978, papers.md section 2).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compiler.models import resnet50, resnet101
from passes.mult_count import (LayerCount, cluster_replaced, count_layers, layers_from_torch,
                               totals)


def share(layers, n, **kw) -> float:
    return totals(count_layers(layers, n, **kw))["replaced_share"]


@pytest.fixture(scope="module")
def r101():
    model = resnet101().eval()
    return model, layers_from_torch(model, torch.zeros(1, 3, 224, 224))


@pytest.fixture(scope="module")
def r50():
    model = resnet50().eval()
    return model, layers_from_torch(model, torch.zeros(1, 3, 224, 224))


# --- cluster_replaced on hand examples ---------------------------------------------------

def test_cluster_replaced_3x3():
    # 64 -> 64 channels, 8x8 output: 4096 output elements, 576 MACs each
    dense = 64 * 8 * 8 * 64 * 9
    replaced, left = cluster_replaced(dense, 3, 3, 4)
    assert left == 4096 * 64 // 4          # one multiply per 4 slices of 3x3
    assert replaced == dense - left
    assert replaced / dense == pytest.approx(1 - 1 / 36)
    assert cluster_replaced(dense, 3, 3, 4, cin=64) == (replaced, left)


def test_cluster_replaced_1x1_and_dense():
    assert cluster_replaced(1000, 1, 1, 4) == (750, 250)
    assert cluster_replaced(2048 * 1000, 1, 1, 64, cin=2048) == (2048 * 1000 - 32 * 1000, 32 * 1000)


def test_cluster_replaced_n1():
    # N=1: a cluster is a single k x k slice -> a 3x3 conv keeps 1/9, a 1x1 conv keeps all
    assert cluster_replaced(900, 3, 3, 1) == (800, 100)
    assert cluster_replaced(900, 1, 1, 1) == (0, 900)


def test_cluster_replaced_rounding_and_zero():
    assert cluster_replaced(10, 1, 1, 4) == (7, 3)      # left rounded up
    assert cluster_replaced(19, 3, 3, 1) == (16, 3)
    assert cluster_replaced(0, 3, 3, 4) == (0, 0)


def test_cluster_capped_at_input_channels():
    # 2 input channels, 3x3, 100 output elements: at most one cluster of 2 slices per output
    dense = 100 * 2 * 9
    assert cluster_replaced(dense, 3, 3, 64, cin=2) == (dense - 100, 100)
    assert cluster_replaced(dense, 3, 3, None, cin=2) == (dense - 100, 100)
    assert cluster_replaced(dense, 3, 3, "layer", cin=2) == (dense - 100, 100)
    # without cin the formula is applied as given: ceil(1800 / 576) = 4 < 100 outputs
    assert cluster_replaced(dense, 3, 3, 64) == (dense - 4, 4)
    with pytest.raises(ValueError):
        cluster_replaced(dense, 3, 3, None)
    for bad in (0, -1, 2.5, "4"):
        with pytest.raises(ValueError):
            cluster_replaced(dense, 3, 3, bad)


# --- count_layers / totals ---------------------------------------------------------------

def test_first_and_last_not_replaced():
    layers = [("conv1", "conv", 7, 7, 4900), ("mid", "conv", 3, 3, 3600, 64),
              {"name": "fc", "kind": "dense", "kh": 1, "kw": 1, "dense_macs": 1000}]
    rows = count_layers(layers, 4)
    assert [r.precision for r in rows] == ["fp32", "ternary", "fp32"]
    assert rows[0] == LayerCount("conv1", "conv", 7, 7, 4900, 0, 4900, "fp32")
    assert rows[2].replaced == 0 and rows[2].left == 1000
    assert (rows[1].replaced, rows[1].left) == (3500, 100)
    t = totals(rows)
    assert t == {"dense": 9500, "replaced": 3500, "left": 6000, "replaced_share": 3500 / 9500}
    every = count_layers(layers, 4, full_precision=())
    assert all(r.precision == "ternary" and r.replaced > 0 for r in every)
    by_name = count_layers(layers, 4, full_precision=("mid",))
    assert [r.precision for r in by_name] == ["ternary", "fp32", "ternary"]
    with pytest.raises(ValueError):
        count_layers([("x", "pool", 1, 1, 10)], 4)


def test_layers_from_torch_small():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 8, (3, 5), padding=(1, 2))
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            y = self.dw(self.c(x))                       # (2, 8, 6, 6)
            return self.fc(y.permute(0, 2, 3, 1))        # Linear on (2, 6, 6, 8)

    recs = layers_from_torch(Net(), torch.zeros(2, 4, 6, 6))
    assert [r["name"] for r in recs] == ["c", "dw", "fc"]
    assert recs[0] == {"name": "c", "kind": "conv", "kh": 3, "kw": 5,
                       "dense_macs": 2 * 8 * 36 * 4 * 15, "cin": 4}
    assert recs[1]["dense_macs"] == 2 * 8 * 36 * 9 and recs[1]["cin"] == 1
    assert recs[2] == {"name": "fc", "kind": "dense", "kh": 1, "kw": 1,
                       "dense_macs": 72 * 8 * 3, "cin": 8}
    rows = count_layers(recs, 64, full_precision=())
    assert rows[1].replaced == recs[1]["dense_macs"] * 8 // 9    # depthwise: 1 slice/cluster


# --- the ResNets -------------------------------------------------------------------------

def test_torchvision_parameter_counts(r50, r101):
    assert sum(p.numel() for p in r50[0].parameters()) == 25_557_032
    assert sum(p.numel() for p in r101[0].parameters()) == 44_549_160


def test_resnet101_replaced_share_matches_paper(r101):
    _, layers = r101
    assert len(layers) == 105                     # 104 convs + fc
    assert layers[0]["name"] == "conv1" and layers[-1]["name"] == "fc"
    rows = count_layers(layers, 4)
    assert [r.name for r in rows if r.precision == "fp32"] == ["conv1", "fc"]
    assert totals(rows)["dense"] == 7_801_405_440                 # 7.8 GMACs
    assert share(layers, 4) == pytest.approx(0.847, abs=0.005)
    assert share(layers, 64) == pytest.approx(0.976, abs=0.005)


def test_resnet101_per_layer_one_minus_one_over_n(r101):
    _, layers = r101
    flat = [dict(l, kh=1, kw=1) for l in layers]                  # 1 - 1/N for every layer
    rows = count_layers(flat, 4)
    ternary = [r for r in rows if r.precision == "ternary"]
    assert sum(r.replaced for r in ternary) / sum(r.dense_macs for r in ternary) == 0.75
    assert share(flat, 4) == pytest.approx(0.75, abs=0.015)      # 73.9% incl. conv1 + fc


def test_resnet50_reference_numbers(r50, r101):
    shares50 = {n: share(r50[1], n) for n in (1, 4, 16, 64)}
    shares101 = {n: share(r101[1], n) for n in (1, 4, 16, 64)}
    print("\nreplaced share   " + " ".join(f"{'N=' + str(n):>6}" for n in shares50))
    print("ResNet-50        " + " ".join(f"{100 * s:5.1f}%" for s in shares50.values()))
    print("ResNet-101       " + " ".join(f"{100 * s:5.1f}%" for s in shares101.values()))
    vals = list(shares50.values())
    assert vals == sorted(vals) and len(set(vals)) == len(vals)   # grows with N
    assert shares101[4] < shares50[64] < shares101[64]
    assert 0.0 < shares50[1] < shares50[4] < 1.0
