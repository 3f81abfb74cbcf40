"""Tests for procres.diagnostics.recorder and .study: the recorder vs retain_grad, and the depth study.

The reference is independent: the recorder is checked against ``retain_grad()`` on the unit
inputs/outputs, in float64 on tiny inputs.  The Jacobian spectra and the bounds are
tested in tests/diagnostics/test_jacobian.py.
"""

import gc
import json
import math
import warnings

import pytest
import torch
from torch import nn

from procres.diagnostics.recorder import FIELDS, NormRecorder
from procres.diagnostics.study import depth_study
from user_models import Residual

F64 = torch.float64
# torch's own first use of forward-mode AD (torch.func.jvp) scripts decompositions with torch.jit
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("single_threaded")]


# ---------------------------------------------------------------- tiny units
class Scale(nn.Module):
    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.c * x + 0 * self.dummy


def tiny_units() -> nn.Sequential:
    return nn.Sequential(Residual(3), nn.Sequential(nn.Conv2d(3, 4, 1, stride=2), nn.BatchNorm2d(4)),
                         Residual(4, 0.5), nn.ReLU(), Residual(4)).to(F64)


def reference_norms(units, x, loss_fn):
    """All FIELDS per unit from retain_grad() on each unit's input and output (one step)."""
    seen = []

    def keep(module, args, out):
        if args[0].requires_grad:
            args[0].retain_grad()
        out.retain_grad()
        seen.append((args[0], out))

    handles = [u.register_forward_hook(keep) for u in units]
    loss_fn(x).backward()
    for h in handles:
        h.remove()
    ref = {f: [] for f in FIELDS}
    for a, b in seen:
        gi = a.grad if a.grad is not None else torch.full_like(a, math.nan)
        ps_in, ps_out = gi.flatten(1).norm(dim=1), b.grad.flatten(1).norm(dim=1)
        per = ps_in / ps_out
        vals = dict(grad_in=gi.norm(), grad_out=b.grad.norm(), fwd_in=a.norm(), fwd_out=b.norm(),
                    ratio=gi.norm() / b.grad.norm(), ratio_min=per.min(), ratio_max=per.max(), ratio_mean=per.mean(),
                    grad_nonfinite=torch.tensor(float(a.grad is not None and not torch.isfinite(a.grad).all())))
        for f in FIELDS:
            ref[f].append(float(vals[f].detach()))
    return ref


