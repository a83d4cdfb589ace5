"""WRPN widening (compiler.train.widen): function-preserving with noise=0, seeded noise,
BatchNorm on the path, flattens, the refused cases, and the widened model through torch.export
and dlac's compiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from target_dlac.core.errors import ConfigError
from compiler.datasets import mnist_cnn, mnist_test
from compiler.models import randomize_bn, small_resnet
from compiler.train.widen import parse_widen, widen

MNIST_LAYERS = {"conv_layers.0": 2, "conv_layers.3": 2, "conv_layers.6": 2, "fc_layers.0": 2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (NaN if either side is NaN, so a comparison with it fails)."""
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


@pytest.fixture(scope="module")
def cnn():
    return mnist_cnn()


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(mnist_test(64)[0])


@pytest.fixture(scope="module")
def wide(cnn, images):
    return widen(cnn, MNIST_LAYERS, (images[:1],), noise=0)


def test_mnist_x2_is_function_preserving(cnn, wide, images):
    with torch.no_grad():
        ref, out = cnn(images), wide(images)
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 1e-5
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_mnist_x2_parameter_shapes(cnn, wide):
    old = dict(cnn.named_parameters())
    new = dict(wide.named_parameters())
    assert set(old) == set(new)
    expect = {"conv_layers.0.weight": (64, 1, 3, 3), "conv_layers.0.bias": (64,),
              "conv_layers.3.weight": (128, 64, 3, 3), "conv_layers.3.bias": (128,),
              "conv_layers.6.weight": (256, 128, 3, 3), "conv_layers.6.bias": (256,),
              "fc_layers.0.weight": (512, 2 * 1152), "fc_layers.0.bias": (512,),
              "fc_layers.2.weight": (10, 512), "fc_layers.2.bias": (10,)}
    assert {k: tuple(v.shape) for k, v in new.items()} == expect
    assert {k: tuple(v.shape) for k, v in old.items()} == {   # the original is not changed
        "conv_layers.0.weight": (32, 1, 3, 3), "conv_layers.0.bias": (32,),
        "conv_layers.3.weight": (64, 32, 3, 3), "conv_layers.3.bias": (64,),
        "conv_layers.6.weight": (128, 64, 3, 3), "conv_layers.6.bias": (128,),
        "fc_layers.0.weight": (256, 1152), "fc_layers.0.bias": (256,),
        "fc_layers.2.weight": (10, 256), "fc_layers.2.bias": (10,)}
    conv3 = wide.get_submodule("conv_layers.3")
    assert (conv3.in_channels, conv3.out_channels) == (64, 128)
    fc0 = wide.get_submodule("fc_layers.0")
    assert (fc0.in_features, fc0.out_features) == (2304, 512)
    # tiled layout: copy j of filter c is filter j*C + c; consumers' inputs tiled and / k
    w0 = cnn.conv_layers[0].weight
    assert torch.equal(wide.get_submodule("conv_layers.0").weight[32:], w0)
    fc2 = wide.get_submodule("fc_layers.2").weight
    assert torch.equal(fc2[:, :256], cnn.fc_layers[2].weight / 2)
    assert torch.equal(fc2[:, 256:], fc2[:, :256])


def test_original_model_unmodified(images):
    model = mnist_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    wide = widen(model, MNIST_LAYERS, (images[:1],), noise=0.05, seed=3)
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert dict(model.named_modules()) == modules
    assert type(model).__name__ == "CNN" and model.conv_layers[0].out_channels == 32
    assert isinstance(wide, torch.fx.GraphModule)
    assert all(wide.get_submodule(n) is not m for n, m in modules.items() if n)
    assert wide.get_submodule("conv_layers.0").weight.data_ptr() != model.conv_layers[0].weight.data_ptr()


