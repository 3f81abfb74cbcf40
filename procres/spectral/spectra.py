"""Singular values of 2-D convolution operators.

The operator, its arguments and their defaults are :mod:`procres.spectral.operator`'s: every function here
takes an ``nn.Conv2d`` (its own stride, padding, dilation, groups and padding mode) or a weight
``(C_out, C_in / groups, kh, kw)`` (stride 1, dilation 1, groups 1, **circular** padding unless
told otherwise), the input size as ``n`` or ``(h, w)`` of any integral type, and the same
keywords ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``.  Half and bfloat16
weights are measured in float32.

Exact spectra (Sedghi, Gupta & Long, ICLR 2019; polyphase form as in Senderovich et al. 2022):

* circular, stride 1: the operator is block-diagonalised by the 2-D DFT.  At each frequency
  ``(u, v)`` the block is ``A(u, v) = sum_{a,b} W[:, :, a, b] exp(-2 pi i (u a / h + v b / w))``
  (``C_out x C_in``); the spectrum is the union of the blocks' singular values.  For a real kernel
  ``A(-u, -v) = conj(A(u, v))`` has the same singular values, so one SVD per conjugate pair
  suffices (``frequency_classes``): the up to four self-conjugate frequencies
  ``u in {0, h/2}, v in {0, w/2}`` are real matrices and count once, every other pair twice.
* circular, stride ``s``: the input splits into ``s^2`` polyphase components
  ``x_{r,t}[c, i, j] = x[c, s i + r, s j + t]`` on the ``(h/s) x (w/s)`` grid, the kernel into
  sub-kernels ``W_{r,t}[:, :, q, p] = W[:, :, s q + r, s p + t]``; per frequency of that grid the
  operator is the ``C_out x (s^2 C_in)`` block row ``[A_{0,0} ... A_{s-1,s-1}]``.  Phases with no
  kernel tap (``k < s``) are all-zero columns and are dropped (their zero singular values are
  added back to the count).
* dilation ``d``: the kernel with ``d - 1`` zeros between taps (exact); groups: the operator is
  block-diagonal over the groups (after a permutation of channels), so its spectrum is the union
  of the groups' spectra.
* patch convolutions (``k_eff <= s`` with circular padding or no padding: 1x1 convs,
  ``k = s`` patchify stems): every output pixel reads its own input pixels, so the spectrum is
  the ``C_out x C_in k k`` matrix's singular values, each ``oh ow`` times, plus zeros: one SVD,
  for every padding mode.
* zero, reflect or replicate padding otherwise: no FFT diagonalisation; exact through the dense
  matrix when its smaller side is at most ``DENSE_LIMIT`` (the SVD of A or A^T).

Extremes (``conv_operator_norm``, ``conv_min_singular_value``, ``conv_extremes``): Lanczos
(:mod:`procres.spectral.lanczos`) on the smaller Gram operator, applied with ``conv2d`` and its adjoint
``conv_transpose2d``, for any padding and size.  ``conv_extremes`` is what the spectrum tables
use: exact where it is cheap (FFT, patch, or, for the other paddings, a dense LU of a square
operator with at most ``DENSE_LIMIT`` rows, or a Cholesky factor of a small enough smaller Gram, followed
by inverse iteration for the smallest value), else Lanczos with the achieved error reported;
``which="max"`` skips the smallest value where it would cost more than the largest.
Its Lanczos starts from the circular operator's top (or smallest) singular vector, a plane wave
under a half-sine envelope, plus ``START_MIX`` of a random vector so that no group or frequency
is left out: fewer iterations (a quarter fewer than from a random start on the ResNet-50 layout
at 224), and in clustered spectra a better top value.  Finding that vector costs one
decomposition of the circular symbol, as much as the circular spectrum itself, so a table that
computes both (:func:`circular_spectrum`) passes it on.  The largest value's Lanczos applies the
conv in float32 without re-orthogonalisation first and certifies the result in float64
(``FLOAT32_TOL``): the value and its error bound are float64's.  The smallest value
of a large near-singular zero-padding operator (a stride-1 conv whose circular symbol is close to
singular somewhere) needs about ``dim`` iterations; Lanczos gives up after ``GIVE_UP_AFTER``
when no digit is right yet, and reports its Ritz value, an upper bound (Ritz values never
undershoot the smallest eigenvalue).

Precision and speed: spectra are computed in the weight's dtype (complex64 for float32,
complex128 for float64) with batched ``torch.linalg.svdvals`` on ``h w / 2 + 2`` matrices instead
of ``h w``.  The float32 error is below 1e-6 relative to ``sigma_max`` (max over all values of
``|s - s_ref| / s_ref_max``; benchmarks/spectral.py).  Eigenvalues of the Gram matrix
``A A^H`` would be ~1.6x faster in float32 but lose small singular values (error
``~ eps sigma_max^2 / sigma``, 1e-4 relative for the condition numbers of random 3x3 kernels), so
the SVD is used there; in float64 the blocks of a stride-2 conv, 4x wider than tall, go through
their Gram where that keeps every value's digits (:func:`procres.spectral.symbol.batched_svdvals`).

The circular spectrum on a larger grid would bound the zero-padding ``sigma_max`` from above (a
zero-padded conv is a restriction of the circular one on any grid ``m >= n + 2p``), but on the
ResNet-50 layout at 224 that bracket is 2e-4 to 3e-2 wide and costs another decomposition of the
symbol, while the Lanczos residual reaches 1e-6 for less: it is not used.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import nn

from procres.errors import UserError
from procres.spectral.lanczos import lanczos
from procres.spectral.operator import DENSE_LIMIT, ConvOperator, conv_operator, size_pair
from procres.spectral.symbol import (
    batched_svdvals,
    circular_frequency_values,
    circular_singular_values,
    frequency_classes,
    kernel_from_symbol,
    patch_singular_values,
    polyphase_symbol,
    symbol_at,
    tap_phases,
)
from procres.spectral.threads import one_thread

__all__ = [
    "DENSE_LIMIT",
    "conv_singular_values",
    "CircularSpectrum",
    "circular_spectrum",
    "conv_operator_norm",
    "conv_min_singular_value",
    "conv_extremes",
    "exact_extremes",
    "conv_matrix",
    "norm_preserving_target",
    "spectrum_stats",
    "batched_svdvals",
    "polyphase_symbol",
    "frequency_classes",
    "kernel_from_symbol",
]

#: Exact extremes of a non-square zero-padding operator need its smaller Gram matrix: built from
#: the rows' taps (``rows x taps^2`` products) for a tall operator, at most ``DENSE_GRAM_PAIRS``;
#: else as a dense product, at most ``DENSE_GRAM_FLOPS`` (a few seconds on one core).  Past both,
#: Lanczos.
DENSE_GRAM_PAIRS = 5e7
DENSE_GRAM_FLOPS = 1e11


# ----------------------------------------------------------------------------- the target
def norm_preserving_target(weight_or_shape, stride=None, *, dilation=None, groups=None) -> float:
    """The value ``c`` that every non-zero singular value of a conv must take for the operator to
    preserve the gradient norm in expectation (docs/theory.md section 4).

    ``weight_or_shape``: an ``nn.Conv2d`` (its own stride, dilation and groups), a weight
    ``(C_out, C_in / groups, kh, kw)`` or its shape.  Per frequency and group the operator is the
    ``(C_out / g) x (C_in / g * ph * pw)`` polyphase block (``ph`` phases hold taps), of rank
    ``r = min(C_out / g, C_in / g * ph * pw)`` for a generic kernel.  For isotropic output
    gradients ``E ||A^T g||^2 / ||g||^2 = r c^2 / (C_out / g)``, so ``c = sqrt(C_out / (g r))``:
    the authors' ``sqrt(C_out / C_in)`` for their stem and 1x1 transitions, 1 when the block has
    full row rank (3x3 stride 2, fewer output than input channels, depthwise), never below 1.
    """
    if isinstance(weight_or_shape, nn.Conv2d):
        conv = weight_or_shape
        stride = conv.stride if stride is None else stride
        dilation = conv.dilation if dilation is None else dilation
        groups = conv.groups if groups is None else groups
        weight_or_shape = conv.weight
    shape = tuple(weight_or_shape.shape if isinstance(weight_or_shape, torch.Tensor) else weight_or_shape)
    if len(shape) != 4 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise UserError(f"weight shape must be 4 positive ints (C_out, C_in, kh, kw), got {shape!r}")
    groups = 1 if groups is None else groups
    if not (isinstance(groups, int) and groups >= 1 and shape[0] % groups == 0):
        raise UserError(f"groups must be a positive int dividing C_out={shape[0]}, got {groups!r}")
    c_out, c_in, kh, kw = shape
    stride = size_pair(1 if stride is None else stride, "stride")
    dilation = size_pair(1 if dilation is None else dilation, "dilation")
    ph, pw = tap_phases((kh, kw), stride, dilation)
    c_out //= groups
    return math.sqrt(c_out / min(c_out, c_in * ph * pw))


def spectrum_stats(singular_values, target: float | None = None, *, rtol: float = 1e-6) -> dict:
    """Summary of a spectrum: ``sigma_max``, ``sigma_min`` (smallest *non-zero* value: above
    ``rtol * sigma_max``; the null space of a wide operator is not a defect), ``cond``,
    ``nonzero`` and ``count``, and, given ``target``, the ``max_rel_error`` and
    ``mean_rel_error`` of the non-zero values from it (NaN when there are none).

    ``singular_values``: a tensor, array or list of floats.  Plain Python floats out.
    """
    sv = torch.as_tensor(singular_values, dtype=torch.float64).detach().cpu().flatten()
    if sv.numel() == 0:
        raise UserError("spectrum_stats needs at least one singular value, got none")
    smax = float(sv.max())
    nz = sv[sv > rtol * max(smax, 1e-300)]
    smin = float(nz.min()) if nz.numel() else 0.0
    out = {"sigma_max": smax, "sigma_min": smin, "cond": smax / smin if smin > 0 else math.inf,
           "nonzero": int(nz.numel()), "count": int(sv.numel())}
    if target is not None:
        rel = (nz / target - 1).abs()
        out["max_rel_error"] = float(rel.max()) if nz.numel() else math.nan
        out["mean_rel_error"] = float(rel.mean()) if nz.numel() else math.nan
    return out


def _fill_zeros(sv: torch.Tensor, total: int) -> torch.Tensor:
    if sv.numel() < total:                                    # structurally zero singular values
        sv = torch.cat([sv, sv.new_zeros(total - sv.numel())])
    return sv.sort(descending=True).values


def conv_singular_values(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None,
                         groups=None, padding_mode=None) -> torch.Tensor:
    """All singular values of the conv operator, sorted descending (see the module docstring).

    Returns exactly ``min(C_in h w, C_out oh ow)`` values in the weight's dtype (float32 for
    half precisions) and device.  Circular padding and patch convs are exact at any size; zero
    padding otherwise uses the dense operator and raises ValueError above ``DENSE_LIMIT``.
    """
    op = conv_operator(conv_or_weight, input_size, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, padding_mode=padding_mode)
    if op.patchwise:
        sv = patch_singular_values(op)
    elif op.padding_mode == "circular":
        sv = circular_singular_values(op)
    else:
        sv = torch.linalg.svdvals(op.matrix())
    return _fill_zeros(sv, min(op.shape))


class CircularSpectrum(NamedTuple):
    """The circular operator's singular values: ``values``, all of them descending (as
    :func:`conv_singular_values`), and ``per_frequency``, ``(F, groups, r)`` those of each matrix of
    the half spectrum (None for a patch conv), which :func:`conv_extremes` can reuse to start Lanczos
    on the same weight's padded operator without decomposing the symbol again."""

    values: torch.Tensor
    per_frequency: torch.Tensor | None


