"""The cluster twin: docker-compose.yaml's topology on one machine, without Docker.

``python -m sluice.ops.twin up`` (``make cluster``) runs what ``docker compose up`` runs:
PostgreSQL and Redis (the local servers: the twin creates its own databases and picks its own
Redis DB numbers), an S3 server standing in for MinIO (``moto_server`` from the virtualenv,
bucket created and versioning enabled like minio-init does), the MLflow server, and Airflow's
API server, scheduler, DAG processor, triggerer and two Celery workers, each a process under a
state directory (``.cluster/``). ``python -m sluice.ops.twin down`` stops exactly the processes
it started (pid and start time recorded, whole sessions signalled; never a name) and drops the
databases it created.

**One source of truth.** The environment of every process is read from ``docker-compose.yaml``:
each service's ``environment`` (the common Airflow block included), ``command`` and
``depends_on``, interpolated the way compose does (``${VAR:-default}``, ``${VAR:?error}``,
``$$``) from the twin's generated secrets, ``.env``, the shell, the twin's own settings
(:data:`TWIN_SETTINGS`) and explicit overrides, in that order; then the service host names
(postgres, redis, minio, mlflow, airflow-apiserver) are mapped to 127.0.0.1 and the twin's
ports. The few keys the twin adds (:data:`TWIN_ONLY`) stand for what the image or Docker give a
container: AIRFLOW_HOME and the folders, a hostname and a log port per worker.

The command of the ``airflow-init`` service is ``python -m sluice.ops.init`` (the image runs it
without this module); the twin runs it like any other service, from the compose file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil
import yaml

from sluice.ops.airflow_client import AirflowClient
from sluice.ops.embedded import free_port
from sluice.ops.init import connect_pg, database_exists, init_databases, pg_params
from sluice.orchestration.compose_vars import interpolate, read_dotenv

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
DEFAULT_STATE_DIR = PROJECT_ROOT / ".cluster"

# What the twin runs for each service of docker-compose.yaml (the test checks the key sets match).
TWIN: dict[str, str] = {
    "postgres": "the local PostgreSQL server; the twin creates its own databases",
    "redis": "the local Redis server; the twin uses its own DB numbers",
    "minio": "moto_server: an S3 API in memory, on its own port",
    "minio-init": "boto3 (in process): create the bucket, enable versioning",
    "mlflow": "mlflow server",
    "airflow-init": "python -m sluice.ops.init (the compose command)",
    "airflow-apiserver": "airflow api-server",
    "airflow-scheduler": "airflow scheduler",
    "airflow-dag-processor": "airflow dag-processor",
    "airflow-triggerer": "airflow triggerer",
    "airflow-worker": "airflow celery worker, once per replica (twin-worker-1, twin-worker-2, ...)",
    "flower": "airflow celery flower (up --flower)",
    "airflow-cli": "the airflow CLI with this environment (Cluster.cli, `python -m sluice.ops.twin env`)",
}
EXTERNAL = ("postgres", "redis")  # already running on this machine: the twin only checks them

# Keys the twin adds to a service's compose environment, and why.
TWIN_ONLY: dict[str, str] = {
    "AIRFLOW_HOME": "the image's AIRFLOW_HOME (/opt/airflow); here the state directory",
    "SLUICE_HOME": "the image's ENV SLUICE_HOME (/opt/airflow); here the project",
    "AIRFLOW__CORE__DAGS_FOLDER": "the image's /opt/airflow/dags; here the project's dags/",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "the image's /opt/airflow/plugins; here the project's plugins/",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "8974 in its container; a free port here",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "8794 in its container; a free port here",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "8793 in each worker container; one free port per worker here",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "a container has its own hostname; here each worker names itself",
    "SLUICE_TWIN_HOSTNAME": "the name twin_hostname() returns in that worker",
}
WORKER_ONLY = ("AIRFLOW__CORE__HOSTNAME_CALLABLE", "SLUICE_TWIN_HOSTNAME")

# The twin's own choices for compose's variables: this machine's servers and a small footprint.
# They win over .env and the shell (which describe the Docker deployment); `--set` overrides them.
TWIN_SETTINGS: dict[str, str] = {
    "POSTGRES_USER": "postgres",  # the local server's superuser (trust auth on 127.0.0.1)
    "AIRFLOW_DB": "sluice_cluster_airflow",
    "MLFLOW_DB": "sluice_cluster_mlflow",
    "SCORES_DB": "sluice_cluster_scores",
    "CELERY_REDIS_DB": "10",
    "SCORES_REDIS_DB": "11",
    "SLUICE_BUCKET": "sluice",
    # Like the embedded Airflow: runs come from backfills and triggers, never from the clock.
    "AIRFLOW_DAGS_ARE_PAUSED_AT_CREATION": "false",
    "AIRFLOW_USE_JOB_SCHEDULE": "false",
    "AIRFLOW_PARALLELISM": "4",
    "AIRFLOW_WORKER_CONCURRENCY": "2",
    "MLFLOW_WORKERS": "1",
}
# The variables the twin generates once per state directory when neither .env nor the shell has them.
GENERATED_SECRETS = (
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
)
# Host-facing ports of `make cluster` (tests pass free ones).
DEFAULT_PORTS = {"airflow-apiserver": 28080, "mlflow": 25000, "minio": 29000, "flower": 25555}
# The port each service listens on inside the compose network.
CONTAINER_PORTS = {"postgres": 5432, "redis": 6379, "minio": 9000, "mlflow": 5000, "airflow-apiserver": 8080}
# Environment families the compose file governs: never inherited from the shell by a process.
GOVERNED = ("AIRFLOW", "_AIRFLOW", "SLUICE_", "AWS_", "MLFLOW_", "OMP_")


class ClusterError(RuntimeError):
    pass


def _as_dict(environment: Any) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in environment)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


@dataclass(frozen=True)
class Compose:
    """docker-compose.yaml as data (YAML anchors and merge keys resolved by the parser)."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path = COMPOSE_FILE) -> Compose:
        return cls(path=path, data=yaml.safe_load(path.read_text()))

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["services"])

    def raw_environment(self, service: str) -> dict[str, str]:
        return _as_dict(self.services[service].get("environment"))

    def environment(self, service: str, variables: Mapping[str, str]) -> dict[str, str]:
        return {k: interpolate(v, variables) for k, v in self.raw_environment(service).items()}

    def command(self, service: str, variables: Mapping[str, str]) -> list[str]:
        command = self.services[service].get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        return [interpolate(str(arg), variables) for arg in command]

    def entrypoint(self, service: str) -> list[str]:
        entry = self.services[service].get("entrypoint") or []
        return shlex.split(entry) if isinstance(entry, str) else [str(a) for a in entry]

    def depends_on(self, service: str) -> dict[str, str]:
        deps = self.services[service].get("depends_on") or {}
        if isinstance(deps, list):
            return {name: "service_started" for name in deps}
        return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}

    def profiles(self, service: str) -> list[str]:
        return list(self.services[service].get("profiles") or [])

    def airflow_services(self) -> list[str]:
        """The services that carry the common Airflow environment (x-airflow-common)."""
        return [name for name in self.services if "AIRFLOW__CORE__EXECUTOR" in self.raw_environment(name)]

    def image(self, service: str) -> str:
        return str(self.services[service].get("image", ""))

    def start_order(self, profiles: Iterable[str] = ()) -> list[str]:
        """Services in an order that respects depends_on (those of inactive profiles left out)."""
        active = set(profiles)
        wanted = [s for s in self.services if not self.profiles(s) or active & set(self.profiles(s))]
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise ClusterError(f"depends_on cycle through {name}")
            visiting.add(name)
            for dep in self.depends_on(name):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in wanted:
            visit(name)
        return order


