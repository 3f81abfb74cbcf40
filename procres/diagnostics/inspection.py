"""``procres inspect``: the paper's diagnostics for any model, in one call.

``inspect_model(model, batches)`` measures, on ``batches`` (a list of ``(x, y)``; ``y`` may be None):

1. units (:func:`procres.diagnostics.units.find_units`: traced, else by structure; or
   ``units_by_name`` for a ``pattern``), with the rule and glob that found them;
2. the conv table (:func:`procres.diagnostics.convs.conv_spectra`) of the weights as given, at the input
   size each conv sees for the first batch (empty without an ``nn.Conv2d``: GPT-2's ``Conv1D`` is a
   linear layer);
3. with ``project`` (``"exact"``, ``"downsample"``, a glob or a list, as ``attach_procrustes(convs=...)``
   selects convs: :func:`procres.diagnostics.convs.select_layers`), the selected convs' spectra before
   and after one exact Procrustes projection (:func:`procres.spectral.projection.project_conv_`) of a
   copy of the model, so that the other numbers are the given model's (:func:`projection_preview`);
4. r_l per unit (:class:`procres.diagnostics.recorder.NormRecorder`): mean over ``measure`` forward and
   backward passes in training mode without an update ("init"), then ``steps`` steps of SGD
   (lr ``lr``, momentum 0.9; the model is changed), then the same passes again ("trained").

``x`` is a float tensor (images, features) or integer token ids ``(N, T)`` in ``[0, vocab)``.  A
Hugging Face model's cache is turned off (``config.use_cache = False``): GPT-2 and Llama would
otherwise build one in every forward, training included.

The probe loss (:func:`probe_loss`, also the depth study's).  The model's output is a tensor, or a
tuple or dict (a ``ModelOutput``) whose first entry is one (``logits``, ``last_hidden_state``).

- A language model's logits, ``(N, T, V)`` for token ids ``(N, T)``: next-token cross-entropy
  (position t predicts ``x[:, t + 1]``, mean over the ``N (T - 1)`` predictions, as Hugging Face's
  ``ForCausalLMLoss`` with ``labels=input_ids``).  Logits by shape: ``V`` is the model's own
  vocabulary (``config.vocab_size`` or ``vocab_size``, :func:`model_vocab`) when it declares one,
  whatever the ids' range (``--vocab``, which may not exceed it: :func:`vocab_of` refuses), so a
  base model's ``(N, T, hidden)`` states are not logits; else any ``V`` of at least the ids' range.
- ``(N, K)`` logits: cross-entropy with ``y`` (random labels in ``[0, K)`` when ``y`` is None).
- Anything else: ``sum(out * g) / N`` for a standard normal ``g`` of the output's shape (drawn from
  the generator): an isotropic output gradient, as the paper assumes, that a final LayerNorm
  cannot cancel (half the mean square of a normalised output is a constant).

The random draws come from a generator seeded with ``seed``, the same for both measurements.  r_l
measures how the network transports a gradient, whichever loss produced it.  Wall and CPU seconds per phase
(``trace``, ``spectra``, ``record``) are part of the result.  :mod:`procres.reports.inspection`
writes it as ``inspect.json`` with its figures; the command line's batches come from
:func:`procres.training.data.make_batches`.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from procres.diagnostics.convs import conv_spectra, layer_spectrum, select_layers
from procres.diagnostics.example import first_tensor
from procres.diagnostics.recorder import NormRecorder
from procres.diagnostics.units import find_units, units_by_name
from procres.errors import UserError

__all__ = ["inspect_model", "units_table", "projection_preview", "projection_table", "probe_loss", "next_token_loss",
           "vocab_of", "model_vocab", "without_cache"]


def model_vocab(model: nn.Module) -> int | None:
    """The vocabulary ``model`` declares: ``model.config.vocab_size`` (Hugging Face) or
    ``model.vocab_size`` (the zoo's transformers), else None."""
    return getattr(getattr(model, "config", None), "vocab_size", None) or getattr(model, "vocab_size", None)


def vocab_of(model: nn.Module, vocab: int | None = None) -> int:
    """The range of the token ids: ``vocab`` when given, else the model's (:func:`model_vocab`); a
    sentence naming both when neither exists, or when ``vocab`` exceeds the model's (ids out of
    the range of its logits and embedding)."""
    own = model_vocab(model)
    if vocab is None:
        vocab = own
        if vocab is None:
            raise UserError(f"{type(model).__name__} has no config.vocab_size and no vocabulary was given: "
                            f"give it with --vocab N (vocab= from Python)")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        raise UserError(f"the vocabulary must be an integer of at least 2, got {vocab!r}")
    if own is not None and vocab > own:
        raise UserError(f"--vocab {vocab} exceeds the vocabulary of {type(model).__name__} ({own}, the width of its "
                        f"logits): token ids up to {vocab - 1} would be out of its range; give at most {own}")
    return vocab


def without_cache(model: nn.Module) -> nn.Module:
    """``model`` with a Hugging Face ``config.use_cache`` turned off (no key/value cache per forward)."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False
    return model


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (N, T, V)`` at position t against ``ids[:, t + 1]``."""
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def probe_loss(out, y, gen: torch.Generator | None, x=None, vocab: int | None = None,
               width: int | None = None) -> torch.Tensor:
    """The loss inspect and the depth study backpropagate (see the module docstring): ``out`` the
    model's output on ``x``, ``y`` labels or None, ``gen`` the generator of the random draws,
    ``vocab`` the range of token ids ``x``, ``width`` the model's own vocabulary (None: undeclared)."""
    out = first_tensor(out)
    if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
        raise UserError(f"inspect needs a model that returns a float tensor, or a tuple or dict (a ModelOutput) "
                        f"whose first entry is one; got {type(out).__name__}")
    tokens = isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dim() == 2
    lm = tokens and out.dim() == 3 and tuple(out.shape[:2]) == tuple(x.shape)
    if lm and _logits_width(out.shape[2], vocab, width):
        return next_token_loss(out, x.to(out.device))
    if out.dim() == 2 and out.shape[1] > 1:
        if y is None:
            y = torch.randint(out.shape[1], (out.shape[0],), generator=gen).to(out.device)
        return nn.functional.cross_entropy(out, y)
    direction = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    return (out * direction).sum() / out.shape[0]


def _logits_width(size: int, vocab: int | None, width: int | None) -> bool:
    """Whether a last size ``size`` of an ``(N, T, size)`` output on token ids is a vocabulary."""
    return size == width if width is not None else vocab is not None and size >= vocab


def _measure(runner, units, batches, seed, vocab, width):
    gen = torch.Generator().manual_seed(seed)
    with NormRecorder(units) as rec:
        for x, y in batches:
            runner.zero_grad(set_to_none=True)
            probe_loss(runner(x), y, gen, x, vocab, width).backward()
    runner.zero_grad(set_to_none=True)
    return rec.summary()["ratio"]


def projection_preview(model: nn.Module, example_input, which, *, zeros: str = "auto") -> list[dict]:
    """The convs of ``model`` that ``which`` selects, each projected once (exact) on a copy of the
    model: ``[{"name", "before", "after", "report"}]``, ``before`` and ``after`` the
    :func:`procres.diagnostics.convs.layer_spectrum` rows of its weights, ``report`` the
    :class:`procres.spectral.projection.ProjectionReport` as a dict.  ``model`` is left as it is."""
    from procres.spectral.projection import project_conv_

    twin = copy.deepcopy(model)
    out = []
    for site in select_layers(twin, example_input, convs=which):
        before = layer_spectrum(site.module, site.input_size, zeros=zeros, name=site.name)
        try:
            report = project_conv_(site.module, site.input_size)
        except UserError as err:
            raise UserError(f"cannot project {site.name}: {err}") from None
        after = layer_spectrum(site.module, site.input_size, zeros=zeros, name=site.name)
        out.append({"name": site.name, "before": before, "after": after, "report": report.as_dict()})
    return out


def projection_table(layers: list[dict]) -> str:
    """Fixed-width table of :func:`projection_preview`: per conv its target, whether one projection
    is exact, and ``sigma_max`` / ``sigma_min`` of the circular and the padded operator before ->
    after."""
    w = max([30] + [len(r["name"]) for r in layers])
    lines = [f"{'projected layer':{w}s} {'target':>7s} {'exact':>5s}  {'circular max':>19s} {'circular min':>19s}  "
             f"{'padded max':>19s} {'padded min':>19s}"]
    for r in layers:
        cells = []
        for part in ("circular", "zeros"):
            for key in ("sigma_max", "sigma_min"):
                a, b = ((r[when].get(part) or {}).get(key) for when in ("before", "after"))
                cells.append("-" if a is None or b is None else f"{a:8.4g} -> {b:<8.4g}")
        lines.append(f"{r['name']:{w}s} {r['report']['target']:7.3f} {'yes' if r['report']['exact'] else 'no':>5s}  "
                     f"{cells[0]:>19s} {cells[1]:>19s}  {cells[2]:>19s} {cells[3]:>19s}")
    return "\n".join(lines)


def inspect_model(model: nn.Module, batches: list, *, steps: int = 2, lr: float = 0.01, measure: int = 2,
                  pattern: str | None = None, zeros: str = "max", seed: int = 0, project=None,
                  vocab: int | None = None) -> dict:
    """Units, conv spectra and r_l of ``model`` on ``batches`` (see the module docstring); returns a
    JSON-ready dict ``{"units": [...], "convs": [...], "seconds": {...}, ...}``, with
    ``"projection": {"which", "layers"}`` when ``project`` names convs (:func:`projection_preview`).
    ``vocab``: the vocabulary of token batches (default: the model's, :func:`vocab_of`)."""
    if not batches or len(batches) < measure:
        raise UserError(f"inspect needs at least {measure} batches, got {len(batches)}")
    x0 = batches[0][0]
    tokens = not x0.is_floating_point()
    vocab = vocab_of(model, vocab) if tokens else None
    width = model_vocab(model)
    without_cache(model)
    seconds, cpu = {}, {}

    def clock(phase, start=None):
        if start is not None:
            seconds[phase], cpu[phase] = time.perf_counter() - start[0], time.process_time() - start[1]
        return time.perf_counter(), time.process_time()

    start = clock("trace")
    units = find_units(model, x0) if pattern is None else units_by_name(model, pattern, x0)
    start = clock("trace", start)
    convs = conv_spectra(model, x0[:1], zeros=zeros) if any(isinstance(m, nn.Conv2d) for m in model.modules()) else []
    preview = None if project is None else projection_preview(model, x0[:1], project, zeros=zeros)
    start = clock("spectra", start)
    runner = units.module.train()
    probe = batches[:measure]
    init = _measure(runner, units, probe, seed, vocab, width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = probe_loss(runner(x), y, gen, x, vocab, width)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    trained = _measure(runner, units, probe, seed, vocab, width)
    clock("record", start)
    rows = [{"name": u.name, "kind": u.kind, "skip": u.skip, "ratio_init": a, "ratio_trained": b}
            for u, a, b in zip(units, init, trained)]
    result = {"model": type(model).__name__, "input": "input_ids" if tokens else "tensor", "vocab": vocab,
              "input_shape": list(x0.shape[1:]), "batch": int(x0.shape[0]), "steps": steps, "lr": lr,
              "measure_batches": measure, "losses": losses, "units_rule": units.rule, "units_glob": units.glob,
              "units": rows, "convs": convs, "seconds": seconds, "cpu_seconds": cpu}
    if preview is not None:
        result["projection"] = {"which": project, "layers": preview}
    return result


def units_table(result: dict) -> str:
    """Fixed-width units table: name, kind, skip, r_l at init and after the SGD steps; then the
    rule and glob that found the units."""
    steps = result["steps"]
    w = max([28] + [len(r["name"]) for r in result["units"]])    # whole names, however deep the module
    lines = [f"{'unit':{w}s} {'kind':10s} {'skip':24s} {'r_l init':>9s} {f'after {steps}':>9s}"]
    for r in result["units"]:
        lines.append(f"{r['name']:{w}s} {r['kind']:10s} {r['skip']:24.24s} {_ratio(r['ratio_init'])} "
                     f"{_ratio(r['ratio_trained'])}")
    if any(_ratio(r[k]).strip() == "-" for r in result["units"] for k in ("ratio_init", "ratio_trained")):
        lines.append("-: no gradient reached the unit, r_l = 0/0 (a classifier initialised at zero, as "
                     "torchvision's ViT head, passes none back)")
    if result.get("units_rule"):
        glob = result.get("units_glob")
        named = "no glob (sub-graph units have no module to name)" if glob is None else f"glob {glob!r}"
        lines.append(f"units: {result['units_rule']}; {named} (--units PATTERN chooses others)")
    return "\n".join(lines)


def _ratio(value) -> str:
    return f"{'-':>9s}" if value is None or not math.isfinite(value) else f"{value:9.4f}"
