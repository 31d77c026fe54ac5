"""Apply an Astronomer-style ``airflow_settings.yaml`` (connections, pools, variables).

Run as ``python -m sluice.airflow_settings airflow_settings.yaml`` with AIRFLOW_HOME
set. Existing entries are updated, so applying twice changes nothing. Passwords are
never in the file: a connection's password comes from the environment variable
named by its ``conn_password_env`` key, when that is set.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml


def apply(path: Path) -> dict[str, int]:
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    spec = (yaml.safe_load(path.read_text()) or {}).get("airflow", {})
    counts = {"connections": 0, "pools": 0, "variables": 0}
    with create_session() as session:
        for item in spec.get("connections") or []:
            password = os.environ.get(item.get("conn_password_env", ""), None) if item.get("conn_password_env") else None
            extra = item.get("conn_extra")
            conn = Connection(
                conn_id=item["conn_id"],
                conn_type=item["conn_type"],
                host=item.get("conn_host"),
                schema=item.get("conn_schema"),
                login=item.get("conn_login"),
                password=password,
                port=item.get("conn_port"),
                extra=json.dumps(extra) if isinstance(extra, dict) else extra,
            )
            existing = session.query(Connection).filter(Connection.conn_id == conn.conn_id).one_or_none()
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(conn)
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
