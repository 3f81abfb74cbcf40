"""procres.constraints.hooks: the step hook's seeded decisions, state, removal and errors; the layers
of any model it projects or clips (convs="exact", linears=), checked on the dense operators."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dense_operators import impulse_operator
from procres.constraints.hooks import (ProcrustesHook, StepHook, attach_clipping, attach_procrustes,
                                       register_procrustes_hook)
from procres.diagnostics.convs import exactly_projectable, select_layers
from procres.errors import UserError
from procres.spectral.clipping import clip_singular_values_
from procres.spectral.spectra import conv_singular_values
from user_models import TinyConvNeXt

pytestmark = pytest.mark.usefixtures("single_threaded")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.trans = nn.Conv2d(4, 8, 1, stride=2, bias=False)

    def forward(self, x):
        return self.trans(torch.relu(self.conv1(x))).mean((2, 3))

    def transitions(self):
        return [(self.conv1, 8), (self.trans, 8)]


DATA = torch.randn(8, 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


def train(steps, *, p=0.5, hook_seed=0, start=0, net_state=None, hook_state=None, seen=None):
    """SGD on TinyNet over DATA[start:start + steps] with the hook attached; ``seen`` collects,
    after every step, whether ``trans`` was just projected (its 1x1 stride-2 operator is then
    exactly on target: every singular value of W is sqrt(2); an SGD step alone never lands there)."""
    torch.manual_seed(0)
    net = TinyNet().double()
    if net_state is not None:
        net.load_state_dict(net_state)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hook = attach_procrustes(net, opt, p=p, seed=hook_seed)
    if hook_state is not None:
        hook.load_state_dict(hook_state)
    if seen is not None:                       # registered after the hook: runs after it
        opt.register_step_post_hook(lambda *_: seen.append(bool(torch.allclose(
            torch.linalg.svdvals(net.trans.weight.detach()[:, :, 0, 0]),
            torch.full((4,), 2.0, dtype=torch.float64).sqrt(), rtol=1e-9, atol=0))))
    for x in DATA[start:start + steps]:
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    return net, hook


def reference_decisions(seed, steps, p=0.5, layers=2):
    """The documented rule: one torch.rand draw per layer per step from a generator seeded with
    ``seed``; a layer is projected when its draw is below p.  -> [[bool per layer] per step]."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(layers, generator=gen) < p).tolist() for _ in range(steps)]


def test_hook_is_seeded_and_reproducible():
    seen_a, seen_c = [], []
    a, ha = train(6, seen=seen_a)
    b, hb = train(6)
    assert isinstance(ha, ProcrustesHook) and ha.steps == 6
    ref_a, ref_c = reference_decisions(0, 6), reference_decisions(123, 6)
    assert ha.projections == hb.projections == sum(map(sum, ref_a))
    assert seen_a == [step[1] for step in ref_a]              # which steps projected `trans`
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c, hc = train(6, hook_seed=123, seen=seen_c)
    assert seen_c == [step[1] for step in ref_c] and hc.projections == sum(map(sum, ref_c))
    assert ref_a != ref_c                                      # so the trained weights must differ
    assert not torch.equal(a.trans.weight, c.trans.weight)


def test_hook_p_one_projects_every_step_and_p_zero_never():
    net, hook = train(3, p=1.0)
    assert hook.projections == 6
    s = conv_singular_values(net.trans.weight.detach(), 8, stride=2)[: 4 * 16]
    np.testing.assert_allclose(s.numpy(), np.sqrt(2), rtol=1e-10)
    _, hook = train(3, p=0.0)
    assert hook.projections == 0


def test_hook_remove_restores_plain_sgd():
    torch.manual_seed(0)
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hook = register_procrustes_hook(opt, net.transitions(), p=1.0)
    hook.remove()
    before = net.trans.weight.detach().clone()
    net(torch.randn(2, 1, 8, 8, dtype=torch.float64)).sum().backward()
    grad = net.trans.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(net.trans.weight.detach(), before - 0.1 * grad)
    assert hook.projections == 0


def test_hook_state_dict_round_trip_resumes_the_same_decisions():
    full, hook_full = train(8)
    part, hook_part = train(4)
    state = hook_part.state_dict()
    assert set(state) >= {"generator", "steps", "projections"}
    resumed, hook_resumed = train(4, start=4, hook_seed=999,  # the seed is overridden by the state
                                  net_state=part.state_dict(), hook_state=state)
    assert hook_resumed.steps == 8 and hook_resumed.projections == hook_full.projections
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
    # without the state the resumed run replays the first four decisions, not steps 5 to 8
    seen_fresh = []
    fresh, _ = train(4, start=4, net_state=part.state_dict(), seen=seen_fresh)
    ref = reference_decisions(0, 8)
    assert seen_fresh == [step[1] for step in ref[:4]]
    assert ref[:4] != ref[4:] and not torch.equal(fresh.trans.weight, full.trans.weight)


