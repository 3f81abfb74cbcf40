"""The report's verdict sentences follow the numbers: flip the numbers and the verdict flips."""

import math

import numpy as np
import pytest

from procres import report
from procres.report import kind_stats


def stats(values):
    return kind_stats(np.asarray(values, dtype=float))


def test_identity_claim_flips():
    good = report.sentence_identity(stats([0.98, 1.01, 1.03, 0.97]), where="net")
    bad = report.sentence_identity(stats([0.5, 1.9, 1.0, 2.5]), where="net")
    assert good.holds is True and "kept r_l near 1" in good.sentence
    assert bad.holds is False and "Contrary" in bad.sentence
    assert report.sentence_identity({}, where="net").holds is None


def test_plain_claim_flips():
    plain, res = {"dev_mean": 0.4}, {"dev_mean": 0.05}
    assert report.sentence_plain(plain, res, plain_name="p", residual_name="r").holds is True
    flipped = report.sentence_plain(res, plain, plain_name="p", residual_name="r")
    assert flipped.holds is False and "Contrary" in flipped.sentence
    close = report.sentence_plain({"dev_mean": 0.06}, res, plain_name="p", residual_name="r")
    assert close.holds is False and "only slightly" in close.sentence


def test_depth_claims_flip():
    depths = [8, 20, 44]
    grows = report.sentence_depth_plain(depths, [0.2, 0.5, 0.9], phase="after training")
    assert grows.holds is True and "deviate more the deeper" in grows.sentence
    flat = report.sentence_depth_plain(depths, [0.5, 0.5, 0.5], phase="after training")
    assert flat.holds is False and "contrary" in flat.sentence and "stays roughly flat" in flat.sentence
    shrinks = report.sentence_depth_residual(depths, [0.3, 0.2, 0.1], phase="at initialisation")
    assert shrinks.holds is True and "as the theorem predicts" in shrinks.sentence
    grows_r = report.sentence_depth_residual(depths, [0.05, 0.3, 0.6], phase="at initialisation")
    assert grows_r.holds is False and "contrary" in grows_r.sentence and "increases" in grows_r.sentence
    flat_r = report.sentence_depth_residual(depths, [0.1, 0.105, 0.1], phase="at initialisation")
    assert flat_r.holds is False and "roughly flat" in flat_r.sentence


def test_transition_claims_flip():
    spiky, calm = stats([0.2, 3.0, 1.5]), stats([0.99, 1.01, 1.02])
    assert report.sentence_transitions(spiky, calm, where="r").holds is True
    assert report.sentence_transitions(calm, spiky, where="r").holds is False
    assert report.sentence_procrustes(calm, spiky, proc_name="p", resnet_name="r").holds is True
    flipped = report.sentence_procrustes(spiky, calm, proc_name="p", resnet_name="r")
    assert flipped.holds is False and "Contrary" in flipped.sentence


def test_accuracy_claim_flips():
    assert report.sentence_accuracy({"p": 0.9, "r": 0.8}, proc_name="p", resnet_name="r").holds is True
    worse = report.sentence_accuracy({"p": 0.7, "r": 0.8}, proc_name="p", resnet_name="r")
    assert worse.holds is False and "less accurate" in worse.sentence and "noise" in worse.sentence


def test_spectrum_sentence_says_exact_or_approximate():
    target = math.sqrt(2)
    exact = report.spectrum_summary({"name": "t", "target": target, "input_size": 8, "stride": 2,
                                     "before": {"circular": [0.5, 2.0]},
                                     "after": {"circular": [target, target], "zeros": [target, target]}})
    s = report.sentence_spectrum(exact)
    assert "exactly on target" in s and "same spectrum" in s
    approx = report.spectrum_summary({"name": "c", "target": 8.0, "input_size": 8, "stride": 1,
                                      "before": {"circular": [0.1, 12.0]},
                                      "after": {"circular": [7.0, 9.0], "zeros": [5.0, 9.0]}})
    s = report.sentence_spectrum(approx)
    assert "not on it" in s and "border" in s


def test_kind_stats_values():
    s = stats([0.1, 1.0, 10.0])
    assert s["n"] == 3 and s["min"] == pytest.approx(0.1) and s["dev_max"] == pytest.approx(1.0)
    assert s["dev_mean"] == pytest.approx(2 / 3)


def test_report_from_synthetic_demo_folder(tmp_path):
    from test_plots import write_extras, write_run

    root = tmp_path / "demo"
    for model in ("preresnet38", "procresnet40", "plainpre38"):
        write_run(root / "runs" / model, model)
    write_extras(root)
    path, table = report.write_report(root, what_was_run="synthetic")
    text = path.read_text()
    assert "preresnet38" in table and "| test acc %" in table
    for name in ("ratio_per_block.png", "ratio_heatmap.png", "depth_study.png", "spectra.png", "learning_curves.png"):
        assert name in text
    assert (root / "summary.json").is_file()
    # the synthetic ResNet has spiky projection units and calm identity blocks
    assert "[holds] In preresnet38 the deviations sit at the transition units" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run folders"):
        report.build_report(tmp_path / "empty")