# -- mapping compose's network onto this machine ------------------------------------------------

_URL_HOST = re.compile(r"(?P<pre>://(?:[^@/\s]*@)?)(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?")


def map_hosts(value: str, endpoints: Mapping[str, tuple[str, int]]) -> str:
    """Point URLs (and bare ``service:port`` items) at the twin: ``http://mlflow:5000`` ->
    ``http://127.0.0.1:<port>``, ``postgresql://u:p@postgres:5432/db`` -> ``...@127.0.0.1:5432/db``."""

    def url(match: re.Match[str]) -> str:
        if match.group("host") not in endpoints:
            return match.group(0)
        host, port = endpoints[match.group("host")]
        return f"{match.group('pre')}{host}:{port}"

    value = _URL_HOST.sub(url, value)
    names = "|".join(re.escape(n) for n in sorted(endpoints, key=len, reverse=True))
    if not names:
        return value
    bare = re.compile(rf"(?<![\w./@:-])(?P<host>{names}):(?P<port>\d+)(?![\w.-])")
    return bare.sub(lambda m: "{}:{}".format(*endpoints[m.group("host")]), value)


def twin_hostname() -> str:
    """``[core] hostname_callable`` of the twin's workers: each names itself, as a container would."""
    return os.environ.get("SLUICE_TWIN_HOSTNAME") or socket.getfqdn()


