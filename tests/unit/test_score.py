"""Scoring: risk bands, the predictions table, the Arrow path's scores, and which model scores which day."""

from __future__ import annotations

import datetime as dt

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.lineage import RunContext
from sluice.core.train import DEFAULT_PARAMS, FittedModel, categories, model_matrix
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.stages import promotions
from sluice.stages import score as S
from sluice.stages.score import NoChampion, resolve_model

DS = "2026-02-10"
UC = load_use_case("churn")
CATEGORICAL, FEATURE_COLUMNS, CATEGORIES = UC.categorical, UC.feature_columns, categories(UC)
FEATURES_CUSTOMER_DAILY, PREDICTIONS = UC.tables.features, UC.tables.predictions


@pytest.mark.parametrize(
    ("score", "band"), [(0.0, "low"), (0.1999, "low"), (0.2, "medium"), (0.4999, "medium"), (0.5, "high"), (1.0, "high")]
)
def test_risk_band_boundaries(score: float, band: str) -> None:
    assert S.predictions_table(UC, pa.chunked_array([[1]]), np.array([score]), "1", 1, DS)["risk_band"].to_pylist() == [band]


def test_a_nan_score_is_low() -> None:
    scores = np.array([np.nan, 0.7])
    assert S.predictions_table(UC, pa.chunked_array([[1, 2]]), scores, "1", 1, DS)["risk_band"].to_pylist() == ["low", "high"]


def test_predictions_carry_model_and_feature_versions() -> None:
    table = S.predictions_table(UC, pa.chunked_array([[7, 8, 9]]), np.linspace(0, 1, 3), "5", 42, "2026-02-10")
    frame = table.to_pandas()
    assert frame["customer_id"].tolist() == [7, 8, 9]
    assert frame["risk_band"].tolist() == ["low", "high", "high"]
    assert set(frame["model_version"]) == {"5"} and set(frame["feature_table_version"]) == {42}
    assert set(frame["ds"]) == {"2026-02-10"}


def test_a_past_day_is_scored_with_the_champion_of_that_day(settings) -> None:
    lake = Lake(settings)
    ctx = RunContext("test", "t")
    promotions.record_promotion(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=ctx)
    promotions.record_promotion(lake, "2026-02-15", "3", "1", forced=False, reason="better", ctx=ctx)
    assert resolve_model(settings, lake, dt.date(2026, 2, 8), False) == "1"
    assert resolve_model(settings, lake, dt.date(2026, 2, 14), False) == "1"
    assert resolve_model(settings, lake, dt.date(2026, 2, 15), False) == "3"
    assert resolve_model(settings, lake, dt.date(2026, 3, 1), False) == "3"
    with pytest.raises(NoChampion, match="2026-02-07"):
        resolve_model(settings, lake, dt.date(2026, 2, 7), False)


def test_a_rerun_gate_replaces_its_row_and_manual_actions_append(settings) -> None:
    lake = Lake(settings)
    gate = RunContext("weekly_retrain", "scheduled__2026-02-09")
    promote = promotions.record_promotion
    promote(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=gate, decision_ds="2026-02-08")
    promote(lake, "2026-02-08", "1", None, forced=False, reason="floors", ctx=gate, decision_ds="2026-02-08")  # re-run
    promote(lake, "2026-02-08", "2", "1", forced=True, reason="manual: hotfix", ctx=RunContext("cli", "a"))
    promote(lake, "2026-02-08", "1", "2", forced=True, reason="rollback: hotfix broke scoring", ctx=RunContext("cli", "b"))
    history = promotions.history(lake)
    assert [(r["model_version"], r["reason"]) for r in history] == [
        ("1", "floors"),
        ("2", "manual: hotfix"),
        ("1", "rollback: hotfix broke scoring"),
    ]
    assert promotions.champion_on(lake, dt.date(2026, 2, 8)) == "1"


# -- the Arrow path gives the scores of the pandas path, bit for bit ------------------------
def features_table(rows: int = 400, seed: int = 0) -> pa.Table:
    """Features of day DS with nulls in numbers and categories, and a category no model knows."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"customer_id": pa.array(np.arange(rows, dtype=np.int64) + 1000)}
    for field in FEATURES_CUSTOMER_DAILY.schema:
        if field.name in CATEGORICAL:
            values = [*CATEGORIES[field.name], "unknown", None]
            columns[field.name] = pa.array([values[i] for i in rng.integers(0, len(values), rows)], field.type)
        elif field.name in FEATURE_COLUMNS:
            numbers = rng.gamma(2.0, 10.0, rows)
            mask = rng.random(rows) < 0.05
            columns[field.name] = pa.array(numbers if pa.types.is_floating(field.type) else numbers.astype(np.int64),
                                           field.type, mask=mask)
    columns[UC.label] = pa.nulls(rows, pa.int8())
    columns["ds"] = pa.array([DS] * rows, pa.string())
    return pa.table(columns, schema=FEATURES_CUSTOMER_DAILY.schema)


@pytest.fixture(scope="module")
def tiny_model() -> FittedModel:
    frame = features_table(seed=1).to_pandas()
    label = (frame["days_since_last_event"].fillna(0) + 5 * (frame["plan"] == "basic") > 22).astype(int)
    # Churn's parameters (the platform's defaults, the spec's model.params) on a smaller tree.
    params = {**DEFAULT_PARAMS, **UC.spec.model.params, "min_child_samples": 5, "num_leaves": 7}
    booster = lgb.train(params, lgb.Dataset(model_matrix(frame, UC, CATEGORIES), label=label), num_boost_round=20)
    return FittedModel(booster=booster, params=params, best_iteration=20, use_case=UC, categories=CATEGORIES)


@pytest.mark.parametrize("reloaded", [False, True], ids=["trained", "as-loaded-from-the-registry"])
def test_arrow_scores_are_bit_identical_to_the_pandas_path(tiny_model: FittedModel, reloaded: bool) -> None:
    model = tiny_model
    if reloaded:  # what the registry hands back: the model file, categories included
        model = FittedModel.from_booster(lgb.Booster(model_str=tiny_model.booster.model_to_string()), UC)
    features = features_table(seed=2)
    expected = model.predict(features.to_pandas())
    got = S.model_scores(model, features.select(["customer_id", *FEATURE_COLUMNS]))
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert len(np.unique(got)) > 10  # the trees split: the test compares real predictions


def test_feature_matrix_codes_categories_and_nulls_as_lightgbm_does() -> None:
    features = features_table(rows=3).slice(0, 3)
    features = features.set_column(features.schema.get_field_index("plan"), "plan",
                                   pa.array(["premium", "unknown", None], pa.string()))
    x = S.feature_matrix(features, UC, CATEGORIES)
    assert x.shape == (3, len(FEATURE_COLUMNS)) and x.dtype == np.float64 and x.flags["F_CONTIGUOUS"]
    plan = x[:, FEATURE_COLUMNS.index("plan")]
    assert plan[0] == CATEGORIES["plan"].index("premium") and np.isnan(plan[1:]).all()


def test_a_model_with_other_categorical_features_is_refused(tiny_model: FittedModel) -> None:
    booster = lgb.Booster(model_str=tiny_model.booster.model_to_string())
    booster.pandas_categorical = booster.pandas_categorical[:2]
    with pytest.raises(ValueError, match="knows 2 categorical features, churn has 4"):
        S.model_scores(FittedModel.from_booster(booster, UC), features_table(rows=5))


def test_predictions_table_has_the_table_schema_in_one_batch() -> None:
    ids = pa.chunked_array([[7], [8, 9]])
    table = S.predictions_table(UC, ids, np.array([0.1, 0.3, 0.9]), "5", 42, DS)
    assert table.schema == PREDICTIONS.schema
    assert all(column.num_chunks == 1 for column in table.columns)  # delta-rs may reorder batches
    assert table.to_pydict() == {
        "customer_id": [7, 8, 9],
        "score": [0.1, 0.3, 0.9],
        "risk_band": ["low", "medium", "high"],
        "model_version": ["5"] * 3,
        "feature_table_version": [42] * 3,
        "ds": [DS] * 3,
    }


def test_score_day_writes_what_the_pandas_path_would(settings, tiny_model: FittedModel, monkeypatch) -> None:
    lake, ctx = Lake(settings), RunContext("batch_score", "manual__t")
    features = features_table(seed=3)
    lake.write_partition(FEATURES_CUSTOMER_DAILY, DS, features, ctx.lineage(DS, {}))
    promotions.record_promotion(lake, DS, "4", None, forced=False, reason="floors", ctx=ctx)
    model_file = tiny_model.booster.model_to_string()

    class Registry:
        def __init__(self, _settings) -> None: ...

        def load_booster(self, version: str) -> lgb.Booster:
            assert version == "4"
            return lgb.Booster(model_str=model_file)

    monkeypatch.setattr(S, "Registry", Registry)
    result = S.score_day(settings, dt.date.fromisoformat(DS), ctx)

    feature_version = lake.version(FEATURES_CUSTOMER_DAILY)
    # The oracle: the pandas path (FittedModel.predict on a frame), bands by their bounds.
    frame = features.to_pandas()
    scores = tiny_model.predict(frame)
    expected = pd.DataFrame({
        "customer_id": frame["customer_id"], "score": scores,
        "risk_band": np.select([scores >= 0.5, scores >= 0.2], ["high", "medium"], "low"),
        "model_version": "4", "feature_table_version": feature_version, "ds": frame["ds"],
    })
    written = lake.read_partition(PREDICTIONS, DS).to_pandas()
    pd.testing.assert_frame_equal(written, expected[PREDICTIONS.columns], check_exact=True)
    lineage = lake.lineage(PREDICTIONS, result["predictions_version"])
    assert lineage is not None and lineage.inputs == {FEATURES_CUSTOMER_DAILY.name: feature_version}
    assert lineage.extra == {"model_version": "4", "rows": 400}
    counts = expected["risk_band"].value_counts()
    assert result["risk_bands"] == {k: int(v) for k, v in counts.items()}
    assert list(result["risk_bands"].values()) == sorted(counts.tolist(), reverse=True)
    assert result["rows"] == 400 and result["mean_score"] == round(float(expected["score"].mean()), 4)
