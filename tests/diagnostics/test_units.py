"""procres.diagnostics.units (residual units of any model) and NormRecorder on them.

References: the units each test model is known to have (they are written in tests/helpers/user_models.py
in the styles of torchvision, ConvNeXt and pre-norm transformers), and r_l from ``retain_grad()``
on x_l and x_{l+1} of the untraced model, in float64.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.names import name_pattern, repeated_blocks
from procres.diagnostics.units import find_units, units_by_name
from user_models import (BasicBlock, DataDependent, DilatedNet, HFStyleEncoder, MaskedNet, PreActPair,
                         StandardisedConv2d, TinyConvNeXt, tiny_bottleneck_resnet, tiny_resnet, tiny_vit)

pytestmark = pytest.mark.usefixtures("single_threaded")
F64 = torch.float64


@pytest.mark.parametrize("factory, size, expected", [
    (tiny_resnet, 32, [("layer1.0", "identity", "identity"), ("layer1.1", "identity", "identity"),
                       ("layer2.0", "projection", "layer2.0.downsample"),
                       ("layer3.0", "projection", "layer3.0.downsample"),
                       ("layer4.0", "projection", "layer4.0.downsample")]),
    (tiny_bottleneck_resnet, 32, [("layer1.0", "projection", "layer1.0.downsample"),
                                  ("layer2.0", "projection", "layer2.0.downsample"),
                                  ("layer2.1", "identity", "identity"),
                                  ("layer3.0", "projection", "layer3.0.downsample"),
                                  ("layer4.0", "projection", "layer4.0.downsample")]),
    (TinyConvNeXt, 32, [("stages.0.1", "identity", "identity"), ("stages.0.2", "identity", "identity"),
                        ("stages.1.1", "identity", "identity")]),
    (tiny_vit, 16, [("blocks.0:add0", "identity", "identity"), ("blocks.0:add1", "identity", "identity"),
                    ("blocks.1:add0", "identity", "identity"), ("blocks.1:add1", "identity", "identity")]),
    (DilatedNet, 12, [("block", "identity", "identity")]),
    (MaskedNet, 8, [("blocks.0", "identity", "identity"), ("blocks.1", "identity", "identity")]),
])
def test_discovered_units_equal_the_known_ones(factory, size, expected):
    model = factory()
    units = find_units(model, torch.randn(2, 3, size, size))
    assert [(u.name, u.kind, u.skip) for u in units] == expected
    for u in units:
        if ":" in u.name:                                      # a sub-graph unit: probes, no module
            assert u.module is None and u.probes is not None and u.scope is model.get_submodule(u.name.split(":")[0])
        else:
            assert u.module is model.get_submodule(u.name) and u.probes is None
    assert (units.module is model) == all(u.probes is None for u in units)


def test_a_skip_through_a_module_with_its_own_forward_is_named_by_that_module():
    block = BasicBlock(3, 6, stride=2, downsample=StandardisedConv2d(3, 6, 1, stride=2))   # traced through
    units = find_units(nn.Sequential(nn.Conv2d(3, 3, 3), block), torch.randn(2, 3, 10, 10))
    assert [(u.name, u.kind, u.skip) for u in units] == [("1", "projection", "1.downsample")]


def test_the_zoo_models_units_match_their_block_kinds():
    from procres.models.registry import create_model

    for name in ("resnet8", "preresnet11", "procresnet13"):
        model = create_model(name, image_size=16)
        units = find_units(model, torch.randn(2, 3, 16, 16))
        residual = [(f"blocks.{i}", k) for i, k in enumerate(model.block_kinds) if k in ("identity", "projection")]
        assert [(u.name, u.kind) for u in units] == residual


def retain_grad_ratios(model, units, x, y):
    """r_l from retain_grad on each module unit's input and output tensors."""
    pairs = []

    def keep(module, args, out):
        for t in (args[0], out):
            if t.requires_grad:
                t.retain_grad()
        pairs.append((args[0], out))

    hooks = [u.module.register_forward_hook(keep) for u in units]
    F.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    model.zero_grad()
    return [float(a.grad.norm() / b.grad.norm()) for a, b in pairs]


