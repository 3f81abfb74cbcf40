"""The Lightning callbacks: r_l logged through the trainer's loggers equal a NormRecorder run by hand
on the same batches (with the projection after every step), no hooks left behind, DDP reduction
over two gloo ranks, the projection right after each optimizer step, and clear errors."""

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import procres  # noqa: E402
from procres.errors import UserError  # noqa: E402
from procres.integrations.lightning import NormRatioCallback, ProcrustesCallback, _auto_units  # noqa: E402

BATCH, BATCHES, EPOCHS = 8, 3, 2


class Wrapped(pl.LightningModule):
    """A procres model inside a LightningModule, as users write it."""

    def __init__(self, model, lr=0.05):
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _model():
    torch.manual_seed(0)
    return procres.create_model("procresnet13", num_classes=4, in_channels=1, image_size=8)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 1, 8, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g))
            for _ in range(BATCHES)]


def _loader(batches):
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _trainer(tmp_path, callbacks, **kwargs):
    from lightning.pytorch.loggers import TensorBoardLogger

    options = dict(accelerator="cpu", devices=1, max_epochs=EPOCHS, callbacks=callbacks,
                   logger=TensorBoardLogger(str(tmp_path), name="lt", version=0), enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                   default_root_dir=str(tmp_path))
    return pl.Trainer(**{**options, **kwargs})


def _by_hand(model, batches, every, p, seed):
    """The reference: the same SGD steps in a plain loop with a NormRecorder and the Procrustes hook."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = procres.register_procrustes_hook(opt, model.transitions(), p=p, seed=seed)
    summaries = []
    with procres.NormRecorder(model.blocks, every=every) as rec:
        for _ in range(EPOCHS):
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            summaries.append(rec.summary())
            rec.reset()
    hook.remove()
    return summaries


def _hooks_left(module, optimizers=()):
    left = [(name, kind) for name, m in module.named_modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            if getattr(m, kind)]
    left += [("optimizer", "step_post") for opt in optimizers if opt._optimizer_step_post_hooks]
    return left


def _scalars(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_logged_ratios_equal_a_recorder_run_by_hand_and_no_hooks_remain(tmp_path):
    batches = _batches()
    module = Wrapped(_model())
    reference = copy.deepcopy(module.model)
    norms = NormRatioCallback(every=2)
    projection = ProcrustesCallback(p=0.5, seed=3)
    trainer = _trainer(tmp_path, [norms, projection])
    trainer.fit(module, _loader(batches))

    expected = _by_hand(reference, batches, every=2, p=0.5, seed=3)
    # the same weights at the end: the projection ran after the same steps with the same draws
    for (name, a), b in zip(module.model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert norms.summary["ratio"] == pytest.approx(expected[-1]["ratio"], rel=1e-5)
    # forwards are counted across epochs: 0, 2 recorded in epoch 1; 4 of 3, 4, 5 in epoch 2
    assert norms.summary["steps_recorded"] == expected[-1]["steps_recorded"] == 1

    acc = _scalars(tmp_path / "lt" / "version_0")
    n = len(module.model.blocks)
    for block in range(n):
        events = acc.Scalars(f"norm_ratio/block_{block + 1:02d}")
        assert [e.step for e in events] == [BATCHES * (k + 1) for k in range(EPOCHS)]
        for e, summary in zip(events, expected):
            assert e.value == pytest.approx(summary["ratio"][block], rel=1e-5)
    hist = acc.Histograms("norm_ratio/log10")
    assert [h.step for h in hist] == [BATCHES, 2 * BATCHES]
    assert hist[-1].histogram_value.num == n  # every unit's r_l is finite (the stem runs before the units)
    assert _hooks_left(module, trainer.optimizers) == []
    assert norms.recorder is None and projection.hooks == []


def test_projection_runs_right_after_each_optimizer_step(tmp_path):
    # p=1: every step ends with projected transitions; the 1x1 stride-2 ones are then exactly
    # sqrt(2) * an isometry: all singular values of W (the operator's non-zero ones) equal sqrt(2)
    module = Wrapped(_model(), lr=0.5)
    seen = []

    class AfterStep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            conv = pl_module.model.blocks[1]
            seen.append(torch.linalg.svdvals(conv.weight[:, :, 0, 0].double()))

    trainer = _trainer(tmp_path, [ProcrustesCallback(p=1.0), AfterStep()], max_steps=3)
    trainer.fit(module, _loader(_batches()))
    assert len(seen) == 3
    for sv in seen:
        assert torch.allclose(sv, torch.full_like(sv, 2 ** 0.5), rtol=1e-6)
    assert _hooks_left(module, trainer.optimizers) == []


def test_units_by_name_and_clear_errors(tmp_path):
    module = Wrapped(_model())
    assert _auto_units(module) == list(module.model.blocks)
    named = NormRatioCallback(units=["model.blocks.0", "model.blocks.1"], every=1, log_histogram=False)
    one_conv = ProcrustesCallback(p=1.0, convs=[("model.blocks.3", 4)])  # 128 -> 256, 1x1 stride 2, 4x4 input
    trainer = _trainer(tmp_path, [named, one_conv], max_steps=1)
    trainer.fit(module, _loader(_batches()))
    assert len(named.summary["ratio"]) == 2 and named.summary["steps_recorded"] == 1
    projected, untouched = (torch.linalg.svdvals(module.model.blocks[i].weight[:, :, 0, 0].double()) for i in (3, 1))
    assert torch.allclose(projected, torch.full_like(projected, 2 ** 0.5), rtol=1e-6)
    assert not torch.allclose(untouched, torch.full_like(untouched, 2 ** 0.5), rtol=1e-2)

    bare = Wrapped(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)))
    with pytest.raises(UserError, match="pass units="):
        _trainer(tmp_path, [NormRatioCallback()], max_steps=1).fit(bare, _loader(_batches()))
    with pytest.raises(UserError, match="pass convs="):
        _trainer(tmp_path, [ProcrustesCallback()], max_steps=1).fit(bare, _loader(_batches()))
    with pytest.raises(UserError, match="no submodule 'model.nope'"):
        _trainer(tmp_path, [NormRatioCallback(units=["model.nope"])], max_steps=1).fit(module, _loader(_batches()))
    with pytest.raises(UserError, match="every must be a positive integer"):
        NormRatioCallback(every=0)
    with pytest.raises(UserError, match="p must be a probability"):
        ProcrustesCallback(p=2)
    assert _hooks_left(module) == [] and _hooks_left(bare) == []  # removed on the exceptions too


def test_resumed_fit_continues_the_draws_and_the_recording_cadence(tmp_path):
    # straight: 2 epochs; resumed: 1 epoch, a Lightning checkpoint, then on to 2 in a new Trainer with new callbacks
    batches = _batches()
    straight, norms = Wrapped(_model()), NormRatioCallback(every=2)
    _trainer(tmp_path / "a", [norms, ProcrustesCallback(p=0.5, seed=5)]).fit(straight, _loader(batches))

    first = _trainer(tmp_path / "b", [NormRatioCallback(every=2), ProcrustesCallback(p=0.5, seed=5)], max_epochs=1)
    first.fit(Wrapped(_model()), _loader(batches))
    first.save_checkpoint(tmp_path / "one.ckpt")
    resumed_norms = NormRatioCallback(every=2)
    trainer = _trainer(tmp_path / "c", [resumed_norms, ProcrustesCallback(p=0.5, seed=5)])
    resumed = Wrapped(_model())
    trainer.fit(resumed, _loader(batches), ckpt_path=str(tmp_path / "one.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert resumed_norms.summary["ratio"] == pytest.approx(norms.summary["ratio"], rel=1e-5)
    assert resumed_norms.summary["steps_recorded"] == 1  # forward 4 only, as in the straight fit


def test_the_integrations_subpackage_is_in_the_distribution():
    tomllib = pytest.importorskip("tomllib")
    import fnmatch

    found = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = found["packages"]["find"]["include"]
    root = Path(procres.__file__).parent
    packages = {".".join(p.parent.relative_to(root.parent).parts) for p in root.rglob("__init__.py")}
    assert "procres.integrations" in packages
    assert all(any(fnmatch.fnmatchcase(p, pattern) for pattern in include) for p in packages)


def test_core_package_does_not_import_lightning():
    code = "import sys, procres, procres.training.loop, procres.integrations.tensorboard; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- DDP
DDP_WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[2])
    import lightning.pytorch as pl
    import procres
    from test_lightning import EPOCHS, Wrapped, _batches, _loader, _model, _trainer
    from procres.integrations.lightning import NormRatioCallback

    class Local(pl.Callback):  # this rank's own, unreduced summary of the same units and steps
        def on_fit_start(self, trainer, pl_module):
            self.rec = procres.NormRecorder(pl_module.model.blocks, every=1)
        def on_train_epoch_end(self, trainer, pl_module):
            self.summary = self.rec.summary()
            self.rec.reset()

    local, norms = Local(), NormRatioCallback(every=1)
    trainer = _trainer(__import__("pathlib").Path(sys.argv[1]), [local, norms], strategy="ddp", devices=2,
                       use_distributed_sampler=True)
    trainer.fit(Wrapped(_model()), _loader(_batches()))
    json.dump({"local": local.summary, "reduced": norms.summary},
              open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w"))
""")


