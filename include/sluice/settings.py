"""One typed settings object, read from the environment when asked for, never at import.

Every variable is prefixed ``SLUICE_`` (see ``.env.example``). Credentials for the
object store are the standard ``AWS_*`` variables or come from an Airflow
connection at the DAG edge; they are never written into the repository.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

USE_CASE_SPEC = "usecase.yaml"


def _default_home() -> Path:
    return Path(os.environ.get("SLUICE_HOME", os.getcwd())).resolve()


def builtin_use_case_folder() -> Path:
    """``include/usecases``: the folders of the use cases that ship with Sluice (found, not imported)."""
    import importlib.util

    here = Path(__file__).resolve().parents[1] / "usecases"  # include/usecases, next to include/sluice
    if any(here.glob(f"*/{USE_CASE_SPEC}")):
        return here
    found = importlib.util.find_spec("usecases")
    # A namespace package: any folder named usecases on sys.path is a portion of it (e.g.
    # tests/usecases once tests/ is on the path); the built-in ones are where the specs are.
    for location in (found.submodule_search_locations or []) if found is not None else []:
        if any(Path(location).glob(f"*/{USE_CASE_SPEC}")):
            return Path(location)
    return Path(__file__).resolve().parents[1] / "usecases"


def builtin_use_cases() -> list[str]:
    folder = builtin_use_case_folder()
    return sorted(p.parent.name for p in folder.glob(f"*/{USE_CASE_SPEC}")) if folder.is_dir() else []


def use_case_name(ref: str) -> str:
    """The name a use case goes by (lake prefix, model, DAG ids): a built-in name, or its folder's name."""
    path = Path(ref)
    if path.name == USE_CASE_SPEC:
        path = path.parent
    return path.name


class DriftPolicy(BaseSettings):
    """Thresholds of the drift report, read from ``SLUICE_*`` variables when constructed (``Settings.drift``)."""

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


class Timeouts(BaseSettings):
    """How long any network call may wait (``Settings.timeouts``, ``SLUICE_TIMEOUT_*``): nothing waits unbounded.

    The object store's retries are sized to ride out an outage of a minute inside one
    try of a task; Airflow's task retries (``retries``, ``retry_delay``) cover longer ones.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_TIMEOUT_", extra="ignore")

    postgres_connect_s: int = Field(default=10, ge=1, description="PostgreSQL connect_timeout (source and publish).")
    postgres_statement_s: int = Field(
        default=300, ge=1, description="PostgreSQL statement_timeout: longest single statement (source and publish)."
    )
    postgres_lock_s: int = Field(default=60, ge=1, description="PostgreSQL lock_timeout: longest wait for a lock.")
    redis_socket_s: float = Field(default=10.0, gt=0, description="Redis connect and socket timeouts.")
    http_s: float = Field(default=10.0, gt=0, description="HTTP timeout of alert webhooks.")
    object_store_retry_s: int = Field(
        default=120, ge=1, description="Object store: keep retrying a failed request for this long (an S3 outage)."
    )
    object_store_request_s: int = Field(default=60, ge=1, description="Object store: one request's timeout.")
    object_store_connect_s: int = Field(default=5, ge=1, description="Object store: one connection attempt's timeout.")
    task_minutes: int = Field(
        default=120, ge=1, description="Airflow execution_timeout of a task (training and sensors have their own)."
    )


class Upkeep(BaseSettings):
    """What ``lake_maintenance`` keeps (``Settings.upkeep``, ``SLUICE_UPKEEP_*``).

    A version a registered model pins (champion, previous-champion, challenger) is kept
    whatever these say: they bound everything else.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_UPKEEP_", extra="ignore")

    vacuum_retention_hours: float = Field(
        default=168.0, ge=0,
        description="Delete a data file once it has been out of its table this long (time travel reaches this far).",
    )
    log_retention_days: float = Field(
        default=30.0, ge=0,
        description="Delete log entries (commits, checkpoints) older than this, below the oldest version still kept.",
    )
    orphan_age_hours: float = Field(
        default=6.0, ge=0,
        description="Delete a file no commit references (a killed writer's) once it is this old: a live writer's are younger.",
    )
    state_retention_days: int | None = Field(
        default=None, ge=1,
        description="Days of state/<entity>_cumulative kept; default: the use case's longest feature window + its "
        "label horizon + state_retention_margin_days. Never fewer than the window + horizon + 1.",
    )
    state_retention_margin_days: int = Field(
        default=30, ge=1, description="Days kept beyond the longest window + horizon: how far back a day may be re-run."
    )

    @model_validator(mode="after")
    def _vacuum_within_log(self) -> Upkeep:
        if self.vacuum_retention_hours > self.log_retention_days * 24:
            raise ValueError(
                f"vacuum_retention_hours ({self.vacuum_retention_hours}) must not exceed log_retention_days "
                f"({self.log_retention_days}) x 24: the log must reach every version whose files are kept"
            )
        return self


