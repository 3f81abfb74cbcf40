"""Singular values of 2-D convolution operators.

A convolution with weight ``W`` of shape ``(C_out, C_in, kh, kw)`` (PyTorch layout) and stride
``s`` is a linear map from ``R^{C_in x h x w}`` to ``R^{C_out x oh x ow}``.  This module gives its
singular values exactly or iteratively, and its dense matrix for small sizes.

Operators (``padding_mode``):

* ``"circular"``: periodic convolution on the ``h x w`` torus.  The input is padded by ``kh // 2``
  on top and ``kh - 1 - kh // 2`` at the bottom (same for the width) with wrap-around, so the
  output is ``(h / s) x (w / s)``; ``h`` and ``w`` must be divisible by ``s``.  For odd ``k <= n``
  this is ``nn.Conv2d(padding=k // 2, padding_mode="circular")``.  Taps are taken modulo the grid,
  so even kernels and kernels larger than the grid are well defined.  The shift ``k // 2`` is a
  permutation of the output and does not change any singular value.
* ``"zeros"``: ``nn.Conv2d(padding=k // 2)`` exactly, output ``(h + 2 (k // 2) - k) // s + 1``.
  For odd ``k`` and ``s | h`` that is ``h / s``; for even ``k`` the output has one more row and
  column than ``h / s`` (stride 1), as in PyTorch.

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
* zeros: no FFT diagonalisation; exact only through the dense matrix (``DENSE_LIMIT``).

For any padding and size, ``conv_operator_norm`` and ``conv_min_singular_value`` run Lanczos on
the smaller Gram operator, applied with ``conv2d`` and its adjoint ``conv_transpose2d``.

Precision and speed: spectra are computed in the weight's dtype (complex64 for float32,
complex128 for float64) with batched ``torch.linalg.svdvals`` on ``h w / 2 + 2`` matrices instead
of ``h w``.  The float32 error is below 1e-6 relative to ``sigma_max`` (max over all values of
``|s - s_ref| / s_ref_max``; benchmarks/spectral.py).  Eigenvalues of the Gram matrix
``A A^H`` would be ~1.6x faster in float32 but lose small singular values (error
``~ eps sigma_max^2 / sigma``, 1e-4 relative for the condition numbers of random 3x3 kernels), and
in float64 they are no faster than the complex64 SVD, so the SVD is used.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from procres.errors import UserError

__all__ = [
    "DENSE_LIMIT",
    "conv_singular_values",
    "conv_operator_norm",
    "conv_min_singular_value",
    "conv_matrix",
    "norm_preserving_target",
    "spectrum_stats",
    "batched_svdvals",
    "polyphase_symbol",
    "frequency_classes",
    "kernel_from_symbol",
]

#: Largest number of rows or columns of a dense operator (``conv_matrix`` and the exact
#: zero-padding spectrum).  A 4096 x 4096 float64 matrix is 128 MiB; its SVD takes seconds.
DENSE_LIMIT = 4096

_PADDING_MODES = ("circular", "zeros")


# ----------------------------------------------------------------------------- argument checks
def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise UserError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise UserError(f"{name} must be an int or a pair of ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise UserError(f"{name} must hold positive ints, got {value!r}")
    return pair


def _check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor):
        raise UserError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise UserError(
            f"weight must be 4-D (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise UserError(f"weight must be a real floating tensor, got dtype {weight.dtype}")
    if weight.numel() == 0:
        raise UserError(f"weight is empty, shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise UserError("weight contains NaN or inf values")


def _check_mode(padding_mode: str) -> None:
    if padding_mode not in _PADDING_MODES:
        raise UserError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")


def _check_divisible(size, stride) -> tuple[int, int]:
    (h, w), (sh, sw) = size, stride
    if h % sh or w % sw:
        raise UserError(
            f"circular padding needs input_size {size} divisible by stride {stride}"
        )
    return h // sh, w // sw


def _zeros_padding(weight, padding) -> tuple[int, int]:
    if padding is None:
        return weight.shape[-2] // 2, weight.shape[-1] // 2
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding, padding)
    if not (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, int) and p >= 0 for p in padding)):
        raise UserError(f"padding must be a non-negative int or pair, got {padding!r}")
    return tuple(padding)


def _output_size(weight, size, stride, padding, padding_mode) -> tuple[int, int]:
    if padding_mode == "circular":
        return _check_divisible(size, stride)
    out = tuple((n + 2 * p - k) // s + 1
                for n, p, k, s in zip(size, padding, weight.shape[-2:], stride))
    if min(out) < 1:
        raise UserError(
            f"input_size {size} with padding {padding} is smaller than the kernel "
            f"{tuple(weight.shape[-2:])}"
        )
    return out


# ----------------------------------------------------------------------------- the operator
def _wrap_index(n: int, k: int, device) -> torch.Tensor:
    """Rows of the circularly padded input: ``n + k - 1`` indices starting at ``-(k // 2)``."""
    return torch.arange(-(k // 2), n + k - 1 - k // 2, device=device) % n


def _conv(x, weight, stride, padding, padding_mode):
    """The operator: ``x (B, C_in, h, w) -> (B, C_out, oh, ow)``."""
    if padding_mode == "zeros":
        return F.conv2d(x, weight, stride=stride, padding=padding)
    kh, kw = weight.shape[-2:]
    ih = _wrap_index(x.shape[-2], kh, x.device)
    iw = _wrap_index(x.shape[-1], kw, x.device)
    return F.conv2d(x[..., ih, :][..., iw], weight, stride=stride)


def _conv_adjoint(y, weight, size, stride, padding, padding_mode):
    """The adjoint of ``_conv``: ``y (B, C_out, oh, ow) -> (B, C_in, h, w)``."""
    h, w = size
    kh, kw = weight.shape[-2:]
    if padding_mode == "zeros":
        out_pad = tuple(n + 2 * p - k - (o - 1) * s for n, p, k, o, s in
                        zip(size, padding, (kh, kw), y.shape[-2:], stride))
        return F.conv_transpose2d(y, weight, stride=stride, padding=padding,
                                  output_padding=out_pad)
    # adjoint of "wrap-pad then valid conv": transposed conv onto the padded grid, then fold
    # the padded rows/columns back onto the torus.
    z = F.conv_transpose2d(y, weight, stride=stride,
                           output_padding=(stride[0] - 1, stride[1] - 1))
    x = z.new_zeros(*z.shape[:-2], h, z.shape[-1]).index_add_(-2, _wrap_index(h, kh, z.device), z)
    return x.new_zeros(*x.shape[:-1], w).index_add_(-1, _wrap_index(w, kw, x.device), x)


def conv_matrix(weight, input_size, *, stride=1, padding_mode="circular") -> torch.Tensor:
    """Dense matrix of the convolution operator, built by impulse response.

    ``weight (C_out, C_in, kh, kw)`` -> ``(C_out * oh * ow, C_in * h * w)`` in the weight's dtype
    and device; rows and columns are C-order flattenings of ``(C, H, W)``, so
    ``conv_matrix(W, n) @ x.flatten() == conv(x).flatten()``.  ``padding_mode="zeros"`` is
    ``nn.Conv2d(padding=k // 2)``.  Raises ValueError above ``DENSE_LIMIT`` rows or columns.
    """
    _check_weight(weight)
    _check_mode(padding_mode)
    size, stride = _pair(input_size, "input_size"), _pair(stride, "stride")
    padding = _zeros_padding(weight, None)
    oh, ow = _output_size(weight, size, stride, padding, padding_mode)
    c_out, c_in = weight.shape[:2]
    d_in, d_out = c_in * size[0] * size[1], c_out * oh * ow
    if max(d_in, d_out) > DENSE_LIMIT:
        raise UserError(
            f"dense operator would be {d_out} x {d_in}, above DENSE_LIMIT={DENSE_LIMIT}; "
            "use conv_operator_norm / conv_min_singular_value instead"
        )
    eye = torch.eye(d_in, dtype=weight.dtype, device=weight.device).reshape(d_in, c_in, *size)
    return _conv(eye, weight, stride, padding, padding_mode).reshape(d_in, d_out).T


# ----------------------------------------------------------------------------- exact spectra
def _wrap_kernel(weight, size):
    """Fold kernel taps modulo the grid so that the kernel is at most ``h x w``."""
    (h, w), (kh, kw) = size, weight.shape[-2:]
    if kh > h:
        reps = -(-kh // h)
        weight = F.pad(weight, (0, 0, 0, reps * h - kh))
        weight = weight.reshape(*weight.shape[:2], reps, h, weight.shape[-1]).sum(2)
    if kw > w:
        reps = -(-kw // w)
        weight = F.pad(weight, (0, reps * w - kw))
        weight = weight.reshape(*weight.shape[:3], reps, w).sum(3)
    return weight


def _phases(kernel_size, stride) -> tuple[int, int]:
    """Number of polyphase components per axis that hold at least one kernel tap."""
    return min(kernel_size[0], stride[0]), min(kernel_size[1], stride[1])


def polyphase_symbol(weight, input_size, stride=1):
    """Per-frequency matrices of the circular strided convolution (real-FFT half spectrum).

    ``weight (C_out, C_in, kh, kw)`` -> complex ``(mh, mw // 2 + 1, C_out, C_in * ph * pw)`` on the
    output grid ``m = input_size / stride`` (``ph = min(kh, sh)`` phases that hold taps; columns
    ordered ``(c_in, r, t)``).  ``frequency_classes`` says which entries to use.
    """
    size, stride = _pair(input_size, "input_size"), _pair(stride, "stride")
    (mh, mw), (sh, sw) = _check_divisible(size, stride), stride
    weight = _wrap_kernel(weight, size)
    c_out, c_in, kh, kw = weight.shape
    ph, pw = _phases((kh, kw), stride)
    qh, qw = -(-kh // sh), -(-kw // sw)
    sub = F.pad(weight, (0, qw * sw - kw, 0, qh * sh - kh)).reshape(c_out, c_in, qh, sh, qw, sw)
    sub = sub[:, :, :, :ph, :, :pw].permute(0, 1, 3, 5, 2, 4).reshape(c_out, c_in * ph * pw, qh, qw)
    return torch.fft.rfft2(sub, s=(mh, mw)).permute(2, 3, 0, 1)


def frequency_classes(grid, device=None):
    """One representative per conjugate pair of the real-FFT half spectrum.

    For a real kernel the matrix at ``(-u, -v)`` is the conjugate of the one at ``(u, v)``.  In
    the flattened ``(mh, mw // 2 + 1)`` half spectrum this returns int64 index tensors
    ``real`` (the up to 4 self-conjugate frequencies ``u in {0, mh/2}, v in {0, mw/2}``: real
    matrices, count once), ``pair`` (one of each conjugate pair: count twice), and
    ``mirror, source`` (entries of columns ``v in {0, mw/2}`` that are the conjugate of
    ``source``).  ``len(real) + 2 len(pair) == mh * mw``.
    """
    mh, mw = grid
    mwr = mw // 2 + 1
    u = torch.arange(mh).repeat_interleave(mwr)
    v = torch.arange(mwr).repeat(mh)
    self_v = (v == 0) | ((mw % 2 == 0) & (v == mw // 2))
    self_u = (u == 0) | ((mh % 2 == 0) & (u == mh // 2))
    upper = (u > 0) & (2 * u < mh)                       # representatives inside columns self_v
    flat = torch.arange(mh * mwr)
    real = flat[self_v & self_u]
    pair = flat[~self_v | upper]
    mirror = flat[self_v & ~self_u & ~upper]
    source = (mh - u[mirror]) * mwr + v[mirror]
    return tuple(t.to(device) for t in (real, pair, mirror, source))


def kernel_from_symbol(symbol, kernel_size, input_size, stride=1) -> torch.Tensor:
    """Inverse of ``polyphase_symbol`` followed by a crop to the ``kh x kw`` support.

    ``symbol (mh, mw // 2 + 1, C_out, C_in * ph * pw)`` -> real weight ``(C_out, C_in, kh, kw)``.
    Taps of the periodic kernel outside the support are discarded (the crop of the Procrustes
    projection).  Needs ``kh <= h`` and ``kw <= w``.
    """
    size, stride = _pair(input_size, "input_size"), _pair(stride, "stride")
    (mh, mw), (sh, sw) = _check_divisible(size, stride), stride
    kh, kw = kernel_size
    ph, pw = _phases((kh, kw), stride)
    qh, qw = -(-kh // sh), -(-kw // sw)
    c_out = symbol.shape[-2]
    c_in = symbol.shape[-1] // (ph * pw)
    sub = torch.fft.irfft2(symbol.permute(2, 3, 0, 1), s=(mh, mw))[..., :qh, :qw]
    sub = sub.reshape(c_out, c_in, ph, pw, qh, qw).permute(0, 1, 4, 2, 5, 3)
    full = sub.new_zeros(c_out, c_in, qh, sh, qw, sw)
    full[:, :, :, :ph, :, :pw] = sub
    return full.reshape(c_out, c_in, qh * sh, qw * sw)[..., :kh, :kw]


# ----------------------------------------------------------------------------- the target
def norm_preserving_target(weight_or_shape, stride=1) -> float:
    """The value ``c`` that every non-zero singular value of a conv must take for the operator to
    preserve the gradient norm in expectation (REFERENCE.md section 4).

    ``weight_or_shape``: a weight ``(C_out, C_in, kh, kw)`` or its shape.  Per frequency the
    operator is the ``C_out x (C_in * ph * pw)`` polyphase block (``ph = min(kh, sh)`` phases hold
    taps), of rank ``r = min(C_out, C_in ph pw)`` for a generic kernel.  For isotropic output
    gradients ``E ||A^T g||^2 / ||g||^2 = r c^2 / C_out``, so ``c = sqrt(C_out / r)``: the authors'
    ``sqrt(C_out / C_in)`` for their stem and 1x1 transitions, 1 when the block has full row rank
    (3x3 stride 2, or fewer output than input channels), never below 1.
    """
    shape = tuple(weight_or_shape.shape if isinstance(weight_or_shape, torch.Tensor) else weight_or_shape)
    if len(shape) != 4 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise UserError(f"weight shape must be 4 positive ints (C_out, C_in, kh, kw), got {shape!r}")
    c_out, c_in, kh, kw = shape
    ph, pw = _phases((kh, kw), _pair(stride, "stride"))
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


CUDA_BATCHED_SVD_MAX = 32


def batched_svdvals(A: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals`` of a batch ``A (..., m, n)``, routed for speed and accuracy on CUDA.

    cuSOLVER has a batched SVD only for matrices up to 32 x 32; above that torch issues one
    launch per matrix (H200, torch 2.11: 0.8 s for the 272 64 x 64 matrices of a (C, n) =
    (64, 32) layer), so such batches are decomposed on the CPU, where they are small, and the
    values come back to ``A``'s device.  cuSOLVER's batched complex64 SVD measured up to 1.6e-4
    relative error (C = 512), so small complex64 batches on CUDA run in complex128.
    """
    if not A.is_cuda:
        return torch.linalg.svdvals(A)
    if max(A.shape[-2:]) > CUDA_BATCHED_SVD_MAX:
        return torch.linalg.svdvals(A.cpu()).to(A.device)
    if A.dtype == torch.complex64:
        return torch.linalg.svdvals(A.to(torch.complex128)).to(torch.float32)
    return torch.linalg.svdvals(A)


def conv_singular_values(weight, input_size, *, stride=1, padding_mode="circular") -> torch.Tensor:
    """All singular values of ``x -> conv(x, weight, stride)``, sorted descending.

    ``weight (C_out, C_in, kh, kw)``, ``input_size`` int or ``(h, w)``.  Returns exactly
    ``min(C_in h w, C_out oh ow)`` values in the weight's dtype and device.  Circular padding
    uses the (polyphase) FFT; ``"zeros"`` (``nn.Conv2d(padding=k // 2)``) uses the dense operator
    and raises ValueError above ``DENSE_LIMIT``.
    """
    _check_weight(weight)
    _check_mode(padding_mode)
    size, stride = _pair(input_size, "input_size"), _pair(stride, "stride")
    if padding_mode == "zeros":
        return torch.linalg.svdvals(
            conv_matrix(weight, size, stride=stride, padding_mode="zeros"))
    mh, mw = _check_divisible(size, stride)
    symbol = polyphase_symbol(weight, size, stride).flatten(0, 1)
    real, pair, _, _ = frequency_classes((mh, mw), symbol.device)
    sv_pair = batched_svdvals(symbol[pair])
    sv = torch.cat([batched_svdvals(symbol[real].real).flatten(),
                    sv_pair.flatten(), sv_pair.flatten()])
    total = min(weight.shape[1] * size[0] * size[1], weight.shape[0] * mh * mw)
    if sv.numel() < total:                                    # empty polyphase columns
        sv = torch.cat([sv, sv.new_zeros(total - sv.numel())])
    return sv.sort(descending=True).values


# ----------------------------------------------------------------------------- iterative
def _lanczos(matvec, start, *, which, tol, max_iter, zero_tol, block=64):
    """Extreme non-zero eigenvalue of a symmetric PSD operator by Lanczos with full
    re-orthogonalisation.  Returns ``(theta, converged)``; Ritz values below
    ``zero_tol * theta_max`` count as the null space and are skipped for ``which="min"``.
    The basis is kept in blocks of ``block`` vectors (no re-stacking); the Ritz values are
    checked every iteration for the first 16, then every 4th."""
    blocks, alphas, betas = [], [], []
    q = start / start.norm()
    theta, converged = 0.0, False
    for j in range(max_iter):
        if j % block == 0:
            blocks.append(q.new_empty(block, q.numel()))
        blocks[-1][j % block] = q
        w = matvec(q)
        alphas.append(float(torch.dot(w, q)))
        filled = blocks[:-1] + [blocks[-1][: j % block + 1]]
        for _ in range(2):                                    # classical Gram-Schmidt, twice
            for Q in filled:
                w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        last = j == max_iter - 1
        if j < 16 or j % 4 == 3 or last or beta == 0.0:
            T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                T = T + torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(T)
            top = max(float(evals[-1]), 0.0)
            idx = len(alphas) - 1
            if which == "min":
                nonzero = (evals > zero_tol * top).nonzero()
                idx = int(nonzero[0]) if len(nonzero) else idx
            theta = float(evals[idx])
            residual = beta * float(evecs[-1, idx].abs())
            if residual <= tol * abs(theta) or beta <= 1e-13 * max(top, 1e-300):
                converged = True
                break
        betas.append(beta)
        q = w / beta
    return theta, converged


def _gram_extreme(weight, input_size, stride, padding, padding_mode, tol, max_iter, which):
    _check_weight(weight)
    _check_mode(padding_mode)
    size, stride = _pair(input_size, "input_size"), _pair(stride, "stride")
    if not (tol > 0):
        raise UserError(f"tol must be positive, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise UserError(f"max_iter must be a positive int, got {max_iter!r}")
    padding = _zeros_padding(weight, padding)
    out = _output_size(weight, size, stride, padding, padding_mode)
    w64 = weight.detach().to(torch.float64)
    c_out, c_in = w64.shape[:2]
    in_shape, out_shape = (1, c_in, *size), (1, c_out, *out)

    def fwd(x):
        return _conv(x.reshape(in_shape), w64, stride, padding, padding_mode).flatten()

    def adj(y):
        return _conv_adjoint(y.reshape(out_shape), w64, size, stride, padding,
                             padding_mode).flatten()

    gen = torch.Generator(device="cpu").manual_seed(0)
    if math.prod(out_shape) <= math.prod(in_shape):           # the smaller Gram: A A^T
        matvec, dim = (lambda y: fwd(adj(y))), math.prod(out_shape)
        start = fwd(torch.randn(math.prod(in_shape), generator=gen, dtype=torch.float64)
                    .to(w64.device))
    else:                                                     # A^T A
        matvec, dim = (lambda x: adj(fwd(x))), math.prod(in_shape)
        start = adj(torch.randn(math.prod(out_shape), generator=gen, dtype=torch.float64)
                    .to(w64.device))
    if start.norm() == 0:
        return 0.0
    theta, converged = _lanczos(matvec, start, which=which, tol=tol,
                                max_iter=min(max_iter, dim), zero_tol=1e-10)
    if not converged:
        warnings.warn(f"Lanczos did not reach tol={tol} in max_iter={max_iter} iterations",
                      RuntimeWarning, stacklevel=3)
    return math.sqrt(max(theta, 0.0))


def conv_operator_norm(weight, input_size, *, stride=1, padding=None, padding_mode="zeros",
                       tol=1e-6, max_iter=1000) -> float:
    """Largest singular value of the convolution operator, by Lanczos (float64).

    ``weight (C_out, C_in, kh, kw)``; ``padding`` (zeros mode) defaults to ``k // 2``; circular
    mode ignores ``padding`` (a shift).  ``tol`` bounds the Ritz residual relative to
    ``sigma^2``.  Memory grows as ``iterations x operator size``.
    """
    return _gram_extreme(weight, input_size, stride, padding, padding_mode, tol, max_iter, "max")


def conv_min_singular_value(weight, input_size, *, stride=1, padding=None,
                            padding_mode="zeros", tol=1e-6, max_iter=1000) -> float:
    """Smallest non-zero singular value of the convolution operator, by Lanczos (float64).

    Lanczos runs on the smaller Gram operator from a start vector in its range; Ritz values
    below ``1e-10 * sigma_max^2`` (singular values below ``1e-5 sigma_max``) count as zero.
    Convergence to the bottom of a dense spectrum is slower than to the top: raise ``max_iter``
    if a RuntimeWarning says it did not converge.
    """
    return _gram_extreme(weight, input_size, stride, padding, padding_mode, tol, max_iter, "min")
