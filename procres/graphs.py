"""CUDA graphs for the training step: forward, loss and backward captured once, then replayed.

A 164-layer net at batch 128 is launch-bound on a large GPU: replaying a captured graph costs a
few launches instead of thousands. :func:`graphed_loss` captures ``model``'s training forward,
the cross-entropy and the backward with ``torch.cuda.make_graphed_callables``.

How the training loop uses it (``cuda_graphs``, opt-in with ``--cuda-graphs``, for a single CUDA
process without ``compile``): ``procres.run.capture_graphs`` captures once per run. What stays
eager: copying each batch into the graph's static input (the train loader drops the last
partial batch, so every batch has the captured shape; any other shape runs eagerly), the
optimizer step (fused SGD on CUDA, where torch has it) and the Procrustes hook, which writes the
projected kernel into the weight's own storage (``copy_``), where the graph reads it. BN runs in
training mode inside the graph; the running statistics changed by the capture's warm-up
iterations are restored, so the graph path starts from the same state as the eager one. The
norm recorder's hooks cannot run inside a graph, so the recorded steps (global step a multiple
of ``record_every``) run eagerly with the recorder, the same forward, loss, backward and update
on the same batch: the history's norms mean the same with and without graphs (an eager step
costs a whole eager step; raise ``record_every`` to pay it less often). Evaluation and the norm
probes are eager (the captured callable wraps the model; the model itself is untouched). Not
with DDP (the gradient all-reduce would need capturing too; DDP runs train eagerly) and not with
``compile`` (the config refuses both at once). If capture fails (an operation that cannot be
captured, an older torch), a warning is logged and the run trains eagerly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from procres.errors import UserError

__all__ = ["graphed_loss"]


def graphed_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: bool):
    """Capture ``model``'s training forward + cross-entropy and its backward as CUDA graphs.

    Returns ``step(x, y) -> (loss, logits)``, a drop-in for the eager
    ``out = model(x); loss = F.cross_entropy(out, y)`` (under bf16 autocast if ``amp``):
    ``step`` copies ``x`` (float (B, C, H, W), same shape and memory format as the sample) and
    ``y`` (int64 (B,)) into the graph's static inputs and replays the forward graph;
    ``loss.backward()`` replays the backward graph, whose parameter gradients autograd hands to
    ``p.grad``.  ``loss`` and ``logits`` (detached) live in the graph's memory: the next call
    overwrites them, so read them before it.  Parameters are read from their storage on every
    replay, so in-place updates (optimizer steps, ``copy_`` projections) are seen; replacing a
    parameter tensor is not.  The model is left unchanged and callable eagerly (evaluation, the
    norm recorder); ``model.train()``/``eval()`` does not affect the graph, which always runs the
    training-mode forward.  BN running statistics changed by the capture's warm-up iterations are
    restored.  ``x`` and ``y`` give only shapes, dtypes and layout; they become the static
    inputs.  Raises UserError off CUDA, or whatever the capture raises (the caller may fall back
    to eager steps).
    """
    if x.device.type != "cuda" or y.device.type != "cuda":
        raise UserError(f"graphed_loss needs CUDA tensors, got x on {x.device} and y on {y.device}")
    step = _LossStep(model, amp).train()
    saved = [b.clone() for b in model.buffers()]
    try:
        return torch.cuda.make_graphed_callables(step, (x, y), allow_unused_input=True)
    finally:
        torch.cuda.synchronize(x.device)
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)  # in place: the graph holds these addresses


class _LossStep(torch.nn.Module):
    """(x, y) -> (loss, logits.detach()): the unit that :func:`graphed_loss` captures.

    The model is a submodule, so its parameters are the graph's parameter inputs. Autocast runs
    inside with its weight-cast cache off, as CUDA graph capture requires; the casts are kernels
    of the graph."""

    def __init__(self, model: torch.nn.Module, amp: bool):
        super().__init__()
        self.model, self.amp = model, bool(amp)

    def forward(self, x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            out = self.model(x)
            loss = F.cross_entropy(out, y)
        return loss, out.detach()
