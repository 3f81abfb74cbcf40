"""The report from synthetic demo folders: its numbers come from the files, its verdicts say where."""

import json
import math

import pytest

from procres.reports import report
from procres.reports.runs import load_run
from run_files import spectrum_entry, write_run


def test_report_from_synthetic_demo_folder(demo_folder, tmp_path):
    path, table = report.write_report(demo_folder, what_was_run="synthetic")
    text = path.read_text()
    assert "preresnet38" in table and "| test acc %" in table
    for name in ("ratio_per_block.png", "ratio_heatmap.png", "depth_study.png", "spectra.png", "learning_curves.png"):
        assert name in text
    # the synthetic ResNet has spiky projection units and calm identity blocks, checked during training
    assert ("**[holds]** ResNet deviations sit at transition units: checked at depth 38, during training "
            "(steps 1-40), preresnet38.") in text
    assert "plainpre50: backward overflow at unit 5 of 24 (not trained)" in text  # the depth table
    assert "| claim " in text and "14, init" in text and "50, +20 steps" in text  # the side-by-side grid
    summary = json.loads((demo_folder / "summary.json").read_text())
    assert all(f["where"]["nets"] and f["where"]["phase"] for f in summary["findings"] + summary["checks"])
    assert sum(summary["counts"].values()) == len(summary["findings"]) + len(summary["checks"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run folders"):
        report.build_report(tmp_path / "empty")


def test_a_stopped_run_is_reported_not_crashed_on(demo_folder):
    (demo_folder / "runs" / "plainpre38" / "stopped.json").write_text(
        json.dumps({"reason": "non-finite weights in epoch 1, step 15"}))
    text, table, summary = report.build_report(demo_folder)
    plain = next(s for s in summary["runs"] if s["model"] == "plainpre38")
    assert plain["final_test_acc"] is None and "stopped" in table
    claim = next(f for f in summary["findings"] if f["claim"] == "plain")
    assert claim["holds"] is True and "training stopped (non-finite weights in epoch 1, step 15)" in claim["sentence"]


def test_ratio_change_is_measured_from_the_history(tmp_path):
    run = load_run(write_run(tmp_path / "preresnet38", "preresnet38"))
    init, last = run.history[0]["norms"]["ratio"], run.history[-1]["norms"]["ratio"]
    change = [abs(math.log10(b / a)) for a, b in zip(init, last)]
    moved = report.ratio_change(run)
    assert moved["unit"] == 1 + change.index(max(change)) and moved["factor"] == pytest.approx(10 ** max(change))
    assert moved["mean_factor"] == pytest.approx(10 ** (sum(change) / len(change)))
    assert moved["step"] == 40 and "a factor" in report.sentence_moved(report.run_summary(run))


def test_spectrum_sentence_says_exact_or_approximate():
    target = math.sqrt(2)
    exact = report.spectrum_summary({"name": "t", "target": target, "input_size": 8, "stride": 2,
                                     "before": {"stats": {"circular": spectrum_entry([0.5, 2.0], target)}},
                                     "after": {"stats": {"circular": spectrum_entry([target] * 2, target),
                                                         "zeros": spectrum_entry([target] * 2, target)}}})
    s = report.sentence_spectrum(exact)
    assert "exactly on target" in s and "same spectrum" in s
    approx = report.spectrum_summary({"name": "c", "target": 8.0, "input_size": 8, "stride": 1,
                                      "before": {"stats": {"circular": spectrum_entry([0.1, 12.0], 8.0)}},
                                      "after": {"stats": {"circular": spectrum_entry([7.0, 9.0], 8.0),
                                                          "zeros": spectrum_entry([5.0, 9.0], 8.0)}}})
    s = report.sentence_spectrum(approx)
    assert "not on it" in s and "border" in s
