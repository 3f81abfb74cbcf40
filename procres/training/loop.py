"""The training loop, in named pieces; checkpoints that survive a kill; DDP.

``train(config)`` runs one :class:`procres.training.config.TrainConfig` and writes the run folder::

    config.json         the resolved config the run started with (TrainConfig.to_json; never
                        rewritten: a resume may change only procres.training.config.RESUME_MAY_CHANGE)
    history.jsonl       one JSON object per epoch; epoch 0 is measured at initialisation
    checkpoint.pt       the latest full training state (checkpoint.prev.pt: the one before it)
    model.pt            final weights: {"model": state_dict, "config": dict}
    result.json         final-epoch test error and test error at the best validation epoch
    train.log           what was printed (timestamped), plus resume events and errors
    tb/                 TensorBoard event files, with ``tensorboard="auto"`` (``procres.integrations.tensorboard``)

``train`` reads top to bottom as the run goes: open the run folder, build data, model and
optimizer (``procres.training.run.build_run``), start (epoch 0 measured at initialisation) or resume,
then per epoch ``_train_epoch`` (``_train_step`` per batch, ``_save_mid_epoch`` when due) and
``_end_epoch`` (``_epoch_record`` builds the history record, ``_record_epoch`` writes it), then
``_finish``. The state these pieces share is one ``procres.training.run.Run``. The parts that are not
training live beside it: evaluation and the norm probe in ``procres.training.evaluate``, DDP in
``procres.training.distributed``, what a checkpoint holds in ``procres.training.checkpoint``, CUDA graphs in
``procres.training.graphs``, the logger and the printed table in ``procres.training.log``.

Each step, in order: learning rate from ``lr_at`` -> forward (bf16 autocast on CUDA) -> loss ->
backward -> optimizer step, after which the Procrustes hook (``procres.constraints.hooks.attach_procrustes``,
only for models whose ``transitions()`` is non-empty and ``projection_p > 0``) projects each
transition conv with probability p. On one CUDA process (``cuda_graphs``, the default there) the
forward, loss, backward and SGD update are one CUDA-graph replay and the hook runs after it
(``procres.training.graphs``: what stays eager and why). A :class:`procres.diagnostics.recorder.NormRecorder` on ``model.blocks``
records per-unit gradient-norm ratios on every ``record_every``-th training step; its summary
goes into the epoch's history record and is then reset. With ``compile`` the recorder's hooks
would break the compiled graph at every unit, so the norms are measured instead at each epoch end
on the same few batches as epoch 0.

History record keys: epoch, step, lr, train_loss, train_acc, val_loss, val_acc, test_loss,
test_acc, epoch_time (s, training + evaluation), images_per_sec (training only), norms
(NormRecorder.summary, averaged over DDP ranks), block_kinds, and in the first epoch after a
resume that changed settings, config_changes ({field: [old, new]}). Epoch 0 holds the norms of
``init_norm_batches`` un-augmented training batches at initialisation (BN statistics restored
afterwards) and the evaluation metrics; its train_* are null. val_* are null without a
validation split.

The result is the final-epoch test error and the test error at the epoch with the best validation
accuracy (earliest on ties) -- never the best test epoch. Errors are fractions in [0, 1].

Checkpoints (``procres.training.checkpoint``: atomic writes, ``weights_only`` loading) are saved at the end
of every epoch, every ``checkpoint_minutes`` and every ``checkpoint_every_steps`` steps. They hold
the model, the optimizer (momentum buffers), the projection hook's generator, each rank's data
loader position, the partial epoch sums, the history so far and the Python / numpy / torch / CUDA
RNG states. There is no LR-scheduler object (``lr_at`` is a pure function of epoch and step) and
no grad scaler (bf16 needs no loss scaling). A mid-epoch checkpoint also holds the norm
recorder's window so far (every rank's sums and counts), so a resumed epoch's norms equal an
uninterrupted one's. On a resume ``history.jsonl`` is rewritten from the checkpoint, so it never
holds an epoch twice. An unreadable checkpoint raises UserError naming it and
``checkpoint.prev.pt``, which is kept.

With ``deterministic`` on a CPU, a run killed at any point (SIGKILL included) and resumed with
``resume=True`` ends with weights bit-identical to an uninterrupted run (``tests/training/test_train.py``).
It needs the same device, thread count and ``deterministic`` in both runs (a resume may change
them: ``procres.training.config.RESUME_MAY_CHANGE``).

A NaN or infinite loss stops the run with FloatingPointError naming the epoch and step; no
checkpoint is written after it. So does a FloatingPointError raised inside ``optimizer.step()``
(the Procrustes hook raises one, naming the layer, when it meets non-finite weights): the loop
re-raises it with the epoch and step, and ``train.log`` records it. On CPU every step's loss is
checked before the backward pass; on CUDA the check runs every ``_NAN_CHECK_EVERY`` steps and
before every checkpoint, because it costs a host-device synchronisation; nothing else in a CUDA
step waits for the device (the loss and accuracy sums stay there). The hook does the same for
the weights it projects on the device (``procres.spectral.device``): it counts non-finite ones
per layer there (``ProcrustesHook.nonfinite``), and these checks raise FloatingPointError naming
the layer. A finite loss can still overflow the
gradients, so before every checkpoint the weights are checked too: a saved checkpoint is always
finite.

DDP (``torchrun --nproc_per_node N -m procres train ...``; see ``procres.training.distributed``): every
rank trains its shard with the per-rank batch, sums and norm summaries are reduced over ranks,
only rank 0 writes files, and ``train_seeds`` runs every seed in one process group.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from procres.errors import UserError
from procres.files import append_jsonl, atomic_save, atomic_write_text
from procres.integrations.tensorboard import open_tensorboard, seed_log_dir
from procres.models.factory import state_mismatch
from procres.training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state, training_state
from procres.training.config import TrainConfig, resume_changes
from procres.training.distributed import gathered, process_group, reduced
from procres.training.evaluate import eval_record, probe_norms
from procres.training.log import ROW_HEADER, logger, progress, row
from procres.training.recipes import lr_at
from procres.training.run import Run, build_run, capture_graphs, norm_recorder

_NAN_CHECK_EVERY = 50  # CUDA steps between non-finite-loss checks (each is a device sync)
_DDP_TIME_CHECK_EVERY = 25  # DDP steps between rank 0's "checkpoint due?" broadcasts
_STOPPED = "training stopped; nothing was saved after it (the last checkpoint, if there is one, is kept)"

__all__ = ["train", "train_seeds", "resume_config"]


@dataclass
class _EpochSums:
    """The running training sums of the epoch in progress (this rank's; a resumed epoch's earlier
    part, already reduced over ranks, is held by rank 0 alone so that the all-reduce counts it once)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    epoch_step: int
    started: float  # time.monotonic() when the epoch's training started, less the time before a resume

    @classmethod
    def from_partial(cls, partial: dict, run: Run) -> "_EpochSums":
        mine = run.main  # only rank 0 carries the saved sums
        return cls(torch.tensor(partial["loss_sum"] if mine else 0.0, dtype=torch.float64, device=run.device),
                   torch.tensor(partial["correct"] if mine else 0, dtype=torch.int64, device=run.device),
                   partial["seen"] if mine else 0, partial["epoch_step"], time.monotonic() - partial["train_time"])

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.epoch_step += 1
        self.loss_sum += loss.detach().double() * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y)

    def totals(self, run: Run) -> list[float]:
        """(loss sum, correct, seen) summed over ranks."""
        return reduced([self.loss_sum.item(), self.correct.item(), self.seen], run.world, run.device)


