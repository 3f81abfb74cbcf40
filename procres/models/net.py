"""The shape every zoo model shares: ``stem -> blocks -> head``, with named unit kinds.

``model(x) == model.head(model.blocks(model.stem(x)))``.  ``model.blocks`` is one flat
``nn.Sequential`` of *units* in forward order: the tensors the diagnostics compare (``x_l`` in,
``x_{l+1}`` out, ratio ``||dE/dx_l|| / ||dE/dx_{l+1}||``) are a unit's input and output.
``model.block_kinds`` names each unit:

    "identity"    residual unit with identity skip, same shape in and out
    "projection"  residual unit whose shortcut changes shape (option-A zero pad, or BN-ReLU-conv1x1)
    "transition"  stand-alone, non-residual conv (ProcResNet ``trans_conv1/2``), in its place
                  between the stages, so the per-unit ratios cover every layer the gradient passes
    "plain"       unit of a plain twin: the residual branch alone, no skip

``model.transitions()`` lists ``(conv, input_size)`` for the convs whose spectrum the Procrustes
projection controls (empty for ResNet / pre-act ResNet). ``input_size`` is the spatial size of the
map the conv *reads*, for the ``image_size`` the model was built for; it is what
``project_conv_(conv, input_size)`` and ``conv_singular_values(conv.weight, input_size,
stride=conv.stride[0])`` take. The FFT grid of the operator is the conv's *output* size
``input_size // stride`` (docs/theory.md section 4, "the grid is the layer's output size"). For
ProcResNet at ``image_size=32``::

    conv          input_size  stride  FFT grid (output size)
    conv1 (stem)  32          1       32
    trans_conv1   32          2       16
    trans_conv2   16          2        8

and 16/16/8 inputs (grids 16/8/4) at ``image_size=16``. Every net ends in global average pooling,
so any input whose side is a multiple of 4 runs; ``image_size`` only sets the grids.

Initialisation (He et al. 2015, as torchvision / He 2016a): convs Kaiming normal, ``fan_out``,
ReLU gain; BN weight 1, bias 0; linear PyTorch default. No conv has a bias. (The authors' PyTorch
port keeps PyTorch's default init; their Chainer code uses HeNormal fan_in, scaled by sqrt(1/2)
for ``conv1`` and the transitions.)
"""

from __future__ import annotations

import torch.nn as nn

from procres.errors import UserError

__all__ = ["KINDS", "CifarNet", "DEPTHS", "check_unit", "check_arguments", "resnet_stem", "classifier_head"]

KINDS = ("identity", "projection", "transition", "plain")


def check_unit(kind: str, in_channels: int, out_channels: int, stride: int) -> None:
    """A residual unit's ``kind`` must be one it has, and an identity skip needs equal shapes."""
    if kind not in ("identity", "projection", "plain"):
        raise UserError(f"unit kind {kind!r} is not 'identity', 'projection' or 'plain'")
    if kind == "identity" and (stride != 1 or in_channels != out_channels):
        raise UserError(f"an identity skip needs stride 1 and equal channels, got stride {stride}, "
                        f"{in_channels} -> {out_channels} channels")


class CifarNet(nn.Module):
    """``stem -> blocks -> head`` with the unit kinds and the projected convs (see module docstring).

    ``transitions`` holds ``(submodule path, input_size)`` pairs; ``transitions()`` resolves the
    paths, so it always returns the live modules (after ``.to()``, ``load_state_dict``, ...).
    """

    def __init__(self, stem, units, kinds, head, *, family, depth, image_size, transitions=()):
        super().__init__()
        if len(units) != len(kinds) or not set(kinds) <= set(KINDS):
            raise UserError(f"kinds must name one of {', '.join(KINDS)} per unit: {len(units)} units, "
                            f"kinds {list(kinds)}")
        self.stem = stem
        self.blocks = nn.Sequential(*units)
        self.head = head
        self.family = family
        self.depth = depth
        self.image_size = image_size
        self._block_kinds = tuple(kinds)
        self._transitions = tuple(transitions)
        for m in self.modules():
            if getattr(m, "weight", None) is not None and m.weight.is_meta:
                continue  # built on the meta device (shapes only, e.g. parameter counts): no values
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def block_kinds(self) -> list[str]:
        """One of "identity", "projection", "transition", "plain" per unit of ``blocks``."""
        return list(self._block_kinds)

    def transitions(self) -> list[tuple[nn.Conv2d, int]]:
        """``(conv, input_size)``: input_size is the side of the map the conv reads (grid = output)."""
        return [(self.get_submodule(path), size) for path, size in self._transitions]

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def resnet_stem(in_channels: int) -> nn.Sequential:
    """He et al.'s CIFAR stem: conv3x3(C -> 16)-BN-ReLU (ResNet and pre-activation ResNet)."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())


def classifier_head(channels: int, num_classes: int, *, preact: bool) -> nn.Sequential:
    layers = [nn.BatchNorm2d(channels), nn.ReLU()] if preact else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# family -> (step, offset): its depths are step * n + offset, n >= 1 units per stage
DEPTHS = {"resnet": (6, 2), "plain": (6, 2), "preresnet": (9, 2), "plainpre": (9, 2), "procresnet": (9, 4),
           "plainproc": (9, 4)}


def check_arguments(family: str, depth, num_classes, in_channels, image_size) -> int:
    """Validate the common arguments; return n, the number of units per stage."""
    step, offset = DEPTHS[family]
    valid = isinstance(depth, int) and not isinstance(depth, bool)
    if not valid or depth < step + offset or (depth - offset) % step:
        first = ", ".join(str(step * n + offset) for n in (1, 2, 3))
        raise UserError(f"{family} depth must be {step}n+{offset} with n >= 1 ({first}, ...), got {depth!r}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive int, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4 or image_size % 4:
        raise UserError(
            f"image_size must be a positive multiple of 4 (two stride-2 stages), got {image_size!r}")
    return (depth - offset) // step
