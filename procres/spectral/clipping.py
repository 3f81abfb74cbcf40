"""Singular-value clipping of a layer's operator, in place (Sedghi, Gupta & Long, ICLR 2019).

``clip_singular_values_(layer, input_size, max=..., min=...)`` replaces every singular value ``s``
of the layer's operator by ``min(max(s, min), max)`` where that can be done exactly, and comes as
close as alternating projections get elsewhere:

* ``nn.Linear``: the SVD of ``W (out, in)``, clipped: exact.
* patch convs (effective kernel ``d (k - 1) + 1 <= s`` in each dimension, no padding: 1x1 convs,
  the 2x2 stride-2 downsampling of ConvNeXt/Swin, 4x4 and 16x16 patch embeddings): every output
  pixel reads its own input pixels, so the operator is one ``(C_out / g) x (C_in / g kh kw)``
  matrix per group and pixel (:meth:`procres.spectral.operator.ConvOperator.patch_matrix`).
  Clipping that matrix's SVD is exact for the operator at *every* input size, so ``input_size``
  may be None.
* any other conv: a circular operator (the layer's stride, dilation and groups; the polyphase
  symbol of :func:`procres.spectral.symbol.circular_symbol`): clip the SVD of the matrix at every
  frequency of its output grid, go back to a kernel (:func:`procres.spectral.symbol.kernel_from_symbol`)
  and crop it to the layer's taps (for a dilated kernel, the dilated positions).  The crop is a
  projection onto a subspace, the clip one onto the spectral box, and ``iterations`` alternates
  them (Sedghi et al.'s Clip_OperatorNorm does one step per training step).  With only ``max``
  both sets are convex and the iteration converges to a kernel in their intersection; ``min``
  makes the box non-convex: usually it still approaches.  Which circular operator: the layer's own
  for circular padding; for zero padding the one on the padded grid
  (:meth:`~procres.spectral.operator.ConvOperator.enclosing_circular`), of which the layer's
  operator is a restriction, so that a clipped ``sigma_max <= max`` holds for the layer too; for
  reflect or replicate padding the one on ``input_size`` (no circular operator bounds theirs).
  ``input_size`` is required here (the spectrum depends on it).

What ``min`` acts on: the singular values of the per-frequency (or patch) matrices, zeros of a
rank-deficient matrix included.  Structural zeros of the operator (inputs no tap reads when
``k < s``, more output than input channels per frequency) belong to no matrix and stay 0.

The math runs in float64 on the CPU (LAPACK's batched SVD) and the result is copied into the
weight in its dtype and device.  The report (:class:`ClippingReport`, the shape of
:class:`procres.spectral.projection.ProjectionReport`) gives the clipped operator's extremes and, for
a padded conv that is not circular, the layer's own operator's where
:func:`procres.spectral.spectra.exact_extremes` affords it (``layer_sigma_max``, ``layer_sigma_min``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from procres.errors import UserError
from procres.spectral.operator import ConvOperator, conv_operator, finite_number, positive_int
from procres.spectral.projection import OperatorReport
from procres.spectral.spectra import exact_extremes
from procres.spectral.symbol import batched_svdvals, circular_singular_values, circular_symbol, kernel_from_symbol

__all__ = ["clip_singular_values_", "clip_matrix", "clip_kernel", "ClippingReport", "check_clip_bounds"]


# ----------------------------------------------------------------------------- the math
def clip_matrix(A: torch.Tensor, upper: float | None, lower: float | None) -> torch.Tensor:
    """``U clamp(S, lower, upper) V^H`` of a batch ``A (..., m, n)``, real or complex, same shape."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    S = S.clamp(min=lower, max=upper)
    return (U * S[..., None, :].to(U.dtype)) @ Vh


