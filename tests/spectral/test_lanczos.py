"""procres.spectral.lanczos against numpy's eigvalsh of explicit symmetric matrices (float64, tiny)."""

import numpy as np
import pytest
import torch

from procres.spectral.lanczos import lanczos

pytestmark = pytest.mark.usefixtures("single_threaded")


def psd(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return torch.from_numpy(q @ np.diag(eigenvalues) @ q.T)


def test_extremes_of_a_spd_matrix_to_relative_accuracy():
    ev = np.concatenate([np.geomspace(1e-6, 1e-3, 5), np.linspace(0.5, 3.0, 55)])
    A = psd(ev)
    top = lanczos(lambda v: A @ v, 60, which="largest", tol=1e-12)
    assert top.converged and float(top.values[-1]) == pytest.approx(ev.max(), rel=1e-10)
    low = lanczos(lambda v: A @ v, 60, which="smallest", tol=1e-10, relative="value")
    assert low.converged and float(low.values[0]) == pytest.approx(ev.min(), rel=1e-6)
    assert bool(low.wanted[0]) and not bool(low.wanted[-1])


def test_null_space_is_skipped_from_a_start_in_the_range():
    ev = np.array([0.0] * 10 + [0.2, 0.7, 1.0, 2.0, 5.0])       # rank 5
    A = psd(ev, seed=1)
    start = A @ torch.randn(15, dtype=torch.float64)
    res = lanczos(lambda v: A @ v, 15, which="smallest", start=start, zero_tol=1e-10, tol=1e-12,
                  relative="value")
    first = int(res.wanted.nonzero()[0])
    assert float(res.values[first]) == pytest.approx(0.2, rel=1e-10)


def test_ritz_values_bound_the_extremes_before_convergence_and_give_up_stops():
    ev = np.linspace(1e-4, 1.0, 400)                            # a dense spectrum: slow at the bottom
    A = psd(ev, seed=2)
    res = lanczos(lambda v: A @ v, 400, which="smallest", tol=1e-12, relative="value", max_iter=200,
                  give_up_after=16)
    assert not res.converged and res.iterations < 200
    assert float(res.values[0]) >= ev.min() and float(res.values[-1]) <= ev.max()
    assert res.residuals[0] > res.values[0]                     # why it gave up: no right digit yet


def test_without_reorthogonalisation_the_top_value_and_its_vector_are_right():
    ev = np.concatenate([np.linspace(0.0, 1.0, 380), [1.002, 1.004, 1.01]])   # a clustered top
    A = psd(ev, seed=3)
    plain = lanczos(lambda v: A @ v, 383, tol=1e-9, relative="value", reorthogonalise=False, top_vector=True)
    assert plain.converged and float(plain.values[-1]) == pytest.approx(1.01, rel=1e-12)
    y = plain.vector
    assert float(y.norm()) == pytest.approx(1.0, rel=1e-12)
    assert float((A @ y - 1.01 * y).norm()) <= 1e-8                           # the top eigenvector
    full = lanczos(lambda v: A @ v, 383, tol=1e-9, relative="value")
    assert full.vector is None and float(full.values[-1]) == pytest.approx(1.01, rel=1e-12)
