"""GPU epoch time: the default ``procres train`` pipeline vs a re-implementation of the authors', same card.

Self-contained: the data are random CIFAR-shaped uint8 images (50,000 training + 10,000 test, 10
classes) written as a CIFAR-10 python folder, so ``procres train`` reads them as it reads CIFAR-10;
no downloads, PIL or torchvision. For preresnet164 and procresnet166 at batch 128:

  ours      ``procres.training.loop.train`` itself, recipe ``paper`` (SGD momentum 0.9, weight decay
            1e-4, Procrustes projection p = 0.5 on ProcResNets), 45k/5k split, with the defaults of
            ``procres train`` on the machine, in variants of TrainConfig fields:
              default  nothing changed: on CUDA bf16 autocast, channels_last, the whole step as one
                       CUDA graph (procres.training.graphs; checked against an eager step at capture), every
                       10th step eager with the NormRecorder, the projection on the device route
              eager    --no-cuda-graphs
              norec    --record-every 0 (every step replayed: the graph path's ceiling)
              compile  --compile --no-cuda-graphs, only with --compile (compile time reported apart)
            Each variant trains 2 epochs of ``--steps`` steps (max_steps_per_epoch); the second
            epoch is timed: step time = batch / its images_per_sec (training only, the loop's own
            clock), eval_s = its epoch_time minus that training time (5k validation + 10k test
            images). capture_s and the self-check come from the run's result; peak memory is
            torch.cuda.max_memory_allocated over the whole run.
  authors'  torch.utils.data.DataLoader(num_workers=4, shuffle, pin_memory) over a Dataset whose
            __getitem__ does the per-sample transforms of torchvision's RandomCrop(32, padding=4,
            padding_mode="reflect") + RandomHorizontalFlip + ToTensor + Normalize, written in numpy;
            fp32 (PyTorch defaults: cuDNN may use TF32 for convolutions), contiguous (NCHW) memory,
            default SGD with the same settings; for procresnet166 the authors' projection
            (``faithful=True``: 10 Newton-Schulz iterations) with p = 0.5. ``--warmup`` (10) then
            ``--steps-authors`` (40) timed steps, one device sync at each end.

Epoch time = 390 steps (50,000 images, batch 128; the authors train on all of them) x step time,
training only; ``speedup[net]`` = authors' epoch time / the default pipeline's. Then:
  numerics   procresnet166, default vs eager from the same seed: 10 epochs of 20 steps (200
             steps), the per-epoch mean training losses (20-step windows) must agree within
             NUMERICS_TOLERANCE (relative): bf16 noise, cuDNN's non-deterministic reductions
  1003       procresnet1003, default pipeline: step time, peak memory, eval time
  full epoch one real epoch (351 steps + evaluation of 15k images) of the default pipeline for
             procresnet166 and preresnet164: the wall time ``procres reproduce`` quotes
             (``epoch_seconds``; procresnet1003's is 351 steps x its step time + its eval time)

No new measurement starts after ``--budget`` seconds (default 290). Results go to ``$OUT/latest.json``
after every measurement (a timeout keeps what was measured; with OUT unset, to
./gpu_latest.json) and the whole JSON is printed at the end, on one line. ``commit`` is $PROCRES_COMMIT, else
``git rev-parse HEAD``, else "unknown". ``benchmarks/gpu_report.py`` turns the JSON into the table
of docs/benchmarks.md and the EPOCH_SECONDS entries of procres/reports/reproduce.py.

    python benchmarks/gpu_epoch.py                 # on a GPU: about 3-4 min
    python benchmarks/gpu_epoch.py --smoke         # tiny nets and data, CPU (graph variants run eagerly) or GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from procres.training.config import TrainConfig
from procres.training.data import CIFAR10_MEAN, CIFAR10_STD
from procres.models.registry import create_model
from procres.constraints.hooks import attach_procrustes
from procres.training.loop import train

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
EPOCH_STEPS = 50_000 // 128  # the authors' epoch: all 50k training images
NUMERICS_TOLERANCE = 0.02  # relative difference of 20-step mean training losses, default vs eager
VARIANTS = {
    "default": {},
    "eager": {"cuda_graphs": False},
    "norec": {"record_every": 0},
    "compile": {"compile": True, "cuda_graphs": False},
}


# ---------------------------------------------------------------- data
def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 images in the CIFAR-10 python layout (procres.training.cifar reads them); returns the folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, n)]}

    per = n_train // 5
    for i in range(5):
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch(per), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]},
                                                       protocol=2))
    return folder


class AuthorsCifar(torch.utils.data.Dataset):
    """Per-sample transforms as in the authors' torchvision pipeline, in numpy (HWC uint8 in)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, pad: int = 4):
        self.images, self.labels, self.pad = images_hwc, labels, pad
        self.mean = np.asarray(MEAN, dtype=np.float32)[:, None, None]
        self.std = np.asarray(STD, dtype=np.float32)[:, None, None]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        h, w = img.shape[:2]
        p = self.pad
        img = np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")  # RandomCrop(padding=4, reflect)
        top, left = np.random.randint(0, 2 * p + 1, size=2)
        img = img[top:top + h, left:left + w]
        if np.random.rand() < 0.5:  # RandomHorizontalFlip
            img = img[:, ::-1]
        img = img.transpose(2, 0, 1).astype(np.float32) / 255.0  # ToTensor
        img = (img - self.mean) / self.std  # Normalize
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[i])


