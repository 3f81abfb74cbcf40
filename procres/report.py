"""The summary a person reads: statistics, verdicts and ``report.md``, from saved files only.

Like :mod:`procres.plots`, this module reads the files a run or the demo wrote
(``history.jsonl``, ``config.json``, ``depth_study.json``, ``spectra.json``) and imports
nothing from training. Every sentence that states a finding is generated from the
measured numbers by a small pure function (``sentence_*``) that returns a
:class:`Finding`: whether the paper's claim held in this measurement, and the sentence
saying so, or saying that the measurement contradicts it. Nothing is concluded in advance.

Claims checked (REFERENCE.md section 1):

1. identity-skip blocks keep r_l near 1 throughout training;
2. plain twins deviate from 1 more than residual nets, and more with depth;
3. in a ResNet the deviations sit at the transition (projection-shortcut) units;
4. Procrustes transitions bring those units back toward 1;
5. (accuracy) the Procrustes ResNet is at least as accurate as the ResNet.

Deviation of a ratio is measured as |log10 r_l| (0 = norm preserved, 1 = a factor 10).
"near 1" means a deviation below ``NEAR`` (0.1, i.e. 0.79 <= r_l <= 1.26).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from procres.errors import UserError
from procres.plots import FIGURE_FILES, FAMILY_LABELS, Run, load_run, read_json, study_spread

NEAR = 0.1  # |log10 r| below this counts as "near 1" (r in [0.79, 1.26])
CLEAR = 2.0  # "deviates more" needs a factor of at least this between deviations
TRANSITION_KINDS = ("transition", "projection")


@dataclass
class Finding:
    """One claim checked against measurements: ``holds`` is True, False, or None (no data)."""

    claim: str
    holds: bool | None
    sentence: str


def _dev(r) -> np.ndarray:
    return np.abs(np.log10(np.clip(np.asarray(r, dtype=float), 1e-12, None)))


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


# ---------------------------------------------------------------- statistics of one run
def ratios_by_kind(run: Run, *, epochs: str = "trained") -> dict[str, np.ndarray]:
    """All r_l values of the run grouped by unit kind.

    ``epochs``: ``"init"`` (epoch 0 only), ``"final"`` (last epoch) or ``"trained"``
    (every epoch after 0, i.e. throughout training).
    """
    records = run.ratio_records()
    if epochs == "init":
        records = [h for h in records if h["epoch"] == 0]
    elif epochs == "final":
        records = records[-1:] if records and records[-1]["epoch"] > 0 else []
    elif epochs == "trained":
        records = [h for h in records if h["epoch"] > 0]
    else:
        raise UserError(f"epochs must be 'init', 'final' or 'trained', got {epochs!r}")
    groups: dict[str, list[float]] = {}
    for h in records:
        kinds = h.get("block_kinds") or run.block_kinds()
        for kind, r in zip(kinds, h["norms"]["ratio"]):
            groups.setdefault("transition" if kind in TRANSITION_KINDS else kind, []).append(r)
    # a unit whose input needs no gradient (e.g. the raw image) has a NaN ratio: left out
    return {k: a[np.isfinite(a)] for k, a in ((k, np.asarray(v, dtype=float)) for k, v in groups.items())}


def kind_stats(r: np.ndarray) -> dict:
    """min, max, median r and the 95th-percentile / max / mean of |log10 r| of a group."""
    if r is None or len(r) == 0:
        nan = float("nan")
        return {"n": 0, "min": nan, "max": nan, "median": nan, "dev_mean": nan, "dev_p95": nan, "dev_max": nan}
    d = _dev(r)
    return {"n": int(len(r)), "min": float(r.min()), "max": float(r.max()), "median": float(np.median(r)),
            "dev_mean": float(d.mean()), "dev_p95": float(np.percentile(d, 95)), "dev_max": float(d.max())}


def run_summary(run: Run) -> dict:
    """Accuracy and ratio statistics per unit kind (at init and throughout training)."""
    last = run.history[-1]
    out = {"name": run.path.name, "model": run.model, "family": run.family, "label": run.label,
           "epochs": int(last.get("epoch", len(run.history) - 1)),
           "final_test_acc": last.get("test_acc"), "final_val_acc": last.get("val_acc"),
           "params": run.config.get("params"), "ratios": {}}
    for phase in ("init", "trained", "final"):
        out["ratios"][phase] = {k: kind_stats(v) for k, v in ratios_by_kind(run, epochs=phase).items()}
    return out


def depth_summary(study: dict) -> dict:
    """Spread (max / mean |log10 r_l|) per family, phase and depth, over the family's own units
    (identity units of residual nets, skip-less units of plain nets: ``plots.STUDY_KINDS``)."""
    out = {"depths": list(study["depths"]), "steps": study.get("steps")}
    for family, phases in study["results"].items():
        out[family] = {phase: study_spread(study, family, phase) for phase in phases}
    return out


def spectrum_summary(layer: dict) -> dict:
    """Extremes and distance from the target of each spectrum of one layer."""
    target = layer.get("target")
    out = {"name": layer["name"], "input_size": layer.get("input_size"), "stride": layer.get("stride", 1),
           "kernel": layer.get("kernel"), "target": target}
    for when in ("before", "after"):
        for pad in ("circular", "zeros"):
            s = (layer.get(when) or {}).get(pad)
            if s is None or len(s) == 0:
                continue
            s = np.asarray(s, dtype=float)
            nz = s[s > 1e-6 * max(s.max(), 1e-30)]
            rel = float(np.abs(nz / target - 1).max()) if target and nz.size else float("nan")
            out[f"{when}_{pad}"] = {"min": float(nz.min()) if nz.size else 0.0, "max": float(s.max()),
                                    "cond": float(s.max() / nz.min()) if nz.size else float("inf"),
                                    "max_rel_error": rel}
    return out


# ---------------------------------------------------------------- verdict sentences
def sentence_identity(stats: dict, *, where: str) -> Finding:
    """Claim 1 from the identity-block statistics (``kind_stats`` over training)."""
    claim = f"identity blocks keep r near 1 ({where})"
    if not stats or stats.get("n", 0) == 0:
        return Finding(claim, None, f"No identity blocks were measured in {where}.")
    span = f"r_l between {_fmt(stats['min'])} and {_fmt(stats['max'])}, 95% of values within a factor {_fmt(10 ** stats['dev_p95'])} of 1"
    if stats["dev_p95"] < NEAR:
        return Finding(claim, True, f"Identity blocks kept r_l near 1 throughout training in {where} ({span}).")
    return Finding(claim, False, f"Contrary to the paper's claim, identity blocks in {where} did not keep r_l near 1 ({span}).")


def sentence_plain(plain: dict, residual: dict, *, plain_name: str, residual_name: str) -> Finding:
    """Claim 2a: the plain twin deviates more than the residual net (mean |log10 r| over blocks)."""
    claim = "plain nets deviate more than residual nets"
    p, r = plain.get("dev_mean", float("nan")), residual.get("dev_mean", float("nan"))
    if not (np.isfinite(p) and np.isfinite(r)):
        return Finding(claim, None, "The plain-vs-residual comparison has no data.")
    nums = f"mean |log10 r_l| {_fmt(p)} for {plain_name} vs {_fmt(r)} for {residual_name}"
    if p > CLEAR * r:
        return Finding(claim, True, f"The plain twin deviates from norm preservation much more than the residual net ({nums}).")
    if p > r:
        return Finding(claim, False, f"The plain twin deviates only slightly more than the residual net ({nums}), less than the factor {CLEAR:g} we call clear; this does not support the claim.")
    return Finding(claim, False, f"Contrary to the paper's claim, the plain twin does not deviate more than the residual net ({nums}).")


def _trend(values: list[float]) -> str:
    v = [x for x in values if np.isfinite(x)]
    if len(v) < 2:
        return "unknown"
    tol = max(0.25 * abs(v[0]), 0.02)  # 0.02 in log10 = a 5% change of r
    if v[-1] > v[0] + tol:
        return "increases"
    if v[-1] < v[0] - tol:
        return "decreases"
    return "stays roughly flat"


def _chain(values, depths) -> str:
    return " -> ".join(f"{_fmt(v)} (depth {d})" for v, d in zip(values, depths))


def sentence_depth_plain(depths: list[int], plain: list[float], *, phase: str) -> Finding:
    """Claim 2b: the plain nets' spread (max |log10 r_l|) grows with depth."""
    claim = f"plain nets deviate more with depth ({phase})"
    if len(depths) < 2 or len(plain) < 2:
        return Finding(claim, None, f"The depth study ({phase}) has fewer than two depths.")
    trend = _trend(plain)
    nums = f"max |log10 r_l| of the plain nets {_chain(plain, depths)}"
    if trend == "increases":
        return Finding(claim, True, f"{phase.capitalize()}, the plain nets deviate more the deeper they are ({nums}).")
    return Finding(claim, False, f"{phase.capitalize()}, contrary to the paper's claim, the plain nets' deviation "
                                 f"{trend} with depth ({nums}).")


