"""When the business changes, a retraining that has seen the change beats the champion by more than noise.

The churn simulator's customers start cancelling in the app on 2026-04-15 (a long last visit
now means a customer who left; before, an engaged one). As in ``make demo``, the champion is
trained on 2026-07-27 and a challenger a week later, each on churn's purged split with the
spec's windows (90 warm-up days, at most 60 train days): the champion's training days all end
before the change, the challenger's last week is after it. The gate judges both on the
challenger's holdout (late June).

Over 6 simulated businesses (12,000 customers each) the challenger must be promoted in at
least 5, with an improvement whose interval excludes zero. The same comparison in the same
businesses without the change (``cancel_in_app_from=None``) says how much the extra week of
training days alone is worth: sometimes it is enough to be promoted (more data is a real
improvement too), but in the median business the change must be worth more than the gate's
margin on top of it.
About 50 s a seed, two at a time: behind the ``behaviour`` marker (``make test-model``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from tests.helpers import map_in_processes

from sluice.core import train as T
from sluice.core.gate import Decision, decide
from sluice.core.history import feature_history
from sluice.core.usecase import load_use_case
from sluice.stages.retrain import gate_policy
from usecases.churn.simulator import SimulatorSource

UC = load_use_case("churn")
SEEDS = range(6)
CUSTOMERS = 12_000
START = dt.date(2026, 1, 1)
WARMUP = UC.spec.training.warmup_days
PLAN = T.SplitPlan.of(UC)
CHAMPION_DAY, CHALLENGER_DAY = dt.date(2026, 7, 27), dt.date(2026, 8, 3)  # the demo's two retrainings
POLICY = dataclasses.replace(gate_policy(UC), n_bootstrap=300)

pytestmark = [pytest.mark.behaviour, pytest.mark.timeout(1800)]


def _decide(seed: int, changing: bool) -> Decision:
    source = SimulatorSource(n_customers=CUSTOMERS, seed=3_000 + seed,
                             **({} if changing else {"cancel_in_app_from": None}))
    days = [START + dt.timedelta(days=i) for i in range((CHALLENGER_DAY - START).days)]  # what the lake holds
    frame = feature_history(((day, source.events_for_day(day)) for day in days), UC)
    frame = frame[frame["ds"] >= (START + dt.timedelta(days=WARMUP)).isoformat()]
    champion_split = T.time_split(T.matured(frame, UC, CHAMPION_DAY), PLAN)
    challenger_split = T.time_split(T.matured(frame, UC, CHALLENGER_DAY), PLAN)
    assert champion_split.train["ds"].max() < "2026-04-15" < challenger_split.train["ds"].max()
    holdout = challenger_split.holdout.reset_index(drop=True)
    champion = T.fit(champion_split, UC).predict(holdout)
    challenger = T.fit(challenger_split, UC).predict(holdout)
    y = holdout[UC.label].astype(int).to_numpy()
    slices = {c: holdout[c].astype(str).to_numpy() for c in POLICY.guarded_slices}
    return decide(y, challenger, champion, slices, POLICY, groups=holdout[UC.key].to_numpy(),
                  challenger="2", champion="1")


def _run(seed: int) -> tuple[int, Decision, Decision]:
    return seed, _decide(seed, changing=True), _decide(seed, changing=False)


@pytest.fixture(scope="module")
def results() -> list[tuple[int, Decision, Decision]]:
    out = map_in_processes(_run, SEEDS, __file__)
    print(f"\nnewer data over {len(out)} seeds ({CUSTOMERS:,} customers each):")
    for seed, changed, stationary in out:
        for name, decision in (("changing", changed), ("stationary", stationary)):
            print(f"  seed {seed} {name:10s} {'PROMOTED' if decision.promote else 'kept    '} "
                  f"{_improvement(decision).reason}")
    return out


def _improvement(decision: Decision):
    return next(c for c in decision.checks if c.name == "improvement")


def test_a_retraining_that_saw_the_change_is_promoted_by_more_than_noise(results) -> None:
    promoted = [seed for seed, changed, _ in results if changed.promote]
    assert len(promoted) >= len(results) - 1, f"promoted in {len(promoted)} of {len(results)}: {promoted}"
    for seed, changed, _ in results:
        if changed.promote:
            assert _improvement(changed).numbers["ci_low"] > 0, (seed, changed.reasons)


def test_the_change_not_the_extra_week_makes_the_difference(results) -> None:
    gain = [_improvement(c).numbers["difference"] - _improvement(s).numbers["difference"] for _, c, s in results]
    assert float(np.median(gain)) > POLICY.min_improvement, f"the change adds {np.median(gain):+.4f} (median): {gain}"
    stationary = [seed for seed, _, s in results if s.promote]
    assert len(stationary) <= len(results) // 3, f"the extra week alone promoted in seeds {stationary}"
