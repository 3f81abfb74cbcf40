"""find_units' fallback by structure (procres.diagnostics.structure) and NormRecorder on its units.

References: the residual layers each tiny Hugging Face config has, written out from the config
(tests/helpers/hf_models.py); the units torch.fx tracing finds on models it can trace; and r_l
from ``retain_grad()`` on each layer's input and output hidden states, in float64.  The Hugging
Face tests skip without transformers; the torch-only ones always run.
"""

import pytest
import torch
from torch import nn

from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.structure import residual_layers
from procres.diagnostics.units import find_units, units_by_name
from procres.errors import UserError
from user_models import TinyConvNeXt, tiny_bottleneck_resnet, tiny_resnet

pytestmark = pytest.mark.usefixtures("single_threaded")
HF = [(family, head) for family in ("resnet", "convnext", "vit", "swin", "bert", "gpt2", "llama")
      for head in (False, True)]


def _tiny(family, head=True):
    pytest.importorskip("transformers")
    import hf_models

    torch.manual_seed(0)
    return hf_models.FAMILIES[family](head=head), hf_models.example_input(family), \
        *hf_models.residual_layers(family, head)


def _reference_ratios(model, units, x) -> tuple[list, list]:
    """NormRecorder's r_l and, in the same float64 training-mode pass, ||dE/dx_l|| / ||dE/dx_{l+1}||
    from retain_grad on each layer's input (positional, else ``hidden_states=``) and output."""
    model.double().train()
    if x.is_floating_point():      # a data tensor can be unit 0's input (nn.TransformerEncoder)
        x = x.double().requires_grad_()
    kept = {}

    def keep(module, args, kwargs, out):
        x_in = args[0] if args else kwargs["hidden_states"]
        x_out = out if isinstance(out, torch.Tensor) else out[0]
        for t in (x_in, x_out):
            t.retain_grad()
        kept[module] = (x_in, x_out)

    hooks = [u.module.register_forward_hook(keep, with_kwargs=True) for u in units]
    try:
        with NormRecorder(units) as rec:
            out = model(x)
            y = out if isinstance(out, torch.Tensor) else out[0]
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            (y * g).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    ref = [float(kept[u.module][0].grad.norm() / kept[u.module][1].grad.norm()) for u in units]
    return rec.summary()["ratio"], ref


# ---------------------------------------------------------------- Hugging Face models
@pytest.mark.parametrize("family,head", HF)
def test_hf_units_are_the_residual_layers(family, head):
    model, x, glob, names = _tiny(family, head)
    units = find_units(model, x)
    assert units.names() == names                              # count, order, names
    assert units.rule.startswith("structure: ") and "torch.fx cannot trace" in units.rule   # why the fallback
    assert units.glob == glob
    assert units_by_name(model, units.glob, x).names() == names   # the glob round-trips
    assert [u.module for u in units] == [model.get_submodule(n) for n in names]


def test_hf_resnet_downsampling_layers_are_projection_units():
    model, x, _, _ = _tiny("resnet")
    units = find_units(model, x)
    assert [u.kind for u in units] == ["identity", "identity", "projection", "identity", "projection", "identity"]
    assert units[2].skip == "resnet.encoder.stages.1.layers.0.shortcut"


@pytest.mark.parametrize("family", ["resnet", "convnext", "vit", "swin", "bert", "gpt2", "llama"])
def test_hf_ratios_equal_retain_grad(family):
    model, x, _, _ = _tiny(family)
    units = find_units(model, x)
    recorded, ref = _reference_ratios(model, units, x)
    assert len(recorded) == len(units) and all(r > 0 for r in ref)
    assert recorded == pytest.approx(ref, rel=1e-6, abs=0)


def test_hf_model_is_restored_after_the_example_forward():
    model, x, _, _ = _tiny("resnet")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_units(model, x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BN statistics included


def test_a_token_unit_is_refused_in_one_sentence():
    model, x, _, _ = _tiny("gpt2")
    with pytest.raises(UserError, match=r"unit 0 \(Embedding\) has an integer first input \(dtype int64"):
        with NormRecorder([model.transformer.wte]):
            model.train()(x)


# ---------------------------------------------------------------- torch models (no transformers)
def test_structure_agrees_with_tracing_on_traceable_models():
    for model in (tiny_resnet(), tiny_bottleneck_resnet(), TinyConvNeXt()):
        x = torch.randn(2, 3, 32, 32)
        traced, found = find_units(model, x), residual_layers(model, x)
        assert [(name, kind, skip) for name, kind, _, skip in found.layers] == [(u.name, u.kind, u.skip) for u in traced]
        assert found.glob == traced.glob


def test_a_stage_with_downsampling_in_front_gives_a_list_of_names():
    model = TinyConvNeXt()                         # stages.i = Sequential(downsampling, blocks...)
    found = residual_layers(model, torch.randn(2, 3, 32, 32))
    assert found.glob == ["stages.0.1", "stages.0.2", "stages.1.1"]   # 'stages.*.*' would take the downsampling


def test_torch_transformer_encoder():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    x = torch.randn(2, 5, 16)
    units = find_units(model, x)                   # fx cannot trace it; its fused fast path stays off
    assert units.names() == ["layers.0", "layers.1", "layers.2"] and units.glob == "layers.*"
    recorded, ref = _reference_ratios(model, units, x)
    assert recorded == pytest.approx(ref, rel=1e-6, abs=0)


class _KeywordLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Tanh())

    def forward(self, hidden_states, attention_mask=None):
        return hidden_states + self.f(hidden_states)


