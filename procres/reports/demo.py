"""The one-command demo.

``run_demo(out)`` checks the paper's claims at the paper's depths with measured numbers, on CPU,
in about two minutes on two cores, on the embedded digits at their native 8x8 pixels
(:func:`procres.training.data.load_dataset`):

1. Trains, with the same seed and budget (:func:`procres.training.loop.train`, recipe ``demo``),
   ``preresnet164``, ``procresnet166`` and ``plainpre164`` for 120 steps of batch 32, recording
   the per-unit gradient-norm ratios r_l at initialisation and every 3rd step, averaged per
   window of 15 steps (one history record each: history.jsonl of each run folder).
2. Depth study (:func:`procres.diagnostics.study.depth_study`): residual vs Procrustes vs plain at
   depths 38, 164 and 1001 (procresnet 40/166/1003), r_l at initialisation and after 6 SGD
   steps; a plain net whose backward pass overflows is recorded as such and not trained.
3. Spectra: the exact operator singular values of the Procrustes ResNet's projected convs
   (stem ``conv1`` and the two transitions) at initialisation, before and after one Procrustes
   projection, with circular and zero padding.
4. Figures (:mod:`procres.reports.plots`) and ``report.md`` (:mod:`procres.reports.report`), both from the
   files alone; the verdicts (:mod:`procres.reports.verdicts`) are computed from the numbers, say
   where each was checked, and can contradict the paper.

Each stage's time is printed and listed in the report. Output folder (default ``runs/demo``)::

    runs/<model>/        run folders (config.json, history.jsonl, model.pt, ...)
    depth_study.json     spectra.json     summary.json
    figures/*.png        report.md

``quick=True`` shrinks everything (depths 20/22, 2 windows of 4 steps, depths 20 and 29 with 2
steps) so a test can run the whole pipeline in seconds.
"""

from __future__ import annotations

import json
import math
import os
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
    """What the demo trains and measures (the full budget's reasons are in ``_REASONS``)."""

    residual: str = "preresnet164"
    procrustes: str = "procresnet166"
    plain: str = "plainpre164"
    image_size: int = 8
    batch_size: int = 32
    epochs: int = 8  # windows of steps_per_epoch steps: one history record (heat-map row) each
    steps_per_epoch: int = 15
    milestones: tuple = (6,)
    record_every: int = 3
    study_depths: tuple = (38, 164, 1001)  # preresnet / plainpre depths; the Procrustes nets have 2 more
    study_steps: int = 6
    study_batch: int = 32
    study_measure_batches: int = 2


QUICK = Budget(residual="preresnet20", procrustes="procresnet22", plain="plainpre20", epochs=2, steps_per_epoch=4,
               milestones=(1,), record_every=1, study_depths=(20, 29), study_steps=2, study_batch=16,
               study_measure_batches=1)
FULL = Budget()
STUDY_MODELS = {"residual": "preresnet", "procrustes": "procresnet", "plain": "plainpre"}
STUDY_EXTRA_DEPTH = {"residual": 0, "procrustes": 2, "plain": 0}  # procresnet is 9n+4 where preresnet is 9n+2

_REASONS = (
    "Why this budget. Image size 8: the digits' native resolution (the 16x16 loader only upsamples them "
    "bilinearly), with 8/4/2-pixel grids per stage; a 164-layer step costs about half of what it costs at "
    "16x16. Batch 32: a 164-layer step takes a fraction of a second on one core, and r_l (a ratio of "
    "whole-batch gradient norms) is stable from step to step. {steps} steps in {epochs} windows of {per} "
    "steps: long enough for the ratios to move far from their initial values (the change is measured below) "
    "and for the nets to learn the digits, short enough to train three 164-layer nets on two CPU cores in "
    "about a minute; each window is one row of the heat map. The depth study measures the paper's depths up "
    "to its extreme ({depths}) at initialisation and after {study_steps} steps, where a 1001-layer step costs "
    "about six 164-layer steps; depth {shallow} shows the same claims in a shallow net, side by side."
)


