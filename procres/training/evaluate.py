"""Evaluation: measuring the model between training steps and leaving it as it was.

``evaluate`` is the mean cross-entropy and the accuracy over a loader (no gradients, bf16 autocast
when ``amp`` enables it), with the sums all-reduced over DDP ranks so that each rank passes its own
shard and every image counts once; ``eval_record`` is the validation and test part of a history
record. ``probe_norms`` measures the per-unit gradient-norm ratios on a few un-augmented training
batches, averaged over DDP ranks, and restores what the measurement changed (epoch 0, and every
epoch end with ``compile``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["evaluate", "eval_record", "probe_norms"]


def evaluate(model, loader, *, device, amp: dict, world: int):
    """(mean loss, accuracy) over the loader, summed over ranks; (None, None) without one.

    ``amp``: the keyword arguments of ``torch.autocast``. The model is left in training mode.
    """
    if loader is None:
        return None, None
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast(**amp):
        for x, y in loader:
            out = model(x).float()
            sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(),
                                 (out.argmax(1) == y).sum().double(), torch.tensor(len(y), device=device,
                                                                                dtype=torch.float64)])
    model.train()
    if world > 1:
        dist.all_reduce(sums)
    loss, correct, n = sums.tolist()
    return loss / n, correct / n


def eval_record(model, val_loader, test_loader, *, device, amp: dict, world: int) -> dict:
    """val_loss, val_acc, test_loss, test_acc of a history record (val_* None without a validation split)."""
    val = evaluate(model, val_loader, device=device, amp=amp, world=world)
    test = evaluate(model, test_loader, device=device, amp=amp, world=world)
    return {"val_loss": val[0], "val_acc": val[1], "test_loss": test[0], "test_acc": test[1]}


def probe_norms(model, data, cfg, device, amp, *, rank: int = 0, world: int = 1) -> dict:
    """NormRecorder summary of the first ``init_norm_batches`` un-augmented training batches.

    Forward + backward in training mode without an optimizer step; gradients are cleared and the
    BN running statistics restored, so the model is left as it was. Used for epoch 0 and, with
    ``compile`` (where per-unit hooks would break the compiled graph), at the end of every epoch.
    Only the probed images are copied to ``device``. Under DDP each of the ``world`` ranks measures
    its shard of those images in batches of ``cfg.batch_size // world`` (the per-rank batch) and
    the summary is averaged over the ranks (``NormRecorder.summary(reduce=True)``, a collective),
    so every rank returns the same numbers.
    """
    if not cfg.init_norm_batches:
        return {}
    from procres.diagnostics.recorder import NormRecorder
    from procres.training.data import DeviceLoader

    per_rank = cfg.batch_size // world
    n = cfg.init_norm_batches * per_rank * world  # the first init_norm_batches global batches
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    loader = DeviceLoader(data.train_x[:n], data.train_y[:n], batch_size=per_rank, train=False, mean=data.mean,
                          std=data.std, device=device, channels_last=bool(cfg.channels_last), rank=rank,
                          world_size=world)
    model.train()
    with NormRecorder(model.blocks, every=1) as recorder:
        for x, y in loader:
            with torch.autocast(**amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
        summary = recorder.summary(reduce=True)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    return summary
