"""Tests for procres.models: registry, shapes, parameter counts, unit structure, transitions."""

import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from procres import cli
from procres.constraints.hooks import attach_procrustes
from procres.spectral.spectra import conv_singular_values
from procres.errors import UserError
from procres.models.net import CifarNet
from procres.models.preact import plainpre, PreActBottleneck, preresnet
from procres.models.procresnet import plainproc, procresnet
from procres.models.registry import create_model, list_models, register_model
from procres.models.resnet import BasicBlock, plain, resnet
from procres.models.registry import _MODELS

# Published CIFAR-10 parameter counts in millions, as printed (docs/theory.md section 3). The printed
# precision matters: "1.7" is a rounded figure, the exact ResNet-110 count is 1.73M.
PUBLISHED = {
    "resnet20": "0.27", "resnet32": "0.46", "resnet44": "0.66", "resnet56": "0.85",
    "resnet110": "1.7", "resnet1202": "19.4",
    "preresnet164": "1.71", "preresnet272": "2.82", "preresnet632": "6.52", "preresnet1001": "10.32",
    "procresnet166": "1.72", "procresnet274": "2.83", "procresnet634": "6.53", "procresnet1003": "10.33",
}
REQUIRED = (
    [f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]
    + [f"preresnet{d}" for d in (164, 272, 632, 1001)]
    + [f"procresnet{d}" for d in (166, 274, 634, 1003)]
    + [f"plain{d}" for d in (20, 32, 44, 56, 110, 1202)]
    + [f"plainpre{d}" for d in (164, 272, 632, 1001)]
    + [f"plainproc{d}" for d in (166, 274, 634, 1003)]
    + ["procresnet166k2"]
)
SMALL = {"resnet": (resnet, 14), "plain": (plain, 14), "preresnet": (preresnet, 20),
         "plainpre": (plainpre, 20), "procresnet": (procresnet, 22), "plainproc": (plainproc, 22)}


pytestmark = pytest.mark.usefixtures("single_threaded")  # small SVDs crawl with oversubscribed threads


def _depth(name):
    return int(re.search(r"\d+", name).group())


def _by_depth(names):
    """Forward tests of nets deeper than 200 layers are slow: mark them."""
    return [pytest.param(n, marks=pytest.mark.slow) if _depth(n) > 200 else n for n in names]


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _meta(name):
    with torch.device("meta"):  # shapes only: the 1000-layer nets cost no memory and no init
        return create_model(name)


# ---------------------------------------------------------------- independent parameter counts
def _bn(c):
    return 2 * c


def _resnet_params(depth, classes=10, c_in=3):
    n = (depth - 2) // 6
    total = 9 * c_in * 16 + _bn(16) + 64 * classes + classes
    c = 16
    for w in (16, 32, 64):
        for _ in range(n):
            total += 9 * c * w + _bn(w) + 9 * w * w + _bn(w)
            c = w
    return total


def _bottleneck(c, p, projection):
    branch = _bn(c) + c * p + _bn(p) + 9 * p * p + _bn(p) + p * 4 * p
    return branch + (_bn(c) + c * 4 * p if projection else 0)


def _preresnet_params(depth, classes=10, c_in=3):
    n = (depth - 2) // 9
    total = 9 * c_in * 16 + _bn(16) + _bn(256) + 256 * classes + classes
    c = 16
    for p in (16, 32, 64):
        total += _bottleneck(c, p, True) + (n - 1) * _bottleneck(4 * p, p, False)
        c = 4 * p
    return total


def _procresnet_params(depth, classes=10, c_in=3, k=1):
    n = (depth - 4) // 9
    total = 9 * c_in * 64 + k * k * (64 * 128 + 128 * 256) + _bn(256) + 256 * classes + classes
    return total + sum(n * _bottleneck(4 * p, p, False) for p in (16, 32, 64))


FORMULA = {"resnet": _resnet_params, "plain": _resnet_params, "preresnet": _preresnet_params,
           "plainpre": _preresnet_params, "procresnet": _procresnet_params, "plainproc": _procresnet_params}


# ---------------------------------------------------------------- registry
def test_registry_has_every_required_name():
    names = list_models()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet20"):
        create_model("resnt20")
    with pytest.raises(ValueError, match="'nonsense'"):
        create_model("nonsense")


def test_unregistered_family_depth_names():
    model = create_model("procresnet22k2", num_classes=4, in_channels=1, image_size=16)
    assert (model.depth, model.family, model.transitions()[1][0].kernel_size) == (22, "procresnet", (2, 2))
    assert create_model("plain8").block_kinds == ["plain"] * 3
    with pytest.raises(ValueError, match="14"):
        create_model("procresnet14")
    with pytest.raises(ValueError, match="unknown model 'resnet8k2'"):
        create_model("resnet8k2")


