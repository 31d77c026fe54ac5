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

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.environ.get("SLUICE_HOME", os.getcwd())).resolve()


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
    model_name: str = "sluice-churn"
    experiment_name: str = "sluice-churn"

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
    train_warmup_days: int = Field(
        default=90,
        ge=0,
        description="Snapshots of the lake's first N days are never trained on: their 90-day windows are not full.",
    )
    train_max_days: int = Field(
        default=60, ge=7, description="Train on at most the last N matured snapshot days (a rolling window)."
    )

    # --- contract ------------------------------------------------------------
    contract_max_invalid_share: float = Field(default=0.05, ge=0.0, le=1.0)

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
        return self.landing_uri or f"{self.lake_uri}/landing/events"

    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs / object_store. Empty on the local filesystem."""
        if not self.lake_uri.startswith("s3://"):
            return {}
        opts = {
            "AWS_REGION": self.s3_region,
            # Atomic commits on S3 without a lock table: put-if-absent by ETag.
            "AWS_CONDITIONAL_PUT": "etag",
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