class Settings(BaseSettings):
    """Runtime configuration. Construct with :func:`load_settings` at run time."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    # --- storage -------------------------------------------------------------
    lake_uri: str = Field(
        default_factory=lambda: (_default_home() / ".lake").as_uri(),
        description="Root of the lake: file:///abs/path or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible server (MinIO); unset for AWS."
    )
    s3_region: str = "us-east-1"
    mlflow_tracking_uri: str = Field(
        default_factory=lambda: f"sqlite:///{_default_home() / '.mlflow' / 'mlflow.db'}"
    )
    mlflow_artifact_uri: str | None = Field(
        default=None, description="Where MLflow keeps model files; default: <lake>/artifacts/mlflow (same store)."
    )
    model_name: str | None = Field(default=None, description="Registered model; default sluice-<use case>.")
    experiment_name: str | None = Field(default=None, description="MLflow experiment; default sluice-<use case>.")

    # --- use cases -----------------------------------------------------------
    use_cases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Use cases of this deployment, comma-separated built-in names or folders; "
        "empty: every built-in use case.",
    )
    use_case: str = Field(
        default="", description="The use case this process works on (a name or folder); default: the first one."
    )

    # --- source --------------------------------------------------------------
    source: Literal["simulator", "postgres", "files"] = "simulator"
    source_postgres_dsn: str | None = Field(default=None, description="libpq DSN of the source database.")
    source_postgres_table: str = "public.events"
    landing_uri: str | None = Field(
        default=None, description="Prefix where files are dropped as ds=YYYY-MM-DD/*.{csv,jsonl,parquet}."
    )

    # --- simulator -----------------------------------------------------------
    sim_customers: int = Field(default=20_000, ge=1, le=5_000_000)
    sim_seed: int = 7
    sim_epoch: dt.date = dt.date(2026, 1, 1)
    sim_defect_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    sim_defect_days: Annotated[list[dt.date], NoDecode] = Field(
        default_factory=list, description="Days the defect rate applies to; empty means every day."
    )
    sim_drift: str = Field(
        default="",
        description="Comma-separated scenario@YYYY-MM-DD, e.g. 'spend_shift@2026-03-01,null_device@2026-03-10'.",
    )

    # --- training ------------------------------------------------------------
    # --- monitoring ------------------------------------------------------------
    drift: DriftPolicy = Field(default_factory=DriftPolicy, description="Thresholds of drift_report (SLUICE_DRIFT_*).")

    # --- bounded waits -----------------------------------------------------------
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Timeouts and retries (SLUICE_TIMEOUT_*).")

    # --- lake upkeep -----------------------------------------------------------------
    upkeep: Upkeep = Field(default_factory=Upkeep, description="What lake_maintenance keeps (SLUICE_UPKEEP_*).")

    # --- overrides of the use case's spec (unset: the spec decides) ------------
    train_warmup_days: int | None = Field(
        default=None, ge=0, description="Override: snapshots of the lake's first N days are never trained on."
    )
    train_max_days: int | None = Field(default=None, ge=7, description="Override: train on at most N snapshot days.")
    contract_max_invalid_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Override: above this invalid share a day fails."
    )

    @field_validator("use_cases", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _default_use_case(self) -> Settings:
        if not self.use_cases:
            self.use_cases = builtin_use_cases()
        if not self.use_case and self.use_cases:
            self.use_case = self.use_cases[0]
        return self

    @property
    def use_case_name(self) -> str:
        return use_case_name(self.use_case) if self.use_case else ""

    def for_use_case(self, ref: str) -> Settings:
        """The same deployment, working on use case ``ref`` (its own lake prefix, model, targets)."""
        return self.model_copy(update={"use_case": ref})

    @property
    def lake_root(self) -> str:
        """The use case's own part of the lake: ``<lake_uri>/<use case>``."""
        return f"{self.lake_uri}/{self.use_case_name}" if self.use_case_name else self.lake_uri

    @property
    def model(self) -> str:
        return self.model_name or f"sluice-{self.use_case_name}"

    @property
    def experiment(self) -> str:
        return self.experiment_name or f"sluice-{self.use_case_name}"

    @field_validator("sim_defect_days", mode="before")
    @classmethod
    def _split_days(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("lake_uri", "landing_uri")
    @classmethod
    def _normalise_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if "://" not in value:
            value = Path(value).resolve().as_uri()
        return value

    @property
    def artifacts(self) -> str:
        return self.mlflow_artifact_uri or f"{self.lake_uri}/artifacts/mlflow"

    @property
    def landing(self) -> str:
        return self.landing_uri or f"{self.lake_root}/landing/events"

    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs / object_store. Empty on the local filesystem.

        Retries ride out an outage of ``timeouts.object_store_retry_s`` inside one call:
        object_store's defaults (10 retries from 100 ms) gave up after 2-3 s of refused
        connections. It stops at ``max_retries`` or ``retry_timeout``, whichever comes
        first; every backoff is at least ``init_backoff``, so the count set here can never
        come first and the time bound decides. ``max_backoff`` bounds how late the end of
        an outage is noticed. (Durations in humantime form: delta-rs refuses bare numbers.)
        """
        if not self.lake_uri.startswith("s3://"):
            return {}
        t = self.timeouts
        init_backoff_ms = 100
        opts = {
            "AWS_REGION": self.s3_region,
            # Atomic commits on S3 without a lock table: put-if-absent by ETag.
            "AWS_CONDITIONAL_PUT": "etag",
            # Read by delta-rs into object_store's RetryConfig ...
            "max_retries": str(t.object_store_retry_s * 1000 // init_backoff_ms),
            "retry_timeout": f"{t.object_store_retry_s}s",
            "backoff_config.init_backoff": f"{init_backoff_ms}ms",
            "backoff_config.max_backoff": "5s",
            "backoff_config.base": "2",
            # ... and by object_store's HTTP client (ClientConfigKey).
            "timeout": f"{t.object_store_request_s}s",
            "connect_timeout": f"{t.object_store_connect_s}s",
        }
        if self.s3_endpoint_url:
            opts["AWS_ENDPOINT_URL"] = self.s3_endpoint_url
            if self.s3_endpoint_url.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(key):
                opts[key] = os.environ[key]
        return opts


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment now (overrides win)."""
    return Settings(**overrides)  # type: ignore[arg-type]
