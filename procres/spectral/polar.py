"""The polar factor ``U V^H`` of a batch of matrices: the nearest matrix with all singular values
equal (the orthogonal Procrustes solution), by SVD, eigendecomposition or converged Newton-Schulz;
and the polar factor of every frequency matrix of a conv's half spectrum (``symbol_polar``).
"""

from __future__ import annotations

import torch

from procres.errors import UserError
from procres.spectral.operator import size_pair
from procres.spectral.symbol import check_divisible, frequency_classes

__all__ = ["POLAR_METHODS", "polar", "symbol_polar"]

POLAR_METHODS = ("svd", "eigh", "newton_schulz")


# ----------------------------------------------------------------------------- polar factor
def polar(A, *, method="svd", tol=1e-6, max_iter=100, return_info=False):
    """Polar factor ``U V^H`` of a batch of (complex) matrices.

    ``A (..., m, n)`` real or complex -> ``(..., m, n)``, the nearest matrix with orthonormal
    columns (``m >= n``) or rows (``m < n``).  ``method="svd"``: from the thin SVD; for
    rank-deficient ``A`` the factor is not unique and the SVD picks one.  ``"eigh"``:
    ``A (A^H A)^{-1/2}`` (or ``(A A^H)^{-1/2} A`` for wide ``A``) from the eigendecomposition of the
    smaller Gram matrix: ~1.3x faster than the SVD on CPU and batched-Jacobi friendly on GPU for
    small sides (``3 x 3`` Grams for a 3 -> 64 conv), but its error grows like ``eps kappa^2``
    (5e-10 in float64 for random 3x3 kernels, too much in float32: use float64); eigenvalues below
    ``n eps lambda_max`` count as zero, so rank-deficient input gives a partial isometry.
    ``"newton_schulz"``:
    ``X <- 1.5 X - 0.5 X X^H X`` from ``X_0 = A / ||A||_F``; stops when the relative change
    ``||X_{k+1} - X_k||_F / ||X_k||_F`` of every matrix is below ``tol``.  It cannot diverge
    (singular values stay in ``[0, 1]``); zero singular values stay zero (a partial isometry), and
    singular values below about ``tol * ||A||_F`` may not have grown to 1 when it stops.
    ``return_info=True`` returns ``(X, info)`` with ``info = {"iterations", "converged",
    "residual"}``.
    """
    if not isinstance(A, torch.Tensor) or A.dim() < 2:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise UserError(f"A must be a tensor with at least 2 dims, got {shape}")
    if method not in POLAR_METHODS:
        raise UserError(f"method must be one of {POLAR_METHODS}, got {method!r}")
    if not torch.isfinite(A).all():
        raise UserError("A contains NaN or inf values")
    if method == "svd":
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        X, info = U @ Vh, {"iterations": 0, "converged": True, "residual": 0.0}
    elif method == "eigh":
        X, info = _polar_eigh(A), {"iterations": 0, "converged": True, "residual": 0.0}
    else:
        X, info = _newton_schulz(A, tol, max_iter)
    return (X, info) if return_info else X


def _polar_eigh(A):
    tall = A.shape[-2] >= A.shape[-1]
    G = A.mH @ A if tall else A @ A.mH
    lam, V = torch.linalg.eigh(G)
    eps = torch.finfo(lam.dtype).eps
    keep = lam > lam[..., -1:].clamp_min(0) * (G.shape[-1] * eps)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(),
                           torch.zeros_like(lam))
    S = (V * inv_sqrt[..., None, :].to(V.dtype)) @ V.mH        # G^{-1/2} on its range
    return A @ S if tall else S @ A


def _newton_schulz(A, tol, max_iter):
    if not (tol > 0):
        raise UserError(f"tol must be positive, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise UserError(f"max_iter must be a positive int, got {max_iter!r}")
    scale = torch.linalg.matrix_norm(A).clamp_min(torch.finfo(A.real.dtype).tiny)
    X = A / scale[..., None, None]
    wide = A.shape[-2] < A.shape[-1]
    residual, converged, it = float("inf"), False, 0
    for it in range(1, max_iter + 1):
        XXX = (X @ X.mH) @ X if wide else X @ (X.mH @ X)     # the smaller Gram
        X_new = 1.5 * X - 0.5 * XXX
        change = torch.linalg.matrix_norm(X_new - X) / torch.linalg.matrix_norm(X).clamp_min(1e-30)
        X = X_new
        residual = float(change.max()) if change.numel() else 0.0
        if residual <= tol:
            converged = True
            break
    return X, {"iterations": it, "converged": converged, "residual": residual}



def symbol_polar(symbol, input_size, stride=1, *, method="svd"):
    """Polar factor of every matrix of a half-spectrum ``symbol (mh, mw // 2 + 1, ..., p, q)``
    (``procres.spectral.symbol.polyphase_symbol``), computed once per conjugate pair: the self-conjugate
    frequencies are real matrices, the mirrored half of columns ``v in {0, mw/2}`` is filled by
    conjugation, so the result is again the half spectrum of a real kernel."""
    size, stride = size_pair(input_size, "input_size"), size_pair(stride, "stride")
    grid = check_divisible(size, stride)
    real, pair, mirror, source = frequency_classes(grid, symbol.device)
    flat = symbol.flatten(0, 1)
    out = torch.empty_like(flat)
    out[pair] = polar(flat[pair], method=method)
    out[real] = polar(flat[real].real, method=method).to(out.dtype)
    out[mirror] = out[source].conj()
    return out.reshape(symbol.shape)

