"""DDP plumbing for the training loop: the process group from torchrun's environment, and the two
collectives the loop needs, each a no-op on a single process.

Launch with ``torchrun --nproc_per_node N -m procres train ...``: NCCL on CUDA, gloo on CPU. With
one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialised and no collective runs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "gathered", "reduced"]


def init_distributed(cuda: bool):
    """(rank, world_size, local_rank, created_here) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank, True


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
