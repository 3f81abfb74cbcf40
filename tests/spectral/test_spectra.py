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
from torch import nn

from procres.spectral.operator import DENSE_LIMIT, conv_operator
from procres.spectral.spectra import conv_extremes, conv_matrix, conv_min_singular_value, conv_operator_norm, conv_singular_values
from dense_operators import impulse_operator, index_formula_matrix


pytestmark = pytest.mark.usefixtures("single_threaded")


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
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 8, padding_mode="symmetric"),
         "'symmetric'"),
        (lambda: conv_singular_values(torch.randn(2, 2, 5, 5), 2, padding=2, padding_mode="reflect"),
         r"reflect padding \(2, 2, 2, 2\).*smaller than the input_size \(2, 2\)"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 0), "input_size.*0"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 8, stride=0), "stride.*0"),
        (lambda: conv_singular_values(torch.randint(0, 3, (2, 2, 3, 3)), 8), "dtype"),
        (lambda: conv_singular_values(torch.randn(2, 2, 3, 3, device="meta"), 8), "meta device"),
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
    from procres.spectral.spectra import norm_preserving_target

    assert norm_preserving_target(shape, stride) == pytest.approx(expected)
    assert norm_preserving_target(torch.zeros(shape), stride) == pytest.approx(expected)


def test_norm_preserving_target_gives_unit_expected_backward_gain():
    """E ||A^T g||^2 / ||g||^2 = 1 for isotropic g once every non-zero singular value is the target."""
    from procres.spectral.projection import project_conv_
    from procres.spectral.spectra import conv_matrix

    torch.manual_seed(0)
    for shape, stride in (((8, 4, 1, 1), 2), ((6, 3, 3, 3), 1), ((4, 8, 1, 1), 1)):
        w = torch.randn(shape, dtype=torch.float64)
        project_conv_(w, 4, stride=stride, iterations=1 if shape[-1] == 1 else 50)
        a = conv_matrix(w, 4, stride=stride)
        gain = float((a @ a.T).trace() / a.shape[0])  # E ||A^T g||^2 for unit-variance g, per row
        assert gain == pytest.approx(1.0, rel=2e-2)