def sentence_depth_residual(depths: list[int], residual: list[float], *, phase: str) -> Finding:
    """Claim 2c (the theorem): the residual nets' identity-unit spread shrinks with depth."""
    claim = f"residual nets preserve the norm better with depth ({phase})"
    if len(depths) < 2 or len(residual) < 2:
        return Finding(claim, None, f"The depth study ({phase}) has fewer than two depths.")
    trend = _trend(residual)
    nums = f"max |log10 r_l| over identity units {_chain(residual, depths)}"
    if trend == "decreases":
        return Finding(claim, True, f"{phase.capitalize()}, the residual nets' identity units get closer to norm "
                                    f"preservation as depth grows, as the theorem predicts ({nums}).")
    if trend == "stays roughly flat":
        return Finding(claim, False, f"{phase.capitalize()}, the residual nets' identity-unit deviation stays roughly "
                                     f"flat with depth: no growth, but not the shrinking the theorem predicts ({nums}).")
    return Finding(claim, False, f"{phase.capitalize()}, contrary to the theorem's prediction, the residual nets' "
                                 f"identity-unit deviation {trend} with depth ({nums}).")


def sentence_transitions(transition: dict, identity: dict, *, where: str) -> Finding:
    """Claim 3: in a ResNet the largest deviations sit at the transition / projection units."""
    claim = "ResNet deviations sit at transition units"
    if not transition or transition.get("n", 0) == 0 or not identity or identity.get("n", 0) == 0:
        return Finding(claim, None, f"{where} has no transition or no identity units to compare.")
    t, i = transition["dev_max"], identity["dev_max"]
    nums = (f"largest |log10 r_l| {_fmt(t)} at transition units (r_l from {_fmt(transition['min'])} to "
            f"{_fmt(transition['max'])}) vs {_fmt(i)} at identity blocks")
    if t > CLEAR * i:
        return Finding(claim, True, f"In {where} the deviations sit at the transition units ({nums}).")
    return Finding(claim, False, f"Contrary to the paper's claim, the transition units of {where} do not stand out ({nums}).")


