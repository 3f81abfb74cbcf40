"""Figures from synthetic run folders: PNGs are written, non-empty, and bad folders fail clearly."""

import json
import math
import sys

import numpy as np
import pytest

from procres import plots


def _kinds(family, n=3):
    if family == "procrustes":
        return (["transition"] + ["identity"] * n) * 3
    if family == "plain":
        return ["plain"] * (3 * n)
    return (["projection"] + ["identity"] * (n - 1)) * 3


def write_run(folder, model, *, epochs=4, blocks=None, seed=0):
    """A run folder in the train.py layout with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    family = plots.model_family(model)
    kinds = blocks or _kinds(family)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "epochs": epochs, "seed": seed}))
    lines = []
    for e in range(epochs + 1):
        ratio = []
        for k in kinds:
            spread = {"identity": 0.05, "transition": 0.1, "projection": 0.6, "plain": 0.5}[k]
            ratio.append(float(math.exp(rng.normal(0, spread) + (0.3 * e / epochs if k == "projection" else 0))))
        lines.append(json.dumps({
            "epoch": e, "lr": 0.1,
            "train_loss": None if e == 0 else 2.0 / (e + 1), "train_acc": None if e == 0 else 1 - 0.5 / (e + 1),
            "val_loss": 2.2 / (e + 1), "val_acc": 1 - 0.6 / (e + 1),
            "test_loss": 2.3 / (e + 1), "test_acc": 1 - 0.65 / (e + 1),
            "epoch_time": 1.0, "images_per_sec": 100.0,
            "norms": {"ratio": ratio, "grad_in": ratio, "grad_out": [1.0] * len(ratio)},
            "block_kinds": kinds,
        }))
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_extras(folder):
    rng = np.random.default_rng(1)
    depths = [8, 14, 26]
    study = {"depths": depths, "steps": 20, "results": {
        fam: {ph: [list(np.exp(rng.normal(0, s * (1 + d / 20), size=d // 2)).tolist()) for d in depths]
              for ph in ("init", "trained")}
        for fam, s in (("residual", 0.05), ("plain", 0.4))}}
    (folder / "depth_study.json").write_text(json.dumps(study))
    before = np.sort(rng.uniform(0.2, 3.0, 64))[::-1].tolist()
    spectra = {"layers": [
        {"name": "trans_conv1", "input_size": 16, "stride": 2, "target": math.sqrt(2),
         "before": {"circular": before, "zeros": before}, "after": {"circular": [math.sqrt(2)] * 64}},
        {"name": "conv1", "input_size": 16, "stride": 1, "target": 8.0,
         "before": {"circular": rng.uniform(0, 12, 256).tolist(), "zeros": rng.uniform(0, 11, 256).tolist()},
         "after": {"circular": rng.uniform(7, 9, 256).tolist(), "zeros": rng.uniform(6, 9, 256).tolist()}},
    ]}
    (folder / "spectra.json").write_text(json.dumps(spectra))


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
    runs = [plots.load_run(p) for p in sorted((demo_like / "runs").iterdir())]
    path = plots.plot_ratio_per_block(runs, tmp_path / "r.png", epochs=[0, 4])
    assert _is_png(path)
    with pytest.raises(ValueError, match="recorded epochs"):
        plots.plot_ratio_per_block(runs, tmp_path / "r.png", epochs=[99])


def test_missing_history_names_the_file(tmp_path):
    run = write_run(tmp_path / "run", "resnet20")
    (run / "history.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        plots.load_run(run)
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        plots.plot_runs([run], tmp_path / "out")


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to plot"):
        plots.plot_runs([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        plots.plot_runs([tmp_path / "nope"], tmp_path / "out")


def test_malformed_history_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run", "resnet20")
    with open(run / "history.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl, line 6"):
        plots.load_run(run)


def test_spread_and_family():
    assert plots.spread([1.0, 10.0, 0.1])["max"] == pytest.approx(1.0)
    assert plots.spread([1.0, 10.0], ["identity", "projection"], only=("identity",))["max"] == 0.0
    assert [plots.model_family(n) for n in ("preresnet164", "procresnet166", "plainproc166", "resnet20")] == [
        "residual", "procrustes", "plain", "residual"]


def test_nan_ratios_are_skipped(tmp_path):
    run = write_run(tmp_path / "run", "preresnet38")
    lines = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    for h in lines:
        h["norms"]["ratio"][0] = float("nan")  # e.g. a unit fed by the raw image
    (run / "history.jsonl").write_text("\n".join(json.dumps(h) for h in lines))
    made = plots.plot_runs([run], tmp_path / "figs")
    assert _is_png(made["ratios"]) and _is_png(made["heatmap"])
    assert np.isfinite(plots.spread(lines[-1]["norms"]["ratio"])["max"])
    from procres.report import ratios_by_kind

    assert all(np.isfinite(v).all() for v in ratios_by_kind(plots.load_run(run)).values())


def test_plots_do_not_import_torch():
    # plots must be usable without the training stack: it reads files only
    import subprocess
    import sys

    code = "import sys, procres.plots, procres.report; print('torch' in sys.modules)"
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


def test_runs_of_one_model_from_seed_folders_get_distinct_labels(tmp_path):
    # procres train --seeds 0 1 writes OUT/seed0 and OUT/seed1: both hold the same model
    runs = [plots.load_run(write_run(tmp_path / "sweep" / f"seed{s}", "resnet8", seed=s)) for s in (0, 1)]
    labels = [r.label for r in runs]
    assert len(set(labels)) == 2 and all("resnet8" in lab for lab in labels), labels
    assert "seed1" in labels[1]
    named = plots.load_run(write_run(tmp_path / "preresnet20", "preresnet20"))
    assert named.label == "preresnet20 (residual)"
