"""LAPACK on one intra-op thread: ``one_thread()`` around the spectral code's factorisations.

Measured on the development container (2 vCPUs, torch 2.13.0 CPU, MKL's LAPACK) while another
process kept one core busy, one thread against two: ``torch.linalg.svdvals`` of 100 128 x 128
complex128 blocks 0.27 s against 17-67 s, of 4 512 x 512 ones 0.5 s against 1-17 s; ``eigvalsh``
of the 128 x 128 batch 0.18 s against 0.6-4.6 s; in the ResNet-50 conv table at 224, the 17
single-block SVDs of the Lanczos starts 2.1 s against 43 s and 900 eigh of Lanczos tridiagonals
0.3 s against 15 s.  Matmuls and convolutions were at most about 2x slower on two threads (as
threaded code is when a core is taken) and up to 2x faster when a core was free.  So the spectral
code factorises on one thread and leaves the thread count to everything else."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread():
    """Run the enclosed torch CPU calls on one intra-op thread, then restore the count (which is
    process-wide: other Python threads running torch meanwhile see 1 too)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
