"""Procrustes ResNet (Zaeemzadeh, Rahnavard & Shah, TPAMI 2020, arXiv 1805.07477) and its plain twin.

``procresnet`` (depth 9n+4; the authors' ``models/procresnet.py``): stem ``conv1`` conv3x3(C->64)
with nothing after it (the first bottleneck's pre-activation follows); every bottleneck has an
identity skip; ``trans_conv1`` conv1x1(64->128, stride 2) and ``trans_conv2`` conv1x1(128->256,
stride 2) are units of ``blocks`` between the stages; head BN-ReLU-pool-linear. Depth 1 + 9n + 2 + 1.
``conv1`` is in the stem (its input is the image), but it is a transition: the projection
targets sqrt(C_out/C_in) for it too. ProcResNet-166/274/634/1003 have 1.72M/2.83M/6.53M/10.33M
parameters. ``plainproc`` drops the bottlenecks' skips; its transitions keep the kind "transition".

The transitions are not projected at construction by default, as in the authors' code: the step
hook (:func:`procres.constraints.hooks.attach_procrustes`) projects them after optimizer steps.
``procresnet(..., project_transitions=True)`` projects them once at construction so training
starts norm-preserving.

Beyond the paper: ``procresnet(depth, transition_kernel=2)`` (name ``procresnet166k2``) uses 2x2
stride-2 transitions, kernel = stride. Why this makes *exact* backward norm preservation possible:
a 2x2 stride-2 conv without padding sees non-overlapping 2x2 patches, so it is a space-to-depth
rearrangement (C_in x n x n -> 4 C_in x n/2 x n/2, a permutation, hence orthogonal) followed by a
1x1 conv with the C_out x 4 C_in matrix M = [W[:, :, 0, 0], W[:, :, 0, 1], W[:, :, 1, 0],
W[:, :, 1, 1]]. In the polyphase form (docs/theory.md section 5) the sub-kernels are 1x1, so M *is*
the operator at every frequency. With C_out <= 4 C_in (128 <= 256, 256 <= 512) M can have
orthonormal rows times c, M M^T = c^2 I: then ``||A^T g|| = c ||g||`` for every output gradient g,
not just in expectation, and the polar factor is again an exact 2x2 kernel (no cropping). The
operator has full row rank, so c = 1 (``project_conv_``'s default target here,
sqrt(C_out / min(C_out, 4 C_in))) makes the backward map an isometry. The paper's 1x1 stride-2
transition cannot do this: its rank C_in (n/2)^2 is half its output dimension C_out (n/2)^2, so
A^T has a null space and c = sqrt(C_out/C_in) = sqrt(2) preserves the gradient norm only in
expectation over isotropic g. A 3x3 kernel is worse still: the polar factor of its n x n
frequency response is a full n x n kernel, and cropping it back to 3x3 breaks the equal singular
values (docs/theory.md section 4).
"""

from __future__ import annotations

import torch.nn as nn

from procres.errors import UserError
from procres.models.net import CifarNet, check_arguments, classifier_head
from procres.models.preact import PreActBottleneck
from procres.spectral.projection import project_conv_

__all__ = ["procresnet", "plainproc"]


def _procresnet(depth, num_classes, in_channels, image_size, *, residual, transition_kernel,
                project_transitions):
    family = "procresnet" if residual else "plainproc"
    n = check_arguments(family, depth, num_classes, in_channels, image_size)
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
    head = classifier_head(256, num_classes, preact=True)
    net = CifarNet(stem, units, kinds, head, family=family, depth=depth, image_size=image_size,
                   transitions=transitions)
    if project_transitions:
        for conv, input_size in net.transitions():
            project_conv_(conv, input_size)
    return net


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
