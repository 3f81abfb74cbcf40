"""Residual layers of any model by its structure and one example forward: what
:func:`procres.diagnostics.units.find_units` falls back on where ``torch.fx`` cannot trace a model
(every Hugging Face model in transformers 5) or finds no residual addition.

The rule.  Candidates are the children of the model's levels (:func:`procres.diagnostics.names.levels`:
same-class children of containers whose names differ only in their numbers).  One example forward
(eval mode, no grad; the model's mode and every buffer are restored) shows each candidate's first
call: its input ``x`` (:func:`procres.diagnostics.example.unit_input`), the first tensor of its
output, and the tensors computed from ``x`` while it runs (a ``TorchFunctionMode`` sees every torch
function and tensor method; forward hooks on every other module see which modules are called on
``x``).  A candidate is *residual* when, during its call, two same-shape tensors computed from ``x``
are added (``+``, ``+=``, ``add``, ``add_``, ``torch.add``) and one of them is

- ``x`` itself or a view of all of it: an identity skip, ``x + f(x)``; or
- the output of a module called on ``x`` that the other operand does not depend on: a projection
  skip, ``shortcut(x) + f(x)`` (the operand with fewer operations since ``x`` is the skip).

A level qualifies when at least two of its children are called, every called child is residual
and returns a tensor, and at least one maps ``x`` to a tensor of ``x``'s shape.  Where no level
does, a level of one called child (a model of a single layer: GPT-2 with ``n_layer=1``, a
one-block ``nn.Sequential``) qualifies when that child is residual and maps ``x`` to a tensor of
``x``'s shape.  Of nested qualifying levels the innermost are the layers, in the order of their first call; ``kind`` is
``"identity"`` for an identity skip on a same-shape layer, else ``"projection"`` (Hugging Face
ResNet's first, downsampling layer of a stage: ``x_{l+1} = P x_l + F(x_l)``).

Why the addition and not shapes alone: a list of same-shape children nested in the residual
layers (HF ResNet's ``layers.*.layer.*``, conv -> BN -> ReLU twice; a pre-norm block's MLP) would
be the innermost shape-only level.  A container whose first module downsamples (``down(x)`` then
blocks ``h + f(h)``) adds nothing to its own input: its blocks are the layers.  The mode also keeps
``nn.TransformerEncoderLayer`` off its fused fast path (which checks ``has_torch_function``), so
its additions are seen.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from procres.diagnostics.example import first_tensor, run_example, unit_input
from procres.diagnostics.names import Level, glob_for, level_glob, levels, repeated_blocks

__all__ = ["Structure", "residual_layers"]

_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__"}


@dataclasses.dataclass
class Structure:
    """What the structural rule found: ``layers`` as ``(name, kind, module, skip)`` in forward
    order (empty when no level qualifies), the ``glob`` that selects them, ``rule`` (which level of
    what class) and ``suggestions`` (candidate globs, best first, for a refusal)."""

    layers: list
    glob: str | list | None
    rule: str
    suggestions: list


def _tensors(value):
    """The tensors in ``value`` (nested tuples, lists and dicts, a ModelOutput included)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _is_view_of(t: Tensor, x: Tensor) -> bool:
    """``t`` is ``x`` or a view of all of it (same storage, same number of elements)."""
    if t is x:
        return True
    try:
        return t.numel() == x.numel() and t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    except RuntimeError:  # tensors without storage (meta, functional wrappers)
        return False


@dataclasses.dataclass(eq=False)
class _Call:
    """The first call of one candidate.  While it runs, ``derived`` maps the id of every tensor
    computed from ``x`` (kept alive, so ids stay unique) to ``(tensor, branches, ops)``: the ids of
    the module outputs on ``x`` it depends on and the longest chain of operations from ``x``;
    ``branches`` names those module outputs."""

    name: str
    order: int
    x: Tensor | None
    x_shape: tuple | None = None
    y_shape: tuple | None = None     # of the output's first tensor; None: no tensor returned
    kind: str | None = None          # "identity", "projection" or None (not residual)
    skip: str = ""
    derived: dict = dataclasses.field(default_factory=dict)
    branches: dict = dataclasses.field(default_factory=dict)

    @property
    def same_shape(self) -> bool:
        return self.x_shape is not None and self.y_shape == self.x_shape


