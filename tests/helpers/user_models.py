"""Small models written the way users write them, for the find_units / conv_spectra / inspect tests.

Each is a shrunk copy of a well-known layout: torchvision's ResNet (``BasicBlock``, ``Bottleneck``
with ``downsample``, ``out += identity`` and an in-place ReLU), a ConvNeXt block (depthwise 7x7
conv, channels-last LayerNorm, layer scale), a pre-norm transformer (two residual additions in one
``forward``), a residual block of dilated convs, one that torch.fx cannot trace, and a chain of
units whose r_l is known exactly (a depth-study family built to hold or to fail the claim).  Factories
take keyword arguments so that the command line can build them (``user_models:tiny_resnet``).
"""

import math

import torch
import torch.nn.functional as F  # also `procres inspect user_models:F`: a module, not a factory
from torch import nn


# ---------------------------------------------------------------- torchvision-style ResNet
def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, layers, *, width=8, num_classes=10, in_channels=3, dilate_last=False):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=1 if dilate_last else 2,
                                       dilation=2 if dilate_last else 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(*, layers=(2, 1, 1, 1), width=4, num_classes=10, in_channels=3):
    return ResNet(BasicBlock, layers, width=width, num_classes=num_classes, in_channels=in_channels)


def tiny_bottleneck_resnet(*, layers=(1, 2, 1, 1), width=4, num_classes=10, dilate_last=False):
    return ResNet(Bottleneck, layers, width=width, num_classes=num_classes, dilate_last=dilate_last)


def zero_head_resnet(**kwargs):
    """tiny_resnet with its classifier at zero, as torchvision initialises a ViT's head: at
    initialisation no gradient reaches the blocks."""
    model = tiny_resnet(**kwargs)
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    return model


def failing_factory(**kwargs):
    raise RuntimeError("weights file not found")


def not_a_model(**kwargs):
    return {"weights": None}


# ---------------------------------------------------------------- ConvNeXt-style
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, layer_scale=1e-1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class TinyConvNeXt(nn.Module):
    def __init__(self, dims=(8, 16), depths=(2, 1), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            down = nn.Identity() if i == 0 else nn.Sequential(LayerNorm2d(dims[i - 1]),
                                                              nn.Conv2d(dims[i - 1], dim, 2, stride=2))
            self.stages.append(nn.Sequential(down, *[ConvNeXtBlock(dim) for _ in range(depth)]))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))


