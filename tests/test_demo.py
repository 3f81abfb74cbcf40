"""The demo end to end (quick mode)."""

import json

import pytest
import torch

from procres.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and "report:" in printed and str(out / "report.md") in printed
    for name in ("ratio_per_block", "ratio_heatmap", "depth_study", "spectra", "learning_curves"):
        png = out / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, png
    for model in ("preresnet20", "procresnet22", "plainpre20"):
        history = (out / "runs" / model / "history.jsonl").read_text().splitlines()
        assert len(history) == 3 and "norms" in json.loads(history[-1])
    report = (out / "report.md").read_text()
    assert "## What the measurements say" in report and report.count("![") == 5
    assert "[holds]" in report or "[contradicted]" in report
    spectra = json.loads((out / "spectra.json").read_text())
    trans = [layer for layer in spectra["layers"] if layer["name"].startswith("trans_conv")]
    assert len(trans) == 2
    for layer in trans:  # 1x1 stride-2 transitions are exactly on target after one projection
        after = torch.tensor(layer["after"]["circular"])
        nonzero = after[after > 1e-6]
        assert torch.allclose(nonzero, torch.full_like(nonzero, 2 ** 0.5), rtol=1e-5)
    study = json.loads((out / "depth_study.json").read_text())
    assert study["depths"] == [20, 29, 38] and set(study["results"]) == {"residual", "plain"}
    # a second run into the same folder is allowed (the demo owns it) ...
    from procres.demo import _prepare, QUICK

    _prepare(out, QUICK)
    # ... but not into a folder holding someone else's runs
    foreign = tmp_path / "foreign"
    (foreign / "runs" / "preresnet20").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by the demo"):
        _prepare(foreign, QUICK)
