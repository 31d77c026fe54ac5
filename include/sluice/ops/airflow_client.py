"""One way to drive an Airflow from outside it: the embedded one (SQLite) and the compose twin (PostgreSQL).

:class:`AirflowClient` is what :class:`~sluice.ops.embedded.LocalAirflow` and
:class:`~sluice.ops.twin.Cluster` share: the ``airflow`` CLI of the virtualenv with the
deployment's environment (for what changes state: ``backfill create``, ``dags trigger``),
and read-only SQL on the metadata DB through SQLAlchemy (for what is read often, so cheaply:
runs, backfills, retried tries), with the same queries and named parameters on SQLite and
PostgreSQL. On it: one way to list runs, one wait loop, one backfill.

A subclass says where the CLI is and with which environment (:meth:`airflow_env`), where the
metadata DB and the task logs are (:attr:`task_logs_dir`), and whether its processes still run (:meth:`check_alive`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TERMINAL = {"success", "failed"}

# Every finished earlier try that did not succeed: Airflow archives each try in
# task_instance_history (a sensor's reschedule is not a try; a successful try archived by a
# re-run, clear or backfill, is no retry).
RETRIED_TRIES_SQL = (
    "SELECT dag_id, run_id, task_id, map_index, try_number, state FROM task_instance_history"
    " WHERE state IS NULL OR state != 'success' ORDER BY dag_id, run_id, task_id, try_number"
)
RUNS_SQL = (
    "SELECT run_id, state, run_type, logical_date, start_date, end_date FROM dag_run WHERE dag_id = :dag_id"
    " ORDER BY logical_date, run_id"
)


class AirflowClientError(RuntimeError):
    """An ``airflow`` CLI call failed, or the metadata DB says something did not happen."""


@dataclass(frozen=True)
class Backfill:
    """One `airflow backfill create`: the runs of ``dag_id`` for the logical dates start..end."""

    dag_id: str
    start: str
    end: str
    max_active_runs: int = 8
    reprocess: str = "failed"  # --reprocess-behavior: none, failed or completed


def json_output(text: str) -> list | dict:
    """The JSON document in a CLI's output; Airflow may print warnings before it."""
    for line in reversed(text.splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    return []


def describe_retried_tries(rows: Iterable[Sequence[Any]], logs: Path, tail: int = 40) -> list[str]:
    """Rows of RETRIED_TRIES_SQL, each with the end of its log under ``logs`` (Airflow's layout)."""
    out = []
    for dag_id, run_id, task_id, map_index, attempt, state in rows:
        out.append(f"{dag_id} {run_id} {task_id}[{map_index}] try {attempt}: {state}")
        folder = logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        for log_file in sorted(folder.glob(f"**/attempt={attempt}.log")):
            lines = log_file.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {log_file} (last {len(lines)} lines)")
            out.extend(lines)
    return out


def _text(value: Any) -> Any:
    """A timestamp as ISO text, as SQLite stores it and PostgreSQL does not."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value) >= 19 and value[10] == " ":
        return value[:10] + "T" + value[11:]
    return value


class AirflowClient:
    """The CLI and the metadata DB of one Airflow deployment (see the module docstring)."""

    cli_error: type[Exception] = AirflowClientError

    # -- what a deployment says ------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        raise NotImplementedError

    def airflow_env(self) -> dict[str, str]:
        """The environment the ``airflow`` CLI runs with."""
        raise NotImplementedError

    @property
    def metadata_url(self) -> str:
        """SQLAlchemy URL of the metadata DB, for reading."""
        raise NotImplementedError

    @property
    def task_logs_dir(self) -> Path:
        """Where the tasks' logs are (Airflow's base_log_folder)."""
        raise NotImplementedError

    def check_alive(self) -> None:
        """Raise when a process of the deployment has exited."""

    # -- the CLI ---------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``airflow *args``; a read that collides with a writer of SQLite is retried."""
        env = self.airflow_env() | {"PYTHONWARNINGS": "ignore"}  # warnings would land on stdout, before the JSON
        for attempt in range(6):
            result = subprocess.run(
                [str(self.bin_dir / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout
            )
            if result.returncode == 0 or "database is locked" not in result.stderr or args[0] == "backfill":
                break
            log.warning("airflow %s: database is locked, retrying", " ".join(args))
            time.sleep(1 + attempt)
        if check and result.returncode != 0:
            raise self.cli_error(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    # -- the metadata DB -------------------------------------------------------------
    @cached_property
    def _engine(self) -> Any:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        url = self.metadata_url
        if url.startswith("sqlite:///"):
            # Read-only, and patient: SQLite lets one writer in at a time.
            path = url.removeprefix("sqlite:///")
            return sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=NullPool,
                                            connect_args={"timeout": 120})
        return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (named parameters: ``:dag_id``) on the metadata DB."""
        import sqlalchemy

        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(query), params)]

    # -- runs ------------------------------------------------------------------------
    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of ``dag_id``, oldest first: run_id, state, run_type and its times (ISO text)."""
        keys = ("run_id", "state", "run_type", "logical_date", "start_date", "end_date")
        return [dict(zip(keys, map(_text, row), strict=True)) for row in self.sql(RUNS_SQL, dag_id=dag_id)]

    def wait_for_runs(self, dag_id: str, expected: int, timeout: float = 900, poll: float = 3) -> list[dict]:
        """Wait until ``expected`` runs of ``dag_id`` exist and all have finished."""
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.runs(dag_id)
            if len(runs) >= expected and all(r["state"] in TERMINAL for r in runs):
                retried = self.retried_tries()
                if retried:  # succeeded in the end, but a retry hides its cause: show it
                    log.warning("tasks that needed a retry so far:\n%s", "\n".join(retried))
                return runs
            time.sleep(poll)
        states = {r["run_id"]: r["state"] for r in runs}
        raise TimeoutError(f"{dag_id}: runs not finished after {timeout}s: {states}")

    def trigger(self, dag_id: str, conf: Mapping[str, object] | None = None, run_id: str | None = None) -> str:
        """``airflow dags trigger``; returns the new run's id."""
        args = ["dags", "trigger", dag_id, "-o", "json"]
        if conf:
            args += ["--conf", json.dumps(conf)]
        if run_id:
            args += ["--run-id", run_id]
        runs = json_output(self.cli(*args).stdout)
        return str(runs[0]["dag_run_id"])

    def task_instances(self) -> list[dict[str, Any]]:
        keys = ("dag_id", "run_id", "task_id", "map_index", "state", "hostname", "try_number", "start_date",
                "end_date", "pid")
        rows = self.sql(f"SELECT {', '.join(keys)} FROM task_instance ORDER BY dag_id, run_id, task_id")
        return [dict(zip(keys, map(_text, row), strict=True)) for row in rows]

    def retried_tries(self, tail: int = 40) -> list[str]:
        """Every earlier try of a task that was retried, with the end of its log.

        A retry that succeeds hides its cause from the run's state: this is how a test run or
        the demo shows it.
        """
        return describe_retried_tries(self.sql(RETRIED_TRIES_SQL), self.task_logs_dir, tail)

    # -- backfills -------------------------------------------------------------------
    def incomplete_backfills(self, dag_id: str) -> int:
        """Backfills of ``dag_id`` not marked complete yet."""
        rows = self.sql("SELECT count(*) FROM backfill WHERE dag_id = :dag_id AND completed_at IS NULL", dag_id=dag_id)
        return int(rows[0][0])

    def wait_for_backfills_complete(self, dag_id: str, timeout: float = 900) -> None:
        """Airflow runs one backfill of a DAG at a time, and marks a finished one complete only
        every 30 s: wait for that before creating the next."""
        deadline = time.monotonic() + timeout
        while self.incomplete_backfills(dag_id):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"a backfill of {dag_id} is still not complete after {timeout}s")
            time.sleep(3)

    def backfill(self, dag_id: str, start: str, end: str, max_active_runs: int = 8, reprocess: str = "failed") -> None:
        """``airflow backfill create`` of ``dag_id`` for the logical dates start..end."""
        self.backfills([Backfill(dag_id, start, end, max_active_runs, reprocess)])

    def backfills(self, requests: Iterable[Backfill]) -> None:
        """Create each backfill in order, each after the DAG's earlier one completed."""
        for request in requests:
            self.wait_for_backfills_complete(request.dag_id)
            self.create_backfill(request)

    def create_backfill(self, request: Backfill) -> None:
        """``airflow backfill create``; a SQLite lock error that left nothing behind is retried."""
        dag_id = request.dag_id
        for attempt in range(4):
            result = self.cli(
                "backfill", "create", "--dag-id", dag_id, "--from-date", request.start, "--to-date", request.end,
                "--max-active-runs", str(request.max_active_runs), "--reprocess-behavior", request.reprocess,
                check=False,
            )
            if result.returncode == 0:
                return
            # A lock error leaves either nothing (Airflow cleaned up: safe to retry) or
            # a backfill without its runs (not safe: say so rather than guess).
            if "database is locked" not in result.stderr or attempt == 3 or self.incomplete_backfills(dag_id):
                raise self.cli_error(
                    f"airflow backfill create --dag-id {dag_id} failed ({result.returncode}):\n"
                    f"{result.stderr[-4000:]}"
                )
            log.warning("airflow backfill create %s: database is locked, retrying", dag_id)
            time.sleep(2 + 3 * attempt)