def test_hook_raises_floating_point_error_naming_the_diverged_layer():
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    register_procrustes_hook(opt, net.transitions(), p=1.0, names=["conv1", "trans"])
    net.trans.weight.grad = torch.full_like(net.trans.weight, float("nan"))
    with pytest.raises(FloatingPointError, match="trans has NaN.*step 1"):
        opt.step()
    zoo = TinyNet().double()
    opt = torch.optim.SGD(zoo.parameters(), lr=0.1)
    assert attach_procrustes(zoo, opt, p=1.0).names == ["conv1", "trans"]   # qualified names


def test_hook_rejects_bad_layers_and_p():
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="p must.*1.5"):
        register_procrustes_hook(opt, net.transitions(), p=1.5)
    with pytest.raises(ValueError, match=r"\(nn.Conv2d, input_size\)"):
        register_procrustes_hook(opt, [net.conv1])
    with pytest.raises(ValueError, match=r"\(7, 7\).*stride"):
        register_procrustes_hook(opt, [(net.trans, 7)])




# ----------------------------------------------------------------------------- any model's layers, clipping
def dense(conv, size):
    """The conv's own (zero-padded) operator, dense, from its impulse responses."""
    return impulse_operator(conv, size, conv.padding_mode)


def one_step(model, opt, x):
    model.train()
    opt.zero_grad()
    first = model(x)
    (first[0] if isinstance(first, tuple) else first).square().sum().backward()
    opt.step()


def test_convs_exact_selects_the_kernel_no_larger_than_stride_convs_of_a_convnext():
    torch.manual_seed(0)
    model = TinyConvNeXt(dims=(4, 8), depths=(1, 1)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = attach_procrustes(model, opt, convs="exact", example_input=x, p=1.0)
    # the 4x4 stride-4 patch embedding and the 2x2 stride-2 downsampling; not the 7x7 depthwise convs
    assert hook.names == ["stem.0", "stages.1.0.1"]
    assert not any("dwconv" in name for name in hook.names)
    one_step(model, opt, x)
    for conv, size, *_ in hook.layers:                       # exact: every non-zero value on target
        sv = torch.linalg.svdvals(dense(conv, size))
        target = math.sqrt(conv.out_channels / min(conv.out_channels, conv.in_channels * math.prod(conv.kernel_size)))
        torch.testing.assert_close(sv[sv > 1e-8 * sv[0]], torch.full_like(sv[sv > 1e-8 * sv[0]], target),
                                   rtol=1e-10, atol=0)


def test_exact_means_no_padding_and_no_dilated_taps():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 2, stride=2, padding=1), nn.Conv2d(4, 4, 2, stride=2),
                          nn.Conv2d(4, 8, 3, stride=3), nn.Conv2d(8, 8, 2, stride=4, dilation=2),
                          nn.Conv2d(8, 8, 3, padding=1))
    sites = select_layers(model, torch.randn(1, 2, 48, 48), convs="exact")
    assert [s.name for s in sites] == ["0", "2", "3"]
    assert [exactly_projectable(m) for m in model] == [True, False, True, True, False, False]


def test_linears_projects_the_named_linear_layers_to_the_target():
    torch.manual_seed(0)
    model = TinyConvNeXt(dims=(4, 8), depths=(1, 1)).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = attach_procrustes(model, opt, linears="stages.*.*.pwconv1", p=1.0)
    assert hook.names == ["stages.0.1.pwconv1", "stages.1.1.pwconv1"]
    before = model.stages[0][1].pwconv2.weight.detach().clone()
    one_step(model, opt, x)
    for name in hook.names:
        W = model.get_submodule(name).weight.detach()
        out, inp = W.shape
        torch.testing.assert_close(torch.linalg.svdvals(W), torch.full((min(out, inp),), math.sqrt(out / min(out, inp)),
                                                                       dtype=torch.float64), rtol=1e-10, atol=0)
    assert not torch.equal(model.stages[0][1].pwconv2.weight, before)          # plain SGD moved it ...
    assert not torch.allclose(torch.linalg.svdvals(model.stages[0][1].pwconv2.weight.detach()),
                              torch.tensor(1.0, dtype=torch.float64))           # ... and did not project it
    both = attach_procrustes(model, torch.optim.SGD(model.parameters(), lr=0.1), convs="exact", linears=["head"],
                             example_input=x)
    assert both.names == ["stem.0", "stages.1.0.1", "head"]