def test_spectrum_stats_counts_nonzero_values_only():
    from procres.spectral.spectra import spectrum_stats

    s = spectrum_stats([2.0, 1.0, 1e-12, 0.0], target=1.5)
    assert (s["sigma_max"], s["sigma_min"], s["nonzero"], s["count"]) == (2.0, 1.0, 2, 4)
    assert s["cond"] == 2.0 and s["max_rel_error"] == pytest.approx(1 / 3) and s["mean_rel_error"] == pytest.approx(1 / 3)
    assert spectrum_stats(torch.zeros(3))["sigma_min"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        spectrum_stats([])


# ---------------------------------------------------------------- nn.Conv2d, groups, dilation, dtypes
CONVS = [  # (C_in, C_out, k, stride, dilation, groups, padding, size)
    (4, 6, 3, 1, 1, 2, 1, (6, 6)),
    (4, 4, 3, 1, 1, 4, 1, (6, 8)),      # depthwise, non-square input
    (6, 4, 3, 2, 1, 2, 1, (8, 6)),      # grouped and strided
    (3, 4, 3, 1, 2, 1, 2, (8, 8)),      # dilated
    (4, 4, 3, 2, 2, 2, 2, (8, 8)),      # dilated, strided, grouped: some phases hold no tap
    (2, 3, 2, 1, 1, 1, "same", (5, 6)),  # even kernel, asymmetric "same" padding
    (3, 6, 2, 2, 1, 3, 0, (6, 6)),      # patch conv (k = s): one SVD
    (4, 2, 1, 2, 3, 1, 0, (6, 4)),      # 1x1 strided (dilation is irrelevant)
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("c_in,c_out,k,stride,dilation,groups,padding,size", CONVS)
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
def test_conv_module_spectra_equal_the_impulse_response_operator(c_in, c_out, k, stride, dilation, groups,
                                                                 padding, size, mode):
    if mode == "circular" and (size[0] % stride or size[1] % stride):
        pytest.skip("circular needs the size divisible by the stride")
    if mode in ("reflect", "replicate") and padding == 0:
        pytest.skip("no padding: the same operator as zeros")
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, dilation=dilation, groups=groups, padding=padding).double()
    oracle = impulse_operator(conv, size, mode).numpy()
    np.testing.assert_allclose(conv_matrix(conv, size, padding_mode=mode).numpy(), oracle, atol=1e-12)
    expected = np.linalg.svd(oracle, compute_uv=False)
    sv = conv_singular_values(conv, size, padding_mode=mode)
    assert sv.numel() == min(oracle.shape)
    np.testing.assert_allclose(sv.numpy(), expected, atol=1e-10 * expected[0])
    nonzero = expected[expected > 1e-6 * expected[0]]
    ext = conv_extremes(conv, size, padding_mode=mode)
    assert ext["exact"] and ext["sigma_max"] == pytest.approx(expected[0], rel=1e-9)
    assert ext["sigma_min"] == pytest.approx(nonzero[-1], rel=1e-8)
    assert conv_operator_norm(conv, size, padding_mode=mode, tol=1e-12) == pytest.approx(expected[0], rel=1e-9)


def test_a_conv_brings_its_own_operator_and_contradictions_are_errors():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1).double()
    ref = np.linalg.svd(impulse_operator(conv, (8, 8), "zeros").numpy(), compute_uv=False)
    torch.testing.assert_close(conv_singular_values(conv, 8), torch.from_numpy(ref))   # its own: zeros
    w = conv.weight.detach()
    torch.testing.assert_close(conv_singular_values(conv, 8, padding_mode="circular"),
                               conv_singular_values(w, 8, stride=2))                  # a weight: circular
    with pytest.raises(ValueError, match=r"stride=1 contradicts the conv's own stride=\(2, 2\)"):
        conv_singular_values(conv, 8, stride=1)
    with pytest.raises(ValueError, match="groups=2 contradicts"):
        conv_operator_norm(conv, 8, groups=2)
    reflect = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect").double()   # its own: reflect
    np.testing.assert_allclose(conv_singular_values(reflect, 6).numpy(),
                               np.linalg.svd(impulse_operator(reflect, (6, 6), "reflect").numpy(), compute_uv=False),
                               atol=1e-12)
    assert conv_singular_values(reflect, 6, padding_mode="circular").numel() == 72


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_measured_in_float32(dtype):
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False).to(dtype)
    ref = conv_singular_values(conv.weight.detach().double(), 8)              # the same rounded weights
    sv = conv_singular_values(conv, 8, padding_mode="circular")
    assert sv.dtype == torch.float32
    np.testing.assert_allclose(sv.numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref[0]))
    assert conv_operator_norm(conv, 6) == pytest.approx(float(conv_singular_values(conv.weight.double(), 6,
                                                                                      padding_mode="zeros")[0]), rel=1e-6)


@pytest.mark.parametrize("size", [np.int64(8), np.int32(8), torch.Size([8, 8]), (np.int64(8), 8),
                                  torch.tensor(8), [8, np.int16(8)]])
def test_any_integral_size(size):
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv_singular_values(w, size, stride=np.int64(2)), conv_singular_values(w, 8, stride=2))
    assert conv_matrix(w, size).shape == (4 * 64, 2 * 64)


@pytest.mark.parametrize("size", [8.0, "8", (8, 8, 8), True, torch.tensor(8.0)])
def test_non_integral_sizes_are_refused(size):
    with pytest.raises(ValueError, match="input_size"):
        conv_singular_values(torch.randn(2, 2, 3, 3), size)


def test_dense_size_rule_is_on_the_smaller_side():
    tall = torch.randn(16, 3, 3, 3, dtype=torch.float64)       # 20 x 20: 6400 x 1200, smaller side 1200
    sv = conv_singular_values(tall, 20, padding_mode="zeros")
    assert sv.numel() == 1200
    top = conv_operator_norm(tall, 20, padding_mode="zeros", tol=1e-12)
    assert float(sv[0]) == pytest.approx(top, rel=1e-9)
    with pytest.raises(ValueError, match="DENSE_LIMIT"):
        conv_matrix(torch.randn(64, 64, 3, 3), 9, padding_mode="zeros")   # 5184 on both sides


