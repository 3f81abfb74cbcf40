"""The summary a person reads: tables, verdicts and ``report.md``, from saved files only.

Like :mod:`procres.reports.plots`, this module reads the files a run or the demo wrote (through
:mod:`procres.reports.runs`) and imports nothing from training. The verdicts come from
:mod:`procres.reports.verdicts` (the claims, the thresholds, where each was checked); this module
gathers the statistics they need and lays out the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from procres.diagnostics.ratios import group_spreads
from procres.reports import verdicts
from procres.reports.plots import FIGURE_FILES
from procres.reports.runs import FAMILY_LABELS, Run, collect
from procres.reports.verdicts import CLEAR, NEAR, TREND, TREND_FACTOR, Finding, fmt

PHASES = ("init", "trained", "final")


# ---------------------------------------------------------------- statistics of one run
def phase_records(run: Run, phase: str) -> list[dict]:
    """History records with ratios of ``phase``: ``init`` (epoch 0), ``final`` (the last
    epoch, if trained) or ``trained`` (every epoch after 0, i.e. throughout training)."""
    records = run.ratio_records()
    if phase == "init":
        return [h for h in records if h["epoch"] == 0]
    if phase == "final":
        return records[-1:] if records and records[-1]["epoch"] > 0 else []
    if phase == "trained":
        return [h for h in records if h["epoch"] > 0]
    raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


def phase_groups(run: Run, phase: str) -> dict[str, dict]:
    """:func:`procres.diagnostics.ratios.group_spreads` over every r_l recorded in ``phase``."""
    ratios, kinds = [], []
    for h in phase_records(run, phase):
        r = h["norms"]["ratio"]
        ratios += r
        kinds += (h.get("block_kinds") or run.block_kinds() or ["unknown"] * len(r))[: len(r)]
    return group_spreads(ratios, kinds)


def ratio_change(run: Run) -> dict | None:
    """How far r_l moved from initialisation to the last epoch: the unit with the largest
    |log10 r_last - log10 r_init| (1-based ``unit``, its ``kind``, ``init``, ``last``) and the
    mean change over units, both as factors (10 ** |change|)."""
    init, last = phase_records(run, "init"), phase_records(run, "final")
    if not init or not last:
        return None
    kinds = run.block_kinds()
    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(init[0]["norms"]["ratio"], last[0]["norms"]["ratio"]), 1)
             if a is not None and b is not None and a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    change = [abs(math.log10(b) - math.log10(a)) for _, a, b in pairs]
    j = max(range(len(pairs)), key=change.__getitem__)
    unit, a, b = pairs[j]
    return {"unit": unit, "kind": kinds[unit - 1] if unit <= len(kinds) else "unknown", "init": a, "last": b,
            "factor": 10 ** change[j], "mean_factor": 10 ** (sum(change) / len(change)),
            "step": last[0].get("step"), "epoch": last[0]["epoch"]}


def run_summary(run: Run) -> dict:
    """Accuracy, ratio statistics per unit group and phase, and how far the ratios moved. A run
    that stopped early (``Run.stopped``) has no final accuracy, and its groups after
    initialisation carry ``overflow`` (the reason), which the verdicts treat as unbounded."""
    last = run.history[-1]
    ratios = {phase: phase_groups(run, phase) for phase in PHASES}
    if run.stopped:
        for phase in ("trained", "final"):
            ratios[phase] = {g: {"n": 0, "overflow": f"training stopped ({run.stopped})"} for g in ratios["init"]}
    return {"name": run.path.name, "model": run.model, "family": run.family, "label": run.label,
            "depth": run.depth, "epochs": int(last.get("epoch", len(run.history) - 1)), "steps": last.get("step"),
            "stopped": run.stopped, "final_test_acc": None if run.stopped else last.get("test_acc"),
            "final_val_acc": None if run.stopped else last.get("val_acc"), "ratios": ratios,
            "moved": ratio_change(run)}


def spectrum_summary(layer: dict) -> dict:
    """The ``spectrum_stats`` of each spectrum of one layer (before/after, circular/zeros)."""
    out = {k: layer.get(k) for k in ("name", "input_size", "stride", "kernel", "target")}
    for when in ("before", "after"):
        for pad, stats in ((layer.get(when) or {}).get("stats") or {}).items():
            out[f"{when}_{pad}"] = stats
    return out


# ---------------------------------------------------------------- sentences and tables
def sentence_moved(s: dict) -> str:
    m = s.get("moved")
    if s.get("stopped"):
        return f"{s['model']}: training stopped ({s['stopped']}); only its initialisation is measured."
    if not m:
        return f"{s['model']}: no ratios at both initialisation and the end of training."
    return (f"{s['model']}: the largest change is unit {m['unit']} ({m['kind']}), r_l {fmt(m['init'])} at "
            f"initialisation -> {fmt(m['last'])} at step {m['step']} (a factor {fmt(m['factor'])}); averaged over "
            f"units r_l changed by a factor {fmt(m['mean_factor'])}.")


def sentence_spectrum(layer: dict) -> str:
    """What the projection did to one layer's spectrum (circular padding, exact)."""
    b, a = layer.get("before_circular"), layer.get("after_circular")
    if not b or not a:
        return f"{layer['name']}: spectrum not measured."
    text = (f"{layer['name']} (target {fmt(layer['target'], 4)}): non-zero singular values from "
            f"[{fmt(b['sigma_min'])}, {fmt(b['sigma_max'])}] before to [{fmt(a['sigma_min'], 5)}, "
            f"{fmt(a['sigma_max'], 5)}] after projection")
    if a["max_rel_error"] < 1e-4:
        text += f", i.e. exactly on target (max relative error {a['max_rel_error']:.1e})"
    elif a["max_rel_error"] < b["max_rel_error"]:
        text += (f", closer to the target but not on it (max relative error {fmt(b['max_rel_error'])} -> "
                 f"{fmt(a['max_rel_error'])}; cropping the kernel back to its support makes one projection approximate)")
    else:
        text += f", not closer to the target (max relative error {fmt(b['max_rel_error'])} -> {fmt(a['max_rel_error'])})"
    z = layer.get("after_zeros")
    if z:
        same = (math.isclose(z["sigma_max"], a["sigma_max"], rel_tol=1e-6)
                and math.isclose(z["sigma_min"], a["sigma_min"], rel_tol=1e-6, abs_tol=1e-12))
        text += ("; zero padding gives the same spectrum here (no border effect for this kernel)" if same else
                 f"; with zero padding the same kernel has singular values in [{fmt(z['sigma_min'])}, "
                 f"{fmt(z['sigma_max'])}] (max relative error {fmt(z['max_rel_error'])}): the circular guarantee "
                 "does not carry over to the border")
    return text + "."


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def _range(s: dict | None) -> str:
    return "-" if not s or s.get("n", 0) == 0 else f"{s['min']:.2f}-{s['max']:.2f}"


