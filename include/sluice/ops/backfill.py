"""`sluice backfill DAG --from D1 --to D2`: a backfill that is created, or says why not (any AirflowClient).

`airflow backfill create` on SQLite, with a scheduler running, sometimes prints "Created
backfill Dag run." and leaves no backfill and no run: a lock error inside it makes Airflow
delete what it had committed. This command creates the backfill, then reads the metadata
DB to check that it exists and that every run it lists exists too; when not, it creates it
again (a few times), and otherwise fails with what it found. With ``--wait`` it follows the
runs to the end and fails when one of them does.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from sluice.ops.airflow_client import AirflowClient

log = logging.getLogger(__name__)

REPROCESS = ("none", "failed", "completed")
FINISHED = ("success", "failed", "skipped", "upstream_failed")


class BackfillError(RuntimeError):
    """The backfill could not be created, or some of its runs did not succeed."""


@dataclass
class BackfillReport:
    dag_id: str
    backfill_id: int
    runs: int  # runs the backfill created
    skipped: dict[str, int] = field(default_factory=dict)  # logical dates not run, by Airflow's reason
    attempts: int = 1
    states: dict[str, int] = field(default_factory=dict)  # with --wait: runs by final state

    def describe(self) -> str:
        parts = [f"backfill {self.backfill_id} of {self.dag_id}: {self.runs} run(s)"]
        if self.skipped:
            parts.append("not run: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))
        if self.states:
            parts.append("finished: " + ", ".join(f"{n} {state}" for state, n in sorted(self.states.items())))
        if self.attempts > 1:
            parts.append(f"created on attempt {self.attempts}")
        return "; ".join(parts)


def _query(airflow: AirflowClient, sql: str, **params: object) -> list[tuple]:
    metadata_db = getattr(airflow, "metadata_db", None)
    if metadata_db is not None and not metadata_db.exists():
        raise BackfillError(f"no metadata DB at {metadata_db}: start the embedded Airflow first (make serve)")
    return airflow.sql(sql, **params)


def latest_backfill_id(airflow: AirflowClient, dag_id: str) -> int:
    return int(_query(airflow, "SELECT max(id) FROM backfill WHERE dag_id = :dag_id", dag_id=dag_id)[0][0] or 0)


def inspect(airflow: AirflowClient, backfill_id: int) -> tuple[int, int, dict[str, int]]:
    """(runs listed, of them present in dag_run, logical dates skipped by reason) of one backfill."""
    rows = _query(
        airflow,
        "SELECT b.dag_run_id, b.exception_reason, r.id FROM backfill_dag_run b "
        "LEFT JOIN dag_run r ON r.id = b.dag_run_id WHERE b.backfill_id = :backfill_id",
        backfill_id=backfill_id,
    )
    listed = [r for r in rows if r[0] is not None]
    present = [r for r in listed if r[2] is not None]
    skipped = Counter(str(r[1]) for r in rows if r[0] is None and r[1])
    return len(listed), len(present), dict(skipped)


def run_states(airflow: AirflowClient, backfill_id: int) -> dict[str, int]:
    rows = _query(
        airflow,
        "SELECT r.state, count(*) FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id "
        "WHERE b.backfill_id = :backfill_id GROUP BY r.state",
        backfill_id=backfill_id,
    )
    return {str(state): int(n) for state, n in rows}


def create(
    airflow: AirflowClient,
    dag_id: str,
    start: dt.date,
    end: dt.date,
    *,
    max_active_runs: int = 8,
    reprocess: str = "failed",
    attempts: int = 3,
    wait_for_previous_s: float = 900,
) -> BackfillReport:
    """Create the backfill of ``dag_id`` for the logical dates start..end and check it is really there."""
    if end < start:
        raise BackfillError(f"--to {end} is before --from {start}")
    if reprocess not in REPROCESS:
        raise BackfillError(f"--reprocess-behavior must be one of {REPROCESS}, not {reprocess!r}")
    # Airflow runs one backfill of a DAG at a time: wait for the one before to be marked complete.
    airflow.wait_for_backfills_complete(dag_id, timeout=wait_for_previous_s)
    problem = ""
    for attempt in range(1, attempts + 1):
        before = latest_backfill_id(airflow, dag_id)
        result = airflow.cli(
            "backfill", "create", "--dag-id", dag_id, "--from-date", start.isoformat(), "--to-date", end.isoformat(),
            "--max-active-runs", str(max_active_runs), "--reprocess-behavior", reprocess, check=False,
        )
        after = latest_backfill_id(airflow, dag_id)
        if result.returncode != 0 and "database is locked" not in result.stderr:
            # Airflow refused (unknown DAG, nothing to run, a backfill still running): not ours to retry.
            raise BackfillError(
                f"airflow backfill create --dag-id {dag_id} failed ({result.returncode}):\n{result.stderr[-3000:]}"
            )
        if after > before:
            listed, present, skipped = inspect(airflow, after)
            if listed and listed == present:
                return BackfillReport(dag_id, after, listed, skipped, attempts=attempt)
            if not listed and skipped:
                return BackfillReport(dag_id, after, 0, skipped, attempts=attempt)  # every date ran already
            problem = (f"backfill {after} lists {listed} run(s) of which {present} exist, "
                       f"{sum(skipped.values())} date(s) skipped")
            if listed:  # runs are missing: a half-created backfill must not be papered over
                raise BackfillError(f"airflow backfill create --dag-id {dag_id}: {problem}")
        else:
            problem = "no backfill was recorded" + (" (database is locked)" if result.returncode else
                                                    f" although Airflow printed: {result.stdout.strip()[-300:]!r}")
        log.warning("backfill of %s, attempt %d: %s; creating it again", dag_id, attempt, problem)
        time.sleep(2 + 3 * attempt)
    raise BackfillError(f"airflow backfill create --dag-id {dag_id} {start}..{end}: {problem} after {attempts} attempts")


def wait(airflow: AirflowClient, report: BackfillReport, timeout_s: float) -> BackfillReport:
    """Follow the backfill's runs until each has finished; fail unless all succeeded."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = run_states(airflow, report.backfill_id)
        if sum(states.values()) >= report.runs and all(s in FINISHED for s in states):
            report.states = states
            break
        if time.monotonic() > deadline:
            raise BackfillError(f"{report.describe()}: not finished within {timeout_s:.0f} s ({states})")
        time.sleep(5)
    if set(report.states) - {"success"}:
        raise BackfillError(f"{report.describe()}: not every run succeeded (`airflow dags list-runs {report.dag_id}`)")
    return report
