"""``procres study``: the depth study of any model family, from FACTORY strings to the study's JSON,
the paper's "deviation vs depth" figure and a verdict computed from the numbers.

FACTORY (:func:`procres.models.factory.depth_factory`): a model family whose depth goes into its
name (``preresnet`` -> ``preresnet164``; ``prenorm_transformer`` -> ``prenorm_transformer8``), or
``package.module:callable`` called with ``depth_kwarg=depth`` and ``kwargs``; a Hugging Face model
class is built from its config, so ``transformers:GPT2LMHeadModel`` with ``depth_kwarg="n_layer"``
and ``kwargs`` ``{"n_embd": 64, ...}`` is GPT-2 at each depth.  A family is named by FACTORY, or
by the callable's name (``tiny_gpt2``; its models ``tiny_gpt2[n_layer=8]``).

:func:`depth_study` is ``procres.depth_study``: :func:`procres.diagnostics.study.depth_study`, the
measurement, with FACTORY strings accepted and random data made when none is given: ``input_shape``
``(C, H, W)`` standard normal inputs, or ``input_ids`` LEN token ids in ``[0, vocab)`` (``vocab``, else
the smallest vocabulary of the families' shallowest models), ``EXAMPLES`` of them, no labels (a
classifier gets random labels, a language model the next-token loss).

:func:`run_study` is the command: the study; its findings
(:func:`procres.reports.verdicts.study_findings`: for each family, whether its identity units
deviate less from r_l = 1 the deeper the net, at initialisation and after the SGD steps, with the
thresholds of :mod:`procres.reports.verdicts`); ``OUT/depth_study.json`` (the study without the
per-unit norm summaries, plus ``findings`` and ``spec``) and ``OUT/depth_study.png``, drawn from
that JSON by :func:`procres.reports.plots.plot_depth_study` (``procres plot OUT`` draws it again).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from procres.diagnostics.inspection import vocab_of
from procres.diagnostics.study import DepthUnchanged, checked_depths
from procres.diagnostics.study import depth_study as measure_depths
from procres.errors import UserError
from procres.files import atomic_write_text, json_text
from procres.models.factory import depth_factory, input_kwargs
from procres.reports.plots import plot_depth_study
from procres.reports.verdicts import VERDICTS, fmt, model_label, study_cells, study_findings, study_group
from procres.training.data import make_batches

__all__ = ["depth_study", "run_study", "study_table", "EXAMPLES"]

EXAMPLES = 256  # random inputs a study draws its batches from


def _resolve(model_factory, depth_kwarg, kwargs, shape) -> tuple[dict, dict]:
    """-> ({family: callable(depth)}, {family: model-name template}) for a FACTORY string, a list
    of them, a callable, or a dict of either."""
    if isinstance(model_factory, dict):
        items = list(model_factory.items())
    elif isinstance(model_factory, (list, tuple)):
        items = [(None, spec) for spec in model_factory]
    else:
        items = [(None, model_factory)]
    factories, labels = {}, {}
    for family, spec in items:
        if not isinstance(spec, str):
            family = family or "model"
            factories[family] = spec
            continue
        name = spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        family = family or name
        if family in factories:
            raise UserError(f"two FACTORY strings name the family {family!r}; give a dict of {{family: FACTORY}}")
        factories[family] = depth_factory(spec, depth_kwarg=depth_kwarg, kwargs=input_kwargs(spec, shape, kwargs or {}))
        labels[family] = spec if ":" not in spec else f"{name}[{depth_kwarg}={{depth}}]"
    return factories, labels


def _random_data(factories: dict, depths: list, input_shape, input_ids, vocab, seed: int) -> tuple:
    """``(x, None)``: ``EXAMPLES`` random inputs of ``input_shape`` or token ids of length ``input_ids``."""
    if (input_shape is None) == (input_ids is None):
        raise UserError("give the input the models take: input_shape (C, H, W) or input_ids LEN "
                        "(--input-shape or --input-ids), one of them")
    if input_ids is not None and vocab is None:
        with torch.random.fork_rng(devices=[]):
            vocab = min(vocab_of(factory(depths[0])) for factory in factories.values())
    shape = (input_ids,) if input_ids is not None else tuple(input_shape)
    batches, _ = make_batches("random", input_shape=shape, batch=EXAMPLES, count=1, seed=seed,
                              vocab=vocab if input_ids is not None else None)
    return batches[0][0], None


def depth_study(model_factory, depths, data=None, *, steps: int, depth_kwarg: str | None = None,
                kwargs: dict | None = None, input_shape=None, input_ids: int | None = None,
                vocab: int | None = None, seed: int = 0, **options) -> dict:
    """r_l per unit at each depth, at initialisation and after ``steps`` SGD steps (see the module
    docstring; ``options`` and the result are :func:`procres.diagnostics.study.depth_study`'s,
    with ``models``: each FACTORY family's model-name template)."""
    depths = checked_depths(depths)
    shape = None if input_shape is None else tuple(input_shape)
    factories, labels = _resolve(model_factory, depth_kwarg, kwargs, shape)
    if data is None:
        data = _random_data(factories, depths, shape, input_ids, vocab, seed)
    elif shape is not None or input_ids is not None:
        raise UserError("data is given: input_shape and input_ids describe random data; drop them")
    try:
        study = measure_depths(factories, depths, data, steps=steps, seed=seed, vocab=vocab, **options)
    except DepthUnchanged as err:
        if depth_kwarg is None or err.family not in labels:   # with --depth-kwarg every FACTORY string is an import path
            raise
        raise UserError(f"--depth-kwarg {depth_kwarg} did not change the model {err.family}: {err.units} units at "
                        f"every depth ({err.depths[0]} and {err.depths[1]})") from None
    if labels:
        study["models"] = labels
    return study


def run_study(factories, depths, *, out, steps: int = 5, depth_kwarg: str | None = None, kwargs=None,
              input_shape=None, input_ids: int | None = None, vocab: int | None = None, **options) -> dict:
    """The study of ``factories`` (FACTORY strings), its findings and files (see the module
    docstring); returns ``{"study", "findings", "paths"}``."""
    study = depth_study(list(factories), depths, steps=steps, depth_kwarg=depth_kwarg, kwargs=kwargs,
                        input_shape=input_shape, input_ids=input_ids, vocab=vocab, **options)
    study.pop("summaries", None)   # per-unit forward/backward norms: large, not used by the figure
    study["spec"] = {"factories": list(factories), "depth_kwarg": depth_kwarg, "kwargs": kwargs or {},
                     "input_shape": None if input_shape is None else list(input_shape), "input_ids": input_ids,
                     "vocab": vocab}
    findings = study_findings(study)
    study["findings"] = [f.to_dict() for f in findings]
    out = Path(out)
    atomic_write_text(out / "depth_study.json", json_text(study, indent=1) + "\n")
    saved = json.loads((out / "depth_study.json").read_text())        # the figure reads the file's numbers
    paths = {"json": out / "depth_study.json", "figure": plot_depth_study(saved, out / "depth_study.png")}
    return {"study": study, "findings": findings, "paths": paths}


def study_table(study: dict, findings: list) -> str:
    """Mean |log10 r_l| over each family's compared units per depth and phase, then each finding."""
    depths = study["depths"]
    cells = study_cells(study)
    w = max([24] + [len(model_label(study, f, "")) for f in study["results"]])
    lines = [f"{'family':{w}s} {'phase':8s} {'units':9s} " + " ".join(f"{'depth ' + str(d):>10s}" for d in depths)]
    for family in study["results"]:
        group = study_group(family, study.get("block_kinds", {}).get(family) or [])
        for phase in ("init", "trained"):
            row = [next(c for c in cells if c["family"] == family and c["depth"] == d and c["phase"] == phase)
                   for d in depths]
            values = [math.inf if c["overflow"] else c["groups"].get(group, {}).get("dev_mean") for c in row]
            lines.append(f"{family:{w}s} {phase:8s} {group:9s} " + " ".join(f"{fmt(v, 4):>10s}" for v in values))
    lines.append(f"(mean |log10 r_l| over the units; {study['steps']} SGD steps between init and trained)")
    for f in findings:
        lines.append(f"  {VERDICTS[f.holds]:12s}  {f.sentence}  [{f.where}]")
    return "\n".join(lines)
