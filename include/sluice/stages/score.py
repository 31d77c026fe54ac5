"""batch_score for day D: score every entity in the features of D with one resolved model."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.core.train import FittedModel
from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake
from sluice.edges.registry import CHALLENGER, CHAMPION, Registry
from sluice.settings import Settings
from sluice.stages import promotions
from sluice.tables import PARTITION_COLUMN

log = logging.getLogger(__name__)


class NoChampion(LookupError):
    """No model was champion on the day asked for: nothing to score with."""


def band_names(uc: UseCase) -> list[str]:
    """The use case's risk bands from the lowest up: index = how many lower bounds a score clears."""
    return [b.band for b in reversed(uc.spec.risk_bands)]


def band_index(scores: np.ndarray, uc: UseCase) -> np.ndarray:
    """Index into :func:`band_names` of every score: how many of the bands' lower bounds it clears."""
    index = np.zeros(len(scores), dtype=np.int8)
    for band in uc.spec.risk_bands[:-1]:
        index += scores >= band.min  # NaN clears none: the lowest band
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


def feature_matrix(features: pa.Table, uc: UseCase, categories: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The matrix LightGBM builds from ``train.model_matrix`` of the same rows, straight from Arrow.

    Float64 in column-major order, a categorical as the index of its value in
    ``categories`` (NaN when null or unknown), a null number as NaN: the numbers and the
    layout LightGBM predicts from on the pandas path, without the pandas frame, its
    categorical copy and LightGBM's own conversion of it.
    """
    out = np.empty((features.num_rows, len(uc.feature_columns)), dtype=np.float64, order="F")
    for j, name in enumerate(uc.feature_columns):
        column = features.column(name)
        if name in categories:
            column = pc.index_in(column, value_set=pa.array(categories[name], pa.string()))
        out[:, j] = pc.cast(column, pa.float64()).to_numpy()  # (a null becomes NaN)
    return out


def model_scores(model: FittedModel, features: pa.Table) -> np.ndarray:
    """``model.predict`` of the same rows, bit for bit, from an Arrow table of the features."""
    # The categories the booster was trained with: LightGBM maps a pandas frame onto them.
    matrix = feature_matrix(features, model.use_case, model.categories)
    return np.asarray(model.booster.predict(matrix, num_iteration=model.best_iteration))


def predictions_table(
    uc: UseCase, keys: pa.ChunkedArray, scores: np.ndarray, version: str, feature_version: int, ds: str
) -> pa.Table:
    """Pure: the predictions rows of day ``ds``, built column by column in Arrow (no pandas).

    One record batch: delta-rs may write the batches of a table out of order, and the
    rows are to keep the order of the features.
    """
    n = len(scores)
    return pa.table(
        {
            uc.key: keys.combine_chunks(),
            "score": pa.array(scores, pa.float64()),
            "risk_band": pa.array(band_names(uc), pa.string()).take(pa.array(band_index(scores, uc))),
            "model_version": pa.repeat(pa.scalar(version, pa.string()), n),
            "feature_table_version": pa.repeat(pa.scalar(feature_version, pa.int64()), n),
            PARTITION_COLUMN: pa.repeat(pa.scalar(ds, pa.string()), n),
        },
        schema=uc.tables.predictions.schema,
    )


def resolve_challenger(settings: Settings, lake: Lake, day: dt.date, champion: str, use_current_champion: bool) -> str | None:
    """The model to shadow on D beside ``champion``: the challenger of D (or the current alias), if it differs."""
    if use_current_champion:
        current = Registry(settings).by_alias(CHALLENGER)
        version = None if current is None else current.version
    else:
        version = promotions.challenger_on(lake, day)
    return None if version in (None, champion) else version


def score_day(
    settings: Settings, day: dt.date, ctx: RunContext, *, use_current_champion: bool = False
) -> dict[str, Any]:
    """Score D's features with the champion of D into ``predictions/scores``, and with the
    challenger of D (when there is one) into ``predictions/shadow_scores``, never published."""
    uc = usecase.of(settings)
    FEATURES, PREDICTIONS, SHADOW = uc.tables.features, uc.tables.predictions, uc.tables.shadow
    lake = Lake(settings)
    ds = day.isoformat()
    version = resolve_model(settings, lake, day, use_current_champion)
    feature_version = lake.version(FEATURES)
    if feature_version is None or not lake.has_partition(FEATURES, ds):
        raise LookupError(f"{FEATURES.name} has no partition {ds}: run nightly_etl for {ds} first")
    features = lake.read_partition(FEATURES, ds, version=feature_version, columns=[uc.key, *uc.feature_columns])
    registry = Registry(settings)
    scores = model_scores(FittedModel.from_booster(registry.load_booster(version), uc), features)
    table = predictions_table(uc, features.column(uc.key), scores, version, feature_version, ds)
    out_version = lake.write_partition(
        PREDICTIONS,
        ds,
        table,
        ctx.lineage(ds, {FEATURES.name: feature_version}, model_version=version, rows=len(scores)),
    )
    names = band_names(uc)
    counts = np.bincount(band_index(scores, uc), minlength=len(names))
    bands = {names[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable") if counts[i]}
    log.info("scored %d of %s's %ss on %s with model v%s: %s", len(scores), uc.name, uc.spec.entity.name, ds,
             version, bands)
    summary: dict[str, Any] = {
        "ds": ds,
        "rows": len(scores),
        "model_version": version,
        "feature_table_version": feature_version,
        "predictions_version": out_version,
        "risk_bands": bands,
        "mean_score": round(float(scores.mean()), 4),
        "shadow": None,
    }
    challenger = resolve_challenger(settings, lake, day, version, use_current_champion)
    if challenger is not None:
        shadow = model_scores(FittedModel.from_booster(registry.load_booster(challenger), uc), features)
        shadow_version = lake.write_partition(
            SHADOW, ds, predictions_table(uc, features.column(uc.key), shadow, challenger, feature_version, ds),
            ctx.lineage(ds, {FEATURES.name: feature_version}, model_version=challenger, rows=len(shadow),
                        champion_version=version),
        )
        summary["shadow"] = {"model_version": challenger, "rows": len(shadow), "version": shadow_version,
                             "mean_score": round(float(shadow.mean()), 4)}
        log.info("shadow-scored %s on %s with the challenger v%s (not published)", ds, uc.name, challenger)
    elif lake.has_partition(SHADOW, ds):
        # A re-run of D that has no challenger any more (say a backfill after the decisions
        # changed): no stale shadow scores of D stay behind.
        lake.write_partition(SHADOW, ds, SHADOW.schema.empty_table(),
                             ctx.lineage(ds, {FEATURES.name: feature_version}, model_version=version, rows=0))
    return summary
