"""procres.constraints.spectral_norm against independent float64 references on tiny layers.

Oracles: the dense operator from impulse responses (tests/helpers/dense_operators.py: F.conv2d on
every basis image) and its SVD; torch's own ``parametrizations.spectral_norm`` for nn.Linear;
autograd (gradcheck) for the gradients.
"""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from dense_operators import impulse_operator
from procres.constraints.spectral_norm import OperatorSpectralNorm, default_exact, spectral_norm
from procres.errors import UserError

pytestmark = pytest.mark.usefixtures("single_threaded")

CASES = {                                   # Conv2d(C_in, C_out, k, ...) on n x n inputs
    "zeros": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), 6),
    "circular": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="circular"), 6),
    "reflect": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"), 6),
    "strided": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, stride=2), 8),
    "grouped": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2), 6),
    "dilated": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, dilation=2), 7),
    "same_even": (dict(in_channels=2, out_channels=3, kernel_size=2, padding="same"), 5),
}

#: seed 0's zero-padded conv has s2 / s1 = 0.99975 (30k power iterations for 1e-6, 9 s); seed 2's 0.983
SEEDS = {"zeros": 2}


def make_conv(case, seed=None):
    kwargs, n = CASES[case]
    torch.manual_seed(SEEDS.get(case, 0) if seed is None else seed)
    return nn.Conv2d(**kwargs).double(), n


def dense(conv, n):
    """The layer's own operator as a dense matrix, from its impulse responses."""
    return impulse_operator(conv, (n, n), conv.padding_mode)


def top_singular_value(A):
    return float(torch.linalg.matrix_norm(A.detach(), 2))


def train_forwards(module, x, steps):
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(x)


def norm_of(module):
    return module.parametrizations.weight[0]