def assert_close_lists(got, want, rel=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(w, rel=rel), (got, want)


# ---------------------------------------------------------------- recorder vs retain_grad
def test_recorder_matches_retain_grad_tiny_units_and_averages_steps():
    units = tiny_units().train()
    xs = [torch.randn(5, 3, 8, 8, dtype=F64) for _ in range(2)]
    g = torch.randn(5, 4, 4, 4, dtype=F64)
    loss = lambda x: (units(x) * g).sum()  # noqa: E731
    refs = [reference_norms(units, x, loss) for x in xs]
    with NormRecorder(units) as rec:
        for x in xs:
            loss(x).backward()
        s = rec.summary()
    assert s["steps_recorded"] == 2 == rec.steps_recorded
    for f in FIELDS:
        assert_close_lists(s[f], [(a + b) / 2 for a, b in zip(refs[0][f], refs[1][f])])
    assert math.isnan(s["ratio"][0]) and math.isnan(s["grad_in"][0])  # raw data input: no gradient
    assert s["fwd_in"][1] == s["fwd_out"][0]  # the shared tensor is reduced once
    json.loads(json.dumps(s))  # plain JSON (NaN allowed by Python's json)


def test_state_dict_round_trip_continues_the_window_like_an_uninterrupted_recorder():
    units = tiny_units().train()
    xs = [torch.randn(5, 3, 8, 8, dtype=F64) for _ in range(3)]
    g = torch.randn(5, 4, 4, 4, dtype=F64)
    loss = lambda x: (units(x) * g).sum()  # noqa: E731
    with NormRecorder(units) as whole:
        for x in xs:
            loss(x).backward()
        expected = whole.summary()
    with NormRecorder(units) as first:
        for x in xs[:2]:
            loss(x).backward()
        state = first.state_dict()
    assert state["steps_recorded"] == 2 and state["sum"].device.type == "cpu"
    with NormRecorder(units) as resumed:
        resumed.load_state_dict(state)
        loss(xs[2]).backward()
        got = resumed.summary()
    assert got["steps_recorded"] == 3
    for f in FIELDS:
        assert_close_lists(got[f], expected[f])


@pytest.mark.parametrize("family", ["resnet20", "procresnet13"])
def test_recorder_matches_retain_grad_on_models(family):
    import procres as models  # the zoo factories: procres.resnet, procres.procresnet
    torch.manual_seed(0)
    if family == "resnet20":
        model = models.resnet(20, in_channels=1, image_size=16)
    else:
        model = models.procresnet(13, in_channels=1, image_size=16)
    model = model.to(F64).train()
    x, y = torch.randn(4, 1, 16, 16, dtype=F64), torch.tensor([0, 1, 2, 3])
    loss = lambda x: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    ref = reference_norms(model.blocks, x, loss)
    model.zero_grad()
    with NormRecorder(model.blocks) as rec:
        loss(x).backward()
    s = rec.summary()
    for f in FIELDS:
        assert_close_lists(s[f], ref[f])
    assert len(s["ratio"]) == len(model.block_kinds)


def test_orthogonal_unit_ratio_is_one_and_scaling_unit_ratio_is_two():
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=F64))
    lin = nn.Linear(8, 8, bias=False).to(F64)
    with torch.no_grad():
        lin.weight.copy_(q)
    units = nn.Sequential(nn.Linear(6, 8).to(F64), lin, Scale(2.0))
    with NormRecorder(units) as rec:
        x = torch.randn(7, 6, dtype=F64)
        (units(x) * torch.randn(7, 8, dtype=F64)).sum().backward()
    s = rec.summary()
    for f in ("ratio", "ratio_min", "ratio_max", "ratio_mean"):
        assert s[f][1] == pytest.approx(1.0, abs=1e-12)
        assert s[f][2] == pytest.approx(2.0, abs=1e-12)
    assert s["fwd_out"][2] == pytest.approx(2 * s["fwd_in"][2], rel=1e-12)
    assert s["fwd_out"][1] == pytest.approx(s["fwd_in"][1], rel=1e-12)


def test_every_counts_training_steps_and_ignores_eval_and_no_grad():
    units = tiny_units()
    rec = NormRecorder(units, every=2)
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    for _ in range(5):  # steps 0, 2, 4 are recorded
        units.train()
        units(x).sum().backward()
        units.eval()
        units(x)
        with torch.no_grad():
            units.train()
            units(x)
    assert rec.steps_seen == 5
    assert rec.summary()["steps_recorded"] == 3
    rec.reset()
    assert rec.summary()["steps_recorded"] == 0 and all(math.isnan(v) for v in rec.summary()["ratio"])
    rec.remove()


def test_channels_last_gives_the_same_numbers():
    units = nn.Sequential(Residual(3), nn.Conv2d(3, 5, 3, padding=1), Residual(5)).to(F64)
    x = torch.randn(3, 3, 6, 6, dtype=F64)
    g = torch.randn(3, 5, 6, 6, dtype=F64)
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        units.to(memory_format=fmt)
        with NormRecorder(units) as rec:
            (units(x.to(memory_format=fmt)) * g).sum().backward()
        out[fmt] = rec.summary()
    for f in FIELDS:
        assert_close_lists(out[torch.channels_last][f], out[torch.contiguous_format][f], rel=1e-10)


