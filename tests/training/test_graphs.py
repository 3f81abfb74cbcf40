"""The sync-free device projection (procres.spectral.device) and the whole-step CUDA graph
(procres.training.graphs), on the CPU where torch allows it: the device route's arithmetic against the CPU
float64 SVD route and numpy, the route rule, the graph body (train_step) against the loop's own
eager step, the loop's graph branch, the fallbacks (capture error, failed self-check) and the
projection's device-side non-finite flag. CUDA checks at the end (skipped without a GPU)."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import procres.spectral.projection as procrustes_module
import procres.training.run as run_module
from procres.training.config import TrainConfig
from procres.spectral.device import device_route, exact_step_on_device, POLAR_FLOOR, polar_sync_free
from procres.training.graphs import capture_step, self_check, SELF_CHECK_TOLERANCE, sgd_update, train_step
from procres.models.procresnet import procresnet
from procres.models.registry import create_model
from procres.constraints.hooks import attach_procrustes
from procres.spectral.projection import project_kernel
from procres.spectral.spectra import norm_preserving_target
from procres.training.loop import train

pytestmark = pytest.mark.usefixtures("single_threaded")

TINY = dict(recipe="demo", epochs=2, batch_size=32, max_steps_per_epoch=4, init_norm_batches=1, record_every=2,
            threads=1)
# the three projected layers of a ProcResNet on CIFAR: (C_out, C_in, k, stride, input size)
PROCRESNET_LAYERS = [(64, 3, 3, 1, 32), (128, 64, 1, 2, 32), (256, 128, 1, 2, 16)]


def _tiny(tmp_path, name="run", **changes) -> TrainConfig:
    values = {**TINY, "model": "procresnet13", "out": str(tmp_path / name), **changes}
    return TrainConfig.from_recipe(values.pop("recipe"), **values)


def numpy_polar(A):
    U, _, Vh = np.linalg.svd(A, full_matrices=False)
    return U @ Vh


def _identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- the device projection
@pytest.mark.parametrize("c_out, c_in, k, stride, size", PROCRESNET_LAYERS)
def test_device_projection_equals_the_cpu_float64_projection_on_procresnet_layers(c_out, c_in, k, stride, size):
    w = torch.randn(c_out, c_in, k, k) * math.sqrt(2.0 / (c_in * k * k))  # He init, float32
    reference = project_kernel(w.double(), size, stride=stride)  # CPU route: float64 SVD
    target = norm_preserving_target(w, stride)
    ours = exact_step_on_device(w, (size, size), (stride, stride), target)  # the device code, run on the CPU
    assert ours.dtype == torch.float64 and ours.shape == w.shape
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= 1e-7 * scale  # float32 round-off (measured: ~1e-15)
    if k == 1:  # the 1x1 strided operator is W itself: every singular value is the target
        assert np.allclose(np.linalg.svd(ours[..., 0, 0].numpy(), compute_uv=False), target, rtol=1e-12)


def test_the_hook_takes_the_device_route_when_the_weight_stays_on_the_device(monkeypatch):
    model = procresnet(13, num_classes=10, in_channels=3, image_size=32)
    torch.manual_seed(1)
    twin = copy.deepcopy(model)
    for m in (model, twin):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        attach_procrustes(m, opt, p=1.0, seed=0)
        m.hook_optimizer = opt
    routes = []
    real = procrustes_module.exact_step_on_device

    def spy(*args):
        routes.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(procrustes_module, "exact_step_on_device", spy)
    twin.hook_optimizer.step()  # CPU weights: the CPU route
    assert routes == []
    monkeypatch.setattr(procrustes_module, "stays_on_device", lambda w, stride, groups, faithful: True)
    model.hook_optimizer.step()
    assert len(routes) == 3
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max(), name


@pytest.mark.parametrize("shape, dtype", [((7, 64, 3), torch.complex128), ((2, 3, 64), torch.complex128),
                                          ((1, 128, 64), torch.float64), ((4, 9, 9), torch.float64)])
def test_polar_sync_free_matches_numpy(shape, dtype):
    A = torch.randn(*shape, dtype=dtype)
    assert np.abs(polar_sync_free(A).numpy() - numpy_polar(A.numpy())).max() < 1e-12


@pytest.mark.parametrize("kappa", [1e2, 1e4, 1e6])
def test_polar_sync_free_error_grows_like_eps_kappa(kappa):
    U, _ = torch.linalg.qr(torch.randn(64, 3, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    A = U @ torch.diag(torch.tensor([1.0, kappa**-0.5, 1.0 / kappa], dtype=torch.float64)) @ V.T
    assert np.abs(polar_sync_free(A).numpy() - (U @ V.T).numpy()).max() < 1e-14 * kappa


def test_polar_sync_free_leaves_directions_below_the_floor_short_and_propagates_nan():
    A = torch.diag(torch.tensor([1.0, 1e-3, POLAR_FLOOR / 100], dtype=torch.float64))
    X = polar_sync_free(A)
    assert torch.allclose(X.diagonal()[:2], torch.ones(2, dtype=torch.float64), atol=1e-13)
    assert 0 < X[2, 2] < 0.5
    bad = torch.randn(2, 5, 3, dtype=torch.float64)
    bad[1, 0, 0] = math.nan
    X = polar_sync_free(bad)  # no exception: the caller flags it
    assert torch.isnan(X[1]).all() and torch.isfinite(X[0]).all()


def test_route_rule_picks_the_device_for_small_and_frequency_independent_matrices():
    for c_out, c_in, k, stride, _ in PROCRESNET_LAYERS:
        assert device_route((c_out, c_in, k, k), (stride, stride))
    model = procresnet(166)
    assert all(device_route(conv.weight.shape, conv.stride) for conv, _ in model.transitions())
    assert device_route((128, 64, 2, 2), (2, 2))  # k = s patches: one matrix for every frequency
    assert device_route((16, 16, 3, 3), (1, 1))  # 16 x 16 frequency matrices
    assert not device_route((64, 64, 3, 3), (1, 1))  # 64 x 64 at every frequency: the CPU route
    assert not device_route((128, 64, 3, 3), (2, 2))  # polyphase 128 x 256
    cpu = torch.zeros(64, 3, 3, 3)
    assert not procrustes_module.stays_on_device(cpu, (1, 1), 1, False)  # CPU weights: unchanged
    assert not procrustes_module.stays_on_device(cpu, (1, 1), 1, True)


def test_the_hook_counts_non_finite_weights_on_the_device_instead_of_raising(monkeypatch):
    monkeypatch.setattr(procrustes_module, "stays_on_device", lambda w, stride, groups, faithful: True)
    model = procresnet(13, num_classes=10, in_channels=3, image_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = attach_procrustes(model, opt, p=1.0, seed=0)
    opt.step()
    assert hook.nonfinite.tolist() == [0, 0, 0]
    with torch.no_grad():
        hook.layers[1][0].weight[0, 0] = math.inf
    opt.step()  # no host check, no exception
    opt.step()
    assert hook.nonfinite.tolist() == [0, 2, 0]


# ---------------------------------------------------------------- the graph body, eagerly
def _batches(n, batch=8, channels=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(n)]


def _pair(fused=False):
    model = create_model("procresnet13", num_classes=10, in_channels=3, image_size=16)
    model = model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=fused)
            for m in (model, twin)]
    hooks = [attach_procrustes(m, o, p=0.5, seed=3) for m, o in zip((model, twin), opts)]
    return (model, opts[0], hooks[0]), (twin, opts[1], hooks[1])


def test_train_step_equals_the_loops_eager_step_bit_for_bit():
    """N steps of the graph body (float lr, CPU SGD) + the hook == N steps of the loop's eager
    step (forward, loss, backward, optimizer.step() with the hook inside), weights and momentum."""
    (eager, opt_e, _), (body, opt_b, hook_b) = _pair()
    for x, y in _batches(4):
        out = eager(x)
        loss_e = F.cross_entropy(out, y)
        opt_e.zero_grad(set_to_none=True)
        loss_e.backward()
        opt_e.step()
        loss_b, logits = train_step(body, opt_b, x, y, 0.1, amp=False)
        hook_b._after_step(opt_b, (), {})
        assert torch.equal(loss_b, loss_e.detach()) and torch.equal(logits, out.detach())
    _identical(body.state_dict(), eager.state_dict())
    for p_e, p_b in zip(eager.parameters(), body.parameters()):
        assert torch.equal(opt_e.state[p_e]["momentum_buffer"], opt_b.state[p_b]["momentum_buffer"])


def test_train_step_with_a_tensor_lr_and_fused_sgd_follows_the_eager_step_to_round_off():
    """What the CUDA graph runs: fused SGD reading a float32 lr tensor, zero momentum buffers made
    at capture; the eager loop: fused SGD with a float lr from no buffer. lr changes mid-way."""
    (eager, opt_e, _), (body, opt_b, hook_b) = _pair(fused=True)
    from procres.training.graphs import _create_momentum_buffers

    _create_momentum_buffers(opt_b)
    lr = torch.tensor(0.1)
    for i, (x, y) in enumerate(_batches(4)):
        value = 0.1 if i < 2 else 0.01
        for group in opt_e.param_groups:
            group["lr"] = value
        lr.fill_(value)
        loss_e = F.cross_entropy(eager(x), y)
        opt_e.zero_grad(set_to_none=True)
        loss_e.backward()
        opt_e.step()
        train_step(body, opt_b, x, y, lr, amp=False)
        hook_b._after_step(opt_b, (), {})
    for (name, a), b in zip(body.state_dict().items(), eager.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), name


def test_sgd_update_skips_missing_gradients_and_refuses_other_optimizers():
    w = torch.nn.Parameter(torch.ones(3))
    v = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w, v], lr=0.5, momentum=0.9)
    sgd_update(opt, [torch.ones(3), None], 0.5)
    assert torch.equal(w.detach(), torch.full((3,), 0.5)) and torch.equal(v.detach(), torch.ones(2))
    assert "momentum_buffer" not in opt.state[v]
    with pytest.raises(ValueError, match="torch.optim.SGD.*Adam"):
        sgd_update(torch.optim.Adam([w]), [torch.ones(3)], 0.1)


def test_capture_step_refuses_cpu_tensors():
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="needs CUDA tensors.*cpu"):
        capture_step(model, opt, torch.zeros(2, 1, 16, 16), torch.zeros(2, dtype=torch.int64), amp=False, lr=0.1)


# ---------------------------------------------------------------- the loop's graph branch, on the CPU
class _NoHooks(torch.nn.Module):
    """model(x) as a replay runs it: stem, units, head called through .forward, so no module hooks
    (the NormRecorder's) run."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        h = self.model.stem(x)
        for unit in self.model.blocks:
            h = unit.forward(h)
        return self.model.head(h)


class _EagerGraph:
    """A stand-in for procres.training.graphs.StepGraph that runs train_step eagerly (CPU), optionally with a
    wrong learning rate (what a graph with a baked-in value would do)."""

    def __init__(self, model, optimizer, x, amp, lr_factor=1.0):
        self.model, self.optimizer, self.shape, self.amp = _NoHooks(model), optimizer, x.shape, amp
        self.lr_factor, self.replays, self.capture_s = lr_factor, 0, 0.0
        self.x = x
        self.y = torch.zeros(x.shape[0], dtype=torch.int64)
        self.logits = torch.zeros(x.shape[0], 10)

    def __call__(self, x, y, lr):
        self.replays += 1
        return train_step(self.model, self.optimizer, x, y, lr * self.lr_factor, amp=self.amp)


def _graphs_on_cpu(monkeypatch, lr_factor=1.0):
    stand_ins = []

    def capture(model, optimizer, x, y, *, amp, lr):
        assert x.shape == (32, 1, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
        stand_ins.append(_EagerGraph(model, optimizer, x, amp, lr_factor))
        return stand_ins[-1]

    resolved = TrainConfig.resolved
    monkeypatch.setattr(TrainConfig, "resolved", lambda self, **kw: resolved(self, **kw).replace(cuda_graphs=True))
    monkeypatch.setattr(run_module, "capture_step", capture)
    return stand_ins


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    config = _tiny(tmp_path_factory.mktemp("eager"))
    return config, train(config, quiet=True)


def test_graph_branch_of_the_loop_matches_the_eager_run(eager_run, tmp_path, monkeypatch):
    """The loop with a captured step (stand-in: train_step run eagerly, bypassing the units' hooks
    as a replay does) and the Procrustes hook after it == the eager loop, bit for bit: weights,
    losses, norms (recorded steps run eagerly with the recorder)."""
    config, eager = eager_run
    stand_ins = _graphs_on_cpu(monkeypatch)
    graphs = train(config.replace(out=str(tmp_path / "graphs")), quiet=True)
    log = (tmp_path / "graphs" / "train.log").read_text()
    assert "CUDA graphs on" in log and "self-check against an eager step: loss" in log
    assert stand_ins[0].replays == 4 + 1  # steps 1, 3, 5, 7 (0, 2, 4, 6 recorded, eager) + the self-check
    assert graphs["cuda_graphs"]["ok"] and graphs["cuda_graphs"]["update_diff"] == 0.0
    _identical(graphs["model"].state_dict(), eager["model"].state_dict())
    for g, e in zip(graphs["history"], eager["history"], strict=True):
        assert json_equal(g["norms"], e["norms"])
        assert (g["train_loss"], g["test_acc"]) == (e["train_loss"], e["test_acc"])


def json_equal(a, b) -> bool:
    import json

    return json.dumps(a) == json.dumps(b)  # NaN-aware


def test_capture_failure_falls_back_to_eager_with_a_warning(eager_run, tmp_path, monkeypatch):
    config, eager = eager_run
    _graphs_on_cpu(monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(run_module, "capture_step", broken)
    with pytest.warns(RuntimeWarning, match="capture failed, training eagerly.*not permitted"):
        fallback = train(config.replace(out=str(tmp_path / "fallback")), quiet=True)
    log = (tmp_path / "fallback" / "train.log").read_text()
    assert "CUDA graphs off" in log and "capture failed" in log
    assert fallback["cuda_graphs"] == {}
    _identical(fallback["model"].state_dict(), eager["model"].state_dict())


def test_a_failed_self_check_falls_back_to_eager_and_leaves_the_state_as_it_was(eager_run, tmp_path, monkeypatch):
    config, eager = eager_run
    stand_ins = _graphs_on_cpu(monkeypatch, lr_factor=2.0)  # a replay that updates with twice the lr
    with pytest.warns(RuntimeWarning, match="self-check failed, training eagerly"):
        fallback = train(config.replace(out=str(tmp_path / "mismatch")), quiet=True)
    assert stand_ins[0].replays == 1  # the check's replay only
    check = fallback["cuda_graphs"]
    assert not check["ok"] and check["update_diff"] == pytest.approx(1.0, rel=1e-3)
    assert check["loss_diff"] <= SELF_CHECK_TOLERANCE["loss"]
    assert "CUDA graphs off" in (tmp_path / "mismatch" / "train.log").read_text()
    _identical(fallback["model"].state_dict(), eager["model"].state_dict())  # the check's steps were undone


def test_self_check_restores_weights_bn_statistics_and_momentum():
    (model, opt, _), _ = _pair()
    for x, y in _batches(2):  # some momentum first
        train_step(model, opt, x, y, 0.1, amp=False)
    before = copy.deepcopy(model.state_dict())
    momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    graph = _EagerGraph(model, opt, _batches(1)[0][0], amp=False)
    check = self_check(model, opt, graph, amp=False, lr=0.1)
    assert check["ok"] and check["update_diff"] == 0.0 and check["loss_graph"] == check["loss_eager"]
    _identical(model.state_dict(), before)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)]) for p in model.parameters())


