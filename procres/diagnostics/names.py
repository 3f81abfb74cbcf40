"""Module-name globs: the pattern language of ``units_by_name`` and ``select_convs``, the levels of
repeated blocks in a model, and the glob that selects a given set of modules.

A *level* is the children of one class in the ``nn.ModuleList`` / ``nn.Sequential`` /
``nn.ModuleDict`` containers whose names differ only in their numbers: ``encoder.stages.0.layers``
and ``encoder.stages.1.layers`` make the level ``encoder.stages.*.layers.*``; or the children of
one module whose attribute names differ only in their numbers (``block1``, ``block2``, ... of a
class defined outside ``torch.nn``: the level ``block*``).  A container may hold a single child of
the level's class (torchvision's ``layer2`` of a (2, 1, 1, 1) ResNet) or other classes too (a
ConvNeXt stage's downsampling in front of its blocks); a level has at least ``least`` children in
all (2 unless asked: the one layer of a one-layer model is a level of one).
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

__all__ = ["Level", "levels", "level_glob", "name_pattern", "glob_for", "repeated_blocks", "how_to_name_units"]


@dataclasses.dataclass
class Level:
    """The children of one class in containers whose names differ only in their numbers."""

    glob: str              # 'encoder.stages.*.layers.*'
    cls: type
    children: list         # (qualified name, module), registration order
    containers: list       # container names

    def holds(self, other: "Level") -> bool:
        """Whether ``other``'s containers are children of this level or lie inside one."""
        return any(c == child or c.startswith(child + ".") for c in other.containers for child, _ in self.children)


_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def _numbered(name: str) -> str:
    return re.sub(r"\d+", "*", name)


def levels(model: nn.Module, least: int = 2) -> list[Level]:
    """Every level of ``model`` with at least ``least`` children (see the module docstring), in
    registration order."""
    found: dict = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for k, child in module.named_children():
            if isinstance(module, _CONTAINERS):
                glob = _numbered(prefix) + "*"                 # layer1.0, layer2.0, ...: "layer*.*"
            elif re.search(r"\d", k) and not type(child).__module__.startswith("torch.nn"):
                glob = _numbered(prefix + k)              # block1, block2, ...: attributes numbered alike
            else:
                continue
            level = found.setdefault((glob, type(child)), Level(glob, type(child), [], []))
            level.children.append((prefix + k, child))
            if name not in level.containers:
                level.containers.append(name)
    return [lv for lv in found.values() if len(lv.children) >= least]


def level_glob(model: nn.Module, level: Level):
    """What :func:`units_by_name` takes to select exactly ``level``'s children: its glob when that
    matches them and nothing else, else a narrower glob or their names (:func:`glob_for`)."""
    return glob_for(model, [n for n, _ in level.children])


def repeated_blocks(model: nn.Module, most: int = 3, *, first=()) -> list:
    """Patterns of ``model``'s repeated blocks, candidates for :func:`units_by_name`: ``first``
    (patterns known to select residual layers, best first), then the levels of classes defined
    outside ``torch.nn``, inner levels before the outer ones that hold them (each as
    :func:`level_glob`); at most ``most``."""
    found = [lv for lv in levels(model) if not lv.cls.__module__.startswith("torch.nn")]
    inner_first = sorted(found, key=lambda lv: -sum(1 for other in found if lv is not other and other.holds(lv)))
    patterns = [*first, *(level_glob(model, lv) for lv in inner_first)]
    unique = {repr(p): p for p in patterns}                       # lists of names are patterns too
    return list(unique.values())[:most]


def how_to_name_units(model: nn.Module, globs=None, *, command: str = "procres inspect --units PATTERN") -> str:
    """The end of the sentence that says a model's units must be named: the call (and ``command``,
    the command line's way, when there is one), and candidate patterns (``globs``, else
    :func:`repeated_blocks`), else the model's children to name them from."""
    globs = repeated_blocks(model) if globs is None else list(globs)
    children = ", ".join(n for n, _ in model.named_children()) or "none"
    where = (f"; repeated blocks of {type(model).__name__}: {', '.join(map(repr, globs))}" if globs
             else f"; a list of module names will do (the children of {type(model).__name__}: {children})")
    how = f"procres.units_by_name(model, PATTERN) or {command}" if command else "procres.units_by_name(model, PATTERN)"
    return f"{how}, a glob of module names{where}"


def glob_for(model: nn.Module, names: list[str]):
    """A glob that selects exactly the modules ``names`` of ``model`` (each number made ``*``:
    ``layer1.0``, ``layer2.0`` -> ``'layer*.*'``; several such globs as a list), else ``names``
    themselves: either way what :func:`units_by_name` takes back."""
    globs = list(dict.fromkeys(re.sub(r"\d+", "*", n) for n in names))
    regexes = [name_pattern(g) for g in globs]
    matched = {n for n, _ in model.named_modules() if n and any(r.fullmatch(n) for r in regexes)}
    if matched != set(names):
        return list(names)
    return globs[0] if len(globs) == 1 else globs


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
