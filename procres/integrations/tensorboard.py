"""TensorBoard event files: a training run's epochs, and per-unit norm ratios from any loop.

Needs the optional extra ``[tensorboard]`` (``pip install 'procrustes-resnets[tensorboard]'``);
``import procres`` does not import it, and asking for a writer without it raises
:class:`procres.errors.UserError` naming the extra.

Tag layout (made here only, by :func:`epoch_scalars`, :func:`norm_scalars` and
:func:`add_norm_histogram`; ``procres train --tensorboard``, the Lightning callback and
:func:`log_norms` in a hand-written loop all write it):

    loss/train, loss/val, loss/test            mean cross-entropy of the epoch / split
    accuracy/train, accuracy/val, accuracy/test
    optim/lr, speed/images_per_sec, speed/epoch_time_s, epoch
    norm_ratio/block_01 ...                    r_l per unit, 1-based in forward order (zero-padded)
    norm_ratio/log10                           histogram over the units of log10 r_l (finite r_l > 0)
    transition_error/<conv path>               max |sigma / c - 1| over the non-zero singular values
                                               of each ``model.transitions()`` conv's circular
                                               operator at its input size, c its norm-preserving
                                               target (``procres.spectral``)

Values missing from a record (epoch 0's training metrics, validation without a split) are not
written. The global step is the training step (``record["step"]``; epoch 0 is step 0).

Resuming. The run writes an epoch's events *before* its end-of-epoch checkpoint, so the event
files always hold every epoch the checkpoint holds, and perhaps one more (a run killed between the
two). The resumed writer starts with ``purge_step`` = the checkpoint's step + 1: TensorBoard (and
its ``EventAccumulator``) discards the events written before it at or after that step, and the
epochs retrained from the checkpoint are written again, once each. A log folder with no event
file yet (TensorBoard switched on at a resume) gets the checkpoint's history first, without the
transition errors, whose weights are gone. A fresh run purges from step 0. One folder, one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from procres.errors import UserError

__all__ = ["NORM_PREFIX", "summary_writer", "epoch_scalars", "norm_scalars", "add_norm_histogram", "log_norms",
           "transition_errors", "RunBoard", "log_dir", "seed_log_dir", "open_tensorboard"]

NORM_PREFIX = "norm_ratio"
EXTRA = "pip install 'procrustes-resnets[tensorboard]'"

# history record key -> tag
_EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
               "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
               "lr": "optim/lr", "images_per_sec": "speed/images_per_sec", "epoch_time": "speed/epoch_time_s",
               "epoch": "epoch"}


def summary_writer(folder, **kwargs):
    """``torch.utils.tensorboard.SummaryWriter(folder, **kwargs)``, or a UserError naming the extra."""
    return _writer_class()(str(folder), **kwargs)


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's module raises it when the tensorboard package is missing
        raise UserError(f"TensorBoard logging needs the tensorboard package, which is not installed "
                        f"({err}): {EXTRA}") from err
    return SummaryWriter


# ---------------------------------------------------------------- the tag layout
def epoch_scalars(record: dict) -> dict[str, float]:
    """``{tag: value}`` of a history record's per-epoch numbers (None values left out)."""
    return {tag: float(record[key]) for key, tag in _EPOCH_TAGS.items() if record.get(key) is not None}


def norm_scalars(summary: dict, *, prefix: str = NORM_PREFIX) -> dict[str, float]:
    """``{prefix/block_01: r_1, ...}`` from a :meth:`procres.NormRecorder.summary` (empty for ``{}``)."""
    ratios = summary.get("ratio", [])
    width = max(2, len(str(len(ratios))))
    return {f"{prefix}/block_{i:0{width}d}": float(r) for i, r in enumerate(ratios, start=1)}


def _log10_ratios(summary: dict) -> list[float]:
    return [math.log10(r) for r in summary.get("ratio", []) if math.isfinite(r) and r > 0]


def add_norm_histogram(writer, summary: dict, step: int, *, prefix: str = NORM_PREFIX) -> None:
    """One histogram over the units of log10 r_l at ``step`` (nothing when no r_l is finite and > 0)."""
    values = _log10_ratios(summary)
    if values:
        import numpy as np

        writer.add_histogram(f"{prefix}/log10", np.asarray(values), global_step=step)


def log_norms(writer, summary: dict, step: int, *, prefix: str = NORM_PREFIX, histogram: bool = True) -> None:
    """Write a NormRecorder summary to a SummaryWriter: r_l per unit as scalars under ``prefix/``
    and (``histogram``) one histogram of log10 r_l, all at ``step``."""
    for tag, value in norm_scalars(summary, prefix=prefix).items():
        writer.add_scalar(tag, value, global_step=step)
    if histogram:
        add_norm_histogram(writer, summary, step, prefix=prefix)


def transition_errors(model) -> dict[str, float]:
    """``{transition_error/<conv path>: max relative distance from target}`` for ``model.transitions()``.

    The extreme non-zero singular values of each conv's circular operator at its input size and
    stride, in float64 (float32 rounding alone reads ~1e-7 for an exact projection), against
    ``norm_preserving_target``: ``procres.spectral.spectra.conv_extremes``, exact (one SVD for a kernel no
    larger than its stride, as the 1x1 transitions; the FFT for the stem). Empty for a model
    without transitions.
    """
    from procres.spectral.spectra import conv_extremes, norm_preserving_target

    transitions = model.transitions() if hasattr(model, "transitions") else []
    names = {id(m): name for name, m in model.named_modules()}
    out = {}
    for conv, size in transitions:
        w = conv.weight.detach().double()
        ext = conv_extremes(w, size, stride=conv.stride, padding_mode="circular", method="exact")
        target = norm_preserving_target(w, conv.stride)
        error = max(abs(ext["sigma_max"] / target - 1), abs(ext["sigma_min"] / target - 1))
        out[f"transition_error/{names.get(id(conv), 'unnamed')}"] = error
    return out


# ---------------------------------------------------------------- a training run's writer
class RunBoard:
    """Writes a training run's history records to TensorBoard (rank 0); with ``writer=None`` every
    method does nothing (other ranks, or TensorBoard off), so the training loop calls it unconditionally."""

    def __init__(self, writer=None):
        self.writer = writer

    def write_epoch(self, record: dict, model=None) -> None:
        """The record's scalars, r_l and histogram, and (given ``model``) the transition errors; flushed."""
        if self.writer is None:
            return
        step = int(record["step"])
        scalars = epoch_scalars(record)
        if model is not None:
            scalars.update(transition_errors(model))
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        log_norms(self.writer, record.get("norms") or {}, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def log_dir(cfg, run_dir) -> Path | None:
    """The config's TensorBoard folder: ``"auto"`` is the run folder's ``tb/``; None: off."""
    if cfg.tensorboard is None:
        return None
    return Path(run_dir) / "tb" if cfg.tensorboard == "auto" else Path(cfg.tensorboard)


def seed_log_dir(tensorboard: str | None, seed: int) -> str | None:
    """The ``tensorboard`` setting of one seed's run in a multi-seed training: a folder of the
    user's gets a ``seed<k>`` subfolder (TensorBoard shows each as a run; one folder would hold
    one run), ``"auto"`` and None stay (each run folder has its own ``tb/``)."""
    if tensorboard is None or tensorboard == "auto":
        return tensorboard
    return str(Path(tensorboard) / f"seed{seed}")


def open_tensorboard(cfg, run_dir, main: bool, checkpoint: dict | None) -> RunBoard:
    """The run's :class:`RunBoard`: writing on rank 0 (``main``) when ``cfg.tensorboard`` is set.

    ``checkpoint``: the training state being resumed (None for a fresh run); its step sets the
    purge step and, when the log folder holds no event file yet, its history is written first (see
    the module docstring). Every rank checks that tensorboard is installed, so all of them stop on
    a missing package, before training.
    """
    folder = log_dir(cfg, run_dir)
    if folder is None:
        return RunBoard()
    writer_class = _writer_class()
    if not main:
        return RunBoard()
    backfill = checkpoint is not None and not any(folder.glob("events.out.tfevents.*"))
    board = RunBoard(writer_class(str(folder), purge_step=0 if checkpoint is None else checkpoint["step"] + 1))
    if backfill:
        for record in json.loads(checkpoint["history"]):
            board.write_epoch(record)
    return board

