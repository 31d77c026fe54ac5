"""drift_report for day D: does the world still look like the data the champion learned from?

* **Reference**: a fixed-size, seeded sample of the champion's training snapshot, read
  from ``features/customer_daily`` at the Delta version and over the train window that
  the model version records in its registry tags, and scored with that same model, so
  that prediction drift compares like with like. It depends only on (model version,
  feature version, size, seed), so it is computed once and kept next to the reports.
* **Current**: the features of D that were scored, joined with the predictions of D;
  the row count is exact, the report runs on a fixed-size seeded sample (the verdicts
  of Evidently's default distance tests do not depend on the sample size once it is
  large; ``benchmarks/drift.py`` measures that against a report on all rows).
* **Report**: Evidently (data drift of every feature, prediction drift of ``score``,
  missing values, with a test on each column's missing share against the reference's),
  written as HTML and JSON under ``<lake>/reports/drift/ds=D/``; one summary row in
  ``monitoring/drift_history`` D.
* **Performance**: 30 days later the labels of D are known; the run of D + 30 writes
  the realised ROC-AUC / PR-AUC of D's scores into ``monitoring/performance_history`` D.
* **Early retraining**: :func:`should_retrain_early` (pure) decides from the drift
  history; a trigger is remembered in ``monitoring/early_retrains`` for the cooldown.

The pure parts (:func:`drift_summary`, :func:`should_retrain_early`, the sampling
arithmetic) take and return plain values; Evidently is imported only to run a report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.core.features import CATEGORICAL, FEATURE_COLUMNS, LABEL_HORIZON_DAYS
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake, check_day
from sluice.settings import Settings
from sluice.tables import (
    DRIFT_HISTORY,
    EARLY_RETRAINS,
    FEATURES_CUSTOMER_DAILY,
    PARTITION_COLUMN,
    PERFORMANCE_HISTORY,
    PREDICTIONS_CHURN,
    Table,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

log = logging.getLogger(__name__)

PREDICTION = "score"
DRIFT_COLUMNS: list[str] = list(FEATURE_COLUMNS)  # what the drift share is a share of
LABEL = "label_churn_30d"

class DriftError(RuntimeError):
    """The drift report cannot be built: a missing input, or a report without verdicts."""


class DriftPolicy(BaseSettings):
    """Thresholds of the drift report, read from ``SLUICE_*`` variables when constructed."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    drift_share_threshold: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Alert when more than this share of the feature columns drifts."
    )
    performance_roc_auc_floor: float = Field(
        default=0.7, ge=0.0, le=1.0, description="Alert when the realised ROC-AUC of a scored day is below this."
    )
    drift_missing_tolerance: float = Field(
        default=0.1, ge=0.0, le=1.0, description="A column drifts when its missing share moves by more than this."
    )
    drift_reference_rows: int = Field(default=20_000, ge=100, description="Size of the reference sample.")
    drift_current_rows: int = Field(default=50_000, ge=100, description="Size of the day's sample the report runs on.")
    drift_seed: int = 0
    drift_retrain_k: int = Field(default=3, ge=1, description="Retrain early when drift is over on k ...")
    drift_retrain_n: int = Field(default=5, ge=1, description="... of the last n days ...")
    drift_retrain_cooldown_days: int = Field(default=7, ge=0, description="... at most once per this many days.")

    @model_validator(mode="after")
    def _k_within_n(self) -> DriftPolicy:
        if self.drift_retrain_k > self.drift_retrain_n:
            raise ValueError(f"drift_retrain_k ({self.drift_retrain_k}) must be <= drift_retrain_n ({self.drift_retrain_n})")
        return self


def load_policy(**overrides: Any) -> DriftPolicy:
    """Read the drift policy from the environment now (overrides win)."""
    return DriftPolicy(**overrides)


# -- sampling (pure) ------------------------------------------------------------------------
def allocate(counts: Mapping[str, int], n: int) -> dict[str, int]:
    """Split a sample of ``n`` rows over days in proportion to their rows (largest remainder).

    The result is what a uniform sample over all the days would take from each on
    average, but lets each day be read and sampled on its own (memory: one day).
    """
    total = sum(counts.values())
    if total <= n:
        return dict(counts)
    exact = {d: c * n / total for d, c in counts.items()}
    out = {d: int(v) for d, v in exact.items()}
    for d in sorted(exact, key=lambda d: (-(exact[d] - out[d]), d))[: n - sum(out.values())]:
        out[d] += 1
    return out


