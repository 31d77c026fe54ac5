"""drift_report for day D: does the world still look like the data the champion learned from?

The champion's reference sample (:mod:`.reference`) against the scored features of D
(:mod:`.current`), compared by Evidently (:mod:`.report`): data drift of every feature,
prediction drift of ``score``, missing values. Written as HTML and JSON under
``<lake root>/reports/drift/ds=D/``; one summary row in ``monitoring/drift_history`` D.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake, check_day
from sluice.edges.storage import put_object, report_uri
from sluice.settings import Settings
from sluice.stages.monitoring.current import current_sample
from sluice.stages.monitoring.policy import DriftPolicy
from sluice.stages.monitoring.reference import ReferenceSpec, scored_reference
from sluice.stages.monitoring.report import DriftSummary, run_report
from sluice.tables import DRIFT_HISTORY, PARTITION_COLUMN

log = logging.getLogger(__name__)


def history_row(
    ds: str,
    summary: DriftSummary,
    *,
    rows: int,
    reference_rows: int,
    model_version: str,
    reference_feature_version: int,
    report_uri: str,
    threshold: float,
) -> dict[str, Any]:
    """Pure: the ``monitoring/drift_history`` row of day ``ds``."""
    return {
        "drift_share": float(summary.share),
        "drifted_columns": json.dumps(summary.drifted_columns),
        "n_columns": summary.n_columns,
        "prediction_drifted": summary.prediction_drifted,
        "rows": int(rows),
        "reference_rows": int(reference_rows),
        "model_version": str(model_version),
        "reference_feature_version": int(reference_feature_version),
        "report_uri": report_uri,
        "alert": bool(summary.share > threshold),
        "skipped_columns": json.dumps(summary.skipped_columns),
        PARTITION_COLUMN: check_day(ds),
    }


def build_drift_report(
    settings: Settings, day: dt.date, ctx: RunContext, policy: DriftPolicy | None = None
) -> dict[str, Any]:
    """The drift report of day D: files under reports/drift/ds=D/, a row in monitoring/drift_history."""
    from sluice.edges.registry import Registry

    uc = usecase.of(settings)
    policy = policy or settings.drift
    lake = Lake(settings)
    ds = day.isoformat()
    current = current_sample(lake, uc, ds, policy.drift_current_rows, policy.drift_seed)
    spec = ReferenceSpec.from_tags(current.model_version, Registry(settings).version(current.model_version).tags)
    reference = scored_reference(settings, lake, uc, spec, policy)
    run = run_report(
        reference,
        current.frame,
        columns=uc.feature_columns,
        categorical=uc.categorical,
        drift_share=policy.drift_share_threshold,
        missing_tolerance=policy.drift_missing_tolerance,
        metadata={"ds": ds, "use_case": uc.name, "model_version": spec.model_version},
    )
    summary = run.summary()
    if summary.skipped_columns:
        log.warning("drift %s: no distribution test for %s", ds, summary.skipped_columns)
    html_uri, json_uri = report_uri(settings, ds), report_uri(settings, ds, "report.json")
    meta = {
        "ds": ds,
        "use_case": uc.name,
        "model_version": spec.model_version,
        "reference": {**asdict(spec), "rows": len(reference), "seed": policy.drift_seed},
        "current": {"rows": current.rows, "sample_rows": len(current.frame),
                    "feature_table_version": current.feature_table_version,
                    "predictions_version": current.predictions_version},
        "policy": policy.model_dump(),
        "summary": asdict(summary),
    }
    put_object(settings, html_uri, run.snapshot.get_html_str(as_iframe=False).encode())
    put_object(settings, json_uri, json.dumps({**json.loads(run.snapshot.json()), "sluice": meta}).encode())
    row = history_row(
        ds, summary, rows=current.rows, reference_rows=len(reference), model_version=spec.model_version,
        reference_feature_version=spec.feature_table_version, report_uri=html_uri,
        threshold=policy.drift_share_threshold,
    )
    version = lake.write_partition(
        DRIFT_HISTORY,
        ds,
        pa.Table.from_pylist([row], schema=DRIFT_HISTORY.schema),
        ctx.lineage(
            ds,
            {uc.tables.features.name: current.feature_table_version,
             uc.tables.predictions.name: current.predictions_version},
            model_version=spec.model_version,
            reference_feature_version=spec.feature_table_version,
        ),
    )
    log.info(
        "drift %s vs model v%s: %.0f%% of %d columns %s, prediction drift %s; report %s",
        ds, spec.model_version, 100 * summary.share, summary.n_columns, summary.drifted_columns,
        summary.prediction_drifted, html_uri,
    )
    return {
        **{k: v for k, v in row.items() if k != PARTITION_COLUMN},
        "ds": ds,
        "drifted_columns": summary.drifted_columns,
        "missing_drifted": summary.missing_drifted,
        "skipped_columns": summary.skipped_columns,
        "threshold": policy.drift_share_threshold,
        "report_json_uri": json_uri,
        "history_version": version,
    }
