"""Training settings: one dataclass, argparse generated from it, JSON round trip, what a resume may change.

Precedence, lowest first: the dataclass defaults < the named recipe < explicit overrides (keyword
arguments to :meth:`TrainConfig.from_recipe`, or flags given on the command line). The resolved
config is written to ``config.json`` in the run folder and can be read back with
:meth:`TrainConfig.from_json`.

Recipes and the learning-rate schedule are :mod:`procres.training.recipes`.

The validation split defaults to the data set's own default (5,000 CIFAR training images); the
paper trains on all 50,000, which is ``--val-size 0`` (then no best-validation epoch exists).

Resuming: the run's saved config (its latest checkpoint's) is the run's config. A resume may
change only the fields in :data:`RESUME_MAY_CHANGE`: how long the run goes, where its files are,
how often it saves, and how the same computation is executed (threads, device, deterministic
kernels, memory format, CUDA graphs, evaluation batch), which changes at most the rounding of the
remaining steps (a bit-identical resume needs the same device, threads and deterministic flag).
Any other difference -- the model, the data set and split, the seed (the data order and the
augmentation), the optimizer and schedule, augmentation, projection, bf16, epoch length, what
the history measures (``record_every``, ``init_norm_batches``, and ``compile``, which moves the
norm measurement to an end-of-epoch probe) -- is refused by :func:`resume_changes`.
On the command line, ``--resume`` takes every field not given as a flag from the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field

from procres.errors import UserError
from procres.spectral.polar import POLAR_METHODS
from procres.training.recipes import RECIPES

DATASETS = ("cifar10", "cifar100", "digits")
DEVICES = ("auto", "cpu", "cuda")
PROJECTION_METHODS = POLAR_METHODS


def _f(default, help: str):
    """A dataclass field with its ``--flag`` help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of one training run (see the module docstring for recipes and precedence)."""

    # what to train, on what
    model: str = _f("resnet20", "registered model (resnet110, preresnet164, procresnet166, ...) or "
                                "family+depth (procresnet13)")
    dataset: str | None = _f(None, "cifar10 | cifar100 | digits; None: digits without --data, else cifar100 if the path "
                                  "names cifar-100, otherwise cifar10")
    data: str | None = _f(None, "CIFAR archive (.tar.gz) or its extracted folder")
    val_size: int | None = _f(None, "held-out training images; None: the data set's default; 0: none")
    image_size: int | None = _f(None, "input side; None: the data set's own (CIFAR 32, digits 16); digits also 8")
    recipe: str | None = _f(None, "named recipe applied over the defaults, under explicit flags: "
                                  "paper | he2016 | demo")
    # optimisation
    epochs: int = _f(300, "training epochs")
    batch_size: int = _f(128, "global batch: divided over DDP ranks")
    lr: float = _f(0.1, "base learning rate (SGD)")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(1e-4, "L2 weight decay on every parameter (as the authors)")
    milestones: tuple[int, ...] = _f((150, 225), "epochs at which the lr is multiplied by gamma")
    gamma: float = _f(0.1, "lr factor at each milestone")
    warmup_lr: float = _f(0.01, "lr for the first warmup_iters iterations, then back to the schedule")
    warmup_iters: int = _f(0, "warm-up length in iterations (0: no warm-up)")
    # Procrustes projection (acts only on models with transitions(), i.e. ProcResNets)
    projection_p: float = _f(0.5, "probability of projecting each transition conv after a step")
    projection_method: str = _f("svd", "polar factor by svd | eigh | newton_schulz")
    faithful: bool = _f(False, "reproduce the authors' projection quirks (see procres.spectral.projection)")
    # data pipeline
    pad: int = _f(4, "pixels of padding before the random crop")
    pad_mode: str = _f("reflect", "reflect | zeros")
    eval_batch_size: int = _f(1024, "batch for validation / test evaluation")
    max_steps_per_epoch: int = _f(0, ">0: cut every epoch short (tests, smoke runs)")
    # diagnostics
    record_every: int = _f(10, "record per-block norm ratios on every k-th training step (0: never)")
    init_norm_batches: int = _f(4, "batches measured for the epoch-0 (initialisation) norms")
    tensorboard: str | None = _f(None, "TensorBoard event folder (needs the [tensorboard] extra); 'auto', or the "
                                       "flag without a value: the run folder's tb/; None: off")
    # run, device and speed
    seed: int = _f(0, "seeds init, split, data order, augmentation and projection draws")
    device: str = _f("auto", "auto | cpu | cuda")
    out: str | None = _f(None, "run folder; None: runs/<model>-<dataset>-seed<seed>")
    resume: bool = _f(False, "continue from out/checkpoint.pt when it exists")
    amp: bool | None = _f(None, "bf16 autocast; None: on for CUDA, off for CPU")
    channels_last: bool | None = _f(None, "channels_last memory format; None: on (CUDA and CPU)")
    compile: bool = _f(False, "torch.compile the model (CUDA only: on CPU it compiles slowly and gains nothing)")
    cuda_graphs: bool | None = _f(None, "replay the whole training step (forward, loss, backward, SGD update) as one "
                                        "CUDA graph, checked against an eager step at capture (one process; falls "
                                        "back to eager with a warning if capture or the check fails); None: on for "
                                        "CUDA without compile, off for CPU; --no-cuda-graphs turns it off")
    deterministic: bool | None = _f(None, "deterministic algorithms (bit-exact resume); None: on for CPU, off for CUDA")
    threads: int = _f(0, "torch CPU threads (0: leave torch's default)")
    checkpoint_minutes: float = _f(10.0, "also checkpoint mid-epoch this often (0: only at epoch ends)")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N steps (0: off; used by the tests)")

    def __post_init__(self):
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.dataset is not None and self.dataset not in DATASETS:
            raise UserError(f"dataset {self.dataset!r} is not one of {', '.join(DATASETS)}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise UserError(f"recipe {self.recipe!r} is not one of {', '.join(RECIPES)}")
        if self.device not in DEVICES:
            raise UserError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.projection_method not in PROJECTION_METHODS:
            raise UserError(f"projection_method {self.projection_method!r} is not one of {PROJECTION_METHODS}")
        if self.pad_mode not in ("reflect", "zeros"):
            raise UserError(f"pad_mode {self.pad_mode!r} is not 'reflect' or 'zeros'")
        if not 0.0 <= self.projection_p <= 1.0:
            raise UserError(f"projection_p {self.projection_p} is not a probability in [0, 1]")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} {getattr(self, name)} must be at least 1")
        for name in ("pad", "warmup_iters", "max_steps_per_epoch", "record_every", "init_norm_batches", "threads",
                     "checkpoint_every_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} {getattr(self, name)} must not be negative")
        if self.tensorboard is not None and not (isinstance(self.tensorboard, str) and self.tensorboard.strip()):
            raise UserError(f"tensorboard {self.tensorboard!r} must be a folder, 'auto' or None")
        if self.val_size is not None and self.val_size < 0:
            raise UserError(f"val_size {self.val_size} must not be negative")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed {self.seed} must be in [0, 2**32) (numpy's and torch's generators take those)")
        if self.lr <= 0 or self.warmup_lr <= 0:
            raise UserError(f"learning rates must be positive (lr {self.lr}, warmup_lr {self.warmup_lr})")
        if list(self.milestones) != sorted(self.milestones):
            raise UserError(f"milestones {self.milestones} must be increasing")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_recipe(cls, recipe: str | None = None, **overrides) -> "TrainConfig":
        """Defaults, then the named recipe, then ``overrides`` (field name -> value)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        values = {}
        if recipe is not None:
            if recipe not in RECIPES:
                raise UserError(f"recipe {recipe!r} is not one of {', '.join(RECIPES)}")
            model = overrides.get("model", cls.model)
            values.update(RECIPES[recipe](model))
            values["recipe"] = recipe
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resolved(self, *, cuda_available: bool = False) -> "TrainConfig":
        """Fill every automatic (None / "auto") field with what it means on this machine."""
        dataset = self.dataset
        if dataset is None:
            path = str(self.data).lower()
            dataset = "digits" if self.data is None else ("cifar100" if "cifar-100" in path or "cifar100" in path
                                                          else "cifar10")
        device = self.device
        if device == "auto":
            device = "cuda" if cuda_available else "cpu"
        cuda = device == "cuda"
        if self.cuda_graphs and not cuda:
            raise UserError(f"cuda_graphs=True needs device 'cuda', but the device is {device!r}")
        if self.cuda_graphs and self.compile:
            raise UserError("cuda_graphs=True and compile=True exclude each other: choose one "
                             "(torch.compile(mode='reduce-overhead') makes its own CUDA graphs)")
        return dataclasses.replace(
            self,
            dataset=dataset,
            device=device,
            amp=cuda if self.amp is None else self.amp,
            channels_last=True if self.channels_last is None else self.channels_last,
            deterministic=(not cuda) if self.deterministic is None else self.deterministic,
            cuda_graphs=(cuda and not self.compile) if self.cuda_graphs is None else self.cuda_graphs,
            out=self.out if self.out is not None else f"runs/{self.model}-{dataset}-seed{self.seed}",
        )

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------- resuming
RESUME_MAY_CHANGE = {
    "epochs": "extend the run (milestones are epochs, so the steps done keep their learning rates)",
    "out": "the run folder was moved",
    "data": "the archive was moved (the data set and its split stay pinned)",
    "resume": "how the run is started",
    "device": "the same computation on other hardware (augmentation and projection draws are made on the CPU)",
    "threads": "CPU threads",
    "deterministic": "deterministic kernels",
    "channels_last": "memory format",
    "cuda_graphs": "replays the same eager step",
    "eval_batch_size": "evaluation memory",
    "checkpoint_minutes": "how often the run saves",
    "checkpoint_every_steps": "how often the run saves",
    "tensorboard": "where the event files go (procres.integrations.tensorboard writes the epochs before the resume too)",
}


