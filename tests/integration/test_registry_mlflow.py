"""The MLflow edge against a real MLflow: registry on SQLite, artifacts on the S3 server.

* ``Registry``: versions, aliases (champion / previous-champion / challenger, never
  stages), rollback, tags, loading a version back.
* ``sluice.stages.promotions``: the champion's history in the lake and the manual actions.
* An end-to-end slice of ``weekly_retrain``: a 45-day lake built by the pipeline (on the
  local filesystem, to stay fast; lake writes on S3 are covered above and in
  test_lake_s3), MLflow artifacts on S3: a first retraining, the same again (nothing new),
  the next day's with a gate that says no, a dry run and a real forced promotion of that
  challenger, a crashed forced try and its retry, and a re-run of the first week after the
  champion moved on (history stays as it was).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from sluice.core import train as T
from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry, RegistryError
from sluice.settings import Settings, load_settings
from sluice.stages import etl as pipeline
from sluice.stages import promotions
from sluice.stages.retrain import gate_policy
from sluice.tables import MODEL_DECISIONS, MODEL_PROMOTIONS, PARTITION_COLUMN

pytestmark = pytest.mark.integration

CHURN = load_use_case("churn")
FEATURES_CUSTOMER_DAILY = CHURN.tables.features

# Any credentials do for the moto server (the same as conftest's aws_env).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# -- fixtures ------------------------------------------------------------------------------


def _clean_env(mp: pytest.MonkeyPatch) -> None:
    """No SLUICE_* / MLFLOW_* variable of the shell leaks in, and none set by the code leaks out.

    ``Registry`` sets MLFLOW_S3_ENDPOINT_URL in the process environment: setting then
    deleting it here makes the monkeypatch remove it again at teardown.
    """
    mp.setenv("MLFLOW_S3_ENDPOINT_URL", "unset")
    for key in list(os.environ):
        if key.startswith(("SLUICE_", "MLFLOW_")):
            mp.delenv(key)
    mp.setenv("SLUICE_CODE_VERSION", "integration-test")


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its schema created: a copy per test saves the ~5 s migration."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments()
    client.search_registered_models()
    return path


def _mlflow_db(template: Path, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture
def ml_settings(tmp_path, bucket, s3_endpoint, aws_env, monkeypatch, mlflow_template) -> Settings:
    """Registry on a fresh SQLite file, MLflow artifacts and the lake in this test's bucket."""
    _clean_env(monkeypatch)
    settings = load_settings(
        lake_uri=f"s3://{bucket}/sluice",
        s3_endpoint_url=s3_endpoint,
        mlflow_tracking_uri=_mlflow_db(mlflow_template, tmp_path / "mlflow"),
        mlflow_artifact_uri=f"s3://{bucket}/mlflow",
        use_case="churn",
    )
    # The registered model and the experiment are the use case's own unless set.
    assert (settings.model, settings.experiment, settings.model_name) == ("sluice-churn", "sluice-churn", None)
    return settings


@dataclass(frozen=True)
class Boosters:
    x: np.ndarray
    models: list[Any]  # three different lightgbm.Booster


@pytest.fixture(scope="module")
def boosters() -> Boosters:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=400) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True, "seed": 1}
    models = [lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=rounds) for rounds in (5, 10, 20)]
    return Boosters(x=x, models=models)


def log_version(settings: Settings, booster: Any) -> tuple[str, str]:
    """Log ``booster`` in a run of the experiment and register it: (version, run id)."""
    import mlflow
    import mlflow.lightgbm

    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            registered_model_name=settings.model,
            pip_requirements=["lightgbm"],  # skips MLflow's requirement inference (a 5-7 s subprocess)
        )
    return str(info.registered_model_version), run.info.run_id


def assert_no_stages(registry: Registry) -> None:
    found = registry.client.search_model_versions(f"name='{registry.name}'")
    assert found
    for mv in found:
        assert mv.current_stage in (None, "None", ""), (mv.version, mv.current_stage)


def alias_versions(registry: Registry) -> dict[str, str | None]:
    return {
        alias: (ref.version if (ref := registry.by_alias(alias)) else None) for alias in (CHAMPION, PREVIOUS, CHALLENGER)
    }


# -- Registry ------------------------------------------------------------------------------


