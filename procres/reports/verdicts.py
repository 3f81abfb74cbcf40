"""The paper's claims checked on measured ratios; every verdict says where it was checked.

Each check is a small pure function of statistics (:func:`procres.diagnostics.ratios.log_ratio_spread` of a
group of r_l) that returns a :class:`Finding`: ``holds`` True (the measurement agrees with the
paper), False (it contradicts it) or None (no data), the sentence saying so with the numbers,
and ``where``: the depth, the phase (initialisation, after N SGD steps, during training) and the
nets the numbers came from. Nothing is concluded in advance.

Claims (docs/theory.md section 1), by key:

``identity``      identity-skip blocks keep r_l near 1;
``plain``         the plain twin's units deviate from 1 more than the residual net's identity units;
``plain_depth``   plain nets deviate more the deeper they are;
``residual_depth`` residual nets' identity units deviate less the deeper they are (the theorem); checked
                 for the demo's residual family and for every other family of a study (``procres
                 study``: a transformer family, a Hugging Face config at several layer counts);
``transitions``   in a ResNet the deviations sit at the transition (projection-shortcut) units;
``procrustes``    Procrustes transitions deviate less than the ResNet's transition units;
``accuracy``      the Procrustes ResNet is at least as accurate as the ResNet.

Thresholds, all here (deviation = |log10 r_l|: 0 = norm preserved, 1 = a factor 10):

- ``NEAR`` 0.1: a group is "near 1" when 95% of its deviations are below 0.1 (0.79 <= r <= 1.26).
- ``CLEAR`` 2: one group "deviates more" than another when its mean deviation is at least twice
  the other's. Comparisons use the mean over the units of a group (the typical unit); the
  sentences also give the largest deviation.
- ``TREND``: over the depths of the study a mean deviation "decreases" when the deepest value
  falls below the shallowest by more than 25% of the shallowest and either by at least 0.02 (a 5%
  change of r) or by at least a factor ``TREND_FACTOR`` 2 (0.013 -> 0.0039: small deviations falling
  clearly), and no step between consecutive depths rises by more than 25% of the value before it;
  "increases" likewise upwards; otherwise it "stays roughly flat" or, when the extremes differ that
  much but a step goes the other way by more than 25%, it "changes unevenly".
- An overflowing backward pass (inf/NaN gradients) counts as an unbounded deviation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

NEAR = 0.1
CLEAR = 2.0
TREND = (0.25, 0.02)  # (relative, absolute) change of the mean deviation between the extreme depths
TREND_FACTOR = 2.0    # ... or a change by this factor; TREND[0] is also the largest step back
# the units a depth study compares per family: the identity-skip units of the residual and Procrustes
# nets (the theorem's blocks) and the skip-less units of the plain twins; transitions are left out.
# Any other family: its identity units when it has some (study_group)
STUDY_GROUPS = {"residual": "identity", "procrustes": "identity", "plain": "plain"}
VERDICTS = {True: "holds", False: "contradicted", None: "no data"}

CLAIMS = {
    "identity": "identity blocks keep r_l near 1",
    "plain": "plain twins deviate more than residual nets",
    "plain_depth": "plain nets deviate more with depth",
    "residual_depth": "residual nets preserve the norm better with depth",
    "transitions": "ResNet deviations sit at transition units",
    "procrustes": "Procrustes transitions bring r_l back toward 1",
    "accuracy": "Procrustes ResNet at least as accurate",
}


@dataclass
class Where:
    """Where a verdict was checked: depth (or depths), phase, and the nets compared."""

    depth: str
    phase: str
    nets: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"depth {self.depth}, {self.phase}, {' vs '.join(self.nets)}"


@dataclass
class Finding:
    """One claim checked against measurements: ``holds`` is True, False, or None (no data)."""

    claim: str
    holds: bool | None
    sentence: str
    where: Where

    def to_dict(self) -> dict:
        return {"claim": self.claim, "text": CLAIMS[self.claim], "holds": self.holds, "sentence": self.sentence,
                "where": asdict(self.where), "where_text": str(self.where)}


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "unbounded"
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"


def _has(stats: dict | None) -> bool:
    return bool(stats) and (stats.get("n", 0) > 0 or stats.get("overflow") is not None)


def _dev(stats: dict, key: str = "dev_mean") -> float:
    """The statistic, or +inf when the group's backward pass overflowed."""
    return math.inf if stats.get("overflow") is not None else stats[key]