def results_table(summaries: list[dict]) -> str:
    """Accuracy, r_l ranges per unit group during training, and how far r_l moved from init."""
    rows = []
    for s in summaries:
        tr, acc, m = s["ratios"]["trained"], s["final_test_acc"], s.get("moved")
        rows.append([s["model"], FAMILY_LABELS[s["family"]], "stopped" if s.get("stopped") else s.get("steps", "-"),
                     "-" if acc is None else f"{100 * acc:.1f}", _range(tr.get("identity")),
                     _range(tr.get("transition")), _range(tr.get("plain")),
                     "-" if not m else f"x{fmt(m['factor'])} (unit {m['unit']})"])
    return markdown_table(["model", "family", "steps", "test acc %", "r identity", "r transition", "r plain",
                           "largest change from init"], rows)


def _study_cell_text(cell: dict | None, group: str) -> str:
    if cell is None:
        return "-"
    flow = cell["overflow"]
    if flow is not None:
        return verdicts.overflow_text(flow) + (" (not trained)" if flow["phase"] == "init" != cell["phase"] else "")
    g = cell["groups"].get(group) or {}
    return "-" if not g.get("n") else f"{fmt(g['dev_mean'])} ({fmt(g['dev_max'])})"


def depth_table(study: dict) -> str:
    """Mean (max) |log10 r_l| over each family's own units per depth and phase, or the overflow."""
    cells = verdicts.study_cells(study)
    rows = []
    for family, group in (("residual", "identity"), ("procrustes", "identity"), ("plain", "plain")):
        for phase in ("init", "trained"):
            row = [verdicts._cell(cells, family, d, phase) for d in study["depths"]]
            if any(row):
                rows.append([FAMILY_LABELS[family], group, verdicts.phase_words(phase, study.get("steps"))]
                            + [f"{c['model']}: {_study_cell_text(c, group)}" if c else "-" for c in row])
    return markdown_table(["family", "units", "phase"] + [f"depth {d}" for d in study["depths"]], rows)


