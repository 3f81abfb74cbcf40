"""procres.spectral.clipping: clip_singular_values_ against dense float64 references on tiny layers.

Oracles: the dense operator from impulse responses (tests/helpers/dense_operators.py) and its SVD,
numpy-free brute force for the structural zeros.
"""

import copy
import math

import pytest
import torch
from torch import nn

from dense_operators import impulse_operator
from procres.constraints.spectral_norm import spectral_norm
from procres.errors import UserError
from procres.spectral.clipping import ClippingReport, clip_singular_values_
from procres.spectral.projection import OperatorReport

pytestmark = pytest.mark.usefixtures("single_threaded")

PATCH_CONVS = {                             # kernel <= stride, no padding: exact at every size
    "1x1": (dict(in_channels=6, out_channels=4, kernel_size=1), 4),
    "2x2_s2": (dict(in_channels=4, out_channels=8, kernel_size=2, stride=2), 6),
    "4x4_s4_grouped": (dict(in_channels=4, out_channels=4, kernel_size=4, stride=4, groups=2), 8),
    "2x2_s4_dilated": (dict(in_channels=4, out_channels=6, kernel_size=2, stride=4, dilation=2), 8),
    "1x1_s2": (dict(in_channels=6, out_channels=4, kernel_size=1, stride=2), 6),
    "2x2_s2_odd": (dict(in_channels=3, out_channels=5, kernel_size=2, stride=2), 7),   # a column no tap reads
}


def spectrum(conv, n, mode=None):
    """All singular values of the dense operator, descending."""
    return torch.linalg.svdvals(impulse_operator(conv, (n, n), mode or conv.padding_mode))


