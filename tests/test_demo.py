"""The demo end to end (quick mode) and the spectrum CLI against the spectral functions."""

import json

import pytest
import torch

from procres.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys, monkeypatch):
    # the plain twin's training "overflows" (train raises FloatingPointError after its run): the demo
    # records it and goes on, as it does when a deep plain net cannot be trained
    import procres.train

    real_train = procres.train.train

    def train(config, **kwargs):
        result = real_train(config, **kwargs)
        if config.model.startswith("plain"):
            raise FloatingPointError("non-finite weights in epoch 2, step 8: training stopped; nothing was saved")
        return result

    monkeypatch.setattr(procres.train, "train", train)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
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
    from procres.demo import _prepare

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

    from procres.demo import auto_threads

    assert auto_threads() == len(os.sched_getaffinity(0))


def _spectrum_json(capsys, *argv):
    assert main(["spectrum", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_spectrum_cli_equals_spectral(capsys):
    from procres.models import resnet
    from procres.spectral import norm_preserving_target
    from procres.spectral import conv_matrix, conv_singular_values

    rows = _spectrum_json(capsys, "--model", "resnet8", "--input-size", "8", "--in-channels", "1", "--zeros", "dense")
    torch.manual_seed(0)
    model = resnet(8, num_classes=10, in_channels=1, image_size=8)  # same seed as the CLI's build
    convs = dict(model.named_modules())
    assert [r["name"] for r in rows] == [n for n, m in convs.items() if isinstance(m, torch.nn.Conv2d)]
    for row in rows:
        w = convs[row["name"]].weight.detach().double()
        stride = row["stride"]
        sv = conv_singular_values(w, row["input_size"], stride=stride)
        assert row["circular"]["sigma_max"] == pytest.approx(float(sv[0]), rel=1e-10)
        assert row["circular"]["sigma_min"] == pytest.approx(float(sv[sv > 1e-6 * sv[0]][-1]), rel=1e-10)
        target = norm_preserving_target(w, stride)  # the projection's own target (test_procrustes)
        assert row["target"] == pytest.approx(target)
        assert row["circular"]["max_rel_error"] == pytest.approx(float((sv[sv > 1e-6 * sv[0]] / target - 1).abs().max()))
        # zero padding: our impulse-response route vs spectral's dense oracle
        dense = torch.linalg.svdvals(conv_matrix(w, row["input_size"], stride=stride, padding_mode="zeros"))
        assert row["zeros"]["sigma_max"] == pytest.approx(float(dense[0]), rel=1e-9)
        assert row["zeros"]["method"] == "dense"


def test_spectrum_cli_reads_checkpoints(tmp_path, capsys):
    from procres.procrustes import project_conv_
    from procres.models import create_model

    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=16)
    for conv, size in model.transitions():
        project_conv_(conv, size)
    torch.save({"model": model.state_dict(), "config": {"model": "procresnet13", "dataset": "digits"}},
               tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "plain_sd.pt")
    names = [n for n, m in model.named_modules() if any(m is c for c, _ in model.transitions())][1:]
    rows = _spectrum_json(capsys, "--checkpoint", str(tmp_path / "model.pt"), "--layers", *names, "--zeros", "off")
    assert len(rows) == 2 and all(r["input_size"] in (16, 8) for r in rows)
    for r in rows:  # projected 1x1 stride-2 transitions: every non-zero value is sqrt(2)
        assert r["circular"]["max_rel_error"] < 1e-5 and r["target"] == pytest.approx(2 ** 0.5)
    rows2 = _spectrum_json(capsys, "--checkpoint", str(tmp_path / "plain_sd.pt"), "--model", "procresnet13",
                           "--input-size", "16", "--in-channels", "1", "--layers", *names, "--zeros", "off")
    assert rows2 == rows
    assert main(["spectrum", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert main(["spectrum", "--checkpoint", str(tmp_path / "plain_sd.pt"), "--model", "resnet8"]) == 1


def test_spectrum_cli_reads_a_training_checkpoint_and_rejects_a_corrupt_file(tmp_path, capsys):
    # checkpoint.pt stores its config as the JSON text train() writes (TrainConfig.to_json), model.pt
    # as a dict: both must give the saved model's name and input shape without --model
    from procres.config import TrainConfig
    from procres.models import create_model

    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=16)
    config = TrainConfig(model="procresnet13", dataset="digits").to_json()
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1}, tmp_path / "checkpoint.pt")
    rows = _spectrum_json(capsys, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--zeros", "off")
    assert rows and rows[0]["input_size"] == 16 and rows[0]["shape"][1] == 1
    (tmp_path / "broken.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:3000])
    assert main(["spectrum", "--checkpoint", str(tmp_path / "broken.pt"), "--model", "procresnet13"]) == 1
    assert "broken.pt" in capsys.readouterr().err


def test_spectrum_cli_unknown_layer_name_is_an_error(capsys):
    # was: an empty table and exit 0, as if the model had no such conv
    assert main(["spectrum", "--model", "resnet8", "--layers", "stem", "no.such.conv", "--zeros", "off"]) == 1
    err = capsys.readouterr().err
    assert "'no.such.conv'" in err and "stem" in err
