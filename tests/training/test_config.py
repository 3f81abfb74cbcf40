"""TrainConfig: recipes, precedence, generated argparse, JSON round trip, the LR schedule."""

import argparse
import dataclasses
import typing

import pytest

from procres.training.config import add_config_arguments, config_from_args, resume_changes, RESUME_MAY_CHANGE, TrainConfig
from procres.training.recipes import lr_at, RECIPES


def _parse(argv):
    return config_from_args(add_config_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_json_round_trip_keeps_every_field():
    config = TrainConfig(model="procresnet13", dataset="digits", val_size=0, recipe="demo", milestones=(3, 7),
                         amp=True, channels_last=False, deterministic=None, lr=0.3, out="x/y", faithful=True)
    back = TrainConfig.from_json(config.to_json())
    assert back == config
    assert isinstance(back.milestones, tuple)


def test_from_json_rejects_unknown_fields():
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig.from_json('{"warmup_epochs": 3}')


def test_precedence_defaults_then_recipe_then_overrides():
    default = TrainConfig()
    demo = TrainConfig.from_recipe("demo")
    assert demo.recipe == "demo" and demo.dataset == "digits" and demo.epochs != default.epochs
    assert demo.momentum == default.momentum  # a field the recipe does not set keeps the default
    override = TrainConfig.from_recipe("demo", epochs=2, lr=0.5)
    assert (override.epochs, override.lr, override.batch_size) == (2, 0.5, demo.batch_size)


def test_cli_flags_given_override_the_recipe_and_absent_flags_do_not():
    config = _parse(["--recipe", "he2016", "--model", "resnet110", "--batch-size", "64", "--no-amp"])
    assert config.batch_size == 64 and config.amp is False
    assert config.epochs == 164 and config.milestones == (82, 123) and config.warmup_iters == 400
    assert _parse([]) == TrainConfig()
    assert _parse(["--recipe", "paper"]) == TrainConfig.from_recipe("paper")


def test_every_field_has_a_flag():
    special = {"model": "resnet8", "dataset": "cifar100", "data": "/d", "val_size": 7, "image_size": 8, "recipe": "demo",
               "milestones": (1, 2), "projection_method": "newton_schulz", "device": "cpu", "out": "o",
               "pad_mode": "zeros", "tensorboard": "tb-dir"}
    hints = typing.get_type_hints(TrainConfig)
    argv, expected = [], {}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.name in special:
            value = special[f.name]
            argv += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
        elif bool in (kind, *typing.get_args(kind)):  # flip the default: --x or --no-x
            value = not f.default
            argv.append(flag if value else "--no-" + flag[2:])
        else:  # int / float: any value different from the default
            value = f.default + (3 if kind is int else 0.25)
            argv += [flag, str(value)]
        expected[f.name] = value
    config = _parse(argv)
    assert {name: getattr(config, name) for name in expected} == expected
    assert _parse(["--val-size", "none"]).val_size is None
    assert _parse(["--milestones"]).milestones == ()


@pytest.mark.parametrize("kwargs, word", [
    ({"recipe": "fast"}, "fast"), ({"dataset": "mnist"}, "mnist"), ({"projection_p": 1.5}, "1.5"),
    ({"batch_size": 0}, "batch_size"), ({"milestones": (5, 3)}, "milestones"), ({"device": "tpu"}, "tpu"),
])
def test_bad_values_raise_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kwargs)


def test_recipes_match_the_reference():
    paper = TrainConfig.from_recipe("paper", model="procresnet166")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == (300, 128, 0.1, 0.9, 1e-4)
    assert paper.milestones == (150, 225) and paper.gamma == 0.1 and paper.projection_p == 0.5
    assert paper.warmup_iters == 0
    for model, warm in (("resnet20", 0), ("resnet56", 0), ("resnet110", 400), ("resnet1202", 400)):
        he = TrainConfig.from_recipe("he2016", model=model)
        assert (he.epochs, he.milestones, he.warmup_iters, he.warmup_lr) == (164, (82, 123), warm, 0.01), model
    assert set(RECIPES) == {"paper", "he2016", "demo"}