def test_noise_changes_a_little_and_is_seeded(cnn, images):
    a = widen(cnn, MNIST_LAYERS, (images[:1],), noise=0.01, seed=7)
    b = widen(cnn, MNIST_LAYERS, (images[:1],), noise=0.01, seed=7)
    c = widen(cnn, MNIST_LAYERS, (images[:1],), noise=0.01, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv_layers.3.weight"], sc["conv_layers.3.weight"])
    w = sa["conv_layers.3.weight"]
    orig = cnn.conv_layers[3].weight.detach()
    assert torch.equal(w[:64], torch.cat([orig] * 2, 1) / 2)        # copy 0: the filter itself
    dev = (w[64:] - w[:64]).std() / w[:64].std()
    assert 0.003 < float(dev) < 0.03                                 # ~ noise relative to std
    with torch.no_grad():
        ref, out = cnn(images), a(images)
    err = rel(out, ref)
    assert 1e-4 < err < 0.2
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95


def test_noise_of_a_layer_does_not_depend_on_the_others(cnn, images):
    one = widen(cnn, {"conv_layers.3": 2}, (images[:1],), noise=0.02, seed=1)
    all_ = widen(cnn, MNIST_LAYERS, (images[:1],), noise=0.02, seed=1)
    w1 = one.get_submodule("conv_layers.3").weight
    w2 = all_.get_submodule("conv_layers.3").weight
    assert torch.equal(w1[64:], w2[64:, :32] * 2)   # same rows; all_ has its inputs tiled / 2


def test_k1_is_a_no_op(cnn, images):
    same = widen(cnn, {"conv_layers.0": 1, "fc_layers.2": 1}, (images[:1],), noise=0.5)
    with torch.no_grad():
        assert torch.equal(same(images), cnn(images))
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in same.state_dict().items())


