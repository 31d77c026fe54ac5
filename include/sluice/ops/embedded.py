"""An embedded Airflow for `make demo`, `sluice serve` and the end-to-end tests.

Starts the API server, scheduler and DAG processor as ``airflow`` subprocesses on
one machine (SQLite metadata DB, LocalExecutor), with everything under one
``AIRFLOW_HOME`` inside the project. It only runs the ``airflow`` CLI, so it works
against whatever Airflow the virtualenv holds; nothing here imports Airflow.

Each component runs in its own session (a Ctrl-C in the terminal reaches only this
process, which then stops them in order). While components run, SIGTERM and SIGHUP
are turned into the same way out as Ctrl-C (:class:`Interrupted`, a
``KeyboardInterrupt``), so that a process manager or ``kill`` stopping this process
also stops everything it started; :meth:`LocalAirflow.stop` is never cut short by a
second signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
COMPONENTS = ("api-server", "scheduler", "dag-processor")

# SQLite lets one writer in at a time and gives up after 5 s by default. On a busy
# 2-core machine that is not enough, and a lock error inside `airflow backfill create`
# makes Airflow delete runs the scheduler has already seen, which crashes the scheduler.
SQLITE_CONNECT_ARGS = {"timeout": 120}

# Airflow imports `airflow_local_settings` from $AIRFLOW_HOME/config in every process.
# On Linux the LocalExecutor forks each task from a worker that the scheduler forked,
# so what the scheduler imports once, every task inherits instead of importing again
# (about 2 s of CPU per task). LightGBM is left out: OpenMP state must not cross a fork.
LOCAL_SETTINGS = """\
# Written by sluice.ops.embedded: warm start for LocalExecutor tasks.
import sys

if sys.argv[1:2] == ["scheduler"]:
    import sluice.stages.etl  # noqa: F401  (pandas, pyarrow, deltalake, pandera)
