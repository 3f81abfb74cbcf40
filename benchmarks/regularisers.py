"""Spectral normalisation of the conv operator vs torch's reshaped-matrix one: norms, accuracy, cost.

Two tables (markdown on stdout):

1. torch's ``parametrizations.spectral_norm`` on typical convs (He-initialised by nn.Conv2d, zero
   padding): after ``--forwards`` training-mode forwards, the exact operator norm of the weight it
   produces (``procres.spectral.spectra.exact_extremes``, the layer's own padding; Lanczos to 1e-10
   where the dense route is too large), beside ``procres.spectral_norm``'s default.  A correct
   normalisation gives 1 (ours: at most 1, the exact route bounds the zero-padded norm by the
   circular one on the padded grid).
2. A small conv net (3 convs + linear) trained on the bundled digits set from the same initial
   weights on the same batches: no regulariser, torch's ``spectral_norm`` on every conv, and
   ``procres.spectral_norm`` on every conv (``input_size=None``: learnt at the first forward) with
   each way of estimating sigma (:data:`OURS`): the power iteration (1 vector, torch's algorithm on
   the true operator), the block power iteration (4 vectors, Rayleigh-Ritz), the exact route.  Per
   conv, the exact operator norm of the layer's own zero-padded operator at the end of training
   (eval mode; goal: <= 1 + 1e-3), the final test accuracy, and the step time (forward, backward,
   optimizer step) as a ratio to no regulariser (goal: <= 1.3x with ``n_power_iterations=1``): the
   variants' steps are interleaved, in a rotating order, so that a noisy machine slows all of them
   alike; the ratio is of median step times (the first ``WARMUP`` steps are not timed).  Wall and
   CPU seconds of the whole run and the load average are printed with it.

    python benchmarks/regularisers.py                                # ~3 min on 1 core
    python benchmarks/regularisers.py --steps 60 --forwards 20       # tiny mode, under a minute (45 s)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from procres.constraints.spectral_norm import spectral_norm
from procres.diagnostics.convs import find_convs
from procres.spectral.spectra import conv_operator_norm, exact_extremes
from procres.training.data import load_dataset

WARMUP = 10

#: ours, by label: the keywords of procres.spectral_norm
OURS = {
    "procres power (1 vector)": dict(exact=False),
    "procres block power (4 vectors)": dict(exact=False, vectors=4),
    "procres exact (default)": dict(exact=True),
}

#: (label, Conv2d keywords, input size) of the first table
TYPICAL = [
    ("3x3 pad 1, 64->64 @ 8x8", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), 8),
    ("3x3 pad 1, 64->64 @ 16x16", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), 16),
    ("3x3 pad 1, 64->64 @ 32x32", dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), 32),
    ("3x3 pad 1, 16->16 @ 32x32", dict(in_channels=16, out_channels=16, kernel_size=3, padding=1), 32),
    ("1x1 stride 2, 64->128 @ 16x16", dict(in_channels=64, out_channels=128, kernel_size=1, stride=2), 16),
    ("3x3 stride 2 pad 1, 64->128 @ 16x16",
     dict(in_channels=64, out_channels=128, kernel_size=3, stride=2, padding=1), 16),
    ("3x3 stride 2 pad 1, 16->32 @ 16x16",
     dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, padding=1), 16),
]


def operator_norm(conv: nn.Conv2d, size) -> tuple[float, bool]:
    """The largest singular value of ``conv``'s weight as it is now, own padding, and whether it is
    exact (``exact_extremes``: FFT, patch or dense) or Lanczos (tol 1e-10, where no dense route is
    affordable: only the top value is needed, not the slow smallest one ``conv_extremes`` adds)."""
    exact = exact_extremes(conv, size)
    if exact is not None:
        return exact["sigma_max"], True
    return conv_operator_norm(conv, size, tol=1e-10), False


def torch_error_table(forwards: int, seed: int = 0) -> list[str]:
    rows = ["| conv | torch: operator norm | torch off by | ours: operator norm | ours off by |",
            "|---|---|---|---|---|"]
    for label, kwargs, n in TYPICAL:
        torch.manual_seed(seed)
        base = nn.Conv2d(**kwargs)
        x = torch.randn(1, kwargs["in_channels"], n, n)
        theirs, ours = torch_spectral_norm(copy.deepcopy(base)), spectral_norm(copy.deepcopy(base), n)
        norms = []
        for conv in (theirs, ours):
            with torch.no_grad():
                for _ in range(forwards):
                    conv(x)
            conv.eval()
            norms.append(operator_norm(conv, n))
        cells = [f"{s:.4f}{'' if exact else ' (Lanczos)'} | {100 * (s - 1):+.1f} %" for s, exact in norms]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


# ----------------------------------------------------------------------------- the net
class SmallNet(nn.Module):
    """conv 3x3 (1 -> w) -> conv 3x3 stride 2 (w -> 2w) -> conv 3x3 stride 2 (2w -> 2w) -> linear,
    ReLU between, zero padding 1, no normalisation layers; input ``(B, 1, n, n)``."""

    def __init__(self, width: int = 16, image_size: int = 16, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width * (image_size // 4) ** 2, classes)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = F.relu(self.conv3(out))
        return self.head(out.flatten(1))


def variants(base: nn.Module, n_power_iterations: int, image_size: int) -> dict:
    """The models, from the same initial weights; the first forward gives ours their input sizes."""
    out = {"none": copy.deepcopy(base), "torch spectral_norm": copy.deepcopy(base)}
    for name in ("conv1", "conv2", "conv3"):
        torch_spectral_norm(getattr(out["torch spectral_norm"], name), n_power_iterations=n_power_iterations)
    for label, keywords in OURS.items():
        out[label] = copy.deepcopy(base)
        for name in ("conv1", "conv2", "conv3"):
            spectral_norm(getattr(out[label], name), n_power_iterations=n_power_iterations, **keywords)
        with torch.no_grad():
            out[label](torch.zeros(1, 1, image_size, image_size))
    return out


def train_step(model, opt, x, y) -> float:
    """One step; returns its wall time in seconds."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def train_all(models: dict, data, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Adam on every model over the same batches, interleaved; -> {name: [step seconds]}."""
    opts = {k: torch.optim.Adam(m.parameters(), lr=lr) for k, m in models.items()}
    times = {k: [] for k in models}
    loader = data.loader("train", batch_size=batch_size, seed=seed, pad=1 if data.image_size == 8 else 2)
    names, step = list(models), 0
    while step < steps:
        for x, y in loader:
            if step == steps:
                break
            turn = step % len(names)
            for k in names[turn:] + names[:turn]:              # rotate who runs first
                t = train_step(models[k], opts[k], x, y)
                if step >= WARMUP:
                    times[k].append(t)
            step += 1
    return times


