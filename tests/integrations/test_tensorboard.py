"""TensorBoard output: a run's event files read back with TensorBoard's own EventAccumulator equal
history.jsonl, resumed runs hold every step once, the transition errors match the dense operator,
the plain-loop recipe, the --tensorboard flag and the missing-package sentence."""

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import procres.training.loop as train_module
from procres.cli import build_parser, main
from procres.training.config import config_from_args, TrainConfig
from procres.errors import UserError
from procres.integrations.tensorboard import log_norms, summary_writer, transition_errors
from procres.training.loop import train, train_seeds

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(recipe="demo", epochs=2, batch_size=32, max_steps_per_epoch=4, init_norm_batches=1, record_every=2,
            threads=1)
# the documented layout (procres.integrations.tensorboard module docstring): history key -> tag
EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
              "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
              "lr": "optim/lr", "images_per_sec": "speed/images_per_sec", "epoch_time": "speed/epoch_time_s",
              "epoch": "epoch"}


def _tiny(tmp_path, name="run", **changes) -> TrainConfig:
    values = {**TINY, "model": "resnet8", "out": str(tmp_path / name), **changes}
    return TrainConfig.from_recipe(values.pop("recipe"), **values)


def _events(folder):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _history(run):
    return [json.loads(line) for line in (Path(run) / "history.jsonl").read_text().splitlines()]


def _f32(value):
    return float(np.float32(value))


def _assert_matches_history(acc, history):
    """Every history value at its step, once; nothing else on those tags."""
    scalars = set(acc.Tags()["scalars"])
    for key, tag in EPOCH_TAGS.items():
        expected = [(h["step"], _f32(h[key])) for h in history if h[key] is not None]
        got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in scalars else []
        assert got == expected, tag
    blocks = len(history[-1]["norms"]["ratio"])
    for block in range(blocks):
        got = [(e.step, e.value) for e in acc.Scalars(f"norm_ratio/block_{block + 1:02d}")]
        assert got == [(h["step"], _f32(h["norms"]["ratio"][block])) for h in history]
    hist = acc.Histograms("norm_ratio/log10")
    assert [h.step for h in hist] == [h["step"] for h in history]
    for event, h in zip(hist, history):
        logs = [math.log10(r) for r in h["norms"]["ratio"] if math.isfinite(r) and r > 0]
        assert event.histogram_value.num == len(logs)
        assert event.histogram_value.min == pytest.approx(min(logs), abs=1e-6)
        assert event.histogram_value.max == pytest.approx(max(logs), abs=1e-6)
        assert event.histogram_value.sum == pytest.approx(sum(logs), abs=1e-5)


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    config = _tiny(tmp_path_factory.mktemp("tb"), model="procresnet13", tensorboard="auto")
    return config, train(config, quiet=True)


def test_event_files_equal_history_jsonl(tb_run):
    config, result = tb_run
    run = Path(config.out)
    acc = _events(run / "tb")
    history = _history(run)
    assert [h["step"] for h in history] == [0, 4, 8]
    _assert_matches_history(acc, history)
    assert "loss/train" in acc.Tags()["scalars"] and acc.Scalars("loss/train")[0].step == 4  # none at epoch 0
    # the transition errors, at every epoch; the last equal those of the final weights
    errors = transition_errors(result["model"])
    assert set(errors) == {"transition_error/stem", "transition_error/blocks.1", "transition_error/blocks.3"}
    for tag, value in errors.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 4, 8] and events[-1].value == pytest.approx(value, rel=1e-6)


def test_resumed_run_appends_each_step_once(tb_run, tmp_path):
    config, _ = tb_run
    run = tmp_path / "resumed"
    shutil.copytree(config.out, run)
    train(config.replace(out=str(run), epochs=3, resume=True), quiet=True)
    history = _history(run)
    assert [h["step"] for h in history] == [0, 4, 8, 12]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2  # the same folder, one file per session
    acc = _events(run / "tb")
    _assert_matches_history(acc, history)
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), tag


class _Interrupted(Exception):
    pass


def test_run_stopped_after_writing_an_epoch_but_before_its_checkpoint(tmp_path, monkeypatch):
    # epoch 2 reaches the event file, its checkpoint never happens: the resumed run trains epoch 2 again,
    # and its events must replace the first ones, not sit beside them
    pytest.importorskip("tensorboard")
    config = _tiny(tmp_path, tensorboard="auto")
    real_save = train_module.save_checkpoint

    def stop_before_epoch_2_is_saved(run_dir, state):
        if state["epoch"] == 2 and state["partial"] is None:
            raise _Interrupted
        real_save(run_dir, state)

    monkeypatch.setattr(train_module, "save_checkpoint", stop_before_epoch_2_is_saved)
    with pytest.raises(_Interrupted):
        train(config, quiet=True)
    assert [e.step for e in _events(tmp_path / "run" / "tb").Scalars("loss/train")] == [4, 8]
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    train(config.replace(resume=True), quiet=True)
    acc = _events(tmp_path / "run" / "tb")
    _assert_matches_history(acc, _history(tmp_path / "run"))
    assert [e.step for e in acc.Scalars("loss/train")] == [4, 8]


def test_tensorboard_turned_on_at_a_resume_gets_the_history_first(tmp_path):
    pytest.importorskip("tensorboard")
    config = _tiny(tmp_path, epochs=1)
    train(config, quiet=True)
    folder = tmp_path / "elsewhere"  # a folder of the user's choice, outside the run folder
    train(config.replace(epochs=2, resume=True, tensorboard=str(folder)), quiet=True)
    acc = _events(folder)
    _assert_matches_history(acc, _history(tmp_path / "run"))
    assert not (tmp_path / "run" / "tb").exists()


