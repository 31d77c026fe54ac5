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
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from sluice.ops.airflow_client import AirflowClient, Backfill, json_output

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


@dataclass
class LocalAirflow(AirflowClient):
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

    # -- the CLI and the metadata DB: AirflowClient's ---------------------------------
    def airflow_env(self) -> dict[str, str]:
        return self.env()

    @property
    def metadata_db(self) -> Path:
        return self.home / "airflow.db"

    @property
    def metadata_url(self) -> str:
        return f"sqlite:///{self.metadata_db}"

    @property
    def task_logs_dir(self) -> Path:
        return self.home / "logs"

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
                self.create_backfill(request)
        finally:
            if paused:
                self.start(paused)

    def retried_tries(self, tail: int = 40) -> list[str]:
        if not self.metadata_db.exists():  # not migrated yet: nothing ran
            return []
        return super().retried_tries(tail)