def n_tensors() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_hooks_removed_and_no_growth_over_100_steps():
    units = nn.Sequential(Residual(2), Residual(2), nn.Conv2d(2, 2, 1)).to(F64)
    x = torch.randn(2, 2, 4, 4, dtype=F64, requires_grad=True)
    with NormRecorder(units) as rec:
        assert [len(u._forward_hooks) for u in units] == [1, 1, 1]
        assert [len(u._forward_pre_hooks) for u in units] == [1, 0, 0]  # opens a step
        for _ in range(10):
            units(x).sum().backward()
        gc.collect()
        before = n_tensors()
        for _ in range(100):
            units(x).sum().backward()
        gc.collect()
        after = n_tensors()
        assert after == before  # nothing accumulates per step
        assert rec.summary()["steps_recorded"] == 110
        assert not x._backward_hooks  # the leaf input does not collect one hook per step
    for u in units.modules():
        assert not u._forward_hooks and not u._forward_pre_hooks
    kept = rec.summary()
    units(x).sum().backward()  # no hook fires after removal
    assert rec.summary() == kept and rec.steps_seen == 110


def test_warns_when_hooks_were_bypassed():
    units = tiny_units()
    (units(torch.randn(2, 3, 8, 8, dtype=F64))).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with NormRecorder(units) as rec:  # earlier gradients are no reason to warn
            assert rec.summary()["steps_recorded"] == 0
    with NormRecorder(units) as rec:
        x = torch.randn(2, 3, 8, 8, dtype=F64)
        for u in units:
            x = u.forward(x)  # bypasses module hooks
        x.sum().backward()
        with pytest.warns(UserWarning, match="recorded nothing"):
            rec.summary()


def test_recorder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        NormRecorder([nn.Identity()], every=0)
    with pytest.raises(ValueError, match="at least one"):
        NormRecorder([])
    u = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="distinct"):
        NormRecorder([u, u])


def test_compiled_model_warns_and_still_matches():
    units = tiny_units().train()
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    with NormRecorder(units) as rec:
        units(x).sum().backward()
    want = rec.summary()
    compiled = torch.compile(units, backend="eager")
    with NormRecorder(units) as rec:
        with pytest.warns(UserWarning, match="torch.compile"):
            compiled(x).sum().backward()
    for f in FIELDS:
        assert_close_lists(rec.summary()[f], want[f], rel=1e-10)
    torch._dynamo.reset()


# ---------------------------------------------------------------- depth study
class TinyNet(nn.Module):
    def __init__(self, depth: int, residual: bool):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        plain = lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())  # noqa: E731
        self.blocks = nn.Sequential(*[Residual(4, 1.0) if residual else plain() for _ in range(depth)])
        self.block_kinds = ["identity" if residual else "plain"] * depth
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_depth_study_layout_and_determinism():
    data = (torch.randn(40, 1, 6, 6), torch.randint(0, 3, (40,)))
    factories = {"residual": lambda d: TinyNet(d, True), "plain": lambda d: TinyNet(d, False)}
    state = torch.random.get_rng_state()
    out = depth_study(factories, [2, 4], data, steps=3, batch_size=8, measure_batches=2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    json.loads(json.dumps(out))
    assert out["depths"] == [2, 4] and set(out["results"]) == {"residual", "plain"}
    for family in ("residual", "plain"):
        for phase in ("init", "trained"):
            assert [len(r) for r in out["results"][family][phase]] == [2, 4]
            assert len(out["spread"][family][phase]) == 2
        assert [len(k) for k in out["block_kinds"][family]] == [2, 4]
    again = depth_study(factories, [2, 4], data, steps=3, batch_size=8, measure_batches=2)
    assert again["results"] == out["results"]
    with pytest.raises(ValueError, match="depths"):
        depth_study(factories, [], data, steps=1)
    with pytest.raises(ValueError, match="float"):
        depth_study(factories, [2], (torch.zeros(4, 1, 6, 6, dtype=torch.uint8), torch.zeros(4)), steps=1)


class GainChain(nn.Module):
    """A plain net of linear units W = c I: forward and backward both multiply by c per unit, so with
    tiny inputs the forward stays finite while the backward overflows float32 a few units from the loss."""

    def __init__(self, depth: int, c: float = 1e8, width: int = 36):
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(width, width, bias=False))  # x_1 needs a gradient
        self.blocks = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])
        with torch.no_grad():
            for unit in self.blocks:
                unit.weight.copy_(c * torch.eye(width))
        self.block_kinds = ["plain"] * depth
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _reference_overflow_unit(model, x, y):
    """1-based unit at whose input the gradient first holds inf/NaN going back from the loss (retain_grad)."""
    inputs = []
    h = model.stem(x)
    for unit in model.blocks:
        h.retain_grad()
        inputs.append(h)
        h = unit(h)
    nn.functional.cross_entropy(model.head(h), y).backward()
    bad = [i for i, t in enumerate(inputs, start=1) if not torch.isfinite(t.grad).all()]
    return bad[-1] if bad else None


