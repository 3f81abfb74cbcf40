"""MODEL strings of the command line: a registered name or an import path, optionally with weights.

``build(spec, kwargs)`` turns ``spec`` into a model:

- a registered name or ``<family><depth>`` (``procres models``): ``procres.models.registry.create_model``
  with ``kwargs`` (``num_classes``, ``in_channels``, ``image_size``);
- ``package.module:factory`` (dots in ``factory`` reach attributes: ``pkg.mod:Class.build``):
  the module is imported (the current directory first on the path, as ``python -m`` does) and
  ``factory(**kwargs)`` is called; it must return an ``nn.Module``.  A Hugging Face model class
  (an ``nn.Module`` class with a ``config_class``: ``transformers:GPT2LMHeadModel``) is built from
  its config, ``cls(cls.config_class(**kwargs))``: ``kwargs`` are the config's (``n_layer``, ...).
  A config takes any keyword and keeps the unknown ones as inert attributes, so a keyword that is
  not an attribute of the default config (its ``to_dict()`` keys, ``attribute_map`` aliases,
  ``__init__`` parameters and properties) is refused, with the config's closest attribute names.

Every way this can fail (malformed string, module not found, missing attribute, a factory that
raises or returns something else) is one ``UserError`` sentence naming the string.

``depth_factory(spec, depth_kwarg=, kwargs=)`` is the FACTORY of ``procres study``: a model family
(``preresnet``, ``prenorm_transformer``: the depth goes into the name, ``preresnet164``) or an
import path whose depth goes into the keyword argument ``depth_kwarg`` (``n_layer`` for
``transformers:GPT2LMHeadModel``).  ``input_kwargs`` adds what a zoo image model takes from its
input shape (``in_channels``, ``image_size``).

``load_model`` is ``procres spectrum``'s: a zoo model, optionally with a run's trained weights
(read with ``weights_only=True``), whose name and input shape default to the checkpoint's config.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from procres.errors import UserError
from procres.files import failure_reason, read_json, read_torch

__all__ = ["build", "load_model", "depth_factory", "input_kwargs", "state_mismatch"]

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(f"cannot import module {module_name!r} of MODEL {spec!r} ({failure_reason(err)})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r} (MODEL {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"MODEL {spec!r} names a {type(obj).__name__}, not a callable factory")
    return obj


def _config_class(factory):
    """The ``config_class`` a Hugging Face model class is built from, else None."""
    config_class = getattr(factory, "config_class", None)
    hugging_face = isinstance(factory, type) and issubclass(factory, nn.Module) and isinstance(config_class, type)
    return config_class if hugging_face else None


def _config_attributes(config_class: type) -> set[str]:
    """The keywords ``config_class`` knows: the default config's ``to_dict()`` keys, its
    ``attribute_map`` aliases, its ``__init__`` parameters and its properties."""
    config = config_class()
    known = set(config.to_dict()) | set(getattr(config, "attribute_map", {}) or {})
    known |= {n for n in inspect.signature(config_class.__init__).parameters if n not in ("self", "kwargs")}
    known |= {n for n in dir(config_class) if isinstance(getattr(config_class, n, None), property)}
    return {k for k in known if not k.startswith("_")}


def _check_config_keywords(spec: str, config_class: type, keys, option: str = "--kwargs") -> None:
    """A UserError naming the first of ``keys`` that ``config_class`` does not know (see the module
    docstring), with its closest known names; ``option`` says where the keyword came from."""
    known = _config_attributes(config_class)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UserError(f"{option} {key!r} is not an attribute of {config_class.__name__} (MODEL {spec!r} is "
                            f"built from that config, which would keep it unused){hint}")


def build(spec: str, kwargs: dict | None = None) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), built with ``kwargs``."""
    from procres.models.registry import create_model

    kwargs = dict(kwargs or {})
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"MODEL must be a registered name or package.module:factory, got {spec!r}")
    if ":" not in spec:
        if not re.fullmatch(r"[\w.-]+", spec):
            raise UserError(f"MODEL must be a registered name (procres models) or package.module:factory, "
                            f"got {spec!r}")
        try:
            return create_model(spec, **kwargs)
        except UserError:
            raise
        except TypeError as err:
            raise UserError(f"model {spec!r} does not take these arguments {kwargs}: {failure_reason(err)}") from None
    if not _IMPORT_PATH.fullmatch(spec):
        raise UserError(f"MODEL {spec!r} is not an import path of the form package.module:factory")
    factory = _import_factory(spec)
    config_class = _config_class(factory)
    if config_class is not None:
        _check_config_keywords(spec, config_class, kwargs, option="keyword")
    try:
        model = factory(config_class(**kwargs)) if config_class is not None else factory(**kwargs)
    except Exception as err:
        raise UserError(f"factory {spec}(**{kwargs}) raised {failure_reason(err)}") from err
    if not isinstance(model, nn.Module):
        hint = ("; name a model class instead (e.g. transformers:GPT2LMHeadModel), which is built from its "
                "config_class" if hasattr(model, "model_type") else "")
        raise UserError(f"factory {spec} returned a {type(model).__name__}, not an nn.Module{hint}")
    return model


