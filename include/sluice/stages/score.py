"""batch_score for day D: score every customer in the features of D with one resolved model."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.core.features import CATEGORICAL, FEATURE_COLUMNS
from sluice.core.lineage import RunContext
from sluice.core.train import CATEGORIES, FittedModel
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.settings import Settings
from sluice.stages import promotions
from sluice.tables import FEATURES_CUSTOMER_DAILY, PARTITION_COLUMN, PREDICTIONS_CHURN

log = logging.getLogger(__name__)

RISK_BANDS = ((0.5, "high"), (0.2, "medium"), (0.0, "low"))  # lower bound of score, band
_BAND_NAMES = [band for _, band in reversed(RISK_BANDS)]  # by the number of bounds a score clears


class NoChampion(LookupError):
    """No model was champion on the day asked for: nothing to score with."""


def band_index(scores: np.ndarray) -> np.ndarray:
    """Index into ``_BAND_NAMES`` of every score: how many of the bands' lower bounds it clears."""
    index = np.zeros(len(scores), dtype=np.int8)
    for bound, _ in RISK_BANDS[:-1]:
        index += scores >= bound  # NaN clears none: "low"
    return index


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


def feature_matrix(features: pa.Table, categories: Mapping[str, Sequence[str]] = CATEGORIES) -> np.ndarray:
    """The matrix LightGBM builds from ``train.model_matrix`` of the same rows, straight from Arrow.

    Float64 in column-major order, a categorical as the index of its value in
    ``categories`` (NaN when null or unknown), a null number as NaN: the numbers and the
    layout LightGBM predicts from on the pandas path, without the pandas frame, its
    categorical copy and LightGBM's own conversion of it.
    """
    out = np.empty((features.num_rows, len(FEATURE_COLUMNS)), dtype=np.float64, order="F")
    for j, name in enumerate(FEATURE_COLUMNS):
        column = features.column(name)
        if name in CATEGORICAL:
            column = pc.index_in(column, value_set=pa.array(categories[name], pa.string()))
        out[:, j] = pc.cast(column, pa.float64()).to_numpy()  # (a null becomes NaN)
    return out


def churn_scores(model: FittedModel, features: pa.Table) -> np.ndarray:
    """``model.predict`` of the same rows, bit for bit, from an Arrow table of the features."""
    # The categories the booster was trained with: LightGBM maps a pandas frame onto them.
    trained = getattr(model.booster, "pandas_categorical", None)
    categorical = [c for c in FEATURE_COLUMNS if c in CATEGORICAL]
    if trained is not None and len(trained) != len(categorical):
        raise ValueError(
            f"the model knows {len(trained)} categorical features, the features have {len(categorical)}"
        )
    categories = dict(zip(categorical, trained, strict=True)) if trained is not None else CATEGORIES
    matrix = feature_matrix(features, categories)
    return np.asarray(model.booster.predict(matrix, num_iteration=model.best_iteration))


def predictions_table(
    customer_ids: pa.ChunkedArray, scores: np.ndarray, version: str, feature_version: int, ds: str
) -> pa.Table:
    """Pure: the predictions rows of day ``ds``, built column by column in Arrow (no pandas).

    One record batch: delta-rs may write the batches of a table out of order, and the
    rows are to keep the order of the features.
    """
    n = len(scores)
    return pa.table(
        {
            "customer_id": customer_ids.combine_chunks(),
            "score": pa.array(scores, pa.float64()),
            "risk_band": pa.array(_BAND_NAMES, pa.string()).take(pa.array(band_index(scores))),
            "model_version": pa.repeat(pa.scalar(version, pa.string()), n),
            "feature_table_version": pa.repeat(pa.scalar(feature_version, pa.int64()), n),
            PARTITION_COLUMN: pa.repeat(pa.scalar(ds, pa.string()), n),
        },
        schema=PREDICTIONS_CHURN.schema,
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
    features = lake.read_partition(
        FEATURES_CUSTOMER_DAILY, ds, version=feature_version, columns=["customer_id", *FEATURE_COLUMNS]
    )
    model = FittedModel.from_booster(Registry(settings).load_booster(version))
    scores = churn_scores(model, features)
    table = predictions_table(features.column("customer_id"), scores, version, feature_version, ds)
    out_version = lake.write_partition(
        PREDICTIONS_CHURN,
        ds,
        table,
        ctx.lineage(ds, {FEATURES_CUSTOMER_DAILY.name: feature_version}, model_version=version, rows=len(scores)),
    )
    counts = np.bincount(band_index(scores), minlength=len(_BAND_NAMES))
    bands = {_BAND_NAMES[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable") if counts[i]}
    log.info("scored %d customers of %s with model v%s: %s", len(scores), ds, version, bands)
    return {
        "ds": ds,
        "rows": len(scores),
        "model_version": version,
        "feature_table_version": feature_version,
        "predictions_version": out_version,
        "risk_bands": bands,
        "mean_score": round(float(scores.mean()), 4),
    }
