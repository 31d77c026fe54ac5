"""docker-compose.yaml, the Dockerfile and the native twin (sluice.ops.twin) describe one cluster.

Fast: nothing is started. The twin's environment is derived from the compose file, so these
tests pin what that derivation must keep: the same services, the same variable names for every
Airflow service (plus the few the twin documents in TWIN_ONLY), every URL pointed at the twin,
one JWT secret everywhere, versions that agree with requirements.txt, and no secret in the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sluice.ops.twin import (
    CONTAINER_PORTS,
    TWIN,
    TWIN_ONLY,
    WORKER_ONLY,
    Cluster,
    Compose,
    map_hosts,
)
from sluice.orchestration.compose_vars import InterpolationError, interpolate, read_dotenv

ROOT = Path(__file__).resolve().parents[2]
SHARED_SECRETS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY")
SECRETISH = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|PRIVATE", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")


def _airflow_pin() -> str:
    pins = re.findall(r"^apache-airflow==([\w.]+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1, pins
    return pins[0]


def _replicas(twin: Cluster, service: str) -> list[int]:
    return list(range(1, twin.workers + 1)) if service == "airflow-worker" else [1]


# -- the same topology ---------------------------------------------------------------------------


def test_the_twin_maps_every_compose_service(compose: Compose) -> None:
    assert set(compose.services) == set(TWIN), "each compose service needs a twin counterpart (and only those)"
    assert {"minio", "minio-init", "mlflow", "airflow-worker", "airflow-init"} <= set(compose.services)
    assert compose.profiles("flower") == ["flower"]


def test_the_airflow_services_are_the_expected_ones(compose: Compose) -> None:
    assert set(compose.airflow_services()) == {
        "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-worker", "airflow-cli", "flower",
    }


@pytest.mark.parametrize(
    "service",
    ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
     "airflow-worker", "airflow-cli", "flower"],
)
def test_airflow_services_have_the_same_variable_names_in_the_twin(compose: Compose, twin: Cluster, service: str) -> None:
    names = set(compose.raw_environment(service))
    for replica in _replicas(twin, service):
        twin_names = set(twin.service_env(service, replica))
        assert names <= twin_names, f"missing in the twin: {sorted(names - twin_names)}"
        extra = twin_names - names
        assert extra <= set(TWIN_ONLY), f"the twin adds undocumented keys: {sorted(extra - set(TWIN_ONLY))}"
        if service != "airflow-worker":
            assert not extra & set(WORKER_ONLY)


@pytest.mark.parametrize("service", ["mlflow", "minio-init", "minio", "postgres"])
def test_other_services_have_exactly_the_compose_variables_in_the_twin(
    compose: Compose, twin: Cluster, service: str
) -> None:
    assert set(twin.service_env(service)) == set(compose.raw_environment(service))


def _names_a_container(value: str) -> bool:
    hosts = {urlsplit(url).hostname for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s,]+", value)}
    bare = set(re.findall(r"(?:^|,)([a-z-]+):\d+", value))
    return bool((hosts | bare) & set(CONTAINER_PORTS))


def test_the_twin_points_every_url_at_its_own_ports(compose: Compose, twin: Cluster) -> None:
    assert _names_a_container("postgresql://u:p@postgres:5432/db") and _names_a_container("a,mlflow:5000")
    for service in compose.services:
        for replica in _replicas(twin, service):
            for key, value in twin.service_env(service, replica).items():
                assert not _names_a_container(value), f"{service} {key}={value!r} still names a container"
        if service == "mlflow":
            assert not any(_names_a_container(a) for a in twin.argv(service))
    env = twin.service_env("airflow-worker")
    ports = twin.state()["ports"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{ports['airflow-apiserver']}/execution/"
    assert env["SLUICE_MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
    assert env["SLUICE_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['minio']}"
    assert "@127.0.0.1:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://127.0.0.1:6379/")


def test_every_airflow_service_runs_the_same_use_cases_churn_by_default(compose: Compose, twin: Cluster) -> None:
    """SLUICE_USE_CASES is in the common block (one value for every component that parses or runs
    a DAG); compose defaults it to churn, and the twin derives the DAG ids it waits for from it."""
    from sluice.orchestration.context import STAGES

    for service in compose.airflow_services():
        assert compose.raw_environment(service)["SLUICE_USE_CASES"] == "${SLUICE_USE_CASES:-churn}", service
        for replica in _replicas(twin, service):
            assert twin.service_env(service, replica)["SLUICE_USE_CASES"] == "churn", service
    assert twin.use_cases() == ["churn"]
    assert twin.dag_ids() == sorted(f"churn__{stage}" for stage in STAGES)

    both = Cluster(state_dir=twin.state_dir / "both", dotenv=None, inherit_environ=False,
                   overrides={"SLUICE_USE_CASES": "churn,purchases"})
    assert both.service_env("airflow-worker", 2)["SLUICE_USE_CASES"] == "churn,purchases"
    assert both.use_cases() == ["churn", "purchases"]
    assert len(both.dag_ids()) == 2 * len(STAGES) and "purchases__batch_score" in both.dag_ids()


def test_the_twin_runs_two_distinct_celery_workers(twin: Cluster) -> None:
    envs = [twin.service_env("airflow-worker", replica) for replica in (1, 2)]
    argvs = [twin.argv("airflow-worker", replica) for replica in (1, 2)]
    assert envs[0]["SLUICE_TWIN_HOSTNAME"] != envs[1]["SLUICE_TWIN_HOSTNAME"]
    assert envs[0]["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] != envs[1]["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]
    assert all(e["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "sluice.ops.twin.twin_hostname" for e in envs)
    assert [a[-4:] for a in argvs] == [
        ["celery", "worker", "--celery-hostname", "twin-worker-1"],
        ["celery", "worker", "--celery-hostname", "twin-worker-2"],
    ]


def test_start_order_follows_depends_on(compose: Compose) -> None:
    order = compose.start_order()
    assert "flower" not in order and "airflow-cli" not in order, "profiles are off unless asked for"
    for service in order:
        for dep in compose.depends_on(service):
            assert order.index(dep) < order.index(service), f"{service} starts before {dep}"
    assert compose.depends_on("airflow-worker")["airflow-apiserver"] == "service_healthy"
    assert compose.depends_on("mlflow")["minio-init"] == "service_completed_successfully"
    assert compose.depends_on("airflow-apiserver")["airflow-init"] == "service_completed_successfully"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(compose: Compose) -> None:
    for name, spec in compose.services.items():
        if name in ("minio-init", "airflow-init"):
            assert spec.get("restart") == "no"
        elif name != "airflow-cli":
            assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert spec.get("restart") == "always"


def test_airflow_init_runs_the_init_module_in_the_image_and_in_the_twin(compose: Compose, twin: Cluster) -> None:
    assert compose.command("airflow-init", twin.variables()) == ["python", "-m", "sluice.ops.init"]
    assert twin.argv("airflow-init") == [sys.executable, "-m", "sluice.ops.init"]
    assert TWIN["airflow-init"].startswith("python -m sluice.ops.init")
    # The image's build imports the module its init runs (a broken import fails `docker build`).
    dockerfile = (ROOT / "Dockerfile").read_text()
    smoke = re.findall(r'python -c "import ([^"]+)"', dockerfile)
    assert smoke and "sluice.ops.init" in {m.strip() for m in smoke[0].split(",")}, smoke


def test_the_init_module_imports_nothing_of_the_twin() -> None:
    """The production image's init stays small: no twin, no embedded Airflow, no other ops module."""
    code = (
        "import sys, sluice.ops.init\n"
        "print(*sorted(m for m in sys.modules if m.startswith('sluice.ops.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sluice.ops.init"], f"sluice.ops.init pulls in {result.stdout.split()}"
    usage = subprocess.run([sys.executable, "-m", "sluice.ops.init", "--help"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert usage.returncode == 0 and "python -m sluice.ops.init" in usage.stdout, usage.stderr


# -- versions --------------------------------------------------------------------------------------


def test_image_tags_match_the_airflow_pin_and_python_3_11(compose: Compose) -> None:
    pin = _airflow_pin()
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert froms == [f"apache/airflow:{pin}-python3.11"]
    assert 'requires-python = ">=3.11,<3.12"' in (ROOT / "pyproject.toml").read_text()
    for service in compose.airflow_services() + ["mlflow"]:
        image = compose.image(service)
        assert re.fullmatch(r"\$\{SLUICE_IMAGE:-[\w.-]+:(?P<tag>[\w.-]+)\}", image), image
        assert image.endswith(f":{pin}-python3.11}}"), f"{service}: {image} does not carry Airflow {pin}, Python 3.11"
        assert compose.services[service].get("build", {}).get("context") == "."


def test_the_image_runs_as_the_airflow_user_and_gets_only_the_code() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] == "airflow"
    assert "requirements.txt" in dockerfile and '"apache-airflow==${AIRFLOW_VERSION}"' in dockerfile
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in ignored if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore is an allow-list"
    assert not any(r.startswith("!") and ".env" in r for r in rules)
    assert {"!dags/", "!plugins/", "!include/", "!airflow_settings.yaml", "!pyproject.toml"} <= set(rules)


# -- secrets ---------------------------------------------------------------------------------------


def test_every_airflow_service_shares_the_jwt_secret_and_keys(compose: Compose, twin: Cluster) -> None:
    for key in SHARED_SECRETS:
        raw = {compose.raw_environment(s).get(key) for s in compose.airflow_services()}
        assert len(raw) == 1 and REQUIRED_REF.match(raw.pop() or ""), f"{key} differs or is not required from .env"
        values = {
            twin.service_env(s, r)[key] for s in compose.airflow_services() for r in _replicas(twin, s)
        }
        assert len(values) == 1 and values.pop(), f"{key}: the twin's Airflow processes disagree"


def test_no_literal_secrets_in_the_files(compose: Compose) -> None:
    userinfo = re.compile(r"://([^:@/\s]+):([^@\s]+)@")
    for name, spec in compose.services.items():
        texts = list(compose.raw_environment(name).items()) + [("command", str(a)) for a in spec.get("command") or []]
        for key, value in texts:
            if SECRETISH.search(key):
                assert REQUIRED_REF.match(value), f"{name} {key}: a secret must be ${{VAR:?...}}, not {value!r}"
            for _user, password in userinfo.findall(value):
                assert REQUIRED_REF.match(password), f"{name} {key}: password in a URL must come from .env"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|FERNET|TOKEN|KEY)", dockerfile, re.MULTILINE | re.I)
    for path in (ROOT / "docker-compose.yaml", ROOT / "Dockerfile"):
        assert not re.search(r"BEGIN [A-Z ]*PRIVATE KEY|AKIA[0-9A-Z]{16}", path.read_text())


