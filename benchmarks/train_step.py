"""Cost of the Procrustes projection in a training step: ProcResNet vs ResNet, same run, ratio.

One SGD step (forward, cross-entropy, backward, optimizer step) of three nets is timed in the
same process, interleaved (each round runs the three in a rotated order, so drift and
neighbours' load hit all of them alike); medians are compared:

  proc+hook   procresnet(depth) with the projection hook, p = 0.5 (the paper's setting)
  proc        the same net and weights with the hook removed: the cost of the projection alone
  preresnet   preresnet(depth - 2): the same n bottlenecks per stage, i.e. the ResNet the paper
              compares with (its stride-2 projections live in shortcuts instead of transitions)

Printed ratios: proc+hook / preresnet (goal <= 1.03 on CPU at small depth) and
proc+hook / proc. The projection's cost does not grow with depth (three convs: the stem and two
1x1 transitions, FFT grids of image_size, /2, /4), so the ratio falls as depth grows; at small
depth on a CPU it is dominated by the per-frequency SVDs. Settings match ``procres train``
(channels_last, SGD momentum 0.9, weight decay 1e-4).

    python benchmarks/train_step.py                        # depth 22, batch 64, 32x32, 15 rounds
    python benchmarks/train_step.py --depth 58 --rounds 9 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from procres.models.preact import preresnet
from procres.models.procresnet import procresnet
from procres.constraints.hooks import attach_procrustes


def make(factory, depth, args):
    torch.manual_seed(0)
    model = factory(depth, image_size=args.image_size).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return model, opt


def step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=22, help="ProcResNet depth 9n+4 (13, 22, 31, ...)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--p", type=float, default=0.5, help="projection probability")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    proc_hook, opt_hook = make(procresnet, args.depth, args)
    attach_procrustes(proc_hook, opt_hook, p=args.p, seed=0)
    proc, opt_proc = make(procresnet, args.depth, args)
    pre, opt_pre = make(preresnet, args.depth - 2, args)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    nets = {"proc+hook": (proc_hook, opt_hook), "proc": (proc, opt_proc), "preresnet": (pre, opt_pre)}
    names = list(nets)
    for name in names:  # warm-up
        for _ in range(2):
            step(*nets[name], x, y)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            t0 = time.perf_counter()
            step(*nets[name], x, y)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"step time, median of {args.rounds} interleaved rounds; batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, {torch.get_num_threads()} threads, p = {args.p}")
    for name in names:
        label = {"proc+hook": f"procresnet{args.depth} + projection", "proc": f"procresnet{args.depth}, no hook",
                 "preresnet": f"preresnet{args.depth - 2}"}[name]
        print(f"  {label:<32} {1000 * med[name]:8.1f} ms")
    print(f"ratio procresnet{args.depth}+projection / preresnet{args.depth - 2}: "
          f"{med['proc+hook'] / med['preresnet']:.3f}   (target <= 1.03)")
    print(f"ratio procresnet{args.depth}+projection / procresnet{args.depth} without hook: "
          f"{med['proc+hook'] / med['proc']:.3f}")
    # the projection alone, with less noise than a difference of two step medians
    # (a hook with p = 1 on an optimizer whose step has no gradients to apply)
    layers = proc.transitions()
    idle = torch.optim.SGD(proc.parameters(), lr=0.0)
    attach_procrustes(proc, idle, p=1.0, seed=0)
    costs = []
    idle.step()  # warm-up
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        idle.step()
        costs.append(time.perf_counter() - t0)
    cost = statistics.median(costs)
    print(f"projection of all {len(layers)} transition convs: {1000 * cost:.1f} ms; expected per step at "
          f"p = {args.p}: {1000 * args.p * cost:.1f} ms = {100 * args.p * cost / med['proc']:.1f}% of the step")


if __name__ == "__main__":
    main()
