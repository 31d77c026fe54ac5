"""Realised performance: once the labels of a scored day mature, how good were its scores?

The run of D evaluates the scores of S = D - horizon (the use case's label horizon):
their labels are known by D. One row in ``monitoring/performance_history`` S.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.settings import Settings
from sluice.stages.monitoring.policy import DriftPolicy
from sluice.stages.monitoring.report import PREDICTION
from sluice.tables import PARTITION_COLUMN, PERFORMANCE_HISTORY

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
    return {**base, **{k: v for k, v in row.items() if k != PARTITION_COLUMN}, "pr_auc_lift": m["pr_auc_lift"],
            "evaluated": True, "history_version": version}