# ---------------------------------------------------------------- the two pipelines
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def authors(net: str, folder: Path, args, device) -> dict:
    from procres.training.cifar import read_cifar, SPECS

    x, y = read_cifar(SPECS["cifar10"], folder)[:2]
    torch.manual_seed(0)
    model = create_model(net).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    if model.transitions():
        attach_procrustes(model, opt, p=0.5, seed=0, faithful=True, method="newton_schulz")
    dataset = AuthorsCifar(x.transpose(0, 2, 3, 1).copy(), y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    if args.warmup + args.steps_authors > len(loader):
        raise SystemExit(f"--warmup + --steps-authors must fit one epoch of {len(loader)} batches")
    batches = iter(loader)  # one pass, so the workers stop with it

    def step():
        xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps_authors):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / args.steps_authors
    del batches  # stops the DataLoader's worker processes before the next measurement
    gc.collect()
    return {"step_ms": 1e3 * sec, "epoch_s": EPOCH_STEPS * sec, "steps_timed": args.steps_authors}


def ours(net: str, variant: str, folder: Path, args, device, *, steps: int, epochs: int = 2,
         val_size: int | None = None) -> dict:
    """Train ``net`` with ``procres.training.loop.train`` (recipe paper, the variant's fields changed) for
    ``epochs`` epochs of ``steps`` steps (0: full epochs); the last epoch is the measured one."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_recipe("paper", model=net, data=str(folder), epochs=epochs,
                                         max_steps_per_epoch=steps, val_size=args.val_size if val_size is None
                                         else val_size, batch_size=args.batch_size, checkpoint_minutes=0,
                                         out=str(Path(out) / "run"), **{**args.extra, **VARIANTS[variant]})
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = train(config, quiet=True)
        wall = time.perf_counter() - t0
    history = result["history"]
    last = history[-1]
    timed = last["step"] - history[-2]["step"]
    train_s = timed * args.batch_size / last["images_per_sec"]  # the loop's own clock: training only
    step_s = train_s / timed
    row = {"step_ms": 1e3 * step_s, "epoch_s": EPOCH_STEPS * step_s, "steps_timed": timed,
           "epoch_wall_s": last["epoch_time"], "eval_s": last["epoch_time"] - train_s, "run_s": wall,
           "cuda_graphs": bool(result["cuda_graphs"].get("ok")), "train_loss": last["train_loss"],
           "losses": [h["train_loss"] for h in history[1:]]}
    if result["cuda_graphs"]:
        row["capture_s"] = result["cuda_graphs"]["capture_s"]
        row["self_check"] = {k: v for k, v in result["cuda_graphs"].items() if k != "capture_s"}
    if variant == "compile" and len(history) > 2:  # epoch 1 compiled the step; epoch 2 did not
        first = (history[1]["step"] - history[0]["step"]) * args.batch_size / history[1]["images_per_sec"]
        row["compile_s"] = first - train_s * (history[1]["step"] - history[0]["step"]) / row["steps_timed"]
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del result
    gc.collect()
    return row


# ---------------------------------------------------------------- the plan
def plan(args, smoke: bool) -> list:
    """(label, what, callable kwargs) in the order they run; earlier ones matter more."""
    p166, p164, p1003 = ("procresnet13", "preresnet11", "procresnet22") if smoke else (
        "procresnet166", "preresnet164", "procresnet1003")
    steps, short = (2, 2) if smoke else (args.steps, 60)
    items = []
    for net in (p166, p164):
        items += [(net, "authors", {}), (net, "default", dict(steps=steps)), (net, "eager", dict(steps=short)),
                  (net, "norec", dict(steps=steps))]
    items.append((p166, "numerics", dict(steps=2 if smoke else 20, epochs=2 if smoke else 10)))
    items.append((p1003, "default", dict(steps=steps if smoke else 60)))
    for net in (p166, p164):
        items.append((net, "full_epoch", dict(steps=steps if smoke else 0, epochs=1)))
    if args.compile:
        items.append((p164, "compile", dict(steps=steps)))
    return items


def numerics(net, folder, args, device, *, steps, epochs) -> dict:
    """Default vs eager training losses over ``epochs`` x ``steps`` steps from one seed."""
    rows = {v: ours(net, v, folder, args, device, steps=steps, epochs=epochs, val_size=0) for v in ("default", "eager")}
    default, eager = rows["default"]["losses"], rows["eager"]["losses"]
    diffs = [abs(a - b) / abs(b) for a, b in zip(default, eager)]
    return {"steps": steps * epochs, "window": steps, "tolerance": NUMERICS_TOLERANCE, "default": default,
            "eager": eager, "max_rel_diff": max(diffs), "ok": max(diffs) <= NUMERICS_TOLERANCE,
            "cuda_graphs": rows["default"]["cuda_graphs"]}


def commit() -> str:
    if os.environ.get("PROCRES_COMMIT"):
        return os.environ["PROCRES_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarise(report: dict) -> None:
    """Fill report["speedup"] and report["epoch_seconds"] from the measurements so far."""
    nets = report["nets"]
    report["speedup"] = {net: round(row["authors"]["epoch_s"] / row["default"]["epoch_s"], 3)
                         for net, row in nets.items()
                         if "epoch_s" in row.get("authors", {}) and "epoch_s" in row.get("default", {})}
    seconds = {}
    for net, row in nets.items():
        if "epoch_wall_s" in row.get("full_epoch", {}):
            seconds[net] = {"seconds": round(row["full_epoch"]["epoch_wall_s"], 1), "measured": True}
        elif "step_ms" in row.get("default", {}):
            d = row["default"]
            steps = report["train_steps_per_epoch"]
            seconds[net] = {"seconds": round(steps * d["step_ms"] / 1e3 + d["eval_s"], 1), "measured": False}
    report["epoch_seconds"] = seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny nets and data: checks the script runs (CPU ok)")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile (preresnet164)")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch of the default/norec variants")
    parser.add_argument("--steps-authors", type=int, default=40, help="timed steps of the authors' pipeline")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of the authors' pipeline first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the authors' pipeline")
    parser.add_argument("--budget", type=float, default=290.0, help="seconds; no new measurement starts after it")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_train, n_test = (160, 32) if args.smoke else (50_000, 10_000)
    args.val_size = 32 if args.smoke else 5_000
    args.extra = dict(init_norm_batches=1, record_every=2) if args.smoke else {}
    if args.smoke:
        args.batch_size, args.warmup, args.steps_authors, args.workers = min(args.batch_size, 8), 1, 2, 1
    start = time.perf_counter()
    out_dir = os.environ.get("OUT")
    out_path = Path(out_dir, "latest.json") if out_dir else Path("gpu_latest.json")
    torch.backends.cudnn.benchmark = True
    report = {
        "commit": commit(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "smoke": args.smoke, "batch_size": args.batch_size, "epoch_steps": EPOCH_STEPS,
        "train_steps_per_epoch": (n_train - args.val_size) // args.batch_size,
        "nets": {}, "numerics": None, "speedup": {}, "epoch_seconds": {}, "errors": [], "skipped": [],
    }

    def save():
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        summarise(report)
        out_path.write_text(json.dumps(report, indent=1) + "\n")

    print(f"{report['gpu']}, torch {torch.__version__}, batch {args.batch_size}, commit {report['commit']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_fake_cifar10(Path(tmp), n_train, n_test)
        for net, what, kwargs in plan(args, args.smoke):
            label = f"{net} {what}"
            if time.perf_counter() - start > args.budget:
                report["skipped"].append(label)
                print(f"  {label}: skipped (budget {args.budget:.0f} s spent)", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                if what == "authors":
                    row = authors(net, folder, args, device)
                elif what == "numerics":
                    report["numerics"] = {"net": net, **numerics(net, folder, args, device, **kwargs)}
                    n = report["numerics"]
                    print(f"  {label}: default vs eager, {n['steps']} steps, max relative difference of "
                          f"{n['window']}-step mean losses {n['max_rel_diff']:.2e} (tolerance {n['tolerance']}): "
                          f"{'ok' if n['ok'] else 'MISMATCH'}", flush=True)
                    save()
                    continue
                elif what == "full_epoch":
                    row = ours(net, "default", folder, args, device, **kwargs)
                else:
                    row = ours(net, what, folder, args, device, **kwargs)
            except Exception as err:  # one failing measurement must not cost the others
                report["errors"].append(f"{label}: {type(err).__name__}: {err}")
                print(f"  {label}: FAILED {type(err).__name__}: {err}", flush=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                save()
                continue
            row.pop("losses", None)
            report["nets"].setdefault(net, {})[what] = row
            save()
            _print_row(label, row, report, net, time.perf_counter() - t0)
    save()
    print("latest.json: " + json.dumps(report), flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s; wrote {out_path}", flush=True)


def _print_row(label, row, report, net, seconds):
    text = f"  {label:<26} {row['step_ms']:8.1f} ms/step  epoch {row['epoch_s']:7.1f} s"
    if "capture_s" in row:
        text += f"  capture {row['capture_s']:.1f} s ({'graphs' if row['cuda_graphs'] else 'FELL BACK to eager'})"
    if "compile_s" in row:
        text += f"  compile {row['compile_s']:.0f} s"
    if "peak_memory_gib" in row:
        text += f"  peak {row['peak_memory_gib']:.2f} GiB"
    if "epoch_wall_s" in row and label.endswith("full_epoch"):
        text += f"  wall {row['epoch_wall_s']:.1f} s (eval {row['eval_s']:.1f} s)"
    if label.endswith(" default") and net in report["speedup"]:
        text += f"  {report['speedup'][net]:.2f}x the authors'"
    print(text + f"   [{seconds:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