def _span(stats: dict) -> str:
    return stats["overflow"] if stats.get("overflow") is not None else f"r_l {fmt(stats['min'])}-{fmt(stats['max'])}"


def _versus(a: dict, b: dict, a_units: str, b_units: str) -> tuple[float, float, str]:
    """The mean deviations of two groups and the words comparing them."""
    da, db = _dev(a), _dev(b)
    return da, db, f"mean |log10 r_l| {fmt(da)} {a_units} ({_span(a)}) vs {fmt(db)} {b_units} ({_span(b)})"


def overflow_text(flow: dict) -> str:
    """``backward overflow at unit k of L`` or ``non-finite loss at SGD step s`` (a depth-study record)."""
    if flow.get("unit"):
        return f"backward overflow at unit {flow['unit']} of {flow['units']}"
    return f"non-finite loss at SGD step {flow['step']}"


# ---------------------------------------------------------------- one claim, one place
def check_identity(stats: dict, where: Where) -> Finding:
    """Identity blocks keep r_l near 1: 95th percentile of |log10 r_l| below NEAR."""
    if not _has(stats):
        return Finding("identity", None, f"No identity blocks were measured ({where}).", where)
    nums = (f"{_span(stats)}, 95% of values within a factor {fmt(10 ** stats['dev_p95'])} of 1, "
            f"mean |log10 r_l| {fmt(stats['dev_mean'])}")
    if stats["dev_p95"] < NEAR:
        return Finding("identity", True, f"Identity blocks kept r_l near 1 ({nums}).", where)
    return Finding("identity", False, f"Identity blocks did not keep r_l near 1 ({nums}).", where)


def check_plain(plain: dict, residual: dict, where: Where) -> Finding:
    """The plain twin's skip-less units deviate more than the residual net's identity units."""
    if not (_has(plain) and _has(residual)):
        return Finding("plain", None, f"The plain-vs-residual comparison has no data ({where}).", where)
    p, r, nums = _versus(plain, residual, "for the plain units", "for the identity units")
    if p > CLEAR * r:
        return Finding("plain", True, f"The plain twin deviates much more than the residual net ({nums}).", where)
    if p > r:
        return Finding("plain", False, f"The plain twin deviates only slightly more than the residual net ({nums}), "
                                       f"less than the factor {CLEAR:g} we call clear.", where)
    return Finding("plain", False, f"The plain twin does not deviate more than the residual net ({nums}).", where)


def check_transitions(transition: dict, identity: dict, where: Where) -> Finding:
    """In a ResNet the transition units deviate more than the identity units (factor CLEAR)."""
    if not (_has(transition) and _has(identity)):
        return Finding("transitions", None, f"No transition or no identity units to compare ({where}).", where)
    t, i, nums = _versus(transition, identity, "at the transition units", "at the identity units")
    if t > CLEAR * i:
        return Finding("transitions", True, f"The deviations sit at the transition units ({nums}).", where)
    return Finding("transitions", False, f"The transition units do not stand out ({nums}).", where)


def check_procrustes(proc: dict, resnet: dict, where: Where) -> Finding:
    """Procrustes transitions deviate less than the ResNet's transition units."""
    if not (_has(proc) and _has(resnet)):
        return Finding("procrustes", None, f"The transition comparison has no data ({where}).", where)
    p, r, nums = _versus(proc, resnet, "at the Procrustes net's transitions", "at the ResNet's")
    if p < r:
        near = " and stay near 1" if _dev(proc, "dev_p95") < NEAR else ", though not within the 'near 1' band"
        return Finding("procrustes", True, f"The Procrustes transitions deviate less than the ResNet's{near} ({nums}).",
                       where)
    return Finding("procrustes", False, f"The Procrustes transitions do not deviate less than the ResNet's ({nums}).",
                   where)


