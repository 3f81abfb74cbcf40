"""``procres inspect``: the paper's diagnostics for any model, in one call.

``inspect_model(model, batches)`` measures, on ``batches`` (a list of ``(x, y)``; ``y`` may be None):

1. units (:func:`procres.diagnostics.units.find_units`, or ``units_by_name`` for a ``pattern``);
2. the conv table (:func:`procres.diagnostics.convs.conv_spectra`) of the weights as given, at the input
   size each conv sees for the first batch;
3. r_l per unit (:class:`procres.diagnostics.recorder.NormRecorder`): mean over ``measure`` forward and
   backward passes in training mode without an update ("init"), then ``steps`` steps of SGD
   (lr ``lr``, momentum 0.9; the model is changed), then the same passes again ("trained").

The model's output is a tensor, or a tuple or dict (a Hugging Face ``ModelOutput``) whose first
entry is one (``logits``, ``last_hidden_state``).  The loss is cross-entropy when that is ``(N, K)``
logits (random labels in ``[0, K)`` for random data), else ``sum(out * g) / N`` for a standard
normal ``g`` of the output's shape (drawn per batch from a generator seeded with ``seed``, the
same draws for both measurements): an isotropic output gradient, as the paper assumes, that a
final LayerNorm cannot cancel (half the mean square of a normalised output is a constant).
r_l measures how the network transports a gradient, whichever loss produced it.  Wall and CPU seconds per phase
(``trace``, ``spectra``, ``record``) are part of the result.  :mod:`procres.reports.inspection`
writes it as ``inspect.json`` with its figures; the command line's batches come from
:func:`procres.training.data.make_batches`.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from procres.diagnostics.convs import conv_spectra
from procres.diagnostics.recorder import NormRecorder, first_tensor
from procres.diagnostics.units import find_units, units_by_name
from procres.errors import UserError

__all__ = ["inspect_model", "units_table"]


def _loss(out, y, gen):
    out = first_tensor(out)
    if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
        raise UserError(f"inspect needs a model that returns a float tensor, or a tuple or dict (a ModelOutput) "
                        f"whose first entry is one; got {type(out).__name__}")
    if out.dim() == 2 and out.shape[1] > 1:
        if y is None:
            y = torch.randint(out.shape[1], (out.shape[0],), generator=gen).to(out.device)
        return nn.functional.cross_entropy(out, y)
    direction = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    return (out * direction).sum() / out.shape[0]


def _measure(runner, units, batches, seed):
    gen = torch.Generator().manual_seed(seed)
    with NormRecorder(units) as rec:
        for x, y in batches:
            runner.zero_grad(set_to_none=True)
            _loss(runner(x), y, gen).backward()
    runner.zero_grad(set_to_none=True)
    return rec.summary()["ratio"]


def inspect_model(model: nn.Module, batches: list, *, steps: int = 2, lr: float = 0.01, measure: int = 2,
                  pattern: str | None = None, zeros: str = "max", seed: int = 0) -> dict:
    """Units, conv spectra and r_l of ``model`` on ``batches`` (see the module docstring); returns a
    JSON-ready dict ``{"units": [...], "convs": [...], "seconds": {...}, ...}``."""
    if not batches or len(batches) < measure:
        raise UserError(f"inspect needs at least {measure} batches, got {len(batches)}")
    x0 = batches[0][0]
    seconds, cpu = {}, {}

    def clock(phase, start=None):
        if start is not None:
            seconds[phase], cpu[phase] = time.perf_counter() - start[0], time.process_time() - start[1]
        return time.perf_counter(), time.process_time()

    start = clock("trace")
    units = find_units(model, x0) if pattern is None else units_by_name(model, pattern, x0)
    start = clock("trace", start)
    convs = conv_spectra(model, x0[:1], zeros=zeros) if any(isinstance(m, nn.Conv2d) for m in model.modules()) else []
    start = clock("spectra", start)
    runner = units.module.train()
    probe = batches[:measure]
    init = _measure(runner, units, probe, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = _loss(runner(x), y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    trained = _measure(runner, units, probe, seed)
    clock("record", start)
    rows = [{"name": u.name, "kind": u.kind, "skip": u.skip, "ratio_init": a, "ratio_trained": b}
            for u, a, b in zip(units, init, trained)]
    return {"model": type(model).__name__, "input_shape": list(x0.shape[1:]), "batch": int(x0.shape[0]),
            "steps": steps, "lr": lr, "measure_batches": measure, "losses": losses, "units": rows,
            "convs": convs, "seconds": seconds, "cpu_seconds": cpu}


def units_table(result: dict) -> str:
    """Fixed-width units table: name, kind, skip, r_l at init and after the SGD steps."""
    steps = result["steps"]
    w = max([28] + [len(r["name"]) for r in result["units"]])    # whole names, however deep the module
    lines = [f"{'unit':{w}s} {'kind':10s} {'skip':24s} {'r_l init':>9s} {f'after {steps}':>9s}"]
    for r in result["units"]:
        lines.append(f"{r['name']:{w}s} {r['kind']:10s} {r['skip']:24.24s} {_ratio(r['ratio_init'])} "
                     f"{_ratio(r['ratio_trained'])}")
    if any(_ratio(r[k]).strip() == "-" for r in result["units"] for k in ("ratio_init", "ratio_trained")):
        lines.append("-: no gradient reached the unit, r_l = 0/0 (a classifier initialised at zero, as "
                     "torchvision's ViT head, passes none back)")
    return "\n".join(lines)


def _ratio(value) -> str:
    return f"{'-':>9s}" if value is None or not math.isfinite(value) else f"{value:9.4f}"
