"""Figures built only from saved run files.

Nothing here imports torch or the training code: every figure is drawn from the
files a run (or the demo) leaves on disk, so plots never need a re-train.

Files read (the run-folder layout of ``procres.train``, issue 5, and the demo's extras):

- ``config.json``   the resolved training config; ``model`` names the net.
- ``history.jsonl`` one JSON object per epoch; epoch 0 is measured at initialisation.
  Keys used: ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
  ``test_loss``, ``test_acc``, ``norms`` (``NormRecorder.summary()``: ``ratio`` is one
  float per unit of ``model.blocks``) and ``block_kinds`` (one of ``identity``,
  ``projection``, ``transition``, ``plain`` per unit).
- ``depth_study.json`` ``{"depths": [...], "results": {family: {phase: [[r_l per
  block] per depth]}}, "block_kinds": {family: [[kind per block] per depth]}}`` with
  family in ``residual``/``plain`` and phase in ``init``/``trained``.
- ``spectra.json`` ``{"layers": [{"name", "input_size", "stride", "target",
  "before": {"circular": [...], "zeros": [...]}, "after": {...}}]}``: singular values
  of a layer's operator before and after the Procrustes projection (``zeros`` optional).

Figures (after the authors' README animation, REFERENCE.md section 2):

1. :func:`plot_ratio_per_block`  r_l per block on a log axis 0.1..10, one panel per
   net, a line per chosen epoch, transition/projection units shaded.
2. :func:`plot_ratio_heatmap`    block x epoch map of log10 r_l, diverging colours
   centred at 0 (r_l = 1).
3. :func:`plot_depth_study`      spread of r_l (max and mean of |log10 r_l| over
   blocks) against depth, residual vs plain, at initialisation and after training.
4. :func:`plot_spectra`          histograms of the operator singular values of each
   layer before/after projection, and circular vs zero padding for one kernel.
5. :func:`plot_learning_curves`  train/val loss and accuracy per net.

Colours are fixed per model family (:data:`FAMILY_COLORS`) across all figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from procres.errors import UserError

FAMILY_COLORS = {"residual": "#1f77b4", "procrustes": "#2ca02c", "plain": "#d62728"}
FAMILY_ORDER = ("residual", "procrustes", "plain")
FAMILY_LABELS = {"residual": "residual", "procrustes": "Procrustes", "plain": "plain twin"}
MARKED_KINDS = ("transition", "projection")
_KIND_COLORS = {"transition": "#9467bd", "projection": "#ff7f0e"}
_DPI = 120


# ---------------------------------------------------------------- reading run files
@dataclass
class Run:
    """One run folder read from disk: its config and its per-epoch history."""

    path: Path
    config: dict
    history: list[dict] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.config.get("model", self.path.name))

    @property
    def family(self) -> str:
        return model_family(self.model)

    @property
    def label(self) -> str:
        # the folder name when it names the model (preresnet164-seed1); model and folder when the
        # folder says something else (train --seeds writes OUT/seed0, OUT/seed1: same model, so the
        # model name alone would give several runs one label); the model name when they agree
        folder = self.path.name
        name = folder if self.model in folder else f"{self.model} {folder}"
        return f"{name} ({FAMILY_LABELS[self.family]})"

    def ratio_records(self) -> list[dict]:
        """The history records that carry per-block norm ratios."""
        return [h for h in self.history if (h.get("norms") or {}).get("ratio")]

    def block_kinds(self) -> list[str]:
        for h in reversed(self.history):
            if h.get("block_kinds"):
                return list(h["block_kinds"])
        return []


def model_family(name: str) -> str:
    """``plain`` for the plain twins, ``procrustes`` for ProcResNets, else ``residual``."""
    name = name.lower()
    if name.startswith("plain"):
        return "plain"
    if name.startswith("proc"):
        return "procrustes"
    return "residual"


def read_json(path) -> dict:
    """Read one JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def read_history(path) -> list[dict]:
    """Read ``history.jsonl``: one JSON object per line, blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}, line {number}: not valid JSON ({err})") from None
    if not records:
        raise UserError(f"{path}: no records (expected one JSON object per epoch)")
    return records


def load_run(run_dir) -> Run:
    """Read a run folder (``config.json`` + ``history.jsonl``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    missing = [n for n in ("config.json", "history.jsonl") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: not a run folder, missing {', '.join(missing)} "
            "(expected config.json and history.jsonl written by `procres train`)"
        )
    return Run(run_dir, read_json(run_dir / "config.json"), read_history(run_dir / "history.jsonl"))


def _sorted_runs(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: FAMILY_ORDER.index(r.family))


def _shade(color: str, t: float) -> tuple:
    """The family colour, lightened toward white for t -> 0 (early epochs)."""
    rgb = np.array(to_rgb(color))
    return tuple(1.0 - (0.25 + 0.75 * t) * (1.0 - rgb))


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _log_limits(values, lo=0.1, hi=10.0) -> tuple[float, float]:
    """0.1..10 as in the paper, widened by decades when data falls outside."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    if v.size:
        lo = min(lo, 10.0 ** math.floor(math.log10(v.min())))
        hi = max(hi, 10.0 ** math.ceil(math.log10(v.max())))
    return lo, hi


def _mark_kinds(ax, kinds: list[str]) -> None:
    """Shade the transition / projection units (x = 1-based block index)."""
    seen = set()
    for i, kind in enumerate(kinds, start=1):
        if kind in MARKED_KINDS:
            label = None if kind in seen else f"{kind} unit"
            seen.add(kind)
            ax.axvspan(i - 0.5, i + 0.5, color=_KIND_COLORS[kind], alpha=0.18, lw=0, label=label)


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
    ylim = _log_limits(all_ratios)
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
            t = j / max(1, len(chosen) - 1)
            ax.plot(np.arange(1, len(ratio) + 1), ratio, marker="o", ms=3, lw=1.3,
                    color=_shade(FAMILY_COLORS[run.family], t),
                    label="initialisation" if epoch == 0 else f"epoch {epoch}")
        ax.set_yscale("log")
        ax.set_ylim(*ylim)
        ax.set_xlim(0.5, max(len(kinds), max(len(records[e]["norms"]["ratio"]) for e in chosen)) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(run.label, color=FAMILY_COLORS[run.family], fontsize=11)
        ax.set_ylabel(r"$r_l = \|\partial E/\partial x_l\| \,/\, \|\partial E/\partial x_{l+1}\|$")
        ax.legend(loc="upper right", fontsize=8, ncol=3)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    axes[-1].set_xlabel("block index l (forward order)")
    fig.suptitle("Gradient-norm ratio per block (1 = norm preserved)", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------- figure 2
def plot_ratio_heatmap(runs: list[Run], path) -> Path:
    """Block x epoch heat map of log10 r_l, one panel per run, one shared colour scale."""
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
        maps.append((run, [h["epoch"] for h in recs], grid))
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
        marked = any(k in MARKED_KINDS for k in run.block_kinds())
        note = "   (triangles: transition / projection units)" if marked else ""
        ax.set_title(run.label + note, color=FAMILY_COLORS[run.family], fontsize=11)
        ax.set_ylabel("epoch")
    axes[-1].set_xlabel("block index l")
    fig.colorbar(im, ax=list(axes), label=r"$\log_{10} r_l$  (0 = norm preserved)", shrink=0.9,
                 extend="both" if top > vmax else "neither")
    fig.suptitle("Gradient-norm ratio over training: red = gradient grows backward, blue = shrinks",
                 fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------- figure 3
def spread(ratios, kinds: list[str] | None = None, *, only: tuple[str, ...] | None = None) -> dict:
    """``max`` and ``mean`` of |log10 r_l| over blocks (restricted to kinds in ``only``)."""
    r = np.asarray(ratios, dtype=float)
    if only is not None and kinds is not None:
        keep = np.array([k in only for k in kinds], dtype=bool)
        r = r[keep[: r.size]]
    r = r[np.isfinite(r)]
    if r.size == 0:
        return {"max": float("nan"), "mean": float("nan")}
    d = np.abs(np.log10(np.clip(r, 1e-12, None)))
    return {"max": float(d.max()), "mean": float(d.mean())}


# the units whose ratios the depth study compares: the residual net's identity-skip units
# (the theorem's blocks) and the plain twin's skip-less units; transition units are left out
STUDY_KINDS = {"residual": ("identity",), "plain": ("plain",), "procrustes": ("identity",)}


def study_spread(study: dict, family: str, phase: str) -> list[dict]:
    """:func:`spread` per depth of a depth study, over the family's own units (STUDY_KINDS)
    when ``block_kinds`` are recorded, else over all units."""
    kinds = (study.get("block_kinds") or {}).get(family)
    only = STUDY_KINDS.get(family)
    per_depth = study["results"][family][phase]
    return [spread(r, kinds[i] if kinds else None, only=only if kinds else None) for i, r in enumerate(per_depth)]


def plot_depth_study(study: dict, path) -> Path:
    """Spread of r_l against depth: residual vs plain, initialisation and after training."""
    if "depths" not in study or "results" not in study:
        raise UserError("depth study needs keys 'depths' and 'results' (see procres.plots docstring)")
    depths = list(study["depths"])
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    styles = {"init": dict(ls="--", mfc="white"), "trained": dict(ls="-")}
    phase_label = {"init": "initialisation", "trained": "after training"}
    tops = [0.0, 0.0]
    for family, phases in study["results"].items():
        for phase in phases:
            stats = study_spread(study, family, phase)
            for i, (ax, key) in enumerate(zip(axes, ("max", "mean"))):
                values = [s[key] for s in stats]
                tops[i] = max([tops[i]] + [v for v in values if np.isfinite(v)])
                ax.plot(depths[: len(values)], values, marker="o", color=FAMILY_COLORS[family],
                        label=f"{FAMILY_LABELS[family]}, {phase_label.get(phase, phase)}",
                        **styles.get(phase, {}))
    for ax, key, top in zip(axes, ("max", "mean"), tops):
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel(rf"{key} over units of $|\log_{{10}} r_l|$  (0 = norm preserved)")
        ax.set_xticks(depths)
        ax.grid(True, alpha=0.3)
        if top > 5:
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)
    note = " (identity units of the residual nets, skip-less units of the plain nets)" if study.get("block_kinds") else ""
    axes[0].set_title("largest deviation" + ("" if not note else " over units"), fontsize=10)
    axes[1].set_title("mean deviation" + ("" if not note else " over units"), fontsize=10)
    axes[0].legend(fontsize=8)
    steps = study.get("steps")
    extra = f", {steps} training steps" if steps else ""
    fig.suptitle(f"Depth study: spread of the gradient-norm ratio vs depth{extra}\n{note.strip(' ()')}",
                 fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- figure 4
def _nonzero(values) -> np.ndarray:
    """Non-zero singular values (a strided operator's structural null space is left out)."""
    v = np.asarray(values, dtype=float)
    return v[v > 1e-6 * v.max()] if v.size else v


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
        b, a = _nonzero(before.get("circular", [])), _nonzero(after.get("circular", []))
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
            c, z = _nonzero(data.get("circular", [])), _nonzero(data["zeros"])
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
        elif all(np.array_equal(_nonzero(d.get("circular", [])), _nonzero(d.get("zeros", [])))
                 for d in (before, after) if d.get("zeros") is not None):
            ax_pad.text(0.02, 0.95, "identical spectra\n(this kernel needs no padding)", ha="left", va="top",
                        transform=ax_pad.transAxes, color="0.3", fontsize=9)
        for ax in (ax_proj, ax_pad):
            if target:
                ax.axvline(target, color="k", ls=":", lw=1.2, label=f"target {target:.3g}")
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle("Singular values of the operator: Procrustes projection and padding", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------- figure 5
def plot_learning_curves(runs: list[Run], path) -> Path:
    """Train (solid) and validation (dashed) loss and accuracy, one colour per family."""
    runs = _sorted_runs(runs)
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    drew = False
    for run in runs:
        color = FAMILY_COLORS[run.family]
        split = "val" if any(h.get("val_loss") is not None for h in run.history) else "test"
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            for prefix, ls in (("train", "-"), (split, "--")):
                pts = [(h["epoch"], h[f"{prefix}_{metric}"]) for h in run.history
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
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} (solid: train, dashed: held-out)", fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.suptitle("Learning curves", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------- everything from folders
FIGURE_FILES = {
    "ratios": "ratio_per_block.png",
    "heatmap": "ratio_heatmap.png",
    "depth": "depth_study.png",
    "spectra": "spectra.png",
    "curves": "learning_curves.png",
}


def _collect(folder: Path, runs: list, studies: list, spectra: list) -> bool:
    found = False
    if (folder / "history.jsonl").is_file() or (folder / "config.json").is_file():
        runs.append(load_run(folder))
        found = True
    if (folder / "depth_study.json").is_file():
        studies.append(read_json(folder / "depth_study.json"))
        found = True
    if (folder / "spectra.json").is_file():
        spectra.append(read_json(folder / "spectra.json"))
        found = True
    return found


def plot_runs(folders, out_dir, *, epochs: list[int] | None = None) -> dict[str, Path]:
    """Draw every figure the given folders have data for; returns {figure: png path}.

    A folder may be a run folder, a folder holding ``depth_study.json`` /
    ``spectra.json``, or a folder whose sub-folders are run folders (the demo's
    ``runs/``). A folder with none of these raises FileNotFoundError naming it.
    """
    runs, studies, spectra = [], [], []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
        found = _collect(folder, runs, studies, spectra)
        for sub in sorted(p for p in folder.rglob("history.jsonl")):
            if sub.parent != folder:
                found = _collect(sub.parent, runs, [], []) or found
        if not found:
            raise FileNotFoundError(
                f"{folder}: nothing to plot (expected config.json + history.jsonl, "
                "depth_study.json or spectra.json, here or in sub-folders)"
            )
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