def check_accuracy(accs: dict[str, float], *, proc_name: str, resnet_name: str, where: Where) -> Finding:
    """Final test accuracy of the Procrustes ResNet vs the ResNet (one seed: noise caveat)."""
    p, r = accs.get(proc_name), accs.get(resnet_name)
    if p is None or r is None:
        return Finding("accuracy", None, "Final test accuracies are missing.", where)
    order = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(accs.items(), key=lambda kv: -kv[1]))
    caveat = " (one seed and a tiny budget: differences of a few points are noise)"
    if p >= r:
        return Finding("accuracy", True, f"Final test accuracy: {order}; the Procrustes ResNet is at least as "
                                         f"accurate as the ResNet{caveat}.", where)
    return Finding("accuracy", False, f"Final test accuracy: {order}; the Procrustes ResNet is less accurate than "
                                      f"the ResNet{caveat}.", where)


def _direction(first: float, last: float) -> str:
    """``increases`` / ``decreases`` / ``stays roughly flat`` from ``first`` to ``last`` (TREND and
    TREND_FACTOR); an overflow (inf) is the largest value."""
    if math.isinf(first) or math.isinf(last):
        return "stays roughly flat" if first == last else ("increases" if math.isinf(last) else "decreases")
    low, high = sorted((first, last))
    clear = high - low > TREND[0] * abs(first) and (high - low >= TREND[1] or high >= TREND_FACTOR * low)
    if not clear:
        return "stays roughly flat"
    return "increases" if last > first else "decreases"


def _steps_back(values: list[float], direction: str) -> list[tuple[float, float]]:
    """The consecutive pairs that go against ``direction`` by more than TREND[0] of the first."""
    sign = 1 if direction == "increases" else -1
    return [(a, b) for a, b in zip(values, values[1:])
            if sign * (a - b) > (TREND[0] * a if math.isfinite(a) else 0)]   # inf - inf: nan, no step


