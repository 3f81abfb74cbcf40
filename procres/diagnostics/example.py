"""One example forward pass through any model: its failure as one sentence, and the first input
each of some modules received (for input sizes of convs and the forward order of named units).
"""

from __future__ import annotations

import torch
from torch import nn

from procres.errors import UserError

__all__ = ["run_example", "first_inputs"]


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
    """``{module: its first positional input}`` for the ``modules`` called in one forward pass of
    ``example_input`` (eval mode, no grad; the model's mode is restored), in order of first call."""
    seen: dict = {}

    def record(module, args):
        if module not in seen:
            seen[module] = args[0] if args else None

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    was_training = model.training
    try:
        model.eval()
        run_example(model, example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen
