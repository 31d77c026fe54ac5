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


def _schema(*fields: tuple[str, str]) -> Fields:
    return (*fields, (PARTITION_COLUMN, "string"))


# Raw events are kept exactly as the source delivered them: every field as text,
# so that a malformed value survives to be judged (and quarantined) by the contract.
RAW_EVENT_FIELDS = [
    "event_id",
    "customer_id",
    "event_time",
    "event_type",
    "duration_s",
    "amount",
    "plan",
    "region",
    "channel",
    "device",
    "signup_date",
]

RAW_EVENTS = Table(
    "raw/events",
    _schema(*[(name, "string") for name in RAW_EVENT_FIELDS]),
    "Events of day ds as extracted from the source, untyped.",
)

QUARANTINE_EVENTS = Table(
    "quarantine/events",
    _schema(
        *[(name, "string") for name in RAW_EVENT_FIELDS],
        ("failed_columns", "string"),
        ("failed_checks", "string"),
    ),
    "Raw rows of day ds that failed the contract, with the columns and checks they failed.",
)

CURATED_EVENTS = Table(
    "curated/events",
    _schema(
        ("event_id", "string"),
        ("customer_id", "int64"),
        ("event_time", "timestamp_utc"),
        ("event_type", "string"),
        ("duration_s", "float64"),
        ("amount", "float64"),
        ("plan", "string"),
        ("region", "string"),
        ("channel", "string"),
        ("device", "string"),
        ("signup_date", "date32"),
    ),
    "Valid, typed, de-duplicated events of day ds.",
)

CUSTOMER_STATE = Table(
    "state/customer_cumulative",
    _schema(
        ("customer_id", "int64"),
        ("first_event_date", "date32"),
        ("last_event_date", "date32"),
        ("cum_sessions", "int64"),
        ("cum_session_seconds", "int64"),
        ("cum_orders", "int64"),
        ("cum_spend_cents", "int64"),
        ("cum_tickets", "int64"),
        ("cum_active_days", "int64"),
        ("plan", "string"),
        ("region", "string"),
        ("channel", "string"),
        ("device", "string"),
        ("signup_date", "date32"),
    ),
    "Per-customer running totals up to and including ds; windows are differences of two days.",
)

FEATURES_CUSTOMER_DAILY = Table(
    "features/customer_daily",
    _schema(
        ("customer_id", "int64"),
        ("tenure_days", "int32"),
        ("days_since_last_event", "int32"),
        ("sessions_7d", "int32"),
        ("sessions_30d", "int32"),
        ("sessions_90d", "int32"),
        ("session_minutes_7d", "float64"),
        ("session_minutes_30d", "float64"),
        ("orders_30d", "int32"),
        ("orders_90d", "int32"),
        ("spend_7d", "float64"),
        ("spend_30d", "float64"),
        ("spend_90d", "float64"),
        ("tickets_30d", "int32"),
        ("tickets_90d", "int32"),
        ("active_days_7d", "int32"),
        ("active_days_30d", "int32"),
        ("active_days_90d", "int32"),
        ("sessions_trend_7_30", "float64"),
        ("spend_per_order_90d", "float64"),
        ("plan", "string"),
        ("region", "string"),
        ("channel", "string"),
        ("device", "string"),
        ("label_churn_30d", "int8"),
    ),
    "Point-in-time features of every active customer as of ds; label filled once its horizon closes.",
)

MODEL_DECISIONS = Table(
    "models/decisions",
    _schema(
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
    ),
    "Gate decisions of retraining runs as of day ds (one row per run): every check, its numbers, the reason.",
)

MODEL_PROMOTIONS = Table(
    "models/promotions",
    _schema(
        ("model_version", "string"),
        ("previous_version", "string"),
        ("forced", "bool_"),
        ("reason", "string"),
        ("decision_ds", "string"),
        ("run_id", "string"),
        ("recorded_at", "timestamp_utc"),
    ),
    "History of the champion: from day ds on, model_version scores (the last row of a day wins).",
)

PREDICTIONS_CHURN = Table(
    "predictions/churn",
    _schema(
        ("customer_id", "int64"),
        ("score", "float64"),
        ("risk_band", "string"),
        ("model_version", "string"),
        ("feature_table_version", "int64"),
    ),
    "Churn score of every customer in the features of ds, with the model and feature versions used.",
)

DRIFT_HISTORY = Table(
    "monitoring/drift_history",
    _schema(
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
    ),
    "One summary row per day ds of the drift report (features and predictions of ds vs the champion's training data).",
)

PERFORMANCE_HISTORY = Table(
    "monitoring/performance_history",
    _schema(
        ("model_version", "string"),
        ("roc_auc", "float64"),
        ("pr_auc", "float64"),
        ("rows", "int64"),
        ("positive_rate", "float64"),
        ("evaluated_on", "string"),
        ("alert", "bool_"),
    ),
    "Realised performance of the model that scored day ds, once its labels matured (evaluated_on = ds + 30).",
)

# Early retrainings triggered by drift, so that the cooldown survives restarts and backfills.
EARLY_RETRAINS = Table(
    "monitoring/early_retrains",
    _schema(
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

ALL_TABLES: tuple[Table, ...] = (
    RAW_EVENTS,
    QUARANTINE_EVENTS,
    CURATED_EVENTS,
    CUSTOMER_STATE,
    FEATURES_CUSTOMER_DAILY,
    PREDICTIONS_CHURN,
    MODEL_DECISIONS,
    MODEL_PROMOTIONS,
    DRIFT_HISTORY,
    PERFORMANCE_HISTORY,
    EARLY_RETRAINS,
)


def by_name(name: str) -> Table:
    for table in ALL_TABLES:
        if table.name == name:
            return table
    raise KeyError(f"unknown table {name!r}; known: {[t.name for t in ALL_TABLES]}")
