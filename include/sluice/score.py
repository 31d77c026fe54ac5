"""batch_score for day D: score every customer in the features of D with one resolved model."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sluice import promotions
from sluice.lake import Lake
from sluice.lineage import RunContext
from sluice.registry import CHAMPION, Registry
from sluice.settings import Settings
from sluice.tables import FEATURES_CUSTOMER_DAILY, PARTITION_COLUMN, PREDICTIONS_CHURN
from sluice.train import FittedModel

log = logging.getLogger(__name__)

RISK_BANDS = ((0.5, "high"), (0.2, "medium"), (0.0, "low"))  # lower bound of score, band


class NoChampion(LookupError):
    """No model was champion on the day asked for: nothing to score with."""


def risk_band(scores: np.ndarray) -> np.ndarray:
    out = np.full(len(scores), RISK_BANDS[-1][1], dtype=object)
    for bound, band in reversed(RISK_BANDS[:-1]):
        out[scores >= bound] = band
    return out


def resolve_model(settings: Settings, lake: Lake, day: dt.date, use_current_champion: bool) -> str:
    """The model version to score D with, resolved once: the champion on D, or the current one."""
    if use_current_champion:
        current = Registry(settings).by_alias(CHAMPION)
        if current is None:
            raise NoChampion("no model has the alias champion yet")
        return current.version
    version = promotions.champion_on(lake, day)
    if version is None:
        raise NoChampion(f"no model was champion on {day} (no promotion on or before it)")
    return version


def scores_frame(features: pd.DataFrame, model: FittedModel, version: str, feature_version: int) -> pd.DataFrame:
    """Pure: the predictions rows for a features frame."""
    scores = model.predict(features)
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"].to_numpy(),
            "score": scores,
            "risk_band": risk_band(scores),
            "model_version": version,
            "feature_table_version": feature_version,
            PARTITION_COLUMN: features[PARTITION_COLUMN].to_numpy(),
        }
    )


def score_day(
    settings: Settings, day: dt.date, ctx: RunContext, *, use_current_champion: bool = False
) -> dict[str, Any]:
    lake = Lake(settings)
    ds = day.isoformat()
    version = resolve_model(settings, lake, day, use_current_champion)
    feature_version = lake.version(FEATURES_CUSTOMER_DAILY)
    if feature_version is None or not lake.has_partition(FEATURES_CUSTOMER_DAILY, ds):
        raise LookupError(f"features/customer_daily has no partition {ds}: run nightly_etl for {ds} first")
    features = lake.read_partition(FEATURES_CUSTOMER_DAILY, ds, version=feature_version).to_pandas()
    model = FittedModel.from_booster(Registry(settings).load_booster(version))
    frame = scores_frame(features, model, version, feature_version)
    out_version = lake.write_partition(
        PREDICTIONS_CHURN,
        ds,
        pa.Table.from_pandas(frame[PREDICTIONS_CHURN.columns], schema=PREDICTIONS_CHURN.schema, preserve_index=False),
        ctx.lineage(ds, {FEATURES_CUSTOMER_DAILY.name: feature_version}, model_version=version, rows=len(frame)),
    )
    bands = frame["risk_band"].value_counts().to_dict()
    log.info("scored %d customers of %s with model v%s: %s", len(frame), ds, version, bands)
    return {
        "ds": ds,
        "rows": len(frame),
        "model_version": version,
        "feature_table_version": feature_version,
        "predictions_version": out_version,
        "risk_bands": {k: int(v) for k, v in bands.items()},
        "mean_score": round(float(frame["score"].mean()), 4),
    }
