"""The current day: the features of D that were scored (at the version scoring read), with their scores.

The row count is exact; the report runs on a fixed-size seeded sample (the verdicts of
Evidently's default distance tests do not depend on the sample size once it is large;
``benchmarks/drift.py`` measures that against a report on all rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow.compute as pc

from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake
from sluice.stages.monitoring.policy import DriftError
from sluice.stages.monitoring.report import PREDICTION
from sluice.stages.monitoring.sampling import day_seed, read_entities, sample_ids


@dataclass(frozen=True)
class Current:
    frame: pd.DataFrame  # the sample the report runs on
    rows: int  # all scored rows of the day
    model_version: str
    feature_table_version: int
    predictions_version: int


def current_sample(lake: Lake, uc: UseCase, ds: str, n: int, seed: int) -> Current:
    """The features of D that were scored (at the version scoring read), with their scores."""
    predictions, features = uc.tables.predictions, uc.tables.features
    predictions_version = lake.version(predictions)
    if predictions_version is None or not lake.has_partition(predictions, ds):
        raise DriftError(f"{predictions.name} has no partition {ds}: run batch_score for {ds} first")
    preds = lake.read_partition(
        predictions, ds, version=predictions_version,
        columns=[uc.key, PREDICTION, "model_version", "feature_table_version"],
    )
    versions = preds.column("model_version").unique().to_pylist()
    feature_versions = preds.column("feature_table_version").unique().to_pylist()
    if len(versions) != 1 or len(feature_versions) != 1:
        raise DriftError(f"{predictions.name} {ds} mixes models {versions} / feature versions {feature_versions}")
    feature_version = int(feature_versions[0])
    chosen = sample_ids(preds.column(uc.key), n, seed, day_seed(ds))
    sampled = read_entities(lake, features, ds, feature_version, [uc.key, *uc.feature_columns], uc.key, chosen)
    scores = preds.select([uc.key, PREDICTION]).filter(pc.is_in(preds.column(uc.key), chosen))
    joined = sampled.join(scores, uc.key, join_type="inner").sort_by(uc.key)
    if joined.num_rows == 0:
        raise DriftError(
            f"no scored {uc.spec.entity.name} of {ds} is in the features it was scored from (v{feature_version})"
        )
    return Current(
        frame=joined.to_pandas(),
        rows=preds.num_rows,
        model_version=str(versions[0]),
        feature_table_version=feature_version,
        predictions_version=predictions_version,
    )
