"""Fixtures for the integration tests: real services, no mocks.

* An S3-compatible server: moto in server mode, started as a separate process for the
  session (``moto_server`` from the same virtualenv as the interpreter running pytest).
  Each test gets its own bucket.
* PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) or ``SLUICE_TEST_PG_DSN``:
  a throwaway database is created for the session and dropped at the end. When the
  server cannot be reached the tests FAIL (CI installs and starts it), they never skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DUMMY_KEY_ID = "testing-key-id"
DUMMY_SECRET = "testing-secret-key"
DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


# -- child processes ------------------------------------------------------------------


@pytest.fixture(scope="session")
def child_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the Python child processes (moto server, concurrent writers).

    When byte-code writing is switched off (PYTHONDONTWRITEBYTECODE), every child would
    compile pandas, pyarrow and deltalake from source again (seconds of CPU each, times
    eight writers); give the children a byte-code cache of their own outside the venv.
    """
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        cache = tmp_path_factory.getbasetemp().parent / "sluice-integration-pycache"
        cache.mkdir(parents=True, exist_ok=True)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


@pytest.fixture(scope="session")
def warm_children(child_env: dict[str, str]) -> dict[str, str]:
    """Import the heavy modules once in a child, so concurrent children start warm."""
    subprocess.run(
        [sys.executable, "-c", "import pandas, pyarrow.dataset, deltalake, sluice.edges.lake, sluice.edges.storage"],
        env=child_env,
        check=True,
        timeout=300,
    )
    return child_env


# -- S3 (moto server) ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server_executable() -> str:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.fail(f"moto_server not found next to {sys.executable}: install moto[server] in the venv")
    return str(exe)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory, child_env: dict[str, str]) -> Iterator[str]:
    """URL of a moto S3 server running in its own process for the whole session."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finaliser below
    env = dict(child_env, AWS_ACCESS_KEY_ID=DUMMY_KEY_ID, AWS_SECRET_ACCESS_KEY=DUMMY_SECRET)
    proc = subprocess.Popen(
        [_moto_server_executable(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"moto_server exited with {proc.returncode}: {log_path.read_text(errors='replace')}"
                )
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within 60 s")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials in the environment, where settings.storage_options() finds them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_client(s3_endpoint: str, aws_env: None):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET,
    )


@pytest.fixture
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket for this test."""
    name = f"sluice-it-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(bucket: str, s3_endpoint: str, aws_env: None):  # type: ignore[no-untyped-def]
    """Settings of the churn use case whose lake lives in this test's bucket on the moto server.

    The lake of a use case is ``<lake_uri>/<use case>``: here ``s3://<bucket>/sluice/churn``.
    """
    from sluice.settings import load_settings

    return load_settings(lake_uri=f"s3://{bucket}/sluice", s3_endpoint_url=s3_endpoint, use_case="churn")


# -- PostgreSQL -------------------------------------------------------------------------


def _admin_dsn() -> str:
    return os.environ.get("SLUICE_TEST_PG_DSN") or DEFAULT_PG_DSN


def _with_dbname(dsn: str, dbname: str) -> str:
    from psycopg2.extensions import make_dsn

    return make_dsn(dsn, dbname=dbname)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a throwaway database, created for the session and dropped at its end."""
    import psycopg2
    from psycopg2 import sql

    admin = _admin_dsn()
    error: Exception | None = None
    try:
        conn = psycopg2.connect(admin)
    except psycopg2.OperationalError as exc:
        error = exc
    if error is not None:
        pytest.fail(
            f"PostgreSQL is not reachable with DSN {admin!r}: {str(error).strip()}\n"
            "The integration tests need a running server (user postgres, trust auth on 127.0.0.1:5432) "
            "or SLUICE_TEST_PG_DSN pointing at one.",
            pytrace=False,
        )
    conn.autocommit = True
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(admin, name)
    finally:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.close()