def sentence_procrustes(proc: dict, resnet: dict, *, proc_name: str, resnet_name: str) -> Finding:
    """Claim 4: Procrustes transitions deviate less than the ResNet's transition units."""
    claim = "Procrustes transitions bring r back toward 1"
    if not proc or proc.get("n", 0) == 0 or not resnet or resnet.get("n", 0) == 0:
        return Finding(claim, None, "The transition comparison has no data.")
    p, r = proc["dev_max"], resnet["dev_max"]
    nums = (f"largest |log10 r_l| at transitions {_fmt(p)} for {proc_name} (r_l from {_fmt(proc['min'])} to "
            f"{_fmt(proc['max'])}) vs {_fmt(r)} for {resnet_name} (r_l from {_fmt(resnet['min'])} to {_fmt(resnet['max'])})")
    if p < r:
        near = " and stay near 1" if p < NEAR else ", though not within the 'near 1' band"
        return Finding(claim, True, f"The Procrustes transitions deviate less than the ResNet's{near} ({nums}).")
    return Finding(claim, False, f"Contrary to the paper's claim, the Procrustes transitions do not deviate less than the ResNet's ({nums}).")


def sentence_accuracy(accs: dict[str, float], *, proc_name: str, resnet_name: str, seeds: int = 1) -> Finding:
    """Claim 5: final test accuracy of the Procrustes ResNet vs the ResNet (single-seed caveat)."""
    claim = "Procrustes ResNet at least as accurate"
    p, r = accs.get(proc_name), accs.get(resnet_name)
    if p is None or r is None:
        return Finding(claim, None, "Final test accuracies are missing.")
    order = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(accs.items(), key=lambda kv: -kv[1]))
    caveat = " (one seed and a tiny budget: differences of a few points are noise)" if seeds < 3 else ""
    if p >= r:
        return Finding(claim, True, f"Final test accuracy: {order}; the Procrustes ResNet is at least as accurate as the ResNet{caveat}.")
    return Finding(claim, False, f"Final test accuracy: {order}; here the Procrustes ResNet is less accurate than the ResNet{caveat}.")


