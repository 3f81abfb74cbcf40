"""Recipes for the paper's experiments: exact commands, seeds, published numbers, GPU-hours.

``procres reproduce --list`` shows the recipes; ``procres reproduce NAME --data PATH [--gpus N]
[--seeds ...]`` prints the plan (the ``procres train`` / ``torchrun`` commands, then the plot
and summary commands) with the expected GPU-hours; ``--run`` executes it; ``--summary`` reads
the finished run folders and prints mean +- std of the final-epoch test error next to the
published number; ``--smoke`` runs the whole plan end to end in a minute or two on CPU, on a
synthetic archive in the official CIFAR format, with tiny depths and a few steps.

Recipes (published numbers: docs/theory.md section 7; training recipe: section 6):

``figure``          ResNet-164 vs ProcResNet-166 on CIFAR-10, seed 0: the authors' README
                    animation (per-block gradient-norm ratio through training) as our
                    per-epoch figure and block x epoch heat map.
``cifar10-preact``  the CIFAR-10 table rows of pre-activation ResNet 164/272/632/1001 vs
                    ProcResNet 166/274/634/1003, paper recipe, seeds 0 1 2.
``cifar10-he2016``  ResNet-20/32/44/56/110/1202 (He et al. 2016a recipe, warm-up for 110/1202).
``cifar100``        ResNet-164 vs ProcResNet-166 on CIFAR-100 (no ProcResNet number was published;
                    He et al. 2016b report 24.33% for pre-act ResNet-164).

Reporting (docs/theory.md section 7): the final-epoch test error, the test error at
the best validation epoch (5,000 held-out training images, ``--val-size 5000``; the published
single runs trained on all 50,000 images, which is ``--val-size 0``), mean +- std over seeds.

GPU-hours: ``EPOCH_SECONDS`` holds the seconds one training epoch (352 steps of batch 128,
SGD, bf16 autocast, channels_last, Procrustes projection p=0.5 on ProcResNets) plus evaluation
of 15k images takes on one GPU, timed with ``benchmarks/reproduce_cost.py`` on the card named in
``EPOCH_SECONDS_SOURCE``; models not timed are scaled from the nearest timed one by forward
multiply-accumulates. They are estimates, not promises: the steps were timed eagerly, without
the training loop's other work (norm recording every 10 steps, on-device augmentation,
checkpoints: more time) and without the whole-step CUDA graph that is now the default on one GPU
(less time), and the ProcResNet steps with a projection that ran its SVDs on the GPU (~90 ms per
step; it now runs without host synchronisation), so the hours are likely too high. The times were
taken with torch 2.11; the pinned torch 2.13 has not been timed. A run of
``benchmarks/gpu_all.sh`` times the default pipeline itself (an epoch with evaluation, in
``docs/gpu/latest.json``); ``benchmarks/gpu_report.py docs/gpu/latest.json --epoch-seconds``
prints the entries and the source line to put here.
With N GPUs under DDP the global batch of 128 is split (128/N per GPU), so small nets scale
poorly: the wall time is at best GPU-hours / N.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procres.errors import UserError
from procres.training.cifar import synthetic_cifar

# forward multiply-accumulates per 32x32 image (millions), counted with forward hooks on
# procres.models; used to scale epoch times between models.
FORWARD_MMACS = {
    "resnet20": 40.6, "resnet32": 68.9, "resnet44": 97.2, "resnet56": 125.5, "resnet110": 252.9,
    "resnet1202": 2829.2, "preresnet164": 247.6, "procresnet166": 246.6, "preresnet272": 408.1,
    "procresnet274": 407.0, "preresnet632": 942.9, "procresnet634": 941.8, "preresnet1001": 1491.0,
    "procresnet1003": 1490.0,
}
# Seconds per epoch (train 45k + evaluate 10k + 5k) on one GPU, timed with
# benchmarks/reproduce_cost.py (20 timed steps after 3 warm-up steps); see the module docstring.
# The ProcResNet times include ~90 ms per step for the p=0.5 projection with its SVDs on the GPU.
# Entries measured by benchmarks/gpu_epoch.py replace these (benchmarks/gpu_report.py --epoch-seconds).
EPOCH_SECONDS_SOURCE = ("measured on one NVIDIA H200 (torch 2.11, bf16, eager, batch 128; ProcResNets "
                        "with the projection's SVDs on the GPU, slower than the current CPU ones)")
EPOCH_SECONDS: dict[str, float] = {
    "resnet20": 3.2, "resnet56": 9.2, "resnet110": 18.0, "resnet1202": 167.3,
    "preresnet164": 27.7, "procresnet166": 59.9, "preresnet272": 38.0, "procresnet274": 77.4,
    "preresnet632": 105.7, "procresnet634": 135.7, "preresnet1001": 145.8, "procresnet1003": 194.6,
}


def epoch_seconds(model: str) -> float:
    """Seconds per epoch on one GPU: measured when available, else scaled by forward MACs."""
    if model in EPOCH_SECONDS:
        return EPOCH_SECONDS[model]
    if EPOCH_SECONDS:
        # scale from the measured model closest in compute
        ref = min(EPOCH_SECONDS, key=lambda m: abs(FORWARD_MMACS[m] - FORWARD_MMACS[model]))
        return EPOCH_SECONDS[ref] * FORWARD_MMACS[model] / FORWARD_MMACS[ref]
    return 0.05 * FORWARD_MMACS[model]


@dataclass(frozen=True)
class Recipe:
    """One experiment of the paper: which nets, which data and recipe, which seeds."""

    name: str
    title: str
    dataset: str  # cifar10 | cifar100
    models: tuple[str, ...]
    train_recipe: str  # a procres.training.config recipe: paper | he2016
    seeds: tuple[int, ...]
    epochs: int
    published: dict = field(default_factory=dict)  # model -> published test error %
    source: str = ""
    plot: bool = False  # draw the per-block ratio figures after training
    notes: str = ""

    def gpu_hours(self, seeds=None) -> float:
        n = len(self.seeds if seeds is None else seeds)
        return n * sum(epoch_seconds(m) for m in self.models) * self.epochs / 3600


RECIPES = {r.name: r for r in (
    Recipe("figure", "ResNet-164 vs ProcResNet-166 gradient-norm ratios through training (README animation)",
           "cifar10", ("preresnet164", "procresnet166"), "paper", (0,), 300,
           published={"preresnet164": 5.46, "procresnet166": 4.75}, source="Chainer README", plot=True,
           notes="ratios recorded every 10 steps and averaged per epoch; compare with docs/theory.md section 2"),
    Recipe("cifar10-preact", "CIFAR-10 table: pre-act ResNet vs ProcResNet, 164-1003 layers",
           "cifar10", ("preresnet164", "procresnet166", "preresnet272", "procresnet274",
                       "preresnet632", "procresnet634", "preresnet1001", "procresnet1003"),
           "paper", (0, 1, 2), 300,
           published={"preresnet164": 5.46, "procresnet166": 4.75, "preresnet272": 4.73, "procresnet274": 4.20,
                      "preresnet632": 4.59, "procresnet634": 3.78, "preresnet1001": 4.52, "procresnet1003": 3.84},
           source="He 2016b, Chainer README (164/166), PyTorch README (272-1003)",
           notes="He 2016b trained ResNet-1001 with batch 64 (4.62%); the PyTorch README used batch 128"),
    Recipe("cifar10-he2016", "CIFAR-10 table: original ResNet-20..1202 (He et al. 2016a)",
           "cifar10", ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"),
           "he2016", (0, 1, 2), 164,
           published={"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
                      "resnet110": 6.43, "resnet1202": 7.93}, source="He 2016a",
           notes="ResNet-110/1202 warm up at lr 0.01 for 400 iterations, then return to 0.1"),
    Recipe("cifar100", "CIFAR-100: pre-act ResNet-164 vs ProcResNet-166",
           "cifar100", ("preresnet164", "procresnet166"), "paper", (0, 1, 2), 300,
           published={"preresnet164": 24.33}, source="He 2016b (no ProcResNet number was published)"),
)}

def _seeds(recipe: Recipe, seeds) -> tuple[int, ...]:
    return tuple(recipe.seeds if seeds is None else seeds)


def run_dir(out: str, recipe: Recipe, model: str, seed: int) -> str:
    return f"{out}/{recipe.name}/{model}-seed{seed}"


def commands(name: str, *, data: str = "DATA", gpus: int = 1, seeds=None, out: str = "runs/reproduce",
             extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The plan as argv lists: one training command per model and seed, then plot/summary.

    Every training command carries ``--resume``: running the plan again after an interruption
    continues the run that was cut off and passes quickly over finished ones (without it the
    first existing run folder stops the plan with "already holds a run")."""
    recipe = get_recipe(name)
    if gpus < 1:
        raise UserError(f"gpus must be at least 1, got {gpus}")
    launch = (["procres"] if gpus == 1 else
              ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "procres"])
    plan = []
    for seed in _seeds(recipe, seeds):
        for model in recipe.models:
            plan.append(launch + ["train", "--model", model, "--dataset", recipe.dataset, "--data", data,
                                  "--recipe", recipe.train_recipe, "--seed", str(seed),
                                  "--out", run_dir(out, recipe, model, seed), "--resume", *extra])
    if recipe.plot:
        seed = _seeds(recipe, seeds)[0]
        plan.append(["procres", "plot", *(run_dir(out, recipe, m, seed) for m in recipe.models),
                     "--out", f"{out}/{recipe.name}/figures"])
    plan.append(["procres", "reproduce", name, "--summary", "--out", out,
                 "--seeds", *map(str, _seeds(recipe, seeds))])
    return plan


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def describe(name: str, *, data="DATA", gpus=1, seeds=None, out="runs/reproduce") -> str:
    """Human-readable plan: what, recipe, seeds, expected GPU-hours, commands."""
    r = get_recipe(name)
    s = _seeds(r, seeds)
    hours = r.gpu_hours(s)
    lines = [f"{r.name}: {r.title}",
             f"  data {r.dataset} ({data}), recipe '{r.train_recipe}' ({r.epochs} epochs), seeds {' '.join(map(str, s))}",
             f"  expected cost: about {hours:.1f} GPU-hours"
             + (f" (at best {hours / gpus:.1f} h wall on {gpus} GPUs, batch {128 // gpus} per GPU)" if gpus > 1 else "")
             + f"; per-epoch times {EPOCH_SECONDS_SOURCE}"]
    if r.published:
        pub = ", ".join(f"{m} {e:.2f}%" for m, e in r.published.items())
        lines.append(f"  published test error ({r.source}): {pub}")
    if r.notes:
        lines.append(f"  note: {r.notes}")
    lines.append("  commands:")
    lines += ["    " + shlex.join(c) for c in commands(name, data=data, gpus=gpus, seeds=seeds, out=out)]
    return "\n".join(lines)


