"""The depth study: per-unit gradient-norm ratios r_l of model families over a range of depths.

:func:`depth_study` builds each model of each family (residual nets and their plain twins, say) at
each depth, measures r_l with :class:`procres.diagnostics.recorder.NormRecorder` at initialisation and after
a few SGD steps, and records where a backward pass overflows (a result, not an error). The
demo's depth figure and verdicts read what it returns.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from procres.diagnostics.ratios import log_ratio_spread, overflow_unit
from procres.diagnostics.recorder import NormRecorder
from procres.errors import UserError

__all__ = ["depth_study"]


def depth_study(model_factory, depths, data, *, steps: int, lr: float = 0.02, momentum: float = 0.9,
                weight_decay: float = 0.0, batch_size: int = 32, measure_batches: int = 4, seed: int = 0,
                device="cpu", on_model=None) -> dict:
    """r_l per unit at initialisation and after ``steps`` SGD steps, for each depth and family.

    ``model_factory``: ``{family: callable(depth) -> model}`` (e.g. ``{"residual":
    lambda d: resnet(d, ...), "plain": lambda d: plain(d, ...)}``) or one callable (family
    ``"model"``); each model has ``.blocks`` (its units) and, optionally, ``.block_kinds`` and
    ``.depth`` (its own depth, when the factory maps the study's depth to a family's, e.g. 164 ->
    procresnet166). ``data = (x, y)``: float inputs (N, C, H, W), already normalised, and int64
    labels (N,). ``on_model(family, depth, seconds)``: called after each model (progress).

    For each family and depth: the model is built under ``torch.manual_seed(seed)`` (the
    global RNG is restored afterwards); ``measure_batches`` fixed batches (the same for every
    model) give the "init" ratios (forward + backward in training mode, no update); then
    ``steps`` steps of SGD (cross-entropy, seeded batches) and the same batches give "trained".

    Overflow is a result, not an error. When a measurement's backward pass holds inf/NaN
    gradients, ``overflow`` records where (:func:`procres.diagnostics.ratios.overflow_unit`: the unit at whose
    input the backward pass, coming from the loss, first overflowed; 1-based, forward order), the
    finite ratios of the units after it are kept, and the model is not trained further (its
    gradients are garbage): its "trained" entry is None. A non-finite loss during the SGD steps
    stops training the same way (``phase`` "training", ``step`` the 1-based step).

    Returns a dict for ``json.dump``; ``depths``, ``results``, ``block_kinds``, ``model_depths``
    and ``overflow`` are the ``depth_study.json`` layout of :mod:`procres.reports.runs` (per-depth lists
    follow ``depths``)::

        {"depths": [...], "steps", "lr", "batch_size", "seed",
         "results":      {family: {"init": [[r_l per unit] per depth], "trained": [... or None]}},
         "block_kinds":  {family: [[kind per unit] per depth]},
         "model_depths": {family: [the model's own depth per depth]},
         "overflow":     {family: [None or {"unit", "units", "phase", "step"} per depth]},
         "spread":       {family: {phase: [log_ratio_spread(ratios) or None per depth]}},
         "summaries":    {family: {phase: [NormRecorder.summary() or None per depth]}},
         "loss":         {family: {"first": [...], "last": [...]}},   # first step, mean of last 5
         "seconds":      {family: [...]}}
    """
    factories, depths, (x, y) = _checked(model_factory, depths, steps, data)
    batch_size = min(batch_size, len(x))
    x, y = x.to(device), y.to(device=device, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    measure = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(measure_batches)]
    train_idx = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(steps)]
    sgd = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)

    out = {"depths": depths, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
           **{key: {} for key in ("results", "block_kinds", "model_depths", "overflow", "spread", "summaries",
                                  "loss", "seconds")}}
    for family, factory in factories.items():
        rows = {key: [] for key in ("init", "trained", "kinds", "depth", "overflow", "first", "last", "seconds")}
        for depth in depths:
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = factory(depth)
            if not hasattr(model, "blocks"):
                raise UserError(f"model_factory[{family!r}]({depth}) returned a model without .blocks")
            model = model.to(device).train()
            rows["kinds"].append(list(getattr(model, "block_kinds", ["unknown"] * len(model.blocks))))
            rows["depth"].append(int(getattr(model, "depth", depth)))
            result = _study_one(model, x, y, measure, train_idx, sgd)
            for key in ("init", "trained", "overflow", "first", "last"):
                rows[key].append(result[key])
            rows["seconds"].append(time.perf_counter() - start)
            if on_model is not None:
                on_model(family, depth, rows["seconds"][-1])
        summaries = {phase: rows[phase] for phase in ("init", "trained")}
        out["results"][family] = {phase: [None if s is None else s["ratio"] for s in ss]
                                  for phase, ss in summaries.items()}
        out["summaries"][family] = summaries
        out["spread"][family] = {phase: [None if r is None else log_ratio_spread(r) for r in rs]
                                 for phase, rs in out["results"][family].items()}
        out["block_kinds"][family] = rows["kinds"]
        out["model_depths"][family] = rows["depth"]
        out["overflow"][family] = rows["overflow"]
        out["loss"][family] = {"first": rows["first"], "last": rows["last"]}
        out["seconds"][family] = rows["seconds"]
    return out


def _checked(model_factory, depths, steps, data):
    """(factories as a dict, depths as a list, (x, y)), or a UserError naming the bad argument."""
    factories = model_factory if isinstance(model_factory, dict) else {"model": model_factory}
    for family, factory in factories.items():
        if not callable(factory):
            raise UserError(f"model_factory[{family!r}] must be callable(depth) -> model, "
                             f"got {type(factory).__name__}")
    depths = list(depths)
    if not depths or not all(isinstance(d, int) and d > 0 for d in depths):
        raise UserError(f"depths must be a non-empty list of positive ints, got {depths!r}")
    if not isinstance(steps, int) or steps < 0:
        raise UserError(f"steps must be a non-negative int, got {steps!r}")
    x, y = data
    if not torch.is_floating_point(x):
        raise UserError(f"data x must be a float tensor (normalised images), got dtype {x.dtype}")
    if len(x) != len(y) or len(x) == 0:
        raise UserError(f"data x and y must have the same non-zero length, got {len(x)} and {len(y)}")
    return factories, depths, (x, y)


def _study_one(model: nn.Module, x: Tensor, y: Tensor, measure: list[Tensor], train_idx: list[Tensor],
               sgd: dict) -> dict:
    """One model of the depth study: init summary, SGD steps, trained summary; stops at an overflow."""
    units = len(model.blocks)
    found = {"init": _measure_ratios(model, x, y, measure), "trained": None, "overflow": None,
             "first": math.nan, "last": math.nan}
    unit = overflow_unit(found["init"]["grad_nonfinite"])
    if unit is not None:
        found["overflow"] = {"unit": unit, "units": units, "phase": "init", "step": 0}
        return found
    opt = torch.optim.SGD(model.parameters(), **sgd)
    losses = []
    for step, idx in enumerate(train_idx, start=1):
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if not bool(torch.isfinite(loss)):  # the weights hold inf/NaN: an earlier step's gradients overflowed
            found["overflow"] = {"unit": None, "units": units, "phase": "training", "step": step}
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if losses:
        found["first"], found["last"] = losses[0], sum(losses[-5:]) / len(losses[-5:])
    if found["overflow"] is None:
        found["trained"] = _measure_ratios(model, x, y, measure)
        unit = overflow_unit(found["trained"]["grad_nonfinite"])
        if unit is not None:
            found["overflow"] = {"unit": unit, "units": units, "phase": "trained", "step": len(train_idx)}
    return found


def _measure_ratios(model: nn.Module, x: Tensor, y: Tensor, batches: list[Tensor]) -> dict:
    """NormRecorder summary over forward + backward passes on ``batches`` (no parameter update)."""
    with NormRecorder(model.blocks) as rec:
        for idx in batches:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    model.zero_grad(set_to_none=True)
    return rec.summary()
