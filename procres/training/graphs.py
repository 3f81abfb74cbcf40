"""The whole training step as one CUDA graph: forward, loss, backward and the SGD update, replayed.

A 164-layer net at batch 128 is launch-bound on a large GPU: about 0.1 TFLOP per step is a few
milliseconds of device work, while the host needs tens of milliseconds to launch the step's
thousands of small kernels. Replaying a captured graph costs one launch.

The step, :func:`train_step`, is a plain function that also runs eagerly (the tests run it on the
CPU against the training loop's own eager step): bf16 autocast forward and cross-entropy,
``torch.autograd.grad`` of every parameter, and :func:`sgd_update`, the optimizer's SGD update
with its own settings and momentum buffers through torch's functional ``sgd``, but without the
optimizer's step hooks. The learning rate is a one-element float32 device tensor: fused SGD reads
it on the device, so a schedule changes it with ``fill_`` and no re-capture (torch's fused SGD
takes a tensor ``lr``; its foreach and for-loop paths would read it with ``.item()``, so capture
needs ``fused=True``, which ``procres.training.run`` uses on CUDA).

:func:`capture_step` captures it once per run (``procres.training.run.capture_graphs``): the momentum
buffers are created first (zeros: with dampening 0 the first update is the same as from no buffer,
``buf = g``), three warm-up steps run on a side stream (cuDNN autotuning, autograd's workspaces),
then the capture; the warm-up's updates of the weights, BN statistics and momentum buffers are
undone, in place (the graph holds their addresses), so the run continues from the state it was in.
:func:`self_check` then compares one replay with one eager :func:`train_step` from the same state
on the same random batch, at a learning rate other than the captured one; any difference beyond
bf16 noise (``SELF_CHECK_TOLERANCE``) makes the run train eagerly, with a warning.

What runs outside the graph, in ``procres.training.loop._train_step``: copying the batch into the
graph's static input (every training batch has the captured shape: the train loader drops the
last partial batch; any other shape runs eagerly), the Procrustes hook after the replay (on the
steps where it fires it writes the projected kernels into the weights' own storage, which the
next replay reads; ``procres.spectral.device`` keeps it free of host syncs), and the recorded
steps (global step a multiple of ``record_every``): ``procres.diagnostics.recorder.NormRecorder``
accumulates its per-unit norms from Python hooks, which a replay does not run, so those steps run
eagerly with the recorder -- the same forward, loss, backward and update on the same batch -- and
the history's norms mean the same with and without graphs (each costs a whole eager step; raise
``record_every`` to pay it less often). Evaluation and the norm probes are eager (the model
itself is untouched and callable). Not with DDP (the gradient all-reduce would need capturing
too; DDP runs train eagerly) and not with ``compile``. If capture fails (an operation that cannot
be captured, an older torch) or the self-check fails, a warning is logged and the run trains
eagerly.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd as _sgd  # the functional update SGD.step() runs

from procres.errors import UserError

__all__ = ["train_step", "sgd_update", "StepGraph", "capture_step", "self_check", "SELF_CHECK_TOLERANCE"]

# self_check: |loss_graph - loss_eager| / max(1, |loss_eager|), and the relative differences of the
# two updates of the parameters and of the BN statistics (after minus before, Frobenius). Both
# computations run the same kernels on the same data; what differs is only the order of the
# atomics in cuDNN's and BN's backward reductions (bf16 autocast makes that 1e-3-ish in the
# gradients). A graph that read a stale input, a baked-in learning rate or skipped the update
# is off by order 1.
SELF_CHECK_TOLERANCE = {"loss": 1e-3, "update": 5e-2}


@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, grads: list, lr) -> None:
    """``optimizer.step()`` for SGD with ``grads`` (one per parameter of ``optimizer.param_groups``,
    in order; None: skipped, as a missing ``.grad``) and learning rate ``lr`` (float, or a
    one-element tensor), without the step hooks. Same update and momentum buffers as the step."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise UserError(f"sgd_update needs a torch.optim.SGD, got {type(optimizer).__name__}")
    grads = iter(grads)
    for group in optimizer.param_groups:
        params, grad_list, buffers = [], [], []
        for p in group["params"]:
            g = next(grads)
            if g is None:
                continue
            params.append(p)
            grad_list.append(g)
            buffers.append(optimizer.state[p].get("momentum_buffer") if group["momentum"] else None)
        if not params:
            continue
        _sgd(params, grad_list, buffers, weight_decay=group["weight_decay"], momentum=group["momentum"], lr=lr,
             dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
             has_sparse_grad=False, foreach=group["foreach"], fused=group["fused"])
        if group["momentum"]:
            for p, buf in zip(params, buffers):
                optimizer.state[p]["momentum_buffer"] = buf