class _Watch(TorchFunctionMode):
    """Follows, for every candidate call in progress, the tensors computed from its input and
    marks the call residual at its first residual addition (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.open: list[_Call] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.open:
            return out
        inputs = list(_tensors((args, kwargs)))
        results = list(_tensors(out))
        for call in self.open:
            seen = [call.derived[id(t)] for t in inputs if id(t) in call.derived]
            if not seen:
                continue
            if call.kind is None and getattr(func, "__name__", "") in _ADDS:
                _residual(call, args, out)
            branches = frozenset().union(*(b for _, b, _ in seen))
            ops = 1 + max(n for _, _, n in seen)
            for t in results:  # an in-place op's result is its input, now depending on both
                call.derived[id(t)] = (t, branches, ops)
        return out


def _residual(call: _Call, args, out) -> None:
    """Mark ``call`` residual when ``args[0] + args[1]`` is a residual addition of its input."""
    pair = args[:2]
    if len(pair) != 2 or not all(isinstance(a, Tensor) for a in pair) or not isinstance(out, Tensor):
        return
    if any(a.shape != out.shape or id(a) not in call.derived for a in pair):
        return  # x + bias, x + positional table: not a residual addition
    if any(_is_view_of(a, call.x) for a in pair):
        call.kind, call.skip = "identity", "identity"
        return
    (a, a_branches, a_ops), (b, b_branches, b_ops) = (call.derived[id(t)] for t in pair)
    skips = [(ops, call.branches[id(t)]) for t, ops, other in ((a, a_ops, b_branches), (b, b_ops, a_branches))
             if id(t) in call.branches and id(t) not in other]
    if skips:  # two separate branches from x; the skip is the one with fewer operations
        call.kind, call.skip = "projection", min(skips)[1]


def _record(model: nn.Module, candidates: dict, example_input) -> dict:
    """One example forward -> ``{candidate module: _Call}`` for the candidates called (first calls)."""
    watch, calls = _Watch(), {}
    names = {m: n for n, m in model.named_modules()}

    def opened(module, args, kwargs):
        if module in calls:       # a further call of a shared module: its first call decides
            return
        x = unit_input(args, kwargs)
        x = x if isinstance(x, Tensor) else None
        call = _Call(candidates[module], len(calls), x, None if x is None else tuple(x.shape))
        if x is not None:
            call.derived[id(x)] = (x, frozenset(), 0)
        calls[module] = call
        watch.open.append(call)

    def closed(module, args, kwargs, out):
        call = calls.get(module)
        if call is not None and call in watch.open:
            y = next(_tensors(first_tensor(out)), None)
            call.y_shape = None if y is None else tuple(y.shape)
            watch.open.remove(call)
            call.x, call.derived, call.branches = None, {}, {}   # free the activations

    def any_module(module, args, kwargs, out):
        # a module called on an open call's input: its output may be that call's projection skip
        x, y = unit_input(args, kwargs), next(_tensors(out), None)
        if not isinstance(x, Tensor) or y is None:
            return
        for call in watch.open:
            if call.x is not None and _is_view_of(x, call.x) and id(y) in call.derived:
                t, branches, ops = call.derived[id(y)]
                call.derived[id(y)] = (t, branches | {id(y)}, ops)
                call.branches[id(y)] = names.get(module, type(module).__name__)

    hooks = [m.register_forward_pre_hook(opened, with_kwargs=True) for m in candidates]
    hooks += [m.register_forward_hook(closed, with_kwargs=True) for m in candidates]
    hooks += [m.register_forward_hook(any_module, with_kwargs=True) for m in model.modules() if m not in candidates]
    was_training = model.training
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        model.eval()
        with watch:
            run_example(model, example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return calls


def _qualifies(level: Level, calls: dict, least: int = 2) -> bool:
    called = [calls[m] for _, m in level.children if m in calls]
    return (len(called) >= least and all(c.kind is not None and c.y_shape is not None for c in called)
            and any(c.same_shape for c in called))


def _suggestions(model: nn.Module, found: list[Level], calls: dict) -> list[str]:
    """Candidate globs for a refusal: levels with residual children first (inner before outer),
    then :func:`procres.diagnostics.names.repeated_blocks`."""
    residual = [lv for lv in found if any(calls.get(m) is not None and calls[m].kind for _, m in lv.children)]
    residual.sort(key=lambda lv: -sum(1 for other in residual if other is not lv and other.holds(lv)))
    return repeated_blocks(model, first=[level_glob(model, lv) for lv in residual])


def residual_layers(model: nn.Module, example_input) -> Structure:
    """The innermost levels of residual children of ``model`` (see the module docstring)."""
    found = levels(model, least=1)
    calls = _record(model, {m: n for level in found for n, m in level.children}, example_input)
    good = [lv for lv in found if _qualifies(lv, calls)]
    if not good:                                          # a model of one layer
        good = [lv for lv in found if _qualifies(lv, calls, least=1)]
    innermost = [lv for lv in good if not any(other is not lv and lv.holds(other) for other in good)]
    if not innermost:
        return Structure([], None, "", _suggestions(model, found, calls))
    picked = sorted(((calls[m], m) for lv in innermost for _, m in lv.children if m in calls),
                    key=lambda cm: cm[0].order)
    layers = [(c.name, "identity" if c.kind == "identity" and c.same_shape else "projection", m, c.skip)
              for c, m in picked]
    which = "; ".join(f"{sum(1 for _, m in lv.children if m in calls)} {lv.cls.__name__} in {lv.glob!r}"
                      for lv in innermost)
    rule = f"{which}, the innermost list of same-class modules that each add their input to a same-shape tensor"
    return Structure(layers, glob_for(model, [name for name, *_ in layers]), rule, [])