def test_non_finite_weights_met_by_the_device_projection_stop_naming_layer_epoch_and_step(tmp_path, monkeypatch):
    monkeypatch.setattr(procrustes_module, "stays_on_device", lambda w, stride, groups, faithful: True)
    real = run_module._sgd

    def poisoned(model, cfg, **kwargs):  # the second transition's weights turn infinite before the 3rd update
        optimizer, calls = real(model, cfg, **kwargs), []

        def before_step(opt, args, kwargs):
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    model.transitions()[1][0].weight.fill_(math.inf)

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(run_module, "_sgd", poisoned)
    config = _tiny(tmp_path, projection_p=1.0, init_norm_batches=0, checkpoint_every_steps=1)
    pattern = r"blocks\.\d+ has NaN or inf weights, met by the Procrustes projection in epoch 1 at one " \
              r"of the steps up to step 3: training diverged"
    with pytest.raises(FloatingPointError, match=pattern):
        train(config, quiet=True)
    from procres.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(config.out)
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert "has NaN or inf weights, met by the Procrustes projection" in (Path(config.out) / "train.log").read_text()


# ---------------------------------------------------------------- the GPU benchmark's bookkeeping
ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_speedup_epoch_seconds_and_table_come_from_the_measurements():
    gpu_epoch, gpu_report = _benchmark("gpu_epoch"), _benchmark("gpu_report")
    default = {"step_ms": 20.0, "epoch_s": 7.8, "eval_s": 1.5, "epoch_wall_s": 8.5, "cuda_graphs": True,
               "capture_s": 2.0, "peak_memory_gib": 3.25}
    report = {"commit": "0123456789abcdef", "gpu": "NVIDIA H200", "torch": "2.11.0", "date": "d", "batch_size": 128,
              "epoch_steps": 390, "train_steps_per_epoch": 351, "errors": [], "skipped": ["procresnet1003 default"],
              "numerics": None, "nets": {
                  "procresnet166": {"authors": {"step_ms": 67.0, "epoch_s": 26.13}, "default": default,
                                    "full_epoch": {**default, "epoch_wall_s": 9.04}},
                  "preresnet164": {"authors": {"step_ms": 68.2, "epoch_s": 26.6},
                                   "eager": {"step_ms": 80.0, "epoch_s": 31.2, "cuda_graphs": False}},
                  "procresnet1003": {"default": {**default, "step_ms": 100.0, "eval_s": 4.0}}}}
    gpu_epoch.summarise(report)
    assert report["speedup"] == {"procresnet166": round(26.13 / 7.8, 3)}  # preresnet164 has no default row
    assert report["epoch_seconds"] == {"procresnet166": {"seconds": 9.0, "measured": True},
                                       "procresnet1003": {"seconds": round(351 * 0.1 + 4.0, 1), "measured": False}}
    text = gpu_report.table(report)
    assert "| procresnet166 | **default** (`procres train`: step graph, bf16, recorder every 10) | 20.0 | 7.8 | " \
           "3.35x | 2.0 | 3.25 |" in text
    assert "| preresnet164 | eager (`--no-cuda-graphs`) | 80.0 | 31.2 | 0.85x |" in text
    assert "procresnet166 **3.35x**" in text and "Not reached within the time budget: procresnet1003 default" in text
    assert '"procresnet1003": 39.1' in gpu_report.epoch_seconds(report)


