"""Behaviour of the promotion gate on synthetic holdouts with known truth."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sluice.core.gate import Decision, GatePolicy, decide, forced
from sluice.core.usecase import load_use_case
from sluice.stages.retrain import gate_policy

N = 6000
# The gate as churn configures it (floors, margin, every category feature guarded), fewer resamples.
POLICY = dataclasses.replace(gate_policy(load_use_case("churn")), n_bootstrap=200)


def test_the_policy_is_churns_gate() -> None:
    # Every category feature is guarded, and the PR-AUC floor is relative to the base rate.
    assert POLICY.guarded_slices == ("plan", "region", "channel", "device")
    assert dict(POLICY.floors) == {"roc_auc": 0.70, "pr_auc_lift": 2.0}
    assert (POLICY.primary_metric, POLICY.min_improvement, POLICY.slice_min_rows) == ("roc_auc", 0.005, 300)
    # The platform's default guards no slice: a use case names its own.
    assert GatePolicy().guarded_slices == ()


def _holdout(seed: int = 0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=N)
    y = (rng.random(N) < 1 / (1 + np.exp(-(2.2 * signal - 2.2)))).astype(int)  # ~15% positives
    plan = rng.choice(["basic", "standard", "premium"], size=N, p=[0.5, 0.35, 0.15])
    region = rng.choice(["na", "eu", "apac", "latam"], size=N, p=[0.4, 0.3, 0.2, 0.1])
    channel = rng.choice(["organic", "paid_search", "social", "referral", "partner"], size=N,
                         p=[0.35, 0.25, 0.2, 0.12, 0.08])
    device = rng.choice(["ios", "android", "web"], size=N)
    return rng, signal, y, {"plan": plan, "region": region, "channel": channel, "device": device}


def _model(rng, signal, noise: float) -> np.ndarray:
    """A model that sees the signal through ``noise``; calibrated-ish probabilities."""
    z = 2.2 * (signal + rng.normal(scale=noise, size=len(signal))) / np.sqrt(1 + noise**2) - 2.2
    return 1 / (1 + np.exp(-z))


def _check(decision: Decision, name: str):
    return next(c for c in decision.checks if c.name == name)


def test_better_challenger_is_promoted() -> None:
    rng, signal, y, slices = _holdout()
    champion, challenger = _model(rng, signal, 1.0), _model(rng, signal, 0.4)
    d = decide(y, challenger, champion, slices, POLICY, challenger="2", champion="1")
    assert d.promote, d.reasons
    imp = _check(d, "improvement")
    assert imp.numbers["difference"] > POLICY.min_improvement and imp.numbers["ci_low"] > 0


@pytest.mark.parametrize("noise", [0.7, 0.75, 1.2], ids=["equal", "slightly-noisier", "noisier"])
def test_equal_or_noisier_challenger_is_not_promoted(noise: float) -> None:
    rng, signal, y, slices = _holdout(1)
    champion = _model(rng, signal, 0.7)
    challenger = _model(rng, signal, noise)
    d = decide(y, challenger, champion, slices, POLICY)
    assert not d.promote
    assert not _check(d, "improvement").passed
    assert "needs >=" in _check(d, "improvement").reason


def test_winner_overall_that_loses_a_guarded_slice_is_not_promoted() -> None:
    rng, signal, y, slices = _holdout(2)
    champion = _model(rng, signal, 0.8)
    challenger = _model(rng, signal, 0.3)
    latam = slices["region"] == "latam"
    challenger[latam] = rng.random(latam.sum())  # useless on one region
    d = decide(y, challenger, champion, slices, POLICY)
    assert _check(d, "improvement").passed, "it does win overall"
    slice_check = _check(d, "slices")
    assert not slice_check.passed and "region=latam" in slice_check.reason
    assert not d.promote


def test_small_slices_are_not_guarded() -> None:
    rng, signal, y, slices = _holdout(3)
    champion, challenger = _model(rng, signal, 0.8), _model(rng, signal, 0.3)
    tiny = np.zeros(N, dtype=bool)
    tiny[:100] = True
    challenger[tiny] = rng.random(100)
    d = decide(y, challenger, champion, slices | {"plan": np.where(tiny, "tiny", "big")}, POLICY)
    numbers = _check(d, "slices").numbers
    assert all(e["slice"] != "plan=tiny" for e in numbers["examined"])
    # Skipped, and the record says why.
    assert {"slice": "plan=tiny", "rows": 100, "reason": "100 rows < 300"} in numbers["skipped"]
    assert {e["slice"] for e in numbers["examined"]} >= {"plan=big", "region=na", "channel=partner", "device=web"}
    assert d.promote


def test_model_trained_on_shuffled_labels_is_never_promoted() -> None:
    rng, signal, y, slices = _holdout(4)
    shuffled = rng.permutation(_model(rng, signal, 0.3))  # scores unrelated to these rows
    assert not decide(y, shuffled, None, slices, POLICY).promote
    assert not decide(y, shuffled, _model(rng, signal, 1.5), slices, POLICY).promote


def test_first_model_is_promoted_only_above_the_floors() -> None:
    rng, signal, y, slices = _holdout(5)
    good = decide(y, _model(rng, signal, 0.5), None, slices, POLICY)
    assert good.promote and [c.name for c in good.checks] == ["floors"]
    weak = decide(y, _model(rng, signal, 4.0), None, slices, POLICY)
    assert not weak.promote
    assert "below the floor" in _check(weak, "floors").reason


def test_worse_calibration_blocks_promotion() -> None:
    rng, signal, y, slices = _holdout(6)
    champion = _model(rng, signal, 0.8)
    sharp = _model(rng, signal, 0.3)
    overconfident = np.clip(sharp * 3.0, 0, 1)  # same ranking, badly calibrated
    d = decide(y, overconfident, champion, slices, POLICY)
    assert _check(d, "improvement").passed
    assert not _check(d, "calibration").passed
    assert not d.promote


def test_decision_is_deterministic_and_serialisable() -> None:
    rng, signal, y, slices = _holdout(7)
    champion, challenger = _model(rng, signal, 0.9), _model(rng, signal, 0.5)
    a = decide(y, challenger, champion, slices, POLICY, challenger="3", champion="2")
    b = decide(y, challenger, champion, slices, POLICY, challenger="3", champion="2")
    assert a.to_json() == b.to_json()
    record = json.loads(a.to_json())
    assert record["promote"] is True and record["champion"] == "2"
    assert {c["name"] for c in record["checks"]} == {"floors", "improvement", "slices", "calibration"}
    assert all(c["reason"] for c in record["checks"])


def test_forced_promotion_needs_and_records_a_reason() -> None:
    rng, signal, y, slices = _holdout(8)
    d = decide(y, _model(rng, signal, 4.0), None, slices, POLICY)
    with pytest.raises(ValueError, match="reason"):
        forced(d, "  ")
    f = forced(d, "incident 42: old model broken")
    assert f.promote and f.forced and f.forced_reason == "incident 42: old model broken"
    assert json.loads(f.to_json())["forced_reason"] == "incident 42: old model broken"


def test_the_bootstraps_auc_is_sklearns_with_sample_weights() -> None:
    from sklearn.metrics import roc_auc_score

    from sluice.core.gate import weighted_roc_auc

    rng = np.random.default_rng(5)
    for n in (40, 3000):
        y = (rng.random(n) < 0.2).astype(int)
        p = np.round(rng.random(n) * 0.6 + 0.3 * y, 2)  # many ties
        auc = weighted_roc_auc(y, p)
        for _ in range(5):
            w = rng.integers(0, 4, n).astype(float)
            kept = w > 0
            assert auc(w) == pytest.approx(roc_auc_score(y[kept], p[kept], sample_weight=w[kept]), abs=1e-12)


def test_resampling_customers_widens_the_interval_when_each_is_in_the_holdout_several_days() -> None:
    from sluice.core.gate import paired_bootstrap

    rng, signal, y, _ = _holdout(9)
    # 1,000 customers, each on 6 days with the same label and the same scores: 6,000 rows that
    # hold the evidence of 1,000.
    customers = np.repeat(np.arange(1000), 6)
    a = _model(rng, signal[:1000], 0.5)[customers]
    b = _model(rng, signal[:1000], 0.6)[customers]
    y = y[:1000][customers]
    _, lo_rows, hi_rows = paired_bootstrap(y, a, b, "roc_auc", 300, 0.95, 0)
    _, lo_customers, hi_customers = paired_bootstrap(y, a, b, "roc_auc", 300, 0.95, 0, customers)
    assert hi_customers - lo_customers > 1.5 * (hi_rows - lo_rows)