def test_versions_are_registered_and_their_files_land_in_the_bucket(ml_settings, boosters, s3_client, bucket):
    v1, run1 = log_version(ml_settings, boosters.models[0])
    v2, run2 = log_version(ml_settings, boosters.models[1])
    registry = Registry(ml_settings)
    assert (v1, v2) == ("1", "2")
    assert [(r.version, r.run_id) for r in registry.versions()] == [("1", run1), ("2", run2)]
    assert registry.version("2").uri == f"models:/{ml_settings.model}/2"
    # Registry pointed MLflow's S3 client at the configured endpoint.
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == ml_settings.s3_endpoint_url
    experiment = registry.client.get_experiment(registry.experiment_id())
    assert experiment.artifact_location == f"s3://{bucket}/mlflow"
    assert registry.experiment_id() == experiment.experiment_id  # found again, not created twice

    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="mlflow/").get("Contents", [])]
    model_files = [k for k in keys if k.endswith("/model.lgb")]
    assert len(model_files) == 2, keys
    assert len([k for k in keys if k.endswith("/MLmodel")]) == 2
    for mv in registry.client.search_model_versions(f"name='{ml_settings.model}'"):
        assert registry.client.get_model_version_download_uri(mv.name, mv.version).startswith(f"s3://{bucket}/mlflow/")
    assert_no_stages(registry)


def test_promote_moves_champion_and_keeps_the_previous_one(ml_settings, boosters):
    for booster in boosters.models:
        log_version(ml_settings, booster)
    registry = Registry(ml_settings)
    assert registry.by_alias(CHAMPION) is None

    assert registry.promote("1") is None
    assert alias_versions(registry) == {CHAMPION: "1", PREVIOUS: None, CHALLENGER: None}

    assert registry.promote("2") == "1"
    assert alias_versions(registry) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: None}

    registry.promote("2")  # already champion: nothing moves
    assert alias_versions(registry) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: None}

    assert registry.promote("3") == "2"
    assert alias_versions(registry) == {CHAMPION: "3", PREVIOUS: "2", CHALLENGER: None}
    assert_no_stages(registry)


def test_rollback_swaps_champion_and_previous(ml_settings, boosters):
    registry = Registry(ml_settings)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()  # no registered model at all
    log_version(ml_settings, boosters.models[0])
    log_version(ml_settings, boosters.models[1])
    registry.promote("1")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()  # a champion but no previous one
    assert alias_versions(registry)[CHAMPION] == "1"

    registry.promote("2")
    assert registry.rollback() == ("2", "1")
    assert alias_versions(registry) == {CHAMPION: "1", PREVIOUS: "2", CHALLENGER: None}
    assert registry.rollback() == ("1", "2")  # and back again
    assert alias_versions(registry) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: None}
    assert_no_stages(registry)


def test_by_alias_of_a_missing_alias_is_none(ml_settings, boosters):
    registry = Registry(ml_settings)
    assert registry.by_alias(CHAMPION) is None  # the registered model does not exist yet
    assert registry.versions() == []
    assert registry.aliases() == {}
    log_version(ml_settings, boosters.models[0])
    assert registry.by_alias(CHAMPION) is None
    assert registry.by_alias("no-such-alias") is None
    registry.set_alias(CHALLENGER, "1")
    ref = registry.by_alias(CHALLENGER)
    assert ref is not None and ref.version == "1" and ref.name == ml_settings.model


def test_the_champion_loads_back_and_predicts_like_the_original(ml_settings, boosters):
    import mlflow.lightgbm

    log_version(ml_settings, boosters.models[0])
    log_version(ml_settings, boosters.models[1])
    registry = Registry(ml_settings)
    registry.promote("1")
    registry.promote("2")
    champion = registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "2"

    loaded = registry.load_booster(champion.version)
    expected = boosters.models[1].predict(boosters.x)
    np.testing.assert_array_equal(loaded.predict(boosters.x), expected)
    assert not np.array_equal(loaded.predict(boosters.x), boosters.models[0].predict(boosters.x))
    by_alias = mlflow.lightgbm.load_model(f"models:/{ml_settings.model}@{CHAMPION}")
    np.testing.assert_array_equal(by_alias.predict(boosters.x), expected)
    previous = registry.load_booster(registry.by_alias(PREVIOUS).version)
    np.testing.assert_array_equal(previous.predict(boosters.x), boosters.models[0].predict(boosters.x))