class BNNet(nn.Module):
    """conv -> BN2d -> ReLU -> pool -> conv -> BN2d -> flatten -> linear -> BN1d -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.l1, self.b3 = nn.Linear(20, 7), nn.BatchNorm1d(7)
        self.l2 = nn.Linear(7, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = self.pool(torch.relu(self.b2(self.c2(x))))
        x = torch.flatten(x, 1)
        return self.l2(F.leaky_relu(self.b3(self.l1(x)), 0.1))


def test_batchnorm_on_the_path():
    torch.manual_seed(0)
    net = randomize_bn(BNNet(), seed=2).eval()
    x = torch.randn(5, 3, 8, 8)
    wide = widen(net, {"c1": 3, "c2": 2, "l1": 4}, (x[:1],), noise=0)
    assert not wide.training
    assert wide.get_submodule("b1").running_var.shape == (18,)
    assert wide.get_submodule("b1").num_features == 18
    assert wide.get_submodule("b3").weight.shape == (28,)
    assert wide.get_submodule("l1").weight.shape == (28, 40)
    with torch.no_grad():
        ref, out = net(x), wide(x)
    assert rel(out, ref) < 1e-5
    # in training mode the batch statistics of the copies equal the original's too
    net.train()
    wide_t = widen(net, {"c1": 3, "c2": 2, "l1": 4}, (x[:1],), noise=0)
    assert wide_t.training and wide_t.get_submodule("b1").training
    with torch.no_grad():
        assert rel(wide_t(x), net(x)) < 1e-5
    # the ShapeProp run did not touch the running statistics
    assert torch.equal(wide_t.get_submodule("b1").running_mean[:6], net.b1.running_mean)


class LiteralView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc, self.out = nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.conv(x)).view(-1, 64)
        y = self.fc(x.reshape(x.shape[0], -1))
        return self.out(y)


def test_literal_view_and_shape0():
    torch.manual_seed(1)
    net = LiteralView().eval()
    x = torch.randn(3, 1, 6, 6)
    wide = widen(net, {"conv": 2, "fc": 3}, (x[:1],), noise=0)
    assert "128" in wide.code
    with torch.no_grad():
        assert rel(wide(x), net(x)) < 1e-5


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(4, 4, 3, groups=2)
        self.h = nn.Conv2d(8, 4, 1)
        self.lin = nn.Linear(4, 4)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        y = self.g(self.a(x))
        z = torch.cat([self.b(x), self.b(x) * 0], 1)
        z = self.lin(self.h(z)[:, :, :4, :4])
        return self.fc(torch.flatten(y + z, 1))


@pytest.mark.parametrize("layer, message", [
    ("a", "cannot widen 'a': its output reaches Conv2d 'g' (a grouped convolution, groups=2)"),
    ("g", "cannot widen 'g': it is a grouped Conv2d (groups=2); widenable layers:"),
    ("b", "cannot widen 'b': the module is called 2 times (shared weights); widenable layers:"),
    ("h", "cannot widen 'h': its output reaches getitem"),
    ("lin", "cannot widen 'lin': its output reaches add 'add'"),
    ("fc", "cannot widen 'fc': its output reaches the model's output"),
    ("nope", "cannot widen 'nope': no such layer; widenable layers:"),
])
def test_refused(layer, message):
    net = Branches().eval()
    with pytest.raises(ConfigError) as info:
        widen(net, {layer: 2}, (torch.randn(1, 3, 6, 6),))
    text = str(info.value)
    assert message in text and "\n" not in text
    if "widenable layers:" in message:
        assert text.endswith("widenable layers: a, h, lin, fc")


def test_refused_residual_and_output_layer():
    net = small_resnet(num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"cannot widen 'layer1\.0\.conv2': its output reaches add 'add'"):
        widen(net, {"layer1.0.conv2": 2}, (x,))
    with pytest.raises(ConfigError, match=r"cannot widen 'fc': its output reaches the model's output"):
        widen(net, {"fc": 2}, (x,))
    with torch.no_grad():   # the first conv of a block is widenable (its consumer is conv2)
        assert rel(widen(net, {"layer1.0.conv1": 2}, (x,), noise=0)(x), net(x)) < 1e-5


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_bad_factor_lists_layers(cnn, images, k):
    with pytest.raises(ConfigError) as info:
        widen(cnn, {"conv_layers.0": k}, (images[:1],))
    assert "integer >= 1" in str(info.value)
    assert "widenable layers: conv_layers.0, conv_layers.3, conv_layers.6, fc_layers.0, fc_layers.2" \
        in str(info.value)


def test_linear_on_a_conv_output_and_bad_reshape():
    class LinOnMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 1), nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(self.conv(x)).sum()

    class Reshape(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 1), nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(x.shape[0], -1, 5)).sum()

    x = torch.randn(1, 1, 5, 5)
    with pytest.raises(ConfigError, match="Linear 'fc' .*not its input features"):
        widen(LinOnMap(), {"conv": 2}, (x,))
    with pytest.raises(ConfigError, match=r"reshape 'reshape' \(reshapes \[1, 2, 5, 5\] to \[1, 10, 5\]"):
        widen(Reshape(), {"conv": 2}, (x,))


def test_untraceable_model():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ConfigError, match="torch.fx can trace"):
        widen(Branchy(), {"fc": 2}, (torch.ones(1, 2),))


def test_parse_widen():
    assert parse_widen(["conv_layers.0=2", " fc_layers.0 = 4 ,conv_layers.3=2"]) == \
        {"conv_layers.0": 2, "fc_layers.0": 4, "conv_layers.3": 2}
    assert parse_widen([]) == {}
    for bad in (["conv"], ["=2"], ["a=2.5"], ["a=x"], ["a=2,"], ["a=2", "a=3"]):
        with pytest.raises(ConfigError) as info:
            parse_widen(bad)
        assert "--widen" in str(info.value) and "\n" not in str(info.value)


def test_widened_model_exports_and_compiles(wide, images):
    from compiler.config import QuantConfig
    from compiler.pipeline import compile_model
    from compiler.reference import run_reference

    x = images[:2]
    ep = torch.export.export(wide, (x,))
    with torch.no_grad():
        assert rel(ep.module()(x), wide(x)) < 1e-6
    result = compile_model(wide, (x,), config=QuantConfig.full_precision())
    shapes = {p.name: tuple(p.weight_shape) for p in result.layers}
    assert shapes["conv_layers.0"] == (64, 1, 3, 3) and shapes["conv_layers.6"] == (256, 128, 3, 3)
    assert sorted(shapes) == sorted(["conv_layers.0", "conv_layers.3", "conv_layers.6",
                                     "fc_layers.0", "fc_layers.2"])
    (out,) = run_reference(result.reference_module("import"), x.numpy())
    with torch.no_grad():
        assert rel(torch.from_numpy(np.asarray(out)), wide(x)) < 1e-5
    ternary = compile_model(wide, (x,))
    assert {p.name: p.precision for p in ternary.layers}["conv_layers.3"] == "ternary"
