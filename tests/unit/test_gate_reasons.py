"""The improvement reason of the gate: a failing comparison never prints equal-looking numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sluice.core.gate import GatePolicy, decide, decimals_apart, improvement_reason, metrics

MARGIN = GatePolicy().min_improvement  # 0.002
NUMBER = r"([+-][0-9]+\.[0-9]+)"
REASON = re.compile(rf"roc_auc improves by {NUMBER} \(CI {NUMBER} \.\. {NUMBER}\), (.*)")


def printed(reason: str) -> tuple[str, str, str, str | None]:
    """Gap, CI low, CI high and the margin (None when the check passed) as the reason prints them."""
    match = REASON.fullmatch(reason)
    assert match, reason
    gap, lo, hi, verdict = match.groups()
    margin = re.fullmatch(rf"needs >= {NUMBER} with the interval above zero", verdict)
    assert margin or verdict == "above the margin with an interval that excludes zero", verdict
    return gap, lo, hi, margin.group(1) if margin else None


@pytest.mark.parametrize(
    ("diff", "lo", "hi", "ok", "expected"),
    [
        pytest.param(
            0.0051, 0.0012, 0.0093, True,
            "roc_auc improves by +0.0051 (CI +0.0012 .. +0.0093), above the margin with an interval that excludes zero",
            id="clear-improvement",
        ),
        pytest.param(
            0.0, 0.0, 0.0, False,
            "roc_auc improves by +0.0000 (CI +0.0000 .. +0.0000), needs >= +0.0020 with the interval above zero",
            id="zero-gap",
        ),
        pytest.param(
            -0.0123, -0.0201, -0.0048, False,
            "roc_auc improves by -0.0123 (CI -0.0201 .. -0.0048), needs >= +0.0020 with the interval above zero",
            id="worse",
        ),
        pytest.param(
            0.002, 0.0004, 0.0035, True,
            "roc_auc improves by +0.0020 (CI +0.0004 .. +0.0035), above the margin with an interval that excludes zero",
            id="exactly-the-margin",
        ),
        pytest.param(
            0.00196, 0.0006, 0.0031, False,
            "roc_auc improves by +0.00196 (CI +0.00060 .. +0.00310), needs >= +0.00200 with the interval above zero",
            id="just-under-the-margin",
        ),
        pytest.param(
            0.00204, -0.0001, 0.0041, False,
            "roc_auc improves by +0.00204 (CI -0.00010 .. +0.00410), needs >= +0.00200 with the interval above zero",
            id="just-over-the-margin-interval-not-above-zero",
        ),
        pytest.param(
            0.0051, -0.00002, 0.0093, False,
            "roc_auc improves by +0.00510 (CI -0.00002 .. +0.00930), needs >= +0.00200 with the interval above zero",
            id="interval-low-just-under-zero",
        ),
    ],
)
def test_reason(diff: float, lo: float, hi: float, ok: bool, expected: str) -> None:
    assert improvement_reason("roc_auc", diff, lo, hi, MARGIN, ok) == expected


@pytest.mark.parametrize(
    "gap",
    [0.00196, 0.00199, 0.001999, 0.0019999, 0.00199999, float(np.nextafter(MARGIN, 0)), 0.00201,
     float(np.nextafter(MARGIN, 1))],
)
def test_a_gap_that_is_not_the_margin_never_prints_as_the_margin(gap: float) -> None:
    lo = 0.0006 if gap < MARGIN else -0.0006  # either way the check fails, and prints the margin
    shown_gap, shown_lo, _, shown_margin = printed(improvement_reason("roc_auc", gap, lo, 0.0031, MARGIN, False))
    assert shown_margin is not None and shown_gap != shown_margin
    assert (float(shown_gap) < float(shown_margin)) == (gap < MARGIN)  # and on the right side of it
    assert len(shown_gap.split(".")[1]) == len(shown_margin.split(".")[1]) >= 4  # same decimals, at least four
    assert float(shown_lo) == lo


def test_a_nonzero_interval_low_never_prints_as_zero() -> None:
    for lo in (-0.00004, 0.00004, -1e-9):
        _, shown_lo, _, _ = printed(improvement_reason("roc_auc", 0.0051, lo, 0.0093, MARGIN, lo > 0))
        assert float(shown_lo) != 0 and (float(shown_lo) > 0) == (lo > 0), shown_lo


@pytest.mark.parametrize(
    ("pairs", "places"),
    [
        ([(0.0051, 0.002)], 4),
        ([(0.002, 0.002)], 4),  # equal numbers may print equal
        ([(0.00196, 0.002)], 5),
        ([(0.0019999, 0.002)], 7),
        ([(0.0051, 0.002), (0.00003, 0.0)], 5),  # every pair apart
        ([(-0.00001, 0.0)], 5),  # -0.0000 is no different from +0.0000
        ([(float("nan"), 0.002)], 4),
    ],
)
def test_decimals_apart(pairs: list[tuple[float, float]], places: int) -> None:
    assert decimals_apart(*pairs) == places


def test_decide_says_it_with_the_same_numbers() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    champion = np.clip(0.2 + 0.3 * y + rng.normal(0, 0.25, len(y)), 0, 1)
    slices = {"plan": np.array(["basic"] * len(y)), "region": np.array(["na"] * len(y))}
    same = decide(y, champion, champion, slices, GatePolicy(n_bootstrap=50))
    check = next(c for c in same.checks if c.name == "improvement")
    assert not check.passed
    assert check.reason == (
        "roc_auc improves by +0.0000 (CI +0.0000 .. +0.0000), needs >= +0.0020 with the interval above zero"
    )
    assert check.reason == improvement_reason(
        "roc_auc", check.numbers["difference"], check.numbers["ci_low"], check.numbers["ci_high"], MARGIN, False
    )


def test_metrics_report_the_pr_auc_lift_over_the_base_rate() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.25).astype(int)
    p = np.clip(0.25 + 0.4 * y + rng.normal(0, 0.2, len(y)), 0, 1)
    m = metrics(y, p)
    assert m["pr_auc_lift"] == pytest.approx(m["pr_auc"] / y.mean())
    assert m["positive_rate"] == pytest.approx(y.mean()) and m["pr_auc_lift"] > 1
    assert np.isnan(metrics(np.zeros(5, int), np.linspace(0, 1, 5))["pr_auc_lift"])  # one class: unknown


def test_a_floor_on_the_pr_auc_lift_is_checked_like_the_others() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.4).astype(int)
    weak = np.clip(0.4 + 0.05 * y + rng.normal(0, 0.3, len(y)), 0, 1)
    floors = {"roc_auc": 0.5, "pr_auc_lift": 1.5}
    d = decide(y, weak, None, {}, GatePolicy(n_bootstrap=50, floors=floors))
    (check,) = d.checks
    assert not d.promote and not check.passed
    assert check.reason.startswith("below the floor: pr_auc_lift ") and "< 1.5000" in check.reason
    assert check.numbers["floors"] == floors