def test_tags_are_readable(ml_settings, boosters):
    log_version(ml_settings, boosters.models[0])
    registry = Registry(ml_settings)
    registry.tag("1", {"gate.promote": True, "feature_table_version": 17, "note": "first"})
    tags = registry.version("1").tags
    assert {k: tags[k] for k in ("gate.promote", "feature_table_version", "note")} == {
        "gate.promote": "True",
        "feature_table_version": "17",
        "note": "first",
    }
    assert registry.versions()[0].tags["note"] == "first"
    assert registry.client.get_model_version(ml_settings.model, "1").tags["gate.promote"] == "True"


def test_aliases_map_to_version_strings(ml_settings, boosters):
    log_version(ml_settings, boosters.models[0])
    log_version(ml_settings, boosters.models[1])
    registry = Registry(ml_settings)
    registry.promote("1")
    registry.promote("2")
    assert registry.aliases() == {CHAMPION: "2", PREVIOUS: "1"}


# -- promotions ----------------------------------------------------------------------------


def test_promotion_history_and_the_champion_of_a_day(ml_settings):
    lake = Lake(ml_settings)
    assert promotions.history(lake) == []
    assert promotions.champion_on(lake, dt.date(2026, 3, 1)) is None
    ctx = RunContext("weekly_retrain", "scheduled__a")
    # Recorded out of order: the history is by the day a promotion takes effect.
    promotions.record_promotion(lake, "2026-03-09", "2", "1", forced=False, reason="better", ctx=ctx,
                                decision_ds="2026-03-09")
    promotions.record_promotion(lake, "2026-03-02", "1", None, forced=False, reason="floors",
                                ctx=RunContext("weekly_retrain", "scheduled__b"), decision_ds="2026-03-02")
    history = promotions.history(lake)
    assert [(r[PARTITION_COLUMN], r["model_version"], r["previous_version"], r["forced"], r["reason"])
            for r in history] == [
        ("2026-03-02", "1", None, False, "floors"),
        ("2026-03-09", "2", "1", False, "better"),
    ]
    assert promotions.champion_on(lake, dt.date(2026, 3, 1)) is None
    assert promotions.champion_on(lake, dt.date(2026, 3, 2)) == "1"
    assert promotions.champion_on(lake, dt.date(2026, 3, 8)) == "1"
    assert promotions.champion_on(lake, dt.date(2026, 3, 9)) == "2"
    assert promotions.champion_on(lake, dt.date(2026, 4, 30)) == "2"
    assert lake.partitions(MODEL_PROMOTIONS) == ["2026-03-02", "2026-03-09"]


def test_promote_by_hand_and_rollback_record_history_and_need_a_reason(ml_settings, boosters):
    log_version(ml_settings, boosters.models[0])
    log_version(ml_settings, boosters.models[1])
    registry, lake = Registry(ml_settings), Lake(ml_settings)
    d1, d2 = dt.date(2026, 3, 2), dt.date(2026, 3, 5)
    d3 = d2  # the rollback happens the same day

    for blank in ("", "   "):
        with pytest.raises(RegistryError, match="reason"):
            promotions.promote_by_hand(ml_settings, "1", blank, d1)
        with pytest.raises(RegistryError, match="reason"):
            promotions.rollback(ml_settings, blank, d1)
    with pytest.raises(MlflowException):  # the version does not exist
        promotions.promote_by_hand(ml_settings, "99", "does not exist", d1)
    assert registry.by_alias(CHAMPION) is None
    assert promotions.history(lake) == []

    assert promotions.promote_by_hand(ml_settings, "1", "first model", d1) == (None, "1")
    assert promotions.promote_by_hand(ml_settings, "2", "fixes the eu slice", d2) == ("1", "2")
    assert registry.version("2").tags["promotion.manual_reason"] == "fixes the eu slice"
    # A rollback the same day as the promotion it undoes: both stay in the history.
    assert promotions.rollback(ml_settings, "scores look wrong", d3) == ("2", "1")
    assert alias_versions(registry) == {CHAMPION: "1", PREVIOUS: "2", CHALLENGER: None}

    rows = [(r[PARTITION_COLUMN], r["model_version"], r["previous_version"], r["forced"], r["reason"])
            for r in promotions.history(lake)]
    assert rows == [
        ("2026-03-02", "1", None, True, "manual: first model"),
        ("2026-03-05", "2", "1", True, "manual: fixes the eu slice"),
        ("2026-03-05", "1", "2", True, "rollback: scores look wrong"),
    ]
    assert promotions.champion_on(lake, d1) == "1"
    assert promotions.champion_on(lake, d3) == "1"  # the last action of the day wins
    assert_no_stages(registry)