def test_warmup_returns_to_the_base_lr_and_milestones_apply():
    he = TrainConfig.from_recipe("he2016", model="resnet110")
    steps_per_epoch = 352  # 45k images / batch 128
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 401: 0.1, 81 * steps_per_epoch: 0.1}
    for it, lr in expected.items():
        assert lr_at(he, it // steps_per_epoch, it) == pytest.approx(lr, rel=1e-12), it
    # the warm-up is over for good: every later step of the first stage is at 0.1, none at 0.01
    assert {lr_at(he, it // steps_per_epoch, it) for it in range(400, 82 * steps_per_epoch)} == {0.1}
    table = {0: 0.1, 81: 0.1, 82: 0.01, 122: 0.01, 123: 0.001, 163: 0.001}
    for epoch, lr in table.items():
        assert lr_at(he, epoch, 10**6) == pytest.approx(lr, rel=1e-12), epoch
    paper = TrainConfig.from_recipe("paper")
    assert [lr_at(paper, e, 10**6) for e in (149, 150, 224, 225, 299)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])


def test_resolved_fills_automatic_fields():
    cpu = TrainConfig(model="resnet8").resolved(cuda_available=False)
    resolved = (cpu.dataset, cpu.device, cpu.amp, cpu.deterministic, cpu.channels_last, cpu.cuda_graphs)
    assert resolved == ("digits", "cpu", False, True, True, False)
    assert cpu.out == "runs/resnet8-digits-seed0"
    gpu = TrainConfig(data="/data/cifar-100-python.tar.gz").resolved(cuda_available=True)
    assert (gpu.dataset, gpu.device, gpu.amp, gpu.deterministic, gpu.cuda_graphs) == (
        "cifar100", "cuda", True, False, True)
    assert TrainConfig(data="/runs100/cifar-10-batches-py").resolved().dataset == "cifar10"


def test_cuda_graphs_default_explicit_and_conflicts():
    # automatic: on for CUDA; never with compile or on the CPU
    assert TrainConfig().resolved(cuda_available=True).cuda_graphs is True
    assert TrainConfig(compile=True).resolved(cuda_available=True).cuda_graphs is False
    assert TrainConfig(device="cpu").resolved(cuda_available=True).cuda_graphs is False
    assert TrainConfig(cuda_graphs=False).resolved(cuda_available=True).cuda_graphs is False
    assert TrainConfig(cuda_graphs=False, compile=True).resolved(cuda_available=True).compile is True
    assert _parse(["--no-cuda-graphs"]).cuda_graphs is False and _parse(["--cuda-graphs"]).cuda_graphs is True
    assert _parse(["--cuda-graphs", "--device", "cuda"]).resolved(cuda_available=True).cuda_graphs is True
    with pytest.raises(ValueError, match="cuda_graphs=True needs device 'cuda'.*'cpu'"):
        TrainConfig(cuda_graphs=True).resolved(cuda_available=False)
    with pytest.raises(ValueError, match="cuda_graphs=True and compile=True"):
        TrainConfig(cuda_graphs=True, compile=True).resolved(cuda_available=True)
    # configs saved before the field existed still load (resolved as automatic)
    assert TrainConfig.from_json('{"model": "resnet8"}').cuda_graphs is None


def test_resume_changes_allow_execution_and_length_and_refuse_the_rest():
    saved = TrainConfig(model="resnet8", epochs=3).resolved()
    assert set(RESUME_MAY_CHANGE) <= {f.name for f in dataclasses.fields(TrainConfig)}
    allowed = saved.replace(epochs=5, threads=4, device="cuda", out="moved", resume=True)
    assert resume_changes(saved, allowed, epochs_done=3) == {
        "epochs": [3, 5], "out": [saved.out, "moved"], "device": ["cpu", "cuda"], "threads": [0, 4]}
    for name, value in (("seed", 1), ("compile", True), ("amp", True), ("record_every", 3), ("milestones", (1,)),
                        ("max_steps_per_epoch", 9), ("model", "resnet14")):
        with pytest.raises(ValueError, match=f"{name} .* -> .*differ from the run's config.*may change only epochs"):
            resume_changes(saved, saved.replace(**{name: value}))
    with pytest.raises(ValueError, match="epochs 2 is fewer than the 3 epochs"):
        resume_changes(saved, saved.replace(epochs=2), epochs_done=3)
