"""The Procrustes projection: norm-preserving convolutions (Zaeemzadeh et al., TPAMI 2020).

The paper keeps the dimension-changing convolutions of a Procrustes ResNet norm preserving by
projecting their kernels, after optimizer steps, onto kernels whose circular operator has all
non-zero singular values equal to a target ``c``:

1. FFT the kernel on the layer's *output* grid: one matrix per frequency (Sedghi et al. 2019).
2. Replace each matrix by ``c`` times its polar factor ``U V^H`` (the orthogonal Procrustes
   solution: the nearest matrix with all singular values equal).
3. Inverse FFT, keep the real part, crop to the ``k x k`` support.  The crop makes one step only
   approximately norm preserving for ``k > 1``; repeating (``iterations``) alternates projections
   and converges toward the target.  For ``1 x 1`` kernels one step is exact.

Exact projection (default).  A strided convolution is not a stride-1 convolution on the output
grid: for ``k > 1`` and stride ``s`` the exact operator is the polyphase one
(``procres.spectral.symbol.polyphase_symbol``): per frequency of the ``(h/s) x (w/s)`` output grid a
``C_out x (C_in ph pw)`` block row (``ph = min(kh, s)`` phases that hold kernel taps).  We
project that matrix, so the projection acts on the operator the layer really applies.  For
``k = 1`` it reduces to ``c * polar(W)`` (the same at every frequency), and for stride 1 it is the
paper's projection.

Target.  An operator of rank ``r`` with output dimension ``d_out`` and all non-zero singular values
``c`` has ``E ||A^T g||^2 / ||g||^2 = r c^2 / d_out`` for isotropic ``g``: the backward norm is kept
in expectation for ``c = sqrt(d_out / r)``.  Per frequency the rank is
``r = min(C_out, C_in ph pw)``, so the default target is ``sqrt(C_out / min(C_out, C_in ph pw))``.
For the authors' layers (stride-1 ``conv1`` 3 -> 64 and the ``1 x 1`` stride-2 transitions) that is
their ``sqrt(C_out / C_in)``; for a ``3 x 3`` stride-2 conv 64 -> 128 it is 1 (then
``A A^T = I``: the backward map is an isometry), and for a stride-1 conv with
``C_out < C_in`` it is 1 rather than ``sqrt(C_out / C_in) < 1``, which would shrink every gradient.

``faithful=True`` reproduces the authors' released code instead (docs/theory.md section 4): the
stride is ignored (stride-1 FFT of the kernel on the output grid), the polar factor comes from a
real ``2 C`` block embedding ``[[Re, -Im], [Im, Re]]`` and 10 coupled Newton-Schulz iterations
(not converged for ill-conditioned frequencies), the imaginary part is read back from the wrong
block, which returns ``conj(polar(A))`` (a spatially flipped kernel, harmless for ``1 x 1``), then
the real part of the inverse FFT is cropped; the target is ``sqrt(C_out / C_in)``.  After a few
applications a ``3 x 3`` kernel collapses onto one corner tap.

Arguments.  ``project_kernel`` and ``project_conv_`` take an ``nn.Conv2d`` (its own stride and
groups; a contradicting keyword is an error) or a weight (``stride=None`` and ``groups=None`` mean
1).  A grouped conv is block-diagonal over its groups and is projected group by group, to the
per-group target of ``norm_preserving_target``.  Dilated kernels larger than 1x1 are refused (the
projected kernel would need taps between the dilated ones).

The step hook that applies the projection during training is
:mod:`procres.constraints.hooks`; the polar factor itself is :mod:`procres.spectral.polar`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from procres.errors import UserError
from procres.spectral.device import device_route, exact_step_on_device
from procres.spectral.faithful import check_faithful_grid, faithful_step
from procres.spectral.operator import check_weight, size_pair
from procres.spectral.polar import POLAR_METHODS, polar, symbol_polar
from procres.spectral.spectra import norm_preserving_target
from procres.spectral.symbol import (
    batched_svdvals,
    check_divisible,
    frequency_classes,
    frequency_independent,
    kernel_from_symbol,
    polyphase_symbol,
)

__all__ = ["project_kernel", "project_conv_", "OperatorReport", "ProjectionReport", "resolve_conv", "check_options", "default_target",
           "stays_on_device", "project_weight_"]


# ----------------------------------------------------------------------------- reports
@dataclasses.dataclass
class OperatorReport:
    """What an in-place regulariser (projection, clipping) did to a layer's operator: the extreme
    non-zero singular values it achieved (exact spectrum of the operator it acted on), ``history``
    of its error measure before the first and after each of its ``iterations``, and whether one
    step is ``exact`` (the operator is one matrix for every pixel: kernel no larger than the
    stride, or a Linear layer's matrix).  ``stride`` and ``grid`` (the FFT grid) are None for a
    matrix."""

    sigma_min: float
    sigma_max: float
    iterations: int
    history: list
    exact: bool
    stride: tuple | None
    grid: tuple | None
    groups: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ProjectionReport(OperatorReport):
    """How far the circular operator's non-zero singular values are from ``target`` after the
    projection (computed exactly, polyphase for strided layers); ``history`` holds
    ``max_rel_error``."""

    target: float = math.nan
    max_rel_error: float = math.nan
    method: str = "svd"
    faithful: bool = False


def resolve_conv(conv_or_weight, input_size, stride, groups):
    """-> (weight tensor, input size pair, stride pair, groups); validates everything up front.
    An ``nn.Conv2d`` brings its own stride and groups (a keyword contradicting them is an error)."""
    if isinstance(conv_or_weight, nn.Conv2d):
        conv = conv_or_weight
        if tuple(conv.dilation) != (1, 1) and tuple(conv.kernel_size) != (1, 1):
            raise UserError(f"dilated convolutions are not supported, got dilation={tuple(conv.dilation)}: "
                            "the projected kernel would have taps between the dilated ones")
        for key, value, own in (("stride", stride, tuple(conv.stride)), ("groups", groups, conv.groups)):
            if value is not None and (size_pair(value, key) if key == "stride" else value) != own:
                raise UserError(f"{key}={value!r} contradicts the conv's own {key}={own!r}")
        weight, stride, groups = conv.weight, tuple(conv.stride), conv.groups
    elif isinstance(conv_or_weight, torch.Tensor):
        weight = conv_or_weight
    else:
        raise UserError(
            f"expected an nn.Conv2d or a weight tensor, got {type(conv_or_weight).__name__}")
    check_weight(weight)
    size = size_pair(input_size, "input_size")
    stride = size_pair(1 if stride is None else stride, "stride")
    groups = 1 if groups is None else groups
    if not (isinstance(groups, int) and groups >= 1 and weight.shape[0] % groups == 0):
        raise UserError(f"groups must be a positive int dividing C_out={weight.shape[0]}, got {groups!r}")
    check_divisible(size, stride)
    kh, kw = weight.shape[-2:]
    if kh > size[0] or kw > size[1]:
        raise UserError(
            f"kernel {kh}x{kw} is larger than input_size {size}: the crop back to the kernel "
            "support is undefined")
    return weight, size, stride, groups


def default_target(weight, stride, groups, faithful):
    if faithful and groups != 1:
        raise UserError(f"faithful=True has no grouped form (the authors' code has none), got groups={groups}")
    c_out, c_in = weight.shape[:2]
    return math.sqrt(c_out / c_in) if faithful else norm_preserving_target(weight, stride, groups=groups)


def _exact_step(w, size, stride, groups, target, method):
    """One exact projection of ``w (C_out, C_in, kh, kw)``, computed in float64 (the polar
    factor of a frequency matrix with condition number kappa loses about ``eps * kappa``: up to
    1e-4 in float32 for He-initialised 3x3 kernels); returns the new kernel in float64."""
    if stays_on_device(w, stride, groups, False):  # procres.spectral.device: no host round trip; every
        return exact_step_on_device(w, size, stride, target)  # method's polar factor, to round-off
    device = w.device
    # Other CUDA weights take the CPU route: cuSOLVER has no batched SVD above 32 x 32, so torch
    # launches one per frequency (H200: 0.26 s for a 64 -> 64 layer on an 8 x 8 grid).  One
    # small copy each way instead.
    w = w.to("cpu", torch.float64)
    c_out = w.shape[0]
    if w.shape[-2:] == (1, 1):                  # the operator is W after subsampling: exact
        blocks = w[..., 0, 0].reshape(groups, c_out // groups, -1)
        new = target * polar(blocks, method=method).reshape(c_out, -1)[..., None, None]
    else:                                       # per group: the rows of its output channels
        symbol = polyphase_symbol(w, size, stride)
        grouped = symbol.reshape(*symbol.shape[:2], groups, c_out // groups, symbol.shape[-1])
        projected = symbol_polar(grouped, size, stride, method=method).reshape(symbol.shape)
        new = kernel_from_symbol(target * projected, w.shape[-2:], size, stride)
    return new.to(device)


def stays_on_device(w, stride, groups, faithful) -> bool:
    """Whether projecting ``w`` needs no host round trip: a CUDA weight and the authors' step
    (matrix products) or an ungrouped exact step on the device route (``procres.spectral.device``)."""
    return w.is_cuda and (faithful or (groups == 1 and device_route(w.shape, stride)))


def _step(w, size, stride, groups, target, method, faithful):
    """One projection of ``w``; the result has ``w``'s dtype (half precisions work in float32)."""
    if faithful:                                # the authors' code runs in float32
        work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        new = faithful_step(work, size, stride, target)
    else:
        new = _exact_step(w, size, stride, groups, target, method)
    return new.to(w.dtype)


def _operator_sv(w, size, stride, groups):
    """Non-zero singular values of the circular strided operator (structural zeros dropped),
    one copy per conjugate pair and group (enough for min, max and errors)."""
    symbol = polyphase_symbol(w, size, stride)
    symbol = symbol.reshape(*symbol.shape[:2], groups, w.shape[0] // groups, symbol.shape[-1])
    if frequency_independent(w.shape[-2:], stride):  # every frequency holds the same matrix
        return batched_svdvals(symbol[0, 0])
    flat = symbol.flatten(0, 1)
    real, pair, _, _ = frequency_classes(check_divisible(size, stride), flat.device)
    return torch.cat([batched_svdvals(flat[real].real).flatten(),
                      batched_svdvals(flat[pair]).flatten()])


def project_weight_(weight, size, stride, groups, target, method, faithful, iterations, report):
    w = weight.detach()
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    errors = []

    def rel_error(w):
        sv = _operator_sv(w, size, stride, groups)
        return sv, float((sv / target - 1).abs().max())

    if report:
        errors.append(rel_error(w)[1])
    for _ in range(iterations):
        w = _step(w, size, stride, groups, target, method, faithful)
        if report:
            sv, err = rel_error(w)
            errors.append(err)
    with torch.no_grad():
        weight.copy_(w)
    if not report:
        return None
    one_matrix = weight.shape[-2:] == (1, 1) if faithful else frequency_independent(weight.shape[-2:], stride)
    return ProjectionReport(
        target=float(target), sigma_min=float(sv.min()), sigma_max=float(sv.max()),
        max_rel_error=errors[-1], iterations=iterations, method=method, faithful=faithful,
        stride=tuple(stride), grid=(size[0] // stride[0], size[1] // stride[1]), history=errors,
        groups=groups, exact=bool(one_matrix))


def check_options(method, faithful, iterations, target):
    if method not in POLAR_METHODS:
        raise UserError(f"method must be one of {POLAR_METHODS}, got {method!r}")
    if not isinstance(faithful, bool):
        raise UserError(f"faithful must be a bool, got {faithful!r}")
    if not (isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1):
        raise UserError(f"iterations must be a positive int, got {iterations!r}")
    if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target)
                                   and target > 0):
        raise UserError(f"target must be a positive number, got {target!r}")


def project_kernel(weight, input_size, *, stride=None, groups=None, target=None, method="svd",
                   faithful=False) -> torch.Tensor:
    """One Procrustes projection as a pure function: ``weight (C_out, C_in / groups, kh, kw)`` (or an
    ``nn.Conv2d``: its weight, stride and groups) -> the projected kernel, same shape, dtype and
    device (see the module docstring for the exact and the faithful algorithm and the default
    ``target``)."""
    check_options(method, faithful, 1, target)
    weight, size, stride, groups = resolve_conv(weight, input_size, stride, groups)
    if faithful:
        check_faithful_grid(weight, size, stride)
    if target is None:
        target = default_target(weight, stride, groups, faithful)
    return _step(weight.detach(), size, stride, groups, target, method, faithful)


def project_conv_(conv_or_weight, input_size, *, stride=None, groups=None, target=None, method="svd",
                  faithful=False, iterations=1) -> ProjectionReport:
    """Project a convolution in place onto norm-preserving kernels; returns a report.

    ``conv_or_weight``: an ``nn.Conv2d`` (its own stride and groups) or a weight
    ``(C_out, C_in / groups, kh, kw)`` (stride and groups default to 1).  ``input_size``: the
    layer's input size (int or ``(h, w)``); the FFT grid is the output grid
    ``input_size / stride``.  ``target`` defaults to ``norm_preserving_target``
    (``sqrt(C_out / C_in)`` for the authors' layers and for ``faithful=True``).  A grouped conv is
    projected group by group (its operator is block-diagonal).  ``iterations > 1`` repeats the
    projection (alternating projections).  The report's singular values are the exact circular
    operator's, after the projection.
    """
    check_options(method, faithful, iterations, target)
    weight, size, stride, groups = resolve_conv(conv_or_weight, input_size, stride, groups)
    if faithful:
        check_faithful_grid(weight, size, stride)
    if target is None:
        target = default_target(weight, stride, groups, faithful)
    return project_weight_(weight, size, stride, groups, target, method, faithful, iterations, report=True)


