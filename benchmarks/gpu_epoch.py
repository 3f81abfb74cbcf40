"""GPU epoch time: our training pipeline vs a re-implementation of the authors' pipeline, same card.

Self-contained: the data are random CIFAR-shaped uint8 images (50,000 x 3 x 32 x 32, 10 classes);
no CIFAR files, PIL or torchvision are needed. For preresnet164 and procresnet166, at batch 128:

  ours       the loop of ``procres train``: procres.data.DeviceLoader (uint8 data resident on the
             GPU, batched crop/flip/normalise on the device, channels_last), channels_last
             weights, fused SGD momentum 0.9 and weight decay 1e-4, the running loss/accuracy sums,
             a NormRecorder on every 10th step (the ``procres train`` default), and for
             procresnet166 the exact Procrustes projection hook with p = 0.5. Variants:
               ours-bf16         bf16 autocast, eager (``procres train`` default)
               ours-fp32         fp32, eager
               ours-graphs       bf16, forward + loss + backward replayed as CUDA graphs
                                 (``procres.train.graphed_loss``, the ``procres train`` default on
                                 CUDA); optimizer step and projection eager; every 10th step runs
                                 eagerly with the recorder, as in ``procres train``
               ours-graphs-fp32  the same in fp32
               ours-graphs-norec ours-graphs without the recorder (``--record-every 0``): all
                                 steps replayed, the ceiling of the graph path
               ours-compile      only with --compile: bf16, torch.compile, no recorder
  authors'   torch.utils.data.DataLoader(num_workers=4, shuffle, pin_memory) over a Dataset whose
             __getitem__ does the per-sample transforms of torchvision's RandomCrop(32, padding=4,
             padding_mode="reflect") + RandomHorizontalFlip + ToTensor + Normalize, written in
             numpy; fp32 (PyTorch defaults: cuDNN may use TF32 for convolutions), contiguous
             (NCHW) memory, default SGD with the same settings; for procresnet166 the authors'
             projection (``faithful=True``: 10 Newton-Schulz iterations) with p = 0.5.

Each pipeline runs ``--warmup`` steps (default 10), then ``--steps`` timed steps (default 40; one
device sync at each end of the window); graph capture happens before the warm-up and is reported
apart (``capture_s``). The epoch time is extrapolated to 390 steps (50,000 images, batch 128,
last partial batch dropped); evaluation is not included; cudnn.benchmark is on for all. The
speed-up of each variant is the authors' epoch time over its own. Then the peak GPU memory of one
eager forward/backward/step of procresnet1003 at batch 128 (torch.cuda.max_memory_allocated,
cudnn.benchmark off so that algorithm trials do not count), bf16 autocast + channels_last and fp32.

A variant that fails (capture error, out of memory) is reported with its error and the others
still run. No new measurement starts after ``--budget`` seconds (default 140). Results are
printed and, when the environment variable OUT is set, written to ``$OUT/gpu_epoch.json`` after
every measurement (a timeout keeps what was measured).

    python benchmarks/gpu_epoch.py                 # on a GPU: about 1-2 min
    python benchmarks/gpu_epoch.py --smoke         # tiny nets and data, CPU (graph variants skipped) or GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from procres.data import CIFAR10_MEAN, CIFAR10_STD, DeviceLoader
from procres.diagnostics import NormRecorder
from procres.models import preresnet, procresnet
from procres.procrustes import attach_procrustes
from procres.train import graphed_loss

RECORD_EVERY = 10  # the procres train default

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(batches, step, warmup: int, steps: int, device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup``; ``batches`` yields (x, y) forever."""
    for _ in range(warmup):
        step(*next(batches))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    _sync(device)
    return (time.perf_counter() - t0) / steps


def forever(make_iter):
    while True:
        yield from make_iter()


def make_model(name, depth, device, channels_last):
    torch.manual_seed(0)
    factory = {"preresnet": preresnet, "procresnet": procresnet}[name]
    model = factory(depth).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sgd(model, fused=False):
    extra = {"fused": True} if fused else {}
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **extra)