def test_attach_clipping_clips_the_selected_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5)).double()
    with torch.no_grad():
        for m in (model[0], model[2], model[4]):
            m.weight.mul_(5)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hook = attach_clipping(model, opt, max=0.8, min=0.2, convs="all", linears="all", example_input=x, iterations=30)
    assert isinstance(hook, StepHook) and not isinstance(hook, ProcrustesHook)
    assert hook.names == ["0", "2", "4"] and [size for _, size, *_ in hook.layers] == [(8, 8), (4, 4), None]
    one_step(model, opt, x)
    patch = torch.linalg.svdvals(dense(model[0], (8, 8)))
    live = patch[:8 * 16]                                     # 8 values per output pixel; the rest are zeros
    assert float(live.max()) <= 0.8 + 1e-10 and float(live.min()) >= 0.2 - 1e-10
    linear = torch.linalg.svdvals(model[4].weight.detach())
    assert float(linear.max()) <= 0.8 + 1e-10 and float(linear.min()) >= 0.2 - 1e-10
    padded = float(torch.linalg.svdvals(dense(model[2], (4, 4)))[0])   # 3x3: alternating, toward 0.8
    assert padded < 0.8 * 1.05 and hook.projections == 3


def test_every_applies_the_rule_on_every_nth_step_only():
    torch.manual_seed(0)
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hook = attach_clipping(net, opt, max=0.5, convs="trans", example_input=DATA[0], every=3)
    applied = []
    opt.register_step_post_hook(lambda *_: applied.append(hook.projections))
    for x in DATA[:7]:
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    assert applied == [0, 0, 1, 1, 1, 2, 2] and hook.steps == 7
    assert hook.state_dict()["every"] == 3


def test_the_hook_method_the_cuda_graph_step_calls_applies_the_rule():
    """training/loop.py calls ``_after_step`` itself after a graph replay (the update is in the graph)."""
    torch.manual_seed(0)
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hook = attach_clipping(net, opt, max=0.5, convs=["trans"], example_input=DATA[0])
    hook._after_step(opt, (), {})
    assert float(torch.linalg.svdvals(net.trans.weight.detach()[:, :, 0, 0]).max()) <= 0.5 + 1e-12


def bad_attach_calls():
    x = DATA[0]
    return [
        (attach_clipping, dict(max=0.5, min=0.6, convs="all", example_input=x), "larger than max"),
        (attach_clipping, dict(max=-1.0, convs="all", example_input=x), "max must be"),
        (attach_clipping, dict(max=1.0), "name the layers"),
        (attach_clipping, dict(convs="all"), "example_input"),
        (attach_clipping, dict(linears="head"), "no linear of the model matches 'head'"),
        (attach_clipping, dict(convs="nope", example_input=x), "no conv of the model matches 'nope'"),
        (attach_clipping, dict(convs="all", example_input=x, every=0), "every"),
        (attach_procrustes, dict(convs=[3], example_input=x), "convs must be names"),
        (attach_procrustes, dict(convs="all", example_input=x, faithful=True, p=1.5), "p must"),
    ]


@pytest.mark.parametrize("index", range(len(bad_attach_calls())))
def test_bad_attach_calls_raise_one_sentence_and_change_nothing(index):
    attach, kwargs, message = bad_attach_calls()[index]
    net = TinyNet().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UserError, match=message):
        attach(net, opt, **kwargs)
    assert not opt._optimizer_step_post_hooks
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("attach", [attach_procrustes, attach_clipping])
@pytest.mark.parametrize("normalise", ["procres", "torch"])
def test_a_spectrally_normalised_conv_is_refused_by_name(attach, normalise):
    """Its weight is computed from parametrizations.weight.original: a projection or a clipping of
    the computed tensor would change nothing."""
    from procres.constraints.spectral_norm import spectral_norm
    net = TinyNet().double()
    if normalise == "procres":
        spectral_norm(net.trans, 8)
    else:
        torch.nn.utils.parametrizations.spectral_norm(net.trans)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"trans\.weight is parametrised"):
        attach(net, opt, convs=["trans"], example_input=DATA[0])
    assert not opt._optimizer_step_post_hooks


def test_a_linear_has_no_faithful_projection():
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(UserError, match="faithful=True.*no Linear"):
        attach_procrustes(model, torch.optim.SGD(model.parameters(), lr=0.1), linears="0", faithful=True)


def test_clipping_acts_on_the_weight_after_the_step_in_half_precision_too():
    """A bfloat16 weight is measured in float32 (a copy): the hook must clip today's values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2, bias=False)).to(torch.bfloat16)
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=1.0) for m in (model, twin))
    attach_clipping(model, opt, max=0.5, convs="all", example_input=x)
    for m, o in ((model, opt), (twin, opt_twin)):
        o.zero_grad()
        m(x).float().square().sum().backward()
        o.step()
    clip_singular_values_(twin[0], max=0.5)
    assert torch.equal(model[0].weight, twin[0].weight)
