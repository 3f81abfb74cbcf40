"""Named training recipes and the learning-rate schedule.

Recipes (docs/theory.md section 6), applied over the ``TrainConfig`` defaults and under explicit
overrides:

``paper``   Zaeemzadeh et al. (the authors' PyTorch and Chainer code): SGD momentum 0.9, weight
            decay 1e-4, batch 128, lr 0.1 divided by 10 at epochs 150 and 225, 300 epochs,
            Procrustes projection with probability p = 0.5 after every step (it only acts on
            models whose ``transitions()`` is non-empty, i.e. ProcResNets).
``he2016``  He et al. 2016a, ResNet-20..1202: batch 128, lr 0.1 divided by 10 at 32k and 48k
            iterations, stop at 64k; with 50k training images and batch 128 (391 steps per epoch)
            that is epochs 82 and 123 of 164, the epoch form used here (with He's 45k/5k split,
            352 steps per epoch, the same iterations would fall at epochs ~91 and ~137 of ~182).
            ResNet-110 and ResNet-1202 warm up at lr 0.01 for the first 400 iterations ("until
            training error is below 80%"), then go *back* to 0.1 -- a step that popular
            re-implementations drop (the warm-up LR silently stays). No projection.
``demo``    the embedded digits data set, minutes on a CPU.

The learning-rate schedule is the pure function :func:`lr_at`; the training loop sets it before
every step, so the schedule carries no state of its own to checkpoint.
"""

from __future__ import annotations

import typing

__all__ = ["RECIPES", "lr_at"]


def _paper(model: str) -> dict:
    return dict(epochs=300, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=(150, 225),
                gamma=0.1, warmup_iters=0, projection_p=0.5)


def _he2016(model: str) -> dict:
    warm = model in ("resnet110", "resnet1202")
    return dict(epochs=164, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=(82, 123),
                gamma=0.1, warmup_lr=0.01, warmup_iters=400 if warm else 0, projection_p=0.0)


def _demo(model: str) -> dict:
    return dict(dataset="digits", pad=2, epochs=15, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                milestones=(10, 13), gamma=0.1, warmup_iters=0, projection_p=0.5, record_every=5)


RECIPES: dict[str, typing.Callable[[str], dict]] = {"paper": _paper, "he2016": _he2016, "demo": _demo}


# ---------------------------------------------------------------- schedule
def lr_at(config, epoch: int, iteration: int) -> float:
    """Learning rate for the step at 0-based ``epoch`` and 0-based global ``iteration``.

    ``warmup_lr`` while ``iteration < warmup_iters``, afterwards ``lr * gamma**k`` with ``k`` the
    number of milestones ``<= epoch`` (so with milestones (150, 225) epochs 0..149 use lr, 150..224
    use lr*gamma) -- the warm-up ends by returning to the scheduled value, not by staying low.
    """
    if iteration < config.warmup_iters:
        return config.warmup_lr
    k = sum(1 for m in config.milestones if m <= epoch)
    return config.lr * config.gamma**k