def list_recipes() -> str:
    rows = [f"{'name':16s} {'GPU-h':>7s}  {'runs':>4s}  what"]
    for r in RECIPES.values():
        rows.append(f"{r.name:16s} {r.gpu_hours():7.1f}  {len(r.models) * len(r.seeds):4d}  {r.title}")
    rows.append(f"(estimates for the default seeds; per-epoch times {EPOCH_SECONDS_SOURCE})")
    return "\n".join(rows)


# ---------------------------------------------------------------- results
def summarize(name: str, *, out: str = "runs/reproduce", seeds=None) -> tuple[str, dict]:
    """Mean +- std over seeds of the final-epoch test error (and at the best val epoch), from the runs'
    result.json (train()'s own final-epoch / best-validation-epoch numbers)."""
    recipe = get_recipe(name)
    if not Path(out).is_dir():
        raise UserError(f"--out {out} is not a folder: nothing to summarise (the runs of '{name}' are written "
                        "there by `procres reproduce NAME --run --out DIR`)")
    rows, data = [f"{'model':16s} {'seeds':>5s}  {'final test err %':>18s}  {'at best val %':>15s}  published"], {}
    unfinished = []
    for model in recipe.models:
        final, at_best = [], []
        for seed in _seeds(recipe, seeds):
            folder = Path(run_dir(out, recipe, model, seed))
            if not (folder / "history.jsonl").is_file():
                continue
            result = folder / "result.json"  # written by train() when the run ends
            if not result.is_file():
                unfinished.append(str(folder))
                continue
            summary = json.loads(result.read_text())
            final.append(100 * summary["final_test_error"])
            if summary["test_error_at_best_val"] is not None:
                at_best.append(100 * summary["test_error_at_best_val"])
        data[model] = {"final": final, "at_best_val": at_best}
        fmt = lambda v: "-" if not v else (f"{v[0]:.2f}" if len(v) == 1 else  # noqa: E731
                                           f"{statistics.mean(v):.2f} +- {statistics.stdev(v):.2f}")
        pub = recipe.published.get(model)
        rows.append(f"{model:16s} {len(final):5d}  {fmt(final):>18s}  {fmt(at_best):>15s}  "
                    f"{'-' if pub is None else f'{pub:.2f}'}")
    if unfinished:
        rows.append(f"not finished (left out): {', '.join(unfinished)}")
    return "\n".join(rows), data


