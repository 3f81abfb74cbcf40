"""The training loop: one flat function, checkpoints that survive a kill, and DDP.

``train(config)`` runs one :class:`procres.config.TrainConfig` and writes the run folder::

    config.json         the resolved config (TrainConfig.to_json)
    history.jsonl       one JSON object per epoch; epoch 0 is measured at initialisation
    checkpoint.pt       the latest full training state (checkpoint.prev.pt: the one before it)
    model.pt            final weights: {"model": state_dict, "config": dict}
    result.json         final-epoch test error and test error at the best validation epoch
    train.log           what was printed (timestamped), plus resume events and errors

The loop's parts that are not training live beside it: evaluation and the norm probe in
``procres.evaluate``, the DDP process group and collectives in ``procres.distributed``, what a
checkpoint holds in ``procres.checkpoint``, the logger and the printed table in ``procres.runlog``.

Each step, in order: learning rate from ``lr_at`` -> forward (bf16 autocast on CUDA) -> loss ->
backward -> optimizer step, after which the Procrustes hook (``procres.procrustes.attach_procrustes``,
only for models whose ``transitions()`` is non-empty and ``projection_p > 0``) projects each
transition conv with probability p. A :class:`procres.diagnostics.NormRecorder` on ``model.blocks``
records per-unit gradient-norm ratios on every ``record_every``-th training step; its summary
goes into the epoch's history record and is then reset. With ``compile`` the recorder's hooks
would break the compiled graph at every unit, so the norms are measured instead at each epoch end
on the same few batches as epoch 0.

CUDA graphs (``cuda_graphs``, opt-in with ``--cuda-graphs`` for a single CUDA process without ``compile``): the
training forward, the loss and the backward are captured once with
``torch.cuda.make_graphed_callables`` (:func:`procres.graphs.graphed_loss`) and then replayed, so a step costs a
few launches instead of thousands (a 164-layer net at batch 128 is launch-bound on a large GPU).
What stays eager: copying each batch into the graph's static input (the train loader drops the
last partial batch, so every batch has the captured shape; any other shape runs eagerly), the
optimizer step (fused SGD on CUDA, where torch has it) and the Procrustes hook, which writes
the projected kernel into the weight's own storage (``copy_``), where the graph reads it. BN runs
in training mode inside the graph; the running statistics changed by the capture's warm-up
iterations are restored, so the graph path starts from the same state as the eager one. The
recorder's hooks cannot run inside a graph, so with graphs the recorded steps (global step a
multiple of ``record_every``) run eagerly with the recorder, the same forward, loss, backward and
update on the same batch: the history's norms mean the same with and without graphs (an eager
step costs a whole eager step; raise ``record_every`` to pay it less often). Evaluation and the
norm probes are eager (the captured callable wraps the model; the model itself is untouched).
Not with DDP (the gradient all-reduce would need capturing too; DDP runs train eagerly) and not
with ``compile`` (the config refuses both at once; automatic graphs are off when compiling). If
capture fails (an operation that cannot be captured, an older torch), a warning is logged and
the run trains eagerly.

History record keys: epoch, step, lr, train_loss, train_acc, val_loss, val_acc, test_loss,
test_acc, epoch_time (s, training + evaluation), images_per_sec (training only), norms
(NormRecorder.summary()), block_kinds. Epoch 0 holds the norms of ``init_norm_batches``
un-augmented training batches at initialisation (BN statistics restored afterwards) and the
evaluation metrics; its train_* are null. val_* are null without a validation split.

The result is the final-epoch test error and the test error at the epoch with the best validation
accuracy (earliest on ties) -- never the best test epoch. Errors are fractions in [0, 1].

Checkpoints (``procres.checkpoint``: atomic writes, ``weights_only`` loading) are saved at the end
of every epoch, every ``checkpoint_minutes`` and every ``checkpoint_every_steps`` steps. They hold
the model, the optimizer (momentum buffers), the projection hook's generator, each rank's data
loader position, the partial epoch sums, the history so far and the Python / numpy / torch / CUDA
RNG states. There is no LR-scheduler object (``lr_at`` is a pure function of epoch and step) and
no grad scaler (bf16 needs no loss scaling). A mid-epoch checkpoint also holds the norm recorder's
window so far (rank 0's sums and counts), so a resumed epoch's norms equal an uninterrupted one's. On a resume
``history.jsonl`` is rewritten from the checkpoint, so it never holds an epoch twice. An
unreadable checkpoint raises ValueError naming it and ``checkpoint.prev.pt``, which is kept.

With ``deterministic`` on a CPU, a run killed at any point (SIGKILL included) and resumed with
``resume=True`` ends with weights bit-identical to an uninterrupted run (``tests/test_train.py``).
It needs the same thread count in both runs (``threads``).

A NaN or infinite loss stops the run with FloatingPointError naming the epoch and step; no
checkpoint is written after it. On CPU every step is checked before the backward pass; on CUDA
the check runs every ``_NAN_CHECK_EVERY`` steps and before every checkpoint, because it costs a
host-device synchronisation. A finite loss can still overflow the gradients, so before every
checkpoint the weights are checked too: a saved checkpoint is always finite.

DDP: launch with ``torchrun --nproc_per_node N -m procres train ...``. NCCL on CUDA, gloo on CPU.
``batch_size`` is the global batch (split evenly over ranks); every rank reads its own shard of
each batch order (DeviceLoader rank/world_size); the projection hook is seeded identically on
every rank so it projects the same layers the same way; BN running statistics are broadcast from
rank 0 at the end of each epoch; training and evaluation sums are all-reduced; only rank 0 writes
files. Resuming needs the same number of ranks and the run folder on a file system every rank
can read.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from procres.checkpoint import (append_jsonl, atomic_save, atomic_write_text, load_checkpoint, save_checkpoint,
                                set_rng_state, training_state)
from procres.config import TrainConfig, lr_at
from procres.distributed import gathered, init_distributed, reduced
from procres.errors import UserError
from procres.evaluate import eval_record, probe_norms
from procres.graphs import graphed_loss  # looked up here at each run, so tests can patch train.graphed_loss
from procres.runlog import ROW_HEADER, logger, progress, row

_NAN_CHECK_EVERY = 50  # CUDA steps between non-finite-loss checks (each is a device sync)
_DDP_TIME_CHECK_EVERY = 25  # DDP steps between rank 0's "checkpoint due?" broadcasts

__all__ = ["train", "train_seeds", "build_model", "graphed_loss"]


def train(config: TrainConfig, *, quiet: bool = False) -> dict:
    """Train ``config``; return the result dict (also saved, without model/history, as result.json).

    Keys: final_test_error, final_val_error, best_val_epoch, val_error_at_best_val,
    test_error_at_best_val (None without a validation split), epochs, run_dir, history (list of
    records), model (the trained nn.Module, unwrapped).
    """
    from procres.data import DeviceLoader, load_dataset

    cfg = config.resolved(cuda_available=torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but torch.cuda.is_available() is False")
    cuda = cfg.device == "cuda"
    rank, world, local_rank, own_group = init_distributed(cuda)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {world} DDP ranks")
    main = rank == 0
    saved_flags = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cuda:
        torch.backends.cudnn.benchmark = not cfg.deterministic
    run_dir = Path(cfg.out)
    log = logger(run_dir, main, quiet)
    try:
        checkpoint = load_checkpoint(run_dir) if cfg.resume else None
        if not cfg.resume and (run_dir / "checkpoint.pt").exists():
            raise UserError(f"{run_dir} already holds a run (checkpoint.pt): pass resume=True / --resume "
                             "to continue it, or choose another out folder")
        if main:
            atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")

        # ---------------------------------------------------------------- data, model, optimizer
        _seed_everything(cfg.seed)
        data = load_dataset(cfg.dataset, cfg.data, val_size=cfg.val_size, seed=cfg.seed,
                            image_size=cfg.image_size)
        per_rank = cfg.batch_size // world
        norm = dict(mean=data.mean, std=data.std, device=device, channels_last=bool(cfg.channels_last))
        train_loader = DeviceLoader(data.train_x, data.train_y, batch_size=per_rank, train=True, pad=cfg.pad,
                                    pad_mode=cfg.pad_mode, flip=data.flip, seed=cfg.seed, rank=rank,
                                    world_size=world, **norm)
        # evaluation loaders shard by rank too; the all-reduced sums count every image exactly once
        val_loader = DeviceLoader(data.val_x, data.val_y, batch_size=cfg.eval_batch_size, train=False, rank=rank,
                                  world_size=world, **norm) if len(data.val_y) else None
        test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=cfg.eval_batch_size, train=False,
                                   rank=rank, world_size=world, **norm)
        steps_per_epoch = len(train_loader)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)

        model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size).to(device)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        optimizer = _sgd(model, cfg, fused=cuda)
        hook = None
        if cfg.projection_p > 0 and model.transitions():
            from procres.procrustes import attach_procrustes

            hook = attach_procrustes(model, optimizer, p=cfg.projection_p, method=cfg.projection_method,
                                     faithful=cfg.faithful, seed=cfg.seed)
        net = model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
        if cfg.compile:
            net = torch.compile(net)
        amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp))

        # ---------------------------------------------------------------- start or resume
        epoch, step, history = 0, 0, []
        partial = None
        if checkpoint is not None:
            try:
                model.load_state_dict(checkpoint["model"])
            except RuntimeError as err:
                raise UserError(f"the checkpoint in {run_dir} does not fit model {cfg.model!r}: {err}") from err
            optimizer.load_state_dict(checkpoint["optimizer"])
            if hook is not None and checkpoint["projection"] is not None:
                hook.load_state_dict(checkpoint["projection"])
            elif hook is not None:  # the run so far had projection_p = 0: the hook starts from its seed
                log.info(f"projection turned on at the resume (p={cfg.projection_p}); it was off before")
            set_rng_state(checkpoint["rng"], cuda)
            epoch, step = checkpoint["epoch"], checkpoint["step"]
            history = json.loads(checkpoint["history"])
            partial = checkpoint["partial"]
            if partial is not None:
                train_loader.set_epoch(epoch)
                train_loader.load_state_dict(checkpoint["loader"][rank])
            if main:
                atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            log.info(f"resumed from {run_dir / 'checkpoint.pt'} at epoch {epoch}, step {step}")
        else:
            if main:
                atomic_write_text(run_dir / "history.jsonl", "")
            record = {"epoch": 0, "step": 0, "lr": lr_at(cfg, 0, 0), "train_loss": None, "train_acc": None}
            record.update(eval_record(model, val_loader, test_loader, device=device, amp=amp, world=world))
            record.update(epoch_time=None, images_per_sec=None, block_kinds=model.block_kinds,
                          norms=probe_norms(model, data, cfg, device, amp))
            history.append(record)
            if main:
                append_jsonl(run_dir / "history.jsonl", record)
        graphed, static_shape = None, None  # graphed: (x, y) -> (loss, logits) as CUDA graphs; None: eager
        if cfg.cuda_graphs and world > 1:
            log.info("cuda_graphs: not used with DDP (several ranks); training eagerly")
        elif cfg.cuda_graphs:
            sample = torch.zeros((per_rank, data.in_channels, data.image_size, data.image_size), device=device)
            sample = sample.contiguous(memory_format=memory_format)
            try:
                graphed = graphed_loss(model, sample, torch.zeros(per_rank, dtype=torch.int64, device=device),
                                       amp=bool(cfg.amp))
            except Exception as err:  # a beta API on any torch/driver: never lose a run to it
                message = f"CUDA graph capture failed, training eagerly instead ({type(err).__name__}: {err})"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
            static_shape = sample.shape  # a batch of another shape (none with drop_last) runs eagerly
        log.info(f"{cfg.model} on {cfg.dataset}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{len(data.train_y)} training images, {steps_per_epoch} steps/epoch, device {device}, "
                 f"{world} rank(s), projection {'on' if hook else 'off'}, "
                 f"CUDA graphs {'on' if graphed is not None else 'off'}")
        log.info(ROW_HEADER)  # after the graph capture and its messages: the table stays in one piece
        for h in history:
            log.info(row(h))

        # ---------------------------------------------------------------- the loop
        recorder = None
        if cfg.record_every and not cfg.compile:
            from procres.diagnostics import NormRecorder

            # with graphs only the eager steps reach the hooks, and they are exactly the recorded ones
            recorder = NormRecorder(model.blocks, every=1 if graphed is not None else cfg.record_every)
            if partial is not None and partial.get("norm_window") is not None:
                recorder.load_state_dict(partial["norm_window"])  # the resumed epoch's window so far
            recorder.steps_seen = step  # record the same global steps after a resume
        last_checkpoint = time.monotonic()
        bad = torch.zeros((), dtype=torch.int64, device=device)  # non-finite losses since the last check
        model.train()
        lr = lr_at(cfg, epoch, step)
        while epoch < cfg.epochs:
            if partial is None:  # a fresh epoch
                train_loader.set_epoch(epoch)
                partial = {"epoch_step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "train_time": 0.0}
            loss_sum = torch.tensor(partial["loss_sum"] if main else 0.0, dtype=torch.float64, device=device)
            correct = torch.tensor(partial["correct"] if main else 0, dtype=torch.int64, device=device)
            seen = partial["seen"] if main else 0
            epoch_step, started = partial["epoch_step"], time.monotonic() - partial["train_time"]
            remaining = steps_per_epoch - epoch_step
            bar = progress(itertools.islice(train_loader, remaining), remaining, f"epoch {epoch + 1}/{cfg.epochs}",
                           quiet or not main)
            for x, y in bar:
                lr = lr_at(cfg, epoch, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                record = recorder is not None and step % cfg.record_every == 0
                if graphed is not None and not record and x.shape == static_shape:
                    loss, out = graphed(x, y)  # replays the forward graph; backward() replays the other
                else:
                    with torch.autocast(**amp):
                        out = net(x)
                        loss = F.cross_entropy(out, y)
                if not cuda:  # free on CPU: stop before a bad step touches the weights
                    _check_finite(torch.isfinite(loss).logical_not(), None, world, epoch, step + 1, exact=True)
                else:
                    bad += torch.isfinite(loss).logical_not().long()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()  # the Procrustes hook projects here
                step += 1
                epoch_step += 1
                loss_sum += loss.detach().double() * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
                if cuda and step % _NAN_CHECK_EVERY == 0:
                    _check_finite(bad, None, world, epoch, step, exact=False)
                if epoch_step < steps_per_epoch and _checkpoint_due(cfg, step, last_checkpoint, world, device):
                    _check_finite(bad, model, world, epoch, step, exact=False)
                    sums = reduced([loss_sum.item(), correct.item(), seen], world, device)
                    state = {"epoch_step": epoch_step, "loss_sum": sums[0], "correct": int(sums[1]),
                             "seen": int(sums[2]), "train_time": time.monotonic() - started,
                             "norm_window": recorder and recorder.state_dict()}
                    loader_states = gathered(train_loader.state_dict(), world)  # one per rank
                    if main:
                        save_checkpoint(run_dir, training_state(model, optimizer, hook, loader_states, epoch, step,
                                                                state, history, cfg, cuda))
                    last_checkpoint = time.monotonic()
            _check_finite(bad, model, world, epoch, step, exact=False)
            train_time = time.monotonic() - started
            if world > 1:
                for buffer in model.buffers():  # BN running statistics: rank 0's, as DDP's forward does
                    dist.broadcast(buffer, 0)
            loss_total, correct_total, seen_total = reduced([loss_sum.item(), correct.item(), seen], world, device)
            epoch += 1
            partial = None
            record = {"epoch": epoch, "step": step, "lr": lr, "train_loss": loss_total / seen_total,
                      "train_acc": correct_total / seen_total}
            record.update(eval_record(model, val_loader, test_loader, device=device, amp=amp, world=world))
            record.update(epoch_time=time.monotonic() - started, images_per_sec=seen_total / train_time,
                          block_kinds=model.block_kinds,
                          norms=_epoch_norms(recorder, model, data, cfg, device, amp))
            if recorder:
                recorder.reset()
            history.append(record)
            if main:
                save_checkpoint(run_dir, training_state(model, optimizer, hook, None, epoch, step, None, history,
                                                        cfg, cuda))
                append_jsonl(run_dir / "history.jsonl", record)
            last_checkpoint = time.monotonic()
            log.info(row(record))
        if recorder:
            recorder.remove()

        # ---------------------------------------------------------------- result
        result = _result(history, run_dir)
        if main:
            atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, run_dir / "model.pt")
            atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
        best = result["test_error_at_best_val"]
        log.info(f"final test error {100 * result['final_test_error']:.2f}%"
                 + (f", at the best validation epoch {result['best_val_epoch']}: {100 * best:.2f}%" if best is not None
                    else " (no validation split)") + f"; run folder {run_dir}")
        return {**result, "history": history, "model": model}
    except FloatingPointError as err:
        log.error(str(err))
        raise
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.set_num_threads(saved_flags[1])
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)
        if own_group:
            dist.destroy_process_group()


def train_seeds(config: TrainConfig, seeds, *, quiet: bool = False) -> dict:
    """Train ``config`` once per seed in ``out/seed<k>``; write and return ``out/summary.json``.

    The summary holds, for final_test_error and test_error_at_best_val, the per-seed values, their
    mean and the sample standard deviation (ddof=1; 0 for a single seed).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {seeds} must be a non-empty list of distinct integers")
    base = Path(config.resolved().out if config.out is None else config.out)
    if config.out is None:
        base = base.with_name(base.name.rsplit("-seed", 1)[0])
    runs = [train(config.replace(seed=s, out=str(base / f"seed{s}")), quiet=quiet) for s in seeds]
    summary = {"seeds": seeds, "run_dirs": [r["run_dir"] for r in runs]}
    for key in ("final_test_error", "test_error_at_best_val"):
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            summary[key] = None
            continue
        summary[key] = {"values": values, "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    if not dist.is_initialized() or dist.get_rank() == 0:
        atomic_write_text(base / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """``procres.models.create_model(name)``, or ``<family><depth>`` for an unregistered depth (procresnet13)."""
    from procres import models

    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        return models.create_model(name, **kwargs)
    except ValueError:
        match = re.fullmatch(r"([a-z]+?)(\d+)", name)
        family = match and match.group(1)
        if family not in ("resnet", "preresnet", "procresnet", "plain", "plainpre", "plainproc"):
            raise
        return getattr(models, family)(int(match.group(2)), **kwargs)


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


# ---------------------------------------------------------------- pieces of the loop
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_finite(bad: torch.Tensor, model, world: int, epoch: int, step: int, *, exact: bool) -> None:
    """Raise FloatingPointError if any rank saw a non-finite loss (``bad`` counts them) or, when
    ``model`` is given, holds a non-finite parameter or buffer (a finite loss can still give
    overflowing gradients). Called before every checkpoint, so a saved checkpoint is always finite."""
    flags = [bad.reshape(1).long()]
    if model is not None:
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        flags.append(torch.stack([torch.isfinite(t).all().logical_not() for t in tensors]).sum().reshape(1).long())
    flags = torch.cat(flags)
    if world > 1:
        dist.all_reduce(flags)
    loss_bad, weights_bad = (flags.tolist() + [0])[:2]
    stop = "training stopped; nothing was saved after it (the last checkpoint, if there is one, is kept)"
    if loss_bad:
        when = f"step {step}" if exact else f"one of the {_NAN_CHECK_EVERY} steps up to step {step}"
        raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}, {when}: {stop}")
    if weights_bad:
        raise FloatingPointError(f"non-finite weights in epoch {epoch + 1}, step {step} (found at a checkpoint; the "
                                 f"loss was finite, the gradients overflowed): {stop}")


def _checkpoint_due(cfg, step, last, world, device) -> bool:
    if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
        return True
    if not cfg.checkpoint_minutes:
        return False
    if world == 1:
        return time.monotonic() - last >= 60 * cfg.checkpoint_minutes
    if step % _DDP_TIME_CHECK_EVERY:
        return False
    flag = torch.tensor(time.monotonic() - last >= 60 * cfg.checkpoint_minutes, device=device, dtype=torch.int64)
    dist.broadcast(flag, 0)  # rank 0's clock decides, so every rank checkpoints at the same step
    return bool(flag.item())


def _epoch_norms(recorder, model, data, cfg, device, amp) -> dict:
    """The epoch's norm summary: the recorder's window, or with ``compile`` a probe (see module doc)."""
    if recorder is not None:
        return recorder.summary()
    return probe_norms(model, data, cfg, device, amp) if cfg.compile and cfg.record_every else {}


def _result(history, run_dir) -> dict:
    final = history[-1]
    trained = [h for h in history if h["epoch"] > 0 and h["val_acc"] is not None]
    best = max(trained, key=lambda h: (h["val_acc"], -h["epoch"])) if trained else None
    return {
        "final_test_error": 1.0 - final["test_acc"],
        "final_val_error": None if final["val_acc"] is None else 1.0 - final["val_acc"],
        "best_val_epoch": best["epoch"] if best else None,
        "val_error_at_best_val": 1.0 - best["val_acc"] if best else None,
        "test_error_at_best_val": 1.0 - best["test_acc"] if best else None,
        "epochs": final["epoch"],
        "run_dir": str(run_dir),
    }