def training_table(steps: int, batch_size: int, image_size: int, lr: float, seed: int,
                   n_power_iterations: int = 1) -> list[str]:
    data = load_dataset("digits", image_size=image_size)
    torch.manual_seed(seed)
    base = SmallNet(image_size=image_size)
    sizes = {s.name: s.input_size for s in find_convs(base, torch.zeros(1, 1, image_size, image_size))}
    models = variants(base, n_power_iterations, image_size)
    times = train_all(models, data, steps, batch_size, lr, seed)
    (test_x, test_y), = list(data.loader("test", batch_size=len(data.test_y)))
    reference = statistics.median(times["none"])
    header = ["variant", *[f"{c} ({sizes[c][0]}x{sizes[c][1]}) operator norm" for c in sizes],
              "test accuracy", "step time / none", "median step (ms)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, model in models.items():
        acc = accuracy(model, test_x, test_y)
        norms = [operator_norm(getattr(model, c), sizes[c]) for c in sizes]
        median = statistics.median(times[k])
        cells = [f"{s:.4f}" + ("" if exact else " (Lanczos)") for s, exact in norms]
        rows.append(f"| {k} | " + " | ".join(cells) + f" | {100 * acc:.1f} % | {median / reference:.2f}x "
                    f"| {1e3 * median:.2f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=16, choices=(8, 16))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--forwards", type=int, default=100, help="training-mode forwards in the first table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier when shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-power-iterations", type=int, default=1)
    parser.add_argument("--skip-typical", action="store_true", help="only the training table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    if not args.skip_typical:
        print(f"torch's spectral_norm vs the operator norm ({args.forwards} training-mode forwards, zero padding)\n")
        print("\n".join(torch_error_table(args.forwards, args.seed)), "\n")
    print(f"SmallNet on digits {args.image_size}x{args.image_size}, {args.steps} steps of {args.batch_size}, "
          f"Adam lr {args.lr}, seed {args.seed}, n_power_iterations {args.n_power_iterations}\n")
    print("\n".join(training_table(args.steps, args.batch_size, args.image_size, args.lr, args.seed,
                                    args.n_power_iterations)))
    print(f"\n{time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
