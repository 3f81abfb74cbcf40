"""Optimizer step hooks that keep chosen convs of a model norm-preserving while it trains.

``register_procrustes_hook(optimizer, layers)`` projects each ``(nn.Conv2d, input_size)`` after
every ``optimizer.step()`` with probability ``p`` (the authors' ``regul_freq`` = 0.5), drawing
from its own seeded ``torch.Generator`` so that every DDP rank makes the same decisions; a layer
whose weights are not finite when it is due raises ``FloatingPointError`` naming it.
``attach_procrustes`` takes the zoo models' ``transitions()``, or, for any model, the convs named
by ``convs=`` at the input sizes one forward pass of ``example_input`` shows.  The projection is
:mod:`procres.spectral.projection`.
"""

from __future__ import annotations

import torch
from torch import nn

from procres.diagnostics.convs import computes_its_operator, find_convs, select_convs
from procres.errors import UserError
from procres.spectral import projection  # by module: tests and the device route patch its functions
from procres.spectral.faithful import check_faithful_grid

__all__ = ["ProcrustesHook", "register_procrustes_hook", "attach_procrustes"]


class ProcrustesHook:
    """Projects each ``(conv, input_size)`` layer after every optimizer step with probability
    ``p``.  Decisions come from a ``torch.Generator`` seeded with ``seed`` (one draw per layer per
    step), so they are reproducible and identical across DDP ranks; ``state_dict()`` carries the
    generator state for resuming.  ``remove()`` detaches it from the optimizer.  ``names``
    label the layers in messages (default: their index).  A layer whose weights are no longer
    finite when it is due raises ``FloatingPointError`` naming it (training diverged)."""

    def __init__(self, optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0,
                 iterations=1, names=None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise UserError(f"p must be a probability in [0, 1], got {p!r}")
        projection.check_options(method, faithful, iterations, None)
        self.layers = []
        for item in layers:
            if not (isinstance(item, (tuple, list)) and len(item) == 2
                    and isinstance(item[0], nn.Conv2d)):
                raise UserError(f"layers must be (nn.Conv2d, input_size) pairs, got {item!r}")
            conv, size = item
            weight, size, stride, groups = projection.resolve_conv(conv, size, None, None)
            if faithful:
                check_faithful_grid(weight, size, stride)
            target = projection.default_target(weight, stride, groups, faithful)
            self.layers.append((conv, size, stride, groups, target))
        self.names = [f"layer {i}" for i in range(len(self.layers))] if names is None else list(names)
        if len(self.names) != len(self.layers):
            raise UserError(f"names must label each of the {len(self.layers)} layers, got {len(self.names)}")
        self.p, self.method, self.faithful, self.iterations = float(p), method, faithful, iterations
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.projections = 0
        self.nonfinite = None  # per-layer counts of non-finite weights met on the device (below)
        self._handle = optimizer.register_step_post_hook(self._after_step)

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs):
        # Draws from a CPU generator: no device sync, and the same decisions on every rank.
        draws = torch.rand(len(self.layers), generator=self.generator)
        for i, (name, (conv, size, stride, groups, target), u) in enumerate(zip(self.names, self.layers,
                                                                              draws.tolist())):
            if u < self.p:
                if projection.stays_on_device(conv.weight, stride, groups, self.faithful):
                    self._count_nonfinite(i, conv.weight)
                elif not torch.isfinite(conv.weight).all():
                    raise FloatingPointError(
                        f"Procrustes projection: {name} has NaN or inf weights after optimizer step "
                        f"{self.steps + 1}: training diverged, nothing to project")
                projection.project_weight_(conv.weight, size, stride, groups, target, self.method, self.faithful,
                         self.iterations, report=False)
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
                "projections": self.projections, "p": self.p, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.projections = int(state["projections"])


def register_procrustes_hook(optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0,
                             iterations=1, names=None) -> ProcrustesHook:
    """Project ``layers`` (a list of ``(nn.Conv2d, input_size)``) after every ``optimizer.step()``
    with probability ``p``; returns the ``ProcrustesHook`` (``.remove()``, ``.state_dict()``)."""
    return ProcrustesHook(optimizer, list(layers), p=p, method=method, faithful=faithful,
                          seed=seed, iterations=iterations, names=names)


def attach_procrustes(model, optimizer, *, convs=None, example_input=None, p=0.5, method="svd",
                      faithful=False, seed=0, iterations=1) -> ProcrustesHook:
    """Project convs of ``model`` after every ``optimizer.step()`` with probability ``p``.

    ``convs=None``: the zoo models' ``model.transitions()``.  Any other model: ``convs`` names
    them (a qualified module name, an ``nn.Conv2d``, ``"downsample"`` for every strided 1x1
    conv, or a list of these) and ``example_input`` (a batch the model accepts) gives one
    forward pass in which every conv's input size is recorded (:func:`procres.diagnostics.convs.find_convs`).
    A named conv whose class computes another operator in its own ``forward``
    (:func:`procres.diagnostics.convs.computes_its_operator`) is refused.
    """
    if convs is None:
        if not hasattr(model, "transitions"):
            raise UserError(f"model {type(model).__name__} has no transitions() method: name the convs to "
                            "project, e.g. attach_procrustes(model, opt, convs='downsample', example_input=x)")
        layers = model.transitions()
        names = {id(m): name for name, m in model.named_modules()}
        return register_procrustes_hook(optimizer, layers, p=p, method=method, faithful=faithful, seed=seed,
                                        iterations=iterations, names=[names.get(id(c), "?") for c, _ in layers])
    if example_input is None:
        raise UserError("attach_procrustes(convs=...) needs example_input, a batch the model accepts, "
                        "to learn each conv's input size")
    sites = select_convs(find_convs(model, example_input), convs)
    other = [f"{s.name} ({type(s.module).__name__})" for s in sites
             if not computes_its_operator(s.module, s.input_size)]
    if other:
        raise UserError(f"cannot project {', '.join(other)}: its forward computes another operator than F.conv2d "
                        "with its weight (weight standardisation, run-time padding), which a projected weight "
                        "would not make norm-preserving")
    return register_procrustes_hook(optimizer, [(s.module, s.input_size) for s in sites], p=p,
                                    method=method, faithful=faithful, seed=seed, iterations=iterations,
                                    names=[s.name for s in sites])