def _prepare(out: Path) -> None:
    """Make ``out`` the demo's folder: refuse one holding run folders the demo did not write (no
    marker file), and clear the run folders of an earlier demo (another budget's nets included:
    the report reads every run folder under ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = sorted(r for r in (out / "runs").glob("*") if r.is_dir()) if (out / "runs").is_dir() else []
    if runs and not (out / MARKER).exists():
        raise UserError(f"{out} holds run folders not written by the demo; choose another --out")
    (out / MARKER).write_text("written by procres demo; the demo may overwrite this folder\n")
    for r in runs:
        shutil.rmtree(r)


def _train_with_progress(config, bar, desc: str):
    """train(config, quiet=True) in a worker thread; the bar advances per finished epoch."""
    from procres.training.loop import train

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


def _train_config(budget: Budget, model: str, seed: int, out: Path, threads: int):
    from procres.training.config import TrainConfig

    return TrainConfig.from_recipe(
        "demo", model=model, seed=seed, image_size=budget.image_size, pad=max(1, budget.image_size // 8),
        val_size=0, batch_size=budget.batch_size, epochs=budget.epochs, milestones=budget.milestones,
        max_steps_per_epoch=budget.steps_per_epoch, record_every=budget.record_every, init_norm_batches=2,
        out=str(out / "runs" / model), checkpoint_minutes=0, threads=threads)


def _spectra(budget: Budget, seed: int, data) -> dict:
    """Spectra of the Procrustes ResNet's projected convs at init, before/after one projection."""
    from procres.models.registry import create_model
    from procres.spectral.projection import project_conv_
    from procres.spectral.spectra import norm_preserving_target

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initial weights as the trained run's
        model = create_model(budget.procrustes, num_classes=data.num_classes, in_channels=data.in_channels,
                             image_size=data.image_size)
    names = {id(conv): name for name, conv in model.named_modules()}
    layers = []
    for i, (conv, size) in enumerate(model.transitions()):
        where = names[id(conv)]
        label = "conv1 (stem)" if where.startswith("stem") else f"trans_conv{i} ({where})"
        target = norm_preserving_target(conv.weight, conv.stride)
        before = _both_paddings(conv, size, target)
        project_conv_(conv, size)
        after = _both_paddings(conv, size, target)
        layers.append({"name": label, "input_size": size, "stride": conv.stride[0],
                       "kernel": conv.kernel_size[0], "target": target, "before": before, "after": after})
    return {"model": budget.procrustes, "seed": seed, "layers": layers}


def _both_paddings(conv: nn.Conv2d, size: int, target: float) -> dict:
    """Non-zero singular values with circular and (where the dense operator is affordable) zero
    padding, and their :func:`procres.spectral.spectra.spectrum_stats`."""
    from procres.spectral.operator import conv_operator
    from procres.spectral.spectra import conv_singular_values, spectrum_stats

    w = conv.weight.detach().double()
    spectra = {"circular": conv_singular_values(w, size, stride=conv.stride)}
    zeros = dict(stride=conv.stride, padding=conv.padding, padding_mode="zeros")
    if conv_operator(w, size, **zeros).patchwise:
        spectra["zeros"] = spectra["circular"]  # no padding: the two operators are the same
    elif conv_operator(w, size, **zeros).dense_affordable:
        spectra["zeros"] = conv_singular_values(w, size, **zeros)
    out = {"stats": {}}
    for pad, sv in spectra.items():
        stats = spectrum_stats(sv, target)
        out[pad] = sv[: stats["nonzero"]].tolist()  # sorted descending: the non-zero values first
        out["stats"][pad] = stats
    return out


def _depth_study(budget: Budget, seed: int, data, on_model=None) -> dict:
    from procres.diagnostics.study import depth_study
    from procres.models.registry import create_model

    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    # channels_last: on CPU the NCHW path of these nets' convolutions is slower
    x = ((data.train_x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    kw = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)

    def factory(family):
        name = STUDY_MODELS[family]
        return lambda d: create_model(f"{name}{d + STUDY_EXTRA_DEPTH[family]}", **kw).to(
            memory_format=torch.channels_last)

    study = depth_study({f: factory(f) for f in STUDY_MODELS}, list(budget.study_depths), (x, data.train_y),
                        steps=budget.study_steps, batch_size=budget.study_batch,
                        measure_batches=budget.study_measure_batches, seed=seed, on_model=on_model)
    study["models"] = dict(STUDY_MODELS)
    study.pop("summaries", None)  # per-unit forward/backward norms: large, not used by the figures
    return study


def _what_was_run(budget: Budget, seed: int, data, seconds: dict, threads: int, load: tuple) -> str:
    flags = (f"--image-size {budget.image_size} --pad {max(1, budget.image_size // 8)} --val-size 0 "
             f"--batch-size {budget.batch_size} --epochs {budget.epochs} --max-steps-per-epoch "
             f"{budget.steps_per_epoch} --milestones {' '.join(map(str, budget.milestones))} "
             f"--record-every {budget.record_every} --init-norm-batches 2 --seed {seed}")
    steps = budget.epochs * budget.steps_per_epoch
    depths = ", ".join(f"{d} ({'/'.join(f'{STUDY_MODELS[f]}{d + STUDY_EXTRA_DEPTH[f]}' for f in STUDY_MODELS)})"
                       for d in budget.study_depths)
    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in seconds.items())
    reasons = _REASONS.format(steps=steps, epochs=budget.epochs, per=budget.steps_per_epoch,
                              depths=", ".join(map(str, budget.study_depths)), study_steps=budget.study_steps,
                              shallow=budget.study_depths[0]) if budget == FULL else \
        "Quick budget: a seconds-long check of the pipeline; its numbers mean little."
    every = "on every step" if budget.record_every == 1 else f"every {budget.record_every} steps"
    return (
        f"Data: the embedded digits set at {data.image_size}x{data.image_size} ({len(data.train_y)} training and "
        f"{len(data.test_y)} test images; no validation split, since nothing is selected). Seed {seed}, CPU, "
        f"{threads} torch thread(s) on {os.cpu_count()} core(s); load average {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end.\n\n"
        f"- Trained `{budget.residual}` (pre-activation ResNet), `{budget.procrustes}` (Procrustes ResNet, "
        f"projection p=0.5 after every step) and `{budget.plain}` (the ResNet's plain twin: identity additions "
        f"removed) with the same seed and budget: {steps} SGD steps of batch {budget.batch_size} "
        f"(`procres train --model NAME --recipe demo {flags}`), r_l recorded at initialisation and {every}, "
        f"averaged per window of {budget.steps_per_epoch} steps.\n"
        f"- Depth study: residual vs Procrustes vs plain at depths {depths}; r_l at initialisation and after "
        f"{budget.study_steps} SGD steps (batch {budget.study_batch}, lr 0.02, ratios averaged over "
        f"{budget.study_measure_batches} fixed batches); a net whose backward pass overflows is recorded and "
        f"not trained.\n"
        f"- Spectra of `{budget.procrustes}`'s projected convs at initialisation, before and after one "
        f"Procrustes projection.\n\n"
        f"{reasons}\n\nStage times: {stages}.\n"
    )


