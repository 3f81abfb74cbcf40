"""Seconds per CIFAR epoch on one GPU, for the GPU-hour estimates of `procres reproduce`.

Not a speed claim (nothing is compared): it times the work of one epoch of the paper recipe for
each model, on CIFAR-shaped random data already on the device, the way procres.training.loop runs it:
SGD momentum 0.9 + weight decay, batch 128, bf16 autocast, channels_last, the Procrustes hook
with p = 0.5 on ProcResNets, plus evaluation of 5k validation + 10k test images at batch 1024.
Norm recording (every 10 steps) and data augmentation are left out (a few % at most).

    epoch_seconds = 352 * train_step + 15 * eval_batch      (45k / 128 steps, 15k / 1024 batches)

Prints one line per model and a dict ready for procres/reports/reproduce.py's EPOCH_SECONDS.
Usage: python benchmarks/reproduce_cost.py [--models resnet20 preresnet164 ...] [--steps 20]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from procres.models.registry import create_model
from procres.constraints.hooks import attach_procrustes

DEFAULT = ["resnet20", "resnet56", "resnet110", "preresnet164", "procresnet166", "resnet1202",
           "preresnet1001", "procresnet1003"]


def time_model(name, *, steps, device, batch=128, eval_batch=1024):
    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    hook = attach_procrustes(model, opt, p=0.5) if model.transitions() else None
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_step = (time.perf_counter() - t0) / steps

    model.eval()
    xe = torch.randn(eval_batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(xe)
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            model(xe)
        sync()
    eval_batch_s = (time.perf_counter() - t0) / 3
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if hook is not None:
        hook.remove()
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"train_step_ms": 1e3 * train_step, "eval_batch_ms": 1e3 * eval_batch_s,
            "epoch_s": 352 * train_step + 15 * eval_batch_s, "peak_gib": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    out = {}
    for name in args.models:
        r = time_model(name, steps=args.steps, device=device)
        out[name] = round(r["epoch_s"], 1)
        print(f"{name:16s} step {r['train_step_ms']:7.1f} ms  eval/1024 {r['eval_batch_ms']:7.1f} ms  "
              f"epoch {r['epoch_s']:7.1f} s  300 epochs {300 * r['epoch_s'] / 3600:5.2f} h  "
              f"peak {r['peak_gib']:.1f} GiB", flush=True)
    print("EPOCH_SECONDS =", json.dumps(out))


if __name__ == "__main__":
    main()
