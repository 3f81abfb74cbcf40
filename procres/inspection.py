"""``procres inspect``: the paper's diagnostics for any model, in one call.

``inspect_model(model, batches)`` measures, on ``batches`` (a list of ``(x, y)``; ``y`` may be None):

1. units (:func:`procres.units.find_units`, or ``units_by_name`` for a ``pattern``);
2. the conv table (:func:`procres.convs.conv_spectra`) of the weights as given, at the input
   size each conv sees for the first batch;
3. r_l per unit (:class:`procres.diagnostics.NormRecorder`): mean over ``measure`` forward and
   backward passes in training mode without an update ("init"), then ``steps`` steps of SGD
   (lr ``lr``, momentum 0.9; the model is changed), then the same passes again ("trained").

The model's output is a tensor, or a tuple or dict (a Hugging Face ``ModelOutput``) whose first
entry is one (``logits``, ``last_hidden_state``).  The loss is cross-entropy when that is ``(N, K)``
logits (random labels in ``[0, K)`` for random data), else ``sum(out * g) / N`` for a standard
normal ``g`` of the output's shape (drawn per batch from a generator seeded with ``seed``, the
same draws for both measurements): an isotropic output gradient, as the paper assumes, that a
final LayerNorm cannot cancel (half the mean square of a normalised output is a constant).
r_l measures how the network transports a gradient, whichever loss produced it.  Wall and CPU seconds per phase
(``trace``, ``spectra``, ``record``) are part of the result.  ``write_inspection`` saves ``inspect.json``
(atomically) and the figures ``ratio_per_unit.png`` and ``spectra.png``, drawn from that JSON alone.

Data for the command line (``--data``): ``random`` (standard normal images of ``--input-shape``),
``digits`` (the embedded 1x16x16 set of :func:`procres.data.load_dataset`) or
``cifar10:PATH`` / ``cifar100:PATH`` (the local archive), normalised with the data set's mean
and std.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from procres.errors import UserError

__all__ = ["inspect_model", "make_batches", "units_table", "write_inspection", "plot_inspection"]


def make_batches(data: str, *, input_shape, batch: int, count: int, seed: int = 0) -> tuple[list, tuple]:
    """``count`` batches of ``batch`` examples from ``data`` (see the module docstring) ->
    (list of (x, y or None), input shape (C, H, W))."""
    gen = torch.Generator().manual_seed(seed)
    if data == "random":
        shape = tuple(input_shape)
        return [(torch.randn(batch, *shape, generator=gen), None) for _ in range(count)], shape
    name, _, path = data.partition(":")
    if name not in ("digits", "cifar10", "cifar100"):
        raise UserError(f"--data must be 'random', 'digits', 'cifar10:PATH' or 'cifar100:PATH', got {data!r}")
    from procres.data import load_dataset

    splits = load_dataset(name, path or None, seed=seed)
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    batches = []
    for _ in range(count):
        idx = torch.randint(len(splits.train_y), (batch,), generator=gen)
        x = (splits.train_x[idx].float() / 255 - mean) / std
        batches.append((x, splits.train_y[idx].long()))
    return batches, tuple(batches[0][0].shape[1:])


def _loss(out, y, gen):
    from procres.diagnostics import first_tensor

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
    from procres.diagnostics import NormRecorder

    gen = torch.Generator().manual_seed(seed)
    with NormRecorder(units) as rec:
        for x, y in batches:
            runner.zero_grad(set_to_none=True)
            _loss(runner(x), y, gen).backward()
    runner.zero_grad(set_to_none=True)
    return rec.summary()["ratio"]


def inspect_model(model: nn.Module, batches: list, *, steps: int = 2, lr: float = 0.01, measure: int = 2,
                  pattern: str | None = None, zeros: str = "auto", seed: int = 0) -> dict:
    """Units, conv spectra and r_l of ``model`` on ``batches`` (see the module docstring); returns a
    JSON-ready dict ``{"units": [...], "convs": [...], "seconds": {...}, ...}``."""
    from procres.convs import conv_spectra
    from procres.units import find_units, units_by_name

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


def write_inspection(result: dict, out) -> dict:
    """``out/inspect.json`` (atomic; standard JSON: an undefined value, e.g. the r_l of a unit no
    gradient reached, is ``null``) and the figures drawn from it; returns their paths."""
    from procres.checkpoint import atomic_write_text, json_text

    out = Path(out)
    atomic_write_text(out / "inspect.json", json_text(result, indent=1) + "\n")
    paths = {"json": out / "inspect.json"}
    paths.update(plot_inspection(json.loads((out / "inspect.json").read_text()), out / "figures"))
    return paths


def plot_inspection(result: dict, folder) -> dict:
    """``ratio_per_unit.png`` (r_l per unit, log axis) and ``spectra.png`` (each conv's extreme
    singular values relative to its norm-preserving target) from an ``inspect.json`` dict."""
    from matplotlib.figure import Figure

    from procres.plots import _log_limits, _save

    folder = Path(folder)
    paths = {}
    units = result["units"]
    fig = Figure(figsize=(max(6, 0.35 * len(units) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    idx = list(range(1, len(units) + 1))
    for key, label, style in (("ratio_init", "init", "o-"), ("ratio_trained", f"after {result['steps']} SGD steps", "s-")):
        ax.plot(idx, [math.nan if r[key] is None else r[key] for r in units], style, ms=4, label=label)
    for i, r in zip(idx, units):
        if r["kind"] == "projection":
            ax.axvspan(i - 0.5, i + 0.5, color="#ff7f0e", alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_ylim(*_log_limits([r[k] for r in units for k in ("ratio_init", "ratio_trained")]))
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xticks(idx, [r["name"] for r in units], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("r_l = ||dE/dx_l|| / ||dE/dx_l+1||")
    ax.set_title(f"{result['model']}: gradient-norm ratio per unit (shaded: projection skips)", fontsize=10)
    ax.legend(fontsize=8)
    paths["ratio_per_unit"] = _save(fig, folder / "ratio_per_unit.png")
    convs = result["convs"]
    if convs:
        fig = Figure(figsize=(max(6, 0.3 * len(convs) + 2), 3.8), layout="constrained")
        ax = fig.subplots()
        idx = list(range(1, len(convs) + 1))
        values = []
        for part, marker in (("circular", "o"), ("zeros", "x")):
            for key, color in (("sigma_max", "#d62728"), ("sigma_min", "#1f77b4")):
                pts = [(i, r[part][key] / r["target"]) for i, r in zip(idx, convs)
                       if r.get(part) and (r[part].get(key) or 0) > 0]
                values += [v for _, v in pts]
                if pts:
                    ax.plot(*zip(*pts), marker, color=color, ms=4, ls="none",
                            label=f"{key} / target ({part})")
        ax.set_yscale("log")
        ax.set_ylim(*_log_limits(values))
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(idx, [r["name"] for r in convs], rotation=60, ha="right", fontsize=7)
        ax.set_title("conv operators: extreme singular values / norm-preserving target", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        paths["spectra"] = _save(fig, folder / "spectra.png")
    return paths
