"""The one-command demo.

``run_demo(out)`` tells the paper's story with measured numbers, on CPU, in about two minutes,
on the embedded digits data (1-channel 16x16, :func:`procres.data.load_dataset`):

1. Trains, with the same seed and budget (:func:`procres.train.train`, recipe ``demo``), a
   pre-activation ResNet, its plain twin and a Procrustes ResNet of similar depth
   (``preresnet38``, ``plainpre38``, ``procresnet40``; 12 epochs), recording the per-unit
   gradient-norm ratios r_l throughout (history.jsonl of each run folder).
2. Depth study (:func:`procres.diagnostics.depth_study`): pre-act ResNet vs plain twin at
   depths 20/38/56/110, r_l at initialisation and after 30 SGD steps.
3. Spectra: the exact operator singular values of the Procrustes ResNet's projected convs
   (stem ``conv1`` and the two transitions) at initialisation, before and after one Procrustes
   projection, with circular and zero padding.
4. Figures (:mod:`procres.plots`) and ``report.md`` (:mod:`procres.report`), both from the
   files alone; the verdict sentences are computed from the numbers and can contradict the paper.

Output folder (default ``runs/demo``)::

    runs/<model>/        run folders (config.json, history.jsonl, model.pt, ...)
    depth_study.json     spectra.json     summary.json
    figures/*.png        report.md

``quick=True`` shrinks everything (depths 20/22, 2 epochs of 4 steps, 3 depths x 5 steps) so a test
can run the whole pipeline in well under a minute.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from procres.errors import UserError

MARKER = ".procres-demo"


# ---------------------------------------------------------------- the demo
@dataclass(frozen=True)
class Budget:
    """How much the demo trains: nets, epochs, depth-study depths and steps."""

    residual: str = "preresnet38"
    procrustes: str = "procresnet40"
    plain: str = "plainpre38"
    epochs: int = 12
    milestones: tuple = (8, 11)
    max_steps_per_epoch: int = 0
    record_every: int = 2
    study_residual: str = "preresnet"
    study_plain: str = "plainpre"
    study_depths: tuple = (20, 38, 56, 110)
    study_steps: int = 30
    study_batch: int = 32
    study_measure_batches: int = 4


QUICK = Budget(residual="preresnet20", procrustes="procresnet22", plain="plainpre20", epochs=2, milestones=(1,),
               max_steps_per_epoch=4, record_every=1, study_depths=(20, 29, 38), study_steps=5,
               study_batch=16, study_measure_batches=2)
FULL = Budget()


def _prepare(out: Path, budget: Budget) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs = [out / "runs" / m for m in (budget.residual, budget.procrustes, budget.plain)]
    if not (out / MARKER).exists() and any(r.exists() for r in runs):
        raise UserError(f"{out} holds run folders not written by the demo; choose another --out")
    (out / MARKER).write_text("written by procres demo; the demo may overwrite this folder\n")
    for r in runs:
        if r.exists():
            shutil.rmtree(r)


def _train_with_progress(config, bar, desc: str):
    """train(config, quiet=True) in a worker thread; the bar advances per finished epoch."""
    from procres.train import train

    history = Path(config.out) / "history.jsonl"
    done = 0
    bar.set_description(desc)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(train, config, quiet=True)
        while True:
            finished = job.done()
            lines = sum(1 for _ in history.open()) if history.exists() else 0
            if lines > done:
                bar.update(lines - done)
                done = lines
            if finished:
                break
            time.sleep(0.2)
        return job.result()


def _spectra(budget: Budget, seed: int, data) -> dict:
    """Spectra of the Procrustes ResNet's projected convs at init, before/after one projection."""
    from procres.procrustes import project_conv_
    from procres.spectral import norm_preserving_target
    from procres.train import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights as the trained run's
        model = build_model(budget.procrustes, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size)
    names = {id(conv): name for name, conv in model.named_modules()}
    layers = []
    for i, (conv, size) in enumerate(model.transitions()):
        where = names[id(conv)]
        label = "conv1 (stem)" if where.startswith("stem") else f"trans_conv{i} ({where})"
        before = _both_paddings(conv, size)
        project_conv_(conv, size)
        after = _both_paddings(conv, size)
        layers.append({"name": label, "input_size": size, "stride": conv.stride[0],
                       "kernel": conv.kernel_size[0], "target": norm_preserving_target(conv.weight, conv.stride),
                       "before": before, "after": after})
    return {"model": budget.procrustes, "seed": seed, "layers": layers}


def _both_paddings(conv: nn.Conv2d, size: int) -> dict:
    from procres.convop import conv_operator
    from procres.spectral import conv_singular_values

    w = conv.weight.detach().double()
    circ = conv_singular_values(w, size, stride=conv.stride)
    out = {"circular": circ.tolist()}
    zeros = dict(stride=conv.stride, padding=conv.padding, padding_mode="zeros")
    if conv_operator(w, size, **zeros).patchwise:
        out["zeros"] = out["circular"]  # no padding: the two operators are the same
    elif conv_operator(w, size, **zeros).dense_affordable:
        out["zeros"] = conv_singular_values(w, size, **zeros).tolist()
    return out


