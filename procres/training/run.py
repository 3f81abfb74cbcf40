"""A training run's working parts, built from its config before the loop starts.

:func:`build_run` seeds everything, loads the data set, builds this rank's loaders (per-rank
batch ``batch_size // world``), the model (channels_last when configured), SGD (fused on CUDA
where torch has it), the Procrustes hook (only for models whose ``transitions()`` is non-empty
and ``projection_p > 0``; seeded identically on every rank, so every rank projects the same
layers the same way), the DDP wrapper and ``torch.compile``. :class:`Run` holds them with the
loop's position; ``procres.training.loop`` fills the position (a fresh start or a resume), then calls
:func:`capture_graphs` (the whole training step as one CUDA graph, see ``procres.training.graphs``) and
:func:`norm_recorder`.
"""

from __future__ import annotations

import inspect
import logging
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from procres.errors import UserError
from procres.models.registry import create_model
from procres.training.config import TrainConfig

# looked up here at each run, so tests can patch run.capture_step and run.self_check
from procres.training.graphs import SELF_CHECK_TOLERANCE, capture_step, self_check
from procres.training.recipes import lr_at

__all__ = ["Run", "build_run", "capture_graphs", "norm_recorder"]


@dataclass
class Run:
    """What the pieces of the training loop share: settings, place in DDP, data, model, optimizer,
    the loop's position."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    log: logging.Logger
    data: object  # procres.training.data.DataSplits
    train_loader: object  # procres.training.data.DeviceLoader, this rank's shard, per-rank batch
    val_loader: object | None
    test_loader: object
    steps_per_epoch: int
    model: torch.nn.Module  # the CifarNet itself
    net: torch.nn.Module  # what the training forward calls: the model, wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    hook: object | None  # procres.constraints.hooks.ProcrustesHook
    amp: dict  # torch.autocast keyword arguments
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    lr: float = 0.0  # the last step's learning rate
    history: list = field(default_factory=list)
    partial: dict | None = None  # the position and sums of a resumed, unfinished epoch
    graphed: object | None = None  # procres.training.graphs.StepGraph: (x, y, lr) -> (loss, logits), the whole step; None: eager
    graph_info: dict = field(default_factory=dict)  # the capture's seconds and self-check (procres.training.graphs)
    recorder: object | None = None  # procres.diagnostics.recorder.NormRecorder on model.blocks
    changes: dict = field(default_factory=dict)  # settings changed at a resume, for the next epoch's record
    last_checkpoint: float = 0.0  # time.monotonic() of the last save
    bad: torch.Tensor | None = None  # non-finite losses since the last check (CUDA counts lazily)
    board: object | None = None  # procres.integrations.tensorboard.RunBoard (writes nothing unless asked, rank 0)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)


def build_run(cfg: TrainConfig, rank: int, world: int, local_rank: int, log) -> Run:
    """Seed, then build the data loaders, the model, the optimizer, the projection hook, DDP, compile."""
    from procres.training.data import load_dataset

    device = torch.device("cuda", local_rank) if cfg.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {world} DDP ranks")
    _seed_everything(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data, val_size=cfg.val_size, seed=cfg.seed, image_size=cfg.image_size)
    train_loader, val_loader, test_loader = _loaders(cfg, data, rank, world, device)
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)

    model = create_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                         image_size=data.image_size).to(device)
    model = model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = _sgd(model, cfg, fused=device.type == "cuda")
    hook = None
    if cfg.projection_p > 0 and model.transitions():
        from procres.constraints.hooks import attach_procrustes

        hook = attach_procrustes(model, optimizer, p=cfg.projection_p, method=cfg.projection_method,
                                 faithful=cfg.faithful, seed=cfg.seed)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cfg.device == "cuda"
                                                        else None)
    if cfg.compile:
        net = torch.compile(net)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp))
    return Run(cfg, rank, world, device, log, data, train_loader, val_loader, test_loader, steps_per_epoch,
                model, net, optimizer, hook, amp, bad=torch.zeros((), dtype=torch.int64, device=device))


def _loaders(cfg: TrainConfig, data, rank: int, world: int, device: torch.device):
    """(train, validation or None, test) loaders of this rank's shard. Evaluation shards by rank
    too: the all-reduced sums count every image exactly once."""
    from procres.training.data import DeviceLoader

    norm = dict(mean=data.mean, std=data.std, device=device, channels_last=bool(cfg.channels_last))
    train_loader = DeviceLoader(data.train_x, data.train_y, batch_size=cfg.batch_size // world, train=True,
                                pad=cfg.pad, pad_mode=cfg.pad_mode, flip=data.flip, seed=cfg.seed, rank=rank,
                                world_size=world, **norm)
    val_loader = DeviceLoader(data.val_x, data.val_y, batch_size=cfg.eval_batch_size, train=False, rank=rank,
                              world_size=world, **norm) if len(data.val_y) else None
    test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=cfg.eval_batch_size, train=False,
                               rank=rank, world_size=world, **norm)
    return train_loader, val_loader, test_loader


def _sgd(model, cfg, *, fused: bool) -> torch.optim.SGD:
    """SGD with the config's settings; the fused CUDA kernel where this torch has it (same update,
    fewer launches: with CUDA graphs the optimizer step is the largest eager part of a step)."""
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    params = list(model.parameters())
    if fused and "fused" in inspect.signature(torch.optim.SGD).parameters:
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.SGD(params, **kwargs)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_graphs(run: Run) -> None:
    """With ``cuda_graphs`` on one process, capture the training step and check one replay against
    an eager step (``procres.training.graphs``); on any failure warn, log and train eagerly."""
    if not run.cfg.cuda_graphs:
        return
    if run.world > 1:
        run.log.info("cuda_graphs: not used with DDP (several ranks); training eagerly")
        return
    data, per_rank, amp = run.data, run.cfg.batch_size, bool(run.cfg.amp)
    fmt = torch.channels_last if run.cfg.channels_last else torch.contiguous_format
    x = torch.zeros((per_rank, data.in_channels, data.image_size, data.image_size), device=run.device)
    y = torch.zeros(per_rank, dtype=torch.int64, device=run.device)
    lr = lr_at(run.cfg, run.epoch, run.step)
    try:
        graph = capture_step(run.model, run.optimizer, x.contiguous(memory_format=fmt), y, amp=amp, lr=lr)
        check = self_check(run.model, run.optimizer, graph, amp=amp, lr=lr, seed=run.cfg.seed)
    except Exception as err:  # a beta API on any torch/driver: never lose a run to it
        return _train_eagerly(run, f"CUDA graph capture failed, training eagerly instead ({type(err).__name__}: {err})")
    run.graph_info = {"capture_s": graph.capture_s, **check}
    if not check["ok"]:
        return _train_eagerly(run, "CUDA graph self-check failed, training eagerly instead: one replay gave loss "
                                   f"{check['loss_graph']:.6g} (eager {check['loss_eager']:.6g}), a weight update "
                                   f"{check['update_diff']:.2e} and BN statistics {check['stats_diff']:.2e} (relative) "
                                   f"away from the eager step's; tolerance {SELF_CHECK_TOLERANCE}")
    run.graphed = graph
    run.log.info(f"training step captured as one CUDA graph in {graph.capture_s:.1f} s; self-check against an eager "
                 f"step: loss {check['loss_graph']:.6g} (eager {check['loss_eager']:.6g}), weight update within "
                 f"{check['update_diff']:.1e}, BN statistics within {check['stats_diff']:.1e}")


def _train_eagerly(run: Run, message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    run.log.warning(message)


def norm_recorder(run: Run):
    """The recorder of per-unit norm ratios (None without ``record_every`` or with ``compile``)."""
    if not run.cfg.record_every or run.cfg.compile:
        return None
    from procres.diagnostics.recorder import NormRecorder

    # with graphs only the eager steps reach the hooks, and they are exactly the recorded ones
    recorder = NormRecorder(run.model.blocks, every=1 if run.graphed is not None else run.cfg.record_every)
    if run.partial is not None and run.partial.get("norm_window") is not None:
        recorder.load_state_dict(run.partial["norm_window"][run.rank])  # this rank's window so far
    recorder.steps_seen = run.step  # record the same global steps after a resume
    return recorder