def spectra_table(layers: list[dict]) -> str:
    def cell(s, key):
        v = s.get(key)
        return "-" if not v else f"{v['sigma_min']:.3g}-{v['sigma_max']:.3g} ({v['max_rel_error']:.1e})"

    rows = [[s["name"], f"{s['input_size']}/{s['stride']}", fmt(s["target"], 4)]
            + [cell(s, k) for k in ("before_circular", "after_circular", "before_zeros", "after_zeros")]
            for s in layers]
    return markdown_table(["layer", "input/stride", "target", "before (circular)", "after (circular)",
                           "before (zeros)", "after (zeros)"], rows)


_MARK = {True: "holds", False: "contradicted", None: "no data"}


def _short(where) -> str:
    phase = where.phase.replace("at initialisation", "init").replace(" SGD steps", " steps").replace("after ", "+")
    return f"{where.depth}, {phase.replace('during training (steps ', 'training (')}"


def verdict_matrix(found: list[Finding]) -> str:
    """Claim x (depth, phase) grid of verdicts (the side-by-side view), shallow to deep."""
    single = [f for f in found if "-" not in f.where.depth and f.claim != "accuracy"]
    order = lambda w: (int(w.depth), "training" in w.phase, w.phase != "at initialisation")  # noqa: E731
    places = sorted({_short(f.where): f.where for f in single}.values(), key=order)
    rows: dict[str, dict] = {}
    for f in single:
        rows.setdefault(verdicts.row_label(f), {})[_short(f.where)] = f.holds
    table = [[label] + [_MARK[cells[_short(p)]] if _short(p) in cells else "" for p in places]
             for label, cells in rows.items()]
    return markdown_table(["claim"] + [_short(p) for p in places], table)


def thresholds_text() -> str:
    return (f"Deviation of a ratio is |log10 r_l| (0 = norm preserved, 1 = a factor 10). 'Near 1': 95% of a "
            f"group's deviations below {NEAR:g} (r_l within {10 ** -NEAR:.2f}-{10 ** NEAR:.2f}). 'Deviates more': a "
            f"mean deviation at least {CLEAR:g} times the other's. A depth trend 'increases'/'decreases' when the "
            f"deepest net's mean deviation differs from the shallowest's by more than {100 * TREND[0]:.0f}% of it and "
            f"either by at least {TREND[1]:g} or by a factor {TREND_FACTOR:g}, with no step between consecutive depths "
            f"going the other way by more than {100 * TREND[0]:.0f}%. Groups: identity units (identity skip), transition units (projection shortcut "
            f"of the ResNet, stand-alone transition conv of the Procrustes ResNet, projection units of the plain "
            f"twin), plain units (skip-less units of the plain twin). A backward pass that overflows float32 "
            f"(inf/NaN gradients) is an unbounded deviation; 'overflow at unit k of L' names the unit at whose input "
            f"the backward pass, coming from the loss, first held inf/NaN (forward numbering, 1 = next to the "
            f"input): units 1..k have no ratio. The thresholds live in procres.reports.verdicts.")