SMOKE_OVERRIDES = ("--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "16", "--eval-batch-size", "64",
                   "--val-size", "20", "--device", "cpu", "--record-every", "1", "--init-norm-batches", "1",
                   "--checkpoint-minutes", "0", "--milestones", "1", "--threads", "1")


def smoke(name: str, workdir, *, quiet: bool = True) -> tuple[str, dict]:
    """Run the recipe's whole plan in this process on a synthetic archive, tiny depths, few steps.

    The plan of :func:`commands` (first seed, one process), with each model replaced by the
    smallest depth of its family (``procres.models.registry.smallest_variant``) and ``SMOKE_OVERRIDES``
    appended: every ``procres train`` argument list is parsed with the train command's config
    flags and trained, the ``procres plot`` one drawn with ``procres.reports.plots.plot_runs``. Returns
    :func:`summarize`'s (table, data) of the finished runs (printed unless ``quiet``).
    """
    from procres.models.registry import smallest_variant
    from procres.reports.plots import plot_runs
    from procres.training.config import add_config_arguments, config_from_args
    from procres.training.loop import train

    recipe = get_recipe(name)
    workdir = Path(workdir)
    archive = synthetic_cifar(workdir / "data", dataset=recipe.dataset)
    out = str(workdir / "runs")
    small = Recipe(**{**recipe.__dict__, "name": name + "-smoke", "seeds": recipe.seeds[:1],
                      "models": tuple(dict.fromkeys(smallest_variant(m) for m in recipe.models))})
    train_flags = add_config_arguments(argparse.ArgumentParser(prog="procres train"))
    RECIPES[small.name] = small
    try:
        t0 = time.perf_counter()
        for argv in commands(small.name, data=str(archive), gpus=1, out=out, extra=SMOKE_OVERRIDES):
            if not quiet:
                print("$", shlex.join(argv), flush=True)
            if argv[1] == "train":
                train(config_from_args(train_flags.parse_args(argv[2:])), quiet=quiet)
            elif argv[1] == "plot":  # procres plot RUN_DIR... --out FOLDER
                plot_runs(argv[2:-2], argv[-1])
        table, data = summarize(small.name, out=out)  # the plan's last command
        if not quiet:
            print(f"{table}\nsmoke run of {name} finished in {time.perf_counter() - t0:.1f} s")
        return table, data
    finally:
        RECIPES.pop(small.name, None)


def execute(name: str, *, data: str, gpus: int = 1, seeds=None, out: str = "runs/reproduce") -> int:
    """Run the plan for real, one command after another (stops at the first failure)."""
    for argv in commands(name, data=data, gpus=gpus, seeds=seeds, out=out):
        print("$", shlex.join(argv), flush=True)
        if argv[0] == "procres":
            argv = [sys.executable, "-m", "procres", *argv[1:]]
        code = subprocess.call(argv)
        if code:
            return code
    return 0
