"""The thresholds and sample sizes of the monitoring, read from ``SLUICE_*`` variables; its error."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
