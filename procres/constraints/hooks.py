"""Optimizer step hooks that keep chosen layers of a model regularised while it trains.

One hook class, :class:`StepHook`: after every ``every``-th ``optimizer.step()`` it applies a rule
to each of its layers with probability ``p`` (the authors' ``regul_freq`` = 0.5 for the
projection), drawing from its own seeded ``torch.Generator`` so that every DDP rank makes the same
decisions; a layer whose weights are not finite when it is due raises ``FloatingPointError``
naming it.  Two rules:

- :class:`Projection`: the Procrustes projection (:mod:`procres.spectral.projection`) of a conv, or of
  a Linear layer's matrix (``target * polar(W)``, the target rule of
  :func:`procres.spectral.spectra.norm_preserving_target` for a 1x1 conv);
- :class:`Clipping`: singular-value clipping into ``[min, max]`` (:mod:`procres.spectral.clipping`).

``ProcrustesHook`` is the hook with the projection rule (``register_procrustes_hook``,
``attach_procrustes``); ``attach_clipping`` makes one with the clipping rule.  Which layers, for any
model: :func:`procres.diagnostics.convs.select_layers` (``convs=``, ``linears=``), at the input sizes
one forward pass of ``example_input`` shows; the zoo models' ``transitions()`` by default for the
projection.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from procres.diagnostics.convs import select_layers
from procres.errors import UserError
from procres.spectral import clipping, projection  # by module: tests and the device route patch their functions
from procres.spectral.faithful import check_faithful_grid
from procres.spectral.operator import positive_int

__all__ = ["StepHook", "ProcrustesHook", "Projection", "Clipping", "register_procrustes_hook", "attach_procrustes",
           "attach_clipping"]


# ----------------------------------------------------------------------------- the rules
class Projection:
    """The Procrustes projection of a layer (see :mod:`procres.spectral.projection`)."""

    action = "Procrustes projection"

    def __init__(self, *, method="svd", faithful=False, iterations=1):
        projection.check_options(method, faithful, iterations, None)
        self.method, self.faithful, self.iterations = method, faithful, iterations

    def prepare(self, module, size):
        """-> ``(module, size, stride, groups, target)``: what :meth:`apply_` needs, validated."""
        if isinstance(module, nn.Linear):
            if self.faithful:
                raise UserError("faithful=True is the authors' conv projection; they project no Linear layer")
            weight, size, stride, groups = _as_conv_weight(module), (1, 1), (1, 1), 1
        else:
            weight, size, stride, groups = projection.resolve_conv(module, size, None, None)
            if self.faithful:
                check_faithful_grid(weight, size, stride)
        return module, size, stride, groups, projection.default_target(weight, stride, groups, self.faithful)

    def on_device(self, entry) -> bool:
        module, _, stride, groups, _ = entry
        return projection.stays_on_device(module.weight, stride, groups, self.faithful)

    def apply_(self, entry) -> None:
        module, size, stride, groups, target = entry
        weight = _as_conv_weight(module) if isinstance(module, nn.Linear) else module.weight
        projection.project_weight_(weight, size, stride, groups, target, self.method, self.faithful,
                                   self.iterations, report=False)


def _as_conv_weight(linear: nn.Linear) -> torch.Tensor:
    """A Linear layer's weight ``(out, in)`` as the ``(out, in, 1, 1)`` weight of the 1x1 conv it is (a
    view: projecting it changes the layer)."""
    return linear.weight.view(*linear.weight.shape, 1, 1)


class Clipping:
    """Singular-value clipping of a layer into ``[min, max]`` (see :mod:`procres.spectral.clipping`)."""

    action = "singular-value clipping"

    def __init__(self, *, max=1.0, min=None, iterations=1):
        self.max, self.min = clipping.check_clip_bounds(max, min)
        self.iterations = positive_int(iterations, "iterations")

    def prepare(self, module, size):
        """-> ``(module, size, operator)``: the operator it clips (None for a Linear's matrix)."""
        return module, size, clipping.check_layer(module, size)

    def on_device(self, entry) -> bool:
        return False                                           # LAPACK on the CPU, in float64

    def apply_(self, entry) -> None:
        module, _, op = entry
        op = None if op is None else dataclasses.replace(op, weight=module.weight.detach())  # today's values
        clipping.clip_weight_(module, op, self.max, self.min, self.iterations, report=False)


# ----------------------------------------------------------------------------- the hook
class StepHook:
    """Applies ``rule`` (:class:`Projection` or :class:`Clipping`) to each ``(layer, input_size)``
    after every ``every``-th optimizer step with probability ``p``.  Decisions come from a
    ``torch.Generator`` seeded with ``seed`` (one draw per layer per due step), so they are
    reproducible and identical across DDP ranks; ``state_dict()`` carries the generator state for
    resuming.  ``remove()`` detaches it from the optimizer.  ``names`` label the layers in messages
    (default: their index).  A layer whose weights are no longer finite when it is due raises
    ``FloatingPointError`` naming it (training diverged).  ``layers`` holds, per layer, what the
    rule prepared: ``(module, input_size, ...)`` (the projection's: ``(conv, size, stride, groups,
    target)``)."""

    def __init__(self, optimizer, layers, rule, *, p=1.0, every=1, seed=0, names=None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise UserError(f"p must be a probability in [0, 1], got {p!r}")
        self.every = positive_int(every, "every")
        self.rule = rule
        self.layers = []
        layers = list(layers)
        self.names = [f"layer {i}" for i in range(len(layers))] if names is None else list(names)
        if len(self.names) != len(layers):
            raise UserError(f"names must label each of the {len(layers)} layers, got {len(self.names)}")
        for item, name in zip(layers, self.names):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (nn.Conv2d, nn.Linear))):
                raise UserError(f"layers must be (nn.Conv2d, input_size) or (nn.Linear, None) pairs, got {item!r}")
            clipping.check_unparametrized(item[0], rule.action, name)
            self.layers.append(rule.prepare(*item))
        self.p, self.seed = float(p), seed
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.projections = 0  # layers the rule was applied to, over all steps
        self.nonfinite = None  # per-layer counts of non-finite weights met on the device (below)
        self._handle = optimizer.register_step_post_hook(self._after_step)

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs):
        """The step post-hook (the CUDA-graph training step calls it after each replay)."""
        if (self.steps + 1) % self.every:
            self.steps += 1
            return
        # Draws from a CPU generator: no device sync, and the same decisions on every rank.
        draws = torch.rand(len(self.layers), generator=self.generator)
        for i, (name, entry, u) in enumerate(zip(self.names, self.layers, draws.tolist())):
            if u < self.p:
                weight = entry[0].weight
                if self.rule.on_device(entry):
                    self._count_nonfinite(i, weight)
                elif not torch.isfinite(weight).all():
                    raise FloatingPointError(
                        f"{self.rule.action}: {name} has NaN or inf weights after optimizer step "
                        f"{self.steps + 1}: training diverged, nothing to project")
                self.rule.apply_(entry)
                self.projections += 1
        self.steps += 1

    def _count_nonfinite(self, i, weight) -> None:
        """Count non-finite weights of layer ``i`` in ``self.nonfinite`` on the device instead of
        checking them on the host (a sync); the training loop reads the counts at its NaN checks
        and raises FloatingPointError naming the layer (``procres.training.loop``)."""
        if self.nonfinite is None:
            self.nonfinite = torch.zeros(len(self.layers), dtype=torch.int64, device=weight.device)
        self.nonfinite[i] += torch.isfinite(weight).all().logical_not()

    def remove(self) -> None:
        self._handle.remove()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "steps": self.steps,
                "projections": self.projections, "p": self.p, "seed": self.seed, "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.projections = int(state["projections"])


