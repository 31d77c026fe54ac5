"""Two use cases in one deployment, end to end through a real Airflow (LocalExecutor).

SLUICE_USE_CASES=churn,purchases: the DAG folder holds ten DAGs, five per use case. Each
use case's warm-up history is loaded in process (churn: 90 warm-up days and a 30-day label
horizon; purchases: 180 and 90, read from its usecase.yaml), both at once in two processes;
then Airflow runs a few days of ingest_raw + nightly_etl for each, one weekly_retrain each
(both promote their first model on the floors), and batch_score and drift_report for the
two days after each promotion. Each use case must keep to its own lake prefix, model,
predictions (keyed by its own key type) and drift history.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.airflow_client import Backfill, json_output
from sluice.ops.embedded import LocalAirflow, free_port
from sluice.orchestration.context import STAGES, dag_id
from sluice.settings import Settings, load_settings
from sluice.stages import etl as pipeline
from sluice.stages import promotions
from sluice.tables import DRIFT_HISTORY, MODEL_DECISIONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2700)]

ENTITIES = 1500
HISTORY_START = dt.date(2025, 1, 2)  # a Thursday, like 2026-01-01: the weekdays of the plans keep


@dataclass(frozen=True)
class Plan:
    """What one use case runs: its history in process, then Airflow from the day after."""

    name: str
    history_end: str  # the in-process load ends here; Airflow ingests the days after it
    etl_to: str
    retrain_monday: str  # the weekly run's logical date: it decides as of the Sunday after
    as_of: str
    scored: tuple[str, ...]  # the champion decided as of `as_of` takes effect the next day

    @property
    def etl_from(self) -> str:
        return (dt.date.fromisoformat(self.history_end) + dt.timedelta(days=1)).isoformat()

    @property
    def etl_days(self) -> int:
        return (dt.date.fromisoformat(self.etl_to) - dt.date.fromisoformat(self.etl_from)).days + 1


# A model learns from matured labels after the warm-up, split with a purge of one label horizon
# between train (14 days), validation (7) and holdout (7). churn: 90 warm-up days, a 30-day
# horizon, so its Sunday 2025-08-03 has 94 matured snapshot days (04-02 .. 07-04), 88 needed.
# purchases: 180 warm-up days and a 90-day horizon (208 needed), so its Sunday 2026-04-26 has 210
# (2025-07-01 .. 2026-01-26). The simulated world starts 52 weeks before the default epoch
# (SLUICE_SIM_EPOCH): purchases needs 480 days, and Airflow refuses to backfill future dates.
PLANS = {
    "churn": Plan("churn", "2025-08-02", "2025-08-05", "2025-07-28", "2025-08-03", ("2025-08-04", "2025-08-05")),
    "purchases": Plan(
        "purchases", "2026-04-25", "2026-04-28", "2026-04-20", "2026-04-26", ("2026-04-27", "2026-04-28")
    ),
}


def _load_history(settings: Settings, end: str) -> int:
    """In a process of its own: one use case's history (both run at once on the two cores)."""
    return len(pipeline.load_history(settings, HISTORY_START, dt.date.fromisoformat(end)))


