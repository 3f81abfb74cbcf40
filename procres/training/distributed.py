"""DDP plumbing for the training loop: the process group from torchrun's environment, and the two
collectives the loop needs, each a no-op on a single process.

Launch with ``torchrun --nproc_per_node N -m procres train ...``: NCCL on CUDA, gloo on CPU. With
one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialised and no collective runs.

What the training loop does under DDP: ``batch_size`` is the global batch (split evenly over
ranks); every rank reads its own shard of each batch order (DeviceLoader rank/world_size); the
projection hook is seeded identically on every rank so it projects the same layers the same way;
BN running statistics are broadcast from rank 0 at the end of each epoch; training and
evaluation sums and the norm summaries are reduced over ranks; only rank 0 writes files;
``train_seeds`` runs every seed in one process group. Resuming needs the same number of ranks and
the run folder on a file system every rank can read.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

__all__ = ["process_group", "gathered", "reduced"]


@contextlib.contextmanager
def process_group(cuda: bool):
    """Yield (rank, world_size, local_rank) from torchrun's environment variables.

    The process group is initialised on entry when the environment asks for several ranks and
    none exists yet, and destroyed on exit only if it was created here: a caller that holds a
    group (several runs in one process) keeps it across them.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        yield 0, 1, 0
        return
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size(), local_rank
        return
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), local_rank
    finally:
        dist.destroy_process_group()


def gathered(obj, world) -> list:
    """``[obj]`` from every rank, in rank order (all_gather_object)."""
    if world == 1:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs


def reduced(values, world, device) -> list[float]:
    """The float sums of ``values`` over all ranks (an all-reduce in float64)."""
    if world == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
