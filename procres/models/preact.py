"""Pre-activation bottleneck ResNet (He et al. 2016b, arXiv 1603.05027) and its plain twin.

``preresnet`` (depth 9n+2; the authors' PyTorch ``models/resnet.py``): stem conv3x3(C->16)-BN-ReLU;
3 stages of n bottlenecks BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (planes 16/32/64,
expansion 4, so 64/128/256 channels; stride 2 in the 3x3 conv of the first block of stages 2 and
3); the first block of every stage (stage 1: 16 -> 64) has a projection shortcut
BN-ReLU-conv1x1(stride); head BN-ReLU-pool-linear. Depth counts 1 + 9n convs + linear
(projections not counted). ResNet-164/272/632/1001 have 1.71M/2.82M/6.52M/10.32M parameters.

``plainpre`` removes every *identity* addition; the three BN-ReLU-conv1x1 projection shortcuts
stay (they are not identity additions, and keeping them keeps the layers and parameter counts
equal), so those units keep the kind "projection".
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from procres.models.net import CifarNet, check_arguments, check_unit, classifier_head, resnet_stem

__all__ = ["PreActBottleneck", "preresnet", "plainpre"]


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He 2016b): BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1.

    (N, in_channels, H, W) -> (N, 4 planes, H/stride, W/stride). ``kind``: "identity" (adds x),
    "projection" (adds BN-ReLU-conv1x1(stride) of x, the authors' shortcut) or "plain" (no skip).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, *, kind: str = "identity"):
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        check_unit(kind, in_channels, out_channels, stride)
        if kind == "identity":
            self.shortcut = nn.Identity()
        elif kind == "projection":
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                nn.ReLU(),
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            )
        else:
            self.shortcut = None
        self.kind = kind

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


def _preresnet(depth, num_classes, in_channels, image_size, *, residual):
    family = "preresnet" if residual else "plainpre"
    n = check_arguments(family, depth, num_classes, in_channels, image_size)
    stem = resnet_stem(in_channels)
    units, kinds, channels = [], [], 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            kind = "projection" if i == 0 else ("identity" if residual else "plain")
            units.append(PreActBottleneck(channels, planes, stride, kind=kind))
            kinds.append(kind)
            channels = planes * PreActBottleneck.expansion
    head = classifier_head(256, num_classes, preact=True)
    return CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size)


def preresnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Pre-activation bottleneck ResNet (He et al. 2016b), depth 9n+2 (164, 1001, or 11, 20 for CPU)."""
    return _preresnet(depth, num_classes, in_channels, image_size, residual=True)


def plainpre(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Plain twin of :func:`preresnet`: identity additions removed, the 3 projection shortcuts kept."""
    return _preresnet(depth, num_classes, in_channels, image_size, residual=False)