# ---------------------------------------------------------------- pre-norm transformer
class Attention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class PreNormBlock(nn.Module):
    """Two residual additions in one forward: sub-graph units."""

    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class TinyViT(nn.Module):
    def __init__(self, dim=16, depth=2, patch=4, image_size=16, num_classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[PreNormBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.keep = None  # a list to collect x_l with retain_grad (the tests' reference)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.pos
        for block in self.blocks:
            if self.keep is not None:  # reference only: Python branch, fixed when traced
                x.retain_grad()
                self.keep.append(x)
            x = block(x) if self.keep is None else self._two_adds(block, x)
        if self.keep is not None:
            x.retain_grad()
            self.keep.append(x)
        return self.head(self.norm(x).mean(1))

    def _two_adds(self, block, x):
        x = x + block.attn(block.ln1(x))
        x.retain_grad()
        self.keep.append(x)
        return x + block.mlp(block.ln2(x))


def tiny_vit(**kwargs):
    return TinyViT(**kwargs)


# ---------------------------------------------------------------- dilated and untraceable
class DilatedNet(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.block = BasicBlock(channels, channels, dilation=2)
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = BasicBlock(3, 3)

    def forward(self, x):
        if x.abs().sum() > 0:  # a Python branch on tensor data: torch.fx cannot trace it
            x = self.block(x)
        return x.mean((1, 2, 3))


# ---------------------------------------------------------------- in-place adds, optional arguments
class InPlaceAddBlock(nn.Module):
    """``out.add_(x)`` as a statement (no assignment), then a ReLU: fx records no data flow through it."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out.add_(x)
        return torch.relu(out)


class MaskedNet(nn.Module):
    """A forward with an optional argument that a branch tests, as attention models take masks."""

    def __init__(self, channels=4, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(InPlaceAddBlock(channels), InPlaceAddBlock(channels))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x, mask=None, *, scale=1.0):
        x = self.stem(x)
        if mask is not None:
            x = x * mask
        return self.head(self.blocks(x).mean((2, 3))) * scale


# ---------------------------------------------------------------- Hugging Face style
class HFStyleLayer(nn.Module):
    """A transformers-4 style layer: ``forward(hidden_states, attention_mask=None)`` returns a tuple."""

    def __init__(self, dim):
        super().__init__()
        self.block = PreNormBlock(dim)

    def forward(self, hidden_states, attention_mask=None):
        return (self.block(hidden_states),)


class HFStyleEncoder(nn.Module):
    """Patches -> ``layer.<i>`` -> a final LayerNorm, returning ``{"last_hidden_state": (B, T, D)}``
    as a ``ModelOutput`` (a dict) does."""

    def __init__(self, dim=8, depth=2, patch=4):
        super().__init__()
        self.embeddings = nn.Conv2d(3, dim, patch, stride=patch)
        self.layer = nn.ModuleList([HFStyleLayer(dim) for _ in range(depth)])
        self.layernorm = nn.LayerNorm(dim)

    def forward(self, pixel_values, output_hidden_states=None):
        hidden_states = self.embeddings(pixel_values).flatten(2).transpose(1, 2)
        for layer in self.layer:
            hidden_states = layer(hidden_states)[0]
        return {"last_hidden_state": self.layernorm(hidden_states)}


# ---------------------------------------------------------------- nn.Conv2d subclasses with their own forward
class StandardisedConv2d(nn.Conv2d):
    """Weight standardisation in ``forward``, as timm's ``StdConv2d`` (BiT ResNets)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SamePadConv2d(nn.Conv2d):
    """TensorFlow "same" padding computed in ``forward`` (the module's padding stays 0), as timm's
    ``Conv2dSame`` (tf_efficientnet)."""

    def forward(self, x):
        pads = []
        for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, (*pads[1], *pads[0]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CountedConv2d(nn.Conv2d):
    """Its own ``forward`` that computes ``nn.Conv2d``'s (it counts calls)."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


# ---------------------------------------------------------------- a batch norm with its own forward
class BatchNormAct(nn.BatchNorm2d):
    """Batch norm and ReLU in one module with its own ``forward``, as timm's ``BatchNormAct2d``."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum, self.eps)
        return F.relu(x)


class PreActPair(nn.Module):
    """Two pre-activation residual additions in the model's own ``forward``: sub-graph units, so
    ``find_units`` returns a traced module."""

    def __init__(self, channels=4, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.f1 = nn.Sequential(BatchNormAct(channels), nn.Conv2d(channels, channels, 3, padding=1))
        self.f2 = nn.Sequential(BatchNormAct(channels), nn.Conv2d(channels, channels, 3, padding=1))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.f1(x)
        x = x + self.f2(x)
        return self.head(x.mean((2, 3)))


# ---------------------------------------------------------------- a unit with a known Jacobian scale
class Residual(nn.Module):
    """x + eps * conv(tanh(conv(x))): an identity-skip unit whose branch is scaled by eps."""

    def __init__(self, channels: int, eps: float = 1.0):
        super().__init__()
        self.eps = eps
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.eps * self.conv2(torch.tanh(self.conv1(x)))


# ---------------------------------------------------------------- a depth-study family with known r_l
class ScaledUnit(nn.Module):
    """x + a * W x with W = I at initialisation: the Jacobian is (1 + a) I, so r_l = 1 + a exactly."""

    def __init__(self, width: int, a: float):
        super().__init__()
        self.a = a
        self.w = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.w.weight.copy_(torch.eye(width))

    def forward(self, x):
        return x + self.a * self.w(x)


class ScaledChain(nn.Module):
    def __init__(self, layers: int, a: float, features: int, width: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(features, width))
        self.layers = nn.ModuleList([ScaledUnit(width, a) for _ in range(layers)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def scaled_chain(*, layers: int, shrink: bool = False, features: int = 4, width: int = 4, num_classes: int = 3):
    """``layers`` units of r_l = 1 + a on inputs of ``features`` values (e.g. 1x2x2): a = 0.5 at
    every depth (the deviation stays flat: the depth claim fails), or a = 0.5 / layers with
    ``shrink`` (it falls with depth: the claim holds)."""
    return ScaledChain(layers, 0.5 / layers if shrink else 0.5, features, width, num_classes)


def chain_ignoring_depth(*, layers: int, **kwargs):
    """A factory whose depth argument does not reach the model: two units at every ``layers``."""
    return scaled_chain(layers=2, **kwargs)
