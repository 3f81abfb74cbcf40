"""CIFAR ResNets, pre-activation ResNets, Procrustes ResNets and their plain twins.

Every model is ``stem -> blocks -> head``: ``model(x) == model.head(model.blocks(model.stem(x)))``.

``model.blocks`` is one flat ``nn.Sequential`` of *units* in forward order: the tensors the
diagnostics compare (``x_l`` in, ``x_{l+1}`` out, ratio ``||dE/dx_l|| / ||dE/dx_{l+1}||``) are a
unit's input and output. ``model.block_kinds`` names each unit:

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
``input_size // stride`` (REFERENCE section 4, "the grid is the layer's output size"). For
ProcResNet at ``image_size=32``::

    conv          input_size  stride  FFT grid (output size)
    conv1 (stem)  32          1       32
    trans_conv1   32          2       16
    trans_conv2   16          2        8

and 16/16/8 inputs (grids 16/8/4) at ``image_size=16``. Every net ends in global average pooling,
so any input whose side is a multiple of 4 runs; ``image_size`` only sets the grids.

Architectures (CIFAR-10 parameter counts, REFERENCE section 3, measured by ``tests/test_models.py``)

    family               depth  units (n per stage)          names                   params
    resnet     He 2016a  6n+2   basic blocks, option-A pad   resnet20/32/44/56/110/1202
                                                             0.27M/0.46M/0.66M/0.85M/1.7M/19.4M
    preresnet  He 2016b  9n+2   pre-act bottlenecks,         preresnet164/272/632/1001
                                BN-ReLU-conv1x1 projections  1.71M/2.82M/6.52M/10.32M
    procresnet Zaeemzadeh 9n+4  pre-act bottlenecks, all     procresnet166/274/634/1003
               et al. 2020      skips identity, transitions  1.72M/2.83M/6.53M/10.33M

- ``resnet``: stem conv3x3(C->16)-BN-ReLU; 3 stages of n basic blocks (conv3x3-BN-ReLU-conv3x3-BN,
  add, ReLU) with 16/32/64 channels; the first block of stages 2 and 3 has stride 2 and the
  parameter-free option-A shortcut (subsample by 2, zero-pad the new channels); head
  pool-linear. Depth counts the 6n+1 convs and the linear layer.
- ``preresnet`` (authors' PyTorch ``models/resnet.py``): stem conv3x3(C->16)-BN-ReLU; 3 stages of n
  bottlenecks BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (planes 16/32/64, expansion 4, so
  64/128/256 channels; stride 2 in the 3x3 conv of the first block of stages 2 and 3); the first
  block of every stage (stage 1: 16 -> 64) has a projection shortcut BN-ReLU-conv1x1(stride);
  head BN-ReLU-pool-linear. Depth counts 1 + 9n convs + linear (projections not counted).
- ``procresnet`` (authors' ``models/procresnet.py``): stem ``conv1`` conv3x3(C->64) with nothing
  after it (the first bottleneck's pre-activation follows); every bottleneck has an identity
  skip; ``trans_conv1`` conv1x1(64->128, stride 2) and ``trans_conv2`` conv1x1(128->256, stride 2)
  are units of ``blocks`` between the stages; head BN-ReLU-pool-linear. Depth 1 + 9n + 2 + 1.
  ``conv1`` is in the stem (its input is the image), but it is a transition: the projection
  targets sqrt(C_out/C_in) for it too.

Plain twins ``plain`` / ``plainpre`` / ``plainproc`` (names ``plain20..plain1202``,
``plainpre164..plainpre1001``, ``plainproc166..plainproc1003``) are the same layers with every
*identity* addition removed: a unit returns its residual branch. Option-A shortcuts carry no
weights, so in ``plain`` the stride/width change simply happens in the branch and every unit is
"plain". In ``plainpre`` the three BN-ReLU-conv1x1 projection shortcuts stay (they are not identity
additions, and keeping them keeps the layers and parameter counts equal), so those units keep the
kind "projection". In ``plainproc`` the transitions are untouched and keep the kind "transition".
Twins have exactly the parameter count of their residual net.

Beyond the paper: ``procresnet(depth, transition_kernel=2)`` (name ``procresnet166k2``) uses 2x2
stride-2 transitions, kernel = stride. Why this makes *exact* backward norm preservation possible:
a 2x2 stride-2 conv without padding sees non-overlapping 2x2 patches, so it is a space-to-depth
rearrangement (C_in x n x n -> 4 C_in x n/2 x n/2, a permutation, hence orthogonal) followed by a
1x1 conv with the C_out x 4 C_in matrix M = [W[:, :, 0, 0], W[:, :, 0, 1], W[:, :, 1, 0],
W[:, :, 1, 1]]. In the polyphase form of REFERENCE section 5 the sub-kernels are 1x1, so M *is*
the operator at every frequency. With C_out <= 4 C_in (128 <= 256, 256 <= 512) M can have
orthonormal rows times c, M M^T = c^2 I: then ``||A^T g|| = c ||g||`` for every output gradient g,
not just in expectation, and the polar factor is again an exact 2x2 kernel (no cropping). The
operator has full row rank, so c = 1 (``project_conv_``'s default target here,
sqrt(C_out / min(C_out, 4 C_in))) makes the backward map an isometry. The paper's 1x1 stride-2
transition cannot do this: its rank C_in (n/2)^2 is half its output dimension C_out (n/2)^2, so
A^T has a null space and c = sqrt(C_out/C_in) = sqrt(2) preserves the gradient norm only in
expectation over isotropic g. A 3x3 kernel is worse still: the polar factor of its n x n
frequency response is a full n x n kernel, and cropping it back to 3x3 breaks the equal singular
values (REFERENCE section 4).

Initialisation (He et al. 2015, as torchvision / He 2016a): convs Kaiming normal, ``fan_out``,
ReLU gain; BN weight 1, bias 0; linear PyTorch default. No conv has a bias. (The authors' PyTorch
port keeps PyTorch's default init; their Chainer code uses HeNormal fan_in, scaled by sqrt(1/2)
for ``conv1`` and the transitions.) The transitions are not projected at construction by
default, as in the authors' code: the step hook (``procres.procrustes.attach_procrustes``)
projects them after optimizer steps. ``procresnet(..., project_transitions=True)`` projects them
once at construction so training starts norm-preserving.

Small nets for CPU work come from the depth factories, e.g.
``procresnet(13, num_classes=10, in_channels=1, image_size=16)``; the registered names are thin
wrappers over them, and ``create_model`` also builds any unregistered ``<family><depth>[k2]``
name (``procresnet13``, ``plain8``, ``procresnet22k2``) so configs can name small nets. Sources: He et al. 2016a (arXiv 1512.03385), 2016b (arXiv 1603.05027);
Zaeemzadeh, Rahnavard & Shah, TPAMI 2020 (arXiv 1805.07477) and their released code.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from typing import Callable

import torch.nn as nn
import torch.nn.functional as F

from procres.errors import UserError

__all__ = [
    "BasicBlock",
    "PreActBottleneck",
    "ZeroPadShortcut",
    "CifarNet",
    "resnet",
    "preresnet",
    "procresnet",
    "plain",
    "plainpre",
    "plainproc",
    "register_model",
    "create_model",
    "list_models",
    "smallest_variant",
]

KINDS = ("identity", "projection", "transition", "plain")


# ---------------------------------------------------------------- units
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


def _check_unit(kind: str, in_channels: int, out_channels: int, stride: int) -> None:
    """A residual unit's ``kind`` must be one it has, and an identity skip needs equal shapes."""
    if kind not in ("identity", "projection", "plain"):
        raise UserError(f"unit kind {kind!r} is not 'identity', 'projection' or 'plain'")
    if kind == "identity" and (stride != 1 or in_channels != out_channels):
        raise UserError(f"an identity skip needs stride 1 and equal channels, got stride {stride}, "
                        f"{in_channels} -> {out_channels} channels")


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
        _check_unit(kind, in_channels, out_channels, stride)
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
        _check_unit(kind, in_channels, out_channels, stride)
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


