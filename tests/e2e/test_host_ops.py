"""Host fallbacks of issue 13 against PyTorch (``--quant none``, within 1e-5 relative):
normalizations, a ShuffleNetV2 block (chunk + channel shuffle: a tuple result), ELU
after a conv, a ``where`` (a bool intermediate), a conv whose pre-ReLU output has two consumers,
and upsampling.  Each binary also agrees with its own REF graph, and the conv of each block
stays on dLAC."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from target_dlac.core.errors import CodegenError  # noqa: E402
from target_dlac.sim.host import HostRunner, reference_outputs  # noqa: E402
from target_dlac.sim.interpreter import run  # noqa: E402


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's stride-1 unit: chunk, a branch on one half, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.dw(self.conv(b).relu())], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ConvThen(nn.Module):
    def __init__(self, tail, cin=3, cout=8):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.tail = tail

    def forward(self, x):
        return self.tail(self.conv(x))


class TwoConsumers(nn.Module):
    """The conv's pre-ReLU output is read by the ReLU and by a second branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.relu() + y * 2.0


class LinearNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.fc(x))


def _upsample(mode):
    extra = {} if mode == "nearest" else {"align_corners": False}
    return lambda y: F.interpolate(y, scale_factor=2, mode=mode, **extra)


def _where_square(y):
    """A ``where`` on ``y > 0`` (a bool intermediate) that is no dLAC activation."""
    return torch.where(y > 0, y, 0.5 * y * y)


class Lambda(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


CASES = {
    "layer_norm": (LinearNorm, (1, 4, 16), None),
    "layer_norm_nchw": (lambda: ConvThen(nn.LayerNorm([8, 8, 8])), (1, 3, 8, 8), "conv"),
    "group_norm": (lambda: ConvThen(nn.GroupNorm(2, 8)), (1, 3, 8, 8), "conv"),
    "shuffle_block": (ShuffleBlock, (1, 8, 8, 8), "conv"),
    # (hardswish and PReLU after a conv run on dLAC now: tests/e2e/test_activations.py)
    "elu": (lambda: ConvThen(nn.ELU()), (1, 3, 8, 8), "conv"),
    "bool_where": (lambda: ConvThen(Lambda(_where_square)), (1, 3, 8, 8), "conv"),
    "two_consumers": (TwoConsumers, (1, 3, 8, 8), "conv"),
    "upsample_nearest": (lambda: ConvThen(Lambda(_upsample("nearest"))), (1, 3, 8, 8), "conv"),
    "upsample_bilinear": (lambda: ConvThen(Lambda(_upsample("bilinear"))), (1, 3, 8, 8), "conv"),
    # Swin's shifted windows: take of computed indices (passes/bounded_take.py)
    "roll": (lambda: ConvThen(Lambda(lambda y: torch.roll(y, shifts=(1, -2), dims=(2, 3)))), (1, 3, 8, 8),
             "conv"),
}


def _build(model, x):
    result = compile_model(model.eval(), (x,), config=QuantConfig(weights="fp32"))
    return build_program(result)


#: in the fast inner loop; the others are marked slow (each builds TVM host and reference VMs)
FAST = ("shuffle_block", "bool_where", "roll")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_host_fallback_matches_pytorch(name):
    make, shape, dlac_layer = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    for p in model.parameters():              # non-trivial affine parameters (PReLU slope, norms)
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(*shape)
    prog = _build(model, x)
    assert prog.meta["host_ops"], "expected host ops"
    outs, _ = run(prog, {"x": x.numpy()}, host_runner=HostRunner(prog))
    with torch.no_grad():
        want = model(x).numpy()
    got = outs["output_0"]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), name
    ref = reference_outputs(prog, {"x": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    if dlac_layer:
        on_dlac = [layer["name"] for layer in prog.meta["layers"] if layer["op"] != "host"]
        assert dlac_layer in on_dlac, (name, on_dlac)


def test_tuple_results_become_one_host_op_per_element():
    torch.manual_seed(0)
    prog = _build(ShuffleBlock(), torch.randn(1, 8, 8, 8))
    ops = [h["op"] for h in prog.meta["host_ops"]]
    assert ops.count("split") == 2
    assert all(len(h["outputs"]) == 1 for h in prog.meta["host_ops"])


def test_bool_intermediate_is_inlined_into_its_consumer():
    """A ``where``'s ``x > 0`` is not stored (dLAC memory holds no bool): it is computed inside
    the ``where`` host op."""
    torch.manual_seed(0)
    prog = _build(ConvThen(Lambda(_where_square)), torch.randn(1, 3, 8, 8))
    ops = [h["op"] for h in prog.meta["host_ops"]]
    assert "greater" not in ops and "where" in ops


def test_unstorable_result_names_the_op_and_the_layer():
    """A bool the model returns cannot be held in dLAC memory: one error naming the op and
    the layer before it, not an internal variable alone."""
    torch.manual_seed(0)
    model = ConvThen(Lambda(lambda y: y > 0))
    with pytest.raises(CodegenError) as e:
        _build(model, torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert "relax.greater" in msg and "after layer 'conv'" in msg and "bool" in msg