def auto_threads() -> int:
    """CPU threads for torch: the cores this process may run on (``os.sched_getaffinity``, else
    ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_demo(out="runs/demo", *, quick: bool = False, seed: int = 0, threads: int = 0, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns {"report", "table", "figures", "seconds", "threads", "findings"}.

    ``threads``: torch CPU threads (0: :func:`auto_threads`).
    """
    budget = QUICK if quick else FULL
    out = Path(out)
    _prepare(out)
    threads = threads or auto_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, budget, seed, threads, progress)
    finally:
        torch.set_num_threads(saved)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def _run(out: Path, budget: Budget, seed: int, threads: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from procres.reports import plots, report
    from procres.training.data import load_dataset
    from procres.training.log import bars_shown

    t_start, load = time.perf_counter(), _load()
    seconds = {}
    nets = (budget.residual, budget.procrustes, budget.plain)
    total = len(nets) * (budget.epochs + 1) + len(budget.study_depths) * len(STUDY_MODELS) + 2
    # no bar into a file or pipe: there the stage lines below are the whole log
    with tqdm(total=total, desc="demo", unit="stage", disable=not (progress and bars_shown()),
              dynamic_ncols=True) as bar:
        def stage(name: str, t0: float) -> None:
            seconds[name] = time.perf_counter() - t0
            bar.write(f"{name}: {seconds[name]:.1f} s")

        t0 = time.perf_counter()
        data = load_dataset("digits", seed=seed, val_size=0, image_size=budget.image_size)
        stage("data", t0)
        for model in nets:
            t0, start = time.perf_counter(), bar.n
            config = _train_config(budget, model, seed, out, threads)
            try:
                _train_with_progress(config, bar, f"train {model}")
            except FloatingPointError as err:  # a net this budget cannot train is a result: say so, go on
                reason = str(err).split(": training stopped")[0]  # train's message names the epoch and step
                (Path(config.out) / "stopped.json").write_text(json.dumps({"reason": reason}) + "\n")
                bar.write(f"{model}: {err}")
            bar.update(start + budget.epochs + 1 - bar.n)  # a run that stopped early still completes its share
            stage(f"train {model}", t0)

        t0 = time.perf_counter()
        bar.set_description("depth study")

        def studied(family, depth, sec):
            bar.set_description(f"depth study ({STUDY_MODELS[family]}{depth + STUDY_EXTRA_DEPTH[family]} {sec:.1f} s)")
            bar.update(1)

        (out / "depth_study.json").write_text(json.dumps(_depth_study(budget, seed, data, studied)))
        stage("depth study", t0)

        bar.set_description("spectra")
        t0 = time.perf_counter()
        (out / "spectra.json").write_text(json.dumps(_spectra(budget, seed, data)))
        stage("spectra", t0)
        bar.update(1)

        bar.set_description("figures")
        t0 = time.perf_counter()
        figures = plots.plot_runs([out], out / "figures")
        stage("figures", t0)
        seconds["total"] = time.perf_counter() - t_start
        path, table = report.write_report(out, title="procres demo: norm preservation at the paper's depths, measured",
                                          what_was_run=_what_was_run(budget, seed, data, seconds, threads,
                                                                     (load, _load())))
        bar.update(1)
    summary = json.loads((out / "summary.json").read_text())
    return {"report": path, "table": table, "figures": figures, "seconds": seconds, "threads": threads,
            "findings": summary["findings"], "by_depth": summary["by_depth"]}