@pytest.mark.slow
def test_gpu_all_dry_run_on_the_cpu_writes_latest_json_and_the_table(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PROCRES_COMMIT": "f" * 40}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_all.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["commit"] == "f" * 40 and report["smoke"] and not report["errors"]
    assert set(report["speedup"]) == {"procresnet13", "preresnet11"} and report["numerics"]["ok"]
    assert set(report["nets"]["procresnet13"]) == {"authors", "default", "eager", "norec", "full_epoch"}
    assert (tmp_path / "benchmarks_table.md").read_text() == _benchmark("gpu_report").table(report)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_step_graph_follows_eager_train_steps_and_reads_the_lr_each_replay(amp):
    device = torch.device("cuda")
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = False
    try:
        eager = create_model("procresnet13", num_classes=10, in_channels=3, image_size=16).to(device)
        eager = eager.to(memory_format=torch.channels_last)
        graphed = copy.deepcopy(eager)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
                for m in (eager, graphed)]
        hooks = [attach_procrustes(m, o, p=0.5, seed=0) for m, o in zip((eager, graphed), opts)]
        before = {k: v.clone() for k, v in graphed.state_dict().items()}
        x0 = torch.zeros(8, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
        graphed.eval()  # the capture still records the training-mode forward, and leaves the mode as it was
        graph = capture_step(graphed, opts[1], x0, torch.zeros(8, dtype=torch.int64, device=device), amp=amp, lr=0.1)
        assert not graphed.training
        _identical(graphed.state_dict(), before)  # the warm-up's updates undone
        check = self_check(graphed, opts[1], graph, amp=amp, lr=0.1)
        assert check["ok"], check
        _identical(graphed.state_dict(), before)
        tol = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-3, atol=1e-4)
        gen = torch.Generator(device=device).manual_seed(0)
        for i in range(4):
            lr = (0.1, 0.1, 0.0, 0.01)[i]  # lr 0: the replay must not move the weights
            x = torch.randn(8, 3, 16, 16, device=device, generator=gen).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (8,), device=device, generator=gen)
            loss_e, _ = train_step(eager, opts[0], x, y, lr, amp=amp)
            hooks[0]._after_step(opts[0], (), {})
            weights = [p.clone() for p in graphed.parameters()]
            loss_g, _ = graph(x, y, lr)
            if lr == 0.0:
                assert all(torch.equal(a, b) for a, b in zip(weights, graphed.parameters()))
            hooks[1]._after_step(opts[1], (), {})
            assert torch.allclose(loss_g, loss_e, **tol)
        for k, v in eager.state_dict().items():
            assert torch.allclose(graphed.state_dict()[k].double(), v.double(), **tol), k
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = flags


