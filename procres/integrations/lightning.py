"""Lightning callbacks: per-unit gradient-norm ratios r_l in the trainer's loggers, and the
Procrustes projection after every optimizer step.

Needs the optional extra ``[lightning]`` (``pip install 'procrustes-resnets[lightning]'``; the
``lightning`` package, ``lightning.pytorch`` namespace). ::

    from procres.integrations.lightning import NormRatioCallback, ProcrustesCallback
    trainer = lightning.pytorch.Trainer(callbacks=[NormRatioCallback(every=10), ProcrustesCallback(p=0.5)])

:class:`NormRatioCallback` attaches a :class:`procres.NormRecorder` to the LightningModule's units
when fitting starts, and at the end of every training epoch sends the window's r_l per unit to
every logger of the trainer (``logger.log_metrics`` at ``trainer.global_step``, the tag layout of
:mod:`procres.integrations.tensorboard`: ``norm_ratio/block_01`` ...), plus one histogram of log10 r_l through
each TensorBoard logger's writer. Under DDP every rank records its own batches and the summary
is all-reduced (``NormRecorder.summary(reduce=True)``, a collective that every rank reaches at the
epoch end); rank 0's loggers write it. The last summary stays in ``callback.summary``.

:class:`ProcrustesCallback` registers a :class:`procres.ProcrustesHook` on the optimizer that owns
the convolutions. It runs as the torch optimizer's step post-hook, so it projects right after each
real ``optimizer.step()``: not after skipped steps (AMP inf/NaN), once per accumulated step, and
with the same seeded decisions on every DDP rank. Lightning's own hooks do not bracket the step
as tightly (``on_before_zero_grad`` runs inside the next closure, before the next backward;
``on_train_batch_end`` runs after every batch, stepped or not).

Both remove their hooks in ``teardown`` and on an exception, and keep their counters in the
Lightning checkpoint (``state_dict``), so a resumed fit continues the recording cadence and the
projection's random draws.
"""

from __future__ import annotations

from torch import nn

from procres.constraints.hooks import ProcrustesHook
from procres.diagnostics.recorder import NormRecorder
from procres.errors import UserError
from procres.integrations.tensorboard import NORM_PREFIX, add_norm_histogram, norm_scalars

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError as err:
    raise ImportError(f"procres.integrations.lightning needs the lightning package ({err}): "
                      "pip install 'procrustes-resnets[lightning]'") from err

__all__ = ["NormRatioCallback", "ProcrustesCallback"]


# ---------------------------------------------------------------- finding units and convs
def _auto_units(model: nn.Module, example_input=None) -> list[nn.Module]:
    """The units ``units="auto"`` means: ``blocks`` of ``model`` or of its first submodule that has
    one (every procres model); otherwise, given ``example_input`` (the LightningModule's
    ``example_input_array``), the module units :func:`procres.find_units` traces. A sub-graph unit
    (a residual addition with no module of its own, as in a pre-norm transformer block) needs the
    re-traced module ``find_units`` returns, which Lightning does not run: such models name their units."""
    for module in model.modules():  # the LightningModule itself first
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
            return list(blocks)
    why = "no submodule has a non-empty 'blocks' and there is no example_input_array to trace"
    if example_input is not None:
        from procres.diagnostics.units import find_units

        try:
            found = find_units(model, example_input)
        except UserError as err:
            why = f"tracing found none ({err})"
        else:
            if all(u.module is not None for u in found):
                return [u.module for u in found]
            why = (f"{sum(u.module is None for u in found)} of its {len(found)} residual additions have no module "
                   "of their own to hook")
    raise UserError(f"NormRatioCallback found no units in {type(model).__name__}: {why}; pass "
                    "units=[modules or submodule names], e.g. units=['layer1.0', 'layer1.1']")


def _resolve_units(pl_module: nn.Module, units) -> list[nn.Module]:
    if units is None or units == "auto":
        return _auto_units(pl_module, getattr(pl_module, "example_input_array", None))
    return [_submodule(pl_module, u, "units") for u in units]


def _submodule(pl_module: nn.Module, item, what: str) -> nn.Module:
    if isinstance(item, nn.Module):
        return item
    if isinstance(item, str):
        try:
            return pl_module.get_submodule(item)
        except AttributeError as err:
            raise UserError(f"{what}: {type(pl_module).__name__} has no submodule {item!r}") from err
    raise UserError(f"{what} must hold nn.Module instances or submodule names, got {type(item).__name__}")


def _transitions(pl_module: nn.Module, convs) -> list[tuple[nn.Conv2d, int]]:
    """``(conv, input_size)`` pairs: ``convs`` resolved, or ``transitions()`` of the first module
    that has it (a procres model)."""
    if convs is not None:
        pairs = []
        for item in convs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise UserError(f"convs must hold (conv or submodule name, input_size) pairs, got {item!r}")
            pairs.append((_submodule(pl_module, item[0], "convs"), item[1]))
        return pairs
    for module in pl_module.modules():
        if callable(getattr(module, "transitions", None)):
            return list(module.transitions())
    raise UserError(f"ProcrustesCallback found no transitions() in {type(pl_module).__name__}: pass "
                    "convs=[(conv or submodule name, input_size), ...]")


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UserError(f"every must be a positive integer, got {every!r}")
    return every