# ---------------------------------------------------------------- the net
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


def _head(channels: int, num_classes: int, *, preact: bool) -> nn.Sequential:
    layers = [nn.BatchNorm2d(channels), nn.ReLU()] if preact else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# family -> (step, offset): its depths are step * n + offset, n >= 1 units per stage
_DEPTHS = {"resnet": (6, 2), "plain": (6, 2), "preresnet": (9, 2), "plainpre": (9, 2), "procresnet": (9, 4),
           "plainproc": (9, 4)}


def _check(family: str, depth, num_classes, in_channels, image_size) -> int:
    """Validate the common arguments; return n, the number of units per stage."""
    step, offset = _DEPTHS[family]
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


# ---------------------------------------------------------------- depth factories
def _resnet(depth, num_classes, in_channels, image_size, *, residual):
    family = "resnet" if residual else "plain"
    n = _check(family, depth, num_classes, in_channels, image_size)
    stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    units, kinds, channels = [], [], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            kind = "plain" if not residual else ("projection" if stride == 2 else "identity")
            units.append(BasicBlock(channels, width, stride, kind=kind))
            kinds.append(kind)
            channels = width
    head = _head(64, num_classes, preact=False)
    return CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size)


def _preresnet(depth, num_classes, in_channels, image_size, *, residual):
    family = "preresnet" if residual else "plainpre"
    n = _check(family, depth, num_classes, in_channels, image_size)
    stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    units, kinds, channels = [], [], 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            kind = "projection" if i == 0 else ("identity" if residual else "plain")
            units.append(PreActBottleneck(channels, planes, stride, kind=kind))
            kinds.append(kind)
            channels = planes * PreActBottleneck.expansion
    head = _head(256, num_classes, preact=True)
    return CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size)