def sample_indices(num_rows: int, k: int, *seed: int) -> np.ndarray:
    """``k`` distinct row positions out of ``num_rows``, sorted; the same for the same seed."""
    if k >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(list(seed)).choice(num_rows, size=k, replace=False))


def _day_seed(ds: str) -> int:
    return dt.date.fromisoformat(ds).toordinal()


def sample_ids(ids: pa.Array | pa.ChunkedArray, k: int, *seed: int) -> pa.Array:
    """A seeded sample of ``k`` of the customer ids (sorted first: the order they come in does not matter)."""
    ordered = pa.array(np.sort(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64)))
    return ordered.take(pa.array(sample_indices(len(ordered), k, *seed)))


def read_customers(
    lake: Lake, table: Table, ds: str, version: int, columns: list[str], ids: pa.Array
) -> pa.Table:
    """The rows of partition ``ds`` whose customer is in ``ids``, filtered while scanning.

    Memory is the result plus a few record batches, not the whole partition: what
    keeps a 1M-customer day's report lean.
    """
    from deltalake import DeltaTable

    delta = DeltaTable(lake.uri(table), version=version, storage_options=lake.storage_options or None)
    dataset = delta.to_pyarrow_dataset(partitions=[(PARTITION_COLUMN, "=", check_day(ds))])
    found = dataset.to_table(columns=columns, filter=pc.field("customer_id").isin(ids))
    return found.cast(pa.schema([table.schema.field(c) for c in columns]))


# -- the reference ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceSpec:
    """What the champion was trained on, as recorded on its registry version."""

    model_version: str
    feature_table_version: int
    train_window: tuple[str, str]

    @classmethod
    def from_tags(cls, version: str, tags: Mapping[str, str]) -> ReferenceSpec:
        """Pure: parse the tags ``sluice.stages.retrain`` sets (``feature_table_version``, ``training_windows``)."""
        try:
            feature_version = int(tags["feature_table_version"])
            start, end = json.loads(tags["training_windows"])["train"]
        except (KeyError, ValueError, TypeError) as exc:
            raise DriftError(
                f"model version {version} does not record its training data (tags feature_table_version and "
                f"training_windows['train']): {exc!r}"
            ) from exc
        return cls(str(version), feature_version, (check_day(start), check_day(end)))