@pytest.mark.gpu
def test_cuda_training_step_and_device_projection_never_wait_for_the_device(tmp_path):
    """The loop's graph step (replay, loss flag, Procrustes hook on the device route) under
    torch.cuda.set_sync_debug_mode('error'): any host synchronisation raises."""
    from procres.training.run import build_run, capture_graphs
    from procres.training.log import logger
    from procres.training.loop import _train_step

    config = _tiny(tmp_path, device="cuda", projection_p=1.0, record_every=0).resolved(cuda_available=True)
    run = build_run(config, 0, 1, 0, logger(tmp_path, False, True))
    capture_graphs(run)
    assert run.graphed is not None, run.graph_info
    batches = [(x.clone(), y.clone()) for x, y in list(run.train_loader)[:3]]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            _train_step(run, x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert run.hook.projections == 3 * len(run.hook.layers) and run.hook.nonfinite.tolist() == [0, 0, 0]
    assert run.bad.item() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("c_out, c_in, k, stride, size", PROCRESNET_LAYERS)
def test_cuda_device_projection_equals_the_cpu_float64_projection(c_out, c_in, k, stride, size):
    w = torch.randn(c_out, c_in, k, k) * math.sqrt(2.0 / (c_in * k * k))
    reference = project_kernel(w.double(), size, stride=stride)
    ours = exact_step_on_device(w.cuda(), (size, size), (stride, stride), norm_preserving_target(w, stride))
    assert ours.is_cuda and (ours.cpu() - reference).abs().max() <= 1e-7 * reference.abs().max()
