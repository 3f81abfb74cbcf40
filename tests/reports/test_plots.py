"""Figures from synthetic run folders: PNGs are written, non-empty, and bad folders fail clearly."""

import json
import sys

import pytest

from procres.reports import plots
from procres.reports.runs import load_run
from run_files import write_extras, write_run, write_study


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
    from procres.reports.report import phase_groups

    groups = phase_groups(load_run(run), "trained")
    assert groups["transition"]["n"] == 3 * 4 - 4  # the NaN of each of the 4 trained epochs is left out


def test_depth_figure_marks_the_overflow(tmp_path):
    from procres.reports.verdicts import study_cells

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

    code = "import sys, procres.reports.plots, procres.reports.report, procres.reports.runs, procres.reports.verdicts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_plot(demo_like, tmp_path, capsys):
    from procres.cli import main

    assert main(["plot", str(demo_like), "--out", str(tmp_path / "cli")]) == 0
    assert _is_png(tmp_path / "cli" / "spectra.png")
    assert "spectra.png" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1


if __name__ == "__main__":  # write the synthetic figures to look at them: PYTHONPATH=tests/helpers python tests/reports/test_plots.py DIR
    from pathlib import Path

    out = Path(sys.argv[1])
    for model in ("preresnet38", "procresnet40", "plainpre38"):
        write_run(out / "runs" / model, model, epochs=8)
    write_extras(out)
    print(plots.plot_runs([out], out / "figs"))




def test_a_stopped_runs_panel_title_is_its_first_clause_and_fits_the_panel(tmp_path):
    run = write_run(tmp_path / "plainpre164", "plainpre164")
    reason = ("non-finite weights in epoch 1, step 15: blocks.0.bn2.running_var and 6 more, with a finite loss, "
              "so a batch-norm running statistic overflowed as the activations grew beyond float range")
    (run / "stopped.json").write_text(json.dumps({"reason": reason}))
    title = plots._title(load_run(run))
    assert title.endswith("training stopped (non-finite weights in epoch 1, step 15)")
    assert all(len(line) <= 100 for line in title.splitlines())
    long = plots._title(load_run(run), width=30)
    assert len(long.splitlines()) > 1 and all(len(line) <= 30 for line in long.splitlines())