class ProcrustesHook(StepHook):
    """The :class:`StepHook` with the :class:`Projection` rule: projects each ``(conv, input_size)``
    (or ``(linear, None)``) layer after every optimizer step with probability ``p``."""

    def __init__(self, optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0, iterations=1,
                 names=None, every=1):
        super().__init__(optimizer, layers, Projection(method=method, faithful=faithful, iterations=iterations),
                         p=p, every=every, seed=seed, names=names)


def register_procrustes_hook(optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0,
                             iterations=1, names=None, every=1) -> ProcrustesHook:
    """Project ``layers`` (a list of ``(nn.Conv2d, input_size)`` or ``(nn.Linear, None)``) after
    every ``optimizer.step()`` with probability ``p``; returns the ``ProcrustesHook``
    (``.remove()``, ``.state_dict()``)."""
    return ProcrustesHook(optimizer, list(layers), p=p, method=method, faithful=faithful,
                          seed=seed, iterations=iterations, names=names, every=every)


def attach_procrustes(model, optimizer, *, convs=None, linears=None, example_input=None, p=0.5, method="svd",
                      faithful=False, seed=0, iterations=1, every=1) -> ProcrustesHook:
    """Project layers of ``model`` after every ``every``-th ``optimizer.step()`` with probability ``p``.

    ``convs=None`` and ``linears=None``: the zoo models' ``model.transitions()``.  Any other model:
    ``convs`` names them (a qualified name or glob, an ``nn.Conv2d``, ``"exact"`` for every conv
    whose projection is exact -- kernel <= stride, no padding, see
    :func:`procres.diagnostics.convs.exactly_projectable` --, ``"downsample"`` for every strided 1x1
    conv, ``"all"``, or a list of these) and ``example_input`` (a batch the model accepts) gives one
    forward pass in which every conv's input size is recorded; ``linears`` names ``nn.Linear``
    layers the same way (their weight becomes ``target * polar(W)``, ``target =
    sqrt(out / min(out, in))``).  :func:`procres.diagnostics.convs.select_layers` selects them.
    """
    if convs is None and linears is None:
        if not hasattr(model, "transitions"):
            raise UserError(f"model {type(model).__name__} has no transitions() method: name the convs to "
                            "project, e.g. attach_procrustes(model, opt, convs='downsample', example_input=x)")
        layers = model.transitions()
        names = {id(m): name for name, m in model.named_modules()}
        return register_procrustes_hook(optimizer, layers, p=p, method=method, faithful=faithful, seed=seed,
                                        iterations=iterations, names=[names.get(id(c), "?") for c, _ in layers],
                                        every=every)
    sites = select_layers(model, example_input, convs=convs, linears=linears)
    return register_procrustes_hook(optimizer, [(s.module, s.input_size) for s in sites], p=p, method=method,
                                    faithful=faithful, seed=seed, iterations=iterations,
                                    names=[s.name for s in sites], every=every)


def attach_clipping(model, optimizer, *, max=1.0, min=None, convs=None, linears=None, every=1, example_input=None,
                    iterations=1, p=1.0, seed=0) -> StepHook:
    """Clip the singular values of layers of ``model`` into ``[min, max]`` after every ``every``-th
    ``optimizer.step()`` (with probability ``p``; Sedghi et al. clip every step).

    ``convs`` and ``linears`` name the layers as in :func:`attach_procrustes` (``convs="exact"``: the
    convs clipped exactly in one step); a conv that is not exact is clipped on its circular operator
    (on the padded grid for zero padding) at the input size ``example_input`` shows, ``iterations``
    alternating clip-and-crop steps each time (:func:`procres.spectral.clipping.clip_singular_values_`).
    Returns the :class:`StepHook`.
    """
    rule = Clipping(max=max, min=min, iterations=iterations)
    sites = select_layers(model, example_input, convs=convs, linears=linears, verb="clip")
    return StepHook(optimizer, [(s.module, s.input_size) for s in sites], rule, p=p, every=every, seed=seed,
                    names=[s.name for s in sites])
