"""The one registry of lake tables: names, schemas and partitioning.

DAGs, CLI and tests refer to tables through these objects, never by string.
Every table is partitioned by ``ds`` (the partition day, ``YYYY-MM-DD``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

PARTITION_COLUMN = "ds"

# Column types by name, so that importing the registry (as DAG files do) costs no pyarrow.
Fields = tuple[tuple[str, str], ...]


def _arrow_type(name: str) -> pa.DataType:
    import pyarrow as pa

    if name == "timestamp_utc":
        return pa.timestamp("us", tz="UTC")
    return getattr(pa, name)()


@dataclass(frozen=True)
class Table:
    name: str  # path below the lake root, e.g. "raw/events"
    fields: Fields
    description: str

    @cached_property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([pa.field(n, _arrow_type(t)) for n, t in self.fields])

    @property
    def asset_name(self) -> str:
        """Name of the Airflow Asset that marks an update of this table."""
        return "sluice." + self.name.replace("/", ".")

    @property
    def columns(self) -> list[str]:
        return [n for n, _ in self.fields]


def partitioned(*fields: tuple[str, str]) -> Fields:
    """The fields of a table partitioned by day: ``ds`` last."""
    return (*fields, (PARTITION_COLUMN, "string"))


MODEL_DECISIONS = Table(
    "models/decisions",
    partitioned(
        ("model_version", "string"),
        ("champion_version", "string"),
        ("promote", "bool_"),
        ("promoted", "bool_"),
        ("dry_run", "bool_"),
        ("forced", "bool_"),
        ("reason", "string"),
        ("feature_table_version", "int64"),
        ("decision_json", "string"),
        ("run_id", "string"),
        ("recorded_at", "timestamp_utc"),
        ("training_data", "string"),  # sha256 of the training rows, the as-of day and the model settings
        # With gate.shadow.required: challenger (in shadow from the next day), waiting (another is in
        # shadow), rejected (failed offline), promoted / retired (a challenger judged on its live days).
        # Null: every decided model is shadowed, and the offline gate alone decides.
        ("shadow_state", "string"),
        ("shadow_json", "string"),  # the shadow evidence of the challenger in shadow when this was decided
        # With gate.approval.required: awaiting (the gate would promote; a person decides), then a row of
        # its own for the answer: approved, rejected, timed out. Null: no approval asked.
        ("approval_state", "string"),
        ("approved_by", "string"),  # who answered (an Airflow user); null for a timeout
    ),
    "Gate decisions as of day ds, one row per model version (appended, never rewritten): every check, "
    "its numbers, the reason.",
)

MODEL_PROMOTIONS = Table(
    "models/promotions",
    partitioned(
        ("model_version", "string"),
        ("previous_version", "string"),
        ("forced", "bool_"),
        ("reason", "string"),
        ("decision_ds", "string"),
        ("run_id", "string"),
        ("recorded_at", "timestamp_utc"),
        ("approved_by", "string"),  # the Airflow user who approved it (gate.approval.required), else null
    ),
    "History of the champion (appended, never rewritten): from day ds on, model_version scores "
    "(the last row recorded by a day wins).",
)

DRIFT_HISTORY = Table(
    "monitoring/drift_history",
    partitioned(
        ("drift_share", "float64"),
        ("drifted_columns", "string"),  # JSON list
        ("n_columns", "int32"),
        ("prediction_drifted", "bool_"),
        ("rows", "int64"),
        ("reference_rows", "int64"),
        ("model_version", "string"),
        ("reference_feature_version", "int64"),
        ("report_uri", "string"),
        ("alert", "bool_"),
        ("skipped_columns", "string"),  # JSON object: column -> why it was not compared ("all null", "constant")
    ),
    "One summary row per day ds of the drift report (features and predictions of ds vs the champion's holdout days).",
)

PERFORMANCE_HISTORY = Table(
    "monitoring/performance_history",
    partitioned(
        ("model_version", "string"),
        ("roc_auc", "float64"),
        ("pr_auc", "float64"),
        ("rows", "int64"),
        ("positive_rate", "float64"),
        ("evaluated_on", "string"),
        ("alert", "bool_"),
    ),
    "Realised performance of the model that scored day ds, once its labels matured (evaluated_on = ds + horizon).",
)

SHADOW_PERFORMANCE = Table(
    "monitoring/shadow_performance",
    partitioned(
        ("champion_version", "string"),
        ("challenger_version", "string"),
        ("rows", "int64"),  # entities of ds scored by both, with a matured label
        ("positive_rate", "float64"),
        ("champion_roc_auc", "float64"),
        ("challenger_roc_auc", "float64"),
        ("champion_pr_auc", "float64"),
        ("challenger_pr_auc", "float64"),
        ("champion_log_loss", "float64"),
        ("challenger_log_loss", "float64"),
        ("evaluated_on", "string"),
    ),
    "Champion and shadow challenger on the same entities of day ds, once their labels matured "
    "(evaluated_on = ds + horizon): the live evidence a promotion can require.",
)

# Early retrainings triggered by drift, so that the cooldown survives restarts and backfills.
EARLY_RETRAINS = Table(
    "monitoring/early_retrains",
    partitioned(
        ("model_version", "string"),
        ("drift_days", "string"),  # JSON list of the days over the threshold
        ("reason", "string"),
        ("triggered_dag_id", "string"),
        ("triggered_run_id", "string"),
        ("run_id", "string"),
        ("recorded_at", "timestamp_utc"),
    ),
    "Early retrainings of the champion triggered by drift_report on day ds.",
)

# What drift_report alerted, so that a re-run of a day never sends a reason twice.
ALERTS_SENT = Table(
    "monitoring/alerts_sent",
    partitioned(
        ("reason_key", "string"),  # the kind of alert and the day it is about, e.g. data_drift:2026-03-10
        ("reason", "string"),
        ("sent_at", "timestamp_utc"),
        ("run_id", "string"),
        ("status", "int32"),  # the HTTP status the webhook answered
    ),
    "Alerts about day ds that the webhook accepted (drift_report's, ingest_raw's volume check): one row per reason, "
    "recorded after the POST.",
)

VOLUME_HISTORY = Table(
    "monitoring/volume_history",
    partitioned(
        ("rows", "int64"),  # raw rows of ds
        ("baseline_days", "int32"),  # days of the trailing window with data
        ("median", "float64"),  # their median (null: no baseline yet)
        ("ratio", "float64"),  # rows / median
        ("low", "float64"),  # the band of contract.volume
        ("high", "float64"),
        ("verdict", "string"),  # ok, low, high, no_baseline
        ("raw_version", "int64"),  # the raw table's Delta version that was counted
    ),
    "The volume check of ingest_raw for day ds: its raw rows against the median of the trailing days.",
)

# What lake_maintenance did to each table, so that status and the view show the lake's footprint
# without listing the object store.
LAKE_UPKEEP = Table(
    "lake/upkeep",
    partitioned(
        ("table_name", "string"),
        ("files_before", "int64"),  # every object under the table's folder: data files and log
        ("files_after", "int64"),
        ("bytes_before", "int64"),
        ("bytes_after", "int64"),
        ("live_files", "int64"),  # data files of the latest version
        ("live_bytes", "int64"),
        ("version_before", "int64"),
        ("version_after", "int64"),
        ("pinned_versions", "string"),  # JSON list: versions kept for registered models
        ("compacted_files", "int64"),  # small files rewritten into fewer
        ("vacuumed_files", "int64"),
        ("log_files_deleted", "int64"),
        ("orphans_collected", "int64"),
        ("retired_partitions", "string"),  # JSON list of the partition days deleted by retention
        ("run_id", "string"),
        ("recorded_at", "timestamp_utc"),
    ),
    "Upkeep of each table by lake_maintenance on day ds (appended, never rewritten): files and bytes before "
    "and after, versions, what was compacted, vacuumed and collected.",
)

# The tables of every use case (raw, quarantine, curated, state, features, predictions)
# depend on its spec: ``UseCase.tables`` builds them. These are the same for all.
RECORD_TABLES: tuple[Table, ...] = (
    MODEL_DECISIONS,
    MODEL_PROMOTIONS,
    DRIFT_HISTORY,
    PERFORMANCE_HISTORY,
    SHADOW_PERFORMANCE,
    EARLY_RETRAINS,
    ALERTS_SENT,
    VOLUME_HISTORY,
    LAKE_UPKEEP,
)


def by_name(name: str, tables: tuple[Table, ...] = RECORD_TABLES) -> Table:
    for table in tables:
        if table.name == name:
            return table
    raise KeyError(f"unknown table {name!r}; known: {[t.name for t in tables]}")
