"""One example forward pass through any model: its failure as one sentence, the first input each
of some modules received (for input sizes of convs and the forward order of named units), and how
a layer's input and output tensors are read.

A layer's input (:func:`unit_input`) is its first positional argument; a layer called with keywords
only (``layer(hidden_states=x, ...)``, as five Hugging Face models call theirs) gives its
``hidden_states`` keyword, else its first keyword argument.  A layer's output (:func:`first_tensor`)
is the value itself, or the first entry of a tuple, list or dict (a ``ModelOutput``, or a layer's
``(hidden_states, attentions)``) when that entry is a tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from procres.errors import UserError

__all__ = ["run_example", "first_inputs", "unit_input", "first_tensor"]


def unit_input(args: tuple, kwargs: dict):
    """The input of a layer called with ``args`` and ``kwargs`` (see the module docstring); None
    when it gets no argument."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(iter(kwargs.values()), None)


def first_tensor(value):
    """``value`` itself, or the first entry of a tuple, list or dict when that is a tensor; else
    ``value``."""
    if isinstance(value, (tuple, list)) and value:
        first = value[0]
    elif isinstance(value, dict) and value:
        first = next(iter(value.values()))
    else:
        return value
    return first if isinstance(first, Tensor) else value


def run_example(model: nn.Module, example_input, *, grad: bool = False):
    """``model(example_input)`` (a tuple or list is unpacked, a dict passed as keywords); failures
    become one sentence."""
    try:
        with torch.set_grad_enabled(grad):
            if isinstance(example_input, dict):
                return model(**example_input)
            if isinstance(example_input, (tuple, list)):
                return model(*example_input)
            return model(example_input)
    except Exception as err:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{type(model).__name__} failed on the example input {shape}: "
                        f"{type(err).__name__}: {first}") from err


def first_inputs(model: nn.Module, modules, example_input) -> dict:
    """``{module: its input}`` (:func:`unit_input`) for the ``modules`` called in one forward pass
    of ``example_input`` (eval mode, no grad; the model's mode is restored), in order of first call."""
    seen: dict = {}

    def record(module, args, kwargs):
        if module not in seen:
            seen[module] = unit_input(args, kwargs)

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    was_training = model.training
    try:
        model.eval()
        run_example(model, example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen
