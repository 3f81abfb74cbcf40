"""The model registry: every named zoo model, and ``<family><depth>[k2]`` names for any depth.

    family               depth  units (n per stage)          names                   params
    resnet     He 2016a  6n+2   basic blocks, option-A pad   resnet20/32/44/56/110/1202
                                                             0.27M/0.46M/0.66M/0.85M/1.7M/19.4M
    preresnet  He 2016b  9n+2   pre-act bottlenecks,         preresnet164/272/632/1001
                                BN-ReLU-conv1x1 projections  1.71M/2.82M/6.52M/10.32M
    procresnet Zaeemzadeh 9n+4  pre-act bottlenecks, all     procresnet166/274/634/1003
               et al. 2020      skips identity, transitions  1.72M/2.83M/6.53M/10.33M

    prenorm_transformer  L      pre-LN layers, token input   prenorm_transformer<L>, any L >= 1
    postnorm_transformer L      post-LN layers, token input  postnorm_transformer<L>, any L >= 1

(CIFAR-10 parameter counts, docs/theory.md section 3, measured by ``tests/models/test_models.py``;
the transformers, :mod:`procres.models.transformer`, are language models on token ids and are
built by name only: ``create_model("prenorm_transformer8", vocab_size=256)``.)
Plain twins ``plain20..plain1202``, ``plainpre164..plainpre1001``, ``plainproc166..plainproc1003``
have exactly the parameter count of their residual net; ``procresnet166k2`` / ``plainproc166k2``
have 2x2 stride-2 transitions (:mod:`procres.models.procresnet`).

Small nets for CPU work come from the depth factories, e.g.
``procresnet(13, num_classes=10, in_channels=1, image_size=16)``; the registered names are thin
wrappers over them, and ``create_model`` also builds any unregistered ``<family><depth>[k2]``
name (``procresnet13``, ``plain8``, ``procresnet22k2``) so configs can name small nets.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from typing import Callable

import torch.nn as nn

from procres.errors import UserError
from procres.models.net import DEPTHS
from procres.models.preact import plainpre, preresnet
from procres.models.procresnet import plainproc, procresnet
from procres.models.resnet import plain, resnet
from procres.models.transformer import postnorm_transformer, prenorm_transformer

__all__ = ["register_model", "create_model", "list_models", "token_families", "smallest_variant", "families",
           "model_input"]

IMAGE_DEFAULTS = {"num_classes": 10, "in_channels": 3, "image_size": 32}

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable | None = None):
    """Decorator adding a factory ``fn(*, num_classes, in_channels, image_size)`` under ``name``.

    ``@register_model`` uses the function's name, ``@register_model("x")`` the given one.
    Registering a name twice raises UserError.
    """

    def decorator(fn):
        key = fn.__name__ if name is None or callable(name) else name
        if key in _MODELS:
            raise UserError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return decorator(name) if callable(name) else decorator


def create_model(name: str, **kwargs) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`); keyword arguments go to its factory, over
    the defaults ``num_classes=10, in_channels=3, image_size=32`` (ProcResNets also take
    ``transition_kernel`` and ``project_transitions``).

    Any other ``<family><depth>[k2]`` name (``procresnet13``, ``plain8``, ``procresnet22k2``)
    builds that depth with the family's factory, so small CPU nets can be named in configs; a
    depth the family does not have raises the factory's UserError.  The transformer families
    (``prenorm_transformer8``) take no image arguments and have no image defaults.
    """
    if name in _MODELS:
        return _MODELS[name](**{**IMAGE_DEFAULTS, **kwargs})
    parsed = _parse_name(name)
    if parsed is not None:
        family, depth, kernel = parsed
        if family in _TOKEN_FAMILIES:
            images = sorted(set(kwargs) & set(IMAGE_DEFAULTS))
            if images:
                raise UserError(f"{name} is a language model on token ids; it takes no {', '.join(images)}")
            return _FAMILIES[family](depth, **kwargs)
        if kernel != 1:
            kwargs.setdefault("transition_kernel", kernel)
        return _FAMILIES[family](depth, **{**IMAGE_DEFAULTS, **kwargs})
    close = difflib.get_close_matches(str(name), list(_MODELS), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown model {name!r}{hint} (list_models() gives all {len(_MODELS)} names)")


def list_models(filter: str = "") -> list[str]:
    """Registered names, family by family, shallow to deep; ``filter`` keeps those matching an
    ``fnmatch`` pattern (``"procresnet*"``, ``"*res*16?"``). A filter without wildcards (``*?[``)
    matches anywhere in the name: ``"166"`` finds procresnet166 and plainproc166k2."""
    return _matching(list(_MODELS), filter)


def token_families(filter: str = "") -> list[str]:
    """The language-model families on token ids, built by name at any depth and registered under
    no name (``prenorm_transformer``: ``prenorm_transformer<L>``), that ``filter`` matches as in
    :func:`list_models`."""
    return _matching(list(_TOKEN_FAMILIES), filter)


def _matching(names: list[str], filter: str) -> list[str]:
    if not filter:
        return names
    pattern = filter if any(c in filter for c in "*?[") else f"*{filter}*"
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def smallest_variant(name: str) -> str:
    """The smallest depth of ``name``'s family with the same transitions (procresnet166 ->
    procresnet13, resnet110 -> resnet8, procresnet166k2 -> procresnet13k2), for smoke runs."""
    parsed = _parse_name(name)
    if parsed is None:
        raise UserError(f"model {name!r} is not <family><depth> of a family in {', '.join(_FAMILIES)}")
    family, _, kernel = parsed
    step, offset = DEPTHS.get(family, (1, 0))
    return f"{family}{step + offset}" + ("k2" if kernel == 2 else "")


def families() -> list[str]:
    """The families whose ``<family><depth>`` names :func:`create_model` builds at any depth."""
    return list(_FAMILIES)


def model_input(name: str) -> str:
    """``"tokens"`` for a transformer family's name (``prenorm_transformer8``, or the family itself),
    else ``"images"``."""
    parsed = _parse_name(name)
    return "tokens" if name in _TOKEN_FAMILIES or (parsed and parsed[0] in _TOKEN_FAMILIES) else "images"


def _parse_name(name) -> tuple[str, int, int] | None:
    """``(family, depth, transition kernel)`` of a ``<family><depth>[k2]`` name; None for any other."""
    match = _FAMILY_DEPTH.fullmatch(name) if isinstance(name, str) else None
    if match is None or (match[3] and match[1] not in ("procresnet", "plainproc")):
        return None
    return match[1], int(match[2]), 2 if match[3] else 1


_FAMILIES = {f.__name__: f for f in (resnet, preresnet, procresnet, plain, plainpre, plainproc, prenorm_transformer,
                                      postnorm_transformer)}
_TOKEN_FAMILIES = ("prenorm_transformer", "postnorm_transformer")
_FAMILY_DEPTH = re.compile(rf"({'|'.join(_FAMILIES)})(\d+)(k2)?")

for _factory, _depths in (
    (resnet, (20, 32, 44, 56, 110, 1202)),
    (preresnet, (164, 272, 632, 1001)),
    (procresnet, (166, 274, 634, 1003)),
    (plain, (20, 32, 44, 56, 110, 1202)),
    (plainpre, (164, 272, 632, 1001)),
    (plainproc, (166, 274, 634, 1003)),
):
    for _depth in _depths:
        register_model(f"{_factory.__name__}{_depth}")(functools.partial(_factory, _depth))
register_model("procresnet166k2")(functools.partial(procresnet, 166, transition_kernel=2))
register_model("plainproc166k2")(functools.partial(plainproc, 166, transition_kernel=2))
del _factory, _depths, _depth
