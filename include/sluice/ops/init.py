"""The ``airflow-init`` service: the databases, ``airflow db migrate``, ``airflow_settings.yaml``.

``python -m sluice.ops.init`` is the one-shot command of docker-compose.yaml's ``airflow-init``
service, in the image and in the native twin (``sluice.ops.twin`` runs the same command line).
It creates the PostgreSQL databases the environment names (Airflow's metadata, MLflow's backend
store, the published scores) when they are missing, migrates Airflow's metadata database and
applies ``airflow_settings.yaml`` (connections, pools, variables).

The production image runs it, so it stays small and imports nothing of the twin or the embedded
Airflow (tests/cluster/test_compose_matches_twin.py checks that); the twin imports its
PostgreSQL helpers from here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[3]
# The variables that may name a PostgreSQL database airflow-init makes sure of.
DATABASE_URL_KEYS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_BACKEND_STORE_URI", "SLUICE_SCORES_POSTGRES_URI")


class NotPostgresURL(ValueError):
    """A URL given as a PostgreSQL database is of another scheme."""


def pg_params(url: str) -> dict[str, Any]:
    """psycopg2 connection parameters from a SQLAlchemy / Airflow-connection PostgreSQL URL."""
    parts = urlsplit(url.removeprefix("db+"))
    if not parts.scheme.startswith(("postgresql", "postgres")):
        raise NotPostgresURL(f"not a PostgreSQL URL: {parts.scheme}://...")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password) if parts.password else None,
        "dbname": parts.path.lstrip("/") or "postgres",
        "connect_timeout": 10,
    }


def connect_pg(params: Mapping[str, Any]) -> Any:
    """A psycopg2 connection (parameters that are None left out)."""
    import psycopg2

    return psycopg2.connect(**{k: v for k, v in params.items() if v is not None})


def database_exists(url: str) -> bool:
    params = pg_params(url)
    with closing(connect_pg({**params, "dbname": "postgres"})) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (params["dbname"],))
        return cur.fetchone() is not None


def ensure_database(url: str) -> bool:
    """Create the database a URL names, when missing; True when it was created."""
    from psycopg2 import sql

    if database_exists(url):
        return False
    params = pg_params(url)
    conn = connect_pg({**params, "dbname": "postgres"})
    conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(params["dbname"])))
    finally:
        conn.close()
    return True


def init_databases(environ: Mapping[str, str]) -> list[str]:
    """The PostgreSQL databases airflow-init makes sure of: metadata, MLflow, published scores."""
    return [environ[k] for k in DATABASE_URL_KEYS if environ.get(k, "").startswith(("postgres", "db+postgres"))]


def init(settings_file: Path | None = None) -> None:
    """Create the databases if needed, migrate, apply airflow_settings.yaml.

    Runs with the environment of the airflow-init service: in the container and in the twin alike.
    """
    for url in init_databases(os.environ):
        created = ensure_database(url)
        print(f"database {pg_params(url)['dbname']}: {'created' if created else 'exists'}", flush=True)
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow) if airflow.exists() else "airflow", "db", "migrate"], check=True)
    settings_file = settings_file or Path(os.environ.get("SLUICE_HOME") or PROJECT_ROOT) / "airflow_settings.yaml"
    subprocess.run([sys.executable, "-m", "sluice.orchestration.settings_file", str(settings_file)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.ops.init", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=Path, help="airflow_settings.yaml (default: under SLUICE_HOME)")
    args = parser.parse_args(argv)
    init(args.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
