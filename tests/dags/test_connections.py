"""The connections of the publishers and the source, read through the providers' hooks.

A connection is given the way a deployment gives it (``AIRFLOW_CONN_<ID>``, as a URI or as
JSON) and what Sluice derives from it is used against the real PostgreSQL and Redis of the
machine: the extras reach libpq, the database number reaches Redis.
"""

from __future__ import annotations

import json
import os

import psycopg2.extensions
import pytest
import redis

from sluice.edges.sources.postgres import bounded_connection
from sluice.orchestration.context import postgres_dsn, redis_url
from sluice.settings import Timeouts

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _pg_reachable() -> bool:
    import psycopg2

    try:
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


def test_a_postgres_uri_with_a_quoted_password_and_extras_becomes_libpq_parameters(monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SHOP_DB",
        "postgresql://reader:p%40ss%27w%20rd@db.internal:5433/shop?sslmode=require&application_name=sluice",
    )
    params = psycopg2.extensions.parse_dsn(postgres_dsn("shop_db"))
    assert params == {"host": "db.internal", "port": "5433", "dbname": "shop", "user": "reader",
                      "password": "p@ss'w rd", "sslmode": "require", "application_name": "sluice"}


def test_the_hooks_own_options_are_not_passed_to_libpq(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_DB", json.dumps({
        "conn_type": "postgres", "host": "db", "login": "u", "schema": "shop",
        "extra": {"cursor": "dictcursor", "sqlalchemy_scheme": "postgresql", "connect_timeout": "4"},
    }))
    params = psycopg2.extensions.parse_dsn(postgres_dsn("shop_db"))
    assert params == {"host": "db", "port": "5432", "dbname": "shop", "user": "u", "connect_timeout": "4"}


@pytest.mark.skipif(not _pg_reachable(), reason="PostgreSQL at 127.0.0.1:5432 is not running")
def test_the_dsn_of_a_connection_reaches_the_real_database_with_its_extras(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_DB", json.dumps({
        "conn_type": "postgres", "host": PG_HOST, "port": PG_PORT, "login": "postgres", "schema": "postgres",
        "extra": {"application_name": "sluice-connection-test"},
    }))
    with bounded_connection(postgres_dsn("shop_db"), Timeouts(), "connection test") as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('application_name'), "
                    "EXTRACT(EPOCH FROM current_setting('statement_timeout')::interval)")
        database, application, statement_timeout = cur.fetchone()
    assert (database, application) == ("postgres", "sluice-connection-test")
    assert float(statement_timeout) == Timeouts().postgres_statement_s  # the edge's bound is kept


@pytest.mark.parametrize(
    ("connection", "db"),
    [
        ("redis://127.0.0.1:6379/5", 5),  # a URI: the database is its path (the connection's schema)
        (json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "schema": "5",
                     "extra": {"db": 4}}), 4),  # RedisHook's extra.db wins
        (json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": 6379}), 0),
    ],
)
def test_a_redis_connection_names_its_database_as_redis_hook_reads_it(monkeypatch, connection, db) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SCORES_CACHE", connection)
    url = redis_url("scores_cache")
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    assert client.connection_pool.connection_kwargs["db"] == db
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("Redis at 127.0.0.1:6379 is not running")
    key = f"sluice-test:connections:{os.getpid()}"
    client.set(key, "x", ex=30)
    assert redis.Redis(host="127.0.0.1", port=6379, db=db, socket_timeout=3).get(key) == b"x"
    client.delete(key)


def test_a_redis_password_and_tls_survive_the_url(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SCORES_CACHE", json.dumps({
        "conn_type": "redis", "host": "cache", "port": 6380, "login": "app", "password": "p@ss:w/rd",
        "extra": {"db": 2, "ssl": True, "ssl_cert_reqs": "required"},
    }))
    kwargs = redis.Redis.from_url(redis_url("scores_cache")).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["username"], kwargs["password"]) == (
        "cache", 6380, 2, "app", "p@ss:w/rd")
    assert kwargs["ssl_cert_reqs"] == "required"


@pytest.mark.skipif(not _pg_reachable(), reason="PostgreSQL at 127.0.0.1:5432 is not running")
def test_the_connections_page_test_button_answers_for_a_postgres_connection(monkeypatch) -> None:
    """What the UI's Test button runs for conn_type postgres (AIRFLOW__CORE__TEST_CONNECTION=Enabled)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    monkeypatch.setenv("AIRFLOW_CONN_SHOP_DB", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres")
    assert PostgresHook(postgres_conn_id="shop_db").test_connection()[0] is True
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_DB", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/no_such_database")
    ok, message = PostgresHook(postgres_conn_id="shop_db").test_connection()
    assert ok is False and "no_such_database" in message