def structural_zeros(conv, n):
    """Singular values of the operator that belong to no patch matrix (inputs no tap reads, more
    rows than one group's matrix has values)."""
    g, (kh, kw), s, d = conv.groups, conv.kernel_size, conv.stride[0], conv.dilation[0]
    per_pixel = g * min(conv.out_channels // g, conv.in_channels // g * kh * kw)
    pixels = ((n - (d * (kh - 1) + 1)) // s + 1) ** 2
    return spectrum(conv, n).numel() - per_pixel * pixels


@pytest.mark.parametrize("case", sorted(PATCH_CONVS))
@pytest.mark.parametrize("bounds", [dict(max=0.6), dict(min=0.3), dict(max=0.5, min=0.35)])
def test_clipping_is_exact_for_patch_convs(case, bounds):
    kwargs, n = PATCH_CONVS[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).double()
    old = spectrum(conv, n)
    zeros = structural_zeros(conv, n)
    report = clip_singular_values_(conv, **bounds)          # no input_size: any size
    new = spectrum(conv, n)
    live = old[:old.numel() - zeros].clamp(min=bounds.get("min"), max=bounds.get("max"))
    expected = torch.cat([live, old.new_zeros(zeros)]).sort(descending=True).values
    assert torch.allclose(new, expected, rtol=0, atol=1e-10)
    assert isinstance(report, OperatorReport) and report.exact and report.operator == "patch"
    assert report.max_violation < 1e-12 and report.iterations == 1
    assert report.sigma_max == pytest.approx(float(live.max()), abs=1e-10)
    assert report.sigma_min == pytest.approx(float(live.min()), abs=1e-10)


def test_clipping_a_linear_is_exact():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    old = torch.linalg.svdvals(layer.weight)
    report = clip_singular_values_(layer, max=0.4, min=0.2)
    assert torch.allclose(torch.linalg.svdvals(layer.weight), old.clamp(0.2, 0.4), rtol=0, atol=1e-12)
    assert report.exact and report.operator == "matrix" and report.stride is None
    assert set(report.as_dict()) >= {"sigma_min", "sigma_max", "history", "exact", "max", "min"}


def test_clipping_keeps_the_weights_dtype():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    twin = copy.deepcopy(conv).double()
    clip_singular_values_(conv, 6, max=0.5, iterations=2)
    clip_singular_values_(twin, 6, max=0.5, iterations=2)
    assert conv.weight.dtype == torch.float32
    assert torch.allclose(conv.weight.double(), twin.weight, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(padding=1, padding_mode="circular"), dict(padding=1, stride=2),
                                    dict(padding=2, dilation=2, groups=2)])
@pytest.mark.parametrize("bounds", [dict(max=1.0), dict(max=1.0, min=0.5)])
def test_clipping_3x3_approaches_the_bounds_with_iterations(kwargs, bounds):
    torch.manual_seed(0)
    base = nn.Conv2d(4, 4, 3, **kwargs).double()
    with torch.no_grad():
        base.weight.mul_(4)                                   # far outside [0.5, 1]
    n = 8
    violations = []
    for iterations in (1, 5, 25):
        conv = copy.deepcopy(base)
        report = clip_singular_values_(conv, n, iterations=iterations, **bounds)
        size = report.input_size                              # the torus it clipped: n + padding for zeros
        assert size == ((n, n) if conv.padding_mode == "circular" else (n + 2 * conv.padding[0],) * 2)
        sv = spectrum(conv, size[0], "circular")              # the clipped (circular) operator
        nonzero = sv[:conv.out_channels * (size[0] // conv.stride[0]) ** 2]
        assert report.sigma_max == pytest.approx(float(sv[0]), rel=1e-10)
        violation = max(float(sv[0]) - bounds["max"], bounds.get("min", 0) - float(nonzero[-1]), 0)
        assert report.max_violation == pytest.approx(violation, rel=1e-8, abs=1e-12)
        assert not report.exact and report.operator == "circular" and len(report.history) == iterations + 1
        assert report.history[-1] < report.history[0]
        violations.append(report.max_violation)
    assert violations[0] > violations[1] > violations[2]
    if "min" not in bounds:                                   # convex: converges
        assert violations[2] < 0.2 * violations[0]


def test_clipping_a_zero_padded_conv_bounds_its_own_operator():
    """Zero padding is clipped on the padded grid's circular operator, which bounds the layer's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(3)
    report = clip_singular_values_(conv, 6, max=0.5, iterations=30)
    own = float(spectrum(conv, 6)[0])
    assert report.layer_sigma_max == pytest.approx(own, rel=1e-8)
    assert own <= report.sigma_max * (1 + 1e-12) and report.sigma_max < 0.5 * 1.05


def test_a_padded_patch_conv_is_clipped_on_the_padded_grid_and_not_called_exact():
    """A 2x2 stride-2 conv with padding 1: the padded grid's circular operator is a patch operator
    (clipped in one step), but the layer's own is its restriction, whose smallest value may fall
    below min: the report says so (not exact) and gives the layer's own extremes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 2, stride=2, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(3)
    report = clip_singular_values_(conv, 6, max=1.0, min=0.5)
    own = spectrum(conv, 6)
    own = own[own > 1e-12]
    assert not report.exact and report.input_size == (8, 8)
    assert report.sigma_max == pytest.approx(1.0, rel=1e-12) and report.sigma_min >= 0.5 - 1e-12
    assert report.layer_sigma_max == pytest.approx(float(own.max()), rel=1e-9)
    assert report.layer_sigma_min == pytest.approx(float(own.min()), rel=1e-6)
    assert report.layer_sigma_min < 0.5                        # what "not exact" means here


def bad_clip_calls():
    return [
        (nn.Conv1d(2, 2, 1), {}, dict(max=1.0), "nn.Conv2d or an nn.Linear"),
        (nn.Conv2d(2, 2, 1), {}, dict(max=1.0, min=2.0), "larger than max"),
        (nn.Conv2d(2, 2, 1), {}, dict(max=-1.0), "max must be"),
        (nn.Conv2d(2, 2, 1), {}, dict(min=-0.5), "min must be"),
        (nn.Conv2d(2, 2, 1), {}, dict(max=math.nan), "max must be"),
        (nn.Conv2d(2, 2, 1), {}, dict(max=0.0), "max must be a finite number > 0"),
        (nn.Conv2d(2, 2, 1), {}, {}, "neither"),
        (nn.Conv2d(2, 2, 1), {}, dict(max=1.0, iterations=0), "iterations"),
        (nn.Conv2d(2, 2, 3, padding=1), {}, dict(max=1.0), "needs input_size"),
        (nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"), dict(input_size=5), dict(max=1.0),
         "divisible"),
        (nn.Conv2d(2, 2, 5, padding=2, padding_mode="circular"), dict(input_size=4), dict(max=1.0),
         "larger than input_size"),
        (nn.Conv2d(2, 2, 3), dict(input_size=2), dict(max=1.0), "smaller than the kernel"),
        (spectral_norm(nn.Conv2d(2, 2, 1)), {}, dict(max=1.0), "parametrised"),
        (nn.Linear(3, 2), dict(input_size=4), dict(max=1.0), "input_size is for convs"),
    ]


@pytest.mark.parametrize("index", range(len(bad_clip_calls())))
def test_clipping_refuses_bad_input_and_leaves_the_layer_unchanged(index):
    layer, args, bounds, message = bad_clip_calls()[index]
    before = copy.deepcopy(layer.state_dict())
    with pytest.raises(UserError, match=message):
        clip_singular_values_(layer, **args, **bounds)
    after = layer.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_report_class():
    report = clip_singular_values_(nn.Conv2d(2, 2, 1).double(), max=1.0)
    assert isinstance(report, ClippingReport)
