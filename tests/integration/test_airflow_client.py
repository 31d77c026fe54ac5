"""One Airflow client for the embedded Airflow (SQLite) and the twin (PostgreSQL): the same queries,
run against metadata DBs laid out like Airflow's on both engines (a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.ops import backfill
from sluice.ops.airflow_client import AirflowClient
from sluice.ops.embedded import LocalAirflow

SCHEMA = (
    "CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, state TEXT, run_type TEXT,"
    " logical_date {ts}, start_date {ts}, end_date {ts})",
    "CREATE TABLE backfill (id INTEGER PRIMARY KEY, dag_id TEXT, completed_at {ts})",
    "CREATE TABLE backfill_dag_run (id INTEGER PRIMARY KEY, backfill_id INTEGER, dag_run_id INTEGER,"
    " exception_reason TEXT)",
    "CREATE TABLE task_instance_history (dag_id TEXT, run_id TEXT, task_id TEXT, map_index INT,"
    " try_number INT, state TEXT)",
)
DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
ROWS = {
    "dag_run": [
        (1, "churn__nightly_etl", "backfill__2026-03-02T00:00:00+00:00", "success", "backfill",
         DAY, DAY + dt.timedelta(days=1, minutes=1), DAY + dt.timedelta(days=1, minutes=3)),
        (2, "churn__nightly_etl", "backfill__2026-03-03T00:00:00+00:00", "running", "backfill",
         DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1, minutes=2), None),
        (3, "churn__batch_score", "manual__x", "queued", "manual", DAY, None, None),
        (4, "churn__ingest_raw", "manual__y", "failed", "manual", DAY, DAY, DAY + dt.timedelta(minutes=1)),
    ],
    "backfill": [(1, "churn__nightly_etl", None)],
    "backfill_dag_run": [(1, 1, 1, None), (2, 1, 2, None), (3, 1, None, "already exists")],
    "task_instance_history": [("churn__nightly_etl", "backfill__2026-03-02T00:00:00+00:00", "build_features", -1, 1,
                               "failed")],
}


class Metadata(AirflowClient):
    """An Airflow deployment that is only its metadata DB (and its task logs)."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs = url, logs

    @property
    def metadata_url(self) -> str:
        return self.url

    @property
    def task_logs_dir(self) -> Path:
        return self.logs


def _sqlite(tmp_path: Path) -> LocalAirflow:
    home = tmp_path / "airflow"
    home.mkdir()
    with sqlite3.connect(home / "airflow.db") as conn:
        for statement in SCHEMA:
            conn.execute(statement.format(ts="TIMESTAMP"))
        for table, rows in ROWS.items():
            # Airflow's UtcDateTime on SQLite: text without the zone.
            rows = [tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v for v in r)
                    for r in rows]
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return LocalAirflow(home=home)


def _postgres(pg_dsn: str, tmp_path: Path) -> Metadata:
    import psycopg2
    from psycopg2.extensions import parse_dsn

    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        for statement in SCHEMA:
            cur.execute(statement.format(ts="TIMESTAMPTZ"))
        for table, rows in ROWS.items():
            cur.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(rows[0]))})", rows)
    p = parse_dsn(pg_dsn)
    url = f"postgresql+psycopg2://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"
    return Metadata(url, tmp_path / "logs")


@pytest.fixture(params=["sqlite", "postgres"])
def airflow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AirflowClient]:
    if request.param == "sqlite":
        yield _sqlite(tmp_path)
    else:
        yield _postgres(request.getfixturevalue("pg_dsn"), tmp_path)
        import psycopg2

        with psycopg2.connect(request.getfixturevalue("pg_dsn")) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE dag_run, backfill, backfill_dag_run, task_instance_history")


def test_runs_are_listed_alike_on_both_engines_with_times_as_iso_text(airflow: AirflowClient) -> None:
    runs = airflow.runs("churn__nightly_etl")
    assert [(r["run_id"], r["state"], r["run_type"]) for r in runs] == [
        ("backfill__2026-03-02T00:00:00+00:00", "success", "backfill"),
        ("backfill__2026-03-03T00:00:00+00:00", "running", "backfill")]
    first = runs[0]
    assert first["logical_date"].startswith("2026-03-01T00:00:00") and first["end_date"].startswith("2026-03-02T00:03")
    assert dt.datetime.fromisoformat(first["end_date"]) > dt.datetime.fromisoformat(first["start_date"])
    assert runs[1]["end_date"] is None
    assert airflow.runs("churn__drift_report") == []


def test_waiting_ends_when_every_run_finished_and_times_out_naming_the_ones_that_did_not(airflow) -> None:
    [finished] = airflow.wait_for_runs("churn__ingest_raw", 1, timeout=5, poll=0.1)
    assert finished["state"] == "failed", "failed is finished too: the caller says what it makes of it"
    with pytest.raises(TimeoutError, match=r"churn__nightly_etl: runs not finished after 0.3s: .*'running'"):
        airflow.wait_for_runs("churn__nightly_etl", 2, timeout=0.3, poll=0.1)


def test_backfills_and_retried_tries_are_read_alike(airflow: AirflowClient) -> None:
    assert airflow.incomplete_backfills("churn__nightly_etl") == 1
    assert airflow.incomplete_backfills("churn__batch_score") == 0
    with pytest.raises(TimeoutError, match="still not complete"):
        airflow.wait_for_backfills_complete("churn__nightly_etl", timeout=0.2)
    # `sluice backfill` checks what it created with the same queries, on either deployment.
    assert backfill.latest_backfill_id(airflow, "churn__nightly_etl") == 1
    assert backfill.inspect(airflow, 1) == (2, 2, {"already exists": 1})
    assert backfill.run_states(airflow, 1) == {"running": 1, "success": 1}
    assert airflow.retried_tries() == [
        "churn__nightly_etl backfill__2026-03-02T00:00:00+00:00 build_features[-1] try 1: failed"]
