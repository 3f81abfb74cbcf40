"""Reading what runs and the demo leave on disk, without torch (figures and reports start here).

Files read (the run-folder layout of :mod:`procres.training.loop` and the demo's extras):

- ``config.json``   the resolved training config; ``model`` names the net.
- ``history.jsonl`` one JSON object per epoch; epoch 0 is measured at initialisation.
  Keys used: ``epoch``, ``step`` (global training steps done), ``train_loss``, ``train_acc``,
  ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``, ``norms`` (``NormRecorder.summary()``:
  ``ratio`` is one float per unit of ``model.blocks``, ``grad_nonfinite`` the fraction of
  recorded steps whose input gradient overflowed) and ``block_kinds`` (one of ``identity``,
  ``projection``, ``transition``, ``plain`` per unit).
- ``stopped.json`` (written by the demo) ``{"reason": ...}``: training stopped early, e.g. at a
  float32 overflow (``history.jsonl`` then ends before the planned last epoch).
- ``depth_study.json`` :func:`procres.diagnostics.study.depth_study`'s dict: ``depths``,
  ``results`` ``{family: {phase: [r_l per unit, or None when not measured] per depth}}``,
  ``block_kinds``, ``model_depths`` and ``overflow`` ``{family: [None or {"unit", "units",
  "phase", ...} per depth]}``, with phase ``init``/``trained`` and family ``residual``/``plain``/
  ``procrustes`` (the demo's) or any name (``procres study``: its FACTORY families, with
  ``models`` ``{family: model-name template}``, ``findings`` and ``spec``).
- ``spectra.json`` ``{"layers": [{"name", "input_size", "stride", "target", "before": {...},
  "after": {...}}]}``, where ``before``/``after`` hold, per padding (``circular``, ``zeros``), the
  non-zero singular values of the layer's operator and, under ``stats``, their
  ``procres.spectral.spectra.spectrum_stats`` summary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from procres.errors import UserError
from procres.files import read_json

__all__ = ["Run", "model_family", "read_history", "load_run", "collect", "FAMILY_LABELS"]

FAMILY_LABELS = {"residual": "residual", "procrustes": "Procrustes", "plain": "plain twin"}


@dataclass
class Run:
    """One run folder read from disk: its config and its per-epoch history."""

    path: Path
    config: dict
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why training stopped early (stopped.json), None when it did not

    @property
    def model(self) -> str:
        return str(self.config.get("model", self.path.name))

    @property
    def family(self) -> str:
        return model_family(self.model)

    @property
    def depth(self) -> int | None:
        """The depth in the model's name (preresnet164 -> 164), None without one."""
        digits = re.search(r"(\d+)", self.model)
        return int(digits.group(1)) if digits else None

    @property
    def label(self) -> str:
        # the folder name when it names the model (preresnet164-seed1); model and folder when the
        # folder says something else (train --seeds writes OUT/seed0, OUT/seed1: same model, so the
        # model name alone would give several runs one label); the model name when they agree
        folder = self.path.name
        name = folder if self.model in folder else f"{self.model} {folder}"
        return f"{name} ({FAMILY_LABELS[self.family]})"

    def ratio_records(self) -> list[dict]:
        """The history records that carry per-block norm ratios."""
        return [h for h in self.history if (h.get("norms") or {}).get("ratio")]

    def block_kinds(self) -> list[str]:
        for h in reversed(self.history):
            if h.get("block_kinds"):
                return list(h["block_kinds"])
        return []


def model_family(name: str) -> str:
    """``plain`` for the plain twins, ``procrustes`` for ProcResNets, else ``residual``."""
    name = name.lower()
    if name.startswith("plain"):
        return "plain"
    if name.startswith("proc"):
        return "procrustes"
    return "residual"


def read_history(path) -> list[dict]:
    """Read ``history.jsonl``: one JSON object per line, blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}, line {number}: not valid JSON ({err})") from None
    if not records:
        raise UserError(f"{path}: no records (expected one JSON object per epoch)")
    return records


def load_run(run_dir) -> Run:
    """Read a run folder (``config.json`` + ``history.jsonl``, and ``stopped.json`` if present)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    missing = [n for n in ("config.json", "history.jsonl") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: not a run folder, missing {', '.join(missing)} "
            "(expected config.json and history.jsonl written by `procres train`)"
        )
    stopped = read_json(run_dir / "stopped.json")["reason"] if (run_dir / "stopped.json").is_file() else None
    return Run(run_dir, read_json(run_dir / "config.json"), read_history(run_dir / "history.jsonl"), stopped)


def collect(folders) -> tuple[list[Run], list[dict], list[dict]]:
    """(runs, depth studies, spectra) found in ``folders``.

    A folder may be a run folder, a folder holding ``depth_study.json`` / ``spectra.json``, or a
    folder whose sub-folders are run folders (the demo's ``runs/``). A folder that is missing or
    holds none of these raises FileNotFoundError naming it.
    """
    runs, studies, spectra = [], [], []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
        found = False
        if (folder / "history.jsonl").is_file() or (folder / "config.json").is_file():
            runs.append(load_run(folder))
            found = True
        for name, into in (("depth_study.json", studies), ("spectra.json", spectra)):
            if (folder / name).is_file():
                into.append(read_json(folder / name))
                found = True
        for sub in sorted(folder.rglob("history.jsonl")):
            if sub.parent != folder:
                runs.append(load_run(sub.parent))
                found = True
        if not found:
            raise FileNotFoundError(
                f"{folder}: nothing to plot (expected config.json + history.jsonl, "
                "depth_study.json or spectra.json, here or in sub-folders)"
            )
    return runs, studies, spectra