def _prepare(airflow: LocalAirflow) -> None:
    airflow.migrate()
    airflow.serialize_dags()
    airflow.apply_settings()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("two")
    env = {
        "SLUICE_USE_CASES": "churn,purchases",
        "SLUICE_LAKE_URI": (root / "lake").as_uri(),
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": str(ENTITIES),
        "SLUICE_SIM_EPOCH": HISTORY_START.isoformat(),
        "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "0",
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    base = load_settings(
        lake_uri=env["SLUICE_LAKE_URI"], mlflow_tracking_uri=env["SLUICE_MLFLOW_TRACKING_URI"],
        sim_customers=ENTITIES, sim_epoch=HISTORY_START, use_cases=["churn", "purchases"], use_case="churn",
    )
    settings = {name: base.for_use_case(name) for name in PLANS}
    # Both histories at once, each in its own (spawned) process, while the metadata DB is migrated.
    spawn = multiprocessing.get_context("spawn")
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as loaders, ThreadPoolExecutor(1) as prep:
        prepared = prep.submit(_prepare, airflow)
        loaded = {name: loaders.submit(_load_history, settings[name], plan.history_end) for name, plan in PLANS.items()}
        prepared.result()
        for name, future in loaded.items():
            assert future.result() > 0, name
    print(f"histories of both (in process) and the metadata DB: {time.monotonic() - t0:.0f}s", flush=True)
    airflow.backfills(
        Backfill(dag_id(plan.name, stage), plan.etl_from, plan.etl_to) for plan in PLANS.values()
        for stage in ("ingest_raw", "nightly_etl")
    )
    airflow.start()
    try:
        airflow.wait_until_healthy(timeout=300)
        airflow.wait_for_dags([dag_id(name, stage) for name in PLANS for stage in STAGES])
        yield airflow, settings
    finally:
        retried = airflow.retried_tries()
        if retried:
            print("tasks that needed a retry:\n" + "\n".join(retried))
        airflow.stop()


def _all_succeed(airflow: LocalAirflow, name: str, stage: str, expected: int, timeout: float = 1500) -> None:
    runs = airflow.wait_for_runs(dag_id(name, stage), expected, timeout=timeout)
    assert all(r["state"] == "success" for r in runs), (dag_id(name, stage), runs)


@pytest.fixture(scope="module")
def loop(stack):
    """Each use case through Airflow: ETL, then one retraining each, then scoring and drift for two days each.

    The backfills of both use cases are created together (one pause of the scheduler each
    time); the retrainings run one after the other (the training pool), and drift_report's
    sensor waits for the predictions of its day.
    """
    airflow, settings = stack
    t0 = time.monotonic()
    for plan in PLANS.values():
        for stage in ("ingest_raw", "nightly_etl"):
            _all_succeed(airflow, plan.name, stage, plan.etl_days)
    print(f"ingest_raw + nightly_etl of both: {time.monotonic() - t0:.0f}s", flush=True)
    t0 = time.monotonic()
    airflow.backfills(
        Backfill(dag_id(plan.name, "weekly_retrain"), plan.retrain_monday, plan.retrain_monday, max_active_runs=1)
        for plan in PLANS.values()
    )
    for plan in PLANS.values():
        _all_succeed(airflow, plan.name, "weekly_retrain", 1)
    print(f"weekly_retrain of both: {time.monotonic() - t0:.0f}s", flush=True)
    t0 = time.monotonic()
    # Scoring only after the promotion (a day scored before any champion would be skipped).
    airflow.backfills(
        Backfill(dag_id(plan.name, stage), plan.scored[0], plan.scored[-1], max_active_runs=parallel)
        for plan in PLANS.values() for stage, parallel in (("batch_score", 2), ("drift_report", 1))
    )
    for plan in PLANS.values():
        _all_succeed(airflow, plan.name, "batch_score", len(plan.scored))
        _all_succeed(airflow, plan.name, "drift_report", len(plan.scored))
    print(f"batch_score + drift_report of both: {time.monotonic() - t0:.0f}s", flush=True)
    return airflow, settings


def _days(start: dt.date, end: dt.date) -> list[str]:
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def test_the_deployment_runs_five_dags_per_use_case(stack) -> None:
    airflow, _ = stack
    listed = {d["dag_id"]: d for d in json_output(airflow.cli("dags", "list", "-o", "json").stdout)}
    assert set(listed) == {dag_id(name, stage) for name in PLANS for stage in STAGES}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_use_case_keeps_to_its_own_lake_prefix(loop, name: str) -> None:
    _, settings = loop
    plan, uc = PLANS[name], load_use_case(name)
    lake = Lake(settings[name])
    lake_dir = Path(urlparse(lake.root).path)
    assert lake.root == f"{settings[name].lake_uri}/{name}"
    assert {p.name for p in lake_dir.parent.iterdir() if p.is_dir()} >= set(PLANS), "one prefix per use case"
    # Shadow scores exist once a scored day had a challenger (a retrained model that is not champion).
    scored = lake.partitions(uc.tables.predictions)
    shadowed = any(promotions.challenger_on(lake, dt.date.fromisoformat(d)) for d in scored)
    for table in uc.tables.all():
        if table is uc.tables.shadow and not shadowed:
            assert not (lake_dir / table.name).exists(), f"{name}: shadow scores without a challenger"
            continue
        assert (lake_dir / table.name / "_delta_log").is_dir(), f"{name}: {table.name} is not under {lake_dir}"
    # Ingested by Airflow after the in-process history: every day once, no gap.
    days = _days(HISTORY_START, dt.date.fromisoformat(plan.etl_to))
    for table in (uc.tables.raw, uc.tables.curated, uc.tables.features):
        assert lake.partitions(table) == days, f"{name}: {table.name}"
    lineage = lake.lineage(uc.tables.features)
    assert lineage is not None and lineage.dag_id == dag_id(name, "nightly_etl")
    # The same table names for both (an entity called customer), with each use case's own columns.
    assert uc.tables.features.name == "features/customer_daily"
    columns = set(lake.read_partition(uc.tables.features, plan.etl_to).schema.names)
    assert set(uc.feature_columns) <= columns and uc.label in columns
    other = load_use_case(next(n for n in PLANS if n != name))
    assert not (set(other.feature_columns) - set(uc.feature_columns)) & columns, "no column of the other use case"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_use_case_has_its_own_model_with_a_champion(loop, name: str) -> None:
    _, settings = loop
    plan = PLANS[name]
    registry = Registry(settings[name])
    assert registry.name == f"sluice-{name}"
    champion = registry.by_alias(CHAMPION)
    assert champion is not None, f"{name}: no champion"
    assert champion.tags["gate.promote"] == "True"
    assert [v.version for v in registry.versions()] == [champion.version], "one retraining, one version"
    lake = Lake(settings[name])
    decisions = lake.read_partition(MODEL_DECISIONS, plan.as_of).to_pylist()
    assert len(decisions) == 1 and decisions[0]["promoted"], decisions
    assert decisions[0]["run_id"].startswith("backfill__"), "decided by the weekly_retrain backfill"
    assert json.loads(decisions[0]["decision_json"])["champion"] is None, "the first model of its use case"
    assert promotions.champion_on(lake, dt.date.fromisoformat(plan.scored[0])) == champion.version
    train = json.loads(champion.tags["training_windows"])["train"]
    warm_from = (HISTORY_START + dt.timedelta(days=load_use_case(name).warmup_days)).isoformat()
    assert train[0] >= warm_from, f"{name}: trained on a day of its warm-up ({train[0]} < {warm_from})"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_use_case_scores_its_days_keyed_by_its_own_key_type(loop, name: str) -> None:
    _, settings = loop
    plan, uc = PLANS[name], load_use_case(name)
    lake = Lake(settings[name])
    champion = Registry(settings[name]).by_alias(CHAMPION).version
    assert lake.partitions(uc.tables.predictions) == list(plan.scored)
    expected_type = pa.int64() if uc.spec.entity.type == "integer" else pa.string()
    features_rows = lake.partition_rows(uc.tables.features)
    for day in plan.scored:
        scored = lake.read_partition(uc.tables.predictions, day)
        assert scored.schema.field(uc.key).type == expected_type, scored.schema
        frame = scored.to_pandas()
        assert len(frame) == features_rows[day] == frame[uc.key].nunique()
        assert set(frame["model_version"]) == {champion}
        assert frame["score"].between(0, 1).all()
        assert set(frame["risk_band"]) <= {b.band for b in uc.spec.risk_bands}
    if uc.spec.entity.pattern:  # purchases: C + 6 or 7 digits
        assert frame[uc.key].str.fullmatch(uc.spec.entity.pattern).all()


@pytest.mark.parametrize("name", sorted(PLANS))
def test_each_use_case_has_its_own_drift_history(loop, name: str) -> None:
    _, settings = loop
    plan, uc = PLANS[name], load_use_case(name)
    lake = Lake(settings[name])
    rows = {r["ds"]: r for r in lake.read_table(DRIFT_HISTORY).to_pylist()}
    assert sorted(rows) == list(plan.scored), f"{name}: drift rows of its own days only"
    champion = Registry(settings[name]).by_alias(CHAMPION).version
    for day, row in rows.items():
        assert row["model_version"] == champion
        report = Path(urlparse(row["report_uri"]).path)
        assert report.is_relative_to(Path(urlparse(lake.root).path)), f"{name}: report {report} outside its prefix"
        assert "<html" in report.read_text()[:2000].lower(), f"the report of {day} is an HTML page"
        drifted = json.loads(row["drifted_columns"] or "[]")
        assert set(drifted) <= set(uc.feature_columns) | {"score"}, f"{name}: {drifted}"