class _KeywordEncoder(nn.Module):
    """Calls its layers with keywords only, as five Hugging Face models do (``hidden_states=``)."""

    def __init__(self, dim=6, depth=3):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.layers = nn.ModuleList([_KeywordLayer(dim) for _ in range(depth)])

    def forward(self, x):
        h = self.embed(x)
        if h.sum() > -1e30:                        # a data-dependent branch: torch.fx cannot trace it
            for layer in self.layers:
                h = layer(hidden_states=h, attention_mask=None)
        return h


def test_layers_called_with_keywords_only_are_found_and_recorded():
    model = _KeywordEncoder()
    x = torch.randn(3, 5, 4)
    units = find_units(model, x)
    assert units.names() == ["layers.0", "layers.1", "layers.2"] and units.rule.startswith("structure: ")
    recorded, ref = _reference_ratios(model, units, x)
    assert recorded == pytest.approx(ref, rel=1e-9, abs=0)


def test_same_shape_children_without_a_skip_are_refused():
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])
    with pytest.raises(UserError, match="no list of same-class modules that add their input"):
        find_units(model, torch.randn(2, 8))


def test_a_skip_from_a_submodule_output_is_not_the_containers_skip():
    """A stage ``down(x)`` then blocks ``h + f(h)``: the stage adds nothing to its own input, so the
    stages are not units, the blocks are (two branches from x are needed, not one chain)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(8, 8)

        def forward(self, h):
            return h + self.f(h)

    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), Block(), Block()) for _ in range(2)])
    found = residual_layers(model, torch.randn(2, 8))
    assert [(name, kind) for name, kind, *_ in found.layers] == [(n, "identity") for n in ("0.1", "0.2", "1.1", "1.2")]


# ---------------------------------------------------------------- one layer, and blocks outside lists
@pytest.mark.parametrize("family,config,name", [("gpt2", {"n_layer": 1}, "transformer.h.0"),
                                                ("bert", {"num_hidden_layers": 1}, "bert.encoder.layer.0")])
def test_a_one_layer_hf_model_has_its_layer_as_the_unit(family, config, name):
    pytest.importorskip("transformers")
    import hf_models

    torch.manual_seed(0)
    model, x = hf_models.FAMILIES[family](**config), hf_models.example_input(family)
    units = find_units(model, x)
    assert units.names() == [name] and units.rule.startswith("structure: 1 ")
    assert units_by_name(model, units.glob, x).names() == [name]
    recorded, ref = _reference_ratios(model, units, x)
    assert recorded == pytest.approx(ref, rel=1e-6, abs=0)


class _Block(nn.Module):
    """x + W relu(x), behind a branch on tensor data that torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        if x.abs().sum() < 0:
            return x
        return x + self.f(torch.relu(x))


class _NumberedBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1, self.block2, self.block3 = _Block(), _Block(), _Block()

    def forward(self, x):
        return self.block3(self.block2(self.block1(x)))


class _DictOfBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({"first": _Block(), "second": _Block()})

    def forward(self, x):
        for block in self.blocks.values():
            x = block(x)
        return x


@pytest.mark.parametrize("model,names", [(nn.Sequential(_Block()), ["0"]),
                                         (_NumberedBlocks(), ["block1", "block2", "block3"]),
                                         (_DictOfBlocks(), ["blocks.first", "blocks.second"])],
                         ids=["one-block-sequential", "block1..block3", "module-dict"])
def test_blocks_of_one_sequential_numbered_attributes_or_a_module_dict(model, names):
    x = torch.randn(3, 4)
    units = find_units(model, x)
    assert units.names() == names and units.rule.startswith("structure: ")
    assert units_by_name(model, units.glob, x).names() == names
    # reference: r_l from retain_grad on each block's input and output
    recorded, ref = _reference_ratios(model, units, x)
    assert recorded == pytest.approx(ref, rel=1e-6, abs=0)


class _NoLevels(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.body = nn.Linear(4, 4), _Block()

    def forward(self, x):
        if x.abs().sum() < 0:
            return x
        return self.body(self.stem(x))


class _TwoStages(nn.Module):
    """Stages of (downsampling, non-residual blocks): the level 'stages.*.*' holds two classes."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), _Plain(), _Plain()) for _ in range(2)])

    def forward(self, x):
        if x.abs().sum() < 0:
            return x
        for stage in self.stages:
            x = stage(x)
        return x


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.f(x))


@pytest.mark.parametrize("model", [_NoLevels(), _TwoStages()], ids=["no-levels", "two-classes-in-a-level"])
def test_every_pattern_a_refusal_suggests_is_accepted_by_units_by_name(model):
    from procres.diagnostics.units import UnitsNotFound

    x = torch.randn(2, 4)
    with pytest.raises(UnitsNotFound) as err:
        find_units(model, x)
    for pattern in err.value.suggestions:
        units_by_name(model, pattern, x)                    # raises on a pattern that selects nothing
    if not err.value.suggestions:
        assert f"a list of module names will do (the children of {type(model).__name__}: stem, body)" in str(err.value)
    else:
        assert err.value.suggestions[0] == ["stages.0.1", "stages.0.2", "stages.1.1", "stages.1.2"]
