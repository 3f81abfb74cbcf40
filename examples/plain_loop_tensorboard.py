"""Per-block gradient-norm ratios r_l in TensorBoard from a hand-written PyTorch loop.

The three procres lines are marked (1), (2), (3); everything else is an ordinary training loop.
Runs in seconds on a CPU (a ResNet-8 on the digits set bundled with scikit-learn); needs the
tensorboard package (``pip install 'procrustes-resnets[tensorboard]'``). Then:

    python examples/plain_loop_tensorboard.py --out runs/plain-loop
    tensorboard --logdir runs/plain-loop      # scalars norm_ratio/block_*, histogram norm_ratio/log10
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

import procres


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/plain-loop", help="TensorBoard log folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = procres.load_dataset("digits")
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x_all = (data.train_x.float() / 255 - mean) / std
    model = procres.create_model("resnet8", num_classes=10, in_channels=1, image_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    writer = SummaryWriter(args.out)
    recorder = procres.NormRecorder(model.blocks, every=5)                  # (1) hooks on the units
    step = 0
    for epoch in range(args.epochs):
        for _ in range(args.steps):
            idx = torch.randint(len(x_all), (64,))
            loss = F.cross_entropy(model(x_all[idx]), data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            writer.add_scalar("loss/train", loss.item(), step)
        procres.log_norms(writer, recorder.summary(), step)                 # (2) r_l per block + histogram
        recorder.reset()                                                     # (3) a new window per epoch
    recorder.remove()
    writer.close()
    print(f"wrote {step} steps to {args.out}")


if __name__ == "__main__":
    main()
