"""The one-command demo, and the per-layer spectrum table behind ``procres spectrum``.

``run_demo(out)`` checks the paper's claims at the paper's depths with measured numbers, on CPU,
in about two minutes on two cores, on the embedded digits at their native 8x8 pixels
(:func:`procres.data.load_dataset`):

1. Trains, with the same seed and budget (:func:`procres.train.train`, recipe ``demo``),
   ``preresnet164``, ``procresnet166`` and ``plainpre164`` for 120 steps of batch 32, recording
   the per-unit gradient-norm ratios r_l at initialisation and every 3rd step, averaged per
   window of 15 steps (one history record each: history.jsonl of each run folder).
2. Depth study (:func:`procres.diagnostics.depth_study`): residual vs Procrustes vs plain at
   depths 38, 164 and 1001 (procresnet 40/166/1003), r_l at initialisation and after 6 SGD
   steps; a plain net whose backward pass overflows is recorded as such and not trained.
3. Spectra: the exact operator singular values of the Procrustes ResNet's projected convs
   (stem ``conv1`` and the two transitions) at initialisation, before and after one Procrustes
   projection, with circular and zero padding.
4. Figures (:mod:`procres.plots`) and ``report.md`` (:mod:`procres.report`), both from the
   files alone; the verdicts (:mod:`procres.verdicts`) are computed from the numbers, say
   where each was checked, and can contradict the paper.

Each stage's time is printed and listed in the report. Output folder (default ``runs/demo``)::

    runs/<model>/        run folders (config.json, history.jsonl, model.pt, ...)
    depth_study.json     spectra.json     summary.json
    figures/*.png        report.md

``quick=True`` shrinks everything (depths 20/22, 2 windows of 4 steps, depths 20 and 29 with 2
steps) so a test can run the whole pipeline in seconds.

``layer_spectra(model, image_size)`` lists, per conv layer, sigma_max, sigma_min (smallest
non-zero), the condition number and the distance of the non-zero singular values from the
Procrustes target (:func:`procres.spectral.norm_preserving_target`): exact for circular padding (:mod:`procres.spectral`), and
for zero padding exact through the dense operator where its smaller side has at most
``spectral.DENSE_LIMIT`` entries, identical to circular for 1x1 kernels, else extremes by Lanczos
(or skipped with ``zeros="off"``).
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
import torch.nn.functional as F

from procres.errors import UserError

MARKER = ".procres-demo"


# ---------------------------------------------------------------- per-layer spectra
def conv_input_sizes(model: nn.Module, image_size: int, in_channels: int) -> list[tuple[str, nn.Conv2d, int]]:
    """(name, conv, input side) for every Conv2d, found with one forward pass of a zero image."""
    sizes = {}

    def record(mod, inputs):
        sizes.setdefault(mod, inputs[0].shape[-1])  # returns None: the input is left alone

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, in_channels, image_size, image_size, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [(name, m, int(sizes[m])) for name, m in model.named_modules() if m in sizes]


def _zero_padding_dense(weight: torch.Tensor, n: int, stride: int, padding: int) -> torch.Tensor | None:
    """All singular values with zero padding via the impulse response of the smaller side."""
    from procres.spectral import DENSE_LIMIT

    c_out, c_in = weight.shape[:2]
    side = c_in * n * n
    if side > DENSE_LIMIT:
        return None
    basis = torch.eye(side, dtype=torch.float64).reshape(side, c_in, n, n)
    columns = F.conv2d(basis, weight.double(), stride=stride, padding=padding).reshape(side, -1)
    return torch.linalg.svdvals(columns)  # rows of A^T: same singular values as A


def layer_spectrum(conv: nn.Conv2d, input_size: int, *, zeros: str = "auto", name: str = "") -> dict:
    """Spectrum summary of one conv at ``input_size`` (see the module docstring).

    ``zeros``: ``"auto"`` (dense / same-as-circular / Lanczos, whichever applies), ``"dense"``
    (dense or nothing), ``"off"``. Raises ValueError for an unknown mode.
    """
    from procres.spectral import (conv_min_singular_value, conv_operator_norm, conv_singular_values,
                                  norm_preserving_target, spectrum_stats)

    if zeros not in ("auto", "dense", "off"):
        raise UserError(f"zeros must be 'auto', 'dense' or 'off', got {zeros!r}")
    w = conv.weight.detach().double().cpu()
    c_out, c_in, kh, kw = w.shape
    stride = conv.stride[0]
    target = norm_preserving_target(w, stride)
    out = {"name": name, "shape": [c_out, c_in, kh, kw], "stride": stride, "input_size": input_size,
           "target": target}
    if input_size % stride == 0:
        out["circular"] = spectrum_stats(conv_singular_values(w, input_size, stride=stride), target)
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else None
    if zeros == "off" or pad is None:
        return out
    if kh == kw == 1 and pad == 0 and "circular" in out:
        out["zeros"] = {**out["circular"], "method": "same as circular (1x1 kernel, no padding)"}
        return out
    dense = _zero_padding_dense(w, input_size, stride, pad)
    if dense is not None:
        out["zeros"] = {**spectrum_stats(dense, target), "method": "dense"}
    elif zeros == "auto":
        kw_ = dict(stride=stride, padding=pad, padding_mode="zeros", tol=1e-5, max_iter=300)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            smax = conv_operator_norm(w, input_size, **kw_)
            smin = conv_min_singular_value(w, input_size, **kw_)
        out["zeros"] = {"sigma_max": smax, "sigma_min": smin, "cond": smax / smin if smin > 0 else math.inf,
                        "max_rel_error": max(abs(smax / target - 1), abs(smin / target - 1)),
                        "method": "lanczos (extremes only)"}
    return out


def layer_spectra(model: nn.Module, image_size: int, *, in_channels: int = 3, zeros: str = "auto",
                  only=None) -> list[dict]:
    """:func:`layer_spectrum` for every Conv2d of ``model`` (``only``: names to keep; ValueError
    naming any that is not a conv layer of ``model``)."""
    convs = conv_input_sizes(model, image_size, in_channels)
    unknown = sorted(set(only or ()) - {name for name, _, _ in convs})
    if unknown:
        raise UserError(f"no conv layer named {', '.join(map(repr, unknown))} in the model; its conv layers: "
                         f"{', '.join(name for name, _, _ in convs[:6])}{', ...' if len(convs) > 6 else ''}")
    return [layer_spectrum(conv, n, zeros=zeros, name=name) for name, conv, n in convs
            if only is None or name in only]


def spectrum_table(rows: list[dict]) -> str:
    head = (f"{'layer':34s} {'out,in,k':>12s} {'s':>1s} {'n':>3s} {'target':>7s} {'sigma_max':>9s} "
            f"{'sigma_min':>9s} {'cond':>8s} {'max|s/c-1|':>10s}  {'zeros: max':>10s} {'min':>8s}")
    lines = [head]
    for r in rows:
        c, z = r.get("circular") or {}, r.get("zeros") or {}
        f = lambda d, k, spec: "-" if k not in d else format(d[k], spec)  # noqa: E731
        lines.append(f"{r['name']:34.34s} {'{},{},{}'.format(*r['shape'][:3]):>12s} {r['stride']:1d} "
                     f"{r['input_size']:3d} {r['target']:7.3f} {f(c, 'sigma_max', '9.4g')} {f(c, 'sigma_min', '9.4g')} "
                     f"{f(c, 'cond', '8.3g')} {f(c, 'max_rel_error', '10.3g')}  {f(z, 'sigma_max', '10.4g')} "
                     f"{f(z, 'sigma_min', '8.4g')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- loading a model for `procres spectrum`
_DATASET_SHAPES = {"digits": (1, 10, 16), "cifar10": (3, 10, 32), "cifar100": (3, 100, 32)}


def load_model(name: str | None, *, checkpoint=None, image_size: int | None = None,
               in_channels: int | None = None, num_classes: int | None = None):
    """Build ``name`` (any registered name or ``<family><depth>``), optionally with trained weights.

    ``checkpoint``: a run's ``model.pt`` / ``checkpoint.pt`` (a state_dict or ``{"model": sd}``),
    read with ``weights_only=True``. Model name, channels, classes and image size default to the
    config saved with it (or the run folder's config.json), else to CIFAR-10 (3, 10, 32).
    Returns (model, image_size, in_channels).
    """
    from procres.train import build_model

    config, state = {}, None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, foreign pickle: a bad file, not a crash
            raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
        state = blob.get("model", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise UserError(f"{path}: expected a state_dict or a dict with key 'model'")
        config = blob.get("config") or {}
        if isinstance(config, str):  # checkpoint.pt keeps the config as TrainConfig.to_json() text
            config = json.loads(config)
        if not config and (path.parent / "config.json").is_file():
            config = json.loads((path.parent / "config.json").read_text())
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    name = name or config.get("model")
    if name is None:
        raise UserError("give --model NAME (the checkpoint carries no config naming it)")
    ch, classes, size = _DATASET_SHAPES.get(config.get("dataset"), (3, 10, 32))
    ch, classes = in_channels or ch, num_classes or classes
    size = image_size or size
    model = build_model(name, num_classes=classes, in_channels=ch, image_size=size)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).split("\n\t")[1:2] or [str(err)]
            raise UserError(f"{checkpoint}: weights do not fit {name} (in_channels={ch}, num_classes={classes}, "
                             f"image_size={size}): {first[0].strip()} ...") from None
    return model.eval(), size, ch


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


def _train_config(budget: Budget, model: str, seed: int, out: Path, threads: int):
    from procres.config import TrainConfig

    return TrainConfig.from_recipe(
        "demo", model=model, seed=seed, image_size=budget.image_size, pad=max(1, budget.image_size // 8),
        val_size=0, batch_size=budget.batch_size, epochs=budget.epochs, milestones=budget.milestones,
        max_steps_per_epoch=budget.steps_per_epoch, record_every=budget.record_every, init_norm_batches=2,
        out=str(out / "runs" / model), checkpoint_minutes=0, threads=threads)


def _spectra(budget: Budget, seed: int, data) -> dict:
    """Spectra of the Procrustes ResNet's projected convs at init, before/after one projection."""
    from procres.models import create_model
    from procres.procrustes import project_conv_
    from procres.spectral import norm_preserving_target

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
    padding, and their :func:`procres.spectral.spectrum_stats`."""
    from procres.spectral import conv_singular_values, spectrum_stats

    w = conv.weight.detach().double()
    spectra = {"circular": conv_singular_values(w, size, stride=conv.stride[0])}
    if conv.kernel_size[0] == 1 and conv.padding[0] == 0:
        spectra["zeros"] = spectra["circular"]  # no padding: the two operators are the same
    else:
        try:
            spectra["zeros"] = conv_singular_values(w, size, stride=conv.stride[0], padding_mode="zeros")
        except UserError:  # above spectral.DENSE_LIMIT: the circular spectrum only
            pass
    out = {"stats": {}}
    for pad, sv in spectra.items():
        stats = spectrum_stats(sv, target)
        out[pad] = sv[: stats["nonzero"]].tolist()  # sorted descending: the non-zero values first
        out["stats"][pad] = stats
    return out


def _depth_study(budget: Budget, seed: int, data, on_model=None) -> dict:
    from procres import models
    from procres.diagnostics import depth_study

    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    # channels_last: on CPU the NCHW path of these nets' convolutions is slower
    x = ((data.train_x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    kw = dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)

    def factory(family):
        build = getattr(models, STUDY_MODELS[family])
        return lambda d: build(d + STUDY_EXTRA_DEPTH[family], **kw).to(memory_format=torch.channels_last)

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

    from procres import plots, report
    from procres.data import load_dataset

    t_start, load = time.perf_counter(), _load()
    seconds = {}
    nets = (budget.residual, budget.procrustes, budget.plain)
    total = len(nets) * (budget.epochs + 1) + len(budget.study_depths) * len(STUDY_MODELS) + 2
    with tqdm(total=total, desc="demo", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        def stage(name: str, t0: float) -> None:
            seconds[name] = time.perf_counter() - t0
            bar.write(f"{name}: {seconds[name]:.1f} s")

        t0 = time.perf_counter()
        data = load_dataset("digits", seed=seed, val_size=0, image_size=budget.image_size)
        stage("data", t0)
        for model in nets:
            t0 = time.perf_counter()
            config = _train_config(budget, model, seed, out, threads)
            try:
                _train_with_progress(config, bar, f"train {model}")
            except FloatingPointError as err:  # a net this budget cannot train is a result: say so, go on
                reason = str(err).split(": training stopped")[0]  # train's message names the epoch and step
                (Path(config.out) / "stopped.json").write_text(json.dumps({"reason": reason}) + "\n")
                bar.write(f"{model}: {err}")
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
