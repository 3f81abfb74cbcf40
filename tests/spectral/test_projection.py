"""procres.spectral.polar and .projection: polar factor, the Procrustes projection of convolutions.

References are independent: numpy's SVD for the polar factor, the dense operator written from
the cross-correlation index formula (tests/helpers/dense_operators.py) for post-projection spectra.
"""

import numpy as np
import pytest
import torch
from torch import nn

from procres.spectral.polar import polar, symbol_polar
from procres.spectral.projection import project_conv_, project_kernel, ProjectionReport
from procres.spectral.faithful import faithful_step as _faithful_step
from procres.spectral.spectra import conv_singular_values
from procres.spectral.symbol import polyphase_symbol
from dense_operators import index_formula_matrix


pytestmark = pytest.mark.usefixtures("single_threaded")


def numpy_polar(A):
    U, _, Vh = np.linalg.svd(A, full_matrices=False)
    return U @ Vh


# ----------------------------------------------------------------------------- polar
@pytest.mark.parametrize("shape", [(5, 7, 4), (5, 4, 7), (3, 6, 6)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_polar_svd_and_newton_schulz_match_numpy(shape, dtype):
    A = torch.randn(*shape, dtype=dtype)
    expected = numpy_polar(A.numpy())
    np.testing.assert_allclose(polar(A).numpy(), expected, atol=1e-12)
    X, info = polar(A, method="newton_schulz", tol=1e-13, max_iter=200, return_info=True)
    assert info["converged"] and info["iterations"] < 200
    np.testing.assert_allclose(X.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(polar(A, method="eigh").numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("method", ["newton_schulz", "eigh"])
def test_rank_deficient_input_gives_a_partial_isometry(method):
    B = torch.randn(4, 6, 2, dtype=torch.complex128)
    A = B @ torch.randn(4, 2, 5, dtype=torch.complex128)            # rank 2, 6 x 5
    X, info = polar(A, method=method, tol=1e-12, return_info=True)
    assert info["converged"] and torch.isfinite(X).all()
    sv = torch.linalg.svdvals(X)
    torch.testing.assert_close(sv[:, :2], torch.ones(4, 2, dtype=torch.float64))
    assert float(sv[:, 2:].max()) < 1e-10                         # a partial isometry
    torch.testing.assert_close(X @ X.mH @ A, A)                     # same range as A


def test_newton_schulz_reports_non_convergence():
    A = torch.diag(torch.tensor([1.0, 1e-3], dtype=torch.float64))
    _, info = polar(A, method="newton_schulz", max_iter=3, return_info=True)
    assert not info["converged"] and info["iterations"] == 3 and info["residual"] > 1e-6


@pytest.mark.parametrize("grid", [(4, 4), (5, 6), (3, 4)])
def test_symbol_polar_matches_polar_of_the_full_spectrum(grid):
    # one polar factor per conjugate pair, then mirrored: equal to the polar of every frequency
    w = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    half = symbol_polar(polyphase_symbol(w, grid), grid)
    full = polar(torch.fft.fft2(w, s=grid).permute(2, 3, 0, 1))
    torch.testing.assert_close(half, full[:, : grid[1] // 2 + 1])


# ----------------------------------------------------------------------------- projection
def nonzero_spectrum(weight, n, stride):
    """Singular values of the dense operator, split into (non-zero, zero)."""
    sv = np.linalg.svd(index_formula_matrix(weight.detach(), (n, n), stride, "circular"),
                       compute_uv=False)
    return sv[sv > 1e-8 * sv[0]], sv[sv <= 1e-8 * sv[0]]


def test_transition_1x1_stride2_is_exact_after_one_projection():
    conv = nn.Conv2d(64, 128, 1, stride=2, bias=False).double()
    report = project_conv_(conv, 4)
    assert isinstance(report, ProjectionReport)
    assert report.target == pytest.approx(np.sqrt(2)) and report.stride == (2, 2)
    assert report.max_rel_error < 1e-12
    nonzero, zero = nonzero_spectrum(conv.weight, 4, 2)             # 512 x 1024 dense operator
    assert nonzero.size == 64 * 4 and zero.size == 512 - 64 * 4
    np.testing.assert_allclose(nonzero, np.sqrt(2), rtol=1e-12)
    # and at the real grid (input 32, FFT grid 16): every non-zero value of 32768 is sqrt(2)
    sv = conv_singular_values(conv.weight.detach(), 32, stride=2)
    np.testing.assert_allclose(sv[: 64 * 256].numpy(), np.sqrt(2), rtol=1e-12)
    assert float(sv[64 * 256:].abs().max()) == 0


def test_report_agrees_with_dense_operator():
    weight = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    report = project_conv_(weight, 6, stride=2, iterations=3)
    nonzero, _ = nonzero_spectrum(weight, 6, 2)
    assert report.sigma_max == pytest.approx(nonzero[0], rel=1e-10)
    assert report.sigma_min == pytest.approx(nonzero[-1], rel=1e-10)
    assert report.max_rel_error == pytest.approx(
        np.abs(nonzero / report.target - 1).max(), rel=1e-10)
    assert report.as_dict()["history"] == report.history and len(report.history) == 4


@pytest.mark.parametrize("kernel", [1, 2])
def test_report_of_frequency_independent_kernels_agrees_with_dense_operator(kernel):
    # k <= stride: one decomposition stands for every frequency (the report's shortcut)
    weight = torch.randn(6, 3, kernel, kernel, dtype=torch.float64)
    report = project_conv_(weight, 4, stride=2, target=1.7)
    nonzero, _ = nonzero_spectrum(weight, 4, 2)
    assert report.sigma_max == pytest.approx(nonzero[0], rel=1e-10)
    assert report.sigma_min == pytest.approx(nonzero[-1], rel=1e-10)
    np.testing.assert_allclose(nonzero, 1.7, rtol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_3x3_converges_with_repeated_projection(stride):
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=False).double()
    report = project_conv_(conv, 8, iterations=40)
    history = report.history
    # target: sqrt(16 / 8) at stride 1; at stride 2 the polyphase rank is min(16, 4 * 8) = 16
    assert report.target == pytest.approx(np.sqrt(2) if stride == 1 else 1.0)
    assert history[1] < history[0]
    assert report.max_rel_error < 0.25 * history[1]               # keeps converging
    assert all(b <= a + 1e-9 for a, b in zip(history[1:], history[2:]))
    print(f"stride {stride}: max rel error {history[0]:.3f} before, {history[1]:.3f} after one, "
          f"{report.max_rel_error:.4f} after 40 projections")


def test_faithful_collapses_3x3_kernel_onto_one_corner_tap():
    # the authors' conv1 (3 -> 64, 3x3, grid 32), shrunk to 3 -> 16 on a 16 x 16 grid
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False).double()
    for _ in range(6):
        report = project_conv_(conv, 16, faithful=True)
    energy = conv.weight.detach().pow(2).sum((0, 1))
    share = energy / energy.sum()
    assert float(share[0, 0]) > 0.99
    assert report.faithful and report.target == pytest.approx(np.sqrt(16 / 3))
    # the exact projection keeps the energy spread over the taps
    exact = nn.Conv2d(3, 16, 3, padding=1, bias=False).double()
    for _ in range(6):
        project_conv_(exact, 16)
    energy = exact.weight.detach().pow(2).sum((0, 1))
    assert float(energy.max() / energy.sum()) < 0.5


def test_faithful_step_returns_the_conjugate_polar_factor():
    # a well-conditioned kernel (10 Newton-Schulz steps converge): the faithful step equals the
    # exact stride-1 step applied to the spatially flipped (mod grid) kernel
    torch.manual_seed(1)
    w = torch.zeros(4, 4, 3, 3, dtype=torch.float64)
    w[:, :, 0, 0] = torch.eye(4)
    w = w + 0.05 * torch.randn_like(w)
    grid = 8
    full = torch.zeros(4, 4, grid, grid, dtype=torch.float64)
    full[:, :, :3, :3] = w
    flipped = torch.roll(full.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))   # w[-x mod grid]
    A = torch.fft.fft2(flipped).permute(2, 3, 0, 1)
    expected = torch.fft.ifft2(polar(A).permute(2, 3, 0, 1)).real[..., :3, :3]
    torch.testing.assert_close(_faithful_step(w, (grid, grid), (1, 1), 1.0), expected,
                               atol=1e-6, rtol=0)


def authors_step_reference(w, grid, clip):
    """The released algorithm written out from its description (docs/theory.md section 4), float64:
    per-frequency matrix in their (C_in, C_out) layout, real embedding [[Re, Im], [-Im, Re]],
    inverse square root of the *full* Gram by 10 coupled Newton-Schulz steps, the Gram divided by
    its Frobenius norm only when that exceeds 1, top-left block minus i times top-right block."""
    A = np.fft.fft2(w.numpy(), s=grid).transpose(2, 3, 1, 0)          # (u, v, C_in, C_out)
    K = np.block([[A.real, A.imag], [-A.imag, A.real]])
    B = np.swapaxes(K, -1, -2) @ K
    norm = np.linalg.norm(B, axis=(-2, -1), keepdims=True)
    norm = np.where(norm > 1, norm, 1.0)
    Y, Z, eye = B / norm, np.broadcast_to(np.eye(B.shape[-1]), B.shape), np.eye(B.shape[-1])
    for _ in range(10):
        T = 0.5 * (3 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    P = clip * K @ (Z / np.sqrt(norm))
    m, n = A.shape[-2:]
    back = (P[..., :m, :n] - 1j * P[..., :m, n:]).transpose(3, 2, 0, 1)
    return np.fft.ifft2(back).real[..., : w.shape[-2], : w.shape[-1]]


@pytest.mark.parametrize("scale", [1.0, 0.02])
def test_faithful_step_matches_the_released_algorithm(scale):
    # scale 0.02: every frequency Gram has Frobenius norm < 1, which the authors leave unscaled
    # (a previous version always rescaled, 1e-2 away from their kernels there)
    g = torch.Generator().manual_seed(5)
    for shape, grid in (((8, 4, 1, 1), (4, 4)), ((6, 3, 3, 3), (8, 8))):
        w = scale * torch.randn(*shape, dtype=torch.float64, generator=g)
        clip = np.sqrt(shape[0] / shape[1])
        expected = authors_step_reference(w, grid, clip)
        np.testing.assert_allclose(_faithful_step(w, grid, (1, 1), clip).numpy(), expected,
                                   rtol=0, atol=1e-9 * np.abs(expected).max())


def test_faithful_is_harmless_for_1x1_kernels():
    q, _ = torch.linalg.qr(torch.randn(16, 8, dtype=torch.float64))
    w = (q * torch.linspace(1.0, 1.5, 8, dtype=torch.float64))[:, :, None, None]
    exact, faithful = w.clone(), w.clone()
    project_conv_(exact, 8, stride=2)
    project_conv_(faithful, 8, stride=2, faithful=True)
    torch.testing.assert_close(faithful, exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["newton_schulz", "eigh"])
def test_svd_and_other_polar_methods_give_the_same_projection(method):
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    project_conv_(w, 8, iterations=3)                          # better conditioned start
    a, b = w.clone(), w.clone()
    ra = project_conv_(a, 8)
    rb = project_conv_(b, 8, method=method)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert ra.max_rel_error == pytest.approx(rb.max_rel_error, abs=1e-5)


def test_project_kernel_is_pure_and_equals_one_in_place_step():
    w = torch.randn(6, 3, 3, 3)
    before = w.clone()
    new = project_kernel(w, 8, stride=2)
    assert torch.equal(w, before) and new.dtype == torch.float32 and new.shape == w.shape
    project_conv_(w, 8, stride=2)
    torch.testing.assert_close(new, w)


def test_projection_in_place_keeps_dtype_device_and_parameter():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    param, ptr = conv.weight, conv.weight.data_ptr()
    report = project_conv_(conv, 8, target=2.0)
    assert conv.weight is param and conv.weight.data_ptr() == ptr
    assert conv.weight.dtype == torch.float32 and conv.weight.requires_grad
    assert report.target == 2.0 and report.sigma_max < 2.0 * 1.5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: project_conv_(torch.full((4, 4, 3, 3), float("nan")), 8), "NaN"),
        (lambda: project_conv_(torch.randn(4, 4, 3), 8), r"4-D.*\(4, 4, 3\)"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 8, method="qr"), "'qr'"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 8, iterations=0), "iterations.*0"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 8, target=-1.0), "target.*-1"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 9, stride=2), r"\(9, 9\).*stride"),
        (lambda: project_conv_(torch.randn(4, 4, 5, 5), 4), r"5x5.*\(4, 4\)"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 4, stride=2, faithful=True),
         r"\(3, 3\).*\(2, 2\)"),
        (lambda: project_conv_(nn.Conv2d(4, 4, 3, dilation=2), 8), r"dilation=\(2, 2\)"),
        (lambda: project_conv_(nn.Conv2d(4, 4, 1, stride=2), 8, stride=1), "stride=1 contradicts"),
        (lambda: project_conv_(torch.randn(4, 4, 3, 3), 8, groups=3), "groups.*3"),
        (lambda: project_conv_(nn.Conv2d(4, 4, 3, groups=2), 8, faithful=True), "groups=2"),
        (lambda: project_conv_(nn.Linear(4, 4), 8), "Linear"),
        (lambda: polar(torch.randn(3, 3), method="svdd"), "'svdd'"),
        (lambda: polar(torch.randn(3), method="svd"), r"\(3,\)"),
        (lambda: polar(torch.randn(3, 3), method="newton_schulz", tol=0), "tol.*0"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
def test_projection_on_cuda_matches_cpu():
    w = torch.randn(32, 16, 3, 3, dtype=torch.float64)
    g = w.cuda()
    project_conv_(w, 16, stride=2, iterations=2)
    report = project_conv_(g, 16, stride=2, iterations=2)
    assert g.is_cuda
    torch.testing.assert_close(g.cpu(), w)
    assert report.max_rel_error < 1


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(40, 64, 64), (300, 8, 3), (10, 64, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64, torch.complex128])
def test_batched_svdvals_on_cuda_matches_cpu_float64(shape, dtype):
    from procres.spectral.symbol import batched_svdvals
    a = torch.randn(*shape, dtype=dtype)
    ref = torch.linalg.svdvals(a.to(torch.complex128))
    out = batched_svdvals(a.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu().double(), ref, rtol=2e-5 if dtype in (torch.float32, torch.complex64) else 1e-10, atol=1e-5)