@pytest.mark.parametrize("factory", [tiny_resnet, tiny_bottleneck_resnet, TinyConvNeXt, MaskedNet])
def test_module_units_ratios_equal_retain_grad(factory):
    torch.manual_seed(0)
    model = factory().to(F64).train()
    x = torch.randn(4, 3, 32, 32, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    units = find_units(model, x)
    ref = retain_grad_ratios(model, units, x, y)
    with NormRecorder(units) as rec:
        F.cross_entropy(units.module(x), y).backward()
    assert rec.names == units.names()
    torch.testing.assert_close(torch.tensor(rec.summary()["ratio"]), torch.tensor(ref), rtol=1e-9, atol=0)


def test_sub_graph_units_of_a_pre_norm_transformer_equal_retain_grad():
    torch.manual_seed(0)
    model = tiny_vit().to(F64).train()
    x = torch.randn(3, 3, 16, 16, dtype=F64)
    y = torch.tensor([1, 5, 7])
    units = find_units(model, x)
    assert isinstance(units.module, torch.fx.GraphModule) and units.module is not model
    torch.testing.assert_close(units.module(x), model(x))      # the same function, the same parameters
    assert {id(p) for p in units.module.parameters()} == {id(p) for p in model.parameters()}
    model.keep = []
    F.cross_entropy(model(x), y).backward()
    xs, model.keep = model.keep, None
    ref = [float(a.grad.norm() / b.grad.norm()) for a, b in zip(xs, xs[1:])]
    model.zero_grad()
    with NormRecorder(units) as rec:
        F.cross_entropy(units.module(x), y).backward()
    summary = rec.summary()
    torch.testing.assert_close(torch.tensor(summary["ratio"]), torch.tensor(ref), rtol=1e-9, atol=0)
    fwd_in = torch.tensor(summary["fwd_in"], dtype=F64)
    torch.testing.assert_close(fwd_in, torch.stack([t.detach().norm() for t in xs[:-1]]), rtol=1e-9, atol=0)


def test_find_units_moves_no_statistics_and_its_traced_module_keeps_the_modes():
    torch.manual_seed(0)
    model = PreActPair().to(F64)
    for bn in (model.f1[0], model.f2[0]):                     # trained-looking running statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    units = find_units(model, torch.randn(1, 3, 8, 8, dtype=F64))     # one example, training mode
    assert units.names() == ["add0", "add1"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.randn(3, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(units.module.eval()(x), model.eval()(x))  # eval: running statistics
    torch.testing.assert_close(units.module.train()(x), model.train()(x))


def test_units_by_name_glob_and_forward_order():
    class Swapped(nn.Module):                                  # registered b, a; called a, b
        def __init__(self):
            super().__init__()
            self.b = BasicBlock(3, 3)
            self.a = BasicBlock(3, 3)

        def forward(self, x):
            return self.b(self.a(x))

    model = Swapped()
    assert units_by_name(model, "?").names() == ["b", "a"]
    assert units_by_name(model, "?", torch.randn(1, 3, 8, 8)).names() == ["a", "b"]
    resnet = tiny_resnet()
    assert units_by_name(resnet, "layer*.*").names() == ["layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0"]
    assert units_by_name(resnet, ["layer[12].0", "layer4.0.down*"]).names() == [
        "layer1.0", "layer2.0", "layer4.0.downsample"]
    assert name_pattern("layer*.*").fullmatch("layer1.0") and not name_pattern("layer*.*").fullmatch("layer1.0.conv1")
    with pytest.raises(ValueError, match=r"'layer9\.\*'.*conv1, bn1"):
        units_by_name(resnet, "layer9.*")


def test_norm_recorder_takes_names_with_the_model():
    torch.manual_seed(0)
    model = tiny_resnet().to(F64)
    x, y = torch.randn(2, 3, 32, 32, dtype=F64), torch.tensor([0, 1])
    summaries = []
    for units, kw in ((["layer1.1", "layer2.0"], {"model": model}), ([model.layer1[1], model.layer2[0]], {}),
                      (units_by_name(model, "layer[12].[10]", x)[1:], {})):
        with NormRecorder(units, **kw) as rec:
            F.cross_entropy(model(x), y).backward()
        summaries.append(rec.summary()["ratio"])
        model.zero_grad()
    assert summaries[0] == summaries[1] == summaries[2]
    with pytest.raises(ValueError, match="'layer1.1'.*model="):
        NormRecorder(["layer1.1"])
    with pytest.raises(ValueError, match="no submodule 'layer7'"):
        NormRecorder(["layer7"], model=model)


def test_norm_recorder_refuses_a_list_input():
    class Concat(nn.Module):                                   # DenseNet's layers take every earlier map
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 3, 1)

        def forward(self, features):
            return self.conv(torch.cat(features, 1))

    unit, x = Concat(), torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"unit 0 \(Concat\) has a non-tensor first input \(list\)"):
        with NormRecorder([unit]):
            unit([x, x]).sum().backward()


def test_untraceable_models_fall_back_on_structure_and_say_which_rule():
    untraceable = DataDependent()                              # a Python branch on tensor data
    untraceable.block = nn.Sequential(BasicBlock(3, 3), BasicBlock(3, 3))
    units = find_units(untraceable, torch.randn(1, 3, 8, 8))
    assert units.names() == ["block.0", "block.1"] and [u.kind for u in units] == ["identity", "identity"]
    assert units.rule.startswith("structure: 2 BasicBlock in 'block.*'") and "torch.fx cannot trace" in units.rule
    assert units.glob == "block.*" and units_by_name(untraceable, units.glob).names() == units.names()
    traced = find_units(tiny_resnet(), torch.randn(1, 3, 32, 32))
    assert traced.rule.startswith("traced: ") and traced.glob == "layer*.*"
    assert find_units(tiny_vit(), torch.randn(1, 3, 16, 16)).glob is None      # sub-graph units have no name


class _Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w


class _Maybe(nn.Module):
    """A residual layer or not, by construction: a level of both qualifies for nothing."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.f = nn.Sequential(_Affine(), _Affine())

    def forward(self, x):
        return x + self.f(x) if self.skip else self.f(x)


class _HalfResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Maybe(True), _Maybe(False)])

    def forward(self, x):
        if x.sum() > 0:                                        # torch.fx cannot trace it
            for layer in self.layers:
                x = layer(x)
        return x


def test_unit_free_models_are_refused_in_one_sentence_with_residual_globs_first():
    with pytest.raises(ValueError, match=r"torch.fx cannot trace DataDependent \(TraceError.*units_by_name") as err:
        find_units(DataDependent(), torch.randn(1, 3, 8, 8))   # one block, no list of them
    assert "\n" not in str(err.value)
    # the residual level first although the level inside it is the inner one
    with pytest.raises(ValueError, match=r"--units PATTERN.*repeated blocks of _HalfResidual: 'layers\.\*', "
                                         r"'layers\.\*\.f\.\*'$"):
        find_units(_HalfResidual(), torch.ones(2, 3))
    assert repeated_blocks(_HalfResidual()) == ["layers.*.f.*", "layers.*"]   # without an example: inner first
    assert repeated_blocks(tiny_resnet()) == ["layer*.*"]                # layer1.0, layer1.1, layer2.0, ...
    assert repeated_blocks(HFStyleEncoder()) == ["layer.*"]
    with pytest.raises(ValueError, match="no residual addition found in Sequential"):
        find_units(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="failed on the example input"):
        find_units(tiny_resnet(), torch.randn(1, 5, 32, 32))
