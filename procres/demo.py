"""The one-command demo, and the per-layer spectrum table behind ``procres spectrum``.

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
    from procres.spectral import conv_singular_values

    w = conv.weight.detach().double()
    circ = conv_singular_values(w, size, stride=conv.stride[0])
    out = {"circular": circ.tolist()}
    if conv.kernel_size[0] == 1 and conv.padding[0] == 0:
        out["zeros"] = out["circular"]  # no padding: the two operators are the same
    else:
        dense = _zero_padding_dense(w, size, conv.stride[0], conv.padding[0])
        if dense is not None:
            out["zeros"] = dense.tolist()
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