def circular_spectrum(conv_or_weight, input_size, *, stride=None, dilation=None, groups=None) -> CircularSpectrum:
    """Exact singular values of the conv with circular padding, at any size (see the module docstring)."""
    op = conv_operator(conv_or_weight, input_size, stride=stride, dilation=dilation, groups=groups,
                       padding_mode="circular")
    if op.patchwise:
        return CircularSpectrum(_fill_zeros(patch_singular_values(op), min(op.shape)), None)
    per_frequency = circular_frequency_values(op)
    return CircularSpectrum(_fill_zeros(circular_singular_values(op, per_frequency), min(op.shape)), per_frequency)


def conv_matrix(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None, groups=None,
                padding_mode=None) -> torch.Tensor:
    """Dense matrix ``(C_out oh ow, C_in h w)`` of the conv operator in the weight's dtype and
    device; rows and columns are C-order flattenings of ``(C, H, W)``, so
    ``conv_matrix(W, n) @ x.flatten() == conv(x).flatten()``.  Raises ValueError when its
    smaller side exceeds ``DENSE_LIMIT`` or it has more than ``DENSE_ENTRIES`` entries."""
    return conv_operator(conv_or_weight, input_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode).matrix()


# ----------------------------------------------------------------------------- extremes
#: Singular values at most this fraction of sigma_max count as zero (the null space of a wide or
#: strided operator is not a defect).
NONZERO_RTOL = 1e-6