def test_the_twin_generates_its_secrets_outside_the_repository(twin: Cluster) -> None:
    secrets_file = twin.state_dir / "secrets.env"
    twin.variables()
    assert secrets_file.exists() and secrets_file.stat().st_mode & 0o077 == 0
    assert ROOT not in secrets_file.parents or ".cluster" in secrets_file.parts


def test_workers_run_openmp_single_threaded(compose: Compose, twin: Cluster) -> None:
    from sluice.core.train import DEFAULT_PARAMS

    assert compose.raw_environment("airflow-worker")["OMP_NUM_THREADS"] == "1"
    assert twin.service_env("airflow-worker", 2)["OMP_NUM_THREADS"] == "1"
    assert DEFAULT_PARAMS["num_threads"] == 1


# -- how the twin reads the file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "a"}, "a"),
        ("$A/${B}", {"A": "1", "B": "2"}, "1/2"),
        ("$$HOSTNAME", {"HOSTNAME": "h"}, "$HOSTNAME"),
        ("${A:+on}", {"A": "1"}, "on"),
        ("redis://redis:6379/${DB:-0}", {}, "redis://redis:6379/0"),
    ],
)
def test_interpolation_follows_compose(text: str, variables: dict, expected: str) -> None:
    assert interpolate(text, variables) == expected