def _procresnet(depth, num_classes, in_channels, image_size, *, residual, transition_kernel,
                project_transitions):
    family = "procresnet" if residual else "plainproc"
    n = _check(family, depth, num_classes, in_channels, image_size)
    if transition_kernel not in (1, 2):
        raise UserError(
            f"transition_kernel must be 1 (the paper) or 2 (kernel = stride), got {transition_kernel!r}")
    stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
    transitions = [("stem", image_size)]
    units, kinds, size = [], [], image_size
    for stage, planes in enumerate((16, 32, 64)):
        channels = planes * PreActBottleneck.expansion
        if stage > 0:
            transitions.append((f"blocks.{len(units)}", size))
            units.append(nn.Conv2d(channels // 2, channels, transition_kernel, stride=2, bias=False))
            kinds.append("transition")
            size //= 2
        for _ in range(n):
            kind = "identity" if residual else "plain"
            units.append(PreActBottleneck(channels, planes, kind=kind))
            kinds.append(kind)
    head = _head(256, num_classes, preact=True)
    net = CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size,
                   transitions=transitions)
    if project_transitions:
        from procres.procrustes import project_conv_

        for conv, input_size in net.transitions():
            project_conv_(conv, input_size)
    return net


def resnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """He et al. 2016a CIFAR ResNet, depth 6n+2 (20, 32, 44, 56, 110, 1202, or 8, 14 for CPU)."""
    return _resnet(depth, num_classes, in_channels, image_size, residual=True)


def plain(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Plain twin of :func:`resnet`: the same layers, no additions."""
    return _resnet(depth, num_classes, in_channels, image_size, residual=False)


def preresnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Pre-activation bottleneck ResNet (He et al. 2016b), depth 9n+2 (164, 1001, or 11, 20 for CPU)."""
    return _preresnet(depth, num_classes, in_channels, image_size, residual=True)


def plainpre(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarNet:
    """Plain twin of :func:`preresnet`: identity additions removed, the 3 projection shortcuts kept."""
    return _preresnet(depth, num_classes, in_channels, image_size, residual=False)


def procresnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
               transition_kernel: int = 1, project_transitions: bool = False) -> CifarNet:
    """Procrustes ResNet (Zaeemzadeh et al. 2020), depth 9n+4 (166, 1003, or 13, 22, 31 for CPU).

    ``transition_kernel=2`` makes the transitions 2x2 stride-2 convs (see the module docstring);
    ``project_transitions=True`` applies ``project_conv_`` to every transition once at construction.
    """
    return _procresnet(depth, num_classes, in_channels, image_size, residual=True,
                       transition_kernel=transition_kernel, project_transitions=project_transitions)


def plainproc(depth: int, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
              transition_kernel: int = 1, project_transitions: bool = False) -> CifarNet:
    """Plain twin of :func:`procresnet`: bottlenecks without skips, transitions unchanged."""
    return _procresnet(depth, num_classes, in_channels, image_size, residual=False,
                       transition_kernel=transition_kernel, project_transitions=project_transitions)


# ---------------------------------------------------------------- registry
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable | None = None):
    """Decorator adding a factory ``fn(*, num_classes, in_channels, image_size)`` under ``name``.

    ``@register_model`` uses the function's name, ``@register_model("x")`` the given one.
    Registering a name twice raises UserError.
    """

    def decorator(fn):
        key = fn.__name__ if name is None or callable(name) else name
        if key in _MODELS:
            raise UserError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return decorator(name) if callable(name) else decorator


def create_model(name: str, **kwargs) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`); keyword arguments go to its factory, over
    the defaults ``num_classes=10, in_channels=3, image_size=32`` (ProcResNets also take
    ``transition_kernel`` and ``project_transitions``).

    Any other ``<family><depth>[k2]`` name (``procresnet13``, ``plain8``, ``procresnet22k2``)
    builds that depth with the family's factory, so small CPU nets can be named in configs; a
    depth the family does not have raises the factory's UserError.
    """
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32, **kwargs}
    if name in _MODELS:
        return _MODELS[name](**kwargs)
    parsed = _parse_name(name)
    if parsed is not None:
        family, depth, kernel = parsed
        if kernel != 1:
            kwargs.setdefault("transition_kernel", kernel)
        return _FAMILIES[family](depth, **kwargs)
    close = difflib.get_close_matches(str(name), list(_MODELS), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown model {name!r}{hint} (list_models() gives all {len(_MODELS)} names)")


def list_models(filter: str = "") -> list[str]:
    """Registered names, family by family, shallow to deep; ``filter`` keeps those matching an
    ``fnmatch`` pattern (``"procresnet*"``, ``"*res*16?"``). A filter without wildcards (``*?[``)
    matches anywhere in the name: ``"166"`` finds procresnet166 and plainproc166k2."""
    if not filter:
        return list(_MODELS)
    pattern = filter if any(c in filter for c in "*?[") else f"*{filter}*"
    return [name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)]


def smallest_variant(name: str) -> str:
    """The smallest depth of ``name``'s family with the same transitions (procresnet166 ->
    procresnet13, resnet110 -> resnet8, procresnet166k2 -> procresnet13k2), for smoke runs."""
    parsed = _parse_name(name)
    if parsed is None:
        raise UserError(f"model {name!r} is not <family><depth> of a family in {', '.join(_FAMILIES)}")
    family, _, kernel = parsed
    step, offset = _DEPTHS[family]
    return f"{family}{step + offset}" + ("k2" if kernel == 2 else "")


def _parse_name(name) -> tuple[str, int, int] | None:
    """``(family, depth, transition kernel)`` of a ``<family><depth>[k2]`` name; None for any other."""
    match = _FAMILY_DEPTH.fullmatch(name) if isinstance(name, str) else None
    if match is None or (match[3] and match[1] not in ("procresnet", "plainproc")):
        return None
    return match[1], int(match[2]), 2 if match[3] else 1


_FAMILIES = {f.__name__: f for f in (resnet, preresnet, procresnet, plain, plainpre, plainproc)}
_FAMILY_DEPTH = re.compile(rf"({'|'.join(_FAMILIES)})(\d+)(k2)?")

for _factory, _depths in (
    (resnet, (20, 32, 44, 56, 110, 1202)),
    (preresnet, (164, 272, 632, 1001)),
    (procresnet, (166, 274, 634, 1003)),
    (plain, (20, 32, 44, 56, 110, 1202)),
    (plainpre, (164, 272, 632, 1001)),
    (plainproc, (166, 274, 634, 1003)),
):
    for _depth in _depths:
        register_model(f"{_factory.__name__}{_depth}")(functools.partial(_factory, _depth))
register_model("procresnet166k2")(functools.partial(procresnet, 166, transition_kernel=2))
register_model("plainproc166k2")(functools.partial(plainproc, 166, transition_kernel=2))
del _factory, _depths, _depth