def sentence_spectrum(layer: dict) -> str:
    """What the projection did to one layer's spectrum (circular padding, exact)."""
    b, a = layer.get("before_circular"), layer.get("after_circular")
    if not b or not a:
        return f"{layer['name']}: spectrum not measured."
    text = (f"{layer['name']} (target {_fmt(layer['target'], 4)}): non-zero singular values from "
            f"[{_fmt(b['min'])}, {_fmt(b['max'])}] before to [{_fmt(a['min'], 5)}, {_fmt(a['max'], 5)}] after projection")
    if a["max_rel_error"] < 1e-4:
        text += f", i.e. exactly on target (max relative error {a['max_rel_error']:.1e})"
    elif a["max_rel_error"] < b["max_rel_error"]:
        text += (f", closer to the target but not on it (max relative error {_fmt(b['max_rel_error'])} -> "
                 f"{_fmt(a['max_rel_error'])}; cropping the kernel back to its support makes one projection approximate)")
    else:
        text += f", not closer to the target (max relative error {_fmt(b['max_rel_error'])} -> {_fmt(a['max_rel_error'])})"
    za, ca = layer.get("after_zeros"), a
    if za:
        same = abs(za["max"] - ca["max"]) <= 1e-6 * ca["max"] and abs(za["min"] - ca["min"]) <= 1e-6 * max(ca["min"], 1e-12)
        if same:
            text += "; zero padding gives the same spectrum here (no border effect for this kernel)"
        else:
            text += (f"; with zero padding the same kernel has singular values in [{_fmt(za['min'])}, {_fmt(za['max'])}] "
                     f"(max relative error {_fmt(za['max_rel_error'])}): the circular guarantee does not carry over to the border")
    return text + "."


# ---------------------------------------------------------------- tables
def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def _range(s: dict | None) -> str:
    if not s or s.get("n", 0) == 0:
        return "-"
    return f"{s['min']:.2f}-{s['max']:.2f}"


def results_table(summaries: list[dict]) -> str:
    """Accuracy and r_l ranges per unit kind (after training, all trained epochs)."""
    rows = []
    for s in summaries:
        tr = s["ratios"]["trained"]
        acc = s["final_test_acc"]
        rows.append([s["model"], FAMILY_LABELS[s["family"]], s["epochs"],
                     "-" if acc is None else f"{100 * acc:.1f}",
                     _range(tr.get("identity")), _range(tr.get("transition")), _range(tr.get("plain")),
                     _fmt(max((v["dev_max"] for v in tr.values() if v["n"]), default=float("nan")))])
    return markdown_table(["model", "family", "epochs", "test acc %", "r identity", "r transition",
                           "r plain", "max |log10 r|"], rows)


def spectra_table(layers: list[dict]) -> str:
    rows = []
    for s in layers:
        def cell(key):
            v = s.get(key)
            return "-" if not v else f"{v['min']:.3g}-{v['max']:.3g} ({v['max_rel_error']:.1e})"
        rows.append([s["name"], f"{s['input_size']}/{s['stride']}", _fmt(s["target"], 4),
                     cell("before_circular"), cell("after_circular"), cell("before_zeros"), cell("after_zeros")])
    return markdown_table(["layer", "input/stride", "target", "before (circular)", "after (circular)",
                           "before (zeros)", "after (zeros)"], rows)