def input_kwargs(spec: str, shape, kwargs: dict) -> dict:
    """``kwargs`` with the ``in_channels`` and ``image_size`` a zoo image model takes from its input
    ``shape`` ``(C, H, W)`` (``kwargs`` win); unchanged for an import path, a token family or no shape."""
    from procres.models.registry import model_input

    if shape is None or ":" in spec or model_input(spec) != "images":
        return dict(kwargs)
    return {"in_channels": shape[0], "image_size": shape[1], **kwargs}


def depth_factory(spec: str, *, depth_kwarg: str | None = None, kwargs: dict | None = None):
    """``callable(depth) -> model`` for a FACTORY string (see the module docstring)."""
    from procres.models.registry import families

    kwargs = dict(kwargs or {})
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"FACTORY must be a model family or package.module:callable, got {spec!r}")
    if spec in families():
        if depth_kwarg is not None:
            raise UserError(f"the family {spec!r} takes its depth by name ({spec}<depth>); drop --depth-kwarg "
                            f"{depth_kwarg}")
        return lambda depth: build(f"{spec}{depth}", kwargs)
    if ":" not in spec:
        raise UserError(f"FACTORY {spec!r} is neither a model family ({', '.join(families())}) nor "
                        f"package.module:callable")
    if not isinstance(depth_kwarg, str) or not depth_kwarg.isidentifier():
        raise UserError(f"FACTORY {spec!r} needs --depth-kwarg NAME, the keyword argument that sets its depth "
                        f"(n_layer for GPT-2, num_hidden_layers for BERT), got {depth_kwarg!r}")
    if depth_kwarg in kwargs:
        raise UserError(f"--kwargs sets {depth_kwarg}={kwargs[depth_kwarg]!r}, the argument the study varies; "
                        f"drop it")
    if not _IMPORT_PATH.fullmatch(spec):
        raise UserError(f"FACTORY {spec!r} is not an import path of the form package.module:callable")
    factory = _import_factory(spec)  # a bad path or keyword fails here, before any model is built
    config_class = _config_class(factory)
    if config_class is not None:
        _check_config_keywords(spec, config_class, [depth_kwarg], option="--depth-kwarg")
        _check_config_keywords(spec, config_class, kwargs)
    return lambda depth: build(spec, {**kwargs, depth_kwarg: depth})


# ---------------------------------------------------------------- `procres spectrum`: zoo models + checkpoints
_DATASET_SHAPES = {"digits": (1, 10, 16), "cifar10": (3, 10, 32), "cifar100": (3, 100, 32)}


def state_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """One line on how ``given`` differs from the model's ``expected`` state_dict: counts of missing
    and unexpected keys and of shape mismatches, the first ``shown`` of each."""
    def few(keys):
        return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {what} ({few(keys)})" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    return "; ".join(parts) or "the state_dict does not load"


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    """-> (state_dict with DDP/compile prefixes removed, config dict or {})."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    blob = read_torch(path)
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state_dict or a dict with key 'model'")
    config = blob.get("config") or {}
    if isinstance(config, str):  # checkpoint.pt keeps the config as TrainConfig.to_json() text
        config = json.loads(config)
    if not config and (path.parent / "config.json").is_file():
        config = read_json(path.parent / "config.json")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    return state, config


def load_model(name: str | None, *, checkpoint=None, image_size: int | None = None,
               in_channels: int | None = None, num_classes: int | None = None):
    """Build ``name`` (any registered name or ``<family><depth>``), optionally with trained weights.

    ``checkpoint``: a run's ``model.pt`` / ``checkpoint.pt`` (a state_dict or ``{"model": sd}``).
    Model name, channels, classes and image size default to the config saved with it (or the run
    folder's config.json: its data set, and its ``image_size`` when set), else to CIFAR-10 (3, 10, 32).  Returns ``(model in eval mode,
    image_size, in_channels)``.
    """
    config, state = {}, None
    if checkpoint is not None:
        state, config = _read_checkpoint(Path(checkpoint))
    name = name or config.get("model")
    if name is None:
        raise UserError("give --model NAME (the checkpoint carries no config naming it)")
    ch, classes, size = _DATASET_SHAPES.get(config.get("dataset"), (3, 10, 32))
    ch, classes = in_channels or ch, num_classes or classes
    size = image_size or config.get("image_size") or size  # a run at another size (the demo's 8x8 digits)
    model = build(name, dict(num_classes=classes, in_channels=ch, image_size=size))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(f"{checkpoint}: weights do not fit {name} (in_channels={ch}, num_classes={classes}, "
                            f"image_size={size}): {state_mismatch(model.state_dict(), state)}") from None
    return model.eval(), size, ch