def _set_option(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    if option in out:
        out[out.index(option) + 1] = value
    else:
        out += [option, value]
    return out


def drop_database(url: str) -> None:
    """Drop the database a URL names (``down`` drops only the ones the twin created)."""
    from psycopg2 import sql

    params = pg_params(url)
    conn = connect_pg({**params, "dbname": "postgres"})
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(params["dbname"])))
    finally:
        conn.close()


# -- processes: what the twin started, by session ------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(status, session id, creation time) of a process, or None when it is gone."""
    try:
        proc = psutil.Process(pid)
        return proc.status(), os.getsid(pid), proc.create_time()
    except (psutil.Error, ProcessLookupError):
        return None


def _session_members(session: int) -> list[int]:
    """The live processes of a session: psutil lists them, os.getsid says whose they are."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == session:
                members.append(proc.pid)
    return members


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold secrets), never readable by others meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


@dataclass
class ProcessRecord:
    name: str
    service: str
    pid: int
    start: float  # creation time (psutil): a recycled pid is never mistaken for ours
    log: str
    argv: list[str]

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[2] == self.start and stat[0] != psutil.STATUS_ZOMBIE

    def members(self) -> list[int]:
        """Every live process of this record's session (it was started as a session leader)."""
        stat = _proc_stat(self.pid)
        if stat is not None and stat[2] != self.start:
            return []  # the pid now belongs to another process: nothing of ours is left under it
        return _session_members(self.pid)


# -- the twin ------------------------------------------------------------------------------------