#: Lanczos iterations after which ``conv_extremes`` stops on a smallest value that has no right
#: digit yet (a near-singular zero-padding operator: that value is then an upper bound).
GIVE_UP_AFTER = 64


#: Weight of the random part of a guided Lanczos start (relative to the guided part).
START_MIX = 0.3


#: The largest value's Lanczos runs first with the conv in float32 and without re-orthogonalisation
#: (on the ResNet-50 layout at 224: matvecs 2-4x and iterations 5-10x cheaper), down to this
#: relative residual (``max(tol / 4, FLOAT32_TOL)``; float32's own floor is near 1e-7); a float64
#: pass from its Ritz vector then certifies ``tol`` in its first iteration or goes on, so the value
#: and its error are float64's.  The first pass takes at most half of ``max_iter``, and it is
#: skipped for a Gram of at most ``FLOAT32_MIN_DIM`` unknowns (there a float64 iteration costs
#: little, and ``dim`` of them give the exact value).
FLOAT32_TOL = 2.5e-7
FLOAT32_MIN_DIM = 4096


class Extreme(NamedTuple):
    """One extreme singular value; ``error`` bounds its relative distance to a singular value of
    the operator (the Lanczos residual; 0 for exact methods, up to rounding)."""

    value: float
    error: float
    converged: bool
    iterations: int


