"""Hugging Face ``transformers.Trainer`` callback: r_l per unit every N optimizer steps into the
Trainer's own log, and so into whatever it reports to (TensorBoard, W&B, the console, ...).

Needs the optional extra ``[transformers]`` (``pip install 'procrustes-resnets[transformers]'``:
transformers and accelerate, without which the Trainer does not start). ::

    from procres.integrations.transformers import NormRatioCallback
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(NormRatioCallback(trainer, every=50))   # + norm_ratio/block_01 ... in the logs
    trainer.train()

How it records.  At the beginning of each recorded optimizer step (``state.global_step % every
== 0``: steps 0, N, 2N, ...) a :class:`procres.NormRecorder` is attached to the units; the step's
own forward and backward passes (every micro-batch of a gradient-accumulated step) are what it
records; at the end of the step its summary (averaged over DDP ranks) goes through
``trainer.log`` and the hooks are removed, so the steps in between run without any hook.
``trainer.log`` is the one way in for a callback: it appends to ``state.log_history`` and calls
every reporting callback's ``on_log``.  The ratios are their own log entry, at the step of the
Trainer's entry (loss, grad_norm, learning_rate) for the same optimizer step: ``step`` is the
global step after it, 1, N + 1, 2N + 1, ...; the Trainer's decision to log that step
(``control.should_log``, which ``trainer.log`` clears) is kept.  Values added to the ``logs`` a callback's ``on_log``
receives do not reach the reporters (they run before user callbacks), hence the trainer in the
constructor (as TRL's ``LogCompletionsCallback(trainer, ...)``).

Units.  ``units=None``: found as :func:`procres.find_units` finds them (every Hugging Face model
by structure: its repeated residual layers), on the first recorded step's own batch: a pre-hook on
the model sees the inputs the Trainer passes, finds the units with one example forward (eval
mode, no grad) and then lets that very forward be recorded, so nothing is drawn from the data
loader (a second iterator would move the sampler's random state).  Or a glob of module names
(``"bert.encoder.layer.*"``, or a list of globs) or a list of modules; a glob that matches no module of ``trainer.model`` is refused when the
callback is made.  Keys:
``norm_ratio/block_01`` ... (the tag layout of :mod:`procres.integrations.tensorboard`), one per
unit in forward order; ``callback.names`` gives each unit's module name.  Activation (gradient)
checkpointing is refused: a checkpointed layer runs its forward again inside the backward pass.
"""

from __future__ import annotations

from torch import nn

from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.units import find_units, units_by_name
from procres.errors import UserError
from procres.integrations.tensorboard import NORM_PREFIX, norm_scalars

try:
    from transformers import TrainerCallback
except ImportError as err:
    raise ImportError(f"procres.integrations.transformers needs the transformers package ({err}): "
                      "pip install 'procrustes-resnets[transformers]'") from err

__all__ = ["NormRatioCallback"]


class NormRatioCallback(TrainerCallback):
    """r_l per unit every ``every`` optimizer steps into ``trainer.log`` (see the module docstring).

    ``units``: None (found on the first recorded batch), a glob or list of globs of module names,
    or a list of modules.  ``summary``: the last recorded step's ``NormRecorder.summary()``.
    """

    def __init__(self, trainer, *, every: int = 50, units=None, prefix: str = NORM_PREFIX):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"every must be a positive integer, got {every!r}")
        args = getattr(trainer, "args", None)
        if (getattr(args, "activation_checkpointing", False)
                or getattr(getattr(trainer, "model", None), "is_activation_checkpointing", False)):
            raise UserError("NormRatioCallback cannot record with activation (gradient) checkpointing on: each layer's "
                            "forward runs again during the backward pass; turn it off for the recorded run")
        named = isinstance(units, str) or (units is not None and all(isinstance(u, str) for u in units))
        self.trainer = trainer
        self.every = every
        self.prefix = prefix
        self.pattern = units if named else None                 # ordered on the first recorded batch
        if named and isinstance(getattr(trainer, "model", None), nn.Module):
            units_by_name(trainer.model, units)                 # a glob that matches nothing: refused now
        self.units = None if units is None or named else list(units)
        self.names: list[str] = []
        self.summary: dict = {}
        self._recorder: NormRecorder | None = None
        self._finder = None

    def _find(self, model: nn.Module, example_input) -> list:
        if self.pattern is not None:
            found = units_by_name(model, self.pattern, example_input)
        else:
            found = find_units(model, example_input)
            if found.module is not model:
                raise UserError(f"{type(model).__name__}'s units are additions inside a module's code, which the "
                                f"Trainer's model cannot record; name its units: NormRatioCallback(..., units=GLOB)")
        self.names = found.names()
        return list(found)

    def _attach(self, model: nn.Module) -> None:
        if self.units is not None:
            self._recorder = NormRecorder(self.units)
            return

        def find_then_record(module, args, kwargs):
            # the step's first forward: find the units on its own batch, then record this very forward
            self._finder.remove()
            self._finder = None
            if args and kwargs:
                raise UserError(f"NormRatioCallback: {type(module).__name__} is called with positional and keyword "
                                f"inputs; give units=GLOB")
            self.units = self._find(module, kwargs if kwargs else args[0] if len(args) == 1 else args)
            self._recorder = NormRecorder(self.units)

        self._finder = model.register_forward_pre_hook(find_then_record, with_kwargs=True)

    # -- the Trainer's events
    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and self._recorder is None and self._finder is None:
            self._attach(model)

    def on_step_end(self, args, state, control, **kwargs):
        rec, self._recorder = self._recorder, None
        if rec is None:
            return
        self.summary = rec.summary(reduce=True)   # a collective under DDP: every rank ends every step
        rec.remove()
        if self.summary["steps_recorded"]:
            # trainer.log ends in CallbackHandler.on_log, which clears control.should_log; the Trainer
            # logs its own loss, grad_norm and learning_rate after on_step_end only where it is set
            should_log = control.should_log
            self.trainer.log(norm_scalars(self.summary, prefix=self.prefix))
            control.should_log = should_log
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for handle in (self._recorder, self._finder):
            if handle is not None:
                handle.remove()
        self._recorder = self._finder = None
