"""Module-name globs: the pattern language of ``units_by_name`` and ``select_convs``, and the
globs of a model's repeated blocks that messages suggest when its units must be named.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["name_pattern", "repeated_blocks", "how_to_name_units"]


def repeated_blocks(model: nn.Module, most: int = 3) -> list[str]:
    """Globs of ``model``'s repeated blocks, candidates for :func:`units_by_name`: the children of
    every ``nn.ModuleList`` / ``nn.Sequential`` of at least two modules of one class defined
    outside ``torch.nn``, with each number in a name made ``*`` (``layer1.0`` -> ``layer*.*``);
    the first ``most`` in registration order (outer containers first)."""
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        kinds = {type(child) for child in m}
        if len(kinds) > 1 or kinds.pop().__module__.startswith("torch.nn"):
            continue
        glob = re.sub(r"\d+", "*", f"{name}.*" if name else "*")
        if glob not in found:
            found.append(glob)
    return found[:most]


def how_to_name_units(model: nn.Module) -> str:
    """The end of the sentence that says a model's units must be named: the call, and the model's
    repeated blocks as candidate globs."""
    globs = repeated_blocks(model)
    where = (f"; repeated blocks of {type(model).__name__}: {', '.join(map(repr, globs))}" if globs
             else ", e.g. 'layer*.*'")
    return f"procres.units_by_name(model, PATTERN) or procres inspect --units PATTERN, a glob of module names{where}"


def name_pattern(pattern: str) -> re.Pattern:
    """Regex of a module-name glob: ``*`` and ``?`` stay within one dotted segment, ``[...]`` is a
    character class (``[!...]`` negated), everything else is literal."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        end = pattern.find("]", i + 2) if ch == "[" else -1
        if ch == "*":
            out.append(r"[^.]*")
        elif ch == "?":
            out.append(r"[^.]")
        elif end > 0:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", r"\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))
