"""Tests for procres.diagnostics.jacobian: Lanczos vs dense SVD, and the norm-ratio bounds.

References are independent: the Lanczos spectra against the SVD of
``torch.autograd.functional.jacobian`` (or numpy's SVD of an explicit matrix), the ratio in
check_bounds against the NormRecorder, all in float64 on tiny inputs.
"""

import numpy as np
import pytest
import torch
from torch import nn

from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.jacobian import check_bounds, jacobian_singular_values
from dense_operators import dense_singular_values
from user_models import Residual

# torch's own first use of forward-mode AD (torch.func.jvp) scripts decompositions with torch.jit
F64 = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("single_threaded")]


# ---------------------------------------------------------------- Jacobian spectra
@pytest.mark.parametrize("case", ["square", "wide", "tall"])
def test_lanczos_matches_dense_svd(case):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    if case == "square":  # a residual unit, J is 150 x 150
        fn = Residual(3, 0.5).to(F64)
    elif case == "wide":  # input to 10 outputs: J J^T is the smaller Gram matrix
        fn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(0), nn.Linear(200, 10)).to(F64)
    else:  # 1x1 conv 3 -> 7 channels: more outputs than inputs
        fn = nn.Sequential(nn.Conv2d(3, 7, 1), nn.Tanh()).to(F64)
    s = dense_singular_values(fn, x)
    k = 4
    spec = jacobian_singular_values(fn, x, k=k)
    assert spec.converged
    torch.testing.assert_close(spec.largest, s[:k], rtol=1e-6, atol=0)
    torch.testing.assert_close(spec.smallest, s[-k:].flip(0), rtol=1e-6, atol=0)
    dense = jacobian_singular_values(fn, x, k=k, method="dense")
    torch.testing.assert_close(dense.largest, s[:k], rtol=1e-10, atol=0)
    torch.testing.assert_close(dense.smallest, s[-k:].flip(0), rtol=1e-10, atol=0)


def test_lanczos_repeated_singular_values_and_which():
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=F64))
    fn = lambda z: 3.0 * z @ q.T  # noqa: E731  all singular values 3
    spec = jacobian_singular_values(fn, torch.randn(2, 12, dtype=F64), k=5, which="largest")
    torch.testing.assert_close(spec.largest, torch.full((5,), 3.0, dtype=F64))
    assert spec.smallest is None
    spec = jacobian_singular_values(lambda z: 3.0 * z @ q.T.float(), torch.randn(2, 12), k=2, which="smallest")
    assert spec.largest is None and spec.smallest.dtype == torch.float32
    torch.testing.assert_close(spec.smallest, torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="which"):
        jacobian_singular_values(fn, torch.randn(2, 12), which="middle")
    with pytest.raises(ValueError, match="method"):
        jacobian_singular_values(fn, torch.randn(2, 12), method="power")


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_multiplicities_beyond_one_krylov_block(which):
    # singular values {2 x 10, 1 x 10}: one Krylov block sees 2 distinct values, and a previous
    # version stopped there, reporting [2, 2, 1] as the 3 largest; with k = 3 it must restart
    # until every eigenvalue has appeared min(multiplicity, 3) times.  Plus a rank-4 map whose
    # 3 smallest singular values are 0 (a previous version gave 0 and two non-zero values).
    g = torch.Generator().manual_seed(3)
    q1, _ = torch.linalg.qr(torch.randn(20, 20, dtype=F64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(20, 20, dtype=F64, generator=g))
    low = torch.randn(12, 4, dtype=F64, generator=g) @ torch.randn(4, 16, dtype=F64, generator=g)
    for M in (q1 @ torch.diag(torch.tensor([2.0] * 10 + [1.0] * 10, dtype=F64)) @ q2, low):
        ref = torch.from_numpy(np.linalg.svd(M.numpy(), compute_uv=False))
        spec = jacobian_singular_values(lambda z, M=M: M @ z, torch.randn(M.shape[1], dtype=F64),
                                        k=3, which=which, tol=1e-12)
        assert spec.converged
        got, want = (spec.largest, ref[:3]) if which == "largest" else (spec.smallest, ref[-3:].flip(0))
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * float(ref[0]))


# ---------------------------------------------------------------- bounds
def test_scaled_branch_ratio_tends_to_one_and_bounds_hold():
    torch.manual_seed(2)
    x = torch.randn(2, 2, 5, 5, dtype=F64)
    g = torch.randn(2, 2, 5, 5, dtype=F64)
    unit = Residual(2).to(F64)
    deviations, deltas = [], []
    for eps in (1.0, 0.1, 0.01, 0.001):
        unit.eps = eps
        with NormRecorder([unit]) as rec:
            (unit(x.clone().requires_grad_(True)) * g).sum().backward()
        b = check_bounds(unit, x, g)
        assert b["r"] == pytest.approx(rec.summary()["ratio"][0], rel=1e-10)
        assert b["holds"] and b["holds_delta"]
        assert b["sigma_min"] <= b["r"] <= b["sigma_max"]
        assert 1 - b["delta"] <= b["r"] <= 1 + b["delta"]
        deviations.append(abs(b["r"] - 1))
        deltas.append(b["delta"])
    assert all(a > b for a, b in zip(deviations, deviations[1:]))
    assert deviations[-1] < 1e-3
    # delta = eps * ||J_F||: exactly linear in eps
    assert deltas[1] == pytest.approx(deltas[0] * 0.1, rel=1e-8)
    assert deltas[3] == pytest.approx(deltas[0] * 0.001, rel=1e-8)


def test_check_bounds_on_plain_and_growing_units():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    grow = nn.Conv2d(3, 6, 1).to(F64)  # more outputs than inputs: J^T has a null space
    b = check_bounds(grow, x, torch.randn(2, 6, 4, 4, dtype=F64))
    assert b["lower"] == 0.0 and b["holds"] and b["delta"] is None
    plain = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh()).to(F64).train()
    running = plain[1].running_mean.clone()
    b = check_bounds(plain, x, torch.randn(2, 3, 4, 4, dtype=F64), method="lanczos", max_iter=96)
    assert b["holds"] and b["holds_delta"] and b["method"] == "lanczos"
    torch.testing.assert_close(plain[1].running_mean, running)  # the model is not changed
    with pytest.raises(ValueError, match="shape"):
        check_bounds(plain, x, torch.randn(2, 5, 4, 4, dtype=F64))


def test_check_bounds_on_a_resnet_unit():
    import procres as models  # the zoo factories: procres.resnet, procres.procresnet
    model = models.resnet(20, in_channels=1, image_size=8).to(F64).eval()
    unit = model.blocks[1]
    x = torch.relu(torch.randn(1, 16, 6, 6, dtype=F64))
    b = check_bounds(unit, x, torch.randn(1, 16, 6, 6, dtype=F64))
    assert b["method"] == "dense" and b["holds"] and b["holds_delta"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, x: jacobian_singular_values(f, x, k=True), "k must.*True"),
        (lambda f, x: jacobian_singular_values(f, x, max_iter=2.5), "max_iter.*2.5"),
        (lambda f, x: jacobian_singular_values(f, x, tol=-1.0), "tol.*-1.0"),
        (lambda f, x: jacobian_singular_values(f, x, tol=float("nan")), "tol.*nan"),
        (lambda f, x: jacobian_singular_values(f, [1.0, 2.0]), "x must.*list"),
        (lambda f, x: jacobian_singular_values(f, torch.arange(3)), "x must.*int64"),
        (lambda f, x: check_bounds(f, x, torch.zeros_like(x)), "grad_out is all zeros"),
        (lambda f, x: check_bounds(f, x, None), "grad_out must.*NoneType"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    x = torch.randn(4, dtype=F64)
    with pytest.raises(ValueError, match=match):
        call(lambda z: 2 * z, x)
