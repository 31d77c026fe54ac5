"""airflow_settings.yaml: one file for every deployment, resolved from the environment.

The embedded default, the twin and the containers apply the same file; only the
environment differs. These tests apply it to a real (SQLite) Airflow metadata DB.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.ops.twin import Compose
from sluice.orchestration.compose_vars import InterpolationError
from sluice.orchestration.settings_file import apply, connection_fields, load

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "airflow_settings.yaml"
CONNECTIONS = (
    "sluice_source_postgres", "sluice_scores_postgres", "sluice_scores_redis", "sluice_alert_webhook", "sluice_notify_slack",
    "sluice_notify_smtp",
)


def _connections() -> dict[str, object]:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        return {c.conn_id: c for c in session.query(Connection).filter(Connection.conn_id.in_(CONNECTIONS))}


def test_the_file_lists_every_connection_the_dags_use() -> None:
    ids = [c["conn_id"] for c in load(SETTINGS, {})["connections"]]
    assert sorted(ids) == sorted(CONNECTIONS)


def test_the_embedded_default_has_every_connection_off_and_the_training_pool() -> None:
    spec = load(SETTINGS, {})
    assert [connection_fields(c, {}) for c in spec["connections"]] == [None] * len(CONNECTIONS)
    assert spec["pools"] == [{"pool_name": "training", "pool_slot": 1, "pool_description": spec["pools"][0]["pool_description"]}]
    assert spec["variables"][0]["variable_value"] == "embedded"


def test_the_compose_environment_turns_the_connections_on_at_the_service_hosts() -> None:
    """What airflow-init applies in a container: hosts of the compose network, never 127.0.0.1."""
    variables = {"POSTGRES_PASSWORD": "pw", "AIRFLOW__CORE__FERNET_KEY": "k", "AIRFLOW__API_AUTH__JWT_SECRET": "j",
                 "AIRFLOW__API__SECRET_KEY": "s", "MINIO_ROOT_PASSWORD": "m",
                 "SLUICE_ALERT_WEBHOOK_URI": "https://hooks.example.com/services/T0/B0/x"}
    environ = Compose.load().environment("airflow-init", variables)
    spec = load(SETTINGS, environ)
    fields = {c["conn_id"]: connection_fields(c, environ) for c in spec["connections"]}
    assert fields["sluice_scores_postgres"]["uri"] == "postgresql://airflow:pw@postgres:5432/sluice_scores"
    assert fields["sluice_scores_redis"]["uri"] == "redis://redis:6379/1"
    assert fields["sluice_alert_webhook"]["uri"] == "https://hooks.example.com/services/T0/B0/x"
    assert fields["sluice_source_postgres"] is None  # SLUICE_SOURCE=simulator by default: no source DB
    assert spec["variables"][0]["variable_value"] == "cluster"
    assert "127.0.0.1" not in json.dumps(fields)


def test_a_field_connection_takes_its_password_from_the_named_variable() -> None:
    item = {"conn_id": "mine", "conn_type": "postgres", "conn_host": "db", "conn_port": "5433",
            "conn_login": "reader", "conn_password_env": "MY_PASSWORD", "conn_extra": {"sslmode": "require"}}
    fields = connection_fields(item, {"MY_PASSWORD": "s3cret"})
    assert fields["password"] == "s3cret" and fields["port"] == 5433
    assert json.loads(fields["extra"]) == {"sslmode": "require"}
    assert connection_fields(item, {})["password"] is None


def test_a_required_variable_that_is_missing_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("airflow:\n  variables:\n    - variable_name: x\n      variable_value: ${NEEDED:?set NEEDED}\n")
    with pytest.raises(InterpolationError, match="NEEDED"):
        load(path, {})


def test_applying_creates_replaces_and_turns_off(migrated_db: None) -> None:
    from airflow.models import Pool, Variable

    on = {"SLUICE_SCORES_POSTGRES_URI": "postgresql://u:p%40ss@db.internal:5432/scores",
          "SLUICE_SCORES_REDIS_URI": "redis://cache:6379/3",
          "SLUICE_ALERT_WEBHOOK_URI": "https://hooks.example.com/services/T0/B0/x",
          "SLUICE_SLACK_WEBHOOK_URI": "slackwebhook://:T0%2FB0%2Fx@/",
          "SLUICE_ENVIRONMENT": "production"}
    assert apply(SETTINGS, on) == {"connections": 4, "connections off": 2, "pools": 1, "variables": 1}
    assert apply(SETTINGS, on)["connections"] == 4  # twice: same result, no duplicates
    conns = _connections()
    assert sorted(conns) == ["sluice_alert_webhook", "sluice_notify_slack", "sluice_scores_postgres",
                             "sluice_scores_redis"]
    # The URI form the file documents is what the Slack provider's hook reads: the webhook's path
    # under Slack's default endpoint.
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    assert conns["sluice_notify_slack"].password == "T0/B0/x"
    with pytest.MonkeyPatch.context() as mp:  # a task reads it through the SDK: the same URI from the environment
        mp.setenv("AIRFLOW_CONN_SLUICE_NOTIFY_SLACK", on["SLUICE_SLACK_WEBHOOK_URI"])
        url = SlackWebhookHook(slack_webhook_conn_id="sluice_notify_slack")._get_conn_params()["url"]
    assert url.startswith("https://") and url.endswith("/services/T0/B0/x")
    pg = conns["sluice_scores_postgres"]
    assert (pg.conn_type, pg.host, pg.port, pg.schema, pg.login, pg.password) == (
        "postgres", "db.internal", 5432, "scores", "u", "p@ss")
    assert (conns["sluice_scores_redis"].host, conns["sluice_scores_redis"].schema) == ("cache", "3")
    assert Pool.get_pool("training").slots == 1
    assert Variable.get("sluice_environment") == "production"

    # Leaving a variable empty turns its connection off: the publisher then skips.
    apply(SETTINGS, {**on, "SLUICE_SCORES_REDIS_URI": ""})
    assert "sluice_scores_redis" not in _connections()
    apply(SETTINGS, {})
    assert _connections() == {} and Variable.get("sluice_environment") == "embedded"
