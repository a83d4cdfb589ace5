"""Example networks, in plain PyTorch (no torchvision needed).

``resnet18`` has torchvision's ResNet-18 structure and parameter names
(conv1/bn1/layer1.0.conv1/.../fc), so layer names in reports read the same;
``resnet50`` / ``resnet101`` do the same with torchvision's ``Bottleneck``
block (v1.5: the stride sits on the 3x3 conv), same parameter counts.
``small_resnet`` is a tiny net with every op kind of a ResNet (conv, BN, ReLU,
max-pool, residual add with a 1x1 projection, global average pool, linear),
for fast tests.  ``randomize_bn`` gives BatchNorm layers non-trivial
statistics so BN folding is actually exercised.
"""

from __future__ import annotations

import torch
from torch import nn


def _downsample(cin: int, cout: int, stride: int):
    """The shortcut's 1x1 conv + BN when the block changes shape (torchvision), else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + idt)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class ResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=1000,
                 in_ch: int = 3, stem_kernel: int = 7, stem_pool: bool = True,
                 block: type[nn.Module] = BasicBlock):
        super().__init__()
        w0 = widths[0]
        pad = stem_kernel // 2
        self.conv1 = nn.Conv2d(in_ch, w0, stem_kernel, 2 if stem_pool else 1, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        layers, cin = [], w0
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            cout = w * block.expansion
            blks = [block(cin, w, stride)] + [block(cout, w) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = (layers + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """torchvision-shaped ResNet-18 (11.7 M parameters at 1000 classes)."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """torchvision-shaped ResNet-50 (25,557,032 parameters at 1000 classes)."""
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, block=Bottleneck)


def resnet101(num_classes: int = 1000) -> ResNet:
    """torchvision-shaped ResNet-101 (44,549,160 parameters at 1000 classes)."""
    return ResNet((3, 4, 23, 3), (64, 128, 256, 512), num_classes, block=Bottleneck)


def small_resnet(num_classes: int = 10, in_ch: int = 3) -> ResNet:
    """A two-stage ResNet with 16/32 channels: every ResNet op, tiny and fast."""
    return ResNet((1, 1), (16, 32), num_classes, in_ch=in_ch, stem_kernel=3, stem_pool=True)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()