# ----------------------------------------------------------------------------- power iteration
@pytest.mark.parametrize("case", sorted(CASES))
def test_power_iteration_sigma_is_the_operator_norm(case):
    conv, n = make_conv(case)
    sv = torch.linalg.svdvals(dense(conv, n))
    reference = float(sv[0])
    gap = float(sv[sv < reference * (1 - 1e-9)][0]) / reference   # a repeated top value does not slow it
    raw = conv.weight.detach().clone()
    # the power iteration's sigma error shrinks like gap^(2 k) (next distinct value): enough iterations for 1e-9
    iterations = math.ceil(math.log(1e-9) / (2 * math.log(gap)))
    spectral_norm(conv, n_power_iterations=20, exact=False)
    train_forwards(conv, torch.randn(2, conv.in_channels, n, n, dtype=torch.float64), iterations // 20 + 1)
    conv.eval()
    assert float(norm_of(conv).sigma(raw)) == pytest.approx(reference, rel=1e-6)
    assert top_singular_value(dense(conv, n)) == pytest.approx(1.0, rel=1e-6)   # the normalised weight


def test_sigma_differs_from_torchs_matrix_norm():
    """The tests above can fail: torch's normalisation of the reshaped matrix misses the operator norm."""
    conv, n = make_conv("zeros")
    torch_spectral_norm(conv)
    train_forwards(conv, torch.randn(1, 3, n, n, dtype=torch.float64), 200)
    conv.eval()
    assert abs(top_singular_value(dense(conv, n)) - 1) > 0.05


def test_block_power_iteration_converges_to_the_norm_too():
    conv, n = make_conv("strided")
    reference = top_singular_value(dense(conv, n))
    raw = conv.weight.detach().clone()
    spectral_norm(conv, n, exact=False, vectors=3, n_power_iterations=10)
    assert norm_of(conv)._v.shape == (3, 4, n, n) and norm_of(conv)._u.shape == (3, 6, n // 2, n // 2)
    v = norm_of(conv)._v.flatten(1)
    torch.testing.assert_close(v @ v.T, torch.eye(3, dtype=torch.float64))   # orthonormal rows
    train_forwards(conv, torch.randn(1, 4, n, n, dtype=torch.float64), 30)
    conv.eval()
    assert float(norm_of(conv).sigma(raw)) == pytest.approx(reference, rel=1e-8)
    assert float(norm_of(conv).sigma(raw)) <= reference * (1 + 1e-12)          # Rayleigh-Ritz: from below


@pytest.mark.parametrize("bound", [0.5, 3.0])
def test_bound_scales_normalize(bound):
    conv, n = make_conv("strided")
    spectral_norm(conv, n, bound=bound, n_power_iterations=4, exact=False)
    train_forwards(conv, torch.randn(1, 4, n, n, dtype=torch.float64), 300)
    conv.eval()
    assert top_singular_value(dense(conv, n)) == pytest.approx(bound, rel=1e-6)


@pytest.mark.parametrize("exact", [False, True])
def test_clamp_leaves_a_layer_below_the_bound_alone_and_bounds_the_others(exact):
    conv, n = make_conv("circular")
    raw = conv.weight.detach().clone()
    sigma = top_singular_value(dense(conv, n))
    below = spectral_norm(copy.deepcopy(conv), n, mode="clamp", bound=2 * sigma, n_power_iterations=4, exact=exact)
    above = spectral_norm(copy.deepcopy(conv), n, mode="clamp", bound=sigma / 2, n_power_iterations=4, exact=exact)
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    for module in (below, above):
        train_forwards(module, x, 300)
        module.eval()
    assert torch.equal(below.weight, raw)
    assert top_singular_value(dense(above, n)) <= sigma / 2 * (1 + 1e-9)
    assert top_singular_value(dense(above, n)) == pytest.approx(sigma / 2, rel=1e-6)


def test_eval_mode_does_not_advance_the_vectors():
    conv, n = make_conv("zeros")
    spectral_norm(conv, n, exact=False)
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    train_forwards(conv, x, 3)
    u, v = norm_of(conv)._u.clone(), norm_of(conv)._v.clone()
    conv.eval()
    y = conv(x)
    conv(x)
    assert torch.equal(u, norm_of(conv)._u) and torch.equal(v, norm_of(conv)._v)
    assert torch.equal(y, conv(x))
    conv.train()
    conv(x)
    assert not torch.equal(u, norm_of(conv)._u)


@pytest.mark.parametrize("exact", [False, True])
def test_backward_through_two_training_forwards(exact):
    """GAN training's loss = D(real) + D(fake): the second forward advances the vectors in place,
    the first forward's graph must not see it (torch's clone)."""
    conv, n = make_conv("strided")
    spectral_norm(conv, n, exact=exact)
    loss = conv(torch.randn(1, 4, n, n, dtype=torch.float64)).sum() + conv(
        torch.randn(1, 4, n, n, dtype=torch.float64)).sum()
    loss.backward()
    assert torch.isfinite(conv.parametrizations.weight.original.grad).all()


def test_vectors_live_in_the_input_and_output_spaces():
    conv, n = make_conv("strided")
    spectral_norm(conv, n, exact=False)
    assert norm_of(conv)._v.shape == (4, n, n)
    assert norm_of(conv)._u.shape == (6, n // 2, n // 2)
    assert set(conv.state_dict()) == {"bias", "parametrizations.weight.original",
                                      "parametrizations.weight.0._u", "parametrizations.weight.0._v"}


@pytest.mark.parametrize("size_known", [True, False])
@pytest.mark.parametrize("vectors", [1, 2])
def test_state_dict_round_trip(size_known, vectors):
    conv, n = make_conv("strided")
    spectral_norm(conv, n if size_known else None, exact=False, vectors=vectors)
    x = torch.randn(2, 4, n, n, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(5):
            conv(x)
            conv.parametrizations.weight.original.add_(0.01 * torch.randn_like(conv.weight))
    conv.eval()
    expected = conv(x)
    fresh, _ = make_conv("strided", seed=1)
    spectral_norm(fresh, n if size_known else None, exact=False, vectors=vectors)  # deferred: size from v
    fresh.load_state_dict(conv.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    with pytest.raises(UserError, match=r"\(8, 8\).*\(4, 4\)"):
        fresh(torch.randn(1, 4, 4, 4, dtype=torch.float64))


def test_state_dict_round_trip_of_the_exact_route():
    conv, n = make_conv("strided")
    spectral_norm(conv)
    x = torch.randn(2, 4, n, n, dtype=torch.float64)
    conv(x)
    assert set(conv.state_dict()) == {"bias", "parametrizations.weight.original"}   # nothing to estimate
    fresh, _ = make_conv("strided", seed=1)
    spectral_norm(fresh)
    fresh.load_state_dict(conv.state_dict())
    assert torch.equal(fresh(x), conv(x))


@pytest.mark.parametrize("exact", [False, True])
def test_remove_parametrizations_leaves_the_normalised_weight(exact):
    conv, n = make_conv("circular" if exact else "reflect")
    spectral_norm(conv, exact=exact)
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    train_forwards(conv, x, 20)
    conv.eval()
    normalised, y = conv.weight.detach().clone(), conv(x)
    parametrize.remove_parametrizations(conv, "weight")
    assert not parametrize.is_parametrized(conv)
    assert torch.equal(conv.weight, normalised) and torch.equal(conv(x), y)
    conv(torch.randn(1, 3, n + 2, n + 2, dtype=torch.float64))  # the hook stays and does nothing


def test_cached_computes_the_weight_once():
    a, n = make_conv("zeros")
    spectral_norm(a, n, exact=False)
    b = copy.deepcopy(a)
    x = torch.randn(1, 3, n, n, dtype=torch.float64)
    with parametrize.cached():
        a(x)
        a(x)
    b(x)
    assert torch.equal(norm_of(a)._u, norm_of(b)._u)


@pytest.mark.parametrize("exact", [False, True])
def test_input_size_from_the_first_forward(exact):
    conv, n = make_conv("strided")
    spectral_norm(conv, exact=exact)
    with pytest.raises(UserError, match="input size"):
        conv.weight  # noqa: B018
    conv(torch.randn(1, 4, n, n, dtype=torch.float64))
    assert norm_of(conv).input_size == (n, n)
    with pytest.raises(UserError, match=r"\(8, 8\).*\(10, 10\)"):
        conv(torch.randn(1, 4, 10, 10, dtype=torch.float64))
    given, _ = make_conv("strided")
    spectral_norm(given, 10, exact=exact)
    with pytest.raises(UserError, match=r"\(10, 10\).*\(8, 8\)"):
        given(torch.randn(1, 4, n, n, dtype=torch.float64))


def test_gradient_flows_through_sigma_like_torch():
    """d sigma / d W = the weight gradient of conv(v) against u (torch's u v^T for a matrix)."""
    conv, n = make_conv("strided")
    spectral_norm(conv, n, exact=False)
    conv.eval()
    norm = norm_of(conv)
    W = conv.parametrizations.weight.original.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(norm.sigma(W), W)
    expected = torch.nn.grad.conv2d_weight(norm._v[None], W.shape, norm._u[None], stride=2, padding=1)
    assert torch.allclose(grad, expected, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda w: norm(w), (W,))


@pytest.mark.parametrize("case", ["strided", "circular", "reflect", "grouped"])
@pytest.mark.parametrize("vectors", [1, 3])
def test_training_sigma_is_the_eval_sigma(case, vectors):
    """Training mode computes the block's value from the power step's adjoint; eval mode from A v."""
    conv, n = make_conv(case)
    spectral_norm(conv, n, n_power_iterations=2, exact=False, vectors=vectors)
    norm = norm_of(conv)
    W = conv.parametrizations.weight.original.detach().clone().requires_grad_(True)
    trained = norm.sigma(W)
    (grad_train,) = torch.autograd.grad(trained, W)
    norm.eval()
    evaluated = norm.sigma(W)
    (grad_eval,) = torch.autograd.grad(evaluated, W)
    assert float(trained) == pytest.approx(float(evaluated), rel=1e-13)
    assert torch.allclose(grad_train, grad_eval, rtol=0, atol=1e-12)


def test_linear_matches_torch_bit_for_bit():
    torch.manual_seed(3)
    layer = nn.Linear(7, 5)
    ours, theirs = copy.deepcopy(layer), copy.deepcopy(layer)
    torch.manual_seed(4)
    spectral_norm(ours)                       # a Linear's default is torch's power iteration
    torch.manual_seed(4)
    torch_spectral_norm(theirs)
    x = torch.randn(3, 7)
    for _ in range(4):
        for module in (ours, theirs):
            module.zero_grad()
            module(x).square().sum().backward()
    assert torch.equal(norm_of(ours)._u, norm_of(theirs)._u)
    assert torch.equal(norm_of(ours)._v, norm_of(theirs)._v)
    assert torch.equal(ours.weight, theirs.weight)
    assert torch.equal(ours.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad)
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_linear_exact_and_block_routes():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    reference = float(torch.linalg.svdvals(layer.weight)[0])
    exact = spectral_norm(copy.deepcopy(layer), exact=True)
    assert top_singular_value(exact.weight) == pytest.approx(1.0, rel=1e-12)
    block = spectral_norm(copy.deepcopy(layer), exact=False, vectors=3, n_power_iterations=50)
    block(torch.randn(1, 7, dtype=torch.float64))
    assert float(norm_of(block).sigma(layer.weight)) == pytest.approx(reference, rel=1e-10)


# ----------------------------------------------------------------------------- the exact route
def test_exact_route_is_the_circular_norm_and_differentiable():
    conv, n = make_conv("circular")
    raw = conv.weight.detach().clone().requires_grad_(True)
    reference = top_singular_value(impulse_operator(conv, (n, n), "circular"))
    spectral_norm(conv, n)                                    # circular padding: exact by default
    assert list(conv.state_dict()) == ["bias", "parametrizations.weight.original"]
    norm = norm_of(conv)
    assert norm.exact
    assert float(norm.sigma(raw)) == pytest.approx(reference, rel=1e-12)
    assert top_singular_value(dense(conv, n)) == pytest.approx(1.0, rel=1e-12)
    assert torch.autograd.gradcheck(lambda w: norm.sigma(w), (raw,))


ZERO_PADDED = ["zeros", "strided", "grouped", "dilated", "same_even"]


@pytest.mark.parametrize("case", ZERO_PADDED)
def test_a_zero_padded_conv_is_a_restriction_of_the_circular_conv_on_the_padded_grid(case):
    """The claim behind the exact route: with the input embedded, zeros around it, in the torus of
    the padded size (rounded up to the stride), the zero-padded operator's rows are rows of the
    circular operator there, so its norm is at most the circular one."""
    conv, n = make_conv(case)
    (sh, _), (dh, _), (kh, _) = conv.stride, conv.dilation, conv.kernel_size
    k_eff = dh * (kh - 1) + 1
    top, bottom = ((k_eff - 1) // 2, k_eff // 2) if conv.padding == "same" else (conv.padding[0],) * 2
    N = -(-(n + top + bottom) // sh) * sh
    Z = dense(conv, n)
    C = impulse_operator(conv, (N, N), "circular")
    # the embedding: x[c, r, q] -> z[c, (r + top - k_eff // 2) mod N, (q + top - k_eff // 2) mod N]
    c_in, c_out = conv.in_channels, conv.out_channels
    E = torch.zeros(c_in * N * N, c_in * n * n, dtype=torch.float64)
    for c in range(c_in):
        for r in range(n):
            for q in range(n):
                rr, qq = ((r + top - k_eff // 2) % N, (q + top - k_eff // 2) % N)
                E[(c * N + rr) * N + qq, (c * n + r) * n + q] = 1
    o = (n + top + bottom - k_eff) // sh + 1
    rows = [(ch * (N // sh) + i) * (N // sh) + j for ch in range(c_out) for i in range(o) for j in range(o)]
    torch.testing.assert_close((C @ E)[rows], Z, rtol=0, atol=1e-12)
    circular, zero = top_singular_value(C), top_singular_value(Z)
    assert zero <= circular * (1 + 1e-12)
    raw = conv.weight.detach().clone()
    spectral_norm(conv, n)                                    # zero padding: exact by default
    assert norm_of(conv).exact
    assert float(norm_of(conv).sigma(raw)) == pytest.approx(circular, rel=1e-12)
    assert top_singular_value(dense(conv, n)) == pytest.approx(zero / circular, rel=1e-10)   # <= 1
    # the gradient of sigma (through the top frequency's singular pair) is the finite differences'
    assert torch.autograd.gradcheck(lambda w: norm_of(conv).sigma(w), (raw.requires_grad_(True),))


def test_a_patch_convs_exact_norm_is_its_patch_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 2, stride=2, groups=2).double()
    spectral_norm(conv, 6)
    assert top_singular_value(dense(conv, 6)) == pytest.approx(1.0, rel=1e-12)


def test_training_with_the_default_keeps_every_conv_at_most_at_the_bound():
    """The default's guarantee during training (the power iteration's estimate lags: benchmarks/regularisers.py)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(6 * 3 * 3, 3)).double()
    for i in (0, 2):
        spectral_norm(net[i])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        for i, n in ((0, 6), (2, 6)):
            assert top_singular_value(dense(net[i], n)) <= 1 + 1e-12


def test_default_exact_rule():
    assert default_exact(nn.Conv2d(2, 2, 3, padding=1)) and default_exact(nn.Conv2d(2, 2, 3, padding_mode="circular"))
    assert not default_exact(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    assert default_exact(nn.Conv2d(2, 2, 3, padding_mode="reflect"))          # no padding: nothing reflected
    assert default_exact(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "zeros")
    assert not default_exact(nn.Linear(2, 2))


# ----------------------------------------------------------------------------- bad input
def bad_spectral_norm_calls():
    torch_normed = torch_spectral_norm(nn.Conv2d(2, 2, 3))
    ours = spectral_norm(nn.Conv2d(2, 2, 3), 5)
    nan_conv = nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        nan_conv.weight[0, 0, 0, 0] = math.inf
    return [
        (nn.ConvTranspose2d(2, 2, 3), {}, "nn.Conv2d or an nn.Linear"),
        (nn.Conv1d(2, 2, 3), {}, "nn.Conv2d or an nn.Linear"),
        (nn.Conv2d(2, 2, 3), dict(mode="scale"), "mode"),
        (nn.Conv2d(2, 2, 3), dict(bound=0.0), "bound"),
        (nn.Conv2d(2, 2, 3), dict(bound=-1.0), "bound"),
        (nn.Conv2d(2, 2, 3), dict(bound=math.inf), "bound"),
        (nn.Conv2d(2, 2, 3), dict(bound=math.nan), "bound"),
        (nn.Conv2d(2, 2, 3), dict(n_power_iterations=0), "n_power_iterations"),
        (nn.Conv2d(2, 2, 3), dict(vectors=0), "vectors"),
        (nn.Conv2d(2, 2, 3), dict(exact="yes"), "exact must be"),
        (torch_normed, {}, "already spectrally normalised"),
        (ours, {}, "already spectrally normalised"),
        (nn.Conv2d(2, 2, 3), dict(padding_mode="wrap"), "padding_mode"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), dict(exact=True), "exact=True needs zero or circular"),
        (nn.Conv2d(2, 2, 3, stride=2, padding_mode="circular", padding=1), dict(input_size=5, exact=True),
         "does not divide"),
        (nn.Conv2d(2, 2, 3, padding_mode="circular", padding=2), dict(exact=True), "output is the torus's"),
        (nn.Conv2d(2, 2, 5), dict(input_size=3), "smaller than the kernel"),
        (nn.Linear(3, 2), dict(input_size=4), "input_size is for convs"),
        (nn.Linear(3, 2), dict(padding_mode="zeros"), "padding_mode is for convs"),
        (nn.Conv2d(2, 2, 3), dict(name="bias"), "4-D"),
        (nan_conv, {}, "NaN or inf"),
    ]


@pytest.mark.parametrize("index", range(len(bad_spectral_norm_calls())))
def test_spectral_norm_refuses_bad_input_and_leaves_the_module_unchanged(index):
    module, kwargs, message = bad_spectral_norm_calls()[index]
    before = copy.deepcopy(module.state_dict())
    hooks, cls = dict(module._forward_pre_hooks), type(module)
    with pytest.raises(UserError, match=message):
        spectral_norm(module, **kwargs)
    assert type(module) is cls and dict(module._forward_pre_hooks) == hooks
    after = module.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_norm_module_is_what_is_registered():
    conv = spectral_norm(nn.Conv2d(2, 2, 3), 5)
    assert isinstance(norm_of(conv), OperatorSpectralNorm)
    assert "exact" in repr(norm_of(conv))


@pytest.mark.parametrize("kwargs, n", [(dict(kernel_size=3, padding=2), 6), (dict(kernel_size=2, padding=1), 6),
                                       (dict(kernel_size=3, padding=1, stride=2), 7)])
def test_a_circular_layer_that_is_no_torus_conv_is_normalised_by_its_own_norm(kwargs, n):
    """Circular padding by other than k_eff - 1 rows (or a size the stride does not divide) repeats
    or skips torus rows: the default is then the power iteration on torch's own layer; its state_dict
    loads into a fresh module (which learns the size and the route from the vectors)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, padding_mode="circular", bias=False, **kwargs).double()
    raw = conv.weight.detach().clone()
    eye = torch.eye(2 * n * n, dtype=torch.float64).reshape(-1, 2, n, n)

    def layer_norm(weight):
        with torch.no_grad():
            out = torch.nn.functional.conv2d(torch.nn.functional.pad(eye, [conv.padding[1]] * 2 + [conv.padding[0]] * 2,
                                                                      mode="circular"), weight, stride=conv.stride)
        return top_singular_value(out.reshape(eye.shape[0], -1).T)

    spectral_norm(conv, n_power_iterations=1)
    train_forwards(conv, torch.randn(1, 2, n, n, dtype=torch.float64), 400)
    assert not norm_of(conv).exact                            # the padding (or, stride 2, the size) decided
    assert default_exact(conv) == (conv.stride == (2, 2))
    assert float(norm_of(conv).sigma(raw)) == pytest.approx(layer_norm(raw), rel=1e-6)
    assert layer_norm(conv.weight) == pytest.approx(1.0, rel=1e-6)
    conv.eval()
    fresh = spectral_norm(nn.Conv2d(2, 3, padding_mode="circular", bias=False, **kwargs).double()).eval()
    fresh.load_state_dict(conv.state_dict())
    x = torch.randn(1, 2, n, n, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), conv(x), rtol=0, atol=1e-14)


def test_a_diverged_weight_raises_floating_point_error_and_half_precision_works():
    conv = spectral_norm(nn.Conv2d(3, 4, 3, padding=1), 8)
    with torch.no_grad():
        conv.parametrizations.weight.original[0, 0, 0, 0] = math.inf
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        conv(torch.randn(1, 3, 8, 8))
    torch.manual_seed(0)
    half = spectral_norm(nn.Conv2d(3, 4, 3, padding=1).to(torch.bfloat16), 8)
    assert half.weight.dtype == torch.bfloat16
    norm = top_singular_value(impulse_operator(half, (8, 8), "zeros"))
    full = spectral_norm(nn.Conv2d(3, 4, 3, padding=1), 8)
    with torch.no_grad():
        full.parametrizations.weight.original.copy_(half.parametrizations.weight.original.float())
    reference = top_singular_value(impulse_operator(full, (8, 8), "zeros"))
    assert norm <= 1.0 and norm == pytest.approx(reference, abs=1e-2)    # bfloat16 rounding of the taps