@pytest.mark.parametrize("shape, stride", [((64, 3, 3, 3), 1), ((128, 64, 1, 1), 2), ((128, 64, 3, 3), 2),
                                           ((64, 256, 1, 1), 1)])
def test_projection_target_is_the_one_norm_preserving_target(shape, stride):
    from procres.spectral.spectra import norm_preserving_target

    report = project_conv_(torch.randn(shape, dtype=torch.float64), 8, stride=stride)
    assert report.target == norm_preserving_target(shape, stride)


@pytest.mark.parametrize("k, stride, iterations", [(1, 2, 1), (3, 1, 60)])
def test_grouped_conv_is_projected_group_by_group(k, stride, iterations):
    # the operator is block-diagonal over groups: each group's non-zero singular values reach the
    # target sqrt((C_out / g) / rank); the dense reference is the impulse response with F.conv2d
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, k, stride=stride, padding=k // 2, groups=2, bias=False,
                     padding_mode="circular").double()
    report = project_conv_(conv, 8, iterations=iterations)
    assert report.groups == 2 and report.target == pytest.approx(np.sqrt(4 / min(4, 2 * min(k, stride) ** 2)))
    eye = torch.eye(4 * 64, dtype=torch.float64).reshape(-1, 4, 8, 8)
    A = conv(eye).reshape(4 * 64, -1).T.detach().numpy()
    sv = np.linalg.svd(A, compute_uv=False)
    nonzero = sv[sv > 1e-8 * sv[0]]
    np.testing.assert_allclose(nonzero, report.target, rtol=1e-9 if k == 1 else 5e-2)   # 3x3: cropped
    assert report.history[-1] < report.history[0] / 4
    assert report.max_rel_error == pytest.approx(np.abs(nonzero / report.target - 1).max(), rel=1e-6, abs=1e-12)
    # the two groups never mix: the off-diagonal blocks of the kernel stay zero by construction
    assert conv.weight.shape == (8, 2, k, k)
