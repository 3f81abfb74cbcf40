"""Training checkpoints and run files written so that a kill at any moment leaves them usable.

Every file is written atomically (:mod:`procres.files`). ``save_checkpoint`` first renames the checkpoint it replaces to ``checkpoint.prev.pt``;
``load_checkpoint`` reads with ``torch.load(weights_only=True)`` (no arbitrary unpickling), uses
``checkpoint.prev.pt`` only when ``checkpoint.pt`` is missing (a kill between the two renames) and
turns an unreadable ``checkpoint.pt`` into a UserError that names it and the previous one, which
it leaves untouched. RNG states are stored as lists, ints and tensors so that ``weights_only``
loading accepts them (Python's ``random.getstate()`` tuple becomes a list and back).
``training_state`` assembles what a training checkpoint holds; ``procres.training.loop`` restores it key by key.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from procres.errors import UserError
from procres.files import fsync_dir, failure_reason, write_tmp

__all__ = ["save_checkpoint", "load_checkpoint", "training_state", "rng_state", "set_rng_state"]


def save_checkpoint(run_dir, state: dict) -> Path:
    """Atomically write ``run_dir/checkpoint.pt``; the one it replaces becomes checkpoint.prev.pt."""
    run_dir = Path(run_dir)
    path, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    tmp = write_tmp(state, path)
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)
    fsync_dir(run_dir)
    return path


def load_checkpoint(run_dir) -> dict | None:
    """The latest checkpoint in ``run_dir`` (None when there is none), read with weights_only=True.

    Falls back to checkpoint.prev.pt only when checkpoint.pt is *missing* (a kill between the two
    renames of :func:`save_checkpoint`); an unreadable checkpoint.pt raises UserError.
    """
    run_dir = Path(run_dir)
    path, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    if not path.exists():
        if not prev.exists():
            return None
        path = prev
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "optimizer", "rng", "epoch", "step", "history"} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
    except Exception as err:  # truncated zip, unpickling error, wrong content: all the same to the user
        keep = (f"the previous checkpoint {prev} is kept untouched: move it to {path} to resume one save earlier"
                if prev.exists() and prev != path else "there is no previous checkpoint")
        raise UserError(f"checkpoint {path} is unreadable ({failure_reason(err)}); {keep}") from err
    return state


def training_state(model, optimizer, hook, loader_state, epoch, step, partial, history, cfg, cuda) -> dict:
    """The full training state for :func:`save_checkpoint`: weights, optimizer (momentum buffers),
    the projection hook's generator (``hook`` may be None), the loaders' positions, the RNG states,
    the epoch/step counters, the partial epoch sums, the history so far and the config."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "projection": hook.state_dict() if hook is not None else None,
        "loader": loader_state,  # list of DeviceLoader.state_dict(), one per rank (None at an epoch end)
        "rng": rng_state(cuda),
        "epoch": epoch,  # epochs completed
        "step": step,  # optimizer steps taken
        "partial": partial,  # None at an epoch end, else the position and sums within epoch `epoch`
        "history": json.dumps(history),
        "config": cfg.to_json(),
    }


def rng_state(cuda: bool) -> dict:
    """Python, numpy, torch (and, with ``cuda``, every CUDA device's) RNG states, weights_only-safe."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
    }


def set_rng_state(state: dict, cuda: bool) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if cuda and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
