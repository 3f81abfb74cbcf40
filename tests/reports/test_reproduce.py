"""Reproduction recipes: the plan is well formed, the synthetic archive is official-format, --smoke runs."""

import json
import pickle
import tarfile

import pytest

from procres.reports import reproduce
from source_imports import imported_modules
from procres.cli import main


def test_list_names_every_recipe_with_gpu_hours(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("figure", "cifar10-preact", "cifar10-he2016", "cifar100"):
        assert name in out
    assert "GPU-h" in out and "measured on" in out


def test_plan_has_one_train_command_per_model_and_seed():
    plan = reproduce.commands("cifar10-preact", data="/d/cifar-10-python.tar.gz", gpus=4, seeds=[0, 1])
    train = [c for c in plan if "train" in c]
    assert len(train) == 8 * 2
    assert all(c[:3] == ["torchrun", "--standalone", "--nproc_per_node=4"] for c in train)
    first = train[0]
    assert first[first.index("--recipe") + 1] == "paper" and first[first.index("--seed") + 1] == "0"
    assert {c[c.index("--model") + 1] for c in train} == set(reproduce.RECIPES["cifar10-preact"].models)
    single = reproduce.commands("cifar10-he2016", gpus=1)
    assert single[0][:2] == ["procres", "train"] and "he2016" in single[0]
    assert single[-1][:3] == ["procres", "reproduce", "cifar10-he2016"]


def test_gpu_hours_scale_with_seeds_and_depth():
    r = reproduce.RECIPES["cifar10-preact"]
    assert r.gpu_hours([0, 1]) == pytest.approx(2 / 3 * r.gpu_hours())
    assert reproduce.epoch_seconds("procresnet1003") > reproduce.epoch_seconds("procresnet166")
    assert reproduce.epoch_seconds("resnet44") > reproduce.epoch_seconds("resnet20")  # scaled, not timed


def test_bad_names_raise():
    with pytest.raises(ValueError, match="nope"):
        reproduce.describe("nope")
    with pytest.raises(ValueError, match="gpus"):
        reproduce.commands("figure", gpus=0)
    assert main(["reproduce", "nope"]) == 1


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_synthetic_archive_is_official_format(tmp_path, dataset):
    from procres.training.data import load_dataset

    path = reproduce.synthetic_cifar(tmp_path, dataset=dataset, per_batch=10, test=12)
    with tarfile.open(path) as tar:
        names = sorted(m.name for m in tar.getmembers())
        raw = tar.extractfile(names[0]).read()
    batch = pickle.loads(raw, encoding="bytes")
    assert all(isinstance(k, bytes) for k in batch)
    root = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    assert all(n.startswith(root + "/") for n in names)
    d = load_dataset(dataset, path, val_size=5)
    assert d.train_x.shape == (45, 3, 32, 32) and d.test_x.shape == (12, 3, 32, 32) and len(d.val_y) == 5


def test_smoke_runs_the_figure_recipe_end_to_end(tmp_path, capsys):
    assert main(["reproduce", "figure", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs" / "figure-smoke"
    for model in ("preresnet11", "procresnet13"):
        assert (runs / f"{model}-seed0" / "history.jsonl").is_file()
        assert (runs / f"{model}-seed0" / "model.pt").is_file()
    assert (runs / "figures" / "ratio_per_block.png").stat().st_size > 5000
    assert "procresnet13" in out and "final test err" in out
    assert "figure-smoke" not in reproduce.RECIPES
    # an unfinished run (no result.json) is left out of the summary and named
    (runs / "procresnet13-seed0" / "result.json").unlink()
    reproduce.RECIPES["figure-smoke"] = reproduce.Recipe(**{**reproduce.RECIPES["figure"].__dict__, "name": "figure-smoke",
                                                            "models": ("preresnet11", "procresnet13"), "seeds": (0,)})
    try:
        table, data = reproduce.summarize("figure-smoke", out=str(tmp_path / "runs"))
    finally:
        del reproduce.RECIPES["figure-smoke"]
    assert len(data["preresnet11"]["final"]) == 1 and data["procresnet13"]["final"] == []
    result = json.loads((runs / "preresnet11-seed0" / "result.json").read_text())  # train()'s own numbers
    assert data["preresnet11"]["final"] == [100 * result["final_test_error"]]
    assert data["preresnet11"]["at_best_val"] == [100 * result["test_error_at_best_val"]]
    assert "not finished" in table and "procresnet13-seed0" in table


def test_running_the_plan_again_continues_instead_of_stopping(tmp_path, monkeypatch):
    # an interrupted `reproduce NAME --run` is restarted by running it again: every train command must
    # carry --resume, or the first finished run folder stops the plan ("already holds a run")
    plan = reproduce.commands("figure", data="/d/cifar-10-python.tar.gz", out=str(tmp_path))
    assert all("--resume" in argv for argv in plan if "train" in argv)
    ran = []
    monkeypatch.setattr(reproduce.subprocess, "call", lambda argv: ran.append(argv) or 0)
    assert reproduce.execute("figure", data="/d/cifar-10-python.tar.gz", out=str(tmp_path)) == 0
    assert sum("--resume" in argv for argv in ran) == len(reproduce.RECIPES["figure"].models)


def test_recipes_call_the_library_never_the_command_line():
    # procres.cli imports procres.reports.reproduce: an import back would close a circle
    imported = imported_modules(reproduce.__file__, "procres.reports")
    assert "procres.training.config" in imported and not {"procres.cli", "procres.__main__"} & imported
