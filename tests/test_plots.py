"""Figures from synthetic run folders: PNGs are written, non-empty, and bad folders fail clearly."""

import json
import math
import sys

import numpy as np
import pytest

from procres import plots
from procres.runs import load_run, model_family


def _kinds(family, n=3):
    if family == "procrustes":
        return (["transition"] + ["identity"] * n) * 3
    if family == "plain":
        return ["plain"] * (3 * n)
    return (["projection"] + ["identity"] * (n - 1)) * 3


def write_run(folder, model, *, epochs=4, blocks=None, seed=0):
    """A run folder in the train.py layout with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    family = model_family(model)
    kinds = blocks or _kinds(family)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "epochs": epochs, "seed": seed}))
    lines = []
    for e in range(epochs + 1):  # "step": 10 training steps per epoch
        ratio = []
        for k in kinds:
            spread = {"identity": 0.05, "transition": 0.1, "projection": 0.6, "plain": 0.5}[k]
            ratio.append(float(math.exp(rng.normal(0, spread) + (0.3 * e / epochs if k == "projection" else 0))))
        lines.append(json.dumps({
            "epoch": e, "step": 10 * e, "lr": 0.1,
            "train_loss": None if e == 0 else 2.0 / (e + 1), "train_acc": None if e == 0 else 1 - 0.5 / (e + 1),
            "val_loss": 2.2 / (e + 1), "val_acc": 1 - 0.6 / (e + 1),
            "test_loss": 2.3 / (e + 1), "test_acc": 1 - 0.65 / (e + 1),
            "epoch_time": 1.0, "images_per_sec": 100.0,
            "norms": {"ratio": ratio, "grad_in": ratio, "grad_out": [1.0] * len(ratio)},
            "block_kinds": kinds,
        }))
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_study(folder, *, depths=(14, 26, 50), overflow_at=50):
    """A depth_study.json in the layout of procres.diagnostics.depth_study: residual, Procrustes and
    plain nets whose deviation shrinks / grows with depth; the deepest plain net's backward overflows
    at unit 5 (its first 5 units have no ratio, and it is not trained)."""
    rng = np.random.default_rng(1)
    results, kinds, model_depths, flows = {}, {}, {}, {}
    for fam, scale in (("residual", 0.4), ("procrustes", 0.3), ("plain", 0.3)):
        fam_kinds = [_kinds(fam, n=d // 6) for d in depths]
        kinds[fam] = fam_kinds
        model_depths[fam] = [d + (2 if fam == "procrustes" else 0) for d in depths]
        results[fam], flows[fam] = {"init": [], "trained": []}, []
        for d, k in zip(depths, fam_kinds):
            sigma = scale * (d / 8 if fam == "plain" else 8 / d)
            ratios = np.exp(rng.normal(0, sigma, size=len(k))).tolist()
            flow = None
            if fam == "plain" and d == overflow_at:
                ratios[:5] = [float("nan")] * 5
                flow = {"unit": 5, "units": len(k), "phase": "init", "step": 0}
            results[fam]["init"].append(ratios)
            results[fam]["trained"].append(None if flow else [x * 1.01 for x in ratios])
            flows[fam].append(flow)
    study = {"depths": list(depths), "steps": 20, "results": results, "block_kinds": kinds,
             "model_depths": model_depths, "overflow": flows,
             "models": {"residual": "preresnet", "procrustes": "procresnet", "plain": "plainpre"}}
    (folder / "depth_study.json").write_text(json.dumps(study))
    return study


def _spectrum(values, target):
    v = sorted(values, reverse=True)
    return {"sigma_max": v[0], "sigma_min": v[-1], "cond": v[0] / v[-1], "nonzero": len(v), "count": len(v),
            "max_rel_error": max(abs(x / target - 1) for x in v)}


def write_extras(folder):
    write_study(folder)
    rng = np.random.default_rng(1)
    before = np.sort(rng.uniform(0.2, 3.0, 64))[::-1].tolist()
    layers = []
    for name, size, stride, target, b, a, bz, az in (
            ("trans_conv1", 16, 2, math.sqrt(2), before, [math.sqrt(2)] * 64, before, [math.sqrt(2)] * 64),
            ("conv1", 16, 1, 8.0, rng.uniform(0.1, 12, 256).tolist(), rng.uniform(7, 9, 256).tolist(),
             rng.uniform(0.1, 11, 256).tolist(), rng.uniform(6, 9, 256).tolist())):
        layers.append({"name": name, "input_size": size, "stride": stride, "target": target,
                       "before": {"circular": b, "zeros": bz, "stats": {"circular": _spectrum(b, target),
                                                                        "zeros": _spectrum(bz, target)}},
                       "after": {"circular": a, "zeros": az, "stats": {"circular": _spectrum(a, target),
                                                                       "zeros": _spectrum(az, target)}}})
    (folder / "spectra.json").write_text(json.dumps({"layers": layers}))


@pytest.fixture
def demo_like(tmp_path):
    root = tmp_path / "demo"
    for model in ("preresnet38", "procresnet40", "plainpre38"):
        write_run(root / "runs" / model, model)
    write_extras(root)
    return root


def _is_png(path):
    return path.is_file() and path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_runs_writes_every_figure(demo_like, tmp_path):
    made = plots.plot_runs([demo_like], tmp_path / "figs")
    assert set(made) == set(plots.FIGURE_FILES)
    for path in made.values():
        assert _is_png(path), path


def test_single_run_folder_gives_run_figures_only(demo_like, tmp_path):
    made = plots.plot_runs([demo_like / "runs" / "preresnet38"], tmp_path / "one")
    assert set(made) == {"ratios", "heatmap", "curves"}
    assert all(_is_png(p) for p in made.values())


def test_chosen_epochs_are_drawn(demo_like, tmp_path):
    runs = [load_run(p) for p in sorted((demo_like / "runs").iterdir())]
    path = plots.plot_ratio_per_block(runs, tmp_path / "r.png", epochs=[0, 4])
    assert _is_png(path)
    with pytest.raises(ValueError, match="recorded epochs"):
        plots.plot_ratio_per_block(runs, tmp_path / "r.png", epochs=[99])


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to plot"):
        plots.plot_runs([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        plots.plot_runs([tmp_path / "nope"], tmp_path / "out")


def test_nan_ratios_are_skipped(tmp_path):
    run = write_run(tmp_path / "run", "preresnet38")
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for h in lines:
        h["norms"]["ratio"][0] = float("nan")  # e.g. a unit fed by the raw image
    (run / "history.jsonl").write_text("\n".join(json.dumps(h) for h in lines))
    made = plots.plot_runs([run], tmp_path / "figs")
    assert _is_png(made["ratios"]) and _is_png(made["heatmap"])
    from procres.report import phase_groups

    groups = phase_groups(load_run(run), "trained")
    assert groups["transition"]["n"] == 3 * 4 - 4  # the NaN of each of the 4 trained epochs is left out


def test_depth_figure_marks_the_overflow(tmp_path):
    from procres.verdicts import study_cells

    study = write_study(tmp_path)
    cells = study_cells(study)
    flowed = [c for c in cells if c["overflow"]]
    assert {(c["model"], c["phase"]) for c in flowed} == {("plainpre50", "init"), ("plainpre50", "trained")}
    assert all(g["overflow"] == "backward overflow at unit 5 of 24" for c in flowed for g in c["groups"].values())
    assert _is_png(plots.plot_depth_study(study, tmp_path / "depth.png"))


def test_plots_do_not_import_torch():
    # plots must be usable without the training stack: it reads files only
    import subprocess
    import sys

    code = "import sys, procres.plots, procres.report, procres.runs, procres.verdicts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_plot(demo_like, tmp_path, capsys):
    from procres.cli import main

    assert main(["plot", str(demo_like), "--out", str(tmp_path / "cli")]) == 0
    assert _is_png(tmp_path / "cli" / "spectra.png")
    assert "spectra.png" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1


if __name__ == "__main__":  # write the synthetic figures to look at them: python tests/test_plots.py DIR
    from pathlib import Path

    out = Path(sys.argv[1])
    for model in ("preresnet38", "procresnet40", "plainpre38"):
        write_run(out / "runs" / model, model, epochs=8)
    write_extras(out)
    print(plots.plot_runs([out], out / "figs"))


