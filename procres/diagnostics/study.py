"""The depth study: per-unit gradient-norm ratios r_l of model families over a range of depths.

:func:`depth_study` builds each model of each family (residual nets and their plain twins, pre-LN
and post-LN transformers, a Hugging Face config at several layer counts, ...) at each depth,
measures r_l with :class:`procres.diagnostics.recorder.NormRecorder` at initialisation and after a
few SGD steps, and records where a backward pass overflows (a result, not an error).  The units
of a model are its ``blocks`` (every procres model), else those :func:`procres.find_units` finds;
the loss is :func:`procres.diagnostics.inspection.probe_loss` (cross-entropy for a classifier's
logits, next-token cross-entropy for a language model's).  The demo's depth figure and verdicts,
and ``procres study`` (:mod:`procres.reports.study`, which also resolves FACTORY strings), read
what it returns.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from procres.diagnostics.inspection import model_vocab, probe_loss, vocab_of, without_cache
from procres.diagnostics.ratios import log_ratio_spread, overflow_unit
from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.units import UnitsNotFound, find_units
from procres.errors import UserError

__all__ = ["depth_study", "checked_depths", "DepthUnchanged"]


class DepthUnchanged(UserError):
    """A family's factory built the same number of units at two different depths: its depth
    argument does not reach the model."""

    def __init__(self, family: str, units: int, depths: tuple):
        self.family, self.units, self.depths = family, units, depths
        super().__init__(f"model_factory[{family!r}] did not change the model with the depth: {units} units at "
                         f"depths {depths[0]} and {depths[1]}")


def depth_study(model_factory, depths, data, *, steps: int, lr: float = 0.02, momentum: float = 0.9,
                weight_decay: float = 0.0, batch_size: int = 32, measure_batches: int = 4, seed: int = 0,
                device="cpu", vocab: int | None = None, on_model=None) -> dict:
    """r_l per unit at initialisation and after ``steps`` SGD steps, for each depth and family.

    ``model_factory``: ``{family: callable(depth) -> model}`` (e.g. ``{"residual":
    lambda d: resnet(d, ...), "plain": lambda d: plain(d, ...)}``) or one callable (family
    ``"model"``); a model's units are its ``.blocks`` with, optionally, ``.block_kinds``, else the
    units :func:`procres.find_units` finds on the first measurement batch (their kinds); its
    ``.depth``, when it has one, is its own depth (when the factory maps the study's depth to a
    family's, e.g. 164 -> procresnet166).  ``data = (x, y)``: float inputs ``(N, ...)``, already
    normalised, or integer token ids ``(N, T)``; int64 labels ``(N,)`` or None (random labels for a
    classifier, drawn per measurement from a generator seeded with ``seed``).  ``vocab``: the
    vocabulary of token data (default: each model's own, :func:`procres.diagnostics.inspection.vocab_of`).
    ``on_model(family, depth, seconds)``: called after each model (progress).

    For each family and depth: the model is built under ``torch.manual_seed(seed)`` (the
    global RNG is restored afterwards); ``measure_batches`` fixed batches (the same for every
    model) give the "init" ratios (forward + backward in training mode, no update); then
    ``steps`` steps of SGD (the probe loss on seeded batches) and the same batches give "trained".

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
         "units":        {family: [how the units were found per depth]},
         "seconds":      {family: [...]}}
    """
    factories, depths, (x, y) = _checked(model_factory, depths, steps, data)
    batch_size = min(batch_size, len(x))
    x, y = x.to(device), None if y is None else y.to(device=device, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    measure = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(measure_batches)]
    train_idx = [torch.randint(len(x), (batch_size,), generator=gen) for _ in range(steps)]
    probe = dict(sgd=dict(lr=lr, momentum=momentum, weight_decay=weight_decay), seed=seed, vocab=vocab)

    out = {"depths": depths, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
           **{key: {} for key in ("results", "block_kinds", "model_depths", "overflow", "spread", "summaries",
                                  "loss", "units", "seconds")}}
    for family, factory in factories.items():
        rows = _study_family(family, factory, depths, (x, y), measure, train_idx, probe, device, on_model)
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
        out["units"][family] = rows["units"]
        out["seconds"][family] = rows["seconds"]
    return out


def _study_family(family, factory, depths, data, measure, train_idx, probe, device, on_model) -> dict:
    """One family at every depth: ``{key: [one value per depth]}``."""
    x, _ = data
    rows = {key: [] for key in ("init", "trained", "kinds", "depth", "overflow", "first", "last", "units", "seconds")}
    for depth in depths:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(probe["seed"])
            model = factory(depth)
        if not isinstance(model, nn.Module):
            raise UserError(f"model_factory[{family!r}]({depth}) returned a {type(model).__name__}, not an nn.Module")
        model = without_cache(model.to(device).train())
        try:
            units, runner, kinds, rule = _units_of(model, x[measure[0]] if measure else x[:32])
        except UnitsNotFound as err:
            raise UserError(f"{family} at depth {depth}: {err.sentence(command=None)}; the study takes the units "
                            f"its models list as .blocks, else those procres.find_units finds: leave depth {depth} "
                            f"out (--depths) or give the models a .blocks list") from None
        except UserError as err:
            raise UserError(f"{family} at depth {depth}: {err}") from None
        rows["kinds"].append(kinds)
        rows["units"].append(rule)
        rows["depth"].append(int(getattr(model, "depth", depth)))
        _check_depth_changes(family, rows["depth"], rows["kinds"], depths)
        result = _study_one(model, runner, units, data, measure, train_idx, probe)
        for key in ("init", "trained", "overflow", "first", "last"):
            rows[key].append(result[key])
        rows["seconds"].append(time.perf_counter() - start)
        if on_model is not None:
            on_model(family, depth, rows["seconds"][-1])
    return rows


def _check_depth_changes(family: str, model_depths: list, kinds: list, depths: list) -> None:
    """DepthUnchanged when the latest model has as many units as the first at another depth."""
    last = len(model_depths) - 1
    if last > 0 and model_depths[last] != model_depths[0] and len(kinds[last]) == len(kinds[0]):
        raise DepthUnchanged(family, len(kinds[0]), (depths[0], depths[last]))


def _units_of(model: nn.Module, example: Tensor):
    """-> (units, the module to run, their kinds, how they were found): ``model.blocks`` when it
    has them, else :func:`procres.find_units` on ``example``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
        kinds = list(getattr(model, "block_kinds", ["unknown"] * len(blocks)))
        return list(blocks), model, kinds, "blocks: the model's own units"
    found = find_units(model, example)
    return found, found.module.train(), [u.kind for u in found], found.rule


def checked_depths(depths) -> list[int]:
    """``depths`` as a list, or a UserError unless it is a non-empty list of positive ints."""
    depths = list(depths)
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in depths):
        raise UserError(f"depths must be a non-empty list of positive ints, got {depths!r}")
    return depths