@dataclass
class Cluster(AirflowClient):
    """The compose topology as local processes; state under ``state_dir``."""

    cli_error = ClusterError

    state_dir: Path = DEFAULT_STATE_DIR
    compose_file: Path = COMPOSE_FILE
    project: Path = PROJECT_ROOT
    dotenv: Path | None = PROJECT_ROOT / ".env"
    overrides: Mapping[str, str] = field(default_factory=dict)
    workers: int = 2
    flower: bool = False
    ports: Mapping[str, int] | None = None  # host-facing ports; default: the state's, else DEFAULT_PORTS
    postgres: tuple[str, int] = ("127.0.0.1", 5432)
    redis: tuple[str, int] = ("127.0.0.1", 6379)
    inherit_environ: bool = True
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    _state: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.compose = Compose.load(self.compose_file)

    # -- state ------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def bin_dir(self) -> Path:
        return Path(sys.executable).parent

    def state(self) -> dict[str, Any]:
        if self._state is None:
            saved = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            ports = dict(saved.get("ports") or {})
            if not saved.get("processes"):  # not running: the caller's ports win
                ports.update(self.ports or {})
            for name, port in DEFAULT_PORTS.items():
                ports.setdefault(name, port)
            internal = ["scheduler_health", "trigger_logs"] + [f"worker_logs_{i}" for i in range(1, self.workers + 1)]
            for name in internal:
                ports.setdefault(name, free_port())
            saved["ports"] = ports
            saved.setdefault("processes", [])
            self._state = saved
        return self._state

    def _save_state(self) -> None:
        _write_private(self.state_file, json.dumps(self.state(), indent=2))  # its database URLs hold a password

    @classmethod
    def from_state(cls, state_dir: Path) -> Cluster:
        """The twin that `up` started in ``state_dir``, with the very variables it was started with."""
        state_dir = Path(state_dir).resolve()
        saved = json.loads((state_dir / "state.json").read_text()) if (state_dir / "state.json").exists() else {}
        variables = state_dir / "variables.json"
        return cls(
            state_dir=state_dir,
            dotenv=None,
            overrides=json.loads(variables.read_text()) if variables.exists() else {},
            inherit_environ=not variables.exists(),
            workers=int(saved.get("workers", 2)),
            flower=bool(saved.get("flower", False)),
            postgres=tuple(saved.get("postgres", ("127.0.0.1", 5432))),  # type: ignore[arg-type]
            redis=tuple(saved.get("redis", ("127.0.0.1", 6379))),  # type: ignore[arg-type]
        )

    def _write_variables(self) -> None:
        """Keep the interpolation context of this run (mode 600: it holds the secrets)."""
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", self.compose.path.read_text()))
        variables = {k: v for k, v in self.variables().items() if k in used}
        _write_private(self.state_dir / "variables.json", json.dumps(variables, indent=1, sort_keys=True))

    def records(self) -> list[ProcessRecord]:
        return [ProcessRecord(**r) for r in self.state().get("processes", [])]

    # -- the environment, from docker-compose.yaml -----------------------------------------------
    def _secrets(self) -> dict[str, str]:
        """Secrets of this twin, generated once into its state directory (mode 600)."""
        path = self.state_dir / "secrets.env"
        values = read_dotenv(path) if path.exists() else {}
        missing = [k for k in GENERATED_SECRETS if not values.get(k)]
        if missing:
            from cryptography.fernet import Fernet

            for key in missing:
                values[key] = Fernet.generate_key().decode() if key.endswith("FERNET_KEY") else secrets.token_hex(24)
            _write_private(path, "".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def variables(self) -> dict[str, str]:
        """What compose would interpolate with: generated secrets < .env < shell < twin settings < overrides."""
        layers: list[Mapping[str, str]] = [self._secrets()]
        if self.dotenv is not None and Path(self.dotenv).exists():
            layers.append(read_dotenv(Path(self.dotenv)))
        if self.inherit_environ:
            layers.append(os.environ)
        layers += [TWIN_SETTINGS, self.overrides]
        merged: dict[str, str] = {}
        for layer in layers:
            # An empty value does not hide a lower layer's (a .env copied from .env.example is full of them).
            merged.update({k: str(v) for k, v in layer.items() if str(v) != "" or k not in merged})
        return merged

    def endpoints(self) -> dict[str, tuple[str, int]]:
        ports = self.state()["ports"]
        return {
            "postgres": self.postgres,
            "redis": self.redis,
            "minio": ("127.0.0.1", ports["minio"]),
            "mlflow": ("127.0.0.1", ports["mlflow"]),
            "airflow-apiserver": ("127.0.0.1", ports["airflow-apiserver"]),
        }

    def service_env(self, service: str, replica: int = 1) -> dict[str, str]:
        """The compose environment of ``service``, pointed at the twin, plus the TWIN_ONLY keys."""
        endpoints = self.endpoints()
        env = {k: map_hosts(v, endpoints) for k, v in self.compose.environment(service, self.variables()).items()}
        if service in self.compose.airflow_services():
            ports = self.state()["ports"]
            env.update(
                {
                    "AIRFLOW_HOME": str(self.airflow_home),
                    "SLUICE_HOME": str(self.project),
                    "AIRFLOW__CORE__DAGS_FOLDER": str(self.project / "dags"),
                    "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.project / "plugins"),
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports["scheduler_health"]),
                    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_logs"]),
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_logs_1"]),
                }
            )
            if service == "airflow-worker":
                env.update(
                    {
                        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports[f"worker_logs_{replica}"]),
                        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "sluice.ops.twin.twin_hostname",
                        "SLUICE_TWIN_HOSTNAME": self.worker_hostname(replica),
                    }
                )
        return env

    @staticmethod
    def worker_hostname(replica: int) -> str:
        return f"twin-worker-{replica}"

    def env(self, service: str = "airflow-cli", replica: int = 1) -> dict[str, str]:
        """The whole environment of a twin process: this machine's, less what compose governs, plus
        the service's. Byte code is cached outside the virtualenv when writing it is switched off."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(GOVERNED)}
        base["PATH"] = f"{self.bin_dir}{os.pathsep}{base.get('PATH', '')}"
        base["PYTHONUNBUFFERED"] = "1"
        if base.pop("PYTHONDONTWRITEBYTECODE", None) and "PYTHONPYCACHEPREFIX" not in base:
            base["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "sluice-twin-pycache")
        return base | self.service_env(service, replica)

    # -- commands -----------------------------------------------------------------------------
    def argv(self, service: str, replica: int = 1) -> list[str]:
        """The command line of a service, as its image's entrypoint would run it, with the twin's ports."""
        command = self.compose.command(service, self.variables())
        ports = self.state()["ports"]
        if service == "mlflow":
            entry = self.compose.entrypoint(service)
            program = entry[entry.index("mlflow") :] if "mlflow" in entry else ["mlflow", "server"]
            args = _set_option(command, "--host", "127.0.0.1")
            args = _set_option(args, "--port", str(ports["mlflow"]))
            args = [map_hosts(a, self.endpoints()) for a in args]
            return [str(self.bin_dir / program[0]), *program[1:], *args]
        if command[:1] == ["python"]:
            return [sys.executable, *command[1:]]
        argv = [str(self.bin_dir / "airflow"), *command]
        if service == "airflow-apiserver":
            argv += ["--port", str(ports["airflow-apiserver"]), "--host", "127.0.0.1"]
        elif service == "airflow-worker":
            argv += ["--celery-hostname", self.worker_hostname(replica)]
        elif service == "flower":
            argv += ["--port", str(ports["flower"]), "--hostname", "127.0.0.1"]
        return argv

    # -- starting -----------------------------------------------------------------------------
    def _spawn(self, name: str, service: str, argv: list[str], env: Mapping[str, str]) -> ProcessRecord:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=self.state_dir, start_new_session=True
            )
        stat = _proc_stat(proc.pid)
        record = ProcessRecord(name, service, proc.pid, stat[2] if stat else 0, str(log_path), argv)
        self._procs[name] = proc
        self.state()["processes"].append(record.__dict__)
        self._save_state()
        return record

    def _tail(self, name: str, lines: int = 40) -> str:
        """The end of a process's log, and its first error line (often the cause, far above the end)."""
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        first = next((line for line in text if re.search(r"Error\b|error\]", line)), None)
        return "\n".join(([f"first error: {first}", "..."] if first else []) + text[-lines:])

    def check_alive(self) -> None:
        for record in self.records():
            if record.service in ("airflow-init",):
                continue
            if not record.alive():
                raise ClusterError(f"{record.name} exited; the end of {record.log}:\n{self._tail(record.name)}")

    def _replicas(self, service: str) -> list[tuple[str, int]]:
        if service == "airflow-worker":
            return [(f"airflow-worker-{i}", i) for i in range(1, self.workers + 1)]
        return [(service, 1)]

    def up(self, only: Iterable[str] | None = None, timeout: float = 900) -> None:
        """Start the services in depends_on order, each once what it depends on is healthy or done.

        ``only``: start just these services and what they depend on (e.g. ``["minio-init"]`` to
        fill the lake before Airflow starts); a later ``up()`` starts the rest.
        """
        order = self.compose.start_order(["flower"] if self.flower else [])
        running = any(r.alive() for r in self.records())
        ready: set[str] = set(self.state().get("ready", [])) if running else set()
        if running and set(order) <= ready:
            raise ClusterError(f"the twin in {self.state_dir} is already running: `python -m sluice.ops.twin down` first")
        if not running:
            state = self.state()
            state.update(
                processes=[], created_databases=[], flushable_redis_dbs=[], ready=[], workers=self.workers,
                flower=self.flower, postgres=list(self.postgres), redis=list(self.redis),
            )
            for name in list(state["ports"]):
                if name not in DEFAULT_PORTS:  # internal ports: fresh ones every time
                    state["ports"][name] = free_port()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.airflow_home.mkdir(parents=True, exist_ok=True)
            self._save_state()
            self._write_variables()
        wanted = set(order) if only is None else self._with_dependencies(only)
        order = [s for s in order if s in wanted]
        started = set(ready)
        deadline = time.monotonic() + timeout
        try:
            while not wanted <= ready:
                for service in order:
                    deps = self.compose.depends_on(service)
                    met = all(d in ready or (c == "service_started" and d in started) for d, c in deps.items())
                    if service not in started and met:
                        self._start(service)
                        started.add(service)
                for service in sorted(started - ready):
                    if self._ready(service):
                        ready.add(service)
                        log.info("%s ready", service)
                self.check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(f"not ready after {timeout:.0f}s: {sorted(wanted - ready)}")
                time.sleep(0.5)
            self.state()["ready"] = sorted(ready)
            self._save_state()
            if "airflow-dag-processor" in wanted:
                self.wait_for_dags()
        except BaseException:
            self.down()
            raise

    def _with_dependencies(self, services: Iterable[str]) -> set[str]:
        out: set[str] = set()
        todo = list(services)
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo += list(self.compose.depends_on(name))
        return out

    def _start(self, service: str) -> None:
        if service in EXTERNAL:
            return  # the local servers: _ready() checks that they answer
        if service == "minio-init":
            self._minio_init(self.service_env(service))
            return
        if service == "minio":
            argv = [str(self.bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.state()["ports"]["minio"])]
            self._spawn("minio", service, argv, self.env(service))
            return
        if service == "airflow-init":
            # What exists before init is not the twin's: down drops only what it created.
            created = [url for url in init_databases(self.env(service)) if not database_exists(url)]
            self.state()["created_databases"] = created
            self._claim_redis_dbs()
        for name, replica in self._replicas(service):
            self._spawn(name, service, self.argv(service, replica), self.env(service, replica))

    def _claim_redis_dbs(self) -> None:
        """Remember which of the twin's Redis DBs were empty at start: down flushes only those."""
        import redis

        env = self.service_env("airflow-scheduler")
        claimed = self.state()["flushable_redis_dbs"]
        for url in (env["AIRFLOW__CELERY__BROKER_URL"], env.get("SLUICE_SCORES_REDIS_URI", "")):
            if url.startswith("redis://") and url not in claimed:
                client = redis.Redis.from_url(url, socket_timeout=5)
                if client.dbsize() == 0:
                    claimed.append(url)
        self._save_state()

    def _minio_init(self, env: Mapping[str, str]) -> None:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=env["MINIO_ENDPOINT"],
            aws_access_key_id=env["MINIO_ROOT_USER"],
            aws_secret_access_key=env["MINIO_ROOT_PASSWORD"],
            region_name="us-east-1",
        )
        bucket = env["SLUICE_BUCKET"]
        with suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        if status != "Enabled":
            raise ClusterError(f"bucket {bucket}: versioning is {status!r}, not Enabled")

    # -- health ---------------------------------------------------------------------------------
    def _http_ok(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return 200 <= resp.status < 300
        except (OSError, urllib.error.URLError):
            return False

    def _ready(self, service: str) -> bool:
        ports = self.state()["ports"]
        checks: dict[str, Callable[[], bool]] = {
            "postgres": lambda: self._pg_reachable(),
            "redis": lambda: self._redis_reachable(),
            "minio": lambda: self._http_ok(f"http://127.0.0.1:{ports['minio']}/moto-api/"),
            "minio-init": lambda: True,
            "mlflow": lambda: self._http_ok(f"http://127.0.0.1:{ports['mlflow']}/health"),
            "airflow-init": lambda: self._completed("airflow-init"),
            "airflow-apiserver": lambda: self._http_ok(f"http://127.0.0.1:{ports['airflow-apiserver']}/api/v2/version"),
            "airflow-scheduler": lambda: self._http_ok(f"http://127.0.0.1:{ports['scheduler_health']}/health"),
            "airflow-dag-processor": lambda: self._job_alive("DagProcessorJob"),
            "airflow-triggerer": lambda: self._job_alive("TriggererJob"),
            "airflow-worker": lambda: self._workers_answer(),
            "flower": lambda: self._http_ok(f"http://127.0.0.1:{ports['flower']}/"),
        }
        return checks[service]()

    def _completed(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is None:
            return False
        if proc.returncode != 0:
            raise ClusterError(f"{name} failed ({proc.returncode}):\n{self._tail(name)}")
        return True

    @cached_property
    def _metadata_url(self) -> str:
        """Airflow's metadata DB (the local server: no port of the twin's in it), derived once:
        the readiness loops and every `sql()` would otherwise re-read .env and the secrets."""
        return self.service_env("airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    @cached_property
    def _broker_url(self) -> str:
        return self.service_env("airflow-scheduler")["AIRFLOW__CELERY__BROKER_URL"]

    def _pg_reachable(self) -> bool:
        try:
            with closing(connect_pg({**pg_params(self._metadata_url), "dbname": "postgres", "connect_timeout": 3})):
                return True
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable yet"
            log.debug("postgres not reachable: %s", exc)
            return False

    def _redis_reachable(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self._broker_url, socket_timeout=3).ping())
        except redis.RedisError:
            return False

    def _job_alive(self, job_type: str, within: float = 90) -> bool:
        rows = self.sql(
            "SELECT count(*) FROM job WHERE job_type = :job_type AND state = 'running'"
            " AND latest_heartbeat > now() - make_interval(secs => :within)",
            job_type=job_type, within=within,
        )
        return bool(rows and rows[0][0])

    def worker_names(self) -> list[str]:
        return [f"celery@{self.worker_hostname(i)}" for i in range(1, self.workers + 1)]

    def _workers_answer(self) -> bool:
        from celery import Celery

        app = Celery(broker=self._broker_url)
        try:
            replies = app.control.ping(destination=self.worker_names(), timeout=2)
        finally:
            app.close()
        answered = {name for reply in replies for name in reply}
        return answered >= set(self.worker_names())

    def use_cases(self) -> list[str]:
        """The names of the use cases the twin's Airflow runs: ``SLUICE_USE_CASES`` as compose sets it
        (its default in docker-compose.yaml; the shell, .env or ``--set`` choose others)."""
        from sluice.settings import builtin_use_cases, use_case_name

        raw = self.service_env("airflow-dag-processor").get("SLUICE_USE_CASES", "")
        refs = [part.strip() for part in raw.split(",") if part.strip()] or builtin_use_cases()
        return [use_case_name(ref) for ref in refs]

    def dag_ids(self) -> list[str]:
        """Every DAG the DAG processor should serialize: the five stages of each use case."""
        from sluice.orchestration.context import STAGES, dag_id

        return sorted(dag_id(name, stage) for name in self.use_cases() for stage in STAGES)

    def wait_for_dags(self, timeout: float = 300) -> list[str]:
        """Wait until the DAG processor has serialized every DAG of the deployment's use cases."""
        wanted = set(self.dag_ids())
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            found = {row[0] for row in self.sql("SELECT dag_id FROM serialized_dag")}
            if wanted <= found:
                return sorted(wanted)
            if time.monotonic() > deadline:
                raise ClusterError(f"DAGs {sorted(wanted - found)} not serialized after {timeout}s")
            time.sleep(2)

    # -- talking to it: the CLI and the metadata DB are AirflowClient's -------------------------
    def airflow_env(self) -> dict[str, str]:
        """The `airflow` CLI's environment: compose's airflow-cli service."""
        return self.env("airflow-cli")

    @property
    def metadata_url(self) -> str:
        return self._metadata_url

    @property
    def task_logs_dir(self) -> Path:
        return self.airflow_home / "logs"

    # -- stopping --------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Processes the twin started (or their children) that are still alive, stopped ones included."""
        out = []
        stopped = [ProcessRecord(**r) for r in self.state().get("stopped", []) if isinstance(r, dict)]
        for record in self.records() + stopped:
            out += [f"{record.name}: pid {pid} {_cmdline(pid)[:200]}" for pid in record.members()]
        return out

    def down(self, purge: bool = True, timeout: float = 45) -> None:
        """Stop what this twin started (by recorded session, newest first); drop what it created."""
        records = self.records()
        for record in reversed(records):
            if record.alive():
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(r.members() for r in records) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.5)
        stragglers = [r.name for r in records if r.members()]
        if stragglers:
            log.warning("still running %.0fs after SIGTERM, killing: %s", timeout, ", ".join(stragglers))
        for record in records:
            for pid in record.members():
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        self._reap(wait=True)
        state = self.state()
        if purge:
            for url in state.get("created_databases", []):
                try:
                    drop_database(url)
                except Exception as exc:  # noqa: BLE001 - report, and go on dropping the rest
                    log.warning("could not drop %s: %s", pg_params(url)["dbname"], exc)
            if state.get("flushable_redis_dbs"):
                import redis

                for url in state["flushable_redis_dbs"]:
                    with suppress(redis.RedisError):
                        redis.Redis.from_url(url, socket_timeout=5).flushdb()
            state["created_databases"], state["flushable_redis_dbs"] = [], []
        state["stopped"] = [r.__dict__ for r in records] or state.get("stopped", [])
        state["processes"], state["ready"] = [], []
        self._save_state()

    def _reap(self, wait: bool = False) -> None:
        for proc in self._procs.values():
            if wait:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            else:
                proc.poll()

    # -- reporting -------------------------------------------------------------------------------
    def urls(self) -> dict[str, str]:
        ports = self.state()["ports"]
        urls = {
            "Airflow UI / API": f"http://127.0.0.1:{ports['airflow-apiserver']}",
            "MLflow": f"http://127.0.0.1:{ports['mlflow']}",
            "S3 (moto, for MinIO)": f"http://127.0.0.1:{ports['minio']}",
        }
        if self.flower:
            urls["Flower"] = f"http://127.0.0.1:{ports['flower']}"
        return urls

    def status(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "urls": self.urls(),
            "processes": [
                {"name": r.name, "pid": r.pid, "alive": r.alive(), "log": r.log} for r in self.records()
            ],
            "created_databases": [pg_params(u)["dbname"] for u in self.state().get("created_databases", [])],
        }


# -- the command line --------------------------------------------------------------------------


def _parse_set(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.ops.twin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the twin (make cluster)")
    up.add_argument("--env-file", type=Path, default=PROJECT_ROOT / ".env")
    up.add_argument("--no-env-file", action="store_true")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--flower", action="store_true")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a compose variable")
    up.add_argument("--timeout", type=float, default=900)
    down = sub.add_parser("down", help="stop what `up` started (make cluster-down)")
    down.add_argument("--keep-data", action="store_true", help="keep the databases and Redis DBs it created")
    sub.add_parser("status", help="processes, URLs, logs")
    env = sub.add_parser("env", help="print `export` lines for the airflow CLI against the twin")
    env.add_argument("service", nargs="?", default="airflow-cli")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.command == "up":
        cluster = Cluster(
            state_dir=args.state_dir,
            dotenv=None if args.no_env_file else args.env_file,
            overrides=_parse_set(args.set),
            workers=args.workers,
            flower=args.flower,
        )
        cluster.up(timeout=args.timeout)
        print(f"The twin is up (state in {cluster.state_dir}):")
        for name, url in cluster.urls().items():
            print(f"  {name:<22} {url}")
        print(f"  process logs           {cluster.logs_dir}/<name>.log; task logs {cluster.airflow_home / 'logs'}")
        print(f"  UI password            {cluster.airflow_home / 'simple_auth_manager_passwords.json.generated'}")
        print(f'  airflow CLI            eval "$(python -m sluice.ops.twin --state-dir {cluster.state_dir} env)"')
        return 0
    cluster = Cluster.from_state(args.state_dir)
    if args.command == "down":
        cluster.down(purge=not args.keep_data)
        left = cluster.leftovers()
        print("stopped" if not left else "still running:\n" + "\n".join(left))
        return 0 if not left else 1
    if args.command == "status":
        print(json.dumps(cluster.status(), indent=2))
        return 0
    if args.command == "env":
        for key, value in sorted(cluster.env(args.service).items()):
            if key.startswith(GOVERNED) or key in ("PATH", "PYTHONPYCACHEPREFIX"):
                print(f"export {key}={shlex.quote(value)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