# our pipeline's variants: bf16 autocast, CUDA graphs (procres.train.graphed_loss), torch.compile
VARIANTS = {
    "ours-bf16": dict(amp=True, graphs=False, compile=False, record=True),
    "ours-fp32": dict(amp=False, graphs=False, compile=False, record=True),
    "ours-graphs": dict(amp=True, graphs=True, compile=False, record=True),
    "ours-graphs-fp32": dict(amp=False, graphs=True, compile=False, record=True),
    "ours-graphs-norec": dict(amp=True, graphs=True, compile=False, record=False),  # --record-every 0
    "ours-compile": dict(amp=True, graphs=False, compile=True, record=False),  # only with --compile
}


def ours(name, depth, data, args, device, *, amp, graphs, compile, record):
    """Seconds per step of procres.train's loop (same order of operations), and extra facts."""
    x, y = data
    cuda = device.type == "cuda"
    amp = amp and cuda
    model = make_model(name, depth, device, channels_last=True)
    opt = sgd(model, fused=cuda)  # as procres.train
    if model.transitions():
        attach_procrustes(model, opt, p=0.5, seed=0)
    loader = DeviceLoader(x, y, batch_size=args.batch_size, train=True, mean=MEAN, std=STD, device=device,
                          channels_last=True, seed=0)
    extra = {}
    graphed = None
    if graphs:
        t0 = time.perf_counter()
        sample = torch.zeros(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        graphed = graphed_loss(model, sample, torch.zeros(args.batch_size, dtype=torch.int64, device=device), amp=amp)
        _sync(device)
        extra["capture_s"] = round(time.perf_counter() - t0, 2)
    # as in procres.train: with compile the recorder's hooks would split the graph, so it is left out;
    # with graphs every 10th step runs eagerly with the recorder (every=1 counts only those)
    recorder = NormRecorder(model.blocks, every=1 if graphs else RECORD_EVERY) if record else None
    net = torch.compile(model) if compile else model
    amp_args = dict(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    # the loop's running loss / accuracy sums and non-finite-loss count
    sums = [torch.zeros((), dtype=torch.float64, device=device)] + [
        torch.zeros((), dtype=torch.int64, device=device) for _ in range(2)]
    count = [0]

    def step(xb, yb):
        if graphed is not None and (recorder is None or count[0] % RECORD_EVERY):
            loss, out = graphed(xb, yb)
        else:
            with torch.autocast(**amp_args):
                out = net(xb)
                loss = F.cross_entropy(out, yb)
        sums[2] += torch.isfinite(loss).logical_not().long()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums[0] += loss.detach().double() * len(yb)
        sums[1] += (out.argmax(1) == yb).sum()
        count[0] += 1

    sec = time_steps(forever(lambda: iter(loader)), step, args.warmup, args.steps, device)
    if recorder is not None:
        extra["norm_steps_recorded"] = recorder.summary()["steps_recorded"]
        recorder.remove()
    return sec, extra


def authors(name, depth, data, args, device):
    x, y = data
    model = make_model(name, depth, device, channels_last=False)
    opt = sgd(model)
    if model.transitions():
        attach_procrustes(model, opt, p=0.5, seed=0, faithful=True, method="newton_schulz")
    dataset = AuthorsCifar(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)

    def step(xb, yb):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(forever(lambda: iter(loader)), step, args.warmup, args.steps, device), {}


def peak_memory(depth, args, device, bf16: bool):
    """Peak bytes of one forward/backward/step of procresnet(depth) at batch_size (CUDA only)."""
    model = make_model("procresnet", depth, device, channels_last=bf16)
    opt = sgd(model)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False  # no trial workspaces
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    torch.backends.cudnn.benchmark = benchmark
    del model, opt, x, y, loss
    torch.cuda.empty_cache()
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny nets and data: checks the script runs (CPU ok)")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile (bf16, no recorder)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per pipeline (default 40; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; smoke 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the authors' pipeline")
    parser.add_argument("--budget", type=float, default=140.0, help="seconds; no new measurement starts after it")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        n, nets, mem_depth = 512, [("preresnet", 11), ("procresnet", 13)], 13
        args.steps, args.warmup, args.batch_size = args.steps or 3, args.warmup or 1, min(args.batch_size, 32)
        args.workers = min(args.workers, 2)
    else:
        n, nets, mem_depth = 50_000, [("preresnet", 164), ("procresnet", 166)], 1003
        args.steps, args.warmup = args.steps or 40, args.warmup or 10
    variants = [v for v in VARIANTS if args.compile or not VARIANTS[v]["compile"]]
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    out_path = os.path.join(os.environ["OUT"], "gpu_epoch.json") if os.environ.get("OUT") else None
    steps_per_epoch = 50_000 // args.batch_size
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "batch_size": args.batch_size,
        "steps_timed": args.steps, "warmup": args.warmup, "workers": args.workers, "record_every": RECORD_EVERY,
        "epoch_steps": steps_per_epoch, "epoch": {}, "peak_memory_gib": {},
    }

    def save():
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        if out_path:
            with open(out_path, "w") as f:
                json.dump(report, f, indent=2)

    def over_budget(what):
        if time.perf_counter() - start <= args.budget:
            return False
        print(f"  {what}: skipped (budget {args.budget:.0f} s spent)", flush=True)
        return True

    def release():
        gc.collect()  # a graphed callable and its graphs form a reference cycle
        if device.type == "cuda":
            torch.cuda.empty_cache()

    gen = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (n,), generator=gen))
    print(f"{report['device']}, torch {torch.__version__}, batch {args.batch_size}, {args.warmup}+{args.steps} steps "
          f"per pipeline, epoch = {steps_per_epoch} steps", flush=True)
    for name, depth in nets:
        label = f"{name}{depth}"
        row = report["epoch"].setdefault(label, {})
        for pipeline in ["authors", *variants]:
            if over_budget(f"{label} {pipeline}"):
                continue
            if VARIANTS.get(pipeline, {}).get("graphs") and device.type != "cuda":
                print(f"  {label:<15} {pipeline:<17} skipped: CUDA graphs need a GPU", flush=True)
                continue
            try:
                if pipeline == "authors":
                    sec, extra = authors(name, depth, data, args, device)
                else:
                    sec, extra = ours(name, depth, data, args, device, **VARIANTS[pipeline])
            except Exception as err:  # one failing variant must not cost the others
                row[pipeline] = {"error": f"{type(err).__name__}: {err}"}
                print(f"  {label:<15} {pipeline:<17} FAILED {type(err).__name__}: {err}", flush=True)
                release()
                save()
                continue
            release()
            row[pipeline] = {"step_ms": 1000 * sec, "images_per_sec": args.batch_size / sec,
                             "epoch_s": steps_per_epoch * sec, **extra}
            if "step_ms" in row.get("authors", {}) and pipeline != "authors":
                row[pipeline]["speedup"] = row["authors"]["epoch_s"] / row[pipeline]["epoch_s"]
            speedup = row[pipeline].get("speedup")
            print(f"  {label:<15} {pipeline:<17} {1000 * sec:8.1f} ms/step {args.batch_size / sec:9.0f} img/s "
                  f"epoch {steps_per_epoch * sec:7.1f} s" + (f"  {speedup:5.2f}x authors'" if speedup else "")
                  + (f"  (capture {extra['capture_s']:.1f} s)" if "capture_s" in extra else ""), flush=True)
            save()
        best = max((v for v in row.values() if v.get("speedup")), key=lambda v: v["speedup"], default=None)
        if best is not None:
            name_best = next(k for k, v in row.items() if v is best)
            print(f"  {label:<15} best: {name_best} {best['speedup']:.2f}x the authors' pipeline (target >= 4x)",
                  flush=True)
    if device.type == "cuda":
        for kind, bf16 in (("bf16", True), ("fp32", False)):
            if over_budget(f"peak memory procresnet{mem_depth} {kind}"):
                continue
            release()
            try:
                peak = peak_memory(mem_depth, args, device, bf16) / 2**30
                shown = f"{peak:.2f} GiB"
            except torch.cuda.OutOfMemoryError:
                peak, shown = None, "out of memory"
            except Exception as err:
                peak, shown = None, f"FAILED {type(err).__name__}: {err}"
            release()
            report["peak_memory_gib"][f"procresnet{mem_depth}_{kind}"] = peak
            print(f"  peak memory procresnet{mem_depth} batch {args.batch_size} {kind}: {shown}", flush=True)
            save()
    save()
    print(f"done in {time.perf_counter() - start:.0f} s" + (f"; wrote {out_path}" if out_path else ""), flush=True)


if __name__ == "__main__":
    main()