# ---------------------------------------------------------------- the report
def load_demo(folder) -> tuple[list[Run], dict | None, dict | None]:
    """Runs (sub-folders with history.jsonl), depth_study.json and spectra.json of a demo folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    if not any(folder.rglob("history.jsonl")):
        raise FileNotFoundError(f"{folder}: no run folders (history.jsonl) inside")
    runs, studies, spectra = collect([folder])
    return runs, (studies or [None])[0], (spectra or [None])[0]


def _verdict_lines(found: list[Finding]) -> list[str]:
    return [f"- **[{_MARK[f.holds]}]** {verdicts.CLAIMS[f.claim]}: checked at {f.where}. {f.sentence}" for f in found]


def build_report(folder, *, title: str = "procres demo", what_was_run: str = "",
                 figures_dir: str = "figures") -> tuple[str, str, dict]:
    """(markdown text, printed table, summary dict) for a demo-like folder, from its files."""
    runs, study, spectra = load_demo(folder)
    order = {"residual": 0, "procrustes": 1, "plain": 2}
    summaries = sorted((run_summary(r) for r in runs), key=lambda s: order[s["family"]])
    layers = [spectrum_summary(layer) for layer in (spectra or {}).get("layers", [])]
    headline = verdicts.run_findings(summaries)
    studied = verdicts.study_findings(study) if study else []
    trends = [f for f in studied if f.claim in ("plain_depth", "residual_depth")]
    cells = [f for f in studied if f not in trends]
    table = results_table(summaries)

    md = [f"# {title}", ""]
    if what_was_run:
        md += ["## What was run", "", what_was_run.strip(), ""]
    md += ["## The paper's claims, checked", "",
           "Each line names where it was checked: depth, phase and nets. The paper's figures show ResNet-164 and "
           "ProcResNet-166 during training; its theorem is about depth.", ""]
    md += _verdict_lines(headline + trends) + [""]
    if cells:
        md += [f"The same claims at each depth of the depth study ({len(study['depths'])} depths, at initialisation "
               f"and after {study.get('steps')} SGD steps) and during training:", "",
               verdict_matrix(cells + headline), ""]
        md += [f"- {line}" for line in verdicts.compare_depths(cells)] + [""]
    md += ["## Results", "", "Trained nets: final test accuracy (no selection on the test set), the range of r_l per "
           "unit group over all recorded training windows, and the largest change of r_l from initialisation.", "",
           table, ""]
    md += [f"- {sentence_moved(s)}" for s in summaries] + [""]
    if study:
        md += ["Depth study: mean (max) |log10 r_l| over each family's own units (identity units of the residual and "
               "Procrustes nets, skip-less units of the plain twins).", "", depth_table(study), ""]
    if layers:
        md += ["Spectra of the projected convs, exact operator singular values: range (max relative error from the "
               "target sqrt(C_out / rank), procres.norm_preserving_target).", "", spectra_table(layers), ""]
        md += ["- " + sentence_spectrum(s) for s in layers] + [""]
    md += ["## Figures", ""] + [line for key, sentence in figure_sentences(summaries, study).items()
                                for line in (f"![{key}]({figures_dir}/{FIGURE_FILES[key]})", "", sentence, "")]
    md += ["## How the verdicts are computed", "", thresholds_text(), ""]
    found = headline + trends + cells
    summary = {"runs": summaries, "spectra": layers, "findings": [f.to_dict() for f in headline + trends],
               "checks": [f.to_dict() for f in cells], "by_depth": verdicts.compare_depths(cells),
               "depth": {"depths": study["depths"], "steps": study.get("steps"),
                         "cells": verdicts.study_cells(study)} if study else None,
               "counts": {word: sum(1 for f in found if f.holds is key) for key, word in _MARK.items()}}
    return "\n".join(md), table, summary


def figure_sentences(summaries: list[dict], study: dict | None) -> dict:
    """One sentence per figure saying what it shows (the verdicts are in the text above)."""
    names = ", ".join(s["model"] for s in summaries)
    out = {"ratios": f"Per-block gradient-norm ratio r_l of {names} at initialisation and at three points of training, "
                     "log axis (dashed: r = 1; shaded: transition/projection units).",
           "heatmap": f"Block x training-step map of log10 r_l for {names} (white = norm preserved, red = the gradient "
                      "grows going backward, blue = it shrinks); each row averages the recorded steps of one window.",
           "curves": f"Training loss and accuracy (solid) and test (dashed) per window for {names}."}
    if study:
        deepest = study["depths"][-1]
        out["depth"] = ("Top: mean and largest |log10 r_l| against depth over each family's own units, at "
                        f"initialisation (dashed) and after {study.get('steps')} SGD steps (solid); a cross at the top "
                        "marks a backward pass that overflowed. Bottom: r_l per unit of the "
                        f"depth-{deepest} nets at initialisation (the plain net's overflowing units shaded).")
    out["spectra"] = ("Histograms of the exact operator singular values of the projected convs before and after one "
                      "Procrustes projection (left) and circular vs zero padding for the same kernel (right).")
    return out


def write_report(folder, **kwargs) -> tuple[Path, str]:
    """Write ``report.md`` and ``summary.json`` into ``folder``; returns (path, printed table)."""
    text, table, summary = build_report(folder, **kwargs)
    path = Path(folder) / "report.md"
    path.write_text(text)
    (Path(folder) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return path, table
