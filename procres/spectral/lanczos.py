"""Lanczos: extreme eigenvalues of a symmetric positive semi-definite operator given as a matvec.

One implementation serves the Jacobian spectra (:mod:`procres.diagnostics.jacobian`) and the conv operator
extremes (:mod:`procres.spectral`).

The Ritz values of the Krylov space approximate the extreme eigenvalues.  Every Lanczos vector is
kept and, by default, re-orthogonalised twice (classical Gram-Schmidt), so after ``dim`` iterations
the result is exact up to rounding; memory is ``iterations x dim`` numbers, held in blocks of 64
vectors.  With ``reorthogonalise=False`` only the three-term recurrence orthogonalises: an
iteration then costs one ``op`` instead of one ``op`` plus ``4 j dim`` multiply-adds (3-4x less
on a conv Gram of 200k unknowns at 100 iterations).  Rounding then makes the basis lose
orthogonality as soon as a Ritz value converges (Paige 1976), which shows as spurious extra copies
of converged values, not as wrong values: the largest value is right when its residual says so,
the multiplicities and the bottom of the spectrum are not, and ``dim`` iterations no longer mean
an exact result.  ``top_vector=True`` also returns the unit Ritz vector of the largest Ritz value.
A Ritz value theta is accepted when its residual ``|beta_j s_j|`` is at most ``tol * theta_max``
(``relative="max"``) or ``tol * theta`` (``relative="value"``, the relative accuracy a smallest
eigenvalue needs); then some eigenvalue lies within that residual of theta (usually far closer:
the error is about ``residual**2 / gap``).  Largest Ritz values are lower bounds of the largest
eigenvalues and smallest Ritz values upper bounds of the smallest (Courant-Fischer), converged or
not.

Repeated eigenvalues: one Krylov space holds one copy of each eigenvalue, so when it becomes
invariant (``beta ~ 0``) the iteration restarts from a random vector orthogonal to the basis, and
it does not stop before ``k`` such blocks have ended: each eigenvalue then appears
``min(multiplicity, k)`` times, enough for the ``k`` extremes.  When the tolerance is met before a
block becomes invariant, a repeated value can still be counted fewer times than it occurs
(``max_iter = dim``, the full Krylov space, is exact).

Null space: with ``zero_tol > 0``, Ritz values at most ``zero_tol * theta_max`` count as the null
space and are skipped when looking for the smallest; start in the operator's range (e.g.
``op(random)``) so that the Krylov space stays there up to rounding.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from procres.spectral.threads import one_thread

__all__ = ["LanczosResult", "lanczos"]

_BLOCK = 64


class LanczosResult(NamedTuple):
    """``values``: all Ritz values, ascending (float64, CPU); ``residuals``: ``|beta s_j|`` for
    each; ``wanted``: boolean mask of the values the tolerance was checked on; ``iterations``;
    ``converged``: whether every wanted value met the tolerance (or the space was exhausted);
    ``vector``: the unit Ritz vector of the largest value when asked for (``top_vector``), else None."""

    values: Tensor
    residuals: Tensor
    wanted: Tensor
    iterations: int
    converged: bool
    vector: Tensor | None = None


class _Basis:
    """Orthonormal Lanczos vectors, stored in blocks so that nothing is re-stacked."""

    def __init__(self, dim: int, dtype, device):
        self.dim, self.dtype, self.device = dim, dtype, device
        self.blocks: list[Tensor] = []
        self.count = 0

    def append(self, q: Tensor) -> None:
        if self.count % _BLOCK == 0:
            self.blocks.append(torch.empty(_BLOCK, self.dim, dtype=self.dtype, device=self.device))
        self.blocks[-1][self.count % _BLOCK] = q
        self.count += 1

    def last(self, back: int = 0) -> Tensor:
        j = self.count - 1 - back
        return self.blocks[j // _BLOCK][j % _BLOCK]

    def unit_combination(self, coefficients: Tensor) -> Tensor:
        """``sum_i coefficients[i] q_i`` over the stored vectors, normalised (a Ritz vector)."""
        c = coefficients.to(self.dtype).to(self.device)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for i, Q in enumerate(self.blocks):
            part = c[i * _BLOCK:(i + 1) * _BLOCK]
            out += Q[:len(part)].T @ part
        return out / out.norm()

    def orthogonalise(self, w: Tensor) -> Tensor:
        for _ in range(2):                                   # classical Gram-Schmidt, twice
            for i, Q in enumerate(self.blocks):
                Q = Q if i + 1 < len(self.blocks) else Q[: (self.count - 1) % _BLOCK + 1]
                w = w - Q.T @ (Q @ w)
        return w


def _wanted(theta: Tensor, k: int, which: str, zero_tol: float) -> Tensor:
    wanted = torch.zeros_like(theta, dtype=torch.bool)
    if which in ("both", "largest"):
        wanted[-k:] = True
    if which in ("both", "smallest"):
        top = max(float(theta[-1]), 0.0)
        nonzero = (theta > zero_tol * top).nonzero().flatten() if zero_tol > 0 else torch.arange(len(theta))
        wanted[nonzero[:k]] = True
    return wanted


def lanczos(op: Callable[[Tensor], Tensor], dim: int, *, k: int = 1, which: str = "largest",
            tol: float = 1e-8, max_iter: int | None = None, start: Tensor | None = None,
            zero_tol: float = 0.0, relative: str = "max", give_up_after: int | None = None,
            reorthogonalise: bool = True, top_vector: bool = False, dtype=torch.float64, device=None,
            seed: int = 0) -> LanczosResult:
    """Ritz values of the symmetric PSD operator ``op`` on ``R^dim`` (see the module docstring).

    ``which`` in {"largest", "smallest", "both"}: the ``k`` values the tolerance applies to;
    ``max_iter`` (default ``dim``) bounds the Krylov dimension; ``start``: the first vector
    (default: random from ``seed``, as are restarts); ``tol`` is raised to 10 eps of ``dtype``.
    ``give_up_after``: after that many iterations, stop (not converged) as soon as a wanted Ritz
    value's residual exceeds the value itself (no digit is right yet: the bottom of a large,
    near-singular spectrum, where full convergence takes about ``dim`` iterations).
    ``reorthogonalise``, ``top_vector``: see the module docstring.
    """
    gen = torch.Generator().manual_seed(seed)

    def random_vector() -> Tensor:
        return torch.randn(dim, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    def result(iterations: int, converged: bool) -> LanczosResult:
        vector = basis.unit_combination(vecs[:, -1]) if top_vector and vecs is not None else None
        return LanczosResult(theta, resid, wanted, iterations, converged, vector)

    steps = min(dim, max_iter or dim)
    tol = max(tol, 10 * torch.finfo(dtype).eps)
    basis = _Basis(dim, dtype, device)
    alphas: list[float] = []
    betas: list[float] = []  # off-diagonal: betas[j] couples vectors j and j+1
    q = (random_vector() if start is None else start.detach().to(device=device, dtype=dtype).flatten())
    q = q / q.norm()
    theta = resid = wanted = torch.zeros(0, dtype=torch.float64)
    vecs = None
    scale = 0.0
    block_start, blocks_done = 0, 0  # first vector of the current Krylov block; ended blocks
    for j in range(steps):
        basis.append(q)
        w = op(q)
        alpha = torch.dot(q, w)
        w = w - alpha * q
        if j > 0:
            w = w - betas[-1] * basis.last(1)
        if reorthogonalise:
            w = basis.orthogonalise(w)
        beta = w.norm()
        alpha, beta = float(alpha), float(beta)  # one sync per iteration; cheap next to op()
        alphas.append(alpha)
        scale = max(scale, abs(alpha) + beta)
        last, full = j + 1 == steps, j + 1 == dim and reorthogonalise  # without it, dim steps prove nothing
        invariant = beta <= 1e-12 * scale
        blocks_done += invariant
        must_restart = invariant and blocks_done < k and not full
        if j + 1 >= k and not must_restart and (j < 32 or (j + 1) % 4 == 0 or last or invariant):
            t = _tridiagonal(alphas, betas)
            with one_thread():                                  # see procres.spectral.threads
                theta, vecs = torch.linalg.eigh(t)
            resid = (beta * vecs[-1]).abs()
            wanted = _wanted(theta, k, which, zero_tol)
            top = theta[-1].clamp_min(1e-300)
            bound = tol * (top if relative == "max" else theta.abs().clamp_min(1e-300 * top))
            ok = resid <= bound
            done = bool(ok[wanted].all()) and bool(wanted.any())
            if done and block_start > 0 and not invariant:  # the restarted block's own extremes
                block_resid = (beta * torch.linalg.eigh(t[block_start:, block_start:])[1][-1]).abs()
                ends = [-1] * (which != "smallest") + [0] * (which != "largest")
                done = bool((block_resid[ends] <= tol * top).all())
            if done or full or invariant:
                return result(j + 1, True)
            if give_up_after is not None and j + 1 >= give_up_after and \
                    bool((resid[wanted] > theta[wanted].abs()).any()):
                return result(j + 1, False)
        if last:
            break
        if invariant:  # restart orthogonally
            w = basis.orthogonalise(random_vector())
            beta = 0.0
            block_start = j + 1
        q = w / w.norm()
        betas.append(beta)
    return result(steps, False)


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t
