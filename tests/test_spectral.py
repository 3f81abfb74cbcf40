"""procres.spectral against independent float64 references on tiny operators.

Oracles: a dense matrix written from the index formula of cross-correlation (loops, numpy), which
must agree with ``conv_matrix`` (impulse response) and with ``F.conv2d`` on random inputs; its
``numpy.linalg.svd`` is the reference spectrum.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from procres.spectral import (
    DENSE_LIMIT,
    conv_matrix,
    conv_min_singular_value,
    conv_operator_norm,
    conv_singular_values,
)


pytestmark = pytest.mark.usefixtures("single_threaded")


def index_formula_matrix(weight, size, stride, mode):
    """Dense operator from y[o, i, j] = sum W[o, c, a, b] x[c, s i + a - k//2, s j + b - k//2]."""
    W = weight.double().numpy()
    co, ci, kh, kw = W.shape
    (h, w), s = size, stride
    ph, pw = kh // 2, kw // 2
    if mode == "circular":
        oh, ow = h // s, w // s
    else:
        oh, ow = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
    M = np.zeros((co, oh, ow, ci, h, w))
    for i, j, a, b in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        r, c = s * i + a - ph, s * j + b - pw
        if mode == "circular":
            r, c = r % h, c % w
        elif not (0 <= r < h and 0 <= c < w):
            continue
        M[:, i, j, :, r, c] += W[:, :, a, b]
    return M.reshape(co * oh * ow, ci * h * w)


def torch_conv(x, weight, stride, mode):
    kh, kw = weight.shape[-2:]
    if mode == "zeros":
        return F.conv2d(x, weight, stride=stride, padding=(kh // 2, kw // 2))
    pad = (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2)
    return F.conv2d(F.pad(x, pad, mode="circular"), weight, stride=stride)


GRID = list(itertools.product([1, 2, 3, 5], [1, 2], [4, 6, 8], [(2, 3), (3, 2)],
                              ["circular", "zeros"]))


@pytest.mark.parametrize("k,stride,n,channels,mode", GRID)
def test_spectrum_matches_dense_svd(k, stride, n, channels, mode):
    c_in, c_out = channels
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    oracle = index_formula_matrix(weight, (n, n), stride, mode)
    M = conv_matrix(weight, n, stride=stride, padding_mode=mode)
    np.testing.assert_allclose(M.numpy(), oracle, rtol=0, atol=1e-12)

    x = torch.randn(3, c_in, n, n, dtype=torch.float64)
    y = torch_conv(x, weight, stride, mode)
    np.testing.assert_allclose((x.flatten(1) @ M.T).numpy(), y.flatten(1).numpy(), atol=1e-12)

    expected = np.linalg.svd(oracle, compute_uv=False)
    sv = conv_singular_values(weight, n, stride=stride, padding_mode=mode)
    assert sv.dtype == torch.float64
    assert sv.numel() == min(oracle.shape) == expected.size
    assert torch.all(sv[:-1] >= sv[1:])
    np.testing.assert_allclose(sv.numpy(), expected, rtol=0, atol=1e-10 * expected[0])


@pytest.mark.parametrize("mode", ["circular", "zeros"])
def test_non_square_input_and_kernel(mode):
    weight = torch.randn(3, 2, 3, 2, dtype=torch.float64)
    size = (4, 6)
    expected = np.linalg.svd(index_formula_matrix(weight, size, 2, mode), compute_uv=False)
    sv = conv_singular_values(weight, size, stride=2, padding_mode=mode)
    np.testing.assert_allclose(sv.numpy(), expected, atol=1e-10 * expected[0])


def test_kernel_larger_than_grid_wraps_around():
    # circular: a 7x7 kernel on a 4x4 torus is the 4x4 kernel with taps summed modulo 4
    weight = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    expected = np.linalg.svd(index_formula_matrix(weight, (4, 4), 1, "circular"), compute_uv=False)
    sv = conv_singular_values(weight, 4)
    np.testing.assert_allclose(sv.numpy(), expected, atol=1e-10 * expected[0])


def test_float32_gives_float32_close_to_float64():
    weight = torch.randn(16, 8, 3, 3)
    sv32 = conv_singular_values(weight, 16, stride=2)
    sv64 = conv_singular_values(weight.double(), 16, stride=2)
    assert sv32.dtype == torch.float32
    assert float((sv32.double() - sv64).abs().max() / sv64[0]) < 1e-5


def test_strided_1x1_has_zero_singular_values():
    # 1x1 stride 2, 4 -> 8 channels: rank 4 (n/2)^2, the other 4 (n/2)^2 values are exactly 0
    weight = torch.randn(8, 4, 1, 1, dtype=torch.float64)
    sv = conv_singular_values(weight, 8, stride=2)
    assert sv.numel() == 8 * 16
    W_sv = torch.linalg.svdvals(weight[:, :, 0, 0])
    torch.testing.assert_close(sv[:64], W_sv.repeat_interleave(16))
    assert torch.all(sv[64:] == 0)


ITERATIVE = [
    # (c_out, c_in, k, stride, n, mode)
    (3, 2, 3, 1, 6, "zeros"),
    (2, 3, 3, 2, 6, "zeros"),
    (3, 2, 2, 2, 8, "circular"),
    (4, 4, 5, 1, 4, "zeros"),
    (8, 4, 1, 2, 6, "circular"),   # rank deficient: smallest non-zero != 0
    (8, 4, 1, 2, 6, "zeros"),
]


@pytest.mark.parametrize("c_out,c_in,k,stride,n,mode", ITERATIVE)
def test_iterative_extremes_match_dense(c_out, c_in, k, stride, n, mode):
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    expected = np.linalg.svd(index_formula_matrix(weight, (n, n), stride, mode), compute_uv=False)
    nonzero = expected[expected > 1e-8 * expected[0]]
    top = conv_operator_norm(weight, n, stride=stride, padding_mode=mode, tol=1e-10)
    low = conv_min_singular_value(weight, n, stride=stride, padding_mode=mode, tol=1e-10)
    assert top == pytest.approx(expected[0], rel=1e-6)
    assert low == pytest.approx(nonzero[-1], rel=1e-6)


def test_iterative_explicit_padding_matches_dense():
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    x_shape = (1, 2, 5, 5)
    eye = torch.eye(50, dtype=torch.float64).reshape(50, *x_shape[1:])
    M = F.conv2d(eye, weight, stride=2, padding=0).reshape(50, -1).T
    expected = torch.linalg.svdvals(M)
    top = conv_operator_norm(weight, 5, stride=2, padding=0, padding_mode="zeros", tol=1e-10)
    assert top == pytest.approx(float(expected[0]), rel=1e-6)


def test_iterative_circular_matches_fft_beyond_dense_size():
    weight = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    sv = conv_singular_values(weight, 32, stride=2)          # 8192 x 2048: no dense oracle
    top = conv_operator_norm(weight, 32, stride=2, padding_mode="circular", tol=1e-9)
    assert top == pytest.approx(float(sv[0]), rel=1e-6)


def test_float32_iterative_and_matrix_dtype_and_one_default_padding():
    # a bare weight means the circular operator for every function (one default)
    weight = torch.randn(3, 2, 3, 3)
    assert conv_matrix(weight, 4).dtype == torch.float32
    ref = torch.linalg.svdvals(torch.from_numpy(index_formula_matrix(weight, (4, 4), 1, "circular")))
    assert conv_operator_norm(weight, 4) == pytest.approx(float(ref[0]), rel=1e-5)
    assert float(conv_singular_values(weight, 4)[0]) == pytest.approx(float(ref[0]), rel=1e-5)
    assert conv_min_singular_value(weight, 4, tol=1e-10) == pytest.approx(float(ref[-1]), rel=1e-4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: conv_singular_values(torch.randn(3, 3, 3), 8), r"4-D.*\(3, 3, 3\)"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 7, stride=2), r"\(7, 7\).*stride"),
        (lambda: conv_singular_values(torch.full((2, 2, 3, 3), float("nan")), 8), "NaN"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 8, padding_mode="reflect"),
         "'reflect'"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 0), "input_size.*0"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 8, stride=0), "stride.*0"),
        (lambda: conv_singular_values(torch.randint(0, 3, (2, 2, 3, 3)), 8), "dtype"),
        (lambda: conv_singular_values(torch.randn(64, 64, 3, 3), 16, padding_mode="zeros"),
         f"DENSE_LIMIT={DENSE_LIMIT}"),
        (lambda: conv_operator_norm(torch.randn(2, 2, 5, 5), 3, padding=0, padding_mode="zeros"),
         r"\(3, 3\).*smaller than the kernel"),
        (lambda: conv_operator_norm(torch.randn(2, 2, 3, 3), 8, padding=-1), "padding.*-1"),
        (lambda: conv_operator_norm(torch.randn(2, 2, 3, 3), 8, tol=0), "tol.*0"),
        (lambda: conv_min_singular_value(torch.randn(2, 2, 3, 3), 8, max_iter=0), "max_iter.*0"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    weight = torch.randn(32, 16, 3, 3, dtype=torch.float64)
    cpu = conv_singular_values(weight, 16, stride=2)
    gpu = conv_singular_values(weight.cuda(), 16, stride=2)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu)
    top = conv_operator_norm(weight.cuda(), 8, tol=1e-10)
    assert top == pytest.approx(conv_operator_norm(weight, 8, tol=1e-10), rel=1e-8)


