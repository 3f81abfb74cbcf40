"""Tracing a model with ``torch.fx`` for :func:`procres.diagnostics.units.find_units`.

``trace(model, example_input)`` returns the traced ``GraphModule`` and every module call the trace
saw (its first input and output nodes), after one run of the graph on ``example_input`` (eval mode,
no grad, every buffer restored) that notes which nodes carry tensors and their shapes.  Three
things make a user's model trace as it runs: ``forward`` arguments the example input does not give
are fixed at their defaults (``if mask is not None`` takes the example's branch); later uses of a
tensor changed by an in-place method (``out.add_(x)`` as a statement) read that call; batch norms
stay whole (traced through, a subclass's ``self.training`` would be fixed at trace time).
Failures are one sentence: :class:`TraceError` where ``torch.fx`` cannot trace the model (the cue
for :func:`procres.diagnostics.units.find_units` to find the units by structure instead), a
plain ``UserError`` where the traced graph fails on the example input.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import fx, nn

from procres.errors import UserError

__all__ = ["Call", "TraceError", "trace"]


class TraceError(UserError):
    """``torch.fx`` cannot trace the model (data-dependent control flow, ``assert`` on shapes, ...)."""


@dataclasses.dataclass
class Call:
    """A module call seen by the trace: ``key`` is the module's name (``name@k`` for its k-th
    further call), ``input`` and ``output`` its first input's and its output's nodes."""

    key: str
    name: str
    module: nn.Module
    input: fx.Node | None
    output: fx.Node | None = None


class _Tracer(fx.Tracer):
    """``fx.Tracer`` that keeps ``leaves`` whole and records every module call's first input and
    output node under its ``nn_module_stack`` key."""

    def __init__(self, leaves=()):
        super().__init__()
        self.leaves = {id(m) for m in leaves}
        self.calls: list[Call] = []

    def is_leaf_module(self, m, qualified_name):
        # batch norms with their own forward (timm's BatchNormAct2d) stay whole: traced through, their
        # self.training would be fixed at trace time (batch statistics in eval, running stats moved)
        return (id(m) in self.leaves or isinstance(m, nn.modules.batchnorm._BatchNorm)
                or super().is_leaf_module(m, qualified_name))

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        count = self.num_calls.get(name, 0)
        first = args[0] if args else None
        call = Call(f"{name}@{count}" if count else name, name, m,
                     first.node if isinstance(first, fx.Proxy) else None)
        out = super().call_module(m, forward, args, kwargs)
        call.output = out.node if isinstance(out, fx.Proxy) else None
        self.calls.append(call)
        return out


def _tensorish(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_tensorish(v) for v in value)
    if isinstance(value, dict):
        return any(_tensorish(v) for v in value.values())
    return False


class _Meta(fx.Interpreter):
    """Runs the traced graph once, noting which nodes carry tensors and their shapes."""

    def run_node(self, n):
        out = super().run_node(n)
        n.meta["procres_tensor"] = _tensorish(out)
        n.meta["procres_shape"] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def _fixed_arguments(model: nn.Module, example_input) -> dict:
    """The defaults of the ``forward`` parameters that ``example_input`` does not give: traced as
    constants, so that ``if mask is not None`` takes the branch the example takes."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    if isinstance(example_input, dict):
        given = set(example_input)
    else:
        count = len(example_input) if isinstance(example_input, (tuple, list)) else 1
        given = {p.name for p in params[:count]}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params
            if p.name not in given and p.kind in kinds and p.default is not inspect.Parameter.empty}


def _alias_in_place(graph: fx.Graph) -> None:
    """Make later uses of a tensor changed by an in-place method (``out.add_(x)`` without an
    assignment) read that call's node, which returns the same tensor: fx records no data flow
    through a mutation, so the addition would otherwise seem to feed nothing."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in list(graph.nodes):
        name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
        if n.op not in ("call_method", "call_function") or not isinstance(name, str) or not n.args:
            continue
        if name.endswith("_") and not name.startswith("_") and isinstance(n.args[0], fx.Node):
            n.args[0].replace_all_uses_with(n, delete_user_cb=lambda user, n=n: order[user] > order[n])


def trace(model: nn.Module, example_input, leaves=()):
    """-> (GraphModule, calls), the graph run once on ``example_input``; failures are one sentence."""
    tracer = _Tracer(leaves)
    try:
        graph = tracer.trace(model, concrete_args=_fixed_arguments(model, example_input) or None)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TraceError(f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {first[:160]})") from err
    _alias_in_place(graph)
    gm = fx.GraphModule(model, graph, class_name=f"Traced{type(model).__name__}")
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if isinstance(example_input, dict):  # the others are fixed arguments: their defaults
        args = [example_input[n.target] if n.target in example_input else (n.args or (None,))[0]
                for n in placeholders]
    else:
        args = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    was_training = model.training
    buffers = [(b, b.clone()) for b in model.buffers()]     # what a traced-through module would move
    try:
        model.eval()  # no batch-norm statistics move; the graph is fixed already
        with torch.no_grad():
            _Meta(gm).run(*args)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"the traced {type(model).__name__} failed on the example input "
                        f"({type(err).__name__}: {first[:160]})") from err
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return gm, tracer.calls