# ---------------------------------------------------------------- the callbacks
class NormRatioCallback(Callback):
    """Record r_l per unit on every ``every``-th training forward; log it at each epoch end.

    ``units``: ``"auto"`` or None (the same: see :func:`_auto_units`), or a list of modules or
    submodule names of the LightningModule, in forward order. ``log_histogram``: also one
    histogram of log10 r_l per epoch through each TensorBoard logger. ``prefix``: the tag prefix.
    """

    def __init__(self, units=None, every: int = 10, log_histogram: bool = True, *, prefix: str = NORM_PREFIX):
        if isinstance(units, str) and units != "auto":
            raise UserError(f"units must be None, 'auto' or a list of modules / submodule names, got {units!r}")
        self.units = units if units is None or isinstance(units, str) else list(units)
        self.every = _check_every(every)
        self.log_histogram = bool(log_histogram)
        self.prefix = prefix
        self.recorder: NormRecorder | None = None
        self.summary: dict | None = None
        self._steps_seen = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._remove()
        self.recorder = NormRecorder(_resolve_units(pl_module, self.units), every=self.every)
        self.recorder.steps_seen = self._steps_seen

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.recorder is None:
            return
        self.summary = self.recorder.summary(reduce=True)  # a collective under DDP: every rank is here
        self.recorder.reset()
        scalars = norm_scalars(self.summary, prefix=self.prefix)
        for logger in trainer.loggers:  # Lightning's loggers write on rank 0 only
            logger.log_metrics(scalars, step=trainer.global_step)
            if self.log_histogram and isinstance(logger, TensorBoardLogger):
                add_norm_histogram(logger.experiment, self.summary, trainer.global_step, prefix=self.prefix)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._remove()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove()

    def state_dict(self) -> dict:
        return {"steps_seen": self.recorder.steps_seen if self.recorder is not None else self._steps_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self._steps_seen = int(state_dict["steps_seen"])
        if self.recorder is not None:
            self.recorder.steps_seen = self._steps_seen

    def _remove(self) -> None:
        if self.recorder is not None:
            self._steps_seen = self.recorder.steps_seen
            self.recorder.remove()
            self.recorder = None


class ProcrustesCallback(Callback):
    """Project ``convs`` onto norm-preserving kernels after every optimizer step with probability ``p``.

    ``convs``: None (the ``transitions()`` of the LightningModule or of its first submodule that has
    them: every Procrustes ResNet) or ``(conv or submodule name, input_size)`` pairs. ``method``,
    ``faithful``, ``seed``, ``iterations``: as :class:`procres.ProcrustesHook`. Each optimizer that
    owns some of the convs gets one hook for them (seeds ``seed``, ``seed + 1``, ... in the order of
    ``trainer.optimizers``).
    """

    def __init__(self, p: float = 0.5, convs=None, *, method: str = "svd", faithful: bool = False, seed: int = 0,
                 iterations: int = 1):
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0):
            raise UserError(f"p must be a probability in [0, 1], got {p!r}")
        self.p, self.convs = float(p), convs
        self.options = dict(method=method, faithful=faithful, iterations=iterations)
        self.seed = seed
        self.hooks: list[ProcrustesHook] = []
        self._saved: list | None = None  # the hooks' states while none is attached (restored, or kept at teardown)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._remove()
        layers = _transitions(pl_module, self.convs)
        owned = set()
        for i, optimizer in enumerate(trainer.optimizers):
            params = {id(p) for group in optimizer.param_groups for p in group["params"]}
            mine = [(conv, size) for conv, size in layers if id(conv.weight) in params]
            if mine:
                self.hooks.append(ProcrustesHook(optimizer, mine, p=self.p, seed=self.seed + i, **self.options))
                owned.update(id(conv) for conv, _ in mine)
        missing = [conv for conv, _ in layers if id(conv) not in owned]
        if missing:
            raise UserError(f"ProcrustesCallback: no optimizer of the trainer updates {missing[0]} "
                            f"({len(missing)} of {len(layers)} convs): nothing would change them between projections")
        if self._saved is not None:
            self.load_state_dict({"hooks": self._saved})

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._remove()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove()

    def state_dict(self) -> dict:
        return {"hooks": [hook.state_dict() for hook in self.hooks] if self.hooks else list(self._saved or [])}

    def load_state_dict(self, state_dict: dict) -> None:
        states = list(state_dict["hooks"])
        if not self.hooks:  # restored before fit starts: applied when the hooks exist
            self._saved = states
            return
        if len(states) != len(self.hooks):
            raise UserError(f"ProcrustesCallback: the checkpoint holds {len(states)} projection hook(s), this fit "
                            f"has {len(self.hooks)} (one per optimizer that owns projected convs)")
        for hook, state in zip(self.hooks, states):
            hook.load_state_dict(state)
        self._saved = None

    def _remove(self) -> None:
        if self.hooks:
            self._saved = [hook.state_dict() for hook in self.hooks]
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
