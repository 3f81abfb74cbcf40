"""The verdicts follow the numbers: flip the numbers and the verdict flips; each says where it was checked."""

import math

import numpy as np

from procres.reports import verdicts
from procres.diagnostics.ratios import log_ratio_spread
from procres.reports.verdicts import Where

HERE = Where("164", "at initialisation", ["preresnet164"])
OVERFLOW = {"n": 0, "overflow": "backward overflow at unit 5 of 12"}


def stats(values):
    return log_ratio_spread(np.asarray(values, dtype=float))


def test_identity_claim_holds_contradicted_or_has_no_data():
    good = verdicts.check_identity(stats([0.98, 1.01, 1.03, 0.97]), HERE)
    bad = verdicts.check_identity(stats([0.5, 1.9, 1.0, 2.5]), HERE)
    assert good.holds is True and "kept r_l near 1" in good.sentence and good.where is HERE
    assert bad.holds is False and "did not keep" in bad.sentence
    assert verdicts.check_identity({}, HERE).holds is None


def test_plain_claim_flips_and_an_overflowing_plain_net_deviates_without_bound():
    plain, res = stats([2.5, 0.4, 3.0]), stats([1.02, 0.99, 1.05])
    assert verdicts.check_plain(plain, res, HERE).holds is True
    flipped = verdicts.check_plain(res, plain, HERE)
    assert flipped.holds is False and "does not deviate more" in flipped.sentence
    close = verdicts.check_plain(stats([1.06, 0.95]), stats([1.04, 0.97]), HERE)
    assert close.holds is False and "only slightly" in close.sentence
    flowed = verdicts.check_plain(OVERFLOW, res, HERE)
    assert flowed.holds is True and "unbounded" in flowed.sentence and "unit 5 of 12" in flowed.sentence
    assert verdicts.check_plain({}, res, HERE).holds is None


def test_transition_and_procrustes_claims_flip():
    spiky, calm = stats([0.2, 3.0, 1.5]), stats([0.99, 1.01, 1.02])
    assert verdicts.check_transitions(spiky, calm, HERE).holds is True
    assert verdicts.check_transitions(calm, spiky, HERE).holds is False
    assert verdicts.check_transitions({}, calm, HERE).holds is None
    near = verdicts.check_procrustes(calm, spiky, HERE)
    assert near.holds is True and "stay near 1" in near.sentence
    assert verdicts.check_procrustes(stats([0.5, 1.9]), spiky, HERE).sentence.count("not within") == 1
    assert verdicts.check_procrustes(spiky, calm, HERE).holds is False


def test_accuracy_claim_flips():
    assert verdicts.check_accuracy({"p": 0.9, "r": 0.8}, proc_name="p", resnet_name="r", where=HERE).holds is True
    worse = verdicts.check_accuracy({"p": 0.7, "r": 0.8}, proc_name="p", resnet_name="r", where=HERE)
    assert worse.holds is False and "less accurate" in worse.sentence and "noise" in worse.sentence
    assert verdicts.check_accuracy({"r": 0.8}, proc_name="p", resnet_name="r", where=HERE).holds is None


def test_depth_trends_treat_an_overflow_as_the_largest_deviation():
    assert verdicts.trend([0.2, 0.5, 0.9]) == "increases"
    assert verdicts.trend([0.5, 0.5, 0.51]) == "stays roughly flat"
    assert verdicts.trend([0.3, 0.2, 0.1]) == "decreases"
    assert verdicts.trend([0.15, 0.2, math.inf]) == "increases"
    assert verdicts.trend([0.1]) == "unknown"
    where = Where("38-1001", "at initialisation", ["a", "b", "c"])
    grows = verdicts.check_depth("plain_depth", [38, 164, 1001], [0.15, 0.2, math.inf], ["a", "b", "c"], where)
    assert grows.holds is True and "unbounded (c)" in grows.sentence
    shrinks = verdicts.check_depth("residual_depth", [38, 164, 1001], [0.12, 0.06, 0.02], ["a", "b", "c"], where)
    assert shrinks.holds is True
    flat = verdicts.check_depth("residual_depth", [38, 164], [0.12, 0.11], ["a", "b"], where)
    assert flat.holds is False and "stays roughly flat" in flat.sentence
    assert verdicts.check_depth("plain_depth", [38], [0.1], ["a"], where).holds is None


