"""What a training run prints: the logger behind ``train.log`` and stdout, the per-epoch table and
the progress bar.

Rank 0 logs to ``run_dir/train.log`` (timestamped) and, unless quiet, to stdout; other ranks stay
silent. The table has one fixed-width row per history record, errors in percent, ``-`` for a value
the record does not have (epoch 0's training metrics, validation without a split). The progress
bar shows only on a terminal.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["logger", "ROW_HEADER", "row", "progress", "bars_shown"]

ROW_HEADER = (f"{'epoch':>5} {'lr':>8} {'train loss':>10} {'train err':>9} {'val loss':>8} {'val err':>7} "
              f"{'test loss':>9} {'test err':>8} {'time s':>7} {'img/s':>7}")


def row(h: dict) -> str:
    """One history record as a line of the table under :data:`ROW_HEADER`."""
    def num(v, width, fmt):
        return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"

    def err(acc, width):
        return num(None if acc is None else 100 * (1 - acc), width, ".2f")

    return (f"{h['epoch']:>5} {h['lr']:>8.4g} {num(h['train_loss'], 10, '.4f')} {err(h['train_acc'], 9)} "
            f"{num(h['val_loss'], 8, '.4f')} {err(h['val_acc'], 7)} {num(h['test_loss'], 9, '.4f')} "
            f"{err(h['test_acc'], 8)} {num(h['epoch_time'], 7, '.1f')} {num(h['images_per_sec'], 7, '.0f')}")


def bars_shown() -> bool:
    """Whether progress bars go to standard error: only a terminal redraws a bar; a file or pipe
    would collect every carriage-return frame, so there the callers print one line per stage."""
    return sys.stderr.isatty()


def progress(iterable, total, desc, disable):
    """``iterable`` wrapped in a tqdm bar on a terminal; unchanged when ``disable`` or stderr is not a tty."""
    if disable or not bars_shown():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def logger(run_dir: Path, main: bool, quiet: bool) -> logging.Logger:
    """Rank 0 logs to run_dir/train.log and (unless quiet) to stdout; other ranks stay silent."""
    log = logging.getLogger(f"procres.train.{run_dir.resolve()}")  # one logger per run folder
    log.setLevel(logging.INFO)
    log.propagate = False
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(file)
        if not quiet:
            stream = logging.StreamHandler(sys.stdout)
            stream.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(stream)
    return log
