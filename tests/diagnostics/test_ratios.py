"""Ratio statistics against numpy on hand-made ratios, and the overflow unit."""

import math

import numpy as np
import pytest

from procres.diagnostics.ratios import group_spreads, kind_group, log_ratio_spread, overflow_unit


def test_spread_matches_numpy_and_skips_non_finite_values():
    r = [0.1, 1.0, 10.0, 2.0, float("nan"), float("inf"), 0.0, None]
    s = log_ratio_spread(r)
    logs = np.log10([0.1, 1.0, 10.0, 2.0])
    assert s["n"] == 4 and s["min"] == pytest.approx(0.1) and s["max"] == pytest.approx(10.0)
    assert s["dev_max"] == pytest.approx(1.0) and s["dev_mean"] == pytest.approx(np.abs(logs).mean())
    assert s["dev_p95"] == pytest.approx(np.percentile(np.abs(logs), 95))
    assert s["std_log10"] == pytest.approx(logs.std()) and s["median"] == pytest.approx(np.median([0.1, 1, 10, 2]))
    empty = log_ratio_spread([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["dev_mean"])


def test_spread_restricted_to_kinds_and_grouped():
    r, kinds = [1.0, 10.0, 0.5, 2.0], ["identity", "projection", "transition", "plain"]
    assert log_ratio_spread(r, kinds, only=("identity",))["dev_max"] == 0.0
    groups = group_spreads(r, kinds)
    assert set(groups) == {"identity", "transition", "plain"}
    assert groups["transition"]["n"] == 2 and groups["transition"]["dev_max"] == pytest.approx(1.0)
    assert [kind_group(k) for k in kinds] == ["identity", "transition", "transition", "plain"]


def test_overflow_unit_is_the_last_unit_with_a_non_finite_input_gradient():
    assert overflow_unit([1.0, 1.0, 0.5, 0.0, 0.0]) == 3  # the backward pass reaches unit 3 first
    assert overflow_unit([0.0, 0.0]) is None and overflow_unit(None) is None