def depth_table(d: dict) -> str:
    rows = []
    for family in ("residual", "plain"):
        for phase in ("init", "trained"):
            stats = (d.get(family) or {}).get(phase)
            if stats:
                rows.append([FAMILY_LABELS[family], phase] + [_fmt(x["max"]) for x in stats])
    return markdown_table(["family", "phase"] + [f"depth {x}" for x in d["depths"]], rows)


# ---------------------------------------------------------------- the report
def findings(summaries: list[dict], depth: dict | None) -> list[Finding]:
    """Every claim checked on the measured numbers of a demo-like set of runs."""
    by_family = {s["family"]: s for s in summaries}
    res, proc, plain = by_family.get("residual"), by_family.get("procrustes"), by_family.get("plain")
    out = []
    for s in (res, proc):
        if s:
            out.append(sentence_identity(s["ratios"]["trained"].get("identity", {}), where=s["model"]))
    if res and plain:  # the same units with and without their identity skip
        out.append(sentence_plain(plain["ratios"]["trained"].get("plain", {}),
                                  res["ratios"]["trained"].get("identity", {}),
                                  plain_name=f"the skip-less units of {plain['model']}",
                                  residual_name=f"the identity units of {res['model']}"))
    if depth:
        for phase in ("init", "trained"):
            words = "at initialisation" if phase == "init" else "after training"
            p = [x["max"] for x in (depth.get("plain") or {}).get(phase, [])]
            r = [x["max"] for x in (depth.get("residual") or {}).get(phase, [])]
            out.append(sentence_depth_plain(depth["depths"], p, phase=words))
            out.append(sentence_depth_residual(depth["depths"], r, phase=words))
    if res:
        tr = res["ratios"]["trained"]
        out.append(sentence_transitions(tr.get("transition", {}), tr.get("identity", {}), where=res["model"]))
    if res and proc:
        out.append(sentence_procrustes(proc["ratios"]["trained"].get("transition", {}),
                                       res["ratios"]["trained"].get("transition", {}),
                                       proc_name=proc["model"], resnet_name=res["model"]))
        accs = {s["model"]: s["final_test_acc"] for s in summaries if s["final_test_acc"] is not None}
        out.append(sentence_accuracy(accs, proc_name=proc["model"], resnet_name=res["model"]))
    return out


def figure_sentences(summaries: list[dict], depth: dict | None, layers: list[dict], found: list[Finding]) -> dict:
    """One sentence per figure saying what it shows (the verdicts come from ``found``)."""
    verdict = {f.claim: f for f in found}
    names = ", ".join(s["model"] for s in summaries)

    def said(claim, yes, no, none="") -> str:
        f = verdict.get(claim)
        return none if f is None or f.holds is None else (yes if f.holds else no)

    out = {
        "ratios": (f"Per-block gradient-norm ratio r_l of {names} at initialisation and during training on a log axis "
                   "(dashed line: r = 1; shaded: transition/projection units); "
                   + said("ResNet deviations sit at transition units",
                          "the residual net's spikes are at its shaded transition units",
                          "the residual net's transition units do not stand out")
                   + said("Procrustes transitions bring r back toward 1",
                          ", and the Procrustes net's transitions stay closer to 1.",
                          ", and the Procrustes net's transitions are not closer to 1.", ".")),
        "heatmap": ("Block x epoch map of log10 r_l (white = norm preserved, red = the gradient grows going backward, "
                    "blue = it shrinks) for the same runs; "
                    + said("plain nets deviate more than residual nets",
                           "the plain twin's map is the most coloured.",
                           "the plain twin's map is not clearly more coloured than the residual net's.",
                           "it shows when during training each block deviates.")),
        "curves": f"Train (solid) and validation (dashed) loss and accuracy per epoch for {names}, same seed and budget.",
    }
    if depth:
        out["depth"] = ("Largest and mean |log10 r_l| against depth, over the identity units of residual nets and the "
                        "skip-less units of their plain twins, "
                        "at initialisation (dashed) and after brief training (solid); "
                        + said("plain nets deviate more with depth (after training)",
                               "after training the plain curve rises with depth",
                               "after training the plain curve does not rise with depth")
                        + said("residual nets preserve the norm better with depth (after training)",
                               " and the residual curve falls.", " and the residual curve does not fall.", "."))
    if layers:
        done = [s for s in layers if s.get("after_circular")]
        exact = [s["name"] for s in done if s["after_circular"]["max_rel_error"] < 1e-4]
        approx = [f"{s['name']} only to within {100 * s['after_circular']['max_rel_error']:.1f}%"
                  for s in done if s["after_circular"]["max_rel_error"] >= 1e-4]
        parts = ([f"the non-zero singular values of {', '.join(exact)} sit exactly on the target"] if exact else []) + approx
        out["spectra"] = ("Histograms of the exact operator singular values of the projected convs before and after one "
                          "Procrustes projection (left) and circular vs zero padding for the same kernel (right); "
                          "after projection " + ("; ".join(parts) if parts else "nothing was measured") + ".")
    return out


