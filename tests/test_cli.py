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
])
def test_counts_out_of_range_are_a_usage_error_not_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