# -- weekly_retrain, end to end -----------------------------------------------------------

HISTORY_START = dt.date(2026, 1, 1)
# The first retraining (as of the third-last day) has just enough matured snapshot days after a
# 30-day warm-up for churn's purged split: 14 train, 7 validation, 7 holdout, 30 days between each.
WARMUP_DAYS = 30
HISTORY_DAYS = WARMUP_DAYS + T.SplitPlan.of(CHURN).min_span + CHURN.horizon + 2
HISTORY_CUSTOMERS = 1500
HISTORY_SEED = 3


@dataclass(frozen=True)
class Step:
    result: dict[str, Any]
    features_version: int | None  # of the features table just before the call
    aliases: dict[str, str | None]
    decisions: list[dict]  # rows of models/decisions for the day after the call
    promotions: list[dict]  # rows of models/promotions for the day the decision takes effect (day + 1)
    champion_on_day: str | None  # the champion of that day (day + 1)
    champion_on_decision_day: str | None  # the champion the day's own scores use
    new_figures: int


@dataclass(frozen=True)
class CrashedTry:
    error: str
    aliases: dict[str, str | None]
    versions: list[str]
    promotions: list[dict]


@dataclass(frozen=True)
class RetrainChain:
    settings: Settings
    bucket: str
    day: dt.date  # the first retraining's as-of day; the others are one and two days later
    first: Step  # no champion yet: v1, promoted on the floors
    again: Step  # the same as-of day and data, another run id: nothing new
    second: Step  # the next day (new data), a gate that cannot be passed: v2, not promoted
    dry_forced: Step  # the same as second, dry_run=True, force_promote=True: v2 again, nothing moves
    forced: Step  # the same as second, force_promote=True with a reason: v2 champion
    crashed: CrashedTry  # two days on, a forced promotion whose first try dies after moving the champion
    retried: Step  # the Airflow retry of that try (same run_id)
    rerun: Step  # the same run cleared and run once more after it succeeded
    old_week: Step  # the first as-of day re-run (same run id) once the champion has moved on
    old_week_forced: Step  # the first as-of day forced by a new run, champion moved on: superseded

    @property
    def ds(self) -> str:
        return self.day.isoformat()

    def ds_plus(self, days: int) -> str:
        return (self.day + dt.timedelta(days=days)).isoformat()


FORCE_REASON = "hotfix approved by the on-call data scientist"


