"""Fit the churn model: pure functions from a feature frame to a fitted model.

The split is by time (train, validation, holdout = the most recent matured
snapshot days), never random. LightGBM runs with deterministic settings (fixed
seed, one thread, column-wise histograms), so the same data and parameters give
the same model, and no OpenMP thread pool is left behind in a forked worker.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sluice.core.features import CATEGORICAL, FEATURE_COLUMNS, LABEL_HORIZON_DAYS, WINDOWS
from sluice.edges.sources.simulator import CHANNELS, DEVICES, PLANS, REGIONS
from sluice.tables import PARTITION_COLUMN

LABEL = "label_churn_30d"
# Fixed category sets: the integer codes LightGBM sees are the same at training and scoring.
CATEGORIES: dict[str, list[str]] = {
    "plan": list(PLANS),
    "region": list(REGIONS),
    "channel": list(CHANNELS),
    "device": list(DEVICES),
}

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 42,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


class NotEnoughData(ValueError):
    """Too few matured snapshot days to train and judge a model (yet)."""


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame

    def windows(self) -> dict[str, list[str]]:
        return {
            name: [str(frame[PARTITION_COLUMN].min()), str(frame[PARTITION_COLUMN].max())]
            for name, frame in (("train", self.train), ("validation", self.validation), ("holdout", self.holdout))
        }


def matured(features: pd.DataFrame, as_of: dt.date | None = None) -> pd.DataFrame:
    """Snapshot rows whose label has matured (known), optionally only those known by ``as_of``."""
    out = features[features[LABEL].notna()]
    if as_of is not None:
        cutoff = (as_of - dt.timedelta(days=LABEL_HORIZON_DAYS)).isoformat()
        out = out[out[PARTITION_COLUMN] <= cutoff]
    return out


def training_days(
    days: list[str], as_of: dt.date, *, warmup_days: int = max(WINDOWS), max_days: int = 60
) -> list[str]:
    """The snapshot days a model trained on ``as_of`` may learn from.

    Only matured labels (snapshot <= as_of - 30 days), never a day of the lake's first
    ``warmup_days`` (its 90-day windows still grow from zero: a model trained there
    learns a world where every customer is new, and every later day "drifts" from
    it), and at most the ``max_days`` most recent such days.
    """
    if not days:
        return []
    ordered = sorted(days)
    first = dt.date.fromisoformat(ordered[0])
    warm_from = (first + dt.timedelta(days=warmup_days)).isoformat()
    cutoff = (as_of - dt.timedelta(days=LABEL_HORIZON_DAYS)).isoformat()
    usable = [d for d in ordered if warm_from <= d <= cutoff]
    return usable[-max_days:]


def time_split(frame: pd.DataFrame, holdout_days: int = 3, validation_days: int = 3) -> Split:
    """Split matured snapshots by day: the most recent days are the holdout, then validation."""
    if holdout_days < 1 or validation_days < 1:
        raise ValueError("holdout_days and validation_days must both be at least 1")
    days = sorted(frame[PARTITION_COLUMN].unique())
    if len(days) < holdout_days + validation_days + 1:
        raise NotEnoughData(
            f"need at least {holdout_days + validation_days + 1} matured snapshot days, have {len(days)}"
        )
    holdout = set(days[-holdout_days:])
    validation = set(days[-(holdout_days + validation_days) : -holdout_days])
    ds = frame[PARTITION_COLUMN]
    return Split(
        train=frame[~ds.isin(holdout | validation)],
        validation=frame[ds.isin(validation)],
        holdout=frame[ds.isin(holdout)],
    )


def model_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """The model's input: feature columns in a fixed order, categoricals with fixed categories."""
    x = features[FEATURE_COLUMNS].copy()
    for col in CATEGORICAL:
        x[col] = pd.Categorical(x[col], categories=CATEGORIES[col])
    return x


@dataclass
class FittedModel:
    booster: Any  # lightgbm.Booster
    params: dict[str, Any]
    best_iteration: int
    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_COLUMNS))

    @classmethod
    def from_booster(cls, booster: Any) -> FittedModel:
        """A model loaded from the registry (LightGBM keeps its best iteration in the file)."""
        # A loaded booster reports best_iteration -1: its file holds the trees to use.
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        return cls(booster=booster, params=dict(getattr(booster, "params", {}) or {}), best_iteration=best)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.predict(model_matrix(features), num_iteration=self.best_iteration))

    def feature_importance(self) -> pd.Series:
        gain = self.booster.feature_importance(importance_type="gain", iteration=self.best_iteration)
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


def fit(split: Split, params: dict[str, Any] | None = None, num_boost_round: int = 400) -> FittedModel:
    """Train LightGBM with early stopping on the validation days."""
    import lightgbm as lgb

    params = {**DEFAULT_PARAMS, **(params or {})}
    train = lgb.Dataset(model_matrix(split.train), label=split.train[LABEL].astype(int), free_raw_data=False)
    valid = lgb.Dataset(model_matrix(split.validation), label=split.validation[LABEL].astype(int), reference=train)
    booster = lgb.train(
        params,
        train,
        num_boost_round=num_boost_round,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    return FittedModel(booster=booster, params=params, best_iteration=int(booster.best_iteration or num_boost_round))
