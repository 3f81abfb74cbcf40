"""He et al. 2016a CIFAR ResNet and its plain twin (arXiv 1512.03385).

``resnet`` (depth 6n+2): stem conv3x3(C->16)-BN-ReLU; 3 stages of n basic blocks
(conv3x3-BN-ReLU-conv3x3-BN, add, ReLU) with 16/32/64 channels; the first block of stages 2 and 3
has stride 2 and the parameter-free option-A shortcut (subsample by 2, zero-pad the new
channels); head pool-linear. Depth counts the 6n+1 convs and the linear layer.
ResNet-20/32/44/56/110/1202 have 0.27M/0.46M/0.66M/0.85M/1.7M/19.4M parameters (CIFAR-10).

``plain`` is the same layers with every addition removed: option-A shortcuts carry no weights, so
the stride/width change simply happens in the branch and every unit is "plain".
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from procres.models.net import CifarNet, check_arguments, check_unit, classifier_head, resnet_stem

__all__ = ["ZeroPadShortcut", "BasicBlock", "resnet", "plain"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut (He 2016a): subsample by ``stride``, zero-pad the new channels.

    (N, C_in, H, W) -> (N, C_out, H/stride, W/stride); no weights.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """He 2016a basic block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU.

    ``kind``: "identity" (same shape), "projection" (option-A zero-pad shortcut, stride 2) or
    "plain" (no addition; the stride/width change happens in the branch).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, kind: str = "identity"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        check_unit(kind, in_channels, out_channels, stride)
        if kind == "identity":
            self.shortcut = nn.Identity()
        elif kind == "projection":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = None
        self.kind = kind

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


def _resnet(depth, num_classes, in_channels, image_size, *, residual):
    family = "resnet" if residual else "plain"
    n = check_arguments(family, depth, num_classes, in_channels, image_size)
    stem = resnet_stem(in_channels)
    units, kinds, channels = [], [], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            kind = "plain" if not residual else ("projection" if stride == 2 else "identity")
            units.append(BasicBlock(channels, width, stride, kind=kind))
            kinds.append(kind)
            channels = width
    head = classifier_head(64, num_classes, preact=False)
    return CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size)


def resnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """He et al. 2016a CIFAR ResNet, depth 6n+2 (20, 32, 44, 56, 110, 1202, or 8, 14 for CPU)."""
    return _resnet(depth, num_classes, in_channels, image_size, residual=True)


def plain(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Plain twin of :func:`resnet`: the same layers, no additions."""
    return _resnet(depth, num_classes, in_channels, image_size, residual=False)