def test_ddp_two_gloo_ranks_log_the_reduced_summary(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "NODE_RANK": "0",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(tmp_path), str(Path(__file__).parent)],
                                      env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.wait(timeout=180) == 0, proc.stderr.read()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["reduced"] == ranks[1]["reduced"]
    # two ranks, the same number of recorded steps each: the reduced mean is the mean of the two
    local = [r["local"] for r in ranks]
    assert local[0]["ratio"] != pytest.approx(local[1]["ratio"])  # different shards
    expected = [(a + b) / 2 for a, b in zip(local[0]["ratio"], local[1]["ratio"])]
    assert ranks[0]["reduced"]["ratio"] == pytest.approx(expected, rel=1e-12)
    acc = _scalars(tmp_path / "lt" / "version_0")
    events = acc.Scalars("norm_ratio/block_02")
    assert len(events) == EPOCHS and events[-1].value == pytest.approx(expected[1], rel=1e-6)


def test_auto_units_trace_a_model_without_blocks():
    """A torchvision-style ResNet has no ``blocks``: "auto" traces it from example_input_array and
    finds the residual blocks; a transformer's sub-graph units are named, not guessed."""
    from user_models import PreNormBlock, tiny_resnet

    net = tiny_resnet(layers=(2, 1, 1, 1))
    module = Wrapped(net)
    found = _auto_units(module, torch.randn(2, 3, 16, 16))
    assert found == [net.layer1[0], net.layer1[1], net.layer2[0], net.layer3[0], net.layer4[0]]
    with pytest.raises(UserError, match="have no module of their own.*pass units="):
        _auto_units(Wrapped(torch.nn.Sequential(PreNormBlock(8), PreNormBlock(8))), torch.randn(2, 4, 8))
