"""End to end through a real Airflow (API server, scheduler, DAG processor; LocalExecutor).

The Airflow runs churn's DAGs (SLUICE_USE_CASES=churn). Both of its ingestion DAGs run as `airflow backfill create` backfills over consecutive days; re-running
days (by backfill and by a manual trigger with the partition_day param) changes no
content; a day whose defects exceed the contract's limit fails without retries and
leaves curated events and features exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
from tests.helpers import webhook_server

from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.ops.embedded import LocalAirflow, free_port
from sluice.orchestration.context import dag_id
from sluice.settings import load_settings

pytestmark = pytest.mark.e2e

USE_CASE = "churn"
TABLES = load_use_case(USE_CASE).tables
RAW_EVENTS, CURATED_EVENTS, QUARANTINE_EVENTS = TABLES.raw, TABLES.curated, TABLES.quarantine
FEATURES = TABLES.features
INGEST, ETL = dag_id(USE_CASE, "ingest_raw"), dag_id(USE_CASE, "nightly_etl")

START, END = "2026-01-01", "2026-01-06"
BAD_DAY = "2026-01-07"
DAYS = [str(dt.date(2026, 1, 1) + dt.timedelta(days=i)) for i in range(6)]


@pytest.fixture(scope="module")
def webhook():
    """A real HTTP endpoint for the alert connection (tests/helpers.py's webhook_server)."""
    with webhook_server() as served:
        yield served


def _posted(webhook) -> list[dict]:
    """The JSON bodies POSTed to the webhook so far."""
    return [body for _, body in webhook[1]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, webhook):
    root = tmp_path_factory.mktemp("e2e")
    lake_uri = (root / "lake").as_uri()
    env = {
        "AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK": webhook[0],
        # nightly_etl's Deadline Alert at 1.2 s after a run is queued: every run of it is late.
        "SLUICE_DEADLINE_NIGHTLY_ETL_MINUTES": "0.02",
        "SLUICE_LAKE_URI": lake_uri,
        "SLUICE_USE_CASES": USE_CASE,
        "SLUICE_SIM_CUSTOMERS": "2000",
        "SLUICE_SIM_DEFECT_RATE": "0.3",
        "SLUICE_SIM_DEFECT_DAYS": BAD_DAY,  # only this day is spoiled
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    airflow.migrate()
    airflow.apply_settings()
    airflow.start()
    try:
        airflow.wait_until_healthy()
        airflow.wait_for_dags([INGEST, ETL])
        yield airflow, Lake(load_settings(lake_uri=lake_uri, use_cases=[USE_CASE], use_case=USE_CASE))
    finally:
        airflow.stop()


def _contents(lake: Lake, table, days=DAYS) -> pd.DataFrame:
    frame = lake.read_partitions(table, days).to_pandas()
    return frame.sort_values(list(frame.columns[:2]), ignore_index=True)


def _run_id(day: str) -> str:
    """Backfill run ids carry run_after, the end of the day's data interval."""
    return f"backfill__{dt.date.fromisoformat(day) + dt.timedelta(days=1)}T00:00:00+00:00"


def _backfill_and_wait(airflow: LocalAirflow, dag_id: str, start: str, end: str, reprocess: str = "failed"):
    """Create a backfill and wait until every run of the DAG has finished."""
    before = {r["run_id"] for r in airflow.runs(dag_id)}
    airflow.backfill(dag_id, start, end, reprocess=reprocess)
    n_days = (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1
    days = [str(dt.date.fromisoformat(start) + dt.timedelta(days=i)) for i in range(n_days)]
    return airflow.wait_for_runs(dag_id, len(before | {_run_id(d) for d in days}), timeout=900)


def test_backfills_run_both_dags_through_airflow(stack, webhook) -> None:
    airflow, lake = stack
    runs = _backfill_and_wait(airflow, INGEST, START, END)
    assert [r["state"] for r in runs] == ["success"] * len(DAYS)
    runs = _backfill_and_wait(airflow, ETL, START, END)
    assert [r["state"] for r in runs] == ["success"] * len(DAYS)

    # Each run of nightly_etl missed its (1.2 s) deadline: the scheduler's Deadline Alert called
    # sluice's callback, which POSTed the notice to the alert webhook. ingest_raw's (3 h) did not.
    run_ids = {r["run_id"] for r in runs}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and {n["run_id"] for n in _posted(webhook) if n.get("deadline")} < run_ids:
        time.sleep(2)
    late = [n for n in _posted(webhook) if n.get("deadline")]
    assert {n["run_id"] for n in late} == run_ids, late
    assert all(n["dag_id"] == ETL and "is late: not done by" in n["text"] for n in late)
    assert sorted(n["ds"] for n in late) == DAYS

    lake_dir = Path(urlparse(lake.root).path)
    assert lake_dir.name == USE_CASE, "churn's tables live under its own prefix of the lake"
    for table in (RAW_EVENTS, CURATED_EVENTS, FEATURES):
        assert lake.partitions(table) == DAYS, table.name
        assert (lake_dir / table.name / "_delta_log").is_dir(), table.name
    # Within the population's activity window, day D's features hold one row per
    # customer seen in the curated events up to D.
    rows = lake.partition_rows(FEATURES)
    curated = _contents(lake, CURATED_EVENTS)
    seen = {d: curated.loc[curated["event_time"].dt.strftime("%Y-%m-%d") <= d, "customer_id"].nunique() for d in DAYS}
    assert rows == seen and seen[DAYS[0]] > 100, (rows, seen)
    # The asset events say which Delta version of which day each update wrote, and how many rows.
    events = {}
    for name, extra in airflow.sql(
        "SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name LIKE :names",
        names="sluice.churn.%",
    ):
        events.setdefault(name, []).append(json.loads(extra))
    features_events = {e["ds"]: e for e in events["sluice.churn.features"]}
    assert sorted(features_events) == DAYS
    assert {d: e["rows"] for d, e in features_events.items()} == rows
    assert max(e["delta_version"] for e in features_events.values()) == lake.version(FEATURES)
    curated_events = {e["ds"]: e for e in events["sluice.churn.curated"]}
    assert all(e["rows_in"] == e["rows"] + e["rows_quarantined"] + e["duplicates_removed"]
               for e in curated_events.values()), curated_events
    assert sorted(e["ds"] for e in events["sluice.churn.raw"]) == DAYS

    lineage = lake.lineage(FEATURES)
    assert lineage is not None
    assert lineage.dag_id == ETL
    assert lineage.run_id.startswith("backfill__")
    assert lineage.ds == END
    assert set(lineage.inputs) >= {CURATED_EVENTS.name, TABLES.state.name}
    assert TABLES.state.name == "state/customer_cumulative"


def test_rerunning_days_changes_no_content(stack) -> None:
    airflow, lake = stack
    before = {t.name: _contents(lake, t) for t in (RAW_EVENTS, CURATED_EVENTS, FEATURES)}
    versions = {t.name: lake.version(t) for t in (RAW_EVENTS, CURATED_EVENTS, FEATURES)}

    _backfill_and_wait(airflow, INGEST, "2026-01-03", "2026-01-04", reprocess="completed")
    _backfill_and_wait(airflow, ETL, "2026-01-03", "2026-01-04", reprocess="completed")
    run_id = airflow.trigger(ETL, conf={"partition_day": "2026-01-05"})
    runs = airflow.wait_for_runs(ETL, len(DAYS) + 1, timeout=600)
    assert {r["run_id"]: r["state"] for r in runs}[run_id] == "success"

    for table in (RAW_EVENTS, CURATED_EVENTS, FEATURES):
        assert lake.version(table) > versions[table.name], f"{table.name} was not rewritten"
        pd.testing.assert_frame_equal(_contents(lake, table), before[table.name], obj=table.name)


def test_day_over_the_defect_limit_fails_cleanly(stack, webhook) -> None:
    airflow, lake = stack
    runs = _backfill_and_wait(airflow, INGEST, BAD_DAY, BAD_DAY)
    assert all(r["state"] == "success" for r in runs)
    versions = {t.name: lake.version(t) for t in (CURATED_EVENTS, FEATURES)}
    partitions = {t.name: lake.partitions(t) for t in (CURATED_EVENTS, FEATURES)}

    runs = _backfill_and_wait(airflow, ETL, BAD_DAY, BAD_DAY)
    bad = [r for r in runs if r["run_id"] == _run_id(BAD_DAY)]
    assert bad and bad[0]["state"] == "failed", runs

    # Nothing downstream moved; the spoiled rows are kept in quarantine.
    for table in (CURATED_EVENTS, FEATURES):
        assert lake.version(table) == versions[table.name]
        assert lake.partitions(table) == partitions[table.name]
    quarantined = lake.read_partition(QUARANTINE_EVENTS, BAD_DAY).to_pandas()
    assert len(quarantined) > 0.2 * lake.partition_rows(RAW_EVENTS)[BAD_DAY]
    assert quarantined["failed_checks"].str.contains("amount: parse_number").any()

    # The task failed once, without retries, and said why.
    log_dir = Path(airflow.home) / "logs" / f"dag_id={ETL}" / f"run_id={bad[0]['run_id']}" / "task_id=curate_events"
    attempts = sorted(p.name for p in log_dir.iterdir())
    assert attempts == ["attempt=1.log"], attempts
    text = (log_dir / "attempt=1.log").read_text()
    assert "break the contract" in text
    for column in ("event_id", "customer_id", "amount", "event_time"):
        assert column in text

    # ... and its on_failure_callback said so through the alert webhook, once, with the reason.
    notices = [n for n in _posted(webhook) if n.get("task_id") == "curate_events"]
    assert len(notices) == 1, _posted(webhook)
    assert notices[0]["dag_id"] == ETL and notices[0]["ds"] == BAD_DAY and notices[0]["run_id"] == bad[0]["run_id"]
    assert "break the contract" in notices[0]["text"] and "amount" in notices[0]["text"]


def test_sluice_backfill_creates_its_runs_with_the_scheduler_running(stack) -> None:
    """`sluice backfill` (the README's path) with the scheduler running: the runs exist, or it says why not."""
    import subprocess
    import sys

    airflow, lake = stack
    sluice = [sys.executable, "-m", "sluice.ops.cli"]
    env = airflow.env()
    days = ("2026-01-08", "2026-01-10")
    done = subprocess.run(
        [*sluice, "backfill", INGEST, "--from", days[0], "--to", days[1], "--wait", "--timeout", "900",
         "--home", str(airflow.home), "--project", str(airflow.project)],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 run(s)" in done.stdout and "finished: 3 success" in done.stdout, done.stdout
    assert {"2026-01-08", "2026-01-09", "2026-01-10"} <= set(lake.partitions(RAW_EVENTS))

    # The same days again, skipping those that ran: nothing new, and it says so.
    again = subprocess.run(
        [*sluice, "backfill", INGEST, "--from", days[0], "--to", days[1], "--reprocess-behavior", "none",
         "--home", str(airflow.home), "--project", str(airflow.project)],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 run(s)" in again.stdout and "3 already exists" in again.stdout, again.stdout

    # A DAG that does not exist fails loudly, naming it.
    unknown = subprocess.run(
        [*sluice, "backfill", "no_such_dag", "--from", days[0], "--to", days[1], "--home", str(airflow.home),
         "--project", str(airflow.project)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert unknown.returncode == 1 and "no_such_dag" in unknown.stderr, unknown.stderr[-2000:]