def train_step(model: torch.nn.Module, optimizer: torch.optim.SGD, x: torch.Tensor, y: torch.Tensor, lr, *,
               amp: bool):
    """One training step: forward of ``x (B, C, H, W)`` (bf16 autocast if ``amp``), cross-entropy
    against ``y (B,)`` int64, gradients of every parameter, :func:`sgd_update` with ``lr``.
    Returns ``(loss, logits)``, detached. The optimizer's step hooks do not run (the caller runs
    the Procrustes hook). No host synchronisation with a CUDA ``lr`` tensor and fused SGD."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        out = model(x)
        loss = F.cross_entropy(out, y)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    trained = [p for p in params if p.requires_grad]
    found = dict(zip(map(id, trained), torch.autograd.grad(loss, trained, allow_unused=True)))
    sgd_update(optimizer, [found.get(id(p)) for p in params], lr)
    return loss.detach(), out.detach()


class StepGraph:
    """A captured :func:`train_step`. ``graph(x, y, lr)`` copies the batch into the static inputs
    and ``lr`` (a float) into the static learning rate, replays, and returns the static
    ``(loss, logits)``: the next replay overwrites them, so read them before it."""

    def __init__(self, graph, x, y, lr, loss, logits, capture_s: float):
        self.graph, self.x, self.y, self.lr, self.loss, self.logits = graph, x, y, lr, loss, logits
        self.capture_s = capture_s  # seconds the warm-up and capture took

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float):
        self.x.copy_(x)
        self.y.copy_(y)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.loss, self.logits


def capture_step(model, optimizer, x, y, *, amp: bool, lr: float, warmup: int = 3) -> StepGraph:
    """Capture :func:`train_step` for batches shaped like ``x`` and ``y`` (CUDA tensors; their
    values, shape and memory format seed the static inputs). The model and optimizer are left as
    they were, except for zero momentum buffers where none existed (see the module docstring).
    Raises UserError off CUDA or without fused SGD, or whatever the capture raises."""
    if x.device.type != "cuda" or y.device.type != "cuda":
        raise UserError(f"capture_step needs CUDA tensors, got x on {x.device} and y on {y.device}")
    _check_capturable(optimizer)
    started = time.perf_counter()
    _create_momentum_buffers(optimizer)
    static = (x.clone(memory_format=torch.preserve_format), y.clone(),
              torch.full((), float(lr), dtype=torch.float32, device=x.device))
    saved, mode = _snapshot(model, optimizer), model.training
    model.train()  # the graph holds the training-mode forward (BN batch statistics), whatever the mode later
    try:
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                train_step(model, optimizer, *static, amp=amp)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, logits = train_step(model, optimizer, *static, amp=amp)
    finally:
        model.train(mode)
        _restore(saved)
        torch.cuda.synchronize(x.device)
    return StepGraph(graph, *static, loss, logits, capture_s=time.perf_counter() - started)


def self_check(model, optimizer, graph: StepGraph, *, amp: bool, lr: float, seed: int = 0) -> dict:
    """One replay of ``graph`` against one eager :func:`train_step` from the same state, on the
    same random batch (its own generator: the run's RNG streams are untouched), at ``lr / 3``
    (not the captured value). The state is restored afterwards. Returns ``{"loss_eager",
    "loss_graph", "loss_diff", "update_diff", "stats_diff", "ok"}``: the relative differences of
    the loss, of the parameters' update and of the BN statistics' change (SELF_CHECK_TOLERANCE)."""
    device = graph.x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty_like(graph.x).normal_(generator=gen)  # the static input's shape and memory format
    y = torch.randint(0, graph.logits.shape[-1], graph.y.shape, generator=gen, device=device)
    lr = lr / 3
    saved, mode = _snapshot(model, optimizer), model.training
    before = _flat_state(model)
    model.train()  # as the graph's forward
    try:
        lr_tensor = torch.full((), lr, dtype=torch.float32, device=device)
        loss_eager = train_step(model, optimizer, x, y, lr_tensor, amp=amp)[0].clone()
        change_eager = [after - b for after, b in zip(_flat_state(model), before)]
        _restore(saved)
        loss_graph = graph(x, y, lr)[0].clone()
        change_graph = [after - b for after, b in zip(_flat_state(model), before)]
    finally:
        model.train(mode)
        _restore(saved)
    loss_e, loss_g = loss_eager.item(), loss_graph.item()
    update_diff, stats_diff = (_relative(g, e) for g, e in zip(change_graph, change_eager))
    result = {"loss_eager": loss_e, "loss_graph": loss_g, "loss_diff": abs(loss_g - loss_e) / max(1.0, abs(loss_e)),
              "update_diff": update_diff, "stats_diff": stats_diff}
    result["ok"] = (result["loss_diff"] <= SELF_CHECK_TOLERANCE["loss"]
                    and max(update_diff, stats_diff) <= SELF_CHECK_TOLERANCE["update"])
    return result


# ---------------------------------------------------------------- helpers
def _check_capturable(optimizer) -> None:
    if not isinstance(optimizer, torch.optim.SGD):
        raise UserError(f"the CUDA-graph step needs torch.optim.SGD, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        if not group.get("fused"):
            raise UserError("the CUDA-graph step needs fused SGD (its foreach and for-loop paths read a tensor "
                            "learning rate on the host); this torch or these parameters have none")
        if group["momentum"] and group["dampening"]:
            raise UserError(f"the CUDA-graph step needs dampening 0 with momentum, got {group['dampening']}")


def _create_momentum_buffers(optimizer) -> None:
    for group in optimizer.param_groups:
        if group["momentum"]:
            for p in group["params"]:
                if p.requires_grad and optimizer.state[p].get("momentum_buffer") is None:
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _tensors(model, optimizer) -> list:
    """What a training step writes: parameters, buffers (BN statistics), momentum buffers."""
    momentum = [s["momentum_buffer"] for s in optimizer.state.values() if s.get("momentum_buffer") is not None]
    return [*model.parameters(), *model.buffers(), *momentum]


def _snapshot(model, optimizer) -> tuple:
    """Copies of what a step writes, and which optimizer state entries exist (a step from no
    momentum buffer creates one: :func:`_restore` removes it again)."""
    entries = {p: dict(state) for p, state in optimizer.state.items()}
    return [(t, t.detach().clone()) for t in _tensors(model, optimizer)], optimizer, entries


@torch.no_grad()
def _restore(saved) -> None:
    copies, optimizer, entries = saved
    for t, value in copies:
        t.copy_(value)  # in place: a captured graph holds these addresses
    for p in list(optimizer.state):
        if p not in entries:
            del optimizer.state[p]
        else:
            optimizer.state[p].clear()
            optimizer.state[p].update(entries[p])


def _flat_state(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(every parameter, every floating buffer), each flattened into one float64 vector."""
    def flat(tensors):
        tensors = [t.detach().reshape(-1).double() for t in tensors]
        return torch.cat(tensors) if tensors else torch.zeros(0, dtype=torch.float64)

    return flat(model.parameters()), flat(b for b in model.buffers() if b.is_floating_point())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are empty or zero)."""
    if a.numel() == 0:
        return 0.0
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()