@pytest.mark.parametrize("shape, stride, expected", [
    ((64, 3, 3, 3), 1, (64 / 3) ** 0.5),     # the authors' stem: sqrt(C_out / C_in)
    ((128, 64, 1, 1), 2, 2 ** 0.5),          # their 1x1 stride-2 transitions
    ((128, 64, 3, 3), 2, 1.0),               # 4 phases: the 128 x 256 block has full row rank
    ((64, 256, 1, 1), 1, 1.0),               # fewer outputs than inputs: full row rank, never < 1
])
def test_norm_preserving_target_is_rank_based(shape, stride, expected):
    from procres.spectral import norm_preserving_target

    assert norm_preserving_target(shape, stride) == pytest.approx(expected)
    assert norm_preserving_target(torch.zeros(shape), stride) == pytest.approx(expected)


def test_norm_preserving_target_gives_unit_expected_backward_gain():
    """E ||A^T g||^2 / ||g||^2 = 1 for isotropic g once every non-zero singular value is the target."""
    from procres.procrustes import project_conv_
    from procres.spectral import conv_matrix

    torch.manual_seed(0)
    for shape, stride in (((8, 4, 1, 1), 2), ((6, 3, 3, 3), 1), ((4, 8, 1, 1), 1)):
        w = torch.randn(shape, dtype=torch.float64)
        project_conv_(w, 4, stride=stride, iterations=1 if shape[-1] == 1 else 50)
        a = conv_matrix(w, 4, stride=stride)
        gain = float((a @ a.T).trace() / a.shape[0])  # E ||A^T g||^2 for unit-variance g, per row
        assert gain == pytest.approx(1.0, rel=2e-2)


def test_spectrum_stats_counts_nonzero_values_only():
    from procres.spectral import spectrum_stats

    s = spectrum_stats([2.0, 1.0, 1e-12, 0.0], target=1.5)
    assert (s["sigma_max"], s["sigma_min"], s["nonzero"], s["count"]) == (2.0, 1.0, 2, 4)
    assert s["cond"] == 2.0 and s["max_rel_error"] == pytest.approx(1 / 3) and s["mean_rel_error"] == pytest.approx(1 / 3)
    assert spectrum_stats(torch.zeros(3))["sigma_min"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        spectrum_stats([])