@pytest.fixture(scope="module")
def retrain_chain(s3_endpoint, tmp_path_factory, mlflow_template) -> Iterator[RetrainChain]:
    """A 150-day lake (the pipeline's own output), then the retrain calls of the chain."""
    import boto3
    import matplotlib.pyplot as plt

    from sluice.stages.retrain import retrain

    base = tmp_path_factory.mktemp("retrain")
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp)
        # MLflow infers a logged model's pip requirements by loading it in a fresh Python
        # (5-20 s on a busy machine, per retrain); a zero timeout falls back to the flavour's
        # default requirements at once. Nothing here reads requirements.txt.
        mp.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "0")
        for key, value in AWS_ENV.items():
            mp.setenv(key, value)
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(key, raising=False)
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        bucket = f"sluice-retrain-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)

        settings = load_settings(
            lake_uri=str(base / "lake"),
            s3_endpoint_url=s3_endpoint,
            mlflow_tracking_uri=_mlflow_db(mlflow_template, base / "mlflow"),
            mlflow_artifact_uri=f"s3://{bucket}/mlflow",
            sim_customers=HISTORY_CUSTOMERS,
            sim_seed=HISTORY_SEED,
            train_warmup_days=WARMUP_DAYS,  # the mechanics of retraining, on a shorter history (churn's spec: 90)
            use_case="churn",
        )
        days = [HISTORY_START + dt.timedelta(days=i) for i in range(HISTORY_DAYS)]
        history_ctx = RunContext("history", "backfill")
        for day in days:
            pipeline.ingest_day(settings, day, history_ctx)
            pipeline.curate_day(settings, day, history_ctx)
            pipeline.build_features_day(settings, day, history_ctx)
        day = days[-3]
        lake = Lake(settings)

        def step(as_of: dt.date = day, **kwargs: Any) -> Step:
            before_version = lake.version(FEATURES_CUSTOMER_DAILY)
            figures_before = set(plt.get_fignums())
            result = retrain(settings, as_of, **kwargs)
            new_figures = set(plt.get_fignums()) - figures_before
            for number in new_figures:  # leave pyplot as it was for the tests that follow
                plt.close(number)
            ds = as_of.isoformat()
            effective = promotions.effective_day(ds)
            return Step(
                result=result,
                features_version=before_version,
                aliases=alias_versions(Registry(settings)),
                decisions=lake.read_partition(MODEL_DECISIONS, ds).to_pylist()
                if lake.has_partition(MODEL_DECISIONS, ds) else [],
                promotions=lake.read_partition(MODEL_PROMOTIONS, effective).to_pylist()
                if lake.has_partition(MODEL_PROMOTIONS, effective) else [],
                champion_on_day=promotions.champion_on(lake, dt.date.fromisoformat(effective)),
                champion_on_decision_day=promotions.champion_on(lake, as_of),
                new_figures=len(new_figures),
            )

        first = step(ctx=RunContext("weekly_retrain", "test"))
        again = step(ctx=RunContext("weekly_retrain", "test-again"))
        next_day, last_day = days[-2], days[-1]
        # The forced calls do not depend on the bootstrap: a shorter one saves seconds.
        quick = dataclasses.replace(gate_policy(CHURN), n_bootstrap=100)
        unpassable = dataclasses.replace(quick, min_improvement=1.0)
        second = step(next_day, ctx=RunContext("weekly_retrain", "test-next"), policy=unpassable)
        dry_forced = step(
            next_day, ctx=RunContext("weekly_retrain", "test-dry-run"), dry_run=True, force_promote=True,
            reason="just looking", policy=quick,
        )
        forced = step(
            next_day, ctx=RunContext("weekly_retrain", "test-forced"), force_promote=True, reason=FORCE_REASON,
            policy=quick,
        )
        # A try that dies between moving the champion and recording the promotion (the
        # worker is killed, the lake is unreachable...), then Airflow's retry of it.
        crash_ctx = RunContext("weekly_retrain", "test-crash")
        with pytest.MonkeyPatch.context() as crash:
            def die(*args: Any, **kwargs: Any) -> None:
                raise ConnectionError("lake unreachable")

            crash.setattr("sluice.stages.retrain.record_promotion", die)
            with pytest.raises(ConnectionError) as err:
                retrain(settings, last_day, crash_ctx, force_promote=True, reason=FORCE_REASON, policy=quick)
        crashed = CrashedTry(
            error=str(err.value),
            aliases=alias_versions(Registry(settings)),
            versions=[v.version for v in Registry(settings).versions()],
            promotions=lake.read_partition(MODEL_PROMOTIONS, promotions.effective_day(last_day.isoformat()))
            .to_pylist() if lake.has_partition(MODEL_PROMOTIONS, promotions.effective_day(last_day.isoformat()))
            else [],
        )
        retried = step(last_day, ctx=crash_ctx, force_promote=True, reason=FORCE_REASON, policy=quick)
        rerun = step(last_day, ctx=crash_ctx, force_promote=True, reason=FORCE_REASON, policy=quick)
        old_week = step(ctx=RunContext("weekly_retrain", "test"))
        old_week_forced = step(
            ctx=RunContext("weekly_retrain", "test-old-forced"), force_promote=True, reason="back to v1", policy=quick
        )
        yield RetrainChain(settings, bucket, day, first, again, second, dry_forced, forced, crashed, retried, rerun,
                           old_week, old_week_forced)


def _row(rows: list[dict], version: str) -> dict:
    found = [r for r in rows if r["model_version"] == version]
    assert len(found) == 1, rows
    return found[0]


