"""The ``procres`` command line: parses arguments and calls the library, nothing more.

Subcommands: models, spectrum, inspect, study, train, demo, plot, reproduce. Each has one
``_add_<name>(subparsers)`` that builds its parser and one ``_run_<name>(args)``
that calls the library. Heavy imports (torch) happen inside the handlers so that
``procres --help`` is instant.

Errors: a :class:`procres.errors.UserError` or an ``OSError`` (a bad value, a missing or
unwritable path) and a diverged training run (``FloatingPointError``) print one sentence and exit
1; any other exception is a bug and keeps its traceback. ``--debug`` (before or after the
command) shows the traceback for every error.
"""

from __future__ import annotations

import argparse
import sys

from procres.errors import UserError


def _count(minimum: int):
    """argparse type: a whole number >= ``minimum`` (a bad one is argparse's one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _seed(text: str) -> int:
    """argparse type: a seed numpy's and torch's generators take, in [0, 2**32)."""
    value = _count(0)(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


# ---------------------------------------------------------------- models
def _add_models(sub):
    p = sub.add_parser("models", help="list the registered models and the transformer families",
                       description="The registered names; any other depth is built by name too: resnet<6n+2>, "
                                   "preresnet<9n+2>, procresnet<9n+4>, their plain twins, and the token-input "
                                   "language models prenorm_transformer<L> and postnorm_transformer<L>.")
    p.add_argument("--filter", default="", metavar="PATTERN",
                   help="only names matching this fnmatch pattern (procresnet*, *16?); without wildcards, "
                        "names containing it")
    p.add_argument("--input-size", "--image-size", dest="input_size", type=_count(1), default=32,
                   help="input side the transition grids are computed for (default 32)")
    return p


def _run_models(args):
    import torch

    from procres.models.registry import create_model, list_models, token_families

    names, tokens = list_models(filter=args.filter), token_families(filter=args.filter)
    if not names and not tokens:
        raise UserError(f"no registered model name or model family matches {args.filter!r}")
    if names:
        print(f"{'name':<17} {'depth':>5} {'parameters':>11} {'blocks':>6}  transitions (kernel/stride input->grid)")
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no init cost, no forward
            model = create_model(name, image_size=args.input_size)
        params = sum(p.numel() for p in model.parameters())
        trans = ", ".join(
            f"{c.kernel_size[0]}x{c.kernel_size[1]}/{c.stride[0]} {size}->{size // c.stride[0]}"
            for c, size in model.transitions()
        )
        print(f"{name:<17} {model.depth:>5} {params:>11,} {len(model.blocks):>6}  {trans or '-'}")
    if tokens:
        print(("\n" if names else "") + f"{'family (any depth L)':<24} {'parameters (defaults)':>22} {'blocks':>6}  input")
    for family in tokens:
        with torch.device("meta"):
            one, two = (sum(p.numel() for p in create_model(f"{family}{d}").parameters()) for d in (1, 2))
        print(f"{family + '<L>':<24} {f'{one - (two - one):,} + {two - one:,} L':>22} {'L':>6}  token ids")
    return 0


# ---------------------------------------------------------------- spectrum
def _add_spectrum(sub):
    p = sub.add_parser("spectrum", help="singular values of every conv layer of a model",
                       description="Per conv layer: sigma_max, smallest non-zero sigma, condition number and the "
                                   "largest relative distance of the non-zero singular values from the Procrustes "
                                   "target (sqrt(C_out / rank)); circular padding exact, zero padding where affordable.")
    p.add_argument("--model", help="model name (list: procres models), or <family><depth> e.g. procresnet40; "
                                   "default: the one saved with --checkpoint")
    p.add_argument("--checkpoint", help="a run's model.pt or checkpoint.pt (trained weights; loaded with weights_only=True)")
    p.add_argument("--input-size", type=_count(1), default=None,
                   help="image side the model runs on (default: the checkpoint's data set, else 32)")
    p.add_argument("--in-channels", type=_count(1), default=None, help="input channels (default: from the checkpoint, else 3)")
    p.add_argument("--num-classes", type=_count(1), default=None, help="classes (default: from the checkpoint, else 10)")
    p.add_argument("--zeros", choices=["auto", "dense", "off"], default="auto",
                   help="zero-padding spectrum: auto (dense when small, Lanczos extremes otherwise), dense only, off")
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME", help="only these module names")
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _set_threads(threads: int) -> None:
    import torch

    from procres.reports.demo import auto_threads

    torch.set_num_threads(threads or auto_threads())


def _run_spectrum(args):
    import torch

    from procres.diagnostics.convs import conv_spectra, spectrum_table
    from procres.files import json_text
    from procres.models.factory import load_model

    _set_threads(args.threads)
    torch.manual_seed(0)  # the weights of a model built without a checkpoint
    model, size, channels = load_model(args.model, checkpoint=args.checkpoint, image_size=args.input_size,
                                       in_channels=args.in_channels, num_classes=args.num_classes)
    p = next(model.parameters())
    x = torch.zeros(1, channels, size, size, dtype=p.dtype, device=p.device)
    rows = conv_spectra(model, x, zeros=args.zeros, names=args.layers)
    print(json_text(rows, indent=1) if args.json else spectrum_table(rows))
    return 0


# ---------------------------------------------------------------- inspect
def _add_input(p) -> None:
    """--input-shape | --input-ids, and --vocab: what inspect and study feed the model."""
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--input-shape", type=_count(1), nargs=3, metavar=("C", "H", "W"), default=None,
                       help="input shape without the batch (default: the data's, else 3 32 32)")
    shape.add_argument("--input-ids", type=_count(1), default=None, metavar="LEN",
                       help="token input: LEN random token ids in [0, vocab) per example (a language model's "
                            "logits get the next-token loss)")
    p.add_argument("--vocab", type=_count(1), default=None, metavar="N",
                   help="vocabulary of --input-ids (default: the model's config.vocab_size)")


def _json_kwargs(text: str) -> dict:
    import json

    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--kwargs must be a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"--kwargs must be a JSON object, got {text!r}")
    return kwargs


def _add_inspect(sub):
    p = sub.add_parser(
        "inspect", help="residual units, r_l and conv spectra of any model (a registered name or pkg.mod:factory)",
        description="Finds the residual units of MODEL by tracing it (torch.fx), else by its structure (the innermost "
                    "list of same-class modules that add their input to their output: every Hugging Face model), "
                    "measures the gradient-norm ratio r_l of each at initialisation and after a few SGD steps, and "
                    "the spectrum of every conv at the input size it sees. Examples: procres inspect resnet20 "
                    "--steps 5; procres inspect torchvision.models:resnet18 --input-shape 3 64 64 --kwargs "
                    "'{\"num_classes\": 10}'; procres inspect transformers:GPT2LMHeadModel --kwargs "
                    "'{\"n_layer\": 4}' --input-ids 32")
    p.add_argument("model", metavar="MODEL", help="a registered name (procres models) or an import path "
                                                   "package.module:factory, called with --kwargs")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    _add_input(p)
    p.add_argument("--batch", type=_count(1), default=8, help="examples per batch (default 8)")
    p.add_argument("--steps", type=_count(0), default=2, help="SGD steps between the two measurements (default 2)")
    p.add_argument("--lr", type=_positive_float, default=0.01, help="SGD learning rate (default 0.01, momentum 0.9)")
    p.add_argument("--data", default="random",
                   help="random (normal images, default), digits (embedded 1x16x16 set), cifar10:PATH or cifar100:PATH")
    p.add_argument("--units", default=None, metavar="PATTERN",
                   help="name the units instead of finding them: a glob on module names, * within one dotted "
                        "segment (e.g. 'layer*.*')")
    p.add_argument("--zeros", choices=["max", "auto", "dense", "off"], default="max",
                   help="extremes of each layer's own padded operator (zero, reflect or replicate padding): max "
                        "(default: sigma_max, and sigma_min where it comes free), auto (both: exact where "
                        "affordable, else Lanczos), dense (exact only), off")
    p.add_argument("--project", default=None, metavar="exact|downsample|GLOB",
                   help="also show the spectra of these convs before and after one exact Procrustes projection (of "
                        "a copy: the other numbers stay the model's): exact (kernel <= stride, no padding), "
                        "downsample (strided 1x1) or a glob of module names, as attach_procrustes(convs=...) takes")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the weights, the data and the SGD steps")
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--out", default="runs/inspect", help="folder for inspect.json and figures/ (default runs/inspect)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the tables")
    return p


def _run_inspect(args):
    import torch

    from procres.diagnostics.convs import spectrum_table
    from procres.diagnostics.inspection import inspect_model, projection_table, units_table, vocab_of
    from procres.files import json_text
    from procres.models.factory import build, input_kwargs
    from procres.reports.inspection import write_inspection
    from procres.training.data import make_batches

    kwargs = _json_kwargs(args.kwargs)
    _set_threads(args.threads)
    if args.data != "random" and (args.input_shape is not None or args.input_ids is not None):
        raise UserError("--input-shape and --input-ids come from --data when data is given; drop one of them")
    if args.vocab is not None and args.input_ids is None:
        raise UserError(f"--vocab {args.vocab} is the vocabulary of --input-ids LEN; give both or neither")
    count = max(args.steps, 2)
    if args.input_ids is not None:  # the vocabulary is the model's: build it first
        torch.manual_seed(args.seed)
        model = build(args.model, input_kwargs(args.model, None, kwargs))
        batches, shape = make_batches("random", input_shape=(args.input_ids,), batch=args.batch, count=count,
                                      seed=args.seed, vocab=vocab_of(model, args.vocab))
    else:
        batches, shape = make_batches(args.data, input_shape=args.input_shape or (3, 32, 32), batch=args.batch,
                                      count=count, seed=args.seed)
        kwargs = input_kwargs(args.model, shape, kwargs)  # zoo models are built for the input they will see
        torch.manual_seed(args.seed)
        model = build(args.model, kwargs)
    result = inspect_model(model, batches, steps=args.steps, lr=args.lr, pattern=args.units, zeros=args.zeros,
                           seed=args.seed, project=args.project, vocab=args.vocab)
    result["spec"] = {"model": args.model, "kwargs": kwargs, "data": args.data}
    paths = write_inspection(result, args.out)
    if args.json:
        print(json_text(result, indent=1))
        return 0
    print(units_table(result))
    print()
    print(spectrum_table(result["convs"]) if result["convs"] else "(no nn.Conv2d layers: the conv table is empty)")
    if "projection" in result:
        print(f"\none exact Procrustes projection of --project {args.project} (on a copy of the model), before -> after")
        print(projection_table(result["projection"]["layers"]))
    s = result["seconds"]
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}   "
          f"(trace {s['trace']:.1f} s, spectra {s['spectra']:.1f} s, r_l {s['record']:.1f} s)")
    return 0


# ---------------------------------------------------------------- study
def _add_study(sub):
    p = sub.add_parser(
        "study", help="the depth study of any model family: r_l vs depth, its figure and verdict",
        description="Builds each FACTORY at each depth, records r_l per unit at initialisation and after --steps SGD "
                    "steps, writes depth_study.json and the deviation-vs-depth figure into --out, and says, from "
                    "the numbers, whether norm preservation improves with depth. FACTORY: a model family "
                    "(prenorm_transformer, postnorm_transformer, resnet, preresnet, ...: depth by name) or "
                    "package.module:callable called with --depth-kwarg NAME=depth and --kwargs (a Hugging Face "
                    "model class is built from its config). Examples: procres study prenorm_transformer "
                    "postnorm_transformer --depths 2 8 32 --input-ids 32; procres study transformers:GPT2LMHeadModel "
                    "--depth-kwarg n_layer --depths 2 8 --kwargs '{\"n_embd\": 64, \"n_head\": 4}' --input-ids 32")
    p.add_argument("factories", nargs="+", metavar="FACTORY", help="model families or package.module:callable, "
                                                                   "one family each in the study")
    p.add_argument("--depth-kwarg", default=None, metavar="NAME",
                   help="the keyword argument that sets an import path's depth (n_layer for GPT-2)")
    p.add_argument("--depths", type=int, nargs="+", required=True, metavar="D", help="the depths to build")
    p.add_argument("--kwargs", default="{}", help="JSON object of further keyword arguments for every FACTORY")
    _add_input(p)
    p.add_argument("--steps", type=_count(0), default=5, help="SGD steps between the two measurements (default 5)")
    p.add_argument("--batch", type=_count(1), default=16, help="examples per batch (default 16)")
    p.add_argument("--measure", type=_count(1), default=2, help="batches each measurement averages over (default 2)")
    p.add_argument("--lr", type=_positive_float, default=0.02, help="SGD learning rate (default 0.02, momentum 0.9)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the weights, the data and the SGD steps")
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--out", default="runs/study", help="folder for depth_study.json and depth_study.png "
                                                       "(default runs/study)")
    return p


def _run_study(args):
    import time

    from procres.reports.study import run_study, study_table

    kwargs = _json_kwargs(args.kwargs)
    if args.vocab is not None and args.input_ids is None:
        raise UserError(f"--vocab {args.vocab} is the vocabulary of --input-ids LEN; give both or neither")
    _set_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()

    def progress(family, depth, seconds):
        print(f"  {family} at depth {depth}: {seconds:.1f} s", flush=True)

    done = run_study(args.factories, args.depths, out=args.out, steps=args.steps, depth_kwarg=args.depth_kwarg,
                     kwargs=kwargs, input_shape=args.input_shape, input_ids=args.input_ids, vocab=args.vocab,
                     batch_size=args.batch, measure_batches=args.measure, lr=args.lr, seed=args.seed,
                     on_model=progress)
    print(study_table(done["study"], done["findings"]))
    print(f"\nwritten: {', '.join(str(p) for p in done['paths'].values())}   ({time.perf_counter() - start:.1f} s, "
          f"{time.process_time() - cpu:.1f} s CPU)")
    return 0


# ---------------------------------------------------------------- train
def _add_train(sub):
    from procres.training.config import RESUME_MAY_CHANGE, add_config_arguments

    may_change = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE if k != "resume")
    p = sub.add_parser(
        "train",
        help="train a model (CIFAR-10/100 from local archives, or the embedded digits)",
        description="Train one model. Settings: TrainConfig defaults < --recipe < the flags you give. With "
        f"--resume the run's own settings take the place of the defaults and the recipe, and only {may_change} "
        "may differ from them. Example: procres train --model resnet20 --recipe demo --epochs 3",
    )
    p.add_argument("--seeds", type=_seed, nargs="+", metavar="S",
                   help="train once per seed in OUT/seed<S> and save mean +- std in OUT/summary.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch rows on stdout")
    add_config_arguments(p)
    return p


def _run_train(args):
    from procres.training.config import config_from_args, given_fields
    from procres.training.loop import resume_config, train, train_seeds

    config, given = config_from_args(args), given_fields(args)
    try:
        if args.seeds:
            summary = train_seeds(config, args.seeds, quiet=args.quiet, given=given)
            for key in ("final_test_error", "test_error_at_best_val"):
                s = summary[key]
                if s is not None:
                    print(f"{key}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f} % over seeds {summary['seeds']}")
        else:
            train(resume_config(config, given), quiet=args.quiet)
    except FloatingPointError as err:  # the run diverged: a fact about the run, not a bug
        if args.debug:
            raise
        print(f"procres train: error: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub):
    p = sub.add_parser("demo", help="the one-command demo on the embedded digits data set (CPU, minutes)",
                       description="Trains preresnet164, procresnet166 and plainpre164 on the embedded digits, runs "
                                   "a depth study up to 1001 layers and conv spectra, writes figures and report.md.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny budget (seconds): checks the pipeline, numbers mean little")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _run_demo(args):
    from procres.reports.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, threads=args.threads,
                      progress=not args.no_progress)
    print(result["table"])
    from procres.reports.verdicts import VERDICTS

    print("\nthe paper's claims, checked on these measurements (numbers in the report):")
    for f in result["findings"]:
        print(f"  {VERDICTS[f['holds']]:12s}  {f['text']}  [{f['where_text']}]")
    for line in result["by_depth"]:
        print(f"  depends on depth: {line}")
    print(f"\nreport: {result['report']}   figures: {result['report'].parent / 'figures'}   "
          f"({result['seconds']['total']:.0f} s, {result['threads']} thread(s))")
    return 0


# ---------------------------------------------------------------- plot
def _add_plot(sub):
    p = sub.add_parser("plot", help="figures from saved run folders")
    p.add_argument("folders", nargs="+", metavar="RUN_DIR",
                   help="run folders (config.json + history.jsonl), a demo folder, or folders "
                        "holding depth_study.json / spectra.json")
    p.add_argument("--out", default="figures", help="folder for the PNG files (default: figures)")
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="epochs drawn in the per-block ratio figure (default: 4 spread over training)")
    return p


def _run_plot(args):
    from procres.reports.plots import plot_runs

    for name, path in plot_runs(args.folders, args.out, epochs=args.epochs).items():
        print(f"{name:8s} {path}")


# ---------------------------------------------------------------- reproduce
def _add_reproduce(sub):
    p = sub.add_parser("reproduce", help="the paper's experiments as ready recipes",
                       description="Without --run/--smoke/--summary: print the plan (commands, seeds, GPU-hours).")
    p.add_argument("name", nargs="?", help="recipe name (see --list)")
    p.add_argument("--list", action="store_true", help="list the recipes with their expected GPU-hours")
    p.add_argument("--data", default="DATA", help="CIFAR archive (.tar.gz) or extracted folder")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (>1: torchrun + DDP)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=None, help="override the recipe's seeds")
    p.add_argument("--out", default="runs/reproduce", help="root folder of the run folders")
    p.add_argument("--run", action="store_true", help="execute the plan (days of GPU time for most recipes)")
    p.add_argument("--smoke", action="store_true",
                   help="run the plan end to end on CPU on a synthetic CIFAR-format archive (tiny depths, few steps)")
    p.add_argument("--summary", action="store_true", help="mean +- std test error of finished runs vs published")
    return p


def _run_reproduce(args):
    from procres.reports import reproduce

    if args.list:
        print(reproduce.list_recipes())
        return 0
    if args.name is None:
        raise UserError("give a recipe name or --list")
    if args.summary:
        table, _ = reproduce.summarize(args.name, out=args.out, seeds=args.seeds)
        print(table)
        return 0
    if args.smoke:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="procres-smoke-") as tmp:
            reproduce.smoke(args.name, args.out if args.out != "runs/reproduce" else tmp, quiet=False)
        return 0
    print(reproduce.describe(args.name, data=args.data, gpus=args.gpus, seeds=args.seeds, out=args.out))
    if args.run:
        if args.data == "DATA":
            raise UserError("--run needs --data PATH (the CIFAR archive or folder)")
        return reproduce.execute(args.name, data=args.data, gpus=args.gpus, seeds=args.seeds, out=args.out)
    return 0


# ---------------------------------------------------------------- entry point
_COMMANDS = ["models", "spectrum", "inspect", "study", "train", "demo", "plot", "reproduce"]
_DEBUG_HELP = "show the traceback of every error, including the one-sentence ones (bad values, missing files)"


def build_parser() -> argparse.ArgumentParser:
    from procres import __version__

    parser = argparse.ArgumentParser(
        prog="procres",
        description="Norm-preserving deep networks: conv spectra, Procrustes ResNets, gradient-norm diagnostics.",
    )
    parser.add_argument("--version", action="version", version=f"procres {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        p = globals()[f"_add_{name}"](sub)
        p.set_defaults(_handler=globals()[f"_run_{name}"])
        # also accepted after the command; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_handler", None) is None:
        parser.print_help()
        return 2
    try:
        result = args._handler(args)
    except (UserError, OSError) as err:  # user errors (bad value, path not there / not writable): a sentence
        if args.debug:
            raise
        print(f"procres {args.command}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)
