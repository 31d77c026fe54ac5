"""Training: the time split, matured labels, the model matrix, and fit() on simulator data."""

from __future__ import annotations

import datetime as dt

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sluice.core import train as T
from sluice.core.history import feature_history
from sluice.core.usecase import load_use_case
from sluice.tables import PARTITION_COLUMN
from usecases.churn.simulator import SimulatorSource

DS = PARTITION_COLUMN
UC = load_use_case("churn")
LABEL = UC.label
FEATURES_CUSTOMER_DAILY = UC.tables.features


# -- data ----------------------------------------------------------------------------------


def days_frame(n_days: int, rows_per_day: int = 4, start: dt.date = dt.date(2026, 1, 1), seed: int = 0) -> pd.DataFrame:
    """A tiny frame with a partition day, a label and a row id, rows in random order."""
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(n_days)]
    frame = pd.DataFrame(
        {
            DS: np.repeat(days, rows_per_day),
            "row": np.arange(n_days * rows_per_day),
            LABEL: pd.array(np.tile([0, 1], n_days * rows_per_day // 2 + 1)[: n_days * rows_per_day], dtype="Int8"),
        }
    )
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def lake_features(history_lake) -> pd.DataFrame:
    """Every snapshot the pipeline wrote over the session's history (labelled or not)."""
    return history_lake.lake.read_table(FEATURES_CUSTOMER_DAILY).to_pandas()


# The session's history lake is short (10 matured days): the mechanics of training run on it
# with an unpurged plan. The use case's own, purged plan is tested on longer histories below.
MECHANICS = T.SplitPlan(holdout_days=3, validation_days=3, purge_days=0, min_train_days=1)


@pytest.fixture(scope="module")
def lake_split(lake_features) -> T.Split:
    return T.time_split(T.matured(lake_features, UC), MECHANICS)


@pytest.fixture(scope="module")
def fitted(lake_split) -> T.FittedModel:
    return T.fit(lake_split, UC)


@pytest.fixture(scope="module")
def simulated_split() -> T.Split:
    """A longer matured history built in memory with the feature functions (no lake: a few s),
    split as the use case says: purged by its 30-day horizon.

    The session's history lake has only ~9 distinct churners in its holdout, too few to
    tell a model that knows nothing (ROC-AUC 0.5) from one that is wrong by chance (0.35).
    """
    source = SimulatorSource(n_customers=3000, seed=3)
    start = dt.date(2026, 1, 1)
    days = [start + dt.timedelta(days=i) for i in range(UC.horizon + T.SplitPlan.of(UC).min_span + 2)]
    frame = feature_history(((day, source.events_for_day(day)) for day in days), UC)
    return T.time_split(T.matured(frame, UC), T.SplitPlan.of(UC))


def holdout_auc(split: T.Split, model: T.FittedModel) -> float:
    return float(roc_auc_score(split.holdout[LABEL].astype(int), model.predict(split.holdout)))


# -- matured -------------------------------------------------------------------------------


def test_matured_drops_rows_whose_label_is_not_known():
    frame = days_frame(4)
    frame.loc[frame["row"] % 3 == 0, LABEL] = pd.NA
    out = T.matured(frame, UC)
    assert out[LABEL].notna().all()
    assert sorted(out["row"]) == sorted(frame.loc[frame[LABEL].notna(), "row"])


def test_matured_keeps_only_labels_known_by_as_of():
    frame = days_frame(10)  # 2026-01-01 .. 2026-01-10, every label filled
    # On 2026-02-05 the label of 2026-01-06 has just matured (horizon 30 days), that of 01-07 not yet.
    out = T.matured(frame, UC, as_of=dt.date(2026, 2, 5))
    assert sorted(out[DS].unique()) == [f"2026-01-{d:02d}" for d in range(1, 7)]
    assert len(T.matured(frame, UC, as_of=dt.date(2026, 1, 30))) == 0
    assert len(T.matured(frame, UC, as_of=dt.date(2026, 3, 1))) == len(frame)
    assert len(T.matured(frame, UC)) == len(frame)  # no as_of: every filled label


def test_matured_on_the_lake_respects_as_of(history_lake, lake_features):
    last = history_lake.days[-1]
    everything = T.matured(lake_features, UC)
    assert len(everything) and everything[LABEL].notna().all()
    # The pipeline fills a label exactly when it matures: nothing newer than last - 30 is labelled.
    assert everything[DS].max() == (last - dt.timedelta(days=UC.horizon)).isoformat()
    assert len(T.matured(lake_features, UC, as_of=last)) == len(everything)
    # Retraining "as of" three days ago must not see the three labels that matured since.
    earlier = T.matured(lake_features, UC, as_of=last - dt.timedelta(days=3))
    assert earlier[DS].max() == (last - dt.timedelta(days=UC.horizon + 3)).isoformat()
    assert set(earlier[DS]) == set(everything[DS]) - set(sorted(everything[DS].unique())[-3:])


# -- time_split ----------------------------------------------------------------------------


def test_time_split_holds_out_the_most_recent_days():
    frame = days_frame(10)
    split = T.time_split(frame, MECHANICS)
    days = sorted(frame[DS].unique())
    assert sorted(split.holdout[DS].unique()) == days[-3:]
    assert sorted(split.validation[DS].unique()) == days[-6:-3]
    assert sorted(split.train[DS].unique()) == days[:-6]
    assert split.windows() == {
        "train": [days[0], days[3]],
        "validation": [days[4], days[6]],
        "holdout": [days[7], days[9]],
    }
    # Every row lands in exactly one part, whatever the input order.
    rows = pd.concat([split.train["row"], split.validation["row"], split.holdout["row"]])
    assert sorted(rows) == sorted(frame["row"])


def test_time_split_sizes_are_configurable():
    plan = T.SplitPlan(holdout_days=2, validation_days=4, purge_days=0, min_train_days=6)
    split = T.time_split(days_frame(12), plan)
    assert split.holdout[DS].nunique() == 2 and split.validation[DS].nunique() == 4
    assert split.train[DS].nunique() == 6


def test_the_use_cases_plan_purges_by_its_label_horizon():
    plan = T.SplitPlan.of(UC)
    assert plan.purge_days == UC.horizon == 30
    assert (plan.holdout_days, plan.validation_days, plan.min_train_days, plan.max_train_days) == (7, 7, 14, 60)
    assert plan.min_span == 14 + 7 + 7 + 2 * 30
    # SLUICE_TRAIN_MAX_DAYS shortens the train window, never the purge.
    assert T.SplitPlan.of(UC, 20).max_train_days == 20 and T.SplitPlan.of(UC, 20).purge_days == 30


def test_no_training_label_window_reaches_a_validation_or_holdout_day():
    plan = T.SplitPlan.of(UC)
    frame = days_frame(plan.max_span + 25, rows_per_day=2)
    split = T.time_split(frame, plan)
    first_validation = dt.date.fromisoformat(min(split.validation[DS]))
    first_holdout = dt.date.fromisoformat(min(split.holdout[DS]))
    for ds in split.train[DS].unique():
        # The label of snapshot d looks at (d, d + horizon]: it must end before the next part begins.
        assert dt.date.fromisoformat(ds) + dt.timedelta(days=UC.horizon) < first_validation, ds
    for ds in split.validation[DS].unique():
        assert dt.date.fromisoformat(ds) + dt.timedelta(days=UC.horizon) < first_holdout, ds
    assert split.train[DS].nunique() == plan.max_train_days
    assert split.holdout[DS].max() == frame[DS].max()


def test_the_purged_split_of_a_simulated_history_keeps_labels_out_of_the_holdout(simulated_split):
    split = simulated_split
    latest_train = dt.date.fromisoformat(split.train[DS].max())
    latest_validation = dt.date.fromisoformat(split.validation[DS].max())
    assert latest_train + dt.timedelta(days=UC.horizon) < dt.date.fromisoformat(split.validation[DS].min())
    assert latest_validation + dt.timedelta(days=UC.horizon) < dt.date.fromisoformat(split.holdout[DS].min())
    # The same customers appear in all three parts (that is why the purge matters).
    assert set(split.train["customer_id"]) & set(split.holdout["customer_id"])


def test_time_split_skips_missing_days_by_date_not_by_position():
    # A gap in the lake (a day never built) must not shrink the purge.
    plan = T.SplitPlan(holdout_days=2, validation_days=2, purge_days=5, min_train_days=2)
    frame = days_frame(30)
    frame = frame[~frame[DS].isin(["2026-01-20", "2026-01-21", "2026-01-22"])]
    split = T.time_split(frame, plan)
    assert sorted(split.holdout[DS].unique()) == ["2026-01-29", "2026-01-30"]
    # Validation: the last two days more than 5 days before 01-29 (01-20 .. 01-22 are missing).
    assert sorted(split.validation[DS].unique()) == ["2026-01-19", "2026-01-23"]
    assert max(split.train[DS]) == "2026-01-13"


@pytest.mark.parametrize("n_days", [0, 1, 6])
def test_time_split_refuses_too_few_days(n_days):
    frame = days_frame(n_days)
    with pytest.raises(T.NotEnoughData, match="need 7 consecutive matured snapshot days"):
        T.time_split(frame, MECHANICS)


def test_time_split_refuses_what_the_purge_leaves_too_short():
    plan = T.SplitPlan.of(UC)
    frame = days_frame(plan.min_span - 1)
    with pytest.raises(T.NotEnoughData, match=r"need 88 consecutive .* two purges of 30 days .* have 87"):
        T.time_split(frame, plan)
    assert len(T.time_split(days_frame(plan.min_span), plan).train[DS].unique()) == plan.min_train_days


def test_a_plan_refuses_an_empty_part():
    with pytest.raises(ValueError):
        T.SplitPlan(holdout_days=0)
    with pytest.raises(ValueError):
        T.SplitPlan(min_train_days=10, max_train_days=5)


# -- model_matrix --------------------------------------------------------------------------


def test_model_matrix_has_the_fixed_columns_in_a_fixed_order(lake_features):
    rows = lake_features.head(20)
    shuffled = rows[list(reversed(rows.columns))]
    x = T.model_matrix(shuffled, UC)
    assert list(x.columns) == UC.feature_columns
    assert not {"customer_id", LABEL, DS} & set(x.columns)
    pd.testing.assert_frame_equal(x, T.model_matrix(rows, UC))


def test_model_matrix_uses_fixed_categories(lake_features):
    rows = lake_features.head(6).copy()
    rows["channel"] = ["partner", "partner", "organic", "partner", "partner", "partner"]
    x = T.model_matrix(rows, UC)
    categories = T.categories(UC)
    for col in UC.categorical:
        assert list(x[col].cat.categories) == categories[col], col
    # The code of a value does not depend on which values the frame happens to contain.
    assert x["channel"].cat.codes.tolist() == [4, 4, 0, 4, 4, 4]
    only_partner = T.model_matrix(rows[rows["channel"] == "partner"], UC)
    assert set(only_partner["channel"].cat.codes) == {categories["channel"].index("partner")}


def test_model_matrix_turns_an_unseen_category_into_missing(lake_features, fitted):
    rows = lake_features.head(5).copy()
    rows["channel"] = ["tiktok", "organic", "tiktok", None, "referral"]
    x = T.model_matrix(rows, UC)
    assert x["channel"].isna().tolist() == [True, False, True, True, False]
    assert "tiktok" not in x["channel"].cat.categories
    assert list(x["channel"].cat.categories) == T.categories(UC)["channel"]
    assert rows["channel"].tolist()[0] == "tiktok"  # the input frame is not changed
    # The model scores an unseen channel exactly as a missing one.
    missing = rows.assign(channel=None)
    tiktok = rows.assign(channel="tiktok")
    np.testing.assert_array_equal(fitted.predict(tiktok), fitted.predict(missing))


# -- fit -----------------------------------------------------------------------------------


def test_fit_learns_on_simulator_data(lake_split, fitted):
    auc = holdout_auc(lake_split, fitted)
    assert auc > 0.65, auc  # a small lake's three holdout days; the simulated history below is the harder test
    assert 0 < fitted.best_iteration <= 400
    assert fitted.params["seed"] == T.DEFAULT_PARAMS["seed"] and fitted.params["deterministic"] is True
    # The platform's defaults with the use case's own parameters on top (churn bags and subsamples).
    assert {k: fitted.params[k] for k in UC.spec.model.params} == dict(UC.spec.model.params)
    assert (fitted.params["feature_fraction"], fitted.params["bagging_fraction"], fitted.params["bagging_freq"]) == (
        0.9, 0.9, 1)
    importance = fitted.feature_importance()
    assert sorted(importance.index) == sorted(UC.feature_columns) and importance.iloc[0] > 0


def test_fit_is_deterministic(history_lake, lake_split, fitted):
    # The same data read again from the lake into new frames: the same model.
    again = T.time_split(T.matured(history_lake.lake.read_table(FEATURES_CUSTOMER_DAILY).to_pandas(), UC), MECHANICS)
    refit = T.fit(again, UC)
    assert refit.best_iteration == fitted.best_iteration
    np.testing.assert_array_equal(refit.predict(lake_split.holdout), fitted.predict(lake_split.holdout))
    np.testing.assert_array_equal(refit.predict(lake_split.train), fitted.predict(lake_split.train))


def test_from_booster_round_trips_through_the_model_string(lake_split, fitted):
    loaded = lgb.Booster(model_str=fitted.booster.model_to_string())
    model = T.FittedModel.from_booster(loaded, UC)
    for part in (lake_split.holdout, lake_split.validation, lake_split.train):
        np.testing.assert_array_equal(model.predict(part), fitted.predict(part))
    # The string keeps the trees up to the best iteration only (what MLflow stores too).
    assert loaded.current_iteration() == fitted.best_iteration
    assert model.feature_names == UC.feature_columns


def test_from_booster_recovers_the_best_iteration(fitted):
    model = T.FittedModel.from_booster(lgb.Booster(model_str=fitted.booster.model_to_string()), UC)
    assert model.best_iteration == fitted.best_iteration


def test_a_model_trained_on_shuffled_labels_knows_nothing(simulated_split):
    split = simulated_split
    real = holdout_auc(split, T.fit(split, UC))
    shuffled_aucs = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        train = split.train.assign(**{LABEL: rng.permutation(split.train[LABEL].to_numpy())})
        validation = split.validation.assign(**{LABEL: rng.permutation(split.validation[LABEL].to_numpy())})
        model = T.fit(T.Split(train=train, validation=validation, holdout=split.holdout), UC)
        shuffled_aucs.append(holdout_auc(split, model))
    # One noise model can by chance rank by an informative feature (either way round);
    # on average over permutations it knows nothing, and never comes close to the real one.
    assert abs(np.mean(shuffled_aucs) - 0.5) < 0.1, shuffled_aucs
    assert real > 0.72, real
    assert max(shuffled_aucs) < real - 0.1, (real, shuffled_aucs)


def _days(start: str, n: int) -> list[str]:
    first = dt.date.fromisoformat(start)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def test_training_days_skip_the_warm_up_and_unmatured_labels() -> None:
    days = _days("2026-01-01", 200)  # the lake's whole history, 2026-01-01 .. 2026-07-19
    picked = T.training_days(days, dt.date(2026, 6, 1), horizon=UC.horizon, warmup_days=90, max_days=1000)
    assert picked[0] == "2026-04-01", "the first 90 days' windows are not full yet"
    assert picked[-1] == "2026-05-02", "labels of later snapshots are not known on 06-01"


def test_training_days_are_a_rolling_window_of_the_latest_days() -> None:
    days = _days("2026-01-01", 200)
    picked = T.training_days(days, dt.date(2026, 7, 20), horizon=UC.horizon, warmup_days=90, max_days=60)
    assert len(picked) == 60 and picked[-1] == "2026-06-20"
    assert picked == sorted(picked)


def test_training_days_before_the_warm_up_ends_are_none() -> None:
    assert T.training_days(_days("2026-01-01", 100), dt.date(2026, 4, 10), horizon=30, warmup_days=90) == []
    assert T.training_days([], dt.date(2026, 4, 10), horizon=30, warmup_days=0) == []


def test_the_training_frame_does_not_depend_on_the_order_partitions_were_written(history_lake, tmp_path):
    # Backfill runs finish in any order; LightGBM's bagging depends on row order.
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.settings import load_settings
    from sluice.stages.retrain import load_training_frame

    source = history_lake.lake
    days = source.partitions(FEATURES_CUSTOMER_DAILY)
    as_of = dt.date.fromisoformat(days[-1])
    frames = []
    for i, order in enumerate((days, days[::-1])):
        settings = load_settings(lake_uri=str(tmp_path / f"lake{i}"), train_warmup_days=0)
        lake = Lake(settings)
        for ds in order:
            data = source.read_partition(FEATURES_CUSTOMER_DAILY, ds)
            lake.write_partition(FEATURES_CUSTOMER_DAILY, ds, data, RunContext("t", "t").lineage(ds, {}))
        frames.append(load_training_frame(lake, as_of, settings)[0])
    assert len(frames[0]) > 0
    pd.testing.assert_frame_equal(frames[0], frames[1])