def _check(decision: dict, name: str) -> dict:
    return next(c for c in decision["checks"] if c["name"] == name)


def test_first_retrain_registers_v1_and_promotes_it_on_the_floors(retrain_chain):
    first = retrain_chain.first
    result = first.result
    assert result["model_version"] == "1"
    assert result["champion_before"] is None
    assert result["promoted"] is True and result["forced"] is False and result["dry_run"] is False
    assert result["feature_table_version"] == first.features_version
    assert result["holdout_roc_auc"] > 0.7
    assert first.aliases == {CHAMPION: "1", PREVIOUS: None, CHALLENGER: "1"}

    decision_row = _row(first.decisions, "1")
    assert decision_row[PARTITION_COLUMN] == retrain_chain.ds
    assert decision_row["promote"] is True and decision_row["promoted"] is True
    assert decision_row["champion_version"] is None
    assert decision_row["feature_table_version"] == first.features_version
    decision = json.loads(decision_row["decision_json"])
    assert [c["name"] for c in decision["checks"]] == ["floors"]  # no champion: the floors alone decide
    assert decision["promote"] is True and decision["champion"] is None

    promotion = _row(first.promotions, "1")
    assert promotion["previous_version"] is None and promotion["forced"] is False
    assert promotion["decision_ds"] == retrain_chain.ds
    # Champion from the next day: the as-of day's own scores use the champion before (none here),
    # whether batch_score of that day runs before or after this retraining.
    assert promotion[PARTITION_COLUMN] == promotions.effective_day(retrain_chain.ds) > retrain_chain.ds
    assert first.champion_on_day == "1" and first.champion_on_decision_day is None

    lineage = Lake(retrain_chain.settings).lineage(MODEL_DECISIONS, 0)
    assert lineage is not None and lineage.dag_id == "weekly_retrain"
    assert lineage.inputs == {FEATURES_CUSTOMER_DAILY.name: first.features_version}


def test_first_retrain_logs_its_run_with_lineage_and_artifacts(retrain_chain, s3_client, aws_env):
    import mlflow

    settings, first = retrain_chain.settings, retrain_chain.first
    registry = Registry(settings)
    run = registry.client.get_run(first.result["mlflow_run_id"])

    params = run.data.params
    assert params["objective"] == "binary" and params["seed"] == str(T.DEFAULT_PARAMS["seed"])
    assert int(params["best_iteration"]) > 0
    metrics = run.data.metrics
    assert {"holdout_roc_auc", "holdout_pr_auc", "holdout_ece", "holdout_brier", "validation_roc_auc"} <= set(metrics)
    assert round(metrics["holdout_roc_auc"], 4) == first.result["holdout_roc_auc"]
    tags = run.data.tags
    assert tags["feature_table"] == f"{settings.lake_uri}/churn/{FEATURES_CUSTOMER_DAILY.name}"
    assert tags["use_case"] == "churn"
    assert tags["feature_table_version"] == str(first.features_version)
    assert tags["ds"] == retrain_chain.ds and tags["dag_id"] == "weekly_retrain" and tags["run_id"] == "test"
    assert set(json.loads(tags["windows"])) == {"train", "validation", "holdout"}

    def listing(path: str | None = None) -> set[str]:
        return {a.path for a in registry.client.list_artifacts(run.info.run_id, path)}

    assert {"plots", "gate", "metrics", "model_card.md"} <= listing()
    assert listing("plots") == {
        "plots/roc_curve.png",
        "plots/precision_recall_curve.png",
        "plots/calibration.png",
        "plots/feature_importance.png",
    }
    assert listing("gate") == {"gate/decision.json"}
    # The files really are in the bucket, under the experiment's artifact location.
    assert run.info.artifact_uri.startswith(f"s3://{retrain_chain.bucket}/mlflow/")
    key = f"{run.info.artifact_uri.removeprefix(f's3://{retrain_chain.bucket}/')}/plots/roc_curve.png"
    png = s3_client.get_object(Bucket=retrain_chain.bucket, Key=key)["Body"].read()
    assert png.startswith(b"\x89PNG")

    decision = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/decision.json")
    assert decision["promote"] is True and [c["name"] for c in decision["checks"]] == ["floors"]
    card = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/model_card.md")
    assert f"{settings.model} v1 (churn)" in card
    assert f"`{settings.lake_root}/features/customer_daily`" in card
    assert f"Delta version **{first.features_version}**" in card
    assert "**Promoted**" in card

    version = registry.version("1")
    assert version.run_id == run.info.run_id
    assert version.tags["gate.promote"] == "True" and version.tags["gate.forced"] == "False"
    assert version.tags["gate.decision_ds"] == retrain_chain.ds
    assert version.tags["gate.reasons"] == "clears every floor"
    assert version.tags["feature_table_version"] == str(first.features_version)