def trend(values: list[float]) -> str:
    """``increases`` / ``decreases`` / ``stays roughly flat`` / ``changes unevenly`` / ``unknown``
    (fewer than 2 values) over the depths (TREND, TREND_FACTOR)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if len(v) < 2:
        return "unknown"
    got = _direction(v[0], v[-1])
    if got != "stays roughly flat" and _steps_back(v, got):
        return "changes unevenly"
    return got


def check_depth(claim: str, depths: list[int], values: list[float], models: list[str], where: Where,
                units: str | None = None) -> Finding:
    """``plain_depth`` (deviation grows with depth) or ``residual_depth`` (it shrinks); ``units``
    names the units the values are over (default: the plain nets' or the residual nets')."""
    if len([v for v in values if v is not None and not math.isnan(v)]) < 2:
        return Finding(claim, None, f"Fewer than two depths were measured ({where}).", where)
    got = trend(values)
    chain = " -> ".join(f"{fmt(v)} ({m})" for v, m in zip(values, models))
    units = units or ("skip-less units of the plain nets" if claim == "plain_depth"
                      else "identity units of the residual nets")
    nums = f"mean |log10 r_l| over the {units}: {chain}"
    want = "increases" if claim == "plain_depth" else "decreases"
    if got == want:
        return Finding(claim, True, f"The deviation {got} with depth, as the paper says ({nums}).", where)
    said = f"{got} with depth"
    v = [x for x in values if x is not None and not math.isnan(x)]
    if got == "stays roughly flat" and _below_resolution(v):
        said = (f"changes with depth by more than {TREND[0]:.0%} but by less than {TREND[1]} and less than a "
                f"factor {TREND_FACTOR:g}, so it counts as roughly flat")
    elif got == "changes unevenly":
        a, b = _steps_back(v, _direction(v[0], v[-1]))[0]
        said = (f"{_direction(v[0], v[-1])} from the shallowest to the deepest net but not steadily (a step "
                f"{fmt(a)} -> {fmt(b)}, more than {TREND[0]:.0%} the other way)")
    return Finding(claim, False, f"The deviation {said}; the paper says it {want} ({nums}).", where)


def _below_resolution(v: list[float]) -> bool:
    """Whether a flat trend is one whose relative change passes TREND[0] but neither its absolute
    one nor TREND_FACTOR (deviations too small and too close for the rule to call a change)."""
    return all(math.isfinite(x) for x in (v[0], v[-1])) and abs(v[-1] - v[0]) > TREND[0] * abs(v[0])


# ---------------------------------------------------------------- where the numbers come from
def study_group(family: str, kinds) -> str:
    """The unit group a depth study compares for ``family`` (:data:`STUDY_GROUPS`; another family:
    its identity units when it has some, else the group of its first unit's kind)."""
    from procres.diagnostics.ratios import kind_group

    if family in STUDY_GROUPS:
        return STUDY_GROUPS[family]
    kinds = [k for per_depth in kinds for k in per_depth]
    return "identity" if "identity" in kinds or not kinds else kind_group(kinds[0])


def model_label(study: dict, family: str, depth: int) -> str:
    """A model of the study by name: ``models[family]`` (default: the family) with its depth, either
    in the template's ``{depth}`` (``tiny_gpt2[n_layer={depth}]``) or appended (``preresnet164``)."""
    name = (study.get("models") or {}).get(family, family)
    return name.format(depth=depth) if "{depth}" in name else f"{name}{depth}"


def study_cells(study: dict) -> list[dict]:
    """One cell per family, depth and phase of a depth study (``depth_study.json``).

    Keys: ``family``, ``model`` (e.g. procresnet166), ``depth`` (the study's depth), ``phase``
    (``init`` / ``trained``), ``groups`` (:func:`procres.diagnostics.ratios.group_spreads`) and ``overflow``
    (the overflow record when the backward pass overflowed in or before this phase, else None);
    every group of an overflowing cell carries ``overflow`` (:func:`overflow_text`) so comparisons
    treat it as unbounded.
    """
    from procres.diagnostics.ratios import group_spreads

    cells = []
    for family, phases in study["results"].items():
        kinds = study.get("block_kinds", {}).get(family) or []
        own = study.get("model_depths", {}).get(family) or study["depths"]
        flows = study.get("overflow", {}).get(family) or [None] * len(study["depths"])
        for phase, per_depth in phases.items():
            for i, ratios in enumerate(per_depth):
                flow = flows[i]
                if flow is not None and phase == "init" and flow.get("phase") != "init":
                    flow = None
                k = kinds[i] if i < len(kinds) else ["unknown"] * len(ratios or [])
                groups = group_spreads(ratios, k) if ratios is not None else {g: {"n": 0} for g in set(k)}
                if flow is not None:
                    for g in groups.values():
                        g["overflow"] = overflow_text(flow)
                cells.append({"family": family, "model": model_label(study, family, own[i]),
                              "depth": study["depths"][i], "phase": phase, "groups": groups, "overflow": flow})
    return cells


def _cell(cells, family, depth, phase) -> dict | None:
    return next((c for c in cells if c["family"] == family and c["depth"] == depth and c["phase"] == phase), None)


def phase_words(phase: str, steps: int | None) -> str:
    return "at initialisation" if phase == "init" else f"after {steps} SGD steps"


def study_findings(study: dict) -> list[Finding]:
    """Every claim that one depth and phase of the study can check, at every depth and phase."""
    cells = study_cells(study)
    out = []
    for phase in ("init", "trained"):
        words = phase_words(phase, study.get("steps"))
        for depth in study["depths"]:
            res, proc, plain = (_cell(cells, f, depth, phase) for f in ("residual", "procrustes", "plain"))
            for c in (res, proc):
                if c:
                    out.append(check_identity(c["groups"].get("identity", {}), Where(str(depth), words, [c["model"]])))
            if res and plain:
                out.append(check_plain(plain["groups"].get("plain", {}), res["groups"].get("identity", {}),
                                       Where(str(depth), words, [plain["model"], res["model"]])))
            if res:
                g = res["groups"]
                out.append(check_transitions(g.get("transition", {}), g.get("identity", {}),
                                             Where(str(depth), words, [res["model"]])))
            if res and proc:
                out.append(check_procrustes(proc["groups"].get("transition", {}), res["groups"].get("transition", {}),
                                            Where(str(depth), words, [proc["model"], res["model"]])))
        for claim, family, group in (("plain_depth", "plain", "plain"), ("residual_depth", "residual", "identity")):
            if family in study["results"]:
                out.append(depth_trend(study, cells, claim, family, group, phase))
        for family in [f for f in study["results"] if f not in STUDY_GROUPS]:
            group = study_group(family, study.get("block_kinds", {}).get(family) or [])
            out.append(depth_trend(study, cells, "residual_depth", family, group, phase,
                                   units=f"{group} units of {family}"))
    return out


def depth_trend(study: dict, cells: list[dict], claim: str, family: str, group: str, phase: str,
                units: str | None = None) -> Finding:
    """:func:`check_depth` of ``family``'s ``group`` units over the study's depths in ``phase``."""
    row = [c for c in (_cell(cells, family, d, phase) for d in study["depths"]) if c is not None]
    values = [_dev(c["groups"][group]) if _has(c["groups"].get(group)) else math.nan for c in row]
    depths = "-".join(str(c["depth"]) for c in row[:1] + row[-1:])
    return check_depth(claim, [c["depth"] for c in row], values, [c["model"] for c in row],
                       Where(depths, phase_words(phase, study.get("steps")), [c["model"] for c in row]), units)


def run_findings(summaries: list[dict]) -> list[Finding]:
    """The claims checked on the trained runs (``report.run_summary`` of each), during training."""
    by_family = {s["family"]: s for s in summaries}
    res, proc, plain = (by_family.get(f) for f in ("residual", "procrustes", "plain"))
    if not res:
        return []
    depth = str(res.get("depth") or "?")
    words = f"during training (steps 1-{res.get('steps', '?')})"
    trained = lambda s: s["ratios"]["trained"]  # noqa: E731
    out = [check_identity(trained(s).get("identity", {}), Where(depth, words, [s["model"]])) for s in (res, proc) if s]
    if plain:
        out.append(check_plain(trained(plain).get("plain", {}), trained(res).get("identity", {}),
                               Where(depth, words, [plain["model"], res["model"]])))
    out.append(check_transitions(trained(res).get("transition", {}), trained(res).get("identity", {}),
                                 Where(depth, words, [res["model"]])))
    if proc:
        out.append(check_procrustes(trained(proc).get("transition", {}), trained(res).get("transition", {}),
                                    Where(depth, words, [proc["model"], res["model"]])))
        accs = {s["model"]: s["final_test_acc"] for s in summaries if s.get("final_test_acc") is not None}
        out.append(check_accuracy(accs, proc_name=proc["model"], resnet_name=res["model"],
                                  where=Where(depth, f"after {res.get('steps', '?')} training steps",
                                              [proc["model"], res["model"]])))
    return out


def row_label(f: Finding) -> str:
    """The claim, with the family for the per-net ``identity`` claim (its rows differ by net)."""
    from procres.reports.runs import FAMILY_LABELS, model_family

    if f.claim == "identity" and f.where.nets:
        return f"{CLAIMS[f.claim]} ({FAMILY_LABELS[model_family(f.where.nets[0])]})"
    return CLAIMS[f.claim]


def compare_depths(found: list[Finding], paper_depth: int = 164) -> list[str]:
    """Sentences for the claims whose verdict differs between depths of the study, naming the
    depths where each verdict came out (phases with the same split share a sentence) and what
    holds at the paper's depths (``paper_depth`` and deeper)."""
    single = [f for f in found if "-" not in f.where.depth and f.holds is not None]
    splits: dict[tuple, list[str]] = {}
    for label, phase in dict.fromkeys((row_label(f), f.where.phase) for f in single):
        same = [f for f in single if row_label(f) == label and f.where.phase == phase]
        if len({f.holds for f in same}) == 2:
            split = (tuple(f.where.depth for f in same if f.holds), tuple(f.where.depth for f in same if not f.holds))
            splits.setdefault((label, split), []).append(phase)
    lines = []
    for (label, (held, failed)), phases in splits.items():
        deep_held, deep_failed = ([d for d in ds if int(d) >= paper_depth] for ds in (held, failed))
        if deep_held and deep_failed:
            about = (f"at the paper's depths it holds at {', '.join(deep_held)} and is contradicted at "
                     f"{', '.join(deep_failed)}")
        elif deep_held or deep_failed:
            about = f"at the paper's depths ({', '.join(deep_held or deep_failed)}) it " + \
                ("holds" if deep_held else "is contradicted")
        else:
            about = f"the paper is about deeper nets (depth {paper_depth} and more)"
        lines.append(f"'{label}' {' and '.join(phases)}: holds at depth {', '.join(held)}, contradicted at depth "
                     f"{', '.join(failed)}; {about}.")
    return lines
