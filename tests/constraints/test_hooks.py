"""procres.constraints.hooks: the Procrustes step hook's seeded decisions, state, removal and errors."""

import numpy as np
import pytest
import torch
from torch import nn

from procres.constraints.hooks import ProcrustesHook, attach_procrustes, register_procrustes_hook
from procres.spectral.spectra import conv_singular_values

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