"""
TERMINAL = {"success", "failed"}


def json_output(text: str) -> list | dict:
    """The JSON document in a CLI's output; Airflow may print warnings before it."""
    for line in reversed(text.splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    return []


# Every finished earlier try that did not succeed: Airflow archives each try in
# task_instance_history (a sensor's reschedule is not a try; a successful try archived by a
# re-run, clear or backfill, is no retry). Plain SQL for SQLite and PostgreSQL alike.
RETRIED_TRIES_SQL = (
    "SELECT dag_id, run_id, task_id, map_index, try_number, state FROM task_instance_history"
    " WHERE state IS NULL OR state != 'success' ORDER BY dag_id, run_id, task_id, try_number"
)


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


def wait_for_finished_runs(
    dag_id: str,
    expected: int,
    list_runs: Callable[[], list[dict]],
    *,
    check_alive: Callable[[], None],
    retried_tries: Callable[[], list[str]],
    timeout: float,
    poll: float,
) -> list[dict]:
    """Wait until ``expected`` runs of ``dag_id`` exist and all have finished (LocalAirflow and the twin)."""
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        check_alive()
        runs = list_runs()
        if len(runs) >= expected and all(r["state"] in TERMINAL for r in runs):
            retried = retried_tries()
            if retried:  # succeeded in the end, but a retry hides its cause: show it
                log.warning("tasks that needed a retry so far:\n%s", "\n".join(retried))
            return runs
        time.sleep(poll)
    states = {r["run_id"]: r["state"] for r in runs}
    raise TimeoutError(f"{dag_id}: runs not finished after {timeout}s: {states}")


# Signals that stop the embedded Airflow like a Ctrl-C does (SIGINT raises KeyboardInterrupt already).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while the embedded Airflow ran: leave the way a Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def terminate(procs: Iterable[subprocess.Popen], timeout: float) -> None:
    """Stop processes that were started as session leaders, and everything under them.

    SIGTERM to each one's process group; a leader still running after ``timeout`` gets
    SIGKILL with its group. Descendants are found with psutil before anything is
    signalled, so that one that left the group, or was re-parented to init when its
    parent exited, is still found: once the leaders are gone, it gets SIGTERM, and
    whatever still runs 10 s later SIGKILL.
    """
    procs = [p for p in procs if p.poll() is None]
    tree: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d still running %.0fs after SIGTERM: killing its process group", proc.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # What is left: processes outside the groups (SIGTERM now), and group members still
    # exiting; both get 10 s, then SIGKILL.
    groups = {proc.pid for proc in procs}
    alive = [child for child in tree if _running(child)]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(child.pid) not in groups:
                log.warning("pid %d (%s) outlived its Airflow component: stopping it", child.pid, _name(child))
                child.terminate()
    _gone, alive = psutil.wait_procs(alive, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie is gone; only its parent's wait() is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except psutil.Error:
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Backfill:
    """One `airflow backfill create`: the runs of ``dag_id`` for the logical dates start..end."""

    dag_id: str
    start: str
    end: str
    max_active_runs: int = 8
    reprocess: str = "failed"  # --reprocess-behavior: none, failed or completed


@dataclass
class LocalAirflow:
    home: Path
    project: Path = PROJECT_ROOT
    port: int = 8080
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Off for the demo and the tests: only backfills and manual triggers create runs, so
    # unpausing a DAG does not also start a run for yesterday.
    schedules: bool = False
    # Each scheduler serves task logs on this port: one per embedded Airflow, so that two
    # of them (a demo and a test run) never collide on the default 8793.
    log_server_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Handlers of STOP_SIGNALS that start() replaced (restored by stop()); True while stop() runs.
    _saved_handlers: dict[int, Any] = field(default_factory=dict, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    @property
    def bin_dir(self) -> Path:
        return Path(sys.executable).parent

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        secret_file = self.home / "jwt_secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        config_dir = self.home / "config"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)
        env = dict(os.environ)
        env.update(
            {
                # `airflow` starts its parts as `airflow ...` subprocesses: the venv must be on PATH.
                "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.project / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.project / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # The Test button of the Connections page (PostgresHook, HttpHook answer it).
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "sluice.ops.embedded.SQLITE_CONNECT_ARGS",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.schedules),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
                "SLUICE_HOME": str(self.project),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    # -- the CLI ---------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = self.env() | {"PYTHONWARNINGS": "ignore"}  # warnings would land on stdout, before the JSON
        for attempt in range(6):
            result = subprocess.run(
                [str(self.bin_dir / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout
            )
            # SQLite allows one writer: a read-only CLI call can collide with the scheduler's writes.
            if result.returncode == 0 or "database is locked" not in result.stderr or args[0] == "backfill":
                break
            log.warning("airflow %s: database is locked, retrying", " ".join(args))
            time.sleep(1 + attempt)
        if check and result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def migrate(self) -> None:
        self.cli("db", "migrate")

    def apply_settings(self, path: Path | None = None) -> None:
        """Apply airflow_settings.yaml (connections, pools, variables)."""
        path = path or self.project / "airflow_settings.yaml"
        subprocess.run(
            [sys.executable, "-m", "sluice.orchestration.settings_file", str(path)], env=self.env(), check=True
        )

    # -- processes -------------------------------------------------------------------
    def start(self, components: Iterable[str] = COMPONENTS) -> None:
        """Start the components, each in its own session.

        From now on SIGTERM and SIGHUP raise :class:`Interrupted` (a ``KeyboardInterrupt``) in
        the main thread, so that the caller's ``finally: airflow.stop()`` (or ``with airflow:``)
        runs as it does for a Ctrl-C; :meth:`stop` restores the earlier handlers. Interrupted
        while starting, it stops what it has started before it lets the interrupt through.
        """
        self._install_signal_handlers()
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self.env()
        try:
            for name in components:
                args = [str(self.bin_dir / "airflow"), name]
                if name == "api-server":
                    args += ["--port", str(self.port), "--host", "127.0.0.1"]
                with open(logs / f"{name}.log", "ab") as out:  # the child keeps its own copy
                    self.processes[name] = subprocess.Popen(
                        args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
        except KeyboardInterrupt:
            self.stop()
            raise
        (self.home / "pids.json").write_text(json.dumps({k: p.pid for k, p in self.processes.items()}))

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}; see {self.home}/logs/{name}.log")

    def wait_until_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=5) as resp:
                    health = json.load(resp)
                if health.get("scheduler", {}).get("status") == "healthy":
                    return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"Airflow at {self.base_url} not healthy after {timeout}s")

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> None:
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = json_output(self.cli("dags", "list", "-o", "json").stdout)
            found = {d["dag_id"] for d in listed}
            if wanted <= found:
                return
            time.sleep(3)
        raise TimeoutError(f"DAGs {sorted(wanted - found)} not parsed after {timeout}s")

    def stop_component(self, name: str) -> None:
        terminate([self.processes[name]], timeout=60)
        del self.processes[name]  # only once it is stopped: an interrupted stop leaves it to stop()

    def serialize_dags(self) -> None:
        """Write the DAGs to the metadata DB now, without waiting for the DAG processor."""
        self.cli("dags", "reserialize")

    def stop(self) -> None:
        """Stop every component this object started (and what they started); restore the signal handlers.

        A SIGINT, SIGTERM or SIGHUP meanwhile is logged and ignored: stopping is under way,
        and cutting it short would leave components running.
        """
        self._stopping = True
        shield = self._shield_signals()
        try:
            terminate(list(self.processes.values()), timeout=30)
            self.processes.clear()
        finally:
            self._stopping = False
            self._restore_signal_handlers(shield)

    # -- signals ---------------------------------------------------------------------
    @staticmethod
    def _in_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping:
            log.warning("%s ignored: the embedded Airflow is stopping", signal.Signals(signum).name)
            return
        raise Interrupted(signum)

    def _install_signal_handlers(self) -> None:
        if not self._in_main_thread():  # only the main thread may set handlers (and it gets the signals)
            return
        for signum in STOP_SIGNALS:
            if signum not in self._saved_handlers:  # start() again (after a backfill): keep the originals
                self._saved_handlers[signum] = signal.signal(signum, self._on_signal)

    def _shield_signals(self) -> dict[int, Any]:
        """While stop() runs: SIGINT too only logs (a second Ctrl-C must not cut the stop short)."""
        if not self._in_main_thread():
            return {}
        shield: dict[int, Any] = {}
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            previous = signal.signal(signum, self._on_signal)
            if signum not in self._saved_handlers:
                shield[signum] = previous
        return shield

    def _restore_signal_handlers(self, shield: Mapping[int, Any]) -> None:
        if not self._in_main_thread():
            return
        for signum, handler in {**shield, **self._saved_handlers}.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._saved_handlers.clear()

    def __enter__(self) -> LocalAirflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runs ------------------------------------------------------------------------
    def backfill(self, dag_id: str, start: str, end: str, max_active_runs: int = 8, reprocess: str = "failed") -> None:
        """`airflow backfill create`, with the scheduler paused while it writes (see :meth:`backfills`)."""
        self.backfills([Backfill(dag_id, start, end, max_active_runs, reprocess)])

    def backfills(self, requests: Iterable[Backfill]) -> None:
        """`airflow backfill create` for each request, in order, with the scheduler paused once for all.

        On SQLite, a lock error inside `backfill create` makes Airflow delete runs it has
        already committed; a scheduler that has loaded them then crashes on a foreign key.
        Creating the backfills while no scheduler runs avoids that race entirely. (Pausing
        costs a scheduler and DAG processor restart: one for several DAGs is cheaper.)
        """
        requests = list(requests)
        # The DAG processor writes too (each parse): pause both writers, so that only
        # the API server shares the database with the backfill while it is created.
        paused = [
            name for name in ("scheduler", "dag-processor")
            if name in self.processes and self.processes[name].poll() is None
        ]
        if "scheduler" in paused:
            # Airflow allows one running backfill per DAG, and the scheduler marks a finished
            # one complete only every 30 s: wait for that before pausing it.
            for request in requests:
                self.wait_for_backfills_complete(request.dag_id)
        for name in paused:
            self.stop_component(name)
        try:
            for request in requests:
                self._create_backfill(request)
        finally:
            if paused:
                self.start(paused)

    def _create_backfill(self, request: Backfill) -> None:
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
                raise RuntimeError(
                    f"airflow backfill create --dag-id {dag_id} failed ({result.returncode}):\n"
                    f"{result.stderr[-4000:]}"
                )
            log.warning("airflow backfill create %s: database is locked, retrying", dag_id)
            time.sleep(2 + 3 * attempt)

    @property
    def metadata_db(self) -> Path:
        return self.home / "airflow.db"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query of the SQLite metadata DB (it must exist: migrate first)."""
        with closing(sqlite3.connect(f"file:{self.metadata_db}?mode=ro", uri=True, timeout=120)) as conn:
            return conn.execute(sql, params).fetchall()

    def incomplete_backfills(self, dag_id: str) -> int:
        """Backfills of ``dag_id`` not marked complete yet, read from the SQLite metadata DB."""
        rows = self.query("SELECT count(*) FROM backfill WHERE dag_id = ? AND completed_at IS NULL", (dag_id,))
        return int(rows[0][0])

    def wait_for_backfills_complete(self, dag_id: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self.incomplete_backfills(dag_id):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"a backfill of {dag_id} is still not complete after {timeout}s")
            time.sleep(3)

    def retried_tries(self, tail: int = 40) -> list[str]:
        """Every earlier try of a task that was retried, with the end of its log.

        A retry that succeeds hides its cause from the run's state: this is how a test
        run or the demo shows it. Airflow keeps each finished earlier try in
        ``task_instance_history``; a sensor's reschedule is not a try and is not there.
        """
        if not self.metadata_db.exists():
            return []
        return describe_retried_tries(self.query(RETRIED_TRIES_SQL), self.home / "logs", tail)

    def trigger(self, dag_id: str, conf: Mapping[str, object] | None = None, run_id: str | None = None) -> str:
        args = ["dags", "trigger", dag_id, "-o", "json"]
        if conf:
            args += ["--conf", json.dumps(conf)]
        if run_id:
            args += ["--run-id", run_id]
        runs = json_output(self.cli(*args).stdout)
        return str(runs[0]["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict]:
        return list(json_output(self.cli("dags", "list-runs", dag_id, "-o", "json").stdout))

    def wait_for_runs(
        self, dag_id: str, expected: int, timeout: float = 900, poll: float = 5
    ) -> list[dict]:
        """Wait until ``expected`` runs of ``dag_id`` exist and all have finished."""
        return wait_for_finished_runs(
            dag_id, expected, lambda: self.runs(dag_id), check_alive=self.check_alive,
            retried_tries=self.retried_tries, timeout=timeout, poll=poll,
        )