def clip_kernel(op: ConvOperator, upper: float | None, lower: float | None) -> torch.Tensor:
    """One clipping step of a resolved operator: -> the new weight ``(C_out, C_in / g, kh, kw)``.

    Patch operators (``op.patchwise``): the clipped patch matrix (exact).  Otherwise ``op`` must be
    circular: the clipped polyphase symbol back to a kernel, cropped to the (dilated) taps.
    """
    shape = op.weight.shape
    if op.patchwise:
        return clip_matrix(op.patch_matrix(), upper, lower).reshape(shape)
    assert op.padding_mode == "circular", op.padding_mode
    symbol = circular_symbol(op)                              # (F, g, C_out / g, C_in / g * ph * pw)
    mh, mw = op.output_size
    clipped = clip_matrix(symbol, upper, lower).reshape(mh, mw // 2 + 1, shape[0], symbol.shape[-1])
    full = kernel_from_symbol(clipped, op.effective_kernel, op.input_size, op.stride)
    (dh, dw) = op.dilation
    return full[..., ::dh, ::dw]


def _matrix_values(op: ConvOperator | None, weight: torch.Tensor) -> torch.Tensor:
    """Singular values of the matrices that clipping acts on (patch, frequency or Linear)."""
    if op is None:
        return torch.linalg.svdvals(weight)
    op = dataclasses.replace(op, weight=weight)
    if op.patchwise:
        return batched_svdvals(op.patch_matrix()).flatten()
    return circular_singular_values(op)


def _violation(sv: torch.Tensor, upper, lower) -> float:
    """Largest distance of a singular value outside ``[lower, upper]`` (0 inside)."""
    over = float(sv.max()) - upper if upper is not None else 0.0
    under = lower - float(sv.min()) if lower is not None else 0.0
    return max(0.0, over, under)


# ----------------------------------------------------------------------------- the report
@dataclasses.dataclass
class ClippingReport(OperatorReport):
    """The clipped operator after :func:`clip_singular_values_`: its exact extremes, ``history`` of
    ``max_violation`` (the largest distance of a singular value outside ``[min, max]``), ``exact``:
    one step puts every value in the box (patch convs, Linear).  ``operator``: ``"matrix"``,
    ``"patch"`` or ``"circular"`` (on ``input_size``: the padded grid for zero padding);
    ``layer_sigma_*``: the layer's own operator when it is another one and affordable, else None."""

    max: float | None = None
    min: float | None = None
    max_violation: float = 0.0
    operator: str = "matrix"
    input_size: tuple | None = None
    layer_sigma_max: float | None = None
    layer_sigma_min: float | None = None


# ----------------------------------------------------------------------------- the door
def check_clip_bounds(upper, lower) -> tuple[float | None, float | None]:
    """``max`` and ``min`` of a clipping, validated: at least one, finite, >= 0, ``max > 0``,
    ``min <= max``; returned as floats (None stays None)."""
    if upper is None and lower is None:
        raise UserError("clipping needs max=, min= or both, got neither")
    upper = None if upper is None else finite_number(upper, "max", positive=True)
    lower = None if lower is None else finite_number(lower, "min")
    if upper is not None and lower is not None and lower > upper:
        raise UserError(f"min={lower!r} is larger than max={upper!r}")
    return upper, lower


def _nominal_size(conv: nn.Conv2d) -> tuple[int, int]:
    """An input size every operator of ``conv`` is defined on (only a patch conv's is used:
    its spectrum is the same matrix's at every size)."""
    pads = (0, 0) if isinstance(conv.padding, str) else conv.padding
    return tuple(s * (d * k + 2 * p) for s, d, k, p in zip(conv.stride, conv.dilation, conv.kernel_size, pads))


def clipped_operator(conv: nn.Conv2d, input_size) -> ConvOperator:
    """The operator :func:`clip_singular_values_` clips (see the module docstring): the patch operator
    (at any size) or a circular one at ``input_size``; a UserError when it needs a size it lacks."""
    op = conv_operator(conv, _nominal_size(conv) if input_size is None else input_size)
    if op.patchwise:
        return op
    if input_size is None:
        raise UserError(f"clipping needs input_size for this conv (effective kernel {op.effective_kernel}, "
                        f"stride {op.stride}, padding {op.padding}): its spectrum depends on the input size (only "
                        "convs with kernel <= stride and no padding are clipped exactly at every size)")
    if op.padding_mode == "zeros":
        return op.enclosing_circular()
    op = conv_operator(conv, input_size, padding_mode="circular")
    if any(k > n for k, n in zip(op.effective_kernel, op.input_size)):
        raise UserError(f"effective kernel {op.effective_kernel} is larger than input_size {op.input_size}: "
                        "the crop back to the kernel's support is undefined")
    return op


def check_unparametrized(layer: nn.Module, action: str, name: str = "") -> None:
    """A UserError when ``layer.weight`` is computed by a parametrization (torch's or procres'
    ``spectral_norm``, ``weight_norm``, ...): changing it in place would not change the layer."""
    if parametrize.is_parametrized(layer, "weight"):
        label = name or type(layer).__bases__[0].__name__        # the class torch's parametrize derived from
        raise UserError(f"{label}.weight is parametrised (computed from parametrizations.weight.original): "
                        f"{action} in place would not change the layer; remove the parametrization first, or "
                        "leave this layer out")


def check_layer(layer, input_size) -> ConvOperator | None:
    """Everything :func:`clip_singular_values_` refuses about ``layer``; -> the operator to clip
    (None for a Linear layer's matrix)."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise UserError(f"clipping takes an nn.Conv2d or an nn.Linear, got {type(layer).__name__}")
    check_unparametrized(layer, "clipping")
    if isinstance(layer, nn.Conv2d):
        return clipped_operator(layer, input_size)
    if input_size is not None:
        raise UserError(f"input_size is for convs; nn.Linear's operator is its matrix, got {input_size!r}")
    if not torch.isfinite(layer.weight).all():
        raise UserError("weight contains NaN or inf values")
    return None


def _is_layers_own(layer: nn.Conv2d, op: ConvOperator, input_size) -> bool:
    """Whether the clipped operator ``op`` is ``layer``'s own (a patch conv, or circular padding that
    is the torus), rather than the circular operator on the padded grid that bounds it."""
    if input_size is None:                                     # only patch convs are clipped without a size
        return True
    own = conv_operator(layer, input_size)
    return own.patchwise or own.padding_mode == "circular"


def clip_weight_(layer, op: ConvOperator | None, upper, lower, iterations: int, *, input_size=None,
                 report: bool = True):
    """Clip ``layer``'s weight (its operator ``op`` from :func:`check_layer`, validated; ``input_size``:
    the layer's, for the report) in place; returns a :class:`ClippingReport` (None without
    ``report``: the step hook's fast path)."""
    if op is not None:
        op = op.to(torch.float64)
        op = dataclasses.replace(op, weight=op.weight.cpu())
    own_operator = op is None or _is_layers_own(layer, op, input_size)
    exact = op is None or (op.patchwise and own_operator)
    steps = 1 if op is None or op.patchwise else iterations
    w = layer.weight.detach().to("cpu", torch.float64) if op is None else op.weight
    history = [_violation(_matrix_values(op, w), upper, lower)] if report else []
    for _ in range(steps):
        w = clip_matrix(w, upper, lower) if op is None else clip_kernel(dataclasses.replace(op, weight=w), upper, lower)
        if report:
            sv = _matrix_values(op, w)
            history.append(_violation(sv, upper, lower))
    with torch.no_grad():
        layer.weight.copy_(w.to(layer.weight.dtype))
    if not report:
        return None
    own = {} if own_operator else exact_extremes(layer, input_size) or {}
    return ClippingReport(
        max=upper, min=lower, sigma_min=float(sv.min()), sigma_max=float(sv.max()), max_violation=history[-1],
        exact=exact, iterations=steps, operator="matrix" if op is None else "patch" if op.patchwise else "circular",
        stride=None if op is None else op.stride, grid=None if op is None or op.patchwise else tuple(op.output_size),
        input_size=None if op is None or (op.patchwise and own_operator) else tuple(op.input_size),
        groups=1 if op is None else op.groups, history=history,
        layer_sigma_max=own.get("sigma_max"), layer_sigma_min=own.get("sigma_min"))


def clip_singular_values_(layer, input_size=None, *, max=None, min=None, iterations=1) -> ClippingReport:
    """Clip the singular values of ``layer``'s operator into ``[min, max]`` in place (see the module
    docstring); returns a :class:`ClippingReport`.

    ``layer``: an ``nn.Conv2d`` (its own stride, padding, dilation and groups) or an ``nn.Linear``.
    ``input_size``: the conv's ``n`` or ``(h, w)``; None for Linear layers and patch convs, required
    otherwise.  ``iterations``: alternating clip-and-crop steps (one suffices when exact).
    Bad arguments raise a UserError and leave the layer unchanged.
    """
    upper, lower = check_clip_bounds(max, min)
    iterations = positive_int(iterations, "iterations")
    op = check_layer(layer, input_size)
    return clip_weight_(layer, op, upper, lower, iterations, input_size=input_size)
