"""LocalAirflow's report of retried tries, read from a metadata DB laid out like Airflow's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sluice.ops.embedded import LocalAirflow


def _airflow_home(tmp_path: Path, rows: list[tuple]) -> LocalAirflow:
    home = tmp_path / "airflow"
    home.mkdir()
    with sqlite3.connect(home / "airflow.db") as conn:
        conn.execute(
            "CREATE TABLE task_instance_history (dag_id TEXT, run_id TEXT, task_id TEXT, map_index INT,"
            " try_number INT, state TEXT)"
        )
        conn.executemany("INSERT INTO task_instance_history VALUES (?, ?, ?, ?, ?, ?)", rows)
    return LocalAirflow(home=home)


def test_a_retried_try_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    airflow = _airflow_home(
        tmp_path,
        [
            ("weekly_retrain", "backfill__x", "retrain_and_gate", -1, 1, "failed"),
            ("batch_score", "backfill__y", "score", -1, 1, "success"),  # archived by a re-run, not a retry
        ],
    )
    log = airflow.home / "logs/dag_id=weekly_retrain/run_id=backfill__x/task_id=retrain_and_gate/attempt=1.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\nConnectionError: lake unreachable\n")

    report = airflow.retried_tries(tail=3)
    assert report[0] == "weekly_retrain backfill__x retrain_and_gate[-1] try 1: failed"
    assert report[-1] == "ConnectionError: lake unreachable"
    assert len(report) == 5  # the header, the log's name, its last 3 lines
    assert not any("batch_score" in line for line in report)


def test_no_metadata_db_means_nothing_to_report(tmp_path: Path) -> None:
    assert LocalAirflow(home=tmp_path / "nowhere").retried_tries() == []
