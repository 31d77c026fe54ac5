"""The drift report's reference, on a simulated business: quiet before a change, loud after it.

A churn business of 2,000 customers (``SimulatorSource``, seasons, breaks, ageing) whose
customers come back half as often from SWITCH on (``engagement_drop``). Its feature history
is built in memory with the platform's own feature functions; a model retrained on the
week ending AS_OF is split as churn's spec does (purged: the train window lies two purges,
60 days, before the holdout). The reference is read from the windows that split records,
exactly as ``drift_report`` reads them from the registry tags, and Evidently judges the
scored days against it with the report's own settings.

The bug this catches: with the train window as reference, August is compared with April
and seasons plus ageing (``tenure_days``) drift by themselves, so the report alerts days
before anything changed (as the e2e ML loop saw). Behind the ``behaviour`` marker.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pandas as pd
import pytest

from sluice.core import train as T
from sluice.core.history import feature_history
from sluice.core.usecase import load_use_case
from sluice.settings import DriftPolicy
from sluice.stages.monitoring.reference import ReferenceSpec
from sluice.stages.monitoring.report import run_report
from usecases.churn.simulator import SimulatorSource, parse_drift

pytestmark = [pytest.mark.behaviour, pytest.mark.timeout(900)]

UC = load_use_case("churn")
START, AS_OF, SWITCH = dt.date(2026, 1, 1), dt.date(2026, 8, 2), "2026-08-05"
QUIET = ["2026-08-03", "2026-08-04"]  # scored before the switch
LOUD = ["2026-08-07", "2026-08-08", "2026-08-09"]  # two days after it and later


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    source = SimulatorSource(n_customers=2_000, seed=7, drift=parse_drift(f"engagement_drop@{SWITCH}"))
    days = [START + dt.timedelta(days=i) for i in range((dt.date(2026, 8, 9) - START).days + 1)]
    return feature_history(((day, source.events_for_day(day)) for day in days), UC)


def _share(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, list[str]]:
    logging.disable(logging.WARNING)
    try:
        summary = run_report(reference, current, columns=UC.feature_columns, categorical=UC.categorical, prediction=None,
                             drift_share=DriftPolicy().drift_share_threshold).summary()
    finally:
        logging.disable(logging.NOTSET)
    return summary.share, summary.drifted_columns


def test_the_reference_is_quiet_before_a_change_and_loud_after_it(history: pd.DataFrame) -> None:
    warm = history[history["ds"] >= (START + dt.timedelta(days=UC.warmup_days)).isoformat()]
    split = T.time_split(T.matured(warm, UC, AS_OF), T.SplitPlan.of(UC))
    windows = split.windows()
    spec = ReferenceSpec.from_tags("1", {"feature_table_version": "0", "training_windows": json.dumps(windows)})
    start, end = spec.window
    reference = history[history["ds"].between(start, end)]
    threshold = DriftPolicy().drift_share_threshold

    shares = {day: _share(reference, history[history["ds"] == day]) for day in QUIET + LOUD}
    print({day: (round(s, 2), cols) for day, (s, cols) in shares.items()})
    assert all(shares[day][0] <= threshold for day in QUIET), (windows, shares)
    assert all(shares[day][0] > threshold for day in LOUD), (windows, shares)
    assert "sessions_7d" in shares[LOUD[0]][1]

    # The train window, two purges older, would have cried wolf before the switch.
    old = history[history["ds"].between(*windows["train"])]
    assert _share(old, history[history["ds"] == QUIET[0]])[0] > threshold, "the test no longer shows the bug"
