"""Reading run folders: what is read, and that a broken folder names the file at fault."""

import json

import pytest

from procres.reports import plots
from procres.reports.runs import collect, load_run, model_family
from run_files import write_extras, write_run


def test_missing_history_names_the_file(tmp_path):
    run = write_run(tmp_path / "run", "resnet20")
    (run / "history.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        load_run(run)
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        plots.plot_runs([run], tmp_path / "out")


def test_malformed_history_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run", "resnet20")
    with open(run / "history.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl, line 6"):
        load_run(run)


def test_collect_finds_runs_studies_and_spectra(tmp_path):
    root = tmp_path / "demo"
    for model in ("preresnet38", "plainpre38"):
        write_run(root / "runs" / model, model)
    write_extras(root)
    (root / "runs" / "plainpre38" / "stopped.json").write_text(json.dumps({"reason": "non-finite loss"}))
    runs, studies, spectra = collect([root])
    assert sorted(r.model for r in runs) == ["plainpre38", "preresnet38"]
    assert len(studies) == 1 and len(spectra) == 1
    stopped = {r.model: r.stopped for r in runs}
    assert stopped == {"preresnet38": None, "plainpre38": "non-finite loss"}
    assert [r.depth for r in runs if r.model == "preresnet38"] == [38]


def test_family_and_labels(tmp_path):
    assert [model_family(n) for n in ("preresnet164", "procresnet166", "plainproc166", "resnet20")] == [
        "residual", "procrustes", "plain", "residual"]
    # procres train --seeds 0 1 writes OUT/seed0 and OUT/seed1: both hold the same model
    runs = [load_run(write_run(tmp_path / "sweep" / f"seed{s}", "resnet8", seed=s)) for s in (0, 1)]
    labels = [r.label for r in runs]
    assert len(set(labels)) == 2 and all("resnet8" in lab for lab in labels), labels
    assert "seed1" in labels[1]
    assert load_run(write_run(tmp_path / "preresnet20", "preresnet20")).label == "preresnet20 (residual)"