def _depth_study(budget: Budget, seed: int, data) -> dict:
    from procres import models
    from procres.diagnostics import depth_study

    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = (data.train_x.float() / 255 - mean) / std
    kw = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    # channels_last: on CPU the NCHW path of these nets' convolutions is several times slower
    factories = {"residual": lambda d: getattr(models, budget.study_residual)(d, **kw).to(memory_format=torch.channels_last),
                 "plain": lambda d: getattr(models, budget.study_plain)(d, **kw).to(memory_format=torch.channels_last)}
    x = x.contiguous(memory_format=torch.channels_last)
    study = depth_study(factories, list(budget.study_depths), (x, data.train_y), steps=budget.study_steps,
                        batch_size=budget.study_batch, measure_batches=budget.study_measure_batches, seed=seed)
    study["models"] = {"residual": budget.study_residual, "plain": budget.study_plain}
    study.pop("summaries", None)  # per-unit forward/backward norms: large, not used by the figures
    return study


def _what_was_run(budget: Budget, seed: int, data, seconds: dict, threads: int) -> str:
    flags = (f"--epochs {budget.epochs} --milestones {' '.join(map(str, budget.milestones))} "
             f"--record-every {budget.record_every} --seed {seed}")
    if budget.max_steps_per_epoch:
        flags += f" --max-steps-per-epoch {budget.max_steps_per_epoch}"
    every = "on every training step" if budget.record_every == 1 else f"every {budget.record_every} training steps"
    return (
        f"Data: the embedded digits set ({len(data.train_y)} training, {len(data.val_y)} validation, "
        f"{len(data.test_y)} test images, 1x16x16). Seed {seed}, CPU, {threads} torch thread(s).\n\n"
        f"- Trained `{budget.residual}` (pre-activation ResNet), `{budget.plain}` (its plain twin: identity "
        f"additions removed) and `{budget.procrustes}` (Procrustes ResNet, projection p=0.5 after every step) "
        f"with the same recipe (`procres train --model NAME --recipe demo {flags}`), recording r_l {every} "
        f"({seconds.get('train', 0):.0f} s).\n"
        f"- Depth study: `{budget.study_residual}` vs `{budget.study_plain}` at depths "
        f"{', '.join(map(str, budget.study_depths))}, r_l at initialisation and after {budget.study_steps} SGD "
        f"steps ({seconds.get('depth', 0):.0f} s).\n"
        f"- Spectra of `{budget.procrustes}`'s projected convs at initialisation, before and after one "
        f"Procrustes projection ({seconds.get('spectra', 0):.0f} s).\n"
    )


def auto_threads() -> int:
    """CPU threads for torch: the cores not already busy (1-minute load average), at least 1.

    On a shared machine, more OpenMP threads than idle cores make every parallel region wait
    for descheduled threads: measured here, a depth study took 121 s with 2 threads on 2 busy
    cores and 13 s with 1 thread.
    """
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, torch.get_num_threads(), int(cores - busy + 0.5)))


def run_demo(out="runs/demo", *, quick: bool = False, seed: int = 0, threads: int = 0, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns {"report", "table", "figures", "seconds", "threads", "findings"}.

    ``threads``: torch CPU threads (0: :func:`auto_threads`).
    """
    budget = QUICK if quick else FULL
    out = Path(out)
    _prepare(out, budget)
    threads = threads or auto_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, budget, seed, threads, progress)
    finally:
        torch.set_num_threads(saved)


def _run(out: Path, budget: Budget, seed: int, threads: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from procres import plots, report
    from procres.config import TrainConfig
    from procres.data import load_dataset

    t_start = time.perf_counter()
    seconds = {}
    data = load_dataset("digits", seed=seed)
    nets = (budget.residual, budget.procrustes, budget.plain)
    total = len(nets) * (budget.epochs + 1) + 3
    with tqdm(total=total, desc="demo", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        t0 = time.perf_counter()
        for model in nets:
            config = TrainConfig.from_recipe(
                "demo", model=model, seed=seed, epochs=budget.epochs, milestones=budget.milestones,
                max_steps_per_epoch=budget.max_steps_per_epoch, record_every=budget.record_every,
                out=str(out / "runs" / model), checkpoint_minutes=0, threads=threads)
            _train_with_progress(config, bar, f"train {model}")
        seconds["train"] = time.perf_counter() - t0

        bar.set_description("depth study")
        t0 = time.perf_counter()
        (out / "depth_study.json").write_text(json.dumps(_depth_study(budget, seed, data)))
        seconds["depth"] = time.perf_counter() - t0
        bar.update(1)

        bar.set_description("spectra")
        t0 = time.perf_counter()
        (out / "spectra.json").write_text(json.dumps(_spectra(budget, seed, data)))
        seconds["spectra"] = time.perf_counter() - t0
        bar.update(1)

        bar.set_description("figures + report")
        figures = plots.plot_runs([out], out / "figures")
        path, table = report.write_report(out, title="procres demo: norm preservation, measured",
                                          what_was_run=_what_was_run(budget, seed, data, seconds, threads))
        bar.update(1)
    seconds["total"] = time.perf_counter() - t_start
    findings = json.loads((out / "summary.json").read_text())["findings"]
    return {"report": path, "table": table, "figures": figures, "seconds": seconds, "threads": threads,
            "findings": findings}
