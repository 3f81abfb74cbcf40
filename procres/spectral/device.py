"""The exact Procrustes step computed where the weight lives, with no host synchronisation.

The projection (``procres.spectral.projection``) replaces every frequency matrix of a convolution by
``target`` times its polar factor.  torch's SVD and eigendecomposition check their LAPACK error
codes on the host (``infos.any().item()``), so on a GPU each call stops the host until the device
has caught up -- once per projected layer, on half the training steps at ``p = 0.5`` -- and
cuSOLVER has batched kernels only up to 32 x 32, so bigger batches run one matrix at a time.
:func:`polar_sync_free` computes the same polar factor with batched matrix products only
(``bmm``/``baddbmm``): no error codes, no host round trip, the host queues the whole projection
and moves on to the next step.

Algorithm (``A (..., m, n)``, real or complex; wide matrices go through ``A^H``).
``X_0 = A / ||A^H A||_F^{1/2}`` (so every singular value is at most 1), then the scaled
Newton-Schulz iteration ``X <- a_k X - b_k X (X^H X)`` with ``a_k = 1.5 alpha_k`` and
``b_k = 0.5 alpha_k^3``, ``alpha_k = sqrt(3 / (1 + l + l^2))`` (Chen & Chow 2014): it maps the
singular-value interval ``[l_k, 1]`` onto ``[l_{k+1}, 1]`` as fast as a cubic can.  The schedule
is fixed in advance from ``l_0 = POLAR_FLOOR`` (1e-9); ``l`` is clamped at 1e-3 inside
``alpha`` so that no step shrinks the largest singular values by more than ~400x (round-off
stays at float64 level).  :data:`POLAR_SCHEDULE` holds the 26 steps, after which every singular
value above ``POLAR_FLOOR * ||A^H A||_F^{1/2}`` is 1 to float64 round-off.  Accuracy: the factor
differs from the SVD's by about ``eps64 * kappa`` (1e-13 at ``kappa = 1e4``, 2e-9 at ``1e8``;
``tests/training/test_graphs.py``), the conditioning of the polar factor itself.  Like the ``eigh`` route,
directions with singular values below the floor (numerically rank-deficient matrices) are not
brought to the target: they stay short of 1, where the SVD route returns some unit completion.

Route rule (:func:`device_route`, used by ``procres.spectral.projection._exact_step`` for CUDA weights):
a layer is projected on the device when its operator is one matrix for every frequency (kernel no
larger than the stride: the 1x1 stride-2 transitions, ``k = s`` patches), or when the smaller
side of its frequency matrices ``min(C_out, C_in ph pw)`` is at most :data:`SMALL_SIDE` (32; the
3 -> 64 stem: 544 matrices of 64 x 3 on its 32 x 17 half spectrum).  Every layer of the paper's
ProcResNets is on the device route, whatever ``projection_method`` says (svd, eigh and converged
Newton-Schulz are the same polar factor; on the device it is always this one).  Larger frequency
matrices (a 3x3 conv with many channels) keep the CPU route: its float64 SVD is exact at any
conditioning, and trained kernels with many channels can have near-singular frequencies, where
the fixed schedule stops short.
"""

from __future__ import annotations

import math

import torch

from procres.spectral.symbol import frequency_independent, kernel_from_symbol, polyphase_symbol, tap_phases

__all__ = ["POLAR_FLOOR", "POLAR_SCHEDULE", "SMALL_SIDE", "device_route", "polar_sync_free",
           "exact_step_on_device"]

POLAR_FLOOR = 1e-9  # singular values above this times ||A^H A||_F^{1/2} reach 1
SMALL_SIDE = 32  # frequency matrices with a smaller side up to this are projected on the device
_ALPHA_FLOOR = 1e-3  # l is clamped here inside alpha: no step shrinks sigma = 1 below ~2.6e-3


def _schedule(floor: float, tol: float = 1e-15) -> tuple[tuple[float, float], ...]:
    """(a_k, b_k) of the scaled Newton-Schulz steps that take [floor, 1] to [1 - tol, 1]."""
    steps, low = [], floor
    while 1.0 - low > tol:
        clamped = max(low, _ALPHA_FLOOR)
        alpha = math.sqrt(3.0 / (1.0 + clamped + clamped * clamped))
        steps.append((1.5 * alpha, 0.5 * alpha**3))
        low = 0.5 * alpha * low * (3.0 - alpha * alpha * low * low)
    return tuple(steps)


POLAR_SCHEDULE = _schedule(POLAR_FLOOR)


def polar_sync_free(A: torch.Tensor) -> torch.Tensor:
    """Polar factor ``U V^H`` of every matrix of ``A (..., m, n)`` (real or complex) by the fixed
    scaled Newton-Schulz schedule (module docstring): batched matrix products only, no host sync.
    NaN or inf in a matrix make its result NaN (nothing raises)."""
    wide = A.shape[-2] < A.shape[-1]
    X = A.mH if wide else A
    shape = X.shape
    X = X.reshape(-1, *shape[-2:])
    scale = torch.linalg.matrix_norm(X.mH @ X).sqrt().clamp_min(torch.finfo(X.real.dtype).tiny)
    X = X / scale[:, None, None]
    for a, b in POLAR_SCHEDULE:
        X = torch.baddbmm(X, X, X.mH @ X, beta=a, alpha=-b)
    X = X.reshape(shape)
    return X.mH.resolve_conj() if wide else X


def device_route(weight_shape, stride) -> bool:
    """Whether a kernel of ``weight_shape (C_out, C_in, kh, kw)`` at ``stride (sh, sw)`` is projected
    on the device (the rule in the module docstring); the caller also requires a CUDA weight."""
    c_out, c_in, kh, kw = weight_shape
    if frequency_independent((kh, kw), stride):  # one matrix for every frequency
        return True
    ph, pw = tap_phases((kh, kw), stride)
    return min(c_out, c_in * ph * pw) <= SMALL_SIDE


def exact_step_on_device(w: torch.Tensor, size, stride, target: float) -> torch.Tensor:
    """One exact projection of ``w (C_out, C_in, kh, kw)`` on ``w``'s device, in float64: polyphase
    symbol, ``target * polar_sync_free``, inverse, crop (``procres.spectral.projection`` documents the step).
    ``size`` and ``stride`` are pairs.  A kernel no larger than the stride has the same matrix at
    every frequency, so it is projected on the 1 x 1 grid (``size = stride``): one polar factor."""
    w = w.to(torch.float64)
    if frequency_independent(w.shape[-2:], stride):
        size = tuple(stride)
    symbol = polyphase_symbol(w, size, stride)
    return kernel_from_symbol(target * polar_sync_free(symbol), w.shape[-2:], size, stride)
