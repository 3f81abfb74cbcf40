"""The authors' released Procrustes step, reproduced for comparison (``faithful=True``).

docs/theory.md section 4: the stride is ignored (a stride-1 FFT of the kernel on the output grid),
the polar factor of each frequency matrix comes from a real ``2 C`` block embedding
``[[Re, -Im], [Im, Re]]`` and ``FAITHFUL_ITERATIONS`` = 10 coupled Newton-Schulz iterations (not
converged for ill-conditioned frequencies), the imaginary part is read back from the wrong block,
which returns ``conj(polar(A))`` (a spatially flipped kernel, harmless for ``1 x 1``), then the real
part of the inverse FFT is cropped.  :mod:`procres.spectral.projection` calls ``faithful_step`` when asked.
"""

from __future__ import annotations

import torch

from procres.errors import UserError

__all__ = ["FAITHFUL_ITERATIONS", "faithful_polar", "faithful_step", "check_faithful_grid"]

FAITHFUL_ITERATIONS = 10


def _coupled_newton_schulz(E, iterations):
    """The authors' polar factor of real ``E (..., p, q)``: ``E (E^T E)^{-1/2}`` with the inverse
    square root from ``iterations`` coupled Newton-Schulz steps (``Y -> B^{1/2}``,
    ``Z -> B^{-1/2}``) on the Gram ``B``, divided by its Frobenius norm only where that norm
    exceeds 1 (their ``batch_sqrtm(..., reg=1.)``: a Gram of norm <= 1 is iterated unscaled, and
    10 steps then leave its small eigenvalues further from converged).  Not checked for
    convergence, as in their code.  Iterating the smaller Gram gives the same result: ``Z`` is a
    polynomial in ``B``, and ``E p(E^T E) = p(E E^T) E`` with ``||E^T E||_F = ||E E^T||_F``."""
    wide = E.shape[-2] < E.shape[-1]
    B = E @ E.mT if wide else E.mT @ E
    norm = torch.linalg.matrix_norm(B)[..., None, None]
    norm = torch.where(norm > 1, norm, torch.ones_like(norm))
    eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    Y, Z = B / norm, eye.expand_as(B)
    for _ in range(iterations):
        T = 0.5 * (3.0 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    Z = Z / norm.sqrt()
    return Z @ E if wide else E @ Z


def faithful_polar(A, *, iterations=FAITHFUL_ITERATIONS, conj_slip=True):
    """The authors' polar factor of complex ``A (..., p, q)``: real block embedding
    ``[[Re, -Im], [Im, Re]]``, ``iterations`` coupled Newton-Schulz steps, read back.  With
    ``conj_slip`` the imaginary part is read from the top-right block, which holds
    ``-Im(polar(A))``, so the result is ``conj(polar(A))`` (the released code's behaviour)."""
    p, q = A.shape[-2:]
    E = torch.cat([torch.cat([A.real, -A.imag], -1), torch.cat([A.imag, A.real], -1)], -2)
    P = _coupled_newton_schulz(E, iterations)
    imag = P[..., :p, q:] if conj_slip else P[..., p:, :q]
    return torch.complex(P[..., :p, :q], imag)


def faithful_step(w, size, stride, target):
    """The authors' step (see module docstring); ``w (C_out, C_in, kh, kw)``: stride-1 FFT on the
    output grid, ``faithful_polar``, real part of the inverse FFT, crop."""
    kh, kw = w.shape[-2:]
    grid = (size[0] // stride[0], size[1] // stride[1])
    A = torch.fft.fft2(w, s=grid).permute(2, 3, 0, 1)          # (mh, mw, C_out, C_in)
    P = target * faithful_polar(A)
    return torch.fft.ifft2(P.permute(2, 3, 0, 1)).real[..., :kh, :kw]


def check_faithful_grid(weight, size, stride):
    grid = (size[0] // stride[0], size[1] // stride[1])
    if weight.shape[-2] > grid[0] or weight.shape[-1] > grid[1]:
        raise UserError(
            f"faithful=True needs the kernel {tuple(weight.shape[-2:])} to fit the output grid "
            f"{grid}")