def _gram_operator(op: ConvOperator):
    """(matvec of the smaller Gram, its dim, map from the other side into its range, side)."""
    rows, cols = op.shape
    in_shape, out_shape = (1, op.c_in, *op.input_size), (1, op.c_out, *op.output_size)

    def fwd(x):
        return op.forward(x.reshape(in_shape)).flatten()

    def adj(y):
        return op.adjoint(y.reshape(out_shape)).flatten()

    if rows <= cols:                                          # A A^T on the output side
        return (lambda y: fwd(adj(y))), rows, fwd, "out"
    return (lambda x: adj(fwd(x))), cols, adj, "in"


def _lanczos_extreme(op: ConvOperator, which: str, tol: float, max_iter: int, start=None,
                     give_up_after: int | None = None) -> Extreme:
    """Largest or smallest non-zero singular value by Lanczos on the smaller Gram; value and error
    are float64's (the largest is found in float32 first, see ``FLOAT32_TOL``)."""
    op = op.to(torch.float64)
    matvec, dim, into, side = _gram_operator(op)
    other = op.shape[1] if side == "out" else op.shape[0]
    gen = torch.Generator().manual_seed(0)
    rand = into(torch.randn(other, generator=gen, dtype=torch.float64).to(op.weight.device))
    if float(rand.norm()) == 0.0:                             # the zero operator
        return Extreme(0.0, 0.0, True, 0)
    # a guided start keeps a random part in the range: a block-diagonal (grouped) operator would
    # otherwise confine the Krylov space to the start's group
    start = rand if start is None else start / start.norm() + START_MIX * rand / rand.norm()
    max_iter, first = min(max_iter, dim), 0
    if which == "max" and dim > FLOAT32_MIN_DIM and max_iter > 1:
        start, first = _float32_top(op, dim, start, tol, max_iter // 2)
    res = lanczos(matvec, dim, which="largest" if which == "max" else "smallest", tol=tol,
                  max_iter=max_iter - first, start=start, zero_tol=NONZERO_RTOL**2, relative="value",
                  give_up_after=give_up_after, device=op.weight.device)
    index = res.wanted.nonzero().flatten()
    if index.numel() == 0:                                    # every Ritz value is (numerically) 0
        return Extreme(0.0, 0.0, res.converged, first + res.iterations)
    i = int(index[-1] if which == "max" else index[0])
    theta = max(float(res.values[i]), 0.0)
    error = float(res.residuals[i]) / (2 * theta) if theta > 0 else math.inf
    return Extreme(math.sqrt(theta), error, res.converged, first + res.iterations)


def _float32_top(op: ConvOperator, dim: int, start: torch.Tensor, tol: float, max_iter: int) -> tuple:
    """The cheap first pass for the largest value: (its Ritz vector, its iterations); the start
    instead when float32 over- or underflowed."""
    fast = _gram_operator(op.to(torch.float32))[0]
    res = lanczos(lambda v: fast(v.float()).double(), dim, tol=max(tol / 4, FLOAT32_TOL), max_iter=max_iter,
                  start=start, relative="value", reorthogonalise=False, top_vector=True, device=op.weight.device)
    usable = res.vector is not None and bool(torch.isfinite(res.vector).all()) and float(res.vector.norm()) > 0
    return (res.vector if usable else start), res.iterations


def _iterative(conv_or_weight, input_size, which, tol, max_iter, **kwargs) -> float:
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise UserError(f"tol must be positive, got {tol!r}")
    if not (isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 1):
        raise UserError(f"max_iter must be a positive int, got {max_iter!r}")
    op = conv_operator(conv_or_weight, input_size, **kwargs)
    result = _lanczos_extreme(op, which, tol, max_iter)
    if not result.converged:
        warnings.warn(f"Lanczos did not reach tol={tol} in max_iter={max_iter} iterations",
                      RuntimeWarning, stacklevel=3)
    return result.value


def conv_operator_norm(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None, groups=None,
                       padding_mode=None, tol=1e-6, max_iter=1000) -> float:
    """Largest singular value of the conv operator, by Lanczos in float64 (any padding and size).

    ``tol`` bounds the Ritz residual relative to ``sigma^2``; memory grows as
    ``iterations x operator size``; a RuntimeWarning says when ``max_iter`` ended it first.
    """
    return _iterative(conv_or_weight, input_size, "max", tol, max_iter, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, padding_mode=padding_mode)


def conv_min_singular_value(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None,
                            groups=None, padding_mode=None, tol=1e-6, max_iter=1000) -> float:
    """Smallest non-zero singular value of the conv operator, by Lanczos in float64.

    Lanczos runs on the smaller Gram operator from a start vector in its range; values below
    ``NONZERO_RTOL * sigma_max`` count as zero.  Convergence to the bottom of a dense spectrum is
    far slower than to the top; without convergence (a RuntimeWarning) the result is an upper
    bound.  ``conv_extremes`` is exact for small zero-padding operators.
    """
    return _iterative(conv_or_weight, input_size, "min", tol, max_iter, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, padding_mode=padding_mode)


def _dense_affordable(op: ConvOperator) -> bool:
    """Exact zero-padding extremes are cheap (see ``DENSE_GRAM_PAIRS``, ``DENSE_GRAM_FLOPS``)."""
    rows, cols = op.shape
    if not op.dense_affordable:
        return False
    taps = op.weight[0].numel()
    return rows == cols or (rows > cols and rows * taps**2 <= DENSE_GRAM_PAIRS) or \
        2 * rows * cols * min(rows, cols) <= DENSE_GRAM_FLOPS


def _gram_matrix(op: ConvOperator) -> torch.Tensor:
    """The smaller Gram matrix: ``A^T A`` of a tall operator as the sum of its rows' outer products
    (each row holds ``C_in / g * k * k`` taps), else the dense product."""
    rows, cols = op.shape
    taps = op.weight[0].numel()
    if rows > cols and rows * taps**2 <= DENSE_GRAM_PAIRS:
        index, values = op.row_taps()
        G = op.weight.new_zeros(cols * cols)
        chunk = max(1, 2**22 // taps**2)
        for start in range(0, rows, chunk):
            i, v = index[start:start + chunk], values[start:start + chunk]
            G.index_add_(0, (i[:, :, None] * cols + i[:, None, :]).flatten(), (v[:, :, None] * v[:, None, :]).flatten())
        return G.reshape(cols, cols)
    A = op.matrix()
    return A.T @ A if rows > cols else A @ A.T


def _dense_smallest(op: ConvOperator) -> float:
    """Smallest singular value of the smaller side by inverse iteration (Lanczos on the inverse
    Gram) with an LU of A (square) or a Cholesky factor of the smaller Gram; a singular or
    numerically indefinite factorisation falls back to the Gram's eigenvalues."""
    rows, cols = op.shape
    if rows == cols:
        A = op.matrix()
        LU, piv, info = torch.linalg.lu_factor_ex(A)

        def solve(v):
            u = torch.linalg.lu_solve(LU, piv, v[:, None], adjoint=True)
            return torch.linalg.lu_solve(LU, piv, u)[:, 0]
    else:
        G = _gram_matrix(op)
        L, info = torch.linalg.cholesky_ex(G)
        U = L.mT.contiguous()                                 # cholesky_solve copies L per call

        def solve(v):
            return torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(L, v[:, None], upper=False),
                                                 upper=True)[:, 0]
    if int(info) != 0:
        G = A.T @ A if rows == cols else G
        return float(spectrum_stats(torch.linalg.eigvalsh(G).clamp_min(0).sqrt())["sigma_min"])
    inverse = lanczos(solve, min(rows, cols), which="largest", tol=1e-10, relative="value",
                      device=op.weight.device)
    return 1 / math.sqrt(float(inverse.values[-1]))


def _circular_starts(op: ConvOperator, per_frequency: torch.Tensor | None = None, which: str = "both") -> tuple:
    """Start vectors for Lanczos on the smaller Gram, for the largest and for the smallest value:
    on the output grid, the circular operator's top (smallest non-zero) left singular vector as a
    plane wave under a half-sine envelope (the conjugate the operator amplifies more, resp.
    less), mapped to the input side when that is the smaller Gram's; ``(None, None)`` when the
    circular operator is undefined (input not divisible by the stride), and None for the smallest
    when ``which="max"``.  ``per_frequency``: the circular spectrum's values of the same weight
    (:class:`CircularSpectrum`), else they are computed here."""
    if any(n % s for n, s in zip(op.input_size, op.stride)):
        return None, None
    circular = op.with_mode("circular")
    real = frequency_classes(op.output_size)[0].tolist()
    sv = circular_frequency_values(circular) if per_frequency is None else per_frequency
    (mh, mw), r = circular.output_size, min(op.c_out // op.groups, op.c_in // op.groups * math.prod(
        tap_phases(op.kernel_size, op.stride, op.dilation)))
    if tuple(sv.shape) != (mh * (mw // 2 + 1), op.groups, r):
        raise UserError(f"the circular spectrum given ({tuple(sv.shape)} values per frequency) is not this "
                        f"{op.c_out} x {op.c_in} conv's on a {op.input_size} input")
    masked = torch.where(sv > NONZERO_RTOL * sv.max(), sv, torch.full_like(sv, math.inf))
    wanted = [("max", int(sv[..., 0].argmax()) * sv.shape[-1])] + [("min", int(masked.argmin()))] * (which != "max")
    starts = []
    for kind, index in wanted:
        f, rest = divmod(index, op.groups * sv.shape[-1])
        g, k = divmod(rest, sv.shape[-1])
        matrix = symbol_at(circular, f)[g]                    # a self-conjugate frequency's is real
        with one_thread():
            u = torch.linalg.svd(matrix.real if f in real else matrix, full_matrices=False)[0][:, k]
        starts.append(_plane_wave(op, u, f, g, kind))
    return tuple(starts) if len(starts) == 2 else (starts[0], None)


def _plane_wave(op: ConvOperator, u: torch.Tensor, f: int, g: int, which: str) -> torch.Tensor:
    (mh, mw), (oh, ow) = (n // s for n, s in zip(op.input_size, op.stride)), op.output_size
    fu, fv = divmod(f, mw // 2 + 1)
    i = torch.arange(oh, dtype=torch.float64, device=u.device)
    j = torch.arange(ow, dtype=torch.float64, device=u.device)
    wave = torch.polar(torch.ones(oh, ow, dtype=torch.float64, device=u.device),
                       2 * math.pi * (fu * i[:, None] / mh + fv * j / mw))
    envelope = torch.sin(math.pi * (i[:, None] + 1) / (oh + 1)) * torch.sin(math.pi * (j + 1) / (ow + 1))
    co = op.c_out // op.groups
    candidates = []
    for vec in (u, u.conj()):
        y = torch.zeros(op.c_out, oh, ow, dtype=torch.float64, device=u.device)
        y[g * co:(g + 1) * co] = (vec.to(wave.dtype)[:, None, None] * wave).real * envelope
        x = op.adjoint(y[None])
        candidates.append((float(x.norm() / y.norm()), y, x))
    _, y, x = (max if which == "max" else min)(candidates, key=lambda c: c[0])
    return (y if op.shape[0] <= op.shape[1] else x).flatten()


def _extremes_of(sv: torch.Tensor, method: str) -> dict:
    stats = spectrum_stats(sv, rtol=NONZERO_RTOL)
    return {"sigma_max": stats["sigma_max"], "sigma_min": stats["sigma_min"], "method": method, "exact": True,
            "sigma_max_error": 0.0, "sigma_min_error": 0.0, "sigma_min_is": "value", "iterations": 0}


def _exact_extremes(op: ConvOperator, dense: bool = True) -> dict | None:
    op64 = op.to(torch.float64)                               # float32 would leave a small sigma_min few digits
    if op.patchwise:
        return _extremes_of(patch_singular_values(op64), "patch")
    if op.padding_mode == "circular":
        return _extremes_of(circular_singular_values(op64), "fft")
    if not (dense and _dense_affordable(op)):
        return None
    top = _lanczos_extreme(op64, "max", 1e-10, min(op.shape), start=_circular_starts(op64, which="max")[0])
    return {**_extremes_of(torch.tensor([top.value, _dense_smallest(op64)], dtype=torch.float64), "dense"),
            "sigma_max_error": top.error, "iterations": top.iterations}


def exact_extremes(conv_or_weight, input_size, **operator) -> dict | None:
    """``conv_extremes(..., method="exact")`` where that is affordable, else None (no work done)."""
    return _exact_extremes(conv_operator(conv_or_weight, input_size, **operator))


def conv_extremes(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None, groups=None,
                  padding_mode=None, method="auto", which="both", tol=1e-6, max_iter=300, circular=None) -> dict:
    """``sigma_max`` and smallest non-zero ``sigma_min`` of the conv operator, and how they were
    obtained (see the module docstring).

    ``method``: ``"exact"`` (FFT, patch, or dense factorisation for other paddings; ValueError when
    the dense route is not affordable), ``"lanczos"``, or ``"auto"`` (exact where affordable).
    ``which="max"``: ``sigma_min`` only where it comes with ``sigma_max`` (FFT, patch); elsewhere
    ``"auto"`` then runs Lanczos for ``sigma_max`` alone and ``sigma_min`` is None ("not measured").
    ``circular``: the :func:`circular_spectrum` of the same weight, if already computed; its values
    choose the Lanczos start instead of a second decomposition.
    Returns floats ``sigma_max``, ``sigma_min``, ``sigma_max_error``, ``sigma_min_error``
    (residual bounds on the relative error; 0 when exact), ``method``, ``exact``,
    ``sigma_min_is`` (``"value"``, or ``"upper bound"`` when Lanczos did not converge: Ritz values
    only ever overestimate the smallest singular value) and ``iterations``.  Lanczos runs at most
    ``max_iter`` iterations per value with residual tolerance ``tol`` (relative to ``sigma^2``).
    """
    if method not in ("auto", "exact", "lanczos"):
        raise UserError(f"method must be 'auto', 'exact' or 'lanczos', got {method!r}")
    if which not in ("both", "max"):
        raise UserError(f"which must be 'both' or 'max', got {which!r}")
    op = conv_operator(conv_or_weight, input_size, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, padding_mode=padding_mode)
    if method != "lanczos":
        exact = _exact_extremes(op, dense=method == "exact" or which == "both")
        if exact is not None:
            return exact
        if method == "exact":
            raise UserError(f"the {op.shape[0]} x {op.shape[1]} zero-padding operator is too large for the "
                            f"dense route (DENSE_LIMIT={DENSE_LIMIT}); use method='lanczos'")
    op64 = op.to(torch.float64)
    high_start, low_start = _circular_starts(op64, None if circular is None else circular.per_frequency, which)
    top = _lanczos_extreme(op64, "max", tol, max_iter, start=high_start)
    out = {"sigma_max": top.value, "method": "lanczos", "exact": False, "sigma_max_error": top.error,
           "iterations": top.iterations}
    if which == "max":
        return {**out, "sigma_min": None, "sigma_min_error": None, "sigma_min_is": "not measured"}
    low = _lanczos_extreme(op64, "min", tol, max_iter, start=low_start, give_up_after=GIVE_UP_AFTER)
    return {**out, "sigma_min": low.value, "sigma_min_error": low.error if low.converged else math.inf,
            "sigma_min_is": "value" if low.converged else "upper bound",
            "iterations": top.iterations + low.iterations}