def _strip(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "recorded_at"} for r in rows),
                  key=lambda r: (r["run_id"], r["model_version"]))


def test_the_same_retraining_again_registers_nothing_and_records_nothing(retrain_chain):
    first, again = retrain_chain.first, retrain_chain.again
    result = again.result
    assert result["model_version"] == "1" and result["resumed"] is True and result["decided_before"] is True
    assert result["training_data"] == first.result["training_data"]
    assert again.aliases == first.aliases
    assert _strip(again.decisions) == _strip(first.decisions)  # one row, the first run's
    assert _strip(again.promotions) == _strip(first.promotions)
    tags = Registry(retrain_chain.settings).client.get_run(first.result["mlflow_run_id"]).data.tags
    assert tags["training_data"] == first.result["training_data"]


def test_a_later_day_trains_on_new_data_and_a_gate_that_says_no_promotes_nothing(retrain_chain):
    first, second = retrain_chain.first, retrain_chain.second
    result = second.result
    assert result["model_version"] == "2" and result["resumed"] is False
    assert result["training_data"] != first.result["training_data"]
    assert result["champion_before"] == "1" and result["promoted"] is False
    assert second.aliases == {CHAMPION: "1", PREVIOUS: None, CHALLENGER: "2"}

    decision_row = _row(second.decisions, "2")
    assert decision_row["promote"] is False and decision_row["promoted"] is False
    assert decision_row["champion_version"] == "1"
    assert decision_row["training_data"] == result["training_data"]
    improvement = _check(json.loads(decision_row["decision_json"]), "improvement")
    assert not improvement["passed"] and "needs >=" in improvement["reason"]
    assert second.promotions == [] and second.champion_on_day == "1"
    tags = Registry(retrain_chain.settings).version("2").tags
    assert tags["gate.promote"] == "False"


def test_force_promote_without_a_reason_is_refused(retrain_chain):
    from sluice.stages.retrain import retrain

    registry = Registry(retrain_chain.settings)
    versions_before = [v.version for v in registry.versions()]
    for blank in (None, "", "  "):
        with pytest.raises(ValueError, match="force_promote needs a reason"):
            retrain(retrain_chain.settings, retrain_chain.day, RunContext("weekly_retrain", "no-reason"),
                    force_promote=True, reason=blank)
    assert [v.version for v in registry.versions()] == versions_before


def test_dry_run_with_force_promote_moves_no_alias_and_trains_nothing_new(retrain_chain):
    step = retrain_chain.dry_forced
    result = step.result
    assert result["model_version"] == "2" and result["resumed"] is True, "the same data: v2 again, no v3"
    assert result["dry_run"] is True and result["forced"] is True and result["promoted"] is False
    assert step.aliases[CHAMPION] == "1" and step.aliases[PREVIOUS] is None
    decision_row = next(r for r in step.decisions if r["run_id"] == "test-dry-run")
    assert decision_row["model_version"] == "2"
    assert decision_row["dry_run"] is True and decision_row["forced"] is True
    assert decision_row["promote"] is True and decision_row["promoted"] is False
    assert decision_row["reason"] == "just looking"
    assert step.promotions == [] and step.champion_on_day == "1"


