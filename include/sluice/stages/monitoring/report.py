"""The Evidently adapter: run the report on two samples, and read its verdicts back.

:func:`run_report` compares the distribution of every usable column (Evidently's
default test per column type), the prediction, and each column's missing share;
:func:`drift_summary` (pure) turns the report's tests into the day's verdicts.

A column whose distributions cannot be compared is left out of the distribution tests
(:func:`unusable_columns` says which, and why): all null in either sample (Evidently
refuses it with ``ValueError: An empty column ... was provided``), or one and the
same value in both (nothing can have moved). Its missing-share test still runs, so a
column that turns all null on a day still drifts, as one that turns mostly null does;
a column whose missing share held is left out of the drift share altogether.

Evidently is imported only to run a report.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from sluice.stages.monitoring.policy import DriftError

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

PREDICTION = "score"  # the predictions table's score column: the prediction whose drift is reported

ALL_NULL = "all null"  # in both samples
ALL_NULL_CURRENT = "all null in current"
ALL_NULL_REFERENCE = "all null in reference"
CONSTANT = "constant"  # one and the same value in both samples


def unusable_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Pure: the columns whose distributions cannot be compared, each with the reason, in ``columns`` order."""
    out: dict[str, str] = {}
    for col in columns:
        ref, cur = reference[col].dropna(), current[col].dropna()
        if ref.empty or cur.empty:
            out[col] = ALL_NULL if ref.empty and cur.empty else ALL_NULL_CURRENT if cur.empty else ALL_NULL_REFERENCE
            continue
        ref_values, cur_values = ref.unique(), cur.unique()
        if len(ref_values) == 1 and len(cur_values) == 1 and ref_values[0] == cur_values[0]:
            out[col] = CONSTANT
    return out


@dataclass(frozen=True)
class DriftRun:
    """An Evidently run, and the columns it left out of the distribution tests (with why)."""

    snapshot: Snapshot
    skipped: dict[str, str]
    prediction: str | None = PREDICTION

    def dict(self) -> dict[str, Any]:
        """Evidently's report as a dict (what :func:`drift_summary` reads)."""
        return self.snapshot.dict()  # type: ignore[no-any-return]

    def summary(self) -> DriftSummary:
        return drift_summary(self.dict(), self.skipped, prediction=self.prediction)


def run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: Sequence[str],
    categorical: Collection[str] = (),
    prediction: str | None = PREDICTION,
    drift_share: float = 0.3,
    missing_tolerance: float = 0.1,
    metadata: Mapping[str, Any] | None = None,
) -> DriftRun:
    """Evidently data drift of ``columns``, prediction drift, missing values; tests carry the verdicts.

    ``categorical`` names the category columns among ``columns`` (the rest are numbers).
    Evidently drops missing values before a drift test, so a column that turns mostly
    null keeps its distribution; the missing-share test on each column (reference share
    +- ``missing_tolerance``) is what catches it. Columns :func:`unusable_columns` names
    get no distribution test (see the module's docstring).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DatasetMissingValueCount, MissingValueCount, ValueDrift
    from evidently.presets import DataDriftPreset
    from evidently.tests import gte, lte

    columns = list(columns)
    keep = columns + ([prediction] if prediction else [])
    skipped = unusable_columns(reference, current, keep)
    compared = [c for c in columns if c not in skipped]
    definition = DataDefinition(
        numerical_columns=[c for c in keep if c not in categorical],
        categorical_columns=[c for c in columns if c in categorical],
    )
    ref_missing = reference[columns].isna().mean()
    items: list[Any] = [DataDriftPreset(columns=compared, drift_share=drift_share)] if compared else []
    if prediction and prediction not in skipped:
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
    snapshot = Report(items, include_tests=True).run(
        Dataset.from_pandas(current[keep].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[keep].reset_index(drop=True), data_definition=definition),
        metadata=dict(metadata or {}),
    )
    return DriftRun(snapshot, skipped, prediction)


@dataclass(frozen=True)
class DriftSummary:
    share: float  # drifted feature columns / judged feature columns
    drifted_columns: list[str]  # in report order; by distribution or by missing share
    prediction_drifted: bool
    n_columns: int  # the judged feature columns: what the share is a share of
    scores: dict[str, float] = field(default_factory=dict)  # drift score of every compared column (method-specific)
    missing_drifted: list[str] = field(default_factory=list)
    skipped_columns: dict[str, str] = field(default_factory=dict)  # no distribution test: column -> why


def drift_summary(
    report: Mapping[str, Any], skipped: Mapping[str, str] | None = None, prediction: str | None = PREDICTION
) -> DriftSummary:
    """Pure: the verdicts of an Evidently report dict (``snapshot.dict()``).

    A feature column drifts when its value-drift test fails or its missing-share test
    fails; the prediction column is reported on its own. The verdicts are Evidently's
    own (each test compares the column's score with its method's threshold).

    ``skipped`` are the columns the report did not compare (:attr:`DriftRun.skipped`):
    one whose missing-share test failed is judged (and drifted) by it alone, the others
    are left out of the share and of ``n_columns``.
    """
    skipped = dict(skipped or {})
    value_drift: dict[str, bool] = {}
    missing: list[str] = []
    order: list[str] = []  # every column, as the report's tests first name it
    tests = report.get("tests") or []
    for test in tests:
        params = (test.get("metric_config") or {}).get("params") or {}
        kind = str(params.get("type", "")).rsplit(":", 1)[-1]
        column = params.get("column")
        failed = test.get("status") == "FAIL"
        if not column:
            continue
        if column not in order:
            order.append(column)
        if kind == "ValueDrift":
            value_drift[column] = value_drift.get(column, False) or failed
        elif kind == "MissingValueCount" and failed and column not in missing and column != prediction:
            missing.append(column)
    compared = [c for c in value_drift if c != prediction]
    if not tests or not (compared or set(skipped) - {prediction}):
        raise DriftError("the report has no value-drift test: run it with include_tests=True")
    judged = [c for c in order if c != prediction and (c in compared or (c in skipped and c in missing))]
    drifted = [c for c in judged if value_drift.get(c, False) or c in missing]
    scores = {}
    for metric in report.get("metrics") or []:
        config = metric.get("config") or {}
        if str(config.get("type", "")).endswith(":ValueDrift") and isinstance(metric.get("value"), int | float):
            scores[config["column"]] = float(metric["value"])
    return DriftSummary(
        share=len(drifted) / len(judged) if judged else 0.0,
        drifted_columns=drifted,
        prediction_drifted=bool(prediction and value_drift.get(prediction, False)),
        n_columns=len(judged),
        scores=scores,
        missing_drifted=[c for c in missing if c in judged],
        skipped_columns=skipped,
    )