def test_zero_padding_extremes_exact_routes_and_lanczos_bounds():
    torch.manual_seed(0)
    for shape, stride, n in (((6, 6, 3, 3), 1, 8), ((8, 2, 3, 3), 1, 8), ((4, 8, 3, 3), 2, 8)):
        w = torch.randn(shape, dtype=torch.float64)            # square (LU), tall, wide (Cholesky)
        sv = conv_singular_values(w, n, stride=stride, padding_mode="zeros")
        nonzero = sv[sv > 1e-6 * sv[0]]
        exact = conv_extremes(w, n, stride=stride, padding_mode="zeros", method="exact")
        assert exact["method"] == "dense" and exact["sigma_min_is"] == "value"
        assert exact["sigma_max"] == pytest.approx(float(sv[0]), rel=1e-9)
        assert exact["sigma_min"] == pytest.approx(float(nonzero[-1]), rel=1e-8)
        approx = conv_extremes(w, n, stride=stride, padding_mode="zeros", method="lanczos", max_iter=20)
        assert approx["method"] == "lanczos" and not approx["exact"]
        assert approx["sigma_max"] <= float(sv[0]) * (1 + 1e-12)           # Ritz values: from below ...
        assert approx["sigma_min"] >= float(nonzero[-1]) * (1 - 1e-12)       # ... and from above
        assert approx["sigma_max"] == pytest.approx(float(sv[0]), rel=max(4 * approx["sigma_max_error"], 1e-6))
        if approx["sigma_min_is"] == "value":
            assert approx["sigma_min"] == pytest.approx(float(nonzero[-1]), rel=4 * approx["sigma_min_error"] + 1e-9)
    with pytest.raises(ValueError, match="too large for the dense route"):
        conv_extremes(torch.randn(16, 16, 3, 3), 32, padding_mode="zeros", method="exact")
    with pytest.raises(ValueError, match="method.*'svd'"):
        conv_extremes(torch.randn(2, 2, 3, 3), 8, method="svd")


@pytest.mark.parametrize("kernel, stride, mode", [(1, 1, "zeros"), (2, 2, "zeros"), (3, 1, "circular")])
def test_exact_extremes_of_a_float32_conv_keep_a_small_sigma_min_to_float64(kernel, stride, mode):
    # patch and FFT routes: "exact" means the float64 answer for the (float32) weights as stored
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, kernel, stride=stride, padding=0 if mode == "zeros" else kernel // 2,
                     padding_mode=mode, bias=False)
    with torch.no_grad():                                     # one direction 1e-4 of the others
        u, _, vh = torch.linalg.svd(conv.weight.reshape(8, -1), full_matrices=False)
        conv.weight.copy_((u * torch.tensor([1.0] * 7 + [1e-4]) @ vh).reshape(conv.weight.shape))
    out = conv_extremes(conv, 4)
    ref = np.linalg.svd(impulse_operator(conv, (4, 4), mode).numpy(), compute_uv=False)
    assert out["exact"] and out["method"] == ("fft" if mode == "circular" else "patch")
    assert out["sigma_max"] == pytest.approx(ref[0], rel=1e-10)
    assert out["sigma_min"] == pytest.approx(ref[ref > 1e-6 * ref[0]][-1], rel=1e-8)


def test_lanczos_smallest_on_a_large_near_singular_operator_is_an_upper_bound():
    torch.manual_seed(0)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64) / 8
    out = conv_extremes(w, 14, padding_mode="zeros", method="lanczos")
    ref = np.linalg.svd(impulse_operator(_conv_with(w), (14, 14), "zeros").numpy(), compute_uv=False)   # 1568 x 1568
    assert out["sigma_min_is"] == "upper bound" and out["sigma_min"] >= ref[-1]
    assert out["iterations"] < 2 * 300                        # gave up early instead of running 300
    assert out["sigma_max"] == pytest.approx(ref[0], rel=1e-6)


def _conv_with(w):
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


@pytest.mark.parametrize("conv, expected", [
    (nn.Conv2d(64, 64, 7, padding=3, groups=64), 1.0),            # depthwise: 1 x 1 blocks
    (nn.Conv2d(32, 128, 1, groups=4), 2.0),                       # per group 32 x 8: sqrt(32 / 8)
    (nn.Conv2d(16, 64, 3, stride=2, dilation=2, padding=2), 2.0),  # dilation 2, stride 2: one phase of 4
    (nn.Conv2d(16, 64, 3, stride=2, padding=1), 1.0),             # 4 phases: 64 x 64 blocks
])
def test_norm_preserving_target_with_groups_and_dilation(conv, expected):
    from procres.spectral.spectra import norm_preserving_target

    assert norm_preserving_target(conv) == pytest.approx(expected)
    assert norm_preserving_target(tuple(conv.weight.shape), conv.stride, dilation=conv.dilation,
                                  groups=conv.groups) == pytest.approx(expected)