def test_study_findings_say_where_and_count_the_overflow(tmp_path):
    from run_files import write_study

    study = write_study(tmp_path)  # plain deviation grows with depth, residual shrinks; plainpre50 overflows
    found = verdicts.study_findings(study)
    trends = {(f.claim, f.where.phase): f for f in found if f.claim.endswith("_depth")}
    assert set(trends) == {(c, p) for c in ("plain_depth", "residual_depth")
                           for p in ("at initialisation", "after 20 SGD steps")}
    assert all(f.holds is True for f in trends.values())
    assert trends[("plain_depth", "at initialisation")].where.nets == ["plainpre14", "plainpre26", "plainpre50"]
    deepest = [f for f in found if f.claim == "plain" and f.where.depth == "50"]
    assert len(deepest) == 2 and all(f.holds and "unit 5 of 24" in f.sentence for f in deepest)
    assert {f.where.nets[0] for f in found if f.claim == "identity"} >= {"preresnet14", "procresnet16"}


def test_a_claim_that_depends_on_depth_is_shown_at_both_depths():
    res = lambda d, v: verdicts.check_identity(stats(v), Where(str(d), "at initialisation", [f"preresnet{d}"]))  # noqa: E731
    found = [res(38, [1.5, 0.6, 1.4]), res(164, [1.01, 0.99, 1.02]), res(1001, [1.0, 1.01, 0.995])]
    (line,) = verdicts.compare_depths(found)
    assert "holds at depth 164, 1001" in line and "contradicted at depth 38" in line
    assert "at the paper's depths (164, 1001) it holds" in line
    assert verdicts.compare_depths(found[1:]) == []  # the same verdict everywhere: nothing to compare


def _summary(model, family, trained, steps=120, acc=0.9, stopped=None):
    return {"model": model, "family": family, "depth": 164, "steps": steps, "final_test_acc": acc,
            "stopped": stopped, "ratios": {"trained": trained}}


def test_run_findings_name_the_nets_and_count_a_stopped_plain_twin():
    res = _summary("preresnet164", "residual", {"identity": stats([1.01, 0.99]), "transition": stats([0.2, 5.0])})
    proc = _summary("procresnet166", "procrustes", {"identity": stats([1.01, 1.0]), "transition": stats([1.0, 1.02])},
                    acc=0.95)
    plain = _summary("plainpre164", "plain", {"plain": dict(OVERFLOW, overflow="training stopped (step 15)")},
                     steps=0, acc=None, stopped="step 15")
    found = {(f.claim, tuple(f.where.nets)): f for f in verdicts.run_findings([res, proc, plain])}
    assert all(f.holds is True for f in found.values()), [f.sentence for f in found.values() if not f.holds]
    p = found[("plain", ("plainpre164", "preresnet164"))]
    assert "training stopped" in p.sentence and p.where.phase == "during training (steps 1-120)"
    assert found[("accuracy", ("procresnet166", "preresnet164"))].where.depth == "164"


def test_a_small_but_clear_fall_holds_and_a_small_unclear_one_is_called_so():
    where = verdicts.Where("2-8", "at initialisation", ["a2", "a4", "a8"])
    # GPT-2 at 2/4/8 layers: all below the absolute 0.02, but a 3.4-fold steady fall
    clear = verdicts.check_depth("residual_depth", [2, 4, 8], [0.0131, 0.0048, 0.0039], ["a2", "a4", "a8"], where)
    assert clear.holds is True and "The deviation decreases with depth" in clear.sentence
    # 30 % down: past the relative 25 %, short of both 0.02 and a factor 2
    small = verdicts.check_depth("residual_depth", [2, 8], [0.010, 0.007], ["a2", "a8"], where, units="layers")
    assert small.holds is False
    assert "changes with depth by more than 25% but by less than 0.02 and less than a factor 2" in small.sentence
    level = verdicts.check_depth("residual_depth", [2, 8], [0.0131, 0.0129], ["a2", "a8"], where, units="layers")
    assert level.holds is False and "The deviation stays roughly flat with depth;" in level.sentence
    # a fivefold fall overall, with a step back up of 150 % in the middle: not a decrease with depth
    uneven = verdicts.check_depth("residual_depth", [2, 4, 8], [0.1, 0.02, 0.05], ["a2", "a4", "a8"], where)
    assert uneven.holds is False and "decreases from the shallowest to the deepest net but not steadily (a step " \
        "0.02 -> 0.05" in uneven.sentence
    assert verdicts.trend([0.1, 0.02, 0.022]) == "decreases"                     # a 10 % step back is noise
    assert verdicts.trend([0.1, math.inf, 0.3]) == "changes unevenly"