@pytest.mark.parametrize("build, words", [
    (lambda: BasicBlock(16, 32, 2, kind="identity"), "stride 2, 16 -> 32"),
    (lambda: PreActBottleneck(64, 32, 1, kind="identity"), "64 -> 128"),
    (lambda: BasicBlock(16, 16, kind="transition"), "'transition'"),
    (lambda: PreActBottleneck(64, 16, kind="skip"), "'skip'"),
    (lambda: CifarNet(nn.Identity(), [nn.Identity()], ["identity", "plain"], nn.Identity(), family="x", depth=1,
                      image_size=8), "1 units"),
    (lambda: CifarNet(nn.Identity(), [nn.Identity()], ["residual"], nn.Identity(), family="x", depth=1,
                      image_size=8), "'residual'"),
])
def test_unit_and_net_arguments_are_checked_as_user_errors(build, words):
    # UserError, not assert: the checks hold under python -O too
    with pytest.raises(UserError, match=re.escape(words)):
        build()


def test_create_model_passes_keyword_arguments_to_the_factory():
    model = create_model("procresnet166", image_size=16, num_classes=7, transition_kernel=2)
    assert model.transitions()[1][0].kernel_size == (2, 2) and model.head[-1].out_features == 7
    assert model.transitions()[1][1] == 16  # image_size reached the factory
    projected = create_model("procresnet13", project_transitions=True)
    sv = conv_singular_values(projected.transitions()[1][0].weight.detach().double(), 32, stride=2)
    assert torch.allclose(sv[sv > 1e-6], torch.full_like(sv[sv > 1e-6], 2**0.5))
    with pytest.raises(TypeError, match="transition_kernel"):
        create_model("resnet20", transition_kernel=2)


def test_list_models_filter_is_an_fnmatch_pattern_or_a_substring():
    assert list_models(filter="procresnet*") == ["procresnet166", "procresnet274", "procresnet634",
                                                 "procresnet1003", "procresnet166k2"]
    assert list_models(filter="*res*16?") == ["preresnet164", "procresnet166"]
    assert list_models(filter="166k2") == ["procresnet166k2", "plainproc166k2"]  # no wildcard: substring
    assert list_models(filter="") == list_models() and list_models(filter="nope*") == []