def test_an_overflowing_backward_is_a_record_not_an_exception():
    x, y = 1e-30 * torch.randn(40, 1, 6, 6), torch.randint(0, 3, (40,))
    factories = {"residual": lambda d: TinyNet(d, True), "plain": lambda d: GainChain(d)}
    out = depth_study(factories, [4, 8], (x, y), steps=2, batch_size=8, measure_batches=1)
    torch.manual_seed(0)
    want = _reference_overflow_unit(GainChain(8), x[:8], y[:8])
    assert want == 4  # 0.3 * 1e8**5 > 3.4e38: the fifth unit from the loss overflows
    assert out["overflow"]["plain"] == [None, {"unit": want, "units": 8, "phase": "init", "step": 0}]
    assert out["results"]["plain"]["trained"][1] is None  # not trained on garbage gradients
    ratios = out["results"]["plain"]["init"][1]
    assert all(math.isnan(r) for r in ratios[:want]) and all(r == pytest.approx(1e8, rel=1e-4) for r in ratios[want:])
    # depth 4: gradients up to ~1e31 are finite though their float32 squares are not: still measured
    assert all(r == pytest.approx(1e8, rel=1e-4) for r in out["results"]["plain"]["init"][0])
    assert out["results"]["plain"]["trained"][0] is not None
    assert out["overflow"]["residual"] == [None, None] and None not in out["results"]["residual"]["trained"]
    json.loads(json.dumps(out))


def test_recorder_counts_non_finite_input_gradients():
    model = GainChain(8)
    x, y = 1e-30 * torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
    with NormRecorder(model.blocks) as rec:
        for _ in range(2):
            nn.functional.cross_entropy(model(x), y).backward()
    s = rec.summary()
    assert s["grad_nonfinite"] == [1.0] * 4 + [0.0] * 4 and s["steps_recorded"] == 2
    assert all(math.isnan(r) for r in s["ratio"][:4]) and all(r == pytest.approx(1e8, rel=1e-4) for r in s["ratio"][4:])


def test_depth_study_of_a_token_model_equals_retain_grad_under_the_next_token_loss():
    # every row one sequence: whichever rows the study draws, its batches are this batch
    from procres.models.transformer import prenorm_transformer

    ids = torch.randint(64, (1, 6)).repeat(16, 1)
    factory = lambda d: prenorm_transformer(d, width=8, heads=2).double()  # noqa: E731
    out = depth_study({"pre": factory}, [3], (ids, None), steps=0, batch_size=4, measure_batches=2)
    torch.manual_seed(0)                                   # the study builds each model under its seed
    model = factory(3).train()
    xs = []
    hooks = [b.register_forward_hook(lambda m, args, o: xs.extend([args[0], o])) for b in model.blocks]
    logits = model(ids[:4])
    for t in xs:
        t.retain_grad()
    nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:4, 1:].reshape(-1)).backward()
    for h in hooks:
        h.remove()
    ref = [float(xs[2 * i].grad.norm() / xs[2 * i + 1].grad.norm()) for i in range(3)]
    assert out["results"]["pre"]["init"][0] == pytest.approx(ref, rel=1e-9)
    assert out["block_kinds"]["pre"] == [["identity"] * 3] and out["units"]["pre"] == ["blocks: the model's own units"]
