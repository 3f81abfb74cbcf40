"""The demo end to end (quick mode)."""

import json

import pytest
import torch

from procres.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys, monkeypatch):
    # the plain twin's training "overflows" (train raises FloatingPointError after its run): the demo
    # records it and goes on, as it does when a deep plain net cannot be trained
    import procres.training.loop

    real_train = procres.training.loop.train

    def train(config, **kwargs):
        result = real_train(config, **kwargs)
        if config.model.startswith("plain"):
            raise FloatingPointError("non-finite weights in epoch 2, step 8: training stopped; nothing was saved")
        return result

    monkeypatch.setattr(procres.training.loop, "train", train)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0  # progress on, into a pipe
    captured = capsys.readouterr()
    printed = captured.out
    assert "\r" not in captured.err + printed  # not a terminal: one line per stage, no bar frames
    assert "| model" in printed and "report:" in printed and str(out / "report.md") in printed
    for stage in ("data", "train preresnet20", "train procresnet22", "train plainpre20", "depth study", "figures"):
        assert f"{stage}: " in printed  # each stage's time
    for name in ("ratio_per_block", "ratio_heatmap", "depth_study", "spectra", "learning_curves"):
        png = out / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, png
    for model in ("preresnet20", "procresnet22", "plainpre20"):
        history = [json.loads(line) for line in (out / "runs" / model / "history.jsonl").read_text().splitlines()]
        assert len(history) == 3 and "norms" in history[-1] and history[-1]["step"] == 8
        config = json.loads((out / "runs" / model / "config.json").read_text())
        assert config["image_size"] == 8 and config["threads"] == 1
    assert json.loads((out / "runs" / "plainpre20" / "stopped.json").read_text()) == {
        "reason": "non-finite weights in epoch 2, step 8"}
    report = (out / "report.md").read_text()
    assert "## The paper's claims, checked" in report and report.count("![") == 5
    assert "checked at depth 20, during training (steps 1-8), preresnet20" in report
    assert "training stopped (non-finite weights in epoch 2, step 8)" in report and "Stage times: data" in report
    spectra = json.loads((out / "spectra.json").read_text())
    trans = [layer for layer in spectra["layers"] if layer["name"].startswith("trans_conv")]
    assert len(trans) == 2
    for layer in trans:  # 1x1 stride-2 transitions are exactly on target after one projection
        after = torch.tensor(layer["after"]["circular"])  # the non-zero values
        assert after.numel() == layer["after"]["stats"]["circular"]["nonzero"]
        assert torch.allclose(after, torch.full_like(after, 2 ** 0.5), rtol=1e-5)
    study = json.loads((out / "depth_study.json").read_text())
    assert study["depths"] == [20, 29] and set(study["results"]) == {"residual", "procrustes", "plain"}
    assert study["model_depths"]["procrustes"] == [22, 31] and study["overflow"]["plain"] == [None, None]
    # a second run into the same folder is allowed (the demo owns it) ...
    from procres.reports.demo import _prepare

    _prepare(out)
    assert not any((out / "runs").iterdir())  # its earlier run folders are cleared
    # ... but not into a folder holding someone else's runs, which stay untouched
    foreign = tmp_path / "foreign"
    (foreign / "runs" / "resnet20-cifar10-seed0").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by the demo"):
        _prepare(foreign)
    assert (foreign / "runs" / "resnet20-cifar10-seed0").is_dir()


def test_demo_threads_default_to_the_usable_cores():
    import os

    from procres.reports.demo import auto_threads

    assert auto_threads() == len(os.sched_getaffinity(0))