_FRESH_EPOCH = {"epoch_step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "train_time": 0.0}


def train(config: TrainConfig, *, quiet: bool = False) -> dict:
    """Train ``config``; return the result dict (also saved, without model/history, as result.json).

    Keys: final_test_error, final_val_error, best_val_epoch, val_error_at_best_val,
    test_error_at_best_val (None without a validation split), epochs, run_dir, history (list of
    records), model (the trained nn.Module, unwrapped), cuda_graphs (the capture's seconds and
    self-check, ``procres.training.graphs.self_check``; empty when the run trained eagerly).
    """
    cfg = config.resolved(cuda_available=torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but torch.cuda.is_available() is False")
    with process_group(cfg.device == "cuda") as (rank, world, local_rank), _torch_settings(cfg):
        log = logger(Path(cfg.out), rank == 0, quiet)
        board = None
        try:
            checkpoint, changes = _open_run_folder(cfg, rank == 0)
            board = open_tensorboard(cfg, Path(cfg.out), rank == 0, checkpoint)  # a no-op unless asked, rank 0
            run = build_run(cfg, rank, world, local_rank, log)
            run.board = board
            if checkpoint is not None:
                _restore(run, checkpoint, changes)
            else:
                if cfg.resume:  # a job script may always pass --resume; a mistyped folder must show
                    run.log.info(f"resume: {cfg.out} holds no checkpoint yet, so this is a new run")
                _start(run)
            capture_graphs(run)
            _log_start(run)
            run.recorder = norm_recorder(run)
            run.last_checkpoint = time.monotonic()
            run.model.train()
            run.lr = lr_at(cfg, run.epoch, run.step)
            while run.epoch < cfg.epochs:
                sums = _train_epoch(run, quiet)
                _end_epoch(run, sums)
            if run.recorder:
                run.recorder.remove()
            return _finish(run)
        except FloatingPointError as err:
            log.error(str(err))
            raise
        finally:
            if board is not None:
                board.close()
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)


def train_seeds(config: TrainConfig, seeds, *, quiet: bool = False, given=None) -> dict:
    """Train ``config`` once per seed in ``out/seed<k>``; write and return ``out/summary.json``.

    ``given``: with ``resume``, the fields set on the command line; the others come from each
    seed's saved run (:func:`resume_config`).
    The summary holds, for final_test_error and test_error_at_best_val, the per-seed values, their
    mean and the sample standard deviation (ddof=1; 0 for a single seed). Under torchrun one process
    group serves every seed (each run uses it and leaves it alive) and rank 0 writes the summary.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {seeds} must be a non-empty list of distinct integers")
    resolved = config.resolved(cuda_available=torch.cuda.is_available())
    base = Path(resolved.out if config.out is None else config.out)
    if config.out is None:
        base = base.with_name(base.name.rsplit("-seed", 1)[0])
    with process_group(resolved.device == "cuda") as (rank, _, _):
        runs = []
        for seed in seeds:
            run = config.replace(seed=seed, out=str(base / f"seed{seed}"),
                                 tensorboard=seed_log_dir(config.tensorboard, seed))
            if given is not None:
                run = resume_config(run, {*given, "seed", "out"})
            runs.append(train(run, quiet=quiet))
        summary = _seed_summary(seeds, runs)
        if rank == 0:
            atomic_write_text(base / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _seed_summary(seeds: list[int], runs: list[dict]) -> dict:
    summary = {"seeds": seeds, "run_dirs": [r["run_dir"] for r in runs]}
    for key in ("final_test_error", "test_error_at_best_val"):
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            summary[key] = None
            continue
        summary[key] = {"values": values, "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return summary


# ---------------------------------------------------------------- before the loop
@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig):
    """Threads, deterministic algorithms and cuDNN autotuning for the run; the first two restored after."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_num_threads(saved[1])


def _open_run_folder(cfg: TrainConfig, main: bool) -> tuple[dict | None, dict]:
    """(the checkpoint to resume from, the settings the resume changes); (None, {}) for a fresh run,
    which writes config.json. Refuses to start over an existing run, and to resume one with a
    setting it may not change (``procres.training.config.resume_changes``)."""
    run_dir = Path(cfg.out)
    checkpoint = load_checkpoint(run_dir) if cfg.resume else None
    if not cfg.resume and (run_dir / "checkpoint.pt").exists():
        raise UserError(f"{run_dir} already holds a run (checkpoint.pt): pass resume=True / --resume "
                        "to continue it, or choose another out folder")
    if checkpoint is None:
        if main:
            atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
        return None, {}
    saved = TrainConfig.from_json(checkpoint["config"]).resolved(cuda_available=torch.cuda.is_available())
    return checkpoint, resume_changes(saved, cfg, epochs_done=checkpoint["epoch"])


def resume_config(config: TrainConfig, given) -> TrainConfig:
    """What ``--resume`` means on the command line: the config of the run in ``config.out`` (its
    latest checkpoint's) with the fields named in ``given`` (the flags given) taken from ``config``;
    ``config`` itself when ``resume`` is off or the folder holds no checkpoint yet."""
    checkpoint = load_checkpoint(config.resolved().out) if config.resume else None
    if checkpoint is None:
        return config
    saved = TrainConfig.from_json(checkpoint["config"])
    return saved.replace(**{name: getattr(config, name) for name in {*given, "resume"}})


def _start(run: Run) -> None:
    """A fresh run: history.jsonl starts with epoch 0, measured at initialisation."""
    if run.main:
        atomic_write_text(run.run_dir / "history.jsonl", "")
    run.lr = lr_at(run.cfg, 0, 0)
    record = _history_record(run, norms=_probe(run))
    run.history.append(record)
    if run.main:
        append_jsonl(run.run_dir / "history.jsonl", record)
    run.board.write_epoch(record, run.model)


def _restore(run: Run, checkpoint: dict, changes: dict) -> None:
    """Continue from ``checkpoint``: weights, momentum, projection draws, RNG, position, history;
    ``changes`` (allowed settings changed at this resume) go to train.log and the next record."""
    try:
        run.model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise UserError(f"the checkpoint in {run.run_dir} does not fit model {run.cfg.model!r}: "
                        f"{state_mismatch(run.model.state_dict(), checkpoint['model'])}") from err
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.hook is not None:
        run.hook.load_state_dict(checkpoint["projection"])
    set_rng_state(checkpoint["rng"], run.cuda)
    run.epoch, run.step = checkpoint["epoch"], checkpoint["step"]
    run.history = json.loads(checkpoint["history"])
    run.partial = checkpoint["partial"]
    if run.partial is not None:
        run.train_loader.set_epoch(run.epoch)
        run.train_loader.load_state_dict(checkpoint["loader"][run.rank])
    if run.main:  # rewritten from the checkpoint: never an epoch twice, never a torn last line
        atomic_write_text(run.run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in run.history))
    run.log.info(f"resumed from {run.run_dir / 'checkpoint.pt'} at epoch {run.epoch}, step {run.step}")
    if changes:
        run.log.info("changed at this resume (config.json keeps the run's first settings): "
                     + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    pending = (run.partial or {}).get("config_changes", {})  # from a resume earlier in this epoch
    run.changes = {k: [pending.get(k, [a])[0], b] for k, (a, b) in {**pending, **changes}.items()}


def _log_start(run: Run) -> None:
    """The run summary line, then the table header and the rows of the history so far."""
    cfg, data = run.cfg, run.data
    run.log.info(f"{cfg.model} on {cfg.dataset}: {sum(p.numel() for p in run.model.parameters()):,} parameters, "
                 f"{len(data.train_y)} training images, {run.steps_per_epoch} steps/epoch, device {run.device}, "
                 f"{run.world} rank(s), projection {'on' if run.hook else 'off'}, "
                 f"CUDA graphs {'on' if run.graphed is not None else 'off'}")
    run.log.info(ROW_HEADER)  # after the graph capture and its messages: the table stays in one piece
    for h in run.history:
        run.log.info(row(h))


# ---------------------------------------------------------------- the loop
def _train_epoch(run: Run, quiet: bool) -> _EpochSums:
    """Train the rest of epoch ``run.epoch``: one step per batch, a mid-epoch checkpoint when due."""
    if run.partial is None:  # a fresh epoch
        run.train_loader.set_epoch(run.epoch)
        run.partial = dict(_FRESH_EPOCH)
    sums = _EpochSums.from_partial(run.partial, run)
    remaining = run.steps_per_epoch - sums.epoch_step
    batches = progress(itertools.islice(run.train_loader, remaining), remaining,
                       f"epoch {run.epoch + 1}/{run.cfg.epochs}", quiet or not run.main)
    for x, y in batches:
        loss, out = _train_step(run, x, y)
        sums.add(loss, out, y)
        if run.cuda and run.step % _NAN_CHECK_EVERY == 0:
            _check_finite(run, run.step, weights=False)
        if sums.epoch_step < run.steps_per_epoch and _checkpoint_due(run):
            _save_mid_epoch(run, sums)
    return sums


def _train_step(run: Run, x: torch.Tensor, y: torch.Tensor):
    """One optimizer step on the batch: lr, then either one replay of the captured step (forward,
    loss, backward, SGD update) and the Procrustes hook, or the eager forward, loss, backward and
    ``optimizer.step()`` (the hook projects inside it). Returns (loss, logits)."""
    run.lr = lr_at(run.cfg, run.epoch, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr
    recorded = run.recorder is not None and run.step % run.cfg.record_every == 0
    if run.graphed is not None and not recorded and x.shape == run.graphed.shape:
        loss, out = run.graphed(x, y, run.lr)  # the hook is not in the graph: it runs next
        run.bad += torch.isfinite(loss).logical_not().long()
        update = _projection if run.hook is not None else None
    else:
        with torch.autocast(**run.amp):
            out = run.net(x)
            loss = F.cross_entropy(out, y)
        if not run.cuda:  # free on CPU: stop before a bad step touches the weights
            _check_finite(run, run.step + 1, weights=False, exact=True, bad=torch.isfinite(loss).logical_not())
        else:
            run.bad += torch.isfinite(loss).logical_not().long()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        update = _optimizer_step
    try:
        if update is not None:
            update(run)
    except FloatingPointError as err:  # the hook met non-finite weights (its message names the layer)
        raise FloatingPointError(f"in epoch {run.epoch + 1}, step {run.step + 1}: {err}; {_STOPPED}") from err
    run.step += 1
    return loss, out


def _optimizer_step(run: Run) -> None:
    run.optimizer.step()  # the Procrustes hook projects here


def _projection(run: Run) -> None:
    """The optimizer's step post-hook, after a replay that made the update inside the graph."""
    run.hook._after_step(run.optimizer, (), {})


def _end_epoch(run: Run, sums: _EpochSums) -> None:
    """Close epoch ``run.epoch``: check it stayed finite, share BN statistics, record it."""
    _check_finite(run, run.step, weights=True)
    train_time = time.monotonic() - sums.started
    if run.world > 1:
        for buffer in run.model.buffers():  # BN running statistics: rank 0's, as DDP's forward does
            dist.broadcast(buffer, 0)
    record = _epoch_record(run, sums, train_time)
    run.partial = None
    _record_epoch(run, record)


def _epoch_record(run: Run, sums: _EpochSums, train_time: float) -> dict:
    """The history record of the epoch just trained (keys: module docstring); counts it done."""
    loss_total, correct_total, seen_total = sums.totals(run)
    run.epoch += 1
    norms = _epoch_norms(run)
    if run.recorder:
        run.recorder.reset()
    record = _history_record(run, train_loss=loss_total / seen_total, train_acc=correct_total / seen_total,
                             started=sums.started, images_per_sec=seen_total / train_time, norms=norms)
    if run.changes:  # the settings a resume changed take effect in this epoch
        record["config_changes"], run.changes = run.changes, {}
    return record


def _history_record(run: Run, *, norms: dict, train_loss=None, train_acc=None, started=None,
                    images_per_sec=None) -> dict:
    """One history record at the current epoch and step: the training metrics given, evaluation now."""
    record = {"epoch": run.epoch, "step": run.step, "lr": run.lr, "train_loss": train_loss, "train_acc": train_acc}
    record.update(eval_record(run.model, run.val_loader, run.test_loader, device=run.device, amp=run.amp,
                              world=run.world))
    record.update(epoch_time=None if started is None else time.monotonic() - started,
                  images_per_sec=images_per_sec, block_kinds=run.model.block_kinds, norms=norms)
    return record


def _record_epoch(run: Run, record: dict) -> None:
    """Where a finished epoch's record goes: the history, TensorBoard, the checkpoint, history.jsonl, the table."""
    run.history.append(record)
    run.board.write_epoch(record, run.model)  # before the checkpoint: the event files never miss a saved epoch
    if run.main:
        save_checkpoint(run.run_dir, training_state(run.model, run.optimizer, run.hook, None, run.epoch, run.step,
                                                    None, run.history, run.cfg, run.cuda))
        append_jsonl(run.run_dir / "history.jsonl", record)
    run.last_checkpoint = time.monotonic()
    run.log.info(row(record))


def _save_mid_epoch(run: Run, sums: _EpochSums) -> None:
    """Checkpoint inside an epoch: the position of every rank's loader, the sums so far, the norm window."""
    _check_finite(run, run.step, weights=True)
    loss_sum, correct, seen = sums.totals(run)
    windows = gathered(run.recorder.state_dict(), run.world) if run.recorder else None  # one per rank
    state = {"epoch_step": sums.epoch_step, "loss_sum": loss_sum, "correct": int(correct), "seen": int(seen),
             "train_time": time.monotonic() - sums.started, "norm_window": windows, "config_changes": run.changes}
    loader_states = gathered(run.train_loader.state_dict(), run.world)  # one per rank
    if run.main:
        save_checkpoint(run.run_dir, training_state(run.model, run.optimizer, run.hook, loader_states, run.epoch,
                                                    run.step, state, run.history, run.cfg, run.cuda))
    run.last_checkpoint = time.monotonic()


def _check_finite(run: Run, step: int, *, weights: bool, exact: bool = False, bad=None) -> None:
    """Raise FloatingPointError if any rank saw a non-finite loss (``bad``, default ``run.bad``,
    counts them), if the projection hook met non-finite weights on the device
    (``ProcrustesHook.nonfinite``, naming the layer) or, with ``weights``, if a parameter or buffer
    is non-finite (a finite loss can still give overflowing gradients). One host sync; called
    before every checkpoint, so a saved checkpoint is always finite."""
    flags = [(run.bad if bad is None else bad).reshape(1).long()]
    layers = getattr(run.hook, "nonfinite", None)  # None until the hook projects on the device
    if layers is not None:
        flags.append(layers.to(flags[0].device))
    names = []
    if weights:
        names, tensors = zip(*[(k, t) for k, t in run.model.state_dict().items() if t.is_floating_point()])
        flags.append(torch.stack([torch.isfinite(t).all().logical_not() for t in tensors]).long())
    flags = torch.cat(flags)
    if run.world > 1:
        dist.all_reduce(flags)
    counts = flags.tolist()
    loss_bad, layer_bad, weights_bad = counts[0], counts[1:len(counts) - len(names)], counts[len(counts) - len(names):]
    epoch = run.epoch + 1
    if loss_bad:
        when = f"step {step}" if exact else f"one of the {_NAN_CHECK_EVERY} steps up to step {step}"
        raise FloatingPointError(f"non-finite loss in epoch {epoch}, {when}: {_STOPPED}")
    for i, count in enumerate(layer_bad):
        if count:
            raise FloatingPointError(f"{run.hook.names[i]} has NaN or inf weights, met by the Procrustes projection "
                                     f"in epoch {epoch} at one of the steps up to step {step}: training diverged; "
                                     f"{_STOPPED}")
    bad_names = [name for name, count in zip(names, weights_bad) if count]
    if bad_names:
        more = f" and {len(bad_names) - 1} more" if len(bad_names) > 1 else ""
        raise FloatingPointError(f"non-finite weights in epoch {epoch}, step {step}: {bad_names[0]}{more}, with a finite "
                                 f"loss, so {_overflow_cause(bad_names[0])}: {_STOPPED}")


def _overflow_cause(name: str) -> str:
    """What a first non-finite state_dict entry says about how the run diverged."""
    if name.endswith(("running_var", "running_mean")):
        return "a batch-norm running statistic overflowed as the activations grew beyond float range"
    return "an update overflowed the weights as the gradients grew beyond float range"


def _checkpoint_due(run: Run) -> bool:
    cfg, step = run.cfg, run.step
    if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
        return True
    if not cfg.checkpoint_minutes:
        return False
    if run.world == 1:
        return time.monotonic() - run.last_checkpoint >= 60 * cfg.checkpoint_minutes
    if step % _DDP_TIME_CHECK_EVERY:
        return False
    flag = torch.tensor(time.monotonic() - run.last_checkpoint >= 60 * cfg.checkpoint_minutes, device=run.device,
                        dtype=torch.int64)
    dist.broadcast(flag, 0)  # rank 0's clock decides, so every rank checkpoints at the same step
    return bool(flag.item())


def _epoch_norms(run: Run) -> dict:
    """The epoch's norm summary, averaged over ranks: the recorder's window, or with ``compile`` a
    probe (see the module docstring)."""
    if run.recorder is not None:
        return run.recorder.summary(reduce=True)
    return _probe(run) if run.cfg.compile and run.cfg.record_every else {}


def _probe(run: Run) -> dict:
    return probe_norms(run.model, run.data, run.cfg, run.device, run.amp, rank=run.rank, world=run.world)


# ---------------------------------------------------------------- after the loop
def _finish(run: Run) -> dict:
    """Write model.pt and result.json, log the result line, return the result with history and model."""
    result = _result(run.history, run.run_dir)
    if run.main:
        atomic_save({"model": run.model.state_dict(), "config": run.cfg.to_dict()}, run.run_dir / "model.pt")
        atomic_write_text(run.run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    best = result["test_error_at_best_val"]
    run.log.info(f"final test error {100 * result['final_test_error']:.2f}%"
                 + (f", at the best validation epoch {result['best_val_epoch']}: {100 * best:.2f}%" if best is not None
                    else " (no validation split)") + f"; run folder {run.run_dir}")
    return {**result, "history": run.history, "model": run.model, "cuda_graphs": run.graph_info}


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
