"""Build the Brevitas fixtures of ``tests/compiler/test_brevitas_qonnx.py``.

Runs in a SEPARATE virtual environment with Brevitas (never in dlac's ``.venv``; the tests
read only the files this writes, so CI needs no Brevitas)::

    python3.11 -m venv /tmp/brev
    /tmp/brev/bin/pip install torch==2.13.0 'brevitas==0.13.*' onnx onnxruntime onnxscript onnxoptimizer
    /tmp/brev/bin/python tools/make_brevitas_fixtures.py          # writes tests/fixtures/brevitas/

Nothing is trained.  Each network is built from a fixed seed, its BatchNorm statistics are
set from the seed, and Brevitas' activation quantizers are calibrated on 16 seeded random
inputs (``brevitas.graph.calibrate.calibration_mode``), so every run writes the same
numbers (the ``.onnx`` bytes may differ with the exporter's version).  The networks
(input ``1x3x8x8``)::

    QuantIdentity (int8) -> QuantConv2d 3->8 -> BN -> QuantReLU (uint8)
                         -> QuantConv2d 8->16 -> BN -> QuantReLU (uint8)
                         -> global average pool -> QuantIdentity (uint8) -> QuantLinear 16->10

* ``ternary``: conv weights 2-bit narrow range per output channel (``Int8WeightPerChannelFloat``
  with ``weight_bit_width=2``: the integers are {-1, 0, 1}, i.e. ternary), an 8-bit per-tensor
  head;
* ``int4``: the same with 4-bit narrow-range conv weights ([-7, 7]).

Each is exported twice, with ``export_onnx_qcdq`` (``*_qcdq.onnx``: QuantizeLinear / Clip /
DequantizeLinear) and ``export_qonnx`` (``*_qonnx.onnx``: QONNX ``Quant`` nodes), both with
Brevitas' defaults (the dynamo exporter), and saved as one file (the exporter's external
data inlined) with ``ir_version`` 10 (what onnxruntime reads).  ``<name>.npz`` holds ``x``
(4 inputs, ``4x1x3x8x8``), ``y`` (Brevitas' own PyTorch outputs for them, ``4x1x10``), and
per layer ``<layer>.int`` / ``<layer>.scale``: Brevitas' integer weights
(``quant_weight().int()``, torch layout) and their scales.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "brevitas")
SHAPE = (1, 3, 8, 8)


def build(wbits: int, seed: int = 0):
    import torch
    from torch import nn

    import brevitas.nn as qnn
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.quant import (Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int8WeightPerTensorFloat,
                                Uint8ActPerTensorFloat)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=Int8WeightPerChannelFloat,
                                      weight_bit_width=wbits)
            self.bn1 = nn.BatchNorm2d(8)
            self.r1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
            self.c2 = qnn.QuantConv2d(8, 16, 3, padding=1, bias=True, weight_quant=Int8WeightPerChannelFloat,
                                      weight_bit_width=wbits)
            self.bn2 = nn.BatchNorm2d(16)
            self.r2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.q3 = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(16, 10, bias=True, weight_quant=Int8WeightPerTensorFloat,
                                      weight_bit_width=8)

        def forward(self, x):
            x = self.inp(x)
            x = self.r1(self.bn1(self.c1(x)))
            x = self.r2(self.bn2(self.c2(x)))
            x = self.q3(self.pool(x))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(seed)
    net = Net().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            c = bn.num_features
            bn.running_mean.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            bn.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
            bn.bias.copy_(0.2 * torch.rand(c, generator=g) - 0.1)
        with calibration_mode(net):
            for _ in range(16):
                net(torch.randn(SHAPE, generator=g))
    return net, g


def main() -> int:
    import onnx
    import torch
    from brevitas.export import export_onnx_qcdq, export_qonnx

    warnings.filterwarnings("ignore")
    os.makedirs(OUT, exist_ok=True)
    for name, wbits in (("ternary", 2), ("int4", 4)):
        net, g = build(wbits)
        xs = torch.randn((4,) + SHAPE, generator=g)
        with torch.no_grad():
            ys = torch.stack([net(x) for x in xs])
        arrays = {"x": xs.numpy().astype(np.float32), "y": ys.numpy().astype(np.float32)}
        with torch.no_grad():
            for layer in ("c1", "c2", "fc"):
                qw = getattr(net, layer).quant_weight()
                arrays[f"{layer}.int"] = qw.int().numpy().astype(np.int8)
                arrays[f"{layer}.scale"] = qw.scale.reshape(-1).numpy().astype(np.float32)
        for fmt, export in (("qcdq", export_onnx_qcdq), ("qonnx", export_qonnx)):
            path = os.path.join(OUT, f"{name}_{fmt}.onnx")
            export(net, args=xs[0], export_path=path)
            model = onnx.load(path)             # reads the exporter's external data file too
            model.ir_version = 10
            if os.path.exists(path + ".data"):
                os.remove(path + ".data")
            onnx.save(model, path, save_as_external_data=False)     # one self-contained file
            print(f"{path}: {os.path.getsize(path):,} bytes, ops "
                  f"{sorted({n.op_type for n in model.graph.node})}")
        np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
