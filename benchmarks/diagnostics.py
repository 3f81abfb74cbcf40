"""Overhead of NormRecorder on a training step, measured against the same step without it.

One SGD step of a CIFAR ResNet (forward, cross-entropy, backward, optimizer step) is timed with
and without a ``NormRecorder`` on ``model.blocks``, interleaved in the same process (pairs
alternate their order so drift cancels), and the medians are compared.  The "with" timing
includes ``summary()`` after every step (one host sync and the dict), which is more than a
training loop pays (it calls ``summary()`` once per epoch), so the ratio is an upper bound.
Goal: ratio <= 1.05 for resnet56 on CPU.

Then an independent estimate: the time spent inside the recorder's own functions (cProfile)
over an unprofiled step, which the load of other processes disturbs less on a shared machine.

Last line: ``jacobian_singular_values`` (Lanczos, largest only) against the dense Jacobian SVD
for one resnet unit, both at the same point.

    python benchmarks/diagnostics.py                    # resnet56, batch 128, 32x32, 7 pairs
    python benchmarks/diagnostics.py --threads 1        # steadier on a shared machine
    python benchmarks/diagnostics.py --depth 20 --batch-size 64 --pairs 5
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

import torch
from torch import nn

from procres.diagnostics.jacobian import jacobian_singular_values
from procres.diagnostics.recorder import NormRecorder
from procres.models.resnet import resnet


def train_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn) -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads): the CPU time is less sensitive to
    other processes sharing the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def recorder_overhead(args) -> None:
    torch.manual_seed(0)
    model = resnet(args.depth, image_size=args.image_size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))

    def without():
        train_step(model, opt, x, y)

    def with_recorder():
        with NormRecorder(model.blocks, every=args.every) as rec:
            train_step(model, opt, x, y)
            rec.summary()

    for _ in range(args.warmup):
        without()
        with_recorder()
    off, on = [], []  # (wall, cpu) per step
    for i in range(args.pairs):
        if i % 2 == 0:
            off.append(timed_cpu(without))
            on.append(timed_cpu(with_recorder))
        else:
            on.append(timed_cpu(with_recorder))
            off.append(timed_cpu(without))
    print(f"resnet{args.depth} batch {args.batch_size} {args.image_size}x{args.image_size}, "
          f"{torch.get_num_threads()} threads, {args.pairs} interleaved pairs")
    for j, clock in enumerate(("wall", "cpu")):
        a, b = [t[j] for t in on], [t[j] for t in off]
        print(f"  {clock:4s} time per step: without recorder median {statistics.median(b) * 1e3:8.1f} ms, "
              f"with {statistics.median(a) * 1e3:8.1f} ms -> ratio {statistics.median(a) / statistics.median(b):.3f} "
              f"(median of pair ratios {statistics.median(x / y for x, y in zip(a, b)):.3f}, "
              f"min/min {min(a) / min(b):.3f})")


def recorder_self_time(args) -> None:
    """Independent estimate: time spent inside the recorder's hooks (cProfile, so Python-call
    overhead is over-counted) relative to an unprofiled step. Insensitive to other processes'
    load only insofar as both parts of the quotient see the same load."""
    torch.manual_seed(0)
    model = resnet(args.depth, image_size=args.image_size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    steps = 3
    plain = statistics.median(timed(lambda: train_step(model, opt, x, y)) for _ in range(steps))
    prof = cProfile.Profile()
    with NormRecorder(model.blocks) as rec:
        train_step(model, opt, x, y)
        prof.enable()
        for _ in range(steps):
            train_step(model, opt, x, y)
        rec.summary()
        prof.disable()
    # not nested in each other: a unit's forward hook is a lambda that reads its input and calls _traced_post
    entry_points = {"_traced_pre", "<lambda>", "hook", "summary"}
    inside = sum(ct for (path, _, name), (_, _, _, ct, _) in pstats.Stats(prof).stats.items()
                 if path.endswith(os.path.join("procres", "diagnostics", "recorder.py")) and name in entry_points)
    print(f"  time inside the recorder (cProfile): {inside / steps * 1e3:.1f} ms per step = "
          f"{inside / steps / plain:.3f} of an unprofiled step ({plain * 1e3:.0f} ms)")


def spectrum_cost(args) -> None:
    torch.manual_seed(0)
    unit = resnet(20, image_size=8).double().eval().blocks[1]
    x = torch.relu(torch.randn(1, 16, 8, 8, dtype=torch.float64))
    t_lanczos = timed(lambda: jacobian_singular_values(unit, x, k=1, which="largest"))
    spec = jacobian_singular_values(unit, x, k=1, which="largest")
    t_dense = timed(lambda: jacobian_singular_values(unit, x, k=1, which="largest", method="dense"))
    dense = jacobian_singular_values(unit, x, k=1, which="largest", method="dense")
    rel = abs(float(spec.largest[0] / dense.largest[0]) - 1)
    print(f"sigma_max of a resnet unit (J is 1024 x 1024, float64): Lanczos {t_lanczos * 1e3:.0f} ms "
          f"({spec.iterations} iterations), dense SVD {t_dense * 1e3:.0f} ms, "
          f"time ratio Lanczos/dense {t_lanczos / t_dense:.3f}, rel. difference {rel:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recorder_overhead(args)
    recorder_self_time(args)
    spectrum_cost(args)


if __name__ == "__main__":
    main()
