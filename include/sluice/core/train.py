"""Fit a use case's model: pure functions from a feature frame to a fitted model.

The split is by time (train, validation, holdout = the most recent matured
snapshot days, each a label horizon apart: ``SplitPlan``), never random. LightGBM runs with deterministic settings (fixed
seed, one thread, column-wise histograms), so the same data and parameters give
the same model, and no OpenMP thread pool is left behind in a forked worker.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sluice.core.usecase import UseCase
from sluice.tables import PARTITION_COLUMN

# What every LightGBM model of the platform runs with; a use case's ``model.params`` add to it.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
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


def matured(features: pd.DataFrame, uc: UseCase, as_of: dt.date | None = None) -> pd.DataFrame:
    """Snapshot rows whose label has matured (known), optionally only those known by ``as_of``."""
    out = features[features[uc.label].notna()]
    if as_of is not None:
        cutoff = (as_of - dt.timedelta(days=uc.horizon)).isoformat()
        out = out[out[PARTITION_COLUMN] <= cutoff]
    return out


def training_days(
    days: list[str], as_of: dt.date, *, horizon: int, warmup_days: int, max_days: int | None = None
) -> list[str]:
    """The snapshot days a model trained on ``as_of`` may learn from (and be judged on).

    Only matured labels (snapshot <= as_of - horizon), never a day of the lake's first
    ``warmup_days`` (its longest windows still grow from zero: a model trained there
    learns a world where every entity is new, and every later day "drifts" from
    it), and at most the ``max_days`` most recent such days.
    """
    if not days:
        return []
    ordered = sorted(days)
    first = dt.date.fromisoformat(ordered[0])
    warm_from = (first + dt.timedelta(days=warmup_days)).isoformat()
    cutoff = (as_of - dt.timedelta(days=horizon)).isoformat()
    usable = [d for d in ordered if warm_from <= d <= cutoff]
    return usable[-max_days:] if max_days else usable


@dataclass(frozen=True)
class SplitPlan:
    """How matured snapshot days are cut by time: train, a purge, validation, a purge, holdout.

    The label of a snapshot on day d looks at (d, d + horizon]. Train, validation and holdout
    days are therefore at least ``purge_days`` (>= the horizon) apart: no training
    snapshot's label window reaches a validation or holdout day, so neither early stopping
    nor the gate sees the outcome of a period the model learnt from (purged time-series
    validation, as in Lopez de Prado's "purging"). The holdout is the most recent matured
    days; the train window takes at most ``max_train_days`` days before the first purge.
    """

    holdout_days: int = 7
    validation_days: int = 7
    purge_days: int = 30
    min_train_days: int = 14
    max_train_days: int = 60

    def __post_init__(self) -> None:
        if self.holdout_days < 1 or self.validation_days < 1 or self.min_train_days < 1:
            raise ValueError("holdout_days, validation_days and min_train_days must all be at least 1")
        if self.purge_days < 0 or self.max_train_days < self.min_train_days:
            raise ValueError("purge_days must be >= 0 and max_train_days >= min_train_days")

    @classmethod
    def of(cls, uc: UseCase, max_train_days: int | None = None) -> SplitPlan:
        """The use case's plan: its training settings, purged by (at least) its label horizon."""
        t = uc.spec.training
        purge = max(uc.horizon, t.purge_days or 0)
        return cls(holdout_days=t.holdout_days, validation_days=t.validation_days, purge_days=purge,
                   min_train_days=t.min_train_days, max_train_days=max_train_days or t.max_days)

    @property
    def min_span(self) -> int:
        """The fewest consecutive matured days a split needs."""
        return self.min_train_days + self.validation_days + self.holdout_days + 2 * self.purge_days

    @property
    def max_span(self) -> int:
        """The most recent matured days a split may use: older ones are never read."""
        return self.max_train_days + self.validation_days + self.holdout_days + 2 * self.purge_days

    def cut(self, days: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(train, validation, holdout) days of ``days`` (ISO dates); raises NotEnoughData."""
        ordered = sorted(set(days))

        def before(limit: list[str], pool: list[str]) -> list[str]:
            first = dt.date.fromisoformat(limit[0])
            return [d for d in pool if dt.date.fromisoformat(d) + dt.timedelta(days=self.purge_days) < first]

        holdout = ordered[-self.holdout_days:]
        validation = before(holdout, ordered)[-self.validation_days:] if holdout else []
        train = before(validation, ordered)[-self.max_train_days:] if validation else []
        if len(holdout) < self.holdout_days or len(validation) < self.validation_days or (
            len(train) < self.min_train_days
        ):
            have = f"{len(ordered)} ({ordered[0]} .. {ordered[-1]})" if ordered else "0"
            raise NotEnoughData(
                f"need {self.min_span} consecutive matured snapshot days ({self.min_train_days} train, "
                f"{self.validation_days} validation, {self.holdout_days} holdout, two purges of "
                f"{self.purge_days} days between them), have {have}"
            )
        return train, validation, holdout


def fingerprint(frame: pd.DataFrame, uc: UseCase, as_of: dt.date) -> str:
    """Pure: what makes a retraining the same one: the training rows' content (every column, in
    the frame's order), the as-of day, and the use case's model and training settings.

    Not the feature table's Delta version: an ETL re-run that rewrites a partition with the
    same rows makes a new version but the same data, and must not make another model.
    """
    import hashlib

    digest = hashlib.sha256()
    digest.update(f"{uc.name}|{as_of.isoformat()}|".encode())
    digest.update(uc.spec.model.model_dump_json().encode())
    digest.update(uc.spec.training.model_dump_json().encode())
    columns = sorted(frame.columns)
    digest.update("|".join(columns).encode())
    rows = pd.util.hash_pandas_object(frame[columns], index=False)
    digest.update(rows.to_numpy().tobytes())
    return digest.hexdigest()


def time_split(frame: pd.DataFrame, plan: SplitPlan) -> Split:
    """Split matured snapshots by day as ``plan`` says: the most recent days are the holdout."""
    train, validation, holdout = plan.cut([str(d) for d in frame[PARTITION_COLUMN].unique()])
    ds = frame[PARTITION_COLUMN]
    return Split(train=frame[ds.isin(train)], validation=frame[ds.isin(validation)], holdout=frame[ds.isin(holdout)])


def categories(uc: UseCase, frame: pd.DataFrame | None = None) -> dict[str, list[str]]:
    """The category set of every category feature: the spec's vocabulary, else learnt from ``frame``.

    Fixed at training time and kept in the model (LightGBM's ``pandas_categorical``), so the
    integer codes it sees are the same at training and scoring.
    """
    out: dict[str, list[str]] = {}
    for col in uc.categorical:
        vocabulary = uc.vocabulary(col)
        if vocabulary is not None:
            out[col] = list(vocabulary)
        elif frame is not None:
            out[col] = sorted(str(v) for v in frame[col].dropna().unique())
        else:
            raise ValueError(f"{uc.name}: {col} has no known values in the spec and no frame to learn them from")
    return out


def model_matrix(features: pd.DataFrame, uc: UseCase, cats: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """The model's input: feature columns in a fixed order, categoricals with fixed categories."""
    cats = categories(uc, features) if cats is None else cats
    x = features[uc.feature_columns].copy()
    for col in uc.categorical:
        x[col] = pd.Categorical(x[col], categories=cats[col])
    return x


@dataclass
class FittedModel:
    booster: Any  # lightgbm.Booster
    params: dict[str, Any]
    best_iteration: int
    use_case: UseCase
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return list(self.use_case.feature_columns)

    @classmethod
    def from_booster(cls, booster: Any, uc: UseCase) -> FittedModel:
        """A model loaded from the registry (LightGBM keeps its best iteration and categories in the file)."""
        # A loaded booster reports best_iteration -1: its file holds the trees to use.
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        trained = getattr(booster, "pandas_categorical", None) or []
        if len(trained) != len(uc.categorical):
            raise ValueError(
                f"the model knows {len(trained)} categorical features, {uc.name} has {len(uc.categorical)}"
            )
        cats = {col: list(values) for col, values in zip(uc.categorical, trained, strict=True)}
        return cls(booster=booster, params=dict(getattr(booster, "params", {}) or {}), best_iteration=best,
                   use_case=uc, categories=cats)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        x = model_matrix(features, self.use_case, self.categories)
        return np.asarray(self.booster.predict(x, num_iteration=self.best_iteration))

    def feature_importance(self) -> pd.Series:
        gain = self.booster.feature_importance(importance_type="gain", iteration=self.best_iteration)
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


def fit(split: Split, uc: UseCase, params: dict[str, Any] | None = None) -> FittedModel:
    """Train the use case's model (LightGBM) with early stopping on the validation days."""
    import lightgbm as lgb

    spec = uc.spec.model
    if spec.flavor != "lightgbm":
        raise ValueError(f"{uc.name}: model flavor {spec.flavor!r} is not supported (lightgbm)")
    params = {**DEFAULT_PARAMS, **spec.params, **(params or {})}
    cats = categories(uc, split.train)
    label = uc.label
    train = lgb.Dataset(model_matrix(split.train, uc, cats), label=split.train[label].astype(int), free_raw_data=False)
    valid = lgb.Dataset(
        model_matrix(split.validation, uc, cats), label=split.validation[label].astype(int), reference=train
    )
    booster = lgb.train(
        params,
        train,
        num_boost_round=spec.num_boost_round,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(spec.early_stopping_rounds, verbose=False)],
    )
    return FittedModel(
        booster=booster, params=params, best_iteration=int(booster.best_iteration or spec.num_boost_round),
        use_case=uc, categories=cats,
    )