def resume_changes(saved: TrainConfig, new: TrainConfig, *, epochs_done: int = 0) -> dict[str, list]:
    """``{field: [saved value, new value]}`` for each field but ``resume`` in which the resolved
    config ``new`` differs from the run's ``saved`` one. Raises UserError naming every differing
    field outside :data:`RESUME_MAY_CHANGE` with both values, and for ``epochs`` below ``epochs_done``."""
    old, now = saved.to_dict(), new.to_dict()
    diff = {k: [old[k], now[k]] for k in old if old[k] != now[k] and k != "resume"}
    refused = {k: v for k, v in diff.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise UserError(f"resuming {new.out}: {listed} differ from the run's config; a resume keeps the run's "
                        f"settings and may change only {', '.join(k for k in RESUME_MAY_CHANGE if k != 'resume')} "
                        "(start a new run in another out folder to change the others)")
    if new.epochs < epochs_done:
        raise UserError(f"resuming {new.out}: epochs {new.epochs} is fewer than the {epochs_done} epochs the run "
                        "has already trained")
    return diff


# ---------------------------------------------------------------- argparse
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "auto", "default") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, *,
                         skip: typing.Iterable[str] = ()) -> argparse.ArgumentParser:
    """Add one ``--field-name`` option per TrainConfig field (except ``skip``).

    Options default to ``argparse.SUPPRESS``, so only flags the user actually gave reach
    :func:`config_from_args` and override the recipe. Booleans get ``--x / --no-x``; optional
    values accept ``none``/``auto`` for None; ``--milestones`` takes zero or more epochs.
    """
    hints = typing.get_type_hints(TrainConfig)
    skip = set(skip)
    group = parser.add_argument_group("training settings (override the recipe)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        default = f.default
        help_text = f"{f.metadata.get('help', '')} (default {default!r})".lstrip()
        kwargs: dict = dict(default=argparse.SUPPRESS, dest=f.name)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            kwargs.update(nargs="*", type=int, metavar="N")
        else:
            kwargs["type"] = _optional(base) if optional else base
            if f.name in ("recipe", "dataset"):                 # "none" (None): the recipe's, resp. its data set
                names = RECIPES if f.name == "recipe" else DATASETS
                kwargs.update(choices=[*names, None], metavar="{" + ",".join(names) + "}")
            elif f.name == "device":
                kwargs["choices"] = list(DEVICES)
            elif f.name == "projection_method":
                kwargs["choices"] = list(PROJECTION_METHODS)
            elif f.name == "pad_mode":
                kwargs["choices"] = ["reflect", "zeros"]
            elif f.name == "tensorboard":  # the flag alone means "auto"; "auto" stays a value, not None
                kwargs.update(nargs="?", const="auto", metavar="DIR",
                              type=lambda text: None if text.lower() == "none" else text)
        group.add_argument(_flag(f.name), help=help_text, **kwargs)
    return parser


def given_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields set by flags given explicitly on the command line (field -> value)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "milestones" in given:
        given["milestones"] = tuple(given["milestones"])
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig for parsed arguments: defaults < ``args.recipe`` < flags given explicitly."""
    given = given_fields(args)
    recipe = given.pop("recipe", None)
    return TrainConfig.from_recipe(recipe, **given)
