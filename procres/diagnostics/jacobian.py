"""Jacobian spectra of units and the norm-ratio bounds they give (docs/theory.md section 1).

A unit l maps x_l to x_{l+1} with Jacobian J at x_l; back-propagation gives
dE/dx_l = J^T dE/dx_{l+1}, so its gradient-norm ratio r_l = ||dE/dx_l|| / ||dE/dx_{l+1}|| obeys
sigma_min(J) <= r_l <= sigma_max(J) whenever J^T is injective (output size <= input size), and,
for units whose input and output have the same shape (identity skip, J = I + J_F),
1 - delta <= r_l <= 1 + delta with delta = ||J - I||_2 = ||J_F||_2 (triangle inequality).

- :func:`jacobian_singular_values`  extreme singular values of the Jacobian of any function at
  a point by Lanczos on the smaller Gram matrix (J^T J or J J^T), using ``torch.func.jvp`` and
  ``torch.func.vjp`` (J is never formed), or densely for small problems.
- :func:`check_bounds`  r, sigma_min(J), sigma_max(J), delta = ||J - I||_2 for one unit and one
  upstream gradient, and whether the bounds above hold.

The measured ratios during training come from :class:`procres.diagnostics.recorder.NormRecorder`; these
names are also importable from :mod:`procres.diagnostics`.

Lanczos (:mod:`procres.spectral.lanczos`, shared with the conv spectra): the largest singular values
converge in a few dozen iterations; the smallest converge slowly (their eigenvalues sigma^2 are
clustered near 0 relative to sigma_max^2), often needing a large fraction of ``dim``.  A Ritz
value is accepted when its residual is at most ``tol * sigma_max**2``, so the absolute eigenvalue
error is at most that (usually far smaller); a warning is raised when ``max_iter`` ends the
iteration first.  Repeated singular values come out with their multiplicity up to ``k`` (the
iteration restarts orthogonally when a Krylov block becomes invariant); ``max_iter = dim`` is
exact.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from procres.errors import UserError
from procres.spectral.lanczos import lanczos

__all__ = ["JacobianSpectrum", "jacobian_singular_values", "check_bounds"]


class JacobianSpectrum(NamedTuple):
    """Extreme singular values of a Jacobian J (m x n, m = output size, n = input size).

    ``largest``: the k largest, descending; ``smallest``: the k smallest of the min(m, n)
    singular values, ascending (``None`` when not asked for); ``iterations``: Lanczos steps
    (0 for dense); ``converged``: whether every requested value met the tolerance.
    """

    largest: Tensor | None
    smallest: Tensor | None
    iterations: int
    converged: bool


def _check_tensor(t, name: str) -> None:
    if not (isinstance(t, Tensor) and t.is_floating_point() and t.numel() > 0):
        got = f"dtype {t.dtype}, shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise UserError(f"{name} must be a non-empty floating-point tensor, got {got}")


class _FrozenBatchNormStats:
    """Within the block, BatchNorm layers in training mode use batch statistics without
    updating their running statistics (``torch.func`` transforms refuse that in-place update,
    and a diagnostic must not change the model)."""

    def __init__(self, fn):
        mods = fn.modules() if isinstance(fn, nn.Module) else ()
        self.bns = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.training and m.track_running_stats]

    def __enter__(self):
        for m in self.bns:
            m.track_running_stats = False

    def __exit__(self, *exc):
        for m in self.bns:
            m.track_running_stats = True
        return False


def jacobian_singular_values(fn: Callable[[Tensor], Tensor], x: Tensor, *, k: int = 6, which: str = "both",
                             method: str = "lanczos", tol: float = 1e-8, max_iter: int | None = None,
                             seed: int = 0) -> JacobianSpectrum:
    """The k largest and/or smallest singular values of the Jacobian of ``fn`` at ``x``.

    ``fn`` maps a tensor shaped like ``x`` (any shape, the batch included: J is the Jacobian of
    the whole batched map) to one tensor, e.g. a unit in eval mode or a net from input to logits.
    It is evaluated many times, so it must be deterministic (no dropout in training mode);
    BatchNorm in training mode uses batch statistics and its running statistics are not updated.
    ``which`` in {"both", "largest", "smallest"}.  ``method="lanczos"`` runs Lanczos with full
    reorthogonalisation on the smaller Gram matrix, J^T J (n x n) if m >= n else J J^T (m x m),
    applied as ``vjp(jvp(v))`` or ``jvp(vjp(u))``: J is never formed.  ``max_iter`` (default
    ``min(dim, 300)``, dim = min(m, n)) bounds the Krylov dimension; see the module docstring
    for convergence.  ``tol`` is relative to sigma_max**2 and raised to 10 * eps of the dtype.
    ``method="dense"`` builds J with ``torch.func.jacrev`` and takes its SVD (small inputs only).
    k is clamped to min(m, n).
    """
    if which not in ("both", "largest", "smallest"):
        raise UserError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    if method not in ("lanczos", "dense"):
        raise UserError(f"method must be 'lanczos' or 'dense', got {method!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if max_iter is not None and (not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1):
        raise UserError(f"max_iter must be a positive integer or None, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise UserError(f"tol must be a positive number, got {tol!r}")
    _check_tensor(x, "x")
    x = x.detach()
    # Outer no_grad: the func transforms ignore it, but parameters are not traced by autograd.
    with _FrozenBatchNormStats(fn), torch.no_grad():
        out, vjp_fn = torch.func.vjp(fn, x)
        if not isinstance(out, Tensor):
            raise UserError(f"fn must return one tensor, got {type(out).__name__}")
        m, n = out.numel(), x.numel()
        k = min(k, m, n)
        if method == "dense":
            jac = torch.func.jacrev(fn)(x).reshape(m, n)
            s = torch.linalg.svdvals(jac)
            iterations, converged = 0, True
        else:
            def jv(v: Tensor) -> Tensor:
                return torch.func.jvp(fn, (x,), (v.view_as(x),))[1].reshape(-1)

            def jtv(u: Tensor) -> Tensor:
                return vjp_fn(u.view_as(out).to(out.dtype))[0].reshape(-1)

            gram, dim = ((lambda v: jtv(jv(v))), n) if m >= n else ((lambda u: jv(jtv(u))), m)
            steps = min(dim, max(k, 300 if max_iter is None else max_iter))
            ritz = lanczos(gram, dim, k=k, which=which, tol=tol, max_iter=steps, dtype=x.dtype,
                           device=x.device, seed=seed)
            theta, iterations, converged = ritz.values, ritz.iterations, ritz.converged
            s = theta.clamp_min(0).sqrt().flip(0).to(device=x.device, dtype=x.dtype)  # descending
    if not converged:
        warnings.warn(f"jacobian_singular_values: Lanczos did not converge in {iterations} iterations "
                      f"(tol={tol:g}); raise max_iter (at most {min(m, n)} = full Krylov space)", stacklevel=2)
    largest = s[:k] if which in ("both", "largest") else None
    smallest = s[-k:].flip(0) if which in ("both", "smallest") else None
    return JacobianSpectrum(largest, smallest, iterations, converged)


def check_bounds(unit: Callable[[Tensor], Tensor], x: Tensor, grad_out: Tensor, *, method: str = "auto",
                 rtol: float = 1e-6, tol: float = 1e-8, max_iter: int | None = None) -> dict:
    """The gradient-norm ratio of one unit against the bounds given by its Jacobian J at ``x``.

    ``x``: the unit's input (batch included); ``grad_out``: an upstream gradient dE/dx_{l+1},
    shaped like ``unit(x)``.  Returns a dict of floats / bools:

    - ``r`` = ||J^T g|| / ||g|| (g = grad_out), from one backward pass;
    - ``sigma_min``, ``sigma_max``: extreme singular values of J (min(m, n) of them);
    - ``lower``: sigma_min when J^T is injective (output size m <= input size n), else 0;
    - ``holds``: lower <= r <= sigma_max, within ``rtol * sigma_max``;
    - ``delta`` = ||J - I||_2 (the Jacobian of x -> unit(x) - x) and ``holds_delta``:
      1 - delta <= r <= 1 + delta within ``rtol``; both ``None`` unless input and output
      shapes match (identity-skip units; for those J - I is the branch Jacobian J_F);
    - ``method``: "dense" or "lanczos" (``method="auto"``: dense when m * n <= 2**20).

    The unit runs in its current mode; BatchNorm in training mode uses batch statistics
    (J then couples the samples) and its running statistics are left untouched.
    """
    if method not in ("auto", "dense", "lanczos"):
        raise UserError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    _check_tensor(x, "x")
    _check_tensor(grad_out, "grad_out")
    if not bool(grad_out.detach().ne(0).any()):
        raise UserError("grad_out is all zeros: the ratio ||J^T g|| / ||g|| is undefined")
    x, g = x.detach(), grad_out.detach()
    with _FrozenBatchNormStats(unit), torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        out = unit(xr)
        if out.shape != g.shape:
            raise UserError(f"grad_out has shape {tuple(g.shape)} but the unit's output has shape {tuple(out.shape)}")
        (gx,) = torch.autograd.grad(out, xr, g)
    m, n = out.numel(), x.numel()
    if method == "auto":
        method = "dense" if m * n <= 2**20 else "lanczos"
    r = float(gx.norm() / g.norm())
    kw = dict(k=1, method=method, tol=tol, max_iter=max_iter)
    spec = jacobian_singular_values(unit, x, which="both", **kw)
    sigma_max, sigma_min = float(spec.largest[0]), float(spec.smallest[0])
    lower = sigma_min if m <= n else 0.0
    slack = rtol * sigma_max
    result = dict(r=r, sigma_min=sigma_min, sigma_max=sigma_max, lower=lower,
                  holds=bool(lower - slack <= r <= sigma_max + slack), delta=None, holds_delta=None,
                  method=method)
    if out.shape == x.shape:
        with _FrozenBatchNormStats(unit):  # the lambda would hide the module from the helper
            branch = jacobian_singular_values(lambda z: unit(z) - z, x, which="largest", **kw)
        delta = float(branch.largest[0])
        result.update(delta=delta, holds_delta=bool(1 - delta - rtol <= r <= 1 + delta + rtol))
    return result
