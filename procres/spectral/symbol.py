"""The symbol of a circular convolution: its per-frequency matrices (Sedghi et al. 2019).

``polyphase_symbol`` gives, for a weight ``(C_out, C_in, kh, kw)`` (PyTorch layout), stride ``s``
and input ``h x w``, the ``C_out x (C_in ph pw)`` block row of the circular operator at every
frequency of the real-FFT half of the ``(h/s) x (w/s)`` output grid; ``frequency_classes`` says
which half-spectrum entries are real or stand for a conjugate pair; ``kernel_from_symbol``
inverts it and crops to the kernel support (the Procrustes projection); ``batched_svdvals``
decomposes a batch of them; ``circular_symbol`` / ``circular_frequency_values`` (per frequency) /
``circular_singular_values`` (all, with multiplicity) do the same for a resolved
:class:`procres.spectral.operator.ConvOperator` (dilation, groups), ``symbol_at`` gives one
frequency's matrices (differentiable), ``circular_norm`` the operator's norm with its gradient, and
``patch_singular_values`` covers patch convs (one matrix for every pixel).
:mod:`procres.spectral.spectra` turns them into singular values and :mod:`procres.spectral.projection`
into norm-preserving kernels.

The symbol is computed as a DFT over the taps, two small matrix products per sub-kernel tap row
and column (``exp(-2 pi i u q / m)`` with ``u q`` reduced modulo ``m`` in integers): the same values
as an FFT of the zero-padded kernel, 3-6x faster for kernels much smaller than the grid (measured
on a CPU for 3x3 kernels with 16-32 channels on 5x5 to 9x9 grids).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from procres.errors import UserError
from procres.spectral.operator import ConvOperator, size_pair
from procres.spectral.threads import one_thread

__all__ = ["polyphase_symbol", "frequency_classes", "kernel_from_symbol", "batched_svdvals",
           "check_divisible", "tap_phases", "frequency_independent", "circular_symbol",
           "symbol_at", "circular_frequency_values", "circular_singular_values", "patch_singular_values",
           "circular_norm"]


def check_divisible(size, stride) -> tuple[int, int]:
    (h, w), (sh, sw) = size, stride
    if h % sh or w % sw:
        raise UserError(f"circular padding needs input_size {size} divisible by stride {stride}")
    return h // sh, w // sw


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


def tap_phases(kernel_size, stride, dilation=(1, 1)) -> tuple[int, int]:
    """Polyphase components per axis that hold a kernel tap: ``|{d a mod s}| = min(k, s / gcd(d, s))``
    (``min(k, s)`` without dilation)."""
    return tuple(min(k, s // math.gcd(d, s)) for k, s, d in zip(kernel_size, stride, dilation))


def frequency_independent(kernel_size, stride) -> bool:
    """True when every polyphase sub-kernel is a single tap (``k <= s`` on both axes: 1x1 kernels,
    and the ``k = s`` non-overlapping patches of ``procresnet...k2``): the symbol is then the same
    real matrix at every frequency, and one decomposition covers the operator."""
    return kernel_size[0] <= stride[0] and kernel_size[1] <= stride[1]


def polyphase_symbol(weight, input_size, stride=1):
    """Per-frequency matrices of the circular strided convolution (real-FFT half spectrum).

    ``weight (C_out, C_in, kh, kw)`` -> complex ``(mh, mw // 2 + 1, C_out, C_in * ph * pw)`` on the
    output grid ``m = input_size / stride`` (``ph = min(kh, sh)`` phases that hold taps; columns
    ordered ``(c_in, r, t)``).  ``frequency_classes`` says which entries to use.
    """
    size, stride = size_pair(input_size, "input_size"), size_pair(stride, "stride")
    (mh, mw) = check_divisible(size, stride)
    sub = _subkernels(_wrap_kernel(weight, size), stride)
    rows, cols = _dft_matrix(mh, mh, sub.shape[-2], sub), _dft_matrix(mw // 2 + 1, mw, sub.shape[-1], sub)
    return torch.einsum("uq,vp,ocqp->uvoc", rows, cols, sub.to(rows.dtype))


def _dft_matrix(frequencies, m: int, taps: int, like: torch.Tensor) -> torch.Tensor:
    """``exp(-2 pi i u q / m)`` for the first ``frequencies`` ``u`` (an int) or the given ones
    (a list) and taps ``q < taps``: ``(len(u), taps)``, complex, on ``like``'s device and precision.
    ``u q`` is reduced modulo ``m`` in integers, so that the angle keeps its digits."""
    u = torch.arange(frequencies) if isinstance(frequencies, int) else torch.tensor(frequencies)
    turns = (u[:, None] * torch.arange(taps)) % m
    angle = (-2 * math.pi / m) * turns.to(like.dtype)
    return torch.polar(torch.ones_like(angle), angle).to(like.device)


def _subkernels(weight, stride) -> torch.Tensor:
    """``(C_out, C_in * ph * pw, qh, qw)``: the polyphase sub-kernels ``W[:, :, s q + r, s p + t]``
    of the phases that hold taps, columns ordered ``(c_in, r, t)``."""
    c_out, c_in, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, tap_phases((kh, kw), stride)
    qh, qw = -(-kh // sh), -(-kw // sw)
    sub = F.pad(weight, (0, qw * sw - kw, 0, qh * sh - kh)).reshape(c_out, c_in, qh, sh, qw, sw)
    return sub[:, :, :, :ph, :, :pw].permute(0, 1, 3, 5, 2, 4).reshape(c_out, c_in * ph * pw, qh, qw)


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
    size, stride = size_pair(input_size, "input_size"), size_pair(stride, "stride")
    (mh, mw), (sh, sw) = check_divisible(size, stride), stride
    kh, kw = kernel_size
    ph, pw = tap_phases((kh, kw), stride)
    qh, qw = -(-kh // sh), -(-kw // sw)
    c_out = symbol.shape[-2]
    c_in = symbol.shape[-1] // (ph * pw)
    sub = torch.fft.irfft2(symbol.permute(2, 3, 0, 1), s=(mh, mw))[..., :qh, :qw]
    sub = sub.reshape(c_out, c_in, ph, pw, qh, qw).permute(0, 1, 4, 2, 5, 3)
    full = sub.new_zeros(c_out, c_in, qh, sh, qw, sw)
    full[:, :, :, :ph, :, :pw] = sub
    return full.reshape(c_out, c_in, qh * sh, qw * sw)[..., :kh, :kw]




CUDA_BATCHED_SVD_MAX = 32

#: float64 blocks at least this many times wider than tall (or taller than wide) are decomposed
#: through the eigenvalues of their smaller Gram matrix (1.5-2.2x faster than the SVD on the
#: 128 x 512 ... 512 x 2048 polyphase blocks of stride-2 3x3 convs; square blocks gain little).
GRAM_ASPECT = 2
#: A block whose smallest Gram-route value is below this fraction of its largest is decomposed
#: again by the SVD (the Gram route's relative error grows as (sigma_max / sigma)^2).
GRAM_RTOL = 0.05


def batched_svdvals(A: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals`` of a batch ``A (..., m, n)``, routed for speed and accuracy.

    CPU, float64 or complex128, ``max(m, n) >= GRAM_ASPECT min(m, n)``: square roots of the
    eigenvalues of ``A A^H`` (or ``A^H A``), descending.  ``eigvalsh`` is backward stable, so each
    eigenvalue is off by at most ``c eps sigma_max^2`` (``c`` a modest multiple of the size, the
    product's rounding included) and a singular value by ``c eps (sigma_max / sigma)^2 / 2`` relative;
    blocks whose values reach below ``GRAM_RTOL sigma_max`` are redone by the SVD, so every value
    keeps a relative error of at most ``200 c eps`` (measured: 6e-15 of sigma_max on the ResNet-50
    layout's stride-2 layers).  float32 stays on the SVD: there ``c eps`` would be 1e-5.

    CUDA: cuSOLVER has a batched SVD only for matrices up to 32 x 32; above that torch issues one
    launch per matrix (H200, torch 2.11: 0.8 s for the 272 64 x 64 matrices of a (C, n) =
    (64, 32) layer), so such batches are decomposed on the CPU, where they are small, and the
    values come back to ``A``'s device.  cuSOLVER's batched complex64 SVD measured up to 1.6e-4
    relative error (C = 512), so small complex64 batches on CUDA run in complex128.
    """
    if not A.is_cuda:
        m, n = A.shape[-2:]
        if A.dtype in (torch.float64, torch.complex128) and max(m, n) >= GRAM_ASPECT * min(m, n) and A.numel():
            return _gram_svdvals(A)
        with one_thread():
            return torch.linalg.svdvals(A)
    if max(A.shape[-2:]) > CUDA_BATCHED_SVD_MAX:
        return torch.linalg.svdvals(A.cpu()).to(A.device)
    if A.dtype == torch.complex64:
        return torch.linalg.svdvals(A.to(torch.complex128)).to(torch.float32)
    return torch.linalg.svdvals(A)


def _gram_svdvals(A: torch.Tensor) -> torch.Tensor:
    gram = A @ A.mH if A.shape[-2] <= A.shape[-1] else A.mH @ A   # a matmul: threads help here
    with one_thread():
        sv = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)
        redo = sv[..., -1] < GRAM_RTOL * sv[..., 0]
        if bool(redo.any()):
            sv[redo] = torch.linalg.svdvals(A[redo])
    return sv


