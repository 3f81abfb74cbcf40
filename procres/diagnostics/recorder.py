"""Per-block gradient-norm ratios recorded during training, on any model.

This makes the theory of Zaeemzadeh, Rahnavard & Shah, "Norm-Preservation: Why Residual
Networks Can Become Extremely Deep?" (TPAMI 2020, arXiv 1805.07477) measurable on any
PyTorch model (docs/theory.md sections 1-2).

Definitions. A unit (block) l maps its input x_l to its output x_{l+1}. With E the loss,

    r_l = ||dE/dx_l|| / ||dE/dx_{l+1}||          (Frobenius norms over the whole mini-batch)

and dE/dx_l = J^T dE/dx_{l+1}, with J the Jacobian of the unit at x_l.  Hence
sigma_min(J) <= r_l <= sigma_max(J) whenever J^T is injective (output size <= input size),
and, for units whose input and output have the same shape (identity skip, J = I + J_F),
1 - delta <= r_l <= 1 + delta with delta = ||J - I||_2 = ||J_F||_2 (triangle inequality).
The paper's theorem says residual nets can realise their target with delta = O(log L / L).

:class:`NormRecorder` puts forward / tensor-gradient hooks on a list of units (e.g.
``model.blocks``) and records ||x_l||, ||x_{l+1}||, ||dE/dx_l||, ||dE/dx_{l+1}||, r_l and
per-sample ratios (norms over all non-batch dimensions, batch = dimension 0) during training.
The Jacobian side (extreme singular values by Lanczos, the bounds above for one unit) is
:mod:`procres.diagnostics.jacobian`; the depth study :mod:`procres.diagnostics.study`.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import Tensor, nn

from procres.diagnostics.example import first_tensor, unit_input
from procres.diagnostics.units import Unit
from procres.errors import UserError

__all__ = ["FIELDS", "NormRecorder"]

FIELDS = ("ratio", "grad_in", "grad_out", "fwd_in", "fwd_out", "ratio_min", "ratio_max", "ratio_mean",
          "grad_nonfinite")


# ---------------------------------------------------------------- the recorder
class _Tensor:
    """One activation tensor seen in a recorded step: its norm and the (unit, role) pairs it plays.

    In an ``nn.Sequential`` the output of unit l *is* the input of unit l+1: one tensor, one
    gradient hook, one norm, two roles.
    """

    __slots__ = ("ref", "fwd", "roles")

    def __init__(self, x: Tensor):
        self.ref = weakref.ref(x)  # identity check only: never keeps the activation alive
        self.fwd = torch.linalg.vector_norm(x.detach(), dtype=_acc_dtype(x))
        self.roles: list[tuple[int, str]] = []


class _Step:
    """Per-unit norms of one recorded step, as 0-dim / (N,) tensors on the activations' device."""

    def __init__(self, n_units: int):
        self.closed = False
        self.fwd = {"in": [None] * n_units, "out": [None] * n_units}
        self.grad = {"in": [None] * n_units, "out": [None] * n_units}  # per-sample norms (N,)
        self.tensors: dict[int, _Tensor] = {}
        self.handles: list = []

    def close(self):
        self.closed = True
        for h in self.handles:
            h.remove()
        self.handles = []
        self.tensors = {}

    def tensor(self, x: Tensor) -> _Tensor:
        entry = self.tensors.get(id(x))
        if entry is None or entry.ref() is not x:  # a dead weakref means the id was reused
            entry = _Tensor(x)
            self.tensors[id(x)] = entry
            if x.requires_grad:  # removed when the step closes (a leaf would keep it forever)
                self.handles.append(x.register_hook(self._grad_hook(entry)))
        return entry

    def _grad_hook(self, entry: _Tensor):
        def hook(g: Tensor):
            if self.closed:
                return None
            g = g.detach()
            dims = tuple(range(1, g.dim()))
            ps = torch.linalg.vector_norm(g, dim=dims, dtype=_acc_dtype(g)) if dims else g.abs().reshape(-1)
            if ps.device.type == "cpu" and ps.dtype != torch.float64 and not bool(torch.isfinite(ps).all()):
                ps = torch.linalg.vector_norm(g, dim=dims, dtype=torch.float64)  # float32 squares overflow at 1.8e19
            for i, role in entry.roles:
                self.grad[role][i] = ps
            return None

        return hook

    def values(self) -> Tensor | None:
        """(n_units, len(FIELDS)) tensor of this step's values; NaN where a value is missing."""
        present = [t for d in (self.fwd, self.grad) for ts in d.values() for t in ts if t is not None]
        if not present:
            return None
        device = present[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        nan = torch.full((), math.nan, device=device, dtype=dtype)
        fwd_in, fwd_out = (torch.stack([nan if t is None else t for t in self.fwd[r]]) for r in ("in", "out"))
        sizes = {t.numel() for ts in self.grad.values() for t in ts if t is not None}
        if len(sizes) == 1:  # the usual case: one batch size -> a few vectorised kernels
            rows = {r: torch.stack([torch.full(tuple(sizes), math.nan, device=device, dtype=dtype) if t is None
                                    else t for t in self.grad[r]]) for r in ("in", "out")}
            grad_in, grad_out = (torch.linalg.vector_norm(rows[r], dim=1) for r in ("in", "out"))
            per = rows["in"] / rows["out"]
            rmin, rmax, rmean = per.amin(dim=1), per.amax(dim=1), per.mean(dim=1)
        else:
            stats = []
            for a, b in zip(self.grad["in"], self.grad["out"]):
                ok = a is not None and b is not None and a.numel() == b.numel()
                per = a.to(dtype) / b.to(dtype) if ok else None
                gi = nan if a is None else torch.linalg.vector_norm(a.to(dtype))
                go = nan if b is None else torch.linalg.vector_norm(b.to(dtype))
                stats.append([gi, go] + ([per.amin(), per.amax(), per.mean()] if ok else [nan] * 3))
            grad_in, grad_out, rmin, rmax, rmean = (torch.stack(c) for c in zip(*stats))
        zero = torch.zeros((), device=device, dtype=dtype)
        nonfinite = torch.stack([zero if t is None else torch.isfinite(t).all().logical_not().to(dtype)
                                 for t in self.grad["in"]])
        columns = dict(ratio=grad_in / grad_out, grad_in=grad_in, grad_out=grad_out, fwd_in=fwd_in,
                       fwd_out=fwd_out, ratio_min=rmin, ratio_max=rmax, ratio_mean=rmean, grad_nonfinite=nonfinite)
        return torch.stack([columns[f] for f in FIELDS], dim=1)


def _resolve_units(units, model) -> list[tuple[str, nn.Module, tuple | None]]:
    """-> (name, module whose parameters the unit uses, probes or None) per unit.  A unit is an
    nn.Module (hooked itself), a ``procres.diagnostics.units.Unit`` (its module, or its probes), or a qualified
    module name of ``model``."""
    if isinstance(units, (str, Unit)):
        units = [units]
    entries = []
    for i, u in enumerate(units):
        if isinstance(u, Unit):
            entries.append((u.name, u.scope if u.probes else u.module, u.probes))
        elif isinstance(u, nn.Module):
            entries.append((f"unit {i}", u, None))
        elif isinstance(u, str):
            if model is None:
                raise UserError(f"NormRecorder got the module name {u!r}: pass model= to resolve names")
            try:
                entries.append((u, model.get_submodule(u), None))
            except AttributeError:
                raise UserError(f"{type(model).__name__} has no submodule {u!r}") from None
        else:
            raise UserError(f"NormRecorder units must be nn.Module instances, Unit records or module names, "
                            f"got {type(u).__name__}")
    if not entries:
        raise UserError("NormRecorder needs at least one unit, got an empty list")
    hooked = [m for _, m, probes in entries if probes is None]
    if len({id(m) for m in hooked}) != len(hooked):
        raise UserError("NormRecorder units must be distinct modules (one appears twice)")
    return entries


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class NormRecorder:
    """Record forward and backward norms at the input and output of every unit during training.

    ``units``: an iterable of modules, e.g. ``model.blocks``; unit l maps x_l to x_{l+1}; its
    input (the first positional argument, or the ``hidden_states`` keyword of a layer called
    with keywords only: :func:`procres.diagnostics.example.unit_input`) and its output must be
    float tensors with the batch in dimension 0 (an output may be a tuple / dict whose first entry
    is one: Hugging Face layers return ``(hidden_states, ...)``).  An integer input (token ids:
    the embedding was chosen as a unit) has no gradient, and is refused in one sentence.  Also
    accepted: the result of :func:`procres.find_units` or :func:`procres.units_by_name` (or any
    of their :class:`procres.diagnostics.units.Unit` records), and qualified module names with
    ``model=`` to resolve them.  A unit found inside a module's code (a pre-norm transformer's
    two additions) is recorded through the probe modules of ``units.module``, the traced model
    ``find_units`` returns: run that one (it shares the model's parameters) while recording.

    When it records. A *step* is a forward pass of ``units[0]`` in training mode with grad
    enabled; steps 0, every, 2*every, ... (counted since construction) are recorded.  Eval-mode
    or ``no_grad`` forwards are ignored and not counted.  With gradient accumulation each
    micro-batch forward is a step.  Each unit should run once per forward pass, and a step's
    backward must finish before the next training forward (which closes the step).
    ``steps_seen`` may be set, e.g. to the global step after a resume, to keep the cadence.

    What it records, per unit and recorded step: ``fwd_in`` = ||x_l||, ``fwd_out`` = ||x_{l+1}||,
    ``grad_in`` = ||dE/dx_l||, ``grad_out`` = ||dE/dx_{l+1}|| (Frobenius over the batch),
    ``ratio`` = grad_in / grad_out, and the per-sample ratios ||dE/dx_l[n]|| / ||dE/dx_{l+1}[n]||
    summarised as ``ratio_min``, ``ratio_max``, ``ratio_mean`` over the batch.  Gradient norms
    include any loss scaling (AMP GradScaler); ratios do not depend on it.  A unit whose input
    does not require grad (e.g. raw data) gets NaN for ``grad_in`` and the ratios.
    ``grad_nonfinite`` is the fraction of recorded steps in which dE/dx_l held an inf or NaN (an
    overflowing backward pass, :func:`procres.diagnostics.ratios.overflow_unit`); non-finite values are left
    out of the other means.  On CPU a per-sample norm that overflows float32 (squares above
    3.4e38, i.e. norms from ~1.8e19) is recomputed in float64, so a non-finite norm there means a
    non-finite gradient; other devices keep float32 norms (no host synchronisation).

    Cost: a forward hook per unit (plus a pre-hook on ``units[0]`` that opens the step), one
    norm and one tensor hook per activation tensor (in an ``nn.Sequential`` the output of
    unit l is the input of unit l+1: hooked and reduced once), nothing retained beyond the
    per-sample norm vectors.  Values stay on the activations' device and are accumulated there:
    no host synchronisation until :meth:`summary`.  The input of a unit other than
    ``units[0]`` that is not the previous unit's output is noted after the unit's forward, so
    a unit must not modify its input in place.

    ``torch.compile``: the hooks run eagerly (``torch.compiler.disable``), which forces a graph
    break at every unit; a warning says so the first time.  Compiling each unit separately and
    passing the compiled units keeps the hooks outside the compiled graphs.

    Use as a context manager or call :meth:`remove`; :meth:`reset` starts a new aggregation
    window (e.g. per epoch); :meth:`summary` returns the means over the window.
    """

    def __init__(self, units, *, every: int = 1, model: nn.Module | None = None):
        entries = _resolve_units(units, model)
        if not isinstance(every, int) or every < 1:
            raise UserError(f"every must be a positive integer, got {every!r}")
        self.names = [name for name, _, _ in entries]
        self.units = [scope for _, scope, _ in entries]
        self.every = every
        self.steps_seen = 0  # training steps observed since construction
        self.steps_recorded = 0  # recorded steps in the current window (since reset())
        self._step: _Step | None = None
        self._sum: Tensor | None = None
        self._count: Tensor | None = None
        self._warned_compile = False
        self._grads_at_start = self._grad_state()
        # Hook bodies wrapped by torch.compiler.disable: used only inside a compiled graph, where
        # the call forces a graph break and the body runs eagerly (the wrapper costs time, so
        # eager forwards call the bodies directly).
        self._eager_pre = torch.compiler.disable(self._pre_hook)
        self._eager_post = torch.compiler.disable(self._post_hook)
        self._eager_probe = torch.compiler.disable(self._probe_hook)
        first = entries[0][2][0] if entries[0][2] else entries[0][1]
        self._handles = [first.register_forward_pre_hook(self._traced_pre, with_kwargs=True)]
        for i, (_, u, probes) in enumerate(entries):
            if probes is None:
                self._handles.append(u.register_forward_hook(
                    lambda m, args, kwargs, out, i=i: self._traced_post(i, m, unit_input(args, kwargs), out),
                    with_kwargs=True))
                continue
            for role, probe in zip(("in", "out"), probes):
                self._handles.append(probe.register_forward_hook(
                    lambda m, args, out, i=i, role=role: self._traced_probe(i, role, m, out)))

    # -- hooks: a pre-hook on units[0] opens a step; a forward hook per unit notes its tensors
    def _traced_pre(self, module: nn.Module, args, kwargs):
        x = unit_input(args, kwargs)
        if torch.compiler.is_compiling():
            return self._eager_pre(module, x, True)
        return self._pre_hook(module, x, False)

    def _traced_post(self, i: int, module: nn.Module, x, out):
        if torch.compiler.is_compiling():
            return self._eager_post(i, module, x, out, True)
        return self._post_hook(i, module, x, out, False)

    def _traced_probe(self, i: int, role: str, module: nn.Module, out):
        if torch.compiler.is_compiling():
            return self._eager_probe(i, role, module, out, True)
        return self._probe_hook(i, role, module, out, False)

    def _probe_hook(self, i: int, role: str, module: nn.Module, out, compiling: bool):
        """A probe of a sub-graph unit: its output is x_l (role "in") or x_{l+1} ("out")."""
        step = self._step
        if step is None or not (module.training and torch.is_grad_enabled()):
            return None
        if compiling:
            self._warn_compiled()
        if step.fwd[role][i] is None:  # x_l of units[0] is noted by the pre-hook already
            step.fwd[role][i] = self._note(i, role, out, module)
        return None

    def _pre_hook(self, module: nn.Module, x, compiling: bool):
        if not (module.training and torch.is_grad_enabled()):
            return None
        if compiling:
            self._warn_compiled()
        self._finish_step()
        self._step = _Step(len(self.units)) if self.steps_seen % self.every == 0 else None
        self.steps_seen += 1
        if self._step is not None:  # before the forward: the input as the unit receives it
            self._step.fwd["in"][0] = self._note(0, "in", x, module)
        return None

    def _post_hook(self, i: int, module: nn.Module, x, out, compiling: bool):
        step = self._step
        if step is None or not (module.training and torch.is_grad_enabled()):
            return None
        if compiling:
            self._warn_compiled()
        if step.fwd["in"][i] is None:  # usually the previous unit's output, already hooked
            step.fwd["in"][i] = self._note(i, "in", x, module)
        step.fwd["out"][i] = self._note(i, "out", out, module)
        return None

    def _note(self, i: int, role: str, x, module: nn.Module) -> Tensor:
        x = first_tensor(x) if role == "out" else x  # a list input (DenseNet's layers) has no single x_l
        what = "first input" if role == "in" else "output"
        if not isinstance(x, Tensor):
            raise UserError(f"NormRecorder: unit {i} ({type(module).__name__}) has a non-tensor {what} "
                             f"({type(x).__name__})")
        if not (x.is_floating_point() or x.is_complex()):
            raise UserError(f"NormRecorder: unit {i} ({type(module).__name__}) has an integer {what} (dtype "
                            f"{str(x.dtype).removeprefix('torch.')}, token ids?), which no gradient reaches: choose "
                            f"units whose input is a float hidden state, such as the layers after the embedding")
        entry = self._step.tensor(x)
        entry.roles.append((i, role))
        return entry.fwd

    def _warn_compiled(self):
        if not self._warned_compile:
            self._warned_compile = True
            warnings.warn("NormRecorder: the units run inside torch.compile; the recorder's hooks run "
                          "eagerly and force a graph break at every unit (slower). Remove the recorder "
                          "for full compiled speed, or compile each unit separately.", stacklevel=3)

    # -- aggregation
    def _finish_step(self):
        step, self._step = self._step, None
        if step is None:
            return
        step.close()
        values = step.values()
        if values is None:
            return
        finite = torch.isfinite(values)
        if self._sum is None:
            dtype = torch.float32 if values.device.type == "mps" else torch.float64
            self._sum = torch.zeros(values.shape, dtype=dtype, device=values.device)
            self._count = torch.zeros(values.shape, dtype=dtype, device=values.device)
        elif self._sum.device != values.device:  # a window restored by load_state_dict
            self._sum, self._count = self._sum.to(values.device), self._count.to(values.device)
        self._sum += torch.where(finite, values, torch.zeros_like(values))
        self._count += finite
        self.steps_recorded += 1

    def state_dict(self) -> dict:
        """The open aggregation window, for a mid-epoch checkpoint: per-unit sums and counts (CPU
        tensors, or None before the first recorded step), ``steps_recorded`` and ``steps_seen``.
        Closes the step in progress first (its backward is done), as the next forward would."""
        self._finish_step()
        cpu = None if self._sum is None else (self._sum.cpu(), self._count.cpu())
        return {"sum": cpu and cpu[0], "count": cpu and cpu[1],
                "steps_recorded": self.steps_recorded, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        """Continue the window saved by :meth:`state_dict` (the sums move to the units' device at
        the next recorded step), so that a resumed epoch's summary equals an uninterrupted one."""
        self._step = None
        self._sum, self._count = state["sum"], state["count"]
        self.steps_recorded = int(state["steps_recorded"])
        self.steps_seen = int(state.get("steps_seen", self.steps_seen))

    def reset(self):
        """Start a new aggregation window; everything recorded so far is discarded."""
        self._finish_step()
        self._sum = self._count = None
        self.steps_recorded = 0

    def summary(self, *, reduce: bool = False) -> dict:
        """Means over the recorded steps of the window: ``{field: [one float per unit], ...}``.

        Keys: ``ratio``, ``grad_in``, ``grad_out``, ``fwd_in``, ``fwd_out``, ``ratio_min``,
        ``ratio_max``, ``ratio_mean``, ``grad_nonfinite`` and ``steps_recorded`` (int, this rank).
        NaN where a unit has no value (written as ``NaN`` by :mod:`json`).  Call it after the backward pass: it
        closes the step in progress.  ``reduce=True`` averages over all ranks with
        ``torch.distributed.all_reduce`` of the sums and counts (so weighted by the steps each
        rank recorded) when a process group is initialised (a collective: every rank must call
        it); otherwise values are this rank's.  One host sync.
        """
        self._finish_step()
        n = len(self.units)
        distributed = reduce and torch.distributed.is_available() and torch.distributed.is_initialized()
        if self._sum is not None:
            stats = torch.stack([self._sum, self._count])
        else:
            if self.steps_seen == 0 and self._grad_state() != self._grads_at_start:
                warnings.warn("NormRecorder recorded nothing although the units received gradients: "
                              "were the hooks bypassed (e.g. a traced/scripted model, or a forward that "
                              "calls unit.forward() instead of unit())?", stacklevel=2)
            device = "cpu"
            if distributed and torch.distributed.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            stats = torch.zeros(2, n, len(FIELDS), dtype=torch.float64, device=device)
        if distributed:
            stats = stats.clone()
            torch.distributed.all_reduce(stats)
        mean = (stats[0] / stats[1]).T.tolist()  # 0/0 -> NaN for never-seen values
        out = {f: mean[j] for j, f in enumerate(FIELDS)}
        out["steps_recorded"] = self.steps_recorded
        return out

    def _grad_state(self) -> list:
        # Which gradient tensor each parameter holds, and its version: changes with every backward.
        return [None if p.grad is None else (id(p.grad), p.grad._version)
                for u in self.units for p in u.parameters()]

    # -- lifetime
    def remove(self):
        """Remove every hook; the window's values stay available to :meth:`summary`."""
        self._finish_step()
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "NormRecorder":
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

