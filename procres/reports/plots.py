"""Figures built only from saved run files.

Nothing here imports torch or the training code: every figure is drawn from the files a run (or
the demo) leaves on disk (read by :mod:`procres.reports.runs`, which lists the files and their keys), so
plots never need a re-train.

Figures (after the authors' README animation, docs/theory.md section 2):

1. :func:`plot_ratio_per_block`  r_l per block on a log axis 0.1..10, one panel per
   net, a line per chosen epoch, transition/projection units shaded.
2. :func:`plot_ratio_heatmap`    block x training-step map of log10 r_l, diverging colours
   centred at 0 (r_l = 1); one row per history record (the mean over its recorded steps).
3. :func:`plot_depth_study`      the paper's "deviation vs depth": spread of r_l (mean and max of
   |log10 r_l| over each family's own units) against depth, at initialisation and after the
   study's steps, overflows marked; below, r_l per unit of the deepest nets at initialisation.
   Any families: the demo's three, or those of ``procres study``.
4. :func:`plot_spectra`          histograms of the operator singular values of each
   layer before/after projection, and circular vs zero padding for one kernel.
5. :func:`plot_learning_curves`  train and held-out loss and accuracy per net.

Colours are fixed per model family (:data:`FAMILY_COLORS`) across all figures; a study's other
families take the next colours of :data:`OTHER_COLORS` in the study's order.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from procres.errors import UserError
from procres.reports.runs import FAMILY_LABELS, Run, collect

FAMILY_COLORS = {"residual": "#1f77b4", "procrustes": "#2ca02c", "plain": "#d62728"}
FAMILY_ORDER = ("residual", "procrustes", "plain")
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MARKED_KINDS = ("transition", "projection")
_KIND_COLORS = {"transition": "#9467bd", "projection": "#ff7f0e"}
_DPI = 120


def _sorted_runs(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: FAMILY_ORDER.index(r.family))


def _shade(color: str, t: float) -> tuple:
    """The family colour, lightened toward white for t -> 0 (early epochs)."""
    rgb = np.array(to_rgb(color))
    return tuple(1.0 - (0.25 + 0.75 * t) * (1.0 - rgb))


def save_figure(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


#: The axis label of r_l, as the paper writes it.
RATIO_LABEL = r"$r_l = \|\partial E/\partial x_l\| \,/\, \|\partial E/\partial x_{l+1}\|$"


def log_limits(values, lo=0.1, hi=10.0) -> tuple[float, float]:
    """0.1..10 as in the paper, widened by decades when data falls outside (or within a quarter of
    a limit's value of it, so that no marker sits half-clipped on the axis)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    if v.size:
        lo = min(lo, 10.0 ** math.floor(math.log10(v.min() / 1.25)))
        hi = max(hi, 10.0 ** math.ceil(math.log10(v.max() * 1.25)))
    return lo, hi


def _mark_kinds(ax, kinds: list[str]) -> None:
    """Shade the transition / projection units (x = 1-based block index)."""
    seen = set()
    for i, kind in enumerate(kinds, start=1):
        if kind in MARKED_KINDS:
            label = None if kind in seen else f"{kind} unit"
            seen.add(kind)
            ax.axvspan(i - 0.5, i + 0.5, color=_KIND_COLORS[kind], alpha=0.18, lw=0, label=label)


def _when(record: dict) -> str:
    """How a history record is labelled: initialisation, the training step, else the epoch."""
    if record["epoch"] == 0:
        return "initialisation"
    return f"step {record['step']}" if record.get("step") is not None else f"epoch {record['epoch']}"


def _title(run: Run, width: int = 100) -> str:
    """The run's label; for a run that stopped early, the first clause of why (the full reason is
    in the report), wrapped at ``width`` characters so that it stays inside its panel."""
    if not run.stopped:
        return run.label
    why = re.split(r": | \(|; ", run.stopped, maxsplit=1)[0]
    return textwrap.fill(f"{run.label}: training stopped ({why})", width)


def _x_axis(run: Run) -> str:
    """``step`` when every record of the run carries its global step, else ``epoch``."""
    return "step" if all(h.get("step") is not None for h in run.history) else "epoch"


def pick_epochs(epochs: list[int], count: int = 4) -> list[int]:
    """``count`` epochs spread from the first to the last (always both ends)."""
    epochs = sorted(set(epochs))
    if len(epochs) <= count:
        return epochs
    idx = np.linspace(0, len(epochs) - 1, count).round().astype(int)
    return [epochs[i] for i in sorted(set(idx))]


# ---------------------------------------------------------------- figure 1
def plot_ratio_per_block(runs: list[Run], path, *, epochs: list[int] | None = None) -> Path:
    """Per-block gradient-norm ratio r_l on a log axis, one panel per run.

    ``epochs``: which epochs to draw (default: first, last and two in between).
    """
    runs = [r for r in _sorted_runs(runs) if r.ratio_records()]
    if not runs:
        raise UserError("no run has norm ratios in its history.jsonl (key norms.ratio)")
    fig = Figure(figsize=(11, 2.9 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    all_ratios = [x for r in runs for h in r.ratio_records() for x in h["norms"]["ratio"]]
    ylim = log_limits(all_ratios)
    if epochs is not None:
        have = sorted({h["epoch"] for r in runs for h in r.ratio_records()})
        if not set(epochs) & set(have):
            raise UserError(f"none of the epochs {list(epochs)} has norm ratios; recorded epochs: {have}")
    for ax, run in zip(axes, runs):
        records = {h["epoch"]: h for h in run.ratio_records()}
        chosen = [e for e in (epochs or pick_epochs(list(records))) if e in records]
        kinds = run.block_kinds()
        _mark_kinds(ax, kinds)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        for j, epoch in enumerate(chosen):
            ratio = records[epoch]["norms"]["ratio"]
            t = j / (len(chosen) - 1) if len(chosen) > 1 else 1.0
            ax.plot(np.arange(1, len(ratio) + 1), ratio, marker="o", ms=3, lw=1.3,
                    color=_shade(FAMILY_COLORS[run.family], t),
                    label=_when(records[epoch]))
        ax.set_yscale("log")
        ax.set_ylim(*ylim)
        ax.set_xlim(0.5, max(len(kinds), max(len(records[e]["norms"]["ratio"]) for e in chosen)) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_title(run), color=FAMILY_COLORS[run.family], fontsize=11)
        ax.set_ylabel(RATIO_LABEL)
        ax.legend(loc="upper right", fontsize=8, ncol=3)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    axes[-1].set_xlabel("block index l (forward order)")
    fig.suptitle("Gradient-norm ratio per block (1 = norm preserved)", fontsize=12)
    return save_figure(fig, path)


# ---------------------------------------------------------------- figure 2
def plot_ratio_heatmap(runs: list[Run], path) -> Path:
    """Block x training-step heat map of log10 r_l (epochs when the records carry no step), one
    panel per run, one shared colour scale."""
    runs = [r for r in _sorted_runs(runs) if r.ratio_records()]
    if not runs:
        raise UserError("no run has norm ratios in its history.jsonl (key norms.ratio)")
    maps = []
    for run in runs:
        recs = run.ratio_records()
        width = max(len(h["norms"]["ratio"]) for h in recs)
        grid = np.full((len(recs), width), np.nan)
        for i, h in enumerate(recs):
            r = np.asarray(h["norms"]["ratio"], dtype=float)
            grid[i, : r.size] = np.log10(np.clip(r, 1e-12, None))
        maps.append((run, [h[_x_axis(run)] for h in recs], grid))
    # symmetric about 0 (r = 1); capped at a factor 100 so one exploding plain net cannot wash
    # out the others (the colour bar then shows arrows)
    top = max((float(np.nanmax(np.abs(g))) for _, _, g in maps if np.isfinite(g).any()), default=0.1)
    vmax = min(max(0.1, top), 2.0)
    fig = Figure(figsize=(11, 2.6 * len(runs) + 0.6), layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (run, epochs, grid) in zip(axes, maps):
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       interpolation="nearest", origin="lower",
                       extent=(0.5, grid.shape[1] + 0.5, -0.5, len(epochs) - 0.5))
        ticks = np.unique(np.linspace(0, len(epochs) - 1, min(6, len(epochs))).round().astype(int))
        ax.set_yticks(ticks, [str(epochs[i]) for i in ticks])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for i, kind in enumerate(run.block_kinds(), start=1):
            if kind in MARKED_KINDS:
                ax.plot([i], [len(epochs) - 0.5], marker="v", ms=7, color=_KIND_COLORS[kind],
                        clip_on=False, zorder=5)
        ax.set_title(_title(run), color=FAMILY_COLORS[run.family], fontsize=11)
        ax.set_ylabel(f"training {_x_axis(run)}")
    axes[-1].set_xlabel("block index l")
    fig.colorbar(im, ax=list(axes), label=r"$\log_{10} r_l$  (0 = norm preserved)", shrink=0.9,
                 extend="both" if top > vmax else "neither")
    marked = any(k in MARKED_KINDS for run, _, _ in maps for k in run.block_kinds())
    fig.suptitle("Gradient-norm ratio over training: red = gradient grows backward, blue = shrinks"
                 + ("\n(triangles: transition / projection units)" if marked else ""), fontsize=12)
    return save_figure(fig, path)


# ---------------------------------------------------------------- figure 3
def _study_families(study: dict) -> dict[str, tuple[str, str]]:
    """``{family: (colour, label)}`` of a depth study, the demo's families first."""
    known = [f for f in FAMILY_ORDER if f in study["results"]]
    others = [f for f in study["results"] if f not in FAMILY_ORDER]
    styles = {f: (FAMILY_COLORS[f], FAMILY_LABELS[f]) for f in known}
    styles.update({f: (OTHER_COLORS[i % len(OTHER_COLORS)], f) for i, f in enumerate(others)})
    return styles


def plot_depth_study(study: dict, path) -> Path:
    """Spread of r_l against depth per family and phase (overflows marked at the top), and r_l
    per unit of the deepest nets at initialisation."""
    from procres.reports.verdicts import phase_words, study_cells, study_group

    if "depths" not in study or "results" not in study:
        raise UserError("depth study needs keys 'depths' and 'results' (see procres.reports.runs)")
    depths = list(study["depths"])
    cells = study_cells(study)
    families = _study_families(study)
    fig = Figure(figsize=(11, 8), layout="constrained")
    top_axes, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    axes = top_axes.subplots(1, 2)
    styles = {"init": dict(ls="--", mfc="white"), "trained": dict(ls="-")}
    for family, (color, label) in families.items():
        group = study_group(family, study.get("block_kinds", {}).get(family) or [])
        for phase in study["results"][family]:
            row = [c for c in cells if c["family"] == family and c["phase"] == phase]
            for ax, key in zip(axes, ("dev_mean", "dev_max")):
                values = [c["groups"].get(group, {}).get(key, math.nan) if c["overflow"] is None else math.inf
                          for c in row]
                _plot_with_overflow(ax, [c["depth"] for c in row], values, row, color=color,
                                    label=f"{label}, {phase_words(phase, study.get('steps'))}",
                                    **styles.get(phase, {}))
    extra = "; Procrustes nets have 2 more" if "procrustes" in families else ""
    for ax, key in zip(axes, ("mean", "largest")):
        ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
        ax.set_xlabel(f"depth (layers{extra})")
        ax.set_ylabel(rf"{key} $|\log_{{10}} r_l|$ over the units")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("mean deviation (identity units; plain: skip-less units)", fontsize=10)
    axes[1].set_title("largest deviation", fontsize=10)
    axes[0].legend(fontsize=7)
    _plot_deepest(bottom.subplots(1, 1), study, cells, families)
    names = " vs ".join(label for _, label in families.values())
    fig.suptitle(f"Depth study: {names}, {study.get('steps', 0)} SGD steps", fontsize=12)
    return save_figure(fig, path)


def _plot_with_overflow(ax, depths, values, cells, *, color, label, **style) -> None:
    """A line through the finite values; an overflow (inf) is a cross at the top of the axis."""
    from procres.reports.verdicts import overflow_text

    finite = [(d, v) for d, v in zip(depths, values) if np.isfinite(v)]
    if finite:
        ax.plot(*zip(*finite), marker="o", color=color, label=label, **style)
    for d, v, c in zip(depths, values, cells):
        if np.isinf(v):
            ax.plot([d], [0.97], marker="X", ms=10, color=color, transform=ax.get_xaxis_transform(), clip_on=False,
                    label=None if finite else label)
            ax.annotate(overflow_text(c["overflow"]), (d, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                        color=color, ha="right", va="top", xytext=(-6, -4), textcoords="offset points")


def _plot_deepest(ax, study: dict, cells: list[dict], families: dict) -> None:
    """r_l per unit of every family's deepest net at initialisation; overflowed units shaded."""
    deepest = study["depths"][-1]
    values = []
    for family, (color, _) in families.items():
        i = len(study["depths"]) - 1
        ratios = study["results"][family]["init"][i]
        cell = next(c for c in cells if c["family"] == family and c["depth"] == deepest and c["phase"] == "init")
        r = np.asarray([math.nan if x is None else x for x in ratios], dtype=float)
        values += list(r[np.isfinite(r)])
        ax.plot(np.arange(1, r.size + 1), r, lw=1, color=color, label=cell["model"])
        flow = cell["overflow"]
        if flow is not None and flow.get("unit"):
            ax.axvspan(0.5, flow["unit"] + 0.5, color=color, alpha=0.08, lw=0,
                       label=f"{cell['model']}: backward overflow, units 1-{flow['unit']} have no ratio")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_ylim(*log_limits(values))
    ax.set_xlabel("unit l (forward order)")
    ax.set_ylabel(r"$r_l$ at initialisation")
    ax.set_title(f"r_l per unit of the depth-{deepest} nets at initialisation", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="major", axis="y", alpha=0.3)


# ---------------------------------------------------------------- figure 4
def plot_spectra(spectra: dict, path) -> Path:
    """Singular-value histograms per layer: before vs after projection; circular vs zeros."""
    layers = spectra.get("layers") or []
    if not layers:
        raise UserError("spectra.json has no 'layers'")
    fig = Figure(figsize=(11, 2.8 * len(layers) + 0.4), layout="constrained")
    axes = fig.subplots(len(layers), 2, squeeze=False)
    proc = FAMILY_COLORS["procrustes"]
    for (ax_proj, ax_pad), layer in zip(axes, layers):
        target = layer.get("target")
        before, after = layer.get("before", {}), layer.get("after", {})
        b, a = (np.asarray(d.get("circular", []), dtype=float) for d in (before, after))
        vals = np.concatenate([b, a, [target] if target else []])
        bins = np.linspace(0, max(1e-6, float(vals.max())) * 1.05, 50)
        ax_proj.hist(b, bins=bins, color="0.55", alpha=0.8, label="before projection")
        ax_proj.hist(a, bins=bins, color=proc, alpha=0.8, label="after projection")
        title = f"{layer['name']}  (input {layer.get('input_size')}, stride {layer.get('stride', 1)})"
        ax_proj.set_title(title + ": circular padding", fontsize=10)
        ax_pad.set_title(title + ": circular vs zero padding", fontsize=10)
        ax_pad.set_xlabel("singular value")
        ax_proj.set_xlabel("singular value")
        ax_proj.set_ylabel("count (non-zero values)")
        for which, data in (("before", before), ("after", after)):
            if data.get("zeros") is None:
                continue
            c, z = np.asarray(data.get("circular", []), dtype=float), np.asarray(data["zeros"], dtype=float)
            hi = max(float(c.max(initial=0)), float(z.max(initial=0)), target or 0) * 1.05
            pbins = np.linspace(0, max(hi, 1e-6), 50)
            color = "0.45" if which == "before" else proc
            ax_pad.hist(c, bins=pbins, histtype="step", lw=1.6, color=color,
                        label=f"{which}: circular")
            ax_pad.hist(z, bins=pbins, histtype="step", lw=1.6, ls="--", color=color,
                        label=f"{which}: zero padding")
        if not ax_pad.has_data():
            ax_pad.text(0.5, 0.5, "zero-padding spectrum not computed\n(operator too large)",
                        ha="center", va="center", transform=ax_pad.transAxes, color="0.4")
        elif all(np.array_equal(d.get("circular", []), d.get("zeros", []))
                 for d in (before, after) if d.get("zeros") is not None):
            ax_pad.text(0.02, 0.95, "identical spectra\n(this kernel needs no padding)", ha="left", va="top",
                        transform=ax_pad.transAxes, color="0.3", fontsize=9)
        for ax in (ax_proj, ax_pad):
            if target:
                ax.axvline(target, color="k", ls=":", lw=1.2, label=f"target {target:.3g}")
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle("Singular values of the operator: Procrustes projection and padding", fontsize=12)
    return save_figure(fig, path)


# ---------------------------------------------------------------- figure 5
def plot_learning_curves(runs: list[Run], path) -> Path:
    """Train (solid) and held-out (dashed: validation, else test) loss and accuracy per run."""
    runs = _sorted_runs(runs)
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    drew = False
    for run in runs:
        color = FAMILY_COLORS[run.family]
        split = "val" if any(h.get("val_loss") is not None for h in run.history) else "test"
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            for prefix, ls in (("train", "-"), (split, "--")):
                pts = [(h[_x_axis(run)], h[f"{prefix}_{metric}"]) for h in run.history
                       if h.get(f"{prefix}_{metric}") is not None]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, ls=ls, marker=".", color=color, label=f"{run.label}, {prefix}")
                    drew = True
    if not drew:
        raise UserError("no run has train/val metrics in its history.jsonl")
    ax_loss.set_ylabel("cross-entropy loss (log scale)")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("accuracy")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel(f"training {_x_axis(runs[0]) if runs else 'epoch'}")
        ax.set_title(f"{title} (solid: train, dashed: held-out)", fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=7, handlelength=4)                   # long enough to show the dashes
    fig.suptitle("Learning curves", fontsize=12)
    return save_figure(fig, path)


# ---------------------------------------------------------------- everything from folders
FIGURE_FILES = {
    "ratios": "ratio_per_block.png",
    "heatmap": "ratio_heatmap.png",
    "depth": "depth_study.png",
    "spectra": "spectra.png",
    "curves": "learning_curves.png",
}


def plot_runs(folders, out_dir, *, epochs: list[int] | None = None) -> dict[str, Path]:
    """Draw every figure the given folders have data for; returns {figure: png path}.

    Folders are read by :func:`procres.reports.runs.collect` (run folders, folders holding
    ``depth_study.json`` / ``spectra.json``, or folders of run folders such as the demo's).
    """
    runs, studies, spectra = collect(folders)
    out_dir = Path(out_dir)
    made = {}
    if any(r.ratio_records() for r in runs):
        made["ratios"] = plot_ratio_per_block(runs, out_dir / FIGURE_FILES["ratios"], epochs=epochs)
        made["heatmap"] = plot_ratio_heatmap(runs, out_dir / FIGURE_FILES["heatmap"])
    if runs:
        made["curves"] = plot_learning_curves(runs, out_dir / FIGURE_FILES["curves"])
    for study in studies[:1]:
        made["depth"] = plot_depth_study(study, out_dir / FIGURE_FILES["depth"])
    for spec in spectra[:1]:
        made["spectra"] = plot_spectra(spec, out_dir / FIGURE_FILES["spectra"])
    return made

