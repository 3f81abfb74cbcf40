"""What ``procres inspect`` leaves on disk: ``inspect.json`` (atomic, standard JSON) and the figures
``ratio_per_unit.png`` and ``spectra.png``, drawn from that JSON alone
(:func:`procres.diagnostics.inspection.inspect_model` computes the result).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from procres.files import atomic_write_text, json_text
from procres.reports.plots import RATIO_LABEL, log_limits, save_figure

__all__ = ["write_inspection", "plot_inspection"]


def write_inspection(result: dict, out) -> dict:
    """``out/inspect.json`` (atomic; standard JSON: an undefined value, e.g. the r_l of a unit no
    gradient reached, is ``null``) and the figures drawn from it; returns their paths."""
    out = Path(out)
    atomic_write_text(out / "inspect.json", json_text(result, indent=1) + "\n")
    paths = {"json": out / "inspect.json"}
    paths.update(plot_inspection(json.loads((out / "inspect.json").read_text()), out / "figures"))
    return paths


def plot_inspection(result: dict, folder) -> dict:
    """``ratio_per_unit.png`` (r_l per unit, log axis) and ``spectra.png`` (each conv's extreme
    singular values relative to its norm-preserving target) from an ``inspect.json`` dict."""
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
    ax.set_ylim(*log_limits([r[k] for r in units for k in ("ratio_init", "ratio_trained")]))
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xticks(idx, [r["name"] for r in units], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(RATIO_LABEL)
    shaded = " (shaded: projection skips)" if any(r["kind"] == "projection" for r in units) else ""
    ax.set_title(f"{result['model']}: gradient-norm ratio per unit{shaded}", fontsize=10)
    ax.legend(fontsize=8)
    paths["ratio_per_unit"] = save_figure(fig, folder / "ratio_per_unit.png")
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
        ax.set_ylim(*log_limits(values))
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(idx, [r["name"] for r in convs], rotation=60, ha="right", fontsize=7)
        ax.set_title("conv operators: extreme singular values / norm-preserving target", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        paths["spectra"] = save_figure(fig, folder / "spectra.png")
    return paths