def reference_sample(lake: Lake, spec: ReferenceSpec, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` rows of the train window at the pinned feature version."""
    rows = lake.partition_rows(FEATURES_CUSTOMER_DAILY, version=spec.feature_table_version)
    start, end = spec.train_window
    counts = {d: r for d, r in rows.items() if start <= d <= end and r > 0}
    if not counts:
        raise DriftError(
            f"features/customer_daily v{spec.feature_table_version} has no partition in the train window "
            f"{start}..{end} of model v{spec.model_version}"
        )
    version = spec.feature_table_version
    parts = []
    for ds, k in allocate(counts, n).items():
        if k == 0:
            continue
        ids = lake.read_partition(FEATURES_CUSTOMER_DAILY, ds, version=version, columns=["customer_id"])
        chosen = sample_ids(ids.column("customer_id"), k, seed, _day_seed(ds))
        day = read_customers(lake, FEATURES_CUSTOMER_DAILY, ds, version, ["customer_id", *FEATURE_COLUMNS], chosen)
        parts.append(day.append_column(PARTITION_COLUMN, pa.array([ds] * day.num_rows, pa.string())))
    return pa.concat_tables(parts).sort_by([(PARTITION_COLUMN, "ascending"), ("customer_id", "ascending")]).to_pandas()


def _reference_uri(settings: Settings, spec: ReferenceSpec, n: int, seed: int) -> str:
    return (
        f"{settings.lake_uri}/reports/drift/reference/model_version={spec.model_version}/"
        f"features_v{spec.feature_table_version}_{spec.train_window[0]}_{spec.train_window[1]}_n{n}_seed{seed}.parquet"
    )


def scored_reference(settings: Settings, lake: Lake, spec: ReferenceSpec, policy: DriftPolicy) -> pd.DataFrame:
    """The reference sample with the champion's scores; computed once per model and kept."""
    import pyarrow.parquet as pq

    from sluice.edges.storage import filesystem

    uri = _reference_uri(settings, spec, policy.drift_reference_rows, policy.drift_seed)
    fs, path = filesystem(settings, uri)
    if fs.get_file_info(path).is_file:
        log.info("reference of model v%s from %s", spec.model_version, uri)
        with fs.open_input_file(path) as f:
            return pq.read_table(f).to_pandas()
    from sluice.core.train import FittedModel
    from sluice.edges.registry import Registry

    sample = reference_sample(lake, spec, policy.drift_reference_rows, policy.drift_seed)
    model = FittedModel.from_booster(Registry(settings).load_booster(spec.model_version))
    sample[PREDICTION] = model.predict(sample)
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(sample, preserve_index=False), buffer)
    put_object(settings, uri, buffer.getvalue().to_pybytes())
    log.info("reference of model v%s: %d rows sampled and scored, kept at %s", spec.model_version, len(sample), uri)
    return sample


# -- the current day ------------------------------------------------------------------------
@dataclass(frozen=True)
class Current:
    frame: pd.DataFrame  # the sample the report runs on
    rows: int  # all scored rows of the day
    model_version: str
    feature_table_version: int
    predictions_version: int


def current_sample(lake: Lake, ds: str, n: int, seed: int) -> Current:
    """The features of D that were scored (at the version scoring read), with their scores."""
    predictions_version = lake.version(PREDICTIONS_CHURN)
    if predictions_version is None or not lake.has_partition(PREDICTIONS_CHURN, ds):
        raise DriftError(f"predictions/churn has no partition {ds}: run batch_score for {ds} first")
    preds = lake.read_partition(
        PREDICTIONS_CHURN, ds, version=predictions_version,
        columns=["customer_id", PREDICTION, "model_version", "feature_table_version"],
    )
    versions = preds.column("model_version").unique().to_pylist()
    feature_versions = preds.column("feature_table_version").unique().to_pylist()
    if len(versions) != 1 or len(feature_versions) != 1:
        raise DriftError(f"predictions/churn {ds} mixes models {versions} / feature versions {feature_versions}")
    feature_version = int(feature_versions[0])
    chosen = sample_ids(preds.column("customer_id"), n, seed, _day_seed(ds))
    features = read_customers(lake, FEATURES_CUSTOMER_DAILY, ds, feature_version, ["customer_id", *FEATURE_COLUMNS],
                              chosen)
    scores = preds.select(["customer_id", PREDICTION]).filter(pc.is_in(preds.column("customer_id"), chosen))
    joined = features.join(scores, "customer_id", join_type="inner").sort_by("customer_id")
    if joined.num_rows == 0:
        raise DriftError(f"no scored customer of {ds} is in the features it was scored from (v{feature_version})")
    return Current(
        frame=joined.to_pandas(),
        rows=preds.num_rows,
        model_version=str(versions[0]),
        feature_table_version=feature_version,
        predictions_version=predictions_version,
    )


# -- the report (the Evidently adapter) -------------------------------------------------------
def run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_share: float = 0.3,
    missing_tolerance: float = 0.1,
    columns: Sequence[str] = DRIFT_COLUMNS,
    prediction: str | None = PREDICTION,
    metadata: Mapping[str, Any] | None = None,
) -> Snapshot:
    """Evidently data drift of ``columns``, prediction drift, missing values; tests carry the verdicts.

    Evidently drops missing values before a drift test, so a column that turns mostly
    null keeps its distribution; the missing-share test on each column (reference share
    +- ``missing_tolerance``) is what catches it.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DatasetMissingValueCount, MissingValueCount, ValueDrift
    from evidently.presets import DataDriftPreset
    from evidently.tests import gte, lte

    columns = list(columns)
    categorical = [c for c in columns if c in CATEGORICAL]
    numerical = [c for c in columns if c not in CATEGORICAL] + ([prediction] if prediction else [])
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    keep = columns + ([prediction] if prediction else [])
    ref_missing = reference[columns].isna().mean()
    items: list[Any] = [DataDriftPreset(columns=columns, drift_share=drift_share)]
    if prediction:
        items.append(ValueDrift(column=prediction))
    items.append(DatasetMissingValueCount(tests=[]))
    for col in columns:
        share = float(ref_missing[col])
        items.append(
            MissingValueCount(
                column=col,
                share_tests=[
                    gte(round(max(0.0, share - missing_tolerance), 6)),
                    lte(round(min(1.0, share + missing_tolerance), 6)),
                ],
            )
        )
    report = Report(items, include_tests=True)
    return report.run(
        Dataset.from_pandas(current[keep].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[keep].reset_index(drop=True), data_definition=definition),
        metadata=dict(metadata or {}),
    )


@dataclass(frozen=True)
class DriftSummary:
    share: float  # drifted feature columns / feature columns
    drifted_columns: list[str]  # in report order; by distribution or by missing share
    prediction_drifted: bool
    n_columns: int
    scores: dict[str, float] = field(default_factory=dict)  # drift score of every column (method-specific)
    missing_drifted: list[str] = field(default_factory=list)


def drift_summary(report: Mapping[str, Any], prediction: str = PREDICTION) -> DriftSummary:
    """Pure: the verdicts of an Evidently report dict (``snapshot.dict()``).

    A feature column drifts when its value-drift test fails or its missing-share test
    fails; the prediction column is reported on its own. The verdicts are Evidently's
    own (each test compares the column's score with its method's threshold).
    """
    value_drift: dict[str, bool] = {}
    missing: list[str] = []
    for test in report.get("tests") or []:
        params = (test.get("metric_config") or {}).get("params") or {}
        kind = str(params.get("type", "")).rsplit(":", 1)[-1]
        column = params.get("column")
        failed = test.get("status") == "FAIL"
        if not column:
            continue
        if kind == "ValueDrift":
            value_drift[column] = value_drift.get(column, False) or failed
        elif kind == "MissingValueCount" and failed and column not in missing and column != prediction:
            missing.append(column)
    features = [c for c in value_drift if c != prediction]
    if not features:
        raise DriftError("the report has no value-drift test: run it with include_tests=True")
    scores = {}
    for metric in report.get("metrics") or []:
        config = metric.get("config") or {}
        if str(config.get("type", "")).endswith(":ValueDrift") and isinstance(metric.get("value"), int | float):
            scores[config["column"]] = float(metric["value"])
    drifted = [c for c in features if value_drift[c] or c in missing]
    return DriftSummary(
        share=len(drifted) / len(features),
        drifted_columns=drifted,
        prediction_drifted=bool(value_drift.get(prediction, False)),
        n_columns=len(features),
        scores=scores,
        missing_drifted=[c for c in missing if c in features],
    )


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
        PARTITION_COLUMN: check_day(ds),
    }


def put_object(settings: Settings, uri: str, data: bytes) -> None:
    """Write one object under the lake (file:// or s3://); never visible half-written."""
    from pyarrow import fs as pafs

    from sluice.edges.storage import filesystem

    fs, path = filesystem(settings, uri)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)  # rename: atomic on one filesystem
    else:
        with fs.open_output_stream(path) as out:  # an object PUT is atomic
            out.write(data)


REPORTS_PREFIX = "reports/drift"  # under the lake: the only files the Sluice view serves


def report_uri(settings: Settings, ds: str, name: str = "report.html") -> str:
    return f"{settings.lake_uri}/{REPORTS_PREFIX}/ds={check_day(ds)}/{name}"


def build_drift_report(
    settings: Settings, day: dt.date, ctx: RunContext, policy: DriftPolicy | None = None
) -> dict[str, Any]:
    """The drift report of day D: files under reports/drift/ds=D/, a row in monitoring/drift_history."""
    from sluice.edges.registry import Registry

    policy = policy or load_policy()
    lake = Lake(settings)
    ds = day.isoformat()
    current = current_sample(lake, ds, policy.drift_current_rows, policy.drift_seed)
    spec = ReferenceSpec.from_tags(current.model_version, Registry(settings).version(current.model_version).tags)
    reference = scored_reference(settings, lake, spec, policy)
    snapshot = run_report(
        reference,
        current.frame,
        drift_share=policy.drift_share_threshold,
        missing_tolerance=policy.drift_missing_tolerance,
        metadata={"ds": ds, "model_version": spec.model_version},
    )
    report = snapshot.dict()
    summary = drift_summary(report)
    html_uri, json_uri = report_uri(settings, ds), report_uri(settings, ds, "report.json")
    meta = {
        "ds": ds,
        "model_version": spec.model_version,
        "reference": {**asdict(spec), "rows": len(reference), "seed": policy.drift_seed},
        "current": {"rows": current.rows, "sample_rows": len(current.frame),
                    "feature_table_version": current.feature_table_version,
                    "predictions_version": current.predictions_version},
        "policy": policy.model_dump(),
        "summary": asdict(summary),
    }
    put_object(settings, html_uri, snapshot.get_html_str(as_iframe=False).encode())
    put_object(settings, json_uri, json.dumps({**json.loads(snapshot.json()), "sluice": meta}).encode())
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
            {FEATURES_CUSTOMER_DAILY.name: current.feature_table_version,
             PREDICTIONS_CHURN.name: current.predictions_version},
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
        "threshold": policy.drift_share_threshold,
        "report_json_uri": json_uri,
        "history_version": version,
    }


# -- realised performance ----------------------------------------------------------------------
def record_performance(
    settings: Settings, day: dt.date, ctx: RunContext, policy: DriftPolicy | None = None
) -> dict[str, Any]:
    """Realised ROC-AUC / PR-AUC of the scores of S = D - 30, whose labels mature on D.

    Writes ``monitoring/performance_history`` S (evaluated_on = D). Returns
    ``evaluated: False`` with the reason, and writes nothing, when S was not scored or
    its labels are not there yet.
    """
    from sluice.core.gate import metrics

    policy = policy or load_policy()
    lake = Lake(settings)
    scored_day = (day - dt.timedelta(days=LABEL_HORIZON_DAYS)).isoformat()
    base = {"ds": scored_day, "evaluated_on": day.isoformat(), "roc_auc_floor": policy.performance_roc_auc_floor}
    predictions_version = lake.version(PREDICTIONS_CHURN)
    if predictions_version is None or not lake.has_partition(PREDICTIONS_CHURN, scored_day):
        return {**base, "evaluated": False, "alert": False, "reason": f"{scored_day} was not scored"}
    features_version = lake.version(FEATURES_CUSTOMER_DAILY)
    if features_version is None or not lake.has_partition(FEATURES_CUSTOMER_DAILY, scored_day):
        return {**base, "evaluated": False, "alert": False, "reason": f"no features of {scored_day}"}
    labels = lake.read_partition(
        FEATURES_CUSTOMER_DAILY, scored_day, version=features_version, columns=["customer_id", LABEL]
    ).to_pandas()
    labels = labels[labels[LABEL].notna()]
    if labels.empty:
        return {**base, "evaluated": False, "alert": False, "reason": f"labels of {scored_day} have not matured yet"}
    scores = lake.read_partition(
        PREDICTIONS_CHURN, scored_day, version=predictions_version, columns=["customer_id", PREDICTION, "model_version"]
    ).to_pandas()
    joined = scores.merge(labels, on="customer_id", how="inner")
    if joined.empty:
        return {**base, "evaluated": False, "alert": False, "reason": f"no scored customer of {scored_day} has a label"}
    versions = sorted(joined["model_version"].unique())
    m = metrics(joined[LABEL].astype(int).to_numpy(), joined[PREDICTION].to_numpy())
    roc_auc = m["roc_auc"]
    alert = bool(np.isfinite(roc_auc) and roc_auc < policy.performance_roc_auc_floor)
    row = {
        "model_version": ",".join(versions),
        "roc_auc": roc_auc,
        "pr_auc": m["pr_auc"],
        "rows": len(joined),
        "positive_rate": float(joined[LABEL].astype(int).mean()),
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
            {FEATURES_CUSTOMER_DAILY.name: features_version, PREDICTIONS_CHURN.name: predictions_version},
            evaluated_on=day.isoformat(),
        ),
    )
    log.info("realised performance of %s (model %s) on %s: %s", scored_day, row["model_version"], day, m)
    return {**base, **{k: v for k, v in row.items() if k != PARTITION_COLUMN}, "evaluated": True,
            "history_version": version}


# -- early retraining ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainDecision:
    trigger: bool
    reason: str
    drift_days: list[str]


def should_retrain_early(
    history_rows: Iterable[Mapping[str, Any]],
    today: dt.date,
    *,
    k: int = 3,
    n: int = 5,
    cooldown_days: int = 7,
    last_trigger: dt.date | None = None,
    threshold: float = 0.3,
) -> RetrainDecision:
    """Pure: retrain early when drift share > ``threshold`` on ``k`` of the ``n`` days up to
    ``today`` (a day without a report does not count), unless the last early retraining
    (on or before ``today``) was less than ``cooldown_days`` ago."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if last_trigger is not None and last_trigger > today:
        raise ValueError(f"last trigger {last_trigger} is after {today}: pass the last one on or before it")
    first = today - dt.timedelta(days=n - 1)
    over = sorted(
        {
            str(r[PARTITION_COLUMN])
            for r in history_rows
            if first <= dt.date.fromisoformat(str(r[PARTITION_COLUMN])) <= today
            and r.get("drift_share") is not None
            and float(r["drift_share"]) > threshold
        }
    )
    window = f"{first.isoformat()}..{today.isoformat()}"
    if len(over) < k:
        return RetrainDecision(False, f"drift over {threshold} on {len(over)} of the {n} days {window}; needs {k}", over)
    if last_trigger is not None and (today - last_trigger).days < cooldown_days:
        again = last_trigger + dt.timedelta(days=cooldown_days)
        return RetrainDecision(
            False,
            f"drift over {threshold} on {len(over)} of the {n} days {window}, but an early retraining was "
            f"triggered on {last_trigger} (cooldown {cooldown_days} days: not before {again})",
            over,
        )
    return RetrainDecision(True, f"drift over {threshold} on {len(over)} of the {n} days {window}: {over}", over)


def last_early_retrain(lake: Lake, today: dt.date) -> dt.date | None:
    """The last day on or before ``today`` an early retraining was triggered."""
    days = [d for d in lake.partitions(EARLY_RETRAINS) if d <= today.isoformat()]
    return dt.date.fromisoformat(days[-1]) if days else None


def decide_early_retrain(settings: Settings, day: dt.date, policy: DriftPolicy | None = None) -> dict[str, Any]:
    """Read the drift history and the last early trigger; decide (see :func:`should_retrain_early`)."""
    policy = policy or load_policy()
    lake = Lake(settings)
    first = (day - dt.timedelta(days=policy.drift_retrain_n - 1)).isoformat()
    days = [d for d in lake.partitions(DRIFT_HISTORY) if first <= d <= day.isoformat()]
    rows = (
        lake.read_partitions(DRIFT_HISTORY, days, columns=["drift_share", "model_version", PARTITION_COLUMN]).to_pylist()
        if days
        else []
    )
    last = last_early_retrain(lake, day)
    decision = should_retrain_early(
        rows, day, k=policy.drift_retrain_k, n=policy.drift_retrain_n, cooldown_days=policy.drift_retrain_cooldown_days,
        last_trigger=last, threshold=policy.drift_share_threshold,
    )
    log.info("early retraining for %s: %s (%s)", day, decision.trigger, decision.reason)
    today_rows = [r for r in rows if r[PARTITION_COLUMN] == day.isoformat()]
    return {
        "ds": day.isoformat(),
        **asdict(decision),
        "last_trigger": last.isoformat() if last else None,
        "model_version": today_rows[0]["model_version"] if today_rows else None,
    }


def record_early_retrain(
    settings: Settings, day: dt.date, ctx: RunContext, decision: Mapping[str, Any], triggered_dag_id: str,
    triggered_run_id: str,
) -> int:
    """Remember the trigger of day D (a re-run replaces it): the cooldown starts here."""
    ds = day.isoformat()
    row = {
        "model_version": decision.get("model_version"),
        "drift_days": json.dumps(list(decision.get("drift_days") or [])),
        "reason": str(decision.get("reason", "")),
        "triggered_dag_id": triggered_dag_id,
        "triggered_run_id": triggered_run_id,
        "run_id": ctx.run_id,
        "recorded_at": dt.datetime.now(dt.UTC),  # an audit time, not business logic
        PARTITION_COLUMN: ds,
    }
    return Lake(settings).write_partition(
        EARLY_RETRAINS, ds, pa.Table.from_pylist([row], schema=EARLY_RETRAINS.schema), ctx.lineage(ds, {})
    )