# ----------------------------------------------------------------------------- of a ConvOperator
def patch_singular_values(op: ConvOperator) -> torch.Tensor:
    """Distinct-with-multiplicity values of a patch conv: one SVD per group, ``oh ow`` copies."""
    return batched_svdvals(op.patch_matrix()).flatten().repeat(math.prod(op.output_size))


def circular_symbol(op: ConvOperator) -> torch.Tensor:
    """``(F, groups, C_out / g, C_in / g * ph * pw)``: the half spectrum's matrices per group."""
    symbol = polyphase_symbol(op.dilated_weight(), op.input_size, op.stride).flatten(0, 1)
    return symbol.reshape(symbol.shape[0], op.groups, op.c_out // op.groups, symbol.shape[-1])


def _operator_subkernels(op: ConvOperator) -> torch.Tensor:
    """``op``'s polyphase sub-kernels on its grid (:func:`_subkernels` of the dilated, wrapped
    weight), differentiable in ``op.weight``."""
    return _subkernels(_wrap_kernel(op.dilated_weight(), op.input_size), op.stride)


def _frequency_taps(op: ConvOperator, index: int, sub: torch.Tensor) -> torch.Tensor:
    """``(qh, qw)`` complex: ``exp(-2 pi i (u q / mh + v p / mw))`` for the sub-kernel taps ``(q, p)`` at
    frequency ``(u, v)``, entry ``index`` of the flattened half spectrum; ``symbol_at(op, index)``
    is these weights' sum over the taps of :func:`_operator_subkernels`."""
    mh, mw = op.output_size
    u, v = divmod(index, mw // 2 + 1)
    row, col = _dft_matrix([u], mh, sub.shape[-2], sub)[0], _dft_matrix([v], mw, sub.shape[-1], sub)[0]
    return row[:, None] * col[None, :]


def symbol_at(op: ConvOperator, index: int) -> torch.Tensor:
    """``circular_symbol(op)[index]`` alone, ``(groups, C_out / g, C_in / g * ph * pw)``: the DFT over
    the taps at that one frequency of the flattened half spectrum, differentiable in ``op.weight``."""
    sub = _operator_subkernels(op)
    taps = _frequency_taps(op, index, sub)
    matrix = torch.einsum("qp,ocqp->oc", taps, sub.to(taps.dtype))
    return matrix.reshape(op.groups, op.c_out // op.groups, matrix.shape[-1])


def circular_norm(op: ConvOperator) -> torch.Tensor:
    """The largest singular value of a circular operator as a 0-d tensor, differentiable in
    ``op.weight`` (a subgradient where it is repeated).  Without grad: the largest eigenvalue of
    every frequency's smaller Gram matrix (``eigvalsh``, ~3x faster than the SVD of the matrices)
    says where it is, and that Gram matrix's top eigenvector gives the singular vectors ``u, v``.
    ``sigma = Re(u^H A(W) v)`` is linear in the sub-kernels, ``sum(sub(W) * G)`` with
    ``G = Re(conj(u_o) v_c e_f(q, p))`` (:func:`_frequency_taps`): computed so, the value is the top
    singular value and autograd sees only a product and the sub-kernels' reshapes (no complex
    DFT in the backward pass), the gradient being the top singular value's."""
    sub = _operator_subkernels(op)
    with torch.no_grad():
        symbol = circular_symbol(dataclasses.replace(op, weight=op.weight.detach()))
        wide = symbol.shape[-2] <= symbol.shape[-1]
        gram = symbol @ symbol.mH if wide else symbol.mH @ symbol
        index, group = divmod(int(torch.linalg.eigvalsh(gram)[..., -1].argmax()), op.groups)
        A = symbol[index, group]
        x = torch.linalg.eigh(gram[index, group])[1][:, -1]
        u, v = (x, A.mH @ x) if wide else (A @ x, x)
        rows = op.c_out // op.groups
        u_all = u.new_zeros(op.c_out)
        u_all[group * rows:(group + 1) * rows] = u / u.norm()
        taps = _frequency_taps(op, index, sub)
        grad = torch.real(u_all.conj()[:, None, None, None] * (v / v.norm())[None, :, None, None] * taps)
    return (sub * grad.to(sub.dtype)).sum()


def circular_frequency_values(op: ConvOperator) -> torch.Tensor:
    """``(F, groups, r)``: the singular values of each matrix of :func:`circular_symbol`, descending;
    each conjugate pair is decomposed once (a mirror entry copies its source's values)."""
    symbol = circular_symbol(op)
    real, pair, mirror, source = frequency_classes(op.output_size, symbol.device)
    sv = symbol.real.new_empty(*symbol.shape[:2], min(symbol.shape[-2:]))
    sv[real] = batched_svdvals(symbol[real].real)
    sv[pair] = batched_svdvals(symbol[pair])
    sv[mirror] = sv[source]
    return sv


def circular_singular_values(op: ConvOperator, per_frequency: torch.Tensor | None = None) -> torch.Tensor:
    """Every singular value of the circular operator (unsorted), from ``per_frequency``
    (:func:`circular_frequency_values`) when given: a self-conjugate frequency's once, a pair's twice."""
    sv = circular_frequency_values(op) if per_frequency is None else per_frequency
    real, pair, _, _ = frequency_classes(op.output_size, sv.device)
    sv_pair = sv[pair].flatten()
    return torch.cat([sv[real].flatten(), sv_pair, sv_pair])