def test_cli_models_filter_uses_the_pattern(capsys):
    assert cli.main(["models", "--filter", "plainpre1*"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["plainpre164", "plainpre1001"]


def test_register_model_refuses_duplicates():
    with pytest.raises(ValueError, match="resnet20"):
        register_model("resnet20")(lambda **kw: None)

    @register_model
    def _tiny_test_net(*, num_classes, in_channels, image_size):
        return resnet(8, num_classes=num_classes, in_channels=in_channels, image_size=image_size)

    try:
        assert "_tiny_test_net" in list_models()
        model = create_model("_tiny_test_net", num_classes=3, in_channels=1, image_size=8)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    finally:
        del _MODELS["_tiny_test_net"]


@pytest.mark.parametrize(
    "factory, bad",
    [(resnet, 21), (resnet, 2), (preresnet, 164 + 1), (procresnet, 164), (plainproc, 4), (resnet, 20.0)],
)
def test_bad_depth_is_named(factory, bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        factory(bad)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="30"):
        resnet(20, image_size=30)
    with pytest.raises(ValueError, match="in_channels"):
        resnet(20, in_channels=0)
    with pytest.raises(ValueError, match="3"):
        procresnet(13, transition_kernel=3)


# ---------------------------------------------------------------- parameter counts (no forward)
@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    model = _meta(name)
    count = _count(model)
    family = re.match(r"[a-z]+", name).group()
    k = 2 if name.endswith("k2") else 1
    kwargs = {"k": k} if family in ("procresnet", "plainproc") else {}
    assert model.depth == _depth(name)
    assert count == FORMULA[family](model.depth, **kwargs)
    residual_twin = {"plain": "resnet", "plainpre": "preresnet", "plainproc": "procresnet"}.get(family)
    if residual_twin:
        assert count == _count(_meta(name.replace(family, residual_twin, 1)))
    if name in PUBLISHED:
        printed = PUBLISHED[name]
        published = float(printed) * 1e6
        decimals = len(printed.split(".")[1])
        # 0.5%, or half a unit of the last printed digit where the published figure is coarser
        tolerance = max(0.005 * published, 0.5 * 10 ** (6 - decimals))
        assert abs(count - published) <= tolerance, (count, printed)


# ---------------------------------------------------------------- forward / backward / structure
@pytest.mark.parametrize("name", _by_depth(list_models()))
def test_forward_backward_and_stem_blocks_head(name):
    size = 32 if _depth(name) <= 56 else 16  # the deep nets at 16x16 keep the file fast
    model = create_model(name, image_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    if not name.startswith("plain"):
        assert all(torch.isfinite(g).all() for g in grads)
    # deep plain twins really do explode (stem gradient ~1e7 at plain110, inf/nan from ~270
    # layers on a 2-image batch): the effect the paper is about, so only the head is checked
    assert all(torch.isfinite(p.grad).all() for p in model.head.parameters())
    assert len(model.block_kinds) == len(model.blocks)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.head(model.blocks(model.stem(x))), model(x))


@pytest.mark.parametrize("family, k", [(f, 1) for f in SMALL] + [("procresnet", 2), ("plainproc", 2)])
def test_small_grayscale_16x16(family, k):
    factory, depth = SMALL[family]
    kwargs = {"transition_kernel": k} if family in ("procresnet", "plainproc") else {}
    model = factory(depth, num_classes=7, in_channels=1, image_size=16, **kwargs)
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 7)
    out.sum().backward()


@pytest.mark.parametrize("family", SMALL)
def test_block_kinds(family):
    factory, depth = SMALL[family]
    kinds = factory(depth).block_kinds
    n = 2  # units per stage at the SMALL depths
    skip = "plain" if family.startswith("plain") else "identity"
    expected = {
        "resnet": ["identity"] * n + (["projection"] + ["identity"] * (n - 1)) * 2,
        "plain": ["plain"] * 3 * n,
        "preresnet": (["projection"] + ["identity"] * (n - 1)) * 3,
        "plainpre": (["projection"] + ["plain"] * (n - 1)) * 3,
        "procresnet": [skip] * n + ["transition"] + [skip] * n + ["transition"] + [skip] * n,
        "plainproc": [skip] * n + ["transition"] + [skip] * n + ["transition"] + [skip] * n,
    }[family]
    assert kinds == expected
    big = _meta("procresnet166").block_kinds
    assert big.count("identity") == 54 and [i for i, k in enumerate(big) if k == "transition"] == [18, 37]


def _last_branch_conv(unit):
    convs = [m for name, m in unit.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith("shortcut")]
    return convs[-1]


@pytest.mark.parametrize("family", SMALL)
def test_zeroed_branch_is_identity_only_for_identity_skips(family):
    """Functional skip check: with the branch's last conv zeroed, an identity unit maps x to x,
    while a plain unit (and a projection unit) does not."""
    factory, depth = SMALL[family]
    model = factory(depth, in_channels=1, image_size=16).eval()
    with torch.no_grad():
        inputs, h = [], model.stem(torch.randn(2, 1, 16, 16))
        for unit in model.blocks:  # each unit's input, from the untouched net
            inputs.append(h)
            h = unit(h)
        for unit, kind, x in zip(model.blocks, model.block_kinds, inputs):
            if kind == "transition":
                continue
            _last_branch_conv(unit).weight.zero_()
            out = unit(x)
            if kind == "identity":
                assert torch.equal(out, x)
            else:
                assert out.shape != x.shape or not torch.allclose(out, x)
    assert any(k == ("plain" if family.startswith("plain") else "identity") for k in model.block_kinds)


def test_procresnet166_every_residual_skip_is_identity():
    model = procresnet(166, image_size=16).eval()
    with torch.no_grad():
        h = model.stem(torch.randn(1, 3, 16, 16))
        for unit, kind in zip(model.blocks, model.block_kinds):
            if kind == "identity":
                _last_branch_conv(unit).weight.zero_()
                assert torch.equal(unit(h), h)
            h = unit(h)


@pytest.mark.parametrize("image_size", [32, 16])
@pytest.mark.parametrize("factory", [procresnet, plainproc])
def test_transitions_are_the_convs_with_their_input_sizes(factory, image_size):
    model = factory(13, image_size=image_size)
    pairs = model.transitions()
    in_blocks = [u for u, k in zip(model.blocks, model.block_kinds) if k == "transition"]
    assert [c for c, _ in pairs] == [model.stem] + in_blocks
    assert [s for _, s in pairs] == [image_size, image_size, image_size // 2]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c, _ in pairs] == [
        (3, 64, (3, 3), (1, 1)), (64, 128, (1, 1), (2, 2)), (128, 256, (1, 1), (2, 2))]
    seen = {}

    def record(module, inputs, output):
        seen[module] = (inputs[0].shape[-1], output.shape[-1])

    hooks = [c.register_forward_hook(record) for c, _ in pairs]
    model(torch.randn(2, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    # input_size is what the conv reads; its output (the FFT grid) is input_size // stride
    assert [seen[c] for c, _ in pairs] == [(s, s // c.stride[0]) for c, s in pairs]
    model.double()
    assert all(c.weight.dtype == torch.float64 for c, _ in model.transitions())


def test_models_without_projected_layers_have_no_transitions():
    for model in (resnet(8), plain(8), preresnet(11), plainpre(11)):
        assert model.transitions() == []


def test_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    w = procresnet(13).blocks[-1].conv3.weight  # 1x1 conv 64 -> 256: fan_out = 256
    assert w.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)


def test_k2_transition_is_a_1x1_conv_after_space_to_depth():
    """The docstring's claim, checked directly: with orthonormal rows the backward map is an isometry."""
    torch.manual_seed(0)
    conv = procresnet(13, transition_kernel=2).transitions()[1][0]
    assert conv.kernel_size == (2, 2) and conv.stride == (2, 2)
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    w = conv.weight.detach().double()
    m = w.reshape(128, 64 * 4, 1, 1)
    assert torch.allclose(F.conv2d(x, w, stride=2), F.conv2d(F.pixel_unshuffle(x, 2), m), atol=1e-12)
    q = torch.linalg.qr(torch.randn(256, 128, dtype=torch.float64)).Q.T  # 128 x 256, orthonormal rows
    w = q.reshape(128, 64, 2, 2).requires_grad_(False)
    x.requires_grad_(True)
    g = torch.randn(2, 128, 4, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad(F.conv2d(x, w, stride=2), x, g)
    assert grad.norm().item() == pytest.approx(g.norm().item(), rel=1e-12)


# ---------------------------------------------------------------- the Procrustes projection
def test_attach_procrustes_makes_transitions_norm_preserving():
    model = procresnet(13, in_channels=1, image_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = attach_procrustes(model, opt, p=1.0)

    def nonzero_sv(conv, size):
        sv = conv_singular_values(conv.weight.detach().double(), size, stride=conv.stride[0])
        return sv[sv > 1e-6 * sv.max()]

    root2 = math.sqrt(2)
    # Kaiming init: the spectrum spreads around sqrt(2), so the check below can fail
    assert all(nonzero_sv(c, s).max() > 1.2 * root2 for c, s in model.transitions()[1:])
    model(torch.randn(4, 1, 8, 8)).logsumexp(1).mean().backward()
    opt.step()
    handle.remove()
    for conv, size in model.transitions()[1:]:  # the 1x1 stride-2 transitions: exact
        nonzero = nonzero_sv(conv, size)
        assert len(nonzero) == conv.in_channels * (size // 2) ** 2
        assert torch.allclose(nonzero, torch.full_like(nonzero, root2), rtol=1e-4)


def test_k2_transitions_project_to_isometric_backward_map():
    torch.manual_seed(0)
    unprojected = procresnet(13, image_size=8, transition_kernel=2)
    conv, size = unprojected.transitions()[1]
    assert conv_singular_values(conv.weight.detach().double(), size, stride=2).max() > 1.2
    model = procresnet(13, image_size=8, transition_kernel=2, project_transitions=True)
    for conv, size in model.transitions()[1:]:
        sv = conv_singular_values(conv.weight.detach().double(), size, stride=2)
        nonzero = sv[sv > 1e-6 * sv.max()]
        # full row rank (one singular value per output coordinate), all equal to 1: A A^T = I
        assert len(nonzero) == conv.out_channels * (size // 2) ** 2
        assert torch.allclose(nonzero, torch.ones_like(nonzero), rtol=1e-4)


# ---------------------------------------------------------------- CLI
def test_cli_models_table(capsys):
    assert cli.main(["models", "--filter", "procresnet166", "--image-size", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("procresnet166 "))
    assert "166" in row and "1,715,018" in row and "56" in row
    assert "3x3/1 16->16, 1x1/2 16->8, 1x1/2 8->4" in row
    assert any(line.startswith("procresnet166k2") for line in lines)


def test_cli_models_lists_the_transformer_families(capsys):
    from procres.models.registry import token_families

    assert token_families("transformer") == ["prenorm_transformer", "postnorm_transformer"]
    assert token_families("resnet*") == [] and token_families("") == token_families("transformer")
    assert cli.main(["models", "--filter", "transformer"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert list(rows) == ["prenorm_transformer<L>", "postnorm_transformer<L>"]
    for family, row in rows.items():
        base, per = (int(w.replace(",", "")) for w in row.split()[1:4:2])      # "8,320 + 12,704 L"
        for depth in (3, 8):               # reference: the parameters of the models built at those depths
            count = sum(p.numel() for p in create_model(f"{family[:-3]}{depth}").parameters())
            assert count == base + per * depth
    assert cli.main(["models"]) == 0
    assert "prenorm_transformer<L>" in capsys.readouterr().out