def load_demo(folder) -> tuple[list[Run], dict | None, dict | None]:
    """Runs (sub-folders with history.jsonl), depth_study.json and spectra.json of a demo folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    runs = [load_run(p.parent) for p in sorted(folder.rglob("history.jsonl"))]
    if not runs:
        raise FileNotFoundError(f"{folder}: no run folders (history.jsonl) inside")
    study = read_json(folder / "depth_study.json") if (folder / "depth_study.json").is_file() else None
    spectra = read_json(folder / "spectra.json") if (folder / "spectra.json").is_file() else None
    return runs, study, spectra


def build_report(folder, *, title: str = "procres demo", what_was_run: str = "", figures_dir: str = "figures") -> tuple[str, str, dict]:
    """(markdown text, printed table, summary dict) for a demo-like folder, from its files."""
    runs, study, spectra = load_demo(folder)
    order = {"residual": 0, "procrustes": 1, "plain": 2}
    summaries = sorted((run_summary(r) for r in runs), key=lambda s: order[s["family"]])
    depth = depth_summary(study) if study else None
    layers = [spectrum_summary(layer) for layer in (spectra or {}).get("layers", [])]
    found = findings(summaries, depth)
    table = results_table(summaries)
    figs = figure_sentences(summaries, depth, layers, found)

    md = [f"# {title}", ""]
    if what_was_run:
        md += ["## What was run", "", what_was_run.strip(), ""]
    md += ["## Results", "", "Final-epoch test accuracy (no selection on the test set) and the range of the "
           "gradient-norm ratio r_l per unit kind over all training epochs (identity: residual units with an "
           "identity skip; transition: projection-shortcut units of the ResNet / stand-alone transition convs of "
           "the Procrustes ResNet; plain: units of the plain twin).", "", table, ""]
    if depth:
        md += [f"Depth study: max |log10 r_l| over the identity units (residual) / skip-less units (plain) per "
               f"depth, at initialisation and after {depth.get('steps') or '?'} SGD steps.",
               "", depth_table(depth), ""]
    if layers:
        md += ["Spectra of the projected convs, exact operator singular values: range (max relative error from the "
               "target sqrt(C_out / rank), procres.spectral.norm_preserving_target).", "", spectra_table(layers), ""]
        md += ["- " + sentence_spectrum(s) for s in layers] + [""]
    md += ["## What the measurements say", ""]
    md += [f"- {'[holds] ' if f.holds else '[contradicted] ' if f.holds is False else '[no data] '}{f.sentence}"
           for f in found] + [""]
    md += ["## Figures", ""]
    for key, sentence in figs.items():
        md += [f"![{key}]({figures_dir}/{FIGURE_FILES[key]})", "", sentence, ""]
    summary = {"runs": summaries, "depth": depth, "spectra": layers,
               "findings": [f.__dict__ for f in found]}
    return "\n".join(md), table, summary


def write_report(folder, **kwargs) -> tuple[Path, str]:
    """Write ``report.md`` and ``summary.json`` into ``folder``; returns (path, printed table)."""
    import json

    text, table, summary = build_report(folder, **kwargs)
    path = Path(folder) / "report.md"
    path.write_text(text)
    (Path(folder) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return path, table

