"""Scoring: risk bands, the predictions frame, and which model scores which day."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from sluice import promotions
from sluice.lake import Lake
from sluice.lineage import RunContext
from sluice.score import NoChampion, resolve_model, risk_band, scores_frame


@pytest.mark.parametrize(
    ("score", "band"), [(0.0, "low"), (0.1999, "low"), (0.2, "medium"), (0.4999, "medium"), (0.5, "high"), (1.0, "high")]
)
def test_risk_band_boundaries(score: float, band: str) -> None:
    assert risk_band(np.array([score]))[0] == band


def test_scores_frame_carries_model_and_feature_versions() -> None:
    class Constant:
        def predict(self, features: pd.DataFrame) -> np.ndarray:
            return np.linspace(0, 1, len(features))

    features = pd.DataFrame({"customer_id": [7, 8, 9], "ds": "2026-02-10"})
    frame = scores_frame(features, Constant(), "5", 42)  # type: ignore[arg-type]
    assert frame["customer_id"].tolist() == [7, 8, 9]
    assert frame["risk_band"].tolist() == ["low", "high", "high"]
    assert set(frame["model_version"]) == {"5"} and set(frame["feature_table_version"]) == {42}
    assert set(frame["ds"]) == {"2026-02-10"}


def test_a_past_day_is_scored_with_the_champion_of_that_day(settings) -> None:
    lake = Lake(settings)
    ctx = RunContext("test", "t")
    promotions.record_promotion(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=ctx)
    promotions.record_promotion(lake, "2026-02-15", "3", "1", forced=False, reason="better", ctx=ctx)
    assert resolve_model(settings, lake, dt.date(2026, 2, 8), False) == "1"
    assert resolve_model(settings, lake, dt.date(2026, 2, 14), False) == "1"
    assert resolve_model(settings, lake, dt.date(2026, 2, 15), False) == "3"
    assert resolve_model(settings, lake, dt.date(2026, 3, 1), False) == "3"
    with pytest.raises(NoChampion, match="2026-02-07"):
        resolve_model(settings, lake, dt.date(2026, 2, 7), False)


def test_a_rerun_gate_replaces_its_row_and_manual_actions_append(settings) -> None:
    lake = Lake(settings)
    gate = RunContext("weekly_retrain", "scheduled__2026-02-09")
    promote = promotions.record_promotion
    promote(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=gate, decision_ds="2026-02-08")
    promote(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=gate, decision_ds="2026-02-08")  # re-run
    promote(lake, "2026-02-08", "2", "1", forced=True, reason="manual: hotfix", ctx=RunContext("cli", "a"))
    promote(lake, "2026-02-08", "1", "2", forced=True, reason="rollback: hotfix broke scoring", ctx=RunContext("cli", "b"))
    history = promotions.history(lake)
    assert [(r["model_version"], r["reason"]) for r in history] == [
        ("1", "floors"),
        ("2", "manual: hotfix"),
        ("1", "rollback: hotfix broke scoring"),
    ]
    assert promotions.champion_on(lake, dt.date(2026, 2, 8)) == "1"