def _checked(model_factory, depths, steps, data):
    """(factories as a dict, depths as a list, (x, y)), or a UserError naming the bad argument."""
    factories = model_factory if isinstance(model_factory, dict) else {"model": model_factory}
    for family, factory in factories.items():
        if not callable(factory):
            raise UserError(f"model_factory[{family!r}] must be callable(depth) -> model, "
                             f"got {type(factory).__name__}")
    depths = checked_depths(depths)
    if not isinstance(steps, int) or steps < 0:
        raise UserError(f"steps must be a non-negative int, got {steps!r}")
    x, y = data
    if not (torch.is_floating_point(x) or (not x.is_complex() and x.dim() == 2 and x.dtype != torch.bool)):
        raise UserError(f"data x must be a float tensor (normalised inputs) or integer token ids (N, T), got dtype "
                        f"{x.dtype} and shape {tuple(x.shape)}")
    if len(x) == 0 or (y is not None and len(x) != len(y)):
        raise UserError(f"data x and y must have the same non-zero length, got {len(x)} and "
                        f"{'no labels' if y is None else len(y)}")
    return factories, depths, (x, y)


def _study_one(model: nn.Module, runner: nn.Module, units: list, data: tuple, measure: list[Tensor],
               train_idx: list[Tensor], probe: dict) -> dict:
    """One model of the depth study: init summary, SGD steps, trained summary; stops at an overflow."""
    x, y = data
    ids_range = vocab_of(model, probe["vocab"]) if not x.is_floating_point() else None
    vocab = (ids_range, model_vocab(model))           # probe_loss's vocab and width
    measured = lambda: _measure_ratios(runner, units, data, measure, probe["seed"], vocab)  # noqa: E731
    found = {"init": measured(), "trained": None, "overflow": None, "first": math.nan, "last": math.nan}
    unit = overflow_unit(found["init"]["grad_nonfinite"])
    if unit is not None:
        found["overflow"] = {"unit": unit, "units": len(units), "phase": "init", "step": 0}
        return found
    opt = torch.optim.SGD(model.parameters(), **probe["sgd"])
    gen = torch.Generator().manual_seed(probe["seed"] + 1)
    losses = []
    for step, idx in enumerate(train_idx, start=1):
        loss = probe_loss(runner(x[idx]), None if y is None else y[idx], gen, x[idx], *vocab)
        if not bool(torch.isfinite(loss)):  # the weights hold inf/NaN: an earlier step's gradients overflowed
            found["overflow"] = {"unit": None, "units": len(units), "phase": "training", "step": step}
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if losses:
        found["first"], found["last"] = losses[0], sum(losses[-5:]) / len(losses[-5:])
    if found["overflow"] is None:
        found["trained"] = measured()
        unit = overflow_unit(found["trained"]["grad_nonfinite"])
        if unit is not None:
            found["overflow"] = {"unit": unit, "units": len(units), "phase": "trained", "step": len(train_idx)}
    return found


def _measure_ratios(runner: nn.Module, units: list, data: tuple, batches: list[Tensor], seed: int,
                    vocab: tuple) -> dict:
    """NormRecorder summary over forward + backward passes on ``batches`` (no parameter update);
    ``vocab``: (range of the ids, the model's own vocabulary), each None when unknown."""
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    with NormRecorder(units) as rec:
        for idx in batches:
            runner.zero_grad(set_to_none=True)
            probe_loss(runner(x[idx]), None if y is None else y[idx], gen, x[idx], *vocab).backward()
    runner.zero_grad(set_to_none=True)
    return rec.summary()