def test_gram_route_of_wide_float64_blocks_equals_the_svd_and_redoes_ill_conditioned_ones():
    from procres.spectral.symbol import batched_svdvals

    gen = np.random.default_rng(0)
    A = gen.standard_normal((5, 6, 14)) + 1j * gen.standard_normal((5, 6, 14))
    u, _, vh = np.linalg.svd(A[0], full_matrices=False)
    A[0] = u @ np.diag([1.0, 0.5, 0.1, 1e-3, 1e-5, 1e-7]) @ vh       # cond 1e7: the Gram alone loses it
    for batch in (A, A.transpose(0, 2, 1), A.real.copy()):             # wide, tall, real
        ref = np.linalg.svd(batch, compute_uv=False)
        sv = batched_svdvals(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(sv[1:], ref[1:], rtol=1e-12)
        # an SVD keeps 1e-7 to ~eps / 1e-7; the Gram's eigenvalues alone would be off by ~1e-16 / 1e-14
        np.testing.assert_allclose(sv[0], ref[0], rtol=1e-7)


@pytest.mark.parametrize("shape, n, stride, dilation, groups", [((4, 3, 3, 3), (6, 8), 2, 1, 1),
                                                                 ((6, 2, 3, 3), 6, 1, 2, 3),
                                                                 ((3, 3, 5, 5), 4, 1, 1, 1)])
def test_circular_spectrum_and_one_frequency_symbol_equal_the_dense_operator(shape, n, stride, dilation, groups):
    from procres.spectral.operator import conv_operator
    from procres.spectral.spectra import circular_spectrum
    from procres.spectral.symbol import circular_symbol, symbol_at

    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1] * groups, shape[0], shape[2:], stride=stride, dilation=dilation, groups=groups,
                     bias=False).double()
    size = (n, n) if isinstance(n, int) else n
    spec = circular_spectrum(conv.weight.detach(), size, stride=stride, dilation=dilation, groups=groups)
    ref = np.linalg.svd(impulse_operator(conv, size, "circular").numpy(), compute_uv=False)
    np.testing.assert_allclose(spec.values.numpy(), ref, atol=1e-10 * ref[0])
    op = conv_operator(conv, size, padding_mode="circular")
    symbol = circular_symbol(op)
    assert spec.per_frequency.shape == (symbol.shape[0], groups, min(symbol.shape[-2:]))
    for f in range(symbol.shape[0]):
        np.testing.assert_allclose(symbol_at(op, f).numpy(), symbol[f].numpy(), atol=1e-12)
        np.testing.assert_allclose(spec.per_frequency[f].numpy(), torch.linalg.svdvals(symbol[f]).numpy(), atol=1e-12)


@pytest.mark.parametrize("conv, n", [(nn.Conv2d(3, 5, 3, padding=1), 9), (nn.Conv2d(4, 6, 3, stride=2, padding=1), 10),
                                     (nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), 8),
                                     (nn.Conv2d(2, 3, 5, padding=1, padding_mode="reflect"), 7)])
def test_sigma_max_alone_through_float32_matches_the_dense_operator(monkeypatch, conv, n):
    from procres.spectral import spectra

    monkeypatch.setattr(spectra, "FLOAT32_MIN_DIM", 0)                 # the float32 first pass on a tiny operator
    torch.manual_seed(1)
    conv = conv.double()
    sv = np.linalg.svd(impulse_operator(conv, (n, n), conv.padding_mode).numpy(), compute_uv=False)
    circular = spectra.circular_spectrum(conv.weight.detach(), n, stride=conv.stride, dilation=conv.dilation,
                                         groups=conv.groups) if n % conv.stride[0] == 0 else None
    for given in (None, circular):
        out = spectra.conv_extremes(conv, n, which="max", circular=given)
        assert out["method"] == "lanczos" and out["sigma_min"] is None and out["sigma_min_is"] == "not measured"
        assert 0 < out["sigma_max_error"] <= 1e-6 and out["sigma_max"] <= sv[0] * (1 + 1e-12)
        assert out["sigma_max"] == pytest.approx(sv[0], rel=2 * out["sigma_max_error"])
    both = spectra.conv_extremes(conv, n, which="max", method="exact")  # exact asked for: both, dense
    assert both["method"] == "dense" and both["sigma_max"] == pytest.approx(sv[0], rel=1e-9)