@pytest.mark.parametrize("text", ["${A:?set A in .env}", "${A?needed}"])
def test_a_missing_required_variable_is_an_error_that_names_it(text: str) -> None:
    with pytest.raises(InterpolationError, match="A"):
        interpolate(text, {})


def test_map_hosts_rewrites_only_service_hosts() -> None:
    endpoints = {"postgres": ("127.0.0.1", 5432), "mlflow": ("127.0.0.1", 4000)}
    assert map_hosts("postgresql+psycopg2://u:p@postgres:5432/db", endpoints) == "postgresql+psycopg2://u:p@127.0.0.1:5432/db"
    assert map_hosts("http://mlflow:5000", endpoints) == "http://127.0.0.1:4000"
    assert map_hosts("mlflow,mlflow:5000,localhost", endpoints) == "mlflow,127.0.0.1:4000,localhost"
    assert map_hosts("s3://mlflow-bucket/mlflow", endpoints) == "s3://mlflow-bucket/mlflow"


def test_read_dotenv_handles_comments_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# c\nA=1   # inline\nB='x # y'\nexport C=\"q\"\nD=\nE=http://h:1/#frag\n")
    assert read_dotenv(path) == {"A": "1", "B": "x # y", "C": "q", "D": "", "E": "http://h:1/#frag"}


