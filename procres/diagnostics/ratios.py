"""Statistics of gradient-norm ratios r_l, without torch (plots and reports use them on saved files).

Deviation of a ratio from norm preservation is ``|log10 r_l|``: 0 when the unit preserves the
gradient norm, 1 for a factor 10 either way. Ratios that are NaN, infinite or not positive (a
unit whose input needs no gradient; a gradient that overflowed) carry no deviation and are left
out of every statistic; :func:`overflow_unit` reports the overflow instead.

Overflow. A net whose backward pass grows the gradient by a factor above 1 per unit (a deep
plain net) can exceed the float32 range: from some unit on, going backward from the loss, the
gradient holds inf/NaN, and so does every gradient computed from it (all units before it in
forward order, and their parameters' gradients). ``NormRecorder.summary()["grad_nonfinite"]``
gives, per unit, the fraction of recorded steps in which the gradient at the unit's input was
non-finite; the overflow unit is the last such unit in forward order, i.e. the first one the
backward pass reaches.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["log_ratio_spread", "overflow_unit", "kind_group", "group_spreads"]


def log_ratio_spread(ratios, kinds=None, *, only=None) -> dict:
    """Spread of ratios around 1, over the finite positive values (restricted to the units whose
    kind is in ``only`` when ``kinds``, one per ratio, is given).

    Keys: ``n`` (values used), ``min``/``max``/``median`` of r, ``dev_mean``/``dev_p95``/``dev_max``
    (mean, 95th percentile, largest |log10 r|) and ``std_log10`` (standard deviation of log10 r).
    Every value but ``n`` is NaN when no ratio qualifies.
    """
    r = np.asarray([np.nan if x is None else x for x in ratios], dtype=float).reshape(-1)
    if only is not None and kinds is not None:
        keep = np.array([k in only for k in kinds], dtype=bool)[: r.size]
        r = r[: keep.size][keep]
    r = r[np.isfinite(r) & (r > 0)]
    if r.size == 0:
        nan = math.nan
        return {"n": 0, "min": nan, "max": nan, "median": nan, "dev_mean": nan, "dev_p95": nan, "dev_max": nan,
                "std_log10": nan}
    logs = np.log10(r)
    dev = np.abs(logs)
    return {"n": int(r.size), "min": float(r.min()), "max": float(r.max()), "median": float(np.median(r)),
            "dev_mean": float(dev.mean()), "dev_p95": float(np.percentile(dev, 95)), "dev_max": float(dev.max()),
            "std_log10": float(logs.std())}


def overflow_unit(grad_nonfinite) -> int | None:
    """1-based forward index of the unit at whose input the backward pass first held inf/NaN
    (the last unit with a non-zero ``grad_nonfinite``), or None when every gradient was finite."""
    bad = [i for i, f in enumerate(grad_nonfinite or [], start=1) if f is not None and f > 0]
    return bad[-1] if bad else None


def kind_group(kind: str) -> str:
    """The group a unit kind is compared in: ``transition`` for transition and projection units
    (where the dimension changes), else the kind itself (``identity``, ``plain``)."""
    return "transition" if kind in ("transition", "projection") else kind


def group_spreads(ratios, kinds) -> dict[str, dict]:
    """:func:`log_ratio_spread` per unit group (:func:`kind_group`); ``ratios`` and ``kinds``
    are parallel lists (several recordings of a net may be concatenated)."""
    groups = {kind_group(k) for k in kinds}
    return {g: log_ratio_spread(ratios, [kind_group(k) for k in kinds], only=(g,)) for g in sorted(groups)}