def test_several_seeds_write_one_subfolder_each(tmp_path):
    pytest.importorskip("tensorboard")
    config = _tiny(tmp_path, epochs=1, max_steps_per_epoch=2, init_norm_batches=0, tensorboard=str(tmp_path / "tb"))
    train_seeds(config, [0, 1], quiet=True)
    for seed in (0, 1):
        acc = _events(tmp_path / "tb" / f"seed{seed}")
        assert [e.step for e in acc.Scalars("loss/train")] == [2]
        assert acc.Scalars("loss/train")[0].value == _f32(_history(tmp_path / "run" / f"seed{seed}")[1]["train_loss"])


def test_missing_tensorboard_is_one_sentence_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    with pytest.raises(UserError, match=re.escape("pip install 'procrustes-resnets[tensorboard]'")):
        train(_tiny(tmp_path, tensorboard="auto"), quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # stopped before training
    with pytest.raises(UserError, match=r"\[tensorboard\]"):
        summary_writer(tmp_path / "w")
    argv = ["train", "--model", "resnet8", "--recipe", "demo", "--epochs", "1", "--out", str(tmp_path / "cli"),
            "--quiet", "--tensorboard"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("procres train: error:") and "[tensorboard]" in err and len(err.splitlines()) == 1


def test_tensorboard_flag_alone_means_the_run_folder(tmp_path):
    def parsed(*flags):
        return config_from_args(build_parser().parse_args(["train", *flags])).tensorboard

    assert parsed() is None
    assert parsed("--tensorboard") == "auto"
    assert parsed("--tensorboard", "--epochs", "3") == "auto"
    assert parsed("--tensorboard", "logs/x") == "logs/x"
    assert parsed("--tensorboard", "none") is None
    with pytest.raises(UserError, match="tensorboard ''"):
        TrainConfig(tensorboard="")


# ---------------------------------------------------------------- transition errors
def _circular_dense(conv, size):
    """The conv's circular operator as a dense float64 matrix, from its impulse responses."""
    w = conv.weight.detach().double()
    c_in, k = w.shape[1], w.shape[-1]
    basis = torch.eye(c_in * size * size, dtype=torch.float64).reshape(-1, c_in, size, size)
    pad = k // 2
    out = F.conv2d(F.pad(basis, (pad, pad, pad, pad), mode="circular") if pad else basis, w, stride=conv.stride)
    return out.reshape(len(basis), -1).T  # (outputs, inputs)


class _TwoTransitions(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, bias=False)
        self.blocks = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False))

    def transitions(self):
        return [(self.down, 8), (self.blocks[0], 4)]


def test_transition_errors_match_the_dense_operator():
    model = _TwoTransitions().double()
    errors = transition_errors(model)
    assert list(errors) == ["transition_error/down", "transition_error/blocks.0"]
    for (conv, size), value in zip(model.transitions(), errors.values()):
        dense = _circular_dense(conv, size)
        sv = torch.linalg.svdvals(dense)
        nonzero = sv[sv > 1e-9 * sv[0]]
        target = math.sqrt(dense.shape[0] / len(nonzero))  # backward norm kept in expectation: rows / rank
        assert value == pytest.approx(float((nonzero / target - 1).abs().max()), rel=1e-9)


# ---------------------------------------------------------------- plain loops
def test_log_norms_writes_each_unit_and_a_histogram_of_the_finite_ones(tmp_path):
    pytest.importorskip("tensorboard")
    ratios = [0.5, 1.0, math.nan, 2.0, 0.0, 1.25, 1, 1, 1, 1, 1.5]  # 11 units: two-digit block numbers
    writer = summary_writer(tmp_path)
    log_norms(writer, {"ratio": ratios, "steps_recorded": 3}, 7, prefix="r")
    log_norms(writer, {}, 8)  # an empty summary (nothing recorded) writes nothing
    writer.close()
    acc = _events(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == [f"r/block_{i:02d}" for i in range(1, 12)]
    for i, r in enumerate(ratios, start=1):
        (event,) = acc.Scalars(f"r/block_{i:02d}")
        assert event.step == 7 and (math.isnan(event.value) if math.isnan(r) else event.value == _f32(r))
    (hist,) = acc.Histograms("r/log10")
    assert hist.histogram_value.num == 9  # NaN and 0 have no log10
    assert hist.histogram_value.min == pytest.approx(math.log10(0.5)) and hist.histogram_value.max == pytest.approx(
        math.log10(2.0))


def test_plain_loop_example_runs_and_the_readme_recipe_is_its_code(tmp_path, single_threaded):
    pytest.importorskip("tensorboard")
    path = ROOT / "examples" / "plain_loop_tensorboard.py"
    spec = importlib.util.spec_from_file_location("plain_loop_tensorboard", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--out", str(tmp_path), "--epochs", "2", "--steps", "3"])
    acc = _events(tmp_path)
    ratios = [t for t in acc.Tags()["scalars"] if t.startswith("norm_ratio/block_")]
    assert len(ratios) == 3  # resnet8: three residual blocks
    for tag in ratios:
        assert [e.step for e in acc.Scalars(tag)] == [3, 6] and all(e.value > 0 for e in acc.Scalars(tag))
    assert [h.step for h in acc.Histograms("norm_ratio/log10")] == [3, 6]

    readme = (ROOT / "README.md").read_text()
    section = re.search(r"## Norm ratios in TensorBoard(.*?)\n## ", readme, re.S).group(1)
    recipe = next(block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "# (1)" in block)
    code = path.read_text()
    marked = [line.split("#")[0].strip() for line in recipe.splitlines() if re.search(r"# \(\d\)", line)]
    assert len(marked) == 3 and all(line in code for line in marked)
