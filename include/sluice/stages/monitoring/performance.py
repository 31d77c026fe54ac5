"""Realised performance: once the labels of a scored day mature, how good were its scores?

The run of D evaluates the scores of S = D - horizon (the use case's label horizon):
their labels are known by D. One row in ``monitoring/performance_history`` S.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake
from sluice.settings import Settings
from sluice.stages.monitoring.policy import DriftPolicy
from sluice.stages.monitoring.report import PREDICTION
from sluice.tables import PARTITION_COLUMN, PERFORMANCE_HISTORY, SHADOW_PERFORMANCE

log = logging.getLogger(__name__)


def record_performance(
    settings: Settings, day: dt.date, ctx: RunContext, policy: DriftPolicy | None = None
) -> dict[str, Any]:
    """Realised ROC-AUC / PR-AUC of the scores of S = D - horizon, whose labels mature on D.

    Writes ``monitoring/performance_history`` S (evaluated_on = D). Returns
    ``evaluated: False`` with the reason, and writes nothing, when S was not scored or
    its labels are not there yet.
    """
    from sluice.core.gate import metrics

    uc = usecase.of(settings)
    predictions, features = uc.tables.predictions, uc.tables.features
    policy = policy or settings.drift
    lake = Lake(settings)
    scored_day = (day - dt.timedelta(days=uc.horizon)).isoformat()
    base = {"ds": scored_day, "evaluated_on": day.isoformat(), "roc_auc_floor": policy.performance_roc_auc_floor}
    predictions_version = lake.version(predictions)
    if predictions_version is None or not lake.has_partition(predictions, scored_day):
        return {**base, "evaluated": False, "alert": False, "reason": f"{scored_day} was not scored"}
    features_version = lake.version(features)
    if features_version is None or not lake.has_partition(features, scored_day):
        return {**base, "evaluated": False, "alert": False, "reason": f"no features of {scored_day}"}
    labels = lake.read_partition(
        features, scored_day, version=features_version, columns=[uc.key, uc.label]
    ).to_pandas()
    labels = labels[labels[uc.label].notna()]
    if labels.empty:
        return {**base, "evaluated": False, "alert": False, "reason": f"labels of {scored_day} have not matured yet"}
    scores = lake.read_partition(
        predictions, scored_day, version=predictions_version, columns=[uc.key, PREDICTION, "model_version"]
    ).to_pandas()
    joined = scores.merge(labels, on=uc.key, how="inner")
    if joined.empty:
        return {**base, "evaluated": False, "alert": False,
                "reason": f"no scored {uc.spec.entity.name} of {scored_day} has a label"}
    versions = sorted(joined["model_version"].unique())
    y = joined[uc.label].astype(int).to_numpy()
    m = metrics(y, joined[PREDICTION].to_numpy())
    roc_auc = m["roc_auc"]
    alert = bool(np.isfinite(roc_auc) and roc_auc < policy.performance_roc_auc_floor)
    row = {
        "model_version": ",".join(versions),
        "roc_auc": roc_auc,
        "pr_auc": m["pr_auc"],
        "rows": len(joined),
        "positive_rate": float(y.mean()),
        "evaluated_on": day.isoformat(),
        "alert": alert,
        PARTITION_COLUMN: scored_day,
    }
    version = lake.write_partition(
        PERFORMANCE_HISTORY,
        scored_day,
        pa.Table.from_pylist([row], schema=PERFORMANCE_HISTORY.schema),
        ctx.lineage(
            scored_day,
            {features.name: features_version, predictions.name: predictions_version},
            evaluated_on=day.isoformat(),
        ),
    )
    log.info("realised performance of %s (model %s) on %s: %s", scored_day, row["model_version"], day, m)
    shadow = _record_shadow(lake, uc, scored_day, day, scores, labels, ctx, features_version)
    return {**base, **{k: v for k, v in row.items() if k != PARTITION_COLUMN}, "pr_auc_lift": m["pr_auc_lift"],
            "evaluated": True, "history_version": version, "shadow": shadow}


def _record_shadow(
    lake: Lake, uc: UseCase, scored_day: str, day: dt.date, scores: pd.DataFrame, labels: pd.DataFrame,
    ctx: RunContext, features_version: int,
) -> dict[str, Any] | None:
    """Champion and shadow challenger of ``scored_day`` on the same labelled entities, in
    ``monitoring/shadow_performance``; None when the day had no shadow scores."""
    from sluice.core.shadow import paired_day

    shadow_table = uc.tables.shadow
    shadow_version = lake.version(shadow_table)
    if shadow_version is None or not lake.has_partition(shadow_table, scored_day):
        return None
    shadow = lake.read_partition(
        shadow_table, scored_day, version=shadow_version, columns=[uc.key, PREDICTION, "model_version"]
    ).to_pandas()
    both = scores.merge(shadow, on=uc.key, suffixes=("_champion", "_challenger")).merge(labels, on=uc.key)
    champions, challengers = set(both["model_version_champion"]), set(both["model_version_challenger"])
    if both.empty or len(champions) != 1 or len(challengers) != 1:
        return None
    row = paired_day(both[uc.label].astype(int).to_numpy(), both[f"{PREDICTION}_champion"].to_numpy(),
                     both[f"{PREDICTION}_challenger"].to_numpy())
    row |= {"champion_version": champions.pop(), "challenger_version": challengers.pop(),
            "evaluated_on": day.isoformat(), PARTITION_COLUMN: scored_day}
    lake.write_partition(
        SHADOW_PERFORMANCE, scored_day, pa.Table.from_pylist([row], schema=SHADOW_PERFORMANCE.schema),
        ctx.lineage(scored_day, {uc.tables.features.name: features_version, shadow_table.name: shadow_version},
                    evaluated_on=day.isoformat()),
    )
    log.info("shadow on %s: champion v%s vs challenger v%s over %d labelled %ss: ROC-AUC %.4f vs %.4f",
             scored_day, row["champion_version"], row["challenger_version"], row["rows"], uc.spec.entity.name,
             row["champion_roc_auc"], row["challenger_roc_auc"])
    return {k: v for k, v in row.items() if k != PARTITION_COLUMN}