def test_force_promote_with_a_reason_promotes_the_existing_challenger_and_records_it(retrain_chain):
    step = retrain_chain.forced
    result = step.result
    assert result["model_version"] == "2" and result["resumed"] is True
    assert result["forced"] is True and result["promoted"] is True and result["champion_before"] == "1"
    assert step.aliases == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "2"}

    # Every decision about v2 as of that day is there, each run's own: history only grows.
    assert sorted(r["run_id"] for r in step.decisions) == ["test-dry-run", "test-forced", "test-next"]
    decision_row = next(r for r in step.decisions if r["run_id"] == "test-forced")
    assert decision_row["forced"] is True and decision_row["promoted"] is True
    assert decision_row["reason"] == FORCE_REASON
    decision = json.loads(decision_row["decision_json"])
    assert decision["forced"] is True and decision["forced_reason"] == FORCE_REASON
    assert not _check(decision, "improvement")["passed"]  # the gate alone said no

    promotion = _row(step.promotions, "2")
    assert promotion["forced"] is True and promotion["reason"] == FORCE_REASON
    assert promotion["previous_version"] == "1"
    assert step.champion_on_day == "2"
    assert_no_stages(Registry(retrain_chain.settings))


def test_retrain_closes_its_figures(retrain_chain):
    # mlflow.log_figure does not close a figure: left open, a long-lived worker leaks four per retrain.
    steps = (retrain_chain.first, retrain_chain.second, retrain_chain.dry_forced, retrain_chain.forced)
    assert [step.new_figures for step in steps] == [0, 0, 0, 0]


def test_a_retry_after_a_crash_resumes_the_registered_challenger(retrain_chain):
    crashed, retried = retrain_chain.crashed, retrain_chain.retried
    # The first try registered v3 and made it champion, then died before the record.
    assert crashed.error == "lake unreachable"
    assert crashed.versions == ["1", "2", "3"]
    assert crashed.aliases[CHAMPION] == "3" and crashed.aliases[PREVIOUS] == "2"
    assert "test-crash" not in {r["run_id"] for r in crashed.promotions}

    result = retried.result
    assert result["resumed"] is True
    assert result["model_version"] == "3", "the retry reuses the version, it does not train a fourth"
    assert result["champion_before"] == "2" and result["promoted"] is True
    assert retried.aliases == {CHAMPION: "3", PREVIOUS: "2", CHALLENGER: "3"}
    assert [v.version for v in Registry(retrain_chain.settings).versions()] == ["1", "2", "3"]

    row = _row(retried.decisions, "3")
    assert row["promoted"] is True and row["champion_version"] == "2" and row["reason"] == FORCE_REASON
    promotion = _row(retried.promotions, "3")
    assert promotion["previous_version"] == "2" and promotion["run_id"] == "test-crash"
    assert retried.champion_on_day == "3"


def test_rerunning_a_finished_retrain_duplicates_nothing(retrain_chain):
    retried, rerun = retrain_chain.retried, retrain_chain.rerun
    assert rerun.result["model_version"] == "3" and rerun.result["decided_before"] is True
    assert rerun.aliases == retried.aliases
    assert [v.version for v in Registry(retrain_chain.settings).versions()] == ["1", "2", "3"]
    assert _strip(rerun.decisions) == _strip(retried.decisions)
    assert _strip(rerun.promotions) == _strip(retried.promotions)


def test_an_old_week_rerun_after_the_champion_moved_rewrites_nothing(retrain_chain):
    first, old = retrain_chain.first, retrain_chain.old_week
    assert old.result["model_version"] == "1" and old.result["decided_before"] is True
    assert old.result["promoted"] is True  # what was decided then, reported as it was
    assert old.aliases[CHAMPION] == "3", "the champion stays where later decisions put it"
    assert _strip(old.decisions) == _strip(first.decisions)
    assert _strip(old.promotions) == _strip(first.promotions)
    assert [v.version for v in Registry(retrain_chain.settings).versions()] == ["1", "2", "3"]


def test_forcing_an_old_week_after_the_champion_moved_is_recorded_as_superseded(retrain_chain):
    step = retrain_chain.old_week_forced
    result = step.result
    assert result["model_version"] == "1" and result["forced"] is True and result["promoted"] is False
    assert result["reason"].startswith("superseded: v3 is champion from")
    assert step.aliases[CHAMPION] == "3"
    rows = sorted(r["run_id"] for r in step.decisions)
    assert rows == ["test", "test-old-forced"], "the first decision stays; the forced one is added"
    assert _strip(step.promotions) == _strip(retrain_chain.first.promotions)
    assert promotions.champion_on(Lake(retrain_chain.settings), dt.date.fromisoformat(retrain_chain.ds_plus(3))) == "3"
