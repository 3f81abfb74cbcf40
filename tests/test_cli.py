"""The command line's error contract: user errors are one sentence, anything else keeps its traceback."""

import pytest

from procres import cli
from procres.errors import UserError


def test_user_error_is_one_sentence_and_exit_1(capsys):
    assert cli.main(["models", "--filter", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("procres models: error: ") and "no-such-model" in err and "Traceback" not in err


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)


def test_unexpected_error_is_not_swallowed(monkeypatch):
    def broken(args):
        raise ValueError("an internal bug, not a user error")

    monkeypatch.setattr(cli, "_run_models", broken)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(["models"])


@pytest.mark.parametrize("argv", [["--debug", "models", "--filter", "no-such-model"],
                                  ["models", "--filter", "no-such-model", "--debug"]])
def test_debug_shows_the_traceback_of_a_user_error(argv):
    with pytest.raises(UserError, match="no-such-model"):
        cli.main(argv)


def test_diverged_training_is_one_sentence_unless_debug(monkeypatch, capsys):
    import procres.training.loop

    def diverge(config, *, quiet=False):
        raise FloatingPointError("non-finite loss in epoch 1, step 3")

    monkeypatch.setattr(procres.training.loop, "train", diverge)
    assert cli.main(["train", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "procres train: error: non-finite loss in epoch 1, step 3\n"
    with pytest.raises(FloatingPointError, match="step 3"):
        cli.main(["--debug", "train", "--quiet"])


def test_models_and_spectrum_name_the_input_size_alike(capsys):
    assert cli.main(["models", "--filter", "procresnet166", "--input-size", "16"]) == 0
    assert "16->8" in capsys.readouterr().out  # the first transition's grid at a 16x16 input
    assert cli.main(["models", "--filter", "procresnet166", "--image-size", "16"]) == 0  # the older spelling
    assert "16->8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--threads", "-1"], "argument --threads: must be at least 0, got -1"),
    (["spectrum", "--model", "resnet20", "--input-size", "0"], "argument --input-size: must be at least 1, got 0"),
    (["inspect", "resnet20", "--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (["inspect", "resnet20", "--steps", "-1"], "argument --steps: must be at least 0, got -1"),
    (["models", "--input-size", "x"], "expected a whole number, got 'x'"),
    (["inspect", "resnet20", "--lr", "-1"], "argument --lr: must be a finite number above 0, got -1"),
    (["study", "resnet", "--depths", "20", "--lr", "0"], "argument --lr: must be a finite number above 0, got 0"),
    (["demo", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["reproduce", "cifar10-preact", "--seeds", "0", str(2**32)], "argument --seeds: must be below 2**32"),
])
def test_counts_out_of_range_are_a_usage_error_not_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_a_file_torch_cannot_read_is_one_line_without_torchs_unsafe_advice(tmp_path, capsys):
    """A random-bytes checkpoint: torch's message advises weights_only=False; procres never does."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(range(256)) * 8)
    assert cli.main(["spectrum", "--model", "resnet20", "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable torch file" in err and "weights_only" not in err


def test_weights_of_another_model_are_summarised_in_one_line(tmp_path, capsys):
    import torch

    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    assert cli.main(["spectrum", "--model", "resnet20", "--checkpoint", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing keys" in err and "2 unexpected keys (weight, bias)" in err
    assert len(err) < 400


def test_a_summary_of_a_missing_folder_is_refused(tmp_path, capsys):
    assert cli.main(["reproduce", "cifar10-preact", "--summary", "--out", str(tmp_path / "nope")]) == 1
    assert "is not a folder: nothing to summarise" in capsys.readouterr().err
