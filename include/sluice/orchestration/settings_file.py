"""Apply an Astronomer-style ``airflow_settings.yaml`` (connections, pools, variables).

Run as ``python -m sluice.orchestration.settings_file airflow_settings.yaml`` with AIRFLOW_HOME
set. Applying twice changes nothing: entries are created or replaced by their id.

Values may use Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` forms
(read from the environment), so one file serves the embedded default, the native twin
and the containers, where only the environment differs. Secrets are never in the file:
a connection's password comes from the variable named by ``conn_password_env``, or
from the environment inside ``conn_uri``.

A connection whose ``conn_uri`` is empty is *off*: it is removed if it exists (the
file is the truth for the ids it lists), so a publisher or the alert webhook is turned
off by leaving its variable empty.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sluice.orchestration.compose_vars import interpolate_tree


def load(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``airflow:`` block of the file, with ``${...}`` resolved from ``environ``."""
    spec = (yaml.safe_load(path.read_text()) or {}).get("airflow", {}) or {}
    return interpolate_tree(spec, dict(os.environ if environ is None else environ))


def connection_fields(item: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Keyword arguments of an Airflow ``Connection`` for one entry, or None when it is off."""
    if "conn_uri" in item:
        uri = str(item["conn_uri"] or "").strip()
        return {"conn_id": item["conn_id"], "uri": uri} if uri else None
    password_env = item.get("conn_password_env")
    extra = item.get("conn_extra")
    port = item.get("conn_port")
    return {
        "conn_id": item["conn_id"],
        "conn_type": item["conn_type"],
        "host": item.get("conn_host") or None,
        "schema": item.get("conn_schema") or None,
        "login": item.get("conn_login") or None,
        "password": (environ.get(password_env) or None) if password_env else None,
        "port": int(port) if port not in (None, "") else None,
        "extra": json.dumps(extra) if isinstance(extra, dict) else extra,
    }


def apply(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, int]:
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    environ = dict(os.environ if environ is None else environ)
    spec = load(path, environ)
    counts = {"connections": 0, "connections off": 0, "pools": 0, "variables": 0}
    with create_session() as session:
        for item in spec.get("connections") or []:
            fields = connection_fields(item, environ)
            existing = session.query(Connection).filter(Connection.conn_id == item["conn_id"]).one_or_none()
            if existing is not None:
                session.delete(existing)
                session.flush()
            if fields is None:
                counts["connections off"] += 1
                continue
            session.add(Connection(**fields))
            counts["connections"] += 1
        for item in spec.get("pools") or []:
            Pool.create_or_update_pool(
                name=item["pool_name"],
                slots=int(item["pool_slot"]),
                description=item.get("pool_description", ""),
                include_deferred=False,
                session=session,
            )
            counts["pools"] += 1
    for item in spec.get("variables") or []:
        Variable.set(item["variable_name"], item["variable_value"], description=item.get("description"))
        counts["variables"] += 1
    return counts


if __name__ == "__main__":
    result = apply(Path(sys.argv[1]))
    print(f"applied {sys.argv[1]}: " + ", ".join(f"{n} {k}" for k, n in result.items()))