def test_a_circular_spectrum_of_another_operator_is_refused():
    from procres.spectral.spectra import circular_spectrum

    other = circular_spectrum(torch.randn(3, 3, 3, 3, dtype=torch.float64), 6)
    with pytest.raises(ValueError, match="not this 3 x 3 conv's"):
        conv_extremes(nn.Conv2d(3, 3, 3, padding=1), 8, which="max", circular=other)
    with pytest.raises(ValueError, match="which must be 'both' or 'max'"):
        conv_extremes(nn.Conv2d(3, 3, 3, padding=1), 8, which="min")


def test_spectral_factorisations_run_on_one_thread_and_restore_the_count(monkeypatch):
    from procres.spectral.symbol import batched_svdvals

    seen, svdvals = [], torch.linalg.svdvals
    monkeypatch.setattr(torch.linalg, "svdvals", lambda A: seen.append(torch.get_num_threads()) or svdvals(A))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        A = torch.randn(3, 4, 4, dtype=torch.float64)
        sv = batched_svdvals(A)
        assert seen == [1] and torch.get_num_threads() == 2
        np.testing.assert_allclose(sv.numpy(), np.linalg.svd(A.numpy(), compute_uv=False), rtol=1e-12)
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- circular layers that are no torus
WRAP_LAYERS = [                                 # nn.Conv2d(padding_mode="circular") keywords, input size
    (dict(kernel_size=3, padding=2), 6),        # (n + 2) x (n + 2) outputs: torus rows repeated
    (dict(kernel_size=2, padding=1), 6),
    (dict(kernel_size=3, padding=1, dilation=2), 7),
    (dict(kernel_size=3, padding=1, stride=2), 7),      # a size the stride does not divide
    (dict(kernel_size=2, padding=1, stride=2), 6),
]


@pytest.mark.parametrize("kwargs, n", WRAP_LAYERS)
def test_a_circular_layer_that_is_no_torus_conv_is_its_own_operator(kwargs, n):
    """torch's circular padding by other than k_eff - 1 rows: the operator, its spectrum and its
    extremes are the layer's (its impulse responses), not the torus conv's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, padding_mode="circular", bias=False, **kwargs).double()
    eye = torch.eye(2 * n * n, dtype=torch.float64).reshape(-1, 2, n, n)
    with torch.no_grad():
        dense = conv(eye).reshape(eye.shape[0], -1).T                 # torch's own layer, column by column
    op = conv_operator(conv, n)
    assert op.padding_mode == "wrap"
    torch.testing.assert_close(op.matrix(), dense, rtol=0, atol=1e-14)
    expected = torch.linalg.svdvals(dense)
    got = conv_singular_values(conv, n).sort(descending=True).values[:len(expected)]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert conv_extremes(conv, n)["sigma_max"] == pytest.approx(float(expected[0]), rel=1e-9)


@pytest.mark.parametrize("kwargs, mode", [(dict(kernel_size=3, padding=1), "circular"),
                                          (dict(kernel_size=2, stride=2, padding=0), "zeros"),
                                          (dict(kernel_size=3, padding=0), "zeros")])
def test_a_circular_layer_with_the_torus_output_is_the_torus_and_one_without_padding_a_valid_conv(kwargs, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, padding_mode="circular", bias=False, **kwargs).double()
    op = conv_operator(conv, 8)
    assert op.padding_mode == mode
    eye = torch.eye(2 * 64, dtype=torch.float64).reshape(-1, 2, 8, 8)
    with torch.no_grad():
        dense = conv(eye).reshape(eye.shape[0], -1).T
    torch.testing.assert_close(conv_singular_values(conv, 8).sort(descending=True).values[:min(dense.shape)],
                               torch.linalg.svdvals(dense), rtol=0, atol=1e-12)