# -- docker compose itself ---------------------------------------------------------------------------


def _docker_compose() -> list[str] | str:
    """The command that runs Compose v2 (the `docker compose` plugin or a standalone v2 binary),
    or why there is none. `.ci/run` installs the plugin; no Docker engine is needed for `config`."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    said = "no docker CLI and no docker-compose on this machine"
    for command in candidates:
        probe = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=60)
        version = probe.stdout.strip().lstrip("v")
        if probe.returncode == 0 and version[:1].isdigit() and int(version.split(".")[0]) >= 2:
            return command
        said = f"`{' '.join(command)}` is not Compose v2 here: {(probe.stderr or probe.stdout).strip()[:200]}"
    return said


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    found = _docker_compose()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _render(compose_cli: list[str], env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_cli, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yaml"),
         "--profile", "flower", "--profile", "debug", "config", *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": str(Path.home())},
    )


def _required_variables() -> list[str]:
    text = (ROOT / "docker-compose.yaml").read_text()
    return sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text)))


def test_docker_compose_accepts_the_file(compose_cli: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "ci.env"
    env_file.write_text("".join(f"{name}=ci-not-a-secret\n" for name in _required_variables()))
    result = _render(compose_cli, env_file, "--quiet")
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_a_missing_secret_by_name(compose_cli: list[str], tmp_path: Path) -> None:
    required = _required_variables()
    env_file = tmp_path / "ci.env"
    env_file.write_text("".join(f"{name}=ci-not-a-secret\n" for name in required if name != "POSTGRES_PASSWORD"))
    result = _render(compose_cli, env_file, "--quiet")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_docker_compose_renders_what_the_twin_derives(compose_cli: list[str], compose: Compose, tmp_path: Path) -> None:
    """One source of truth: Compose's own interpolation of every service's environment and
    command equals the twin's (sluice.orchestration.compose_vars.interpolate), for the same .env."""
    variables = {name: f"v-{name.lower()}" for name in _required_variables()}
    variables |= {"SLUICE_SIM_CUSTOMERS": "1234", "AIRFLOW_WORKER_CONCURRENCY": "3", "SLUICE_ALERT_WEBHOOK_URI": "",
                  "SLUICE_USE_CASES": "churn,purchases"}
    env_file = tmp_path / "ci.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    result = _render(compose_cli, env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["services"]
    assert set(rendered) == set(compose.services)

    def unescape(value: object) -> str:  # `config` prints a file compose can read again: `$` as `$$`
        return "" if value is None else str(value).replace("$$", "$")

    for service in compose.services:
        theirs = {k: unescape(v) for k, v in (rendered[service].get("environment") or {}).items()}
        assert theirs == compose.environment(service, variables), service
        if service in compose.airflow_services():
            assert theirs["SLUICE_USE_CASES"] == "churn,purchases", service
        if rendered[service].get("command"):
            assert [unescape(a) for a in rendered[service]["command"]] == compose.command(service, variables), service


# -- stopping exactly what was started ---------------------------------------------------------------


def test_down_stops_the_sessions_it_started_and_nothing_else(tmp_path: Path) -> None:
    twin = Cluster(state_dir=tmp_path / "state", dotenv=None, inherit_environ=False)
    # A process that forks a child: down must stop both (the whole session), by recorded pid.
    record = twin._spawn("sleeper", "test", ["bash", "-c", "sleep 300 & wait"], {"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 10
    while len(record.members()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(record.members()) == 2 and twin.leftovers()
    # A live process whose pid is recorded with another start time is not ours: left alone.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    forged = dict(record.__dict__, name="recycled", pid=stranger.pid, start=record.start + 12345)
    twin.state()["processes"].append(forged)
    try:
        twin.down(purge=False, timeout=10)
        assert not twin.leftovers(), twin.leftovers()
        assert stranger.poll() is None, "down killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()
    assert twin.state()["processes"] == []
