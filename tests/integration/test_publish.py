"""Publishing scores to the real PostgreSQL and Redis: upserts, no duplicates on re-run.

Each use case publishes to its own target, built from its spec (``publish``) and keyed by
its entity: churn by an integer customer_id into public.churn_scores and sluice:churn,
purchases by a string customer_id into public.purchase_lapse_scores and sluice:purchases.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pytest
import redis

from sluice.core.usecase import UseCase, load_use_case
from sluice.edges.publish import Target, lookup_redis, publish_postgres, publish_redis
from sluice.stages.score import predictions_table

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
CHURN = load_use_case("churn")
PURCHASES = load_use_case("purchases")


def target_for(uc: UseCase) -> Target:
    """The target a use case publishes to, as batch_score builds it (orchestration.context.publish_scores)."""
    pub = uc.spec.publish
    return Target(
        postgres_table=pub.postgres_table, redis_prefix=pub.redis_prefix, key=uc.key,
        key_type=uc.spec.entity.type, redis_ttl_seconds=pub.redis_ttl_days * 24 * 3600,
    )


def churn_ids(n: int) -> list[int]:
    return list(range(100_001, 100_001 + n))


def purchase_ids(n: int) -> list[str]:
    return [f"C{i:06d}" for i in range(1, n + 1)]


def _scores(uc: UseCase, ds: str, keys: list, version: str = "3", seed: int = 0) -> pd.DataFrame:
    """The predictions of ``ds`` exactly as batch_score writes them (and the publishers read them)."""
    score = np.random.default_rng(seed).random(len(keys))
    key_type = pa.int64() if uc.spec.entity.type == "integer" else pa.string()
    table = predictions_table(uc, pa.chunked_array([pa.array(keys, key_type)]), score, version, 7, ds)
    return table.to_pandas()


def pg_rows(dsn: str, table: str, key: str, days: tuple[str, ...]) -> list[tuple]:
    """(ds, rows, distinct keys, lowest and highest model version) of each of ``days`` in the table."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT ds::text, count(*), count(DISTINCT {key}), min(model_version), max(model_version) "
            f"FROM {table} WHERE ds::text = ANY(%s) GROUP BY ds ORDER BY ds",
            (list(days),),
        )
        return cur.fetchall()


def key_column_type(dsn: str, table: str, key: str) -> str:
    schema, name = table.split(".")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name = %s",
            (schema, name, key),
        )
        return cur.fetchone()[0]


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A throwaway namespace on the shared Redis: the use cases' prefixes go below it, never the real keys."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    namespace = f"sluice-test-{uuid.uuid4().hex[:8]}"
    yield namespace
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


def test_each_use_case_has_its_own_target_from_its_spec() -> None:
    churn, purchases = target_for(CHURN), target_for(PURCHASES)
    assert (churn.postgres_table, churn.redis_prefix, churn.key, churn.key_type) == (
        "public.churn_scores", "sluice:churn", "customer_id", "integer",
    )
    assert (purchases.postgres_table, purchases.redis_prefix, purchases.key, purchases.key_type) == (
        "public.purchase_lapse_scores", "sluice:purchases", "customer_id", "string",
    )
    assert churn.columns == ["ds", "customer_id", "score", "risk_band", "model_version"]


def test_postgres_upsert_is_idempotent_and_updates(pg_dsn: str) -> None:
    # The session's database is a throwaway one: the real table name of the spec is safe to use.
    target = target_for(CHURN)
    table = target.postgres_table
    first = _scores(CHURN, "2026-02-10", churn_ids(500))
    assert publish_postgres(pg_dsn, first, target) == 500
    assert publish_postgres(pg_dsn, first, target) == 500  # re-run
    rescored = _scores(CHURN, "2026-02-10", churn_ids(500), version="4", seed=1)
    publish_postgres(pg_dsn, rescored, target)
    publish_postgres(pg_dsn, _scores(CHURN, "2026-02-11", churn_ids(200)), target)
    assert pg_rows(pg_dsn, table, "customer_id", ("2026-02-10", "2026-02-11")) == [
        ("2026-02-10", 500, 500, "4", "4"), ("2026-02-11", 200, 200, "3", "3"),
    ]
    assert key_column_type(pg_dsn, table, "customer_id") == "bigint"
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT score, risk_band FROM {table} WHERE ds = '2026-02-10' AND customer_id = 100001")
        score, band = cur.fetchone()
    assert score == pytest.approx(rescored.loc[0, "score"])
    assert band == rescored.loc[0, "risk_band"]


def test_a_string_keyed_use_case_publishes_to_its_own_text_keyed_table(pg_dsn: str) -> None:
    target = target_for(PURCHASES)
    table = target.postgres_table
    ids = purchase_ids(400)
    first = _scores(PURCHASES, "2026-02-10", ids)
    # Its risk bands, not churn's: the spec's 0.7 / 0.4 bounds.
    assert set(first.loc[first["score"] >= 0.7, "risk_band"]) == {"high"}
    assert set(first.loc[(first["score"] >= 0.4) & (first["score"] < 0.7), "risk_band"]) == {"medium"}

    assert publish_postgres(pg_dsn, first, target) == 400
    assert publish_postgres(pg_dsn, first, target) == 400  # re-publishing the day: the same rows
    assert pg_rows(pg_dsn, table, "customer_id", ("2026-02-10",)) == [("2026-02-10", 400, 400, "3", "3")]
    # A re-scored day overwrites its rows; another day lands beside it.
    rescored = _scores(PURCHASES, "2026-02-10", ids, version="4", seed=1)
    publish_postgres(pg_dsn, rescored, target)
    publish_postgres(pg_dsn, _scores(PURCHASES, "2026-02-11", ids[:50]), target)
    assert pg_rows(pg_dsn, table, "customer_id", ("2026-02-10", "2026-02-11")) == [
        ("2026-02-10", 400, 400, "4", "4"), ("2026-02-11", 50, 50, "3", "3"),
    ]

    assert key_column_type(pg_dsn, table, "customer_id") == "text"
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT customer_id, score FROM {table} WHERE ds = '2026-02-10' AND customer_id = %s", ("C000001",))
        key, score = cur.fetchone()
        assert key == "C000001"  # the id as given: text, leading zeros kept
        assert score == pytest.approx(rescored.loc[0, "score"])

    # Churn publishing the same day goes to its own (integer-keyed) table; neither sees the other's rows.
    day = ("2026-03-01",)
    publish_postgres(pg_dsn, _scores(CHURN, day[0], churn_ids(30)), target_for(CHURN))
    publish_postgres(pg_dsn, _scores(PURCHASES, day[0], ids[:20]), target)
    assert pg_rows(pg_dsn, "public.churn_scores", "customer_id", day) == [(day[0], 30, 30, "3", "3")]
    assert pg_rows(pg_dsn, table, "customer_id", day) == [(day[0], 20, 20, "3", "3")]
    assert key_column_type(pg_dsn, "public.churn_scores", "customer_id") == "bigint"


def test_redis_lookup_by_customer_and_rerun_replaces_the_day(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    target = target_for(CHURN)
    target = dataclasses.replace(target, redis_prefix=f"{redis_prefix}:{target.redis_prefix}")
    prefix = target.redis_prefix
    assert prefix.endswith(":sluice:churn")
    ds, earlier = "2026-02-10", "2026-02-09"
    key = f"{prefix}:{ds}"
    scores = _scores(CHURN, ds, churn_ids(300))
    assert publish_redis(REDIS_URL, scores, ds, target) == 300
    assert publish_redis(REDIS_URL, scores, ds, target) == 300
    assert client.hlen(key) == 300
    got = lookup_redis(REDIS_URL, 100_005, prefix=prefix)  # latest day
    assert got["ds"] == ds
    assert got["score"] == pytest.approx(scores.loc[4, "score"], abs=1e-6)
    assert got["risk_band"] == scores.loc[4, "risk_band"]
    assert got["model_version"] == "3" and got["ds"] == ds
    # A re-run with fewer customers leaves no stale ones behind.
    publish_redis(REDIS_URL, scores.iloc[:100], ds, target)
    assert client.hlen(key) == 100
    assert lookup_redis(REDIS_URL, 100_250, prefix, ds) is None
    assert 0 < client.ttl(key) <= 14 * 24 * 3600
    # Re-publishing an earlier day does not move the latest pointer back.
    publish_redis(REDIS_URL, _scores(CHURN, earlier, churn_ids(10)), earlier, target)
    assert client.get(f"{prefix}:latest").decode() == ds


def test_a_string_keyed_use_case_publishes_under_its_own_redis_prefix(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    churn = dataclasses.replace(target_for(CHURN), redis_prefix=f"{redis_prefix}:sluice:churn")
    purchases = target_for(PURCHASES)
    purchases = dataclasses.replace(purchases, redis_prefix=f"{redis_prefix}:{purchases.redis_prefix}")
    assert purchases.redis_prefix.endswith(":sluice:purchases")
    ds = "2026-02-10"
    ids = purchase_ids(250)
    scores = _scores(PURCHASES, ds, ids)
    churn_scores = _scores(CHURN, ds, churn_ids(20), version="9")

    assert publish_redis(REDIS_URL, scores, ds, purchases) == 250
    publish_redis(REDIS_URL, churn_scores, ds, churn)
    assert publish_redis(REDIS_URL, scores, ds, purchases) == 250  # re-publishing the day: idempotent
    assert client.hlen(f"{purchases.redis_prefix}:{ds}") == 250
    assert client.hlen(f"{churn.redis_prefix}:{ds}") == 20
    assert sorted(k.decode() for k in client.hkeys(f"{purchases.redis_prefix}:{ds}")) == ids

    got = lookup_redis(REDIS_URL, "C000007", purchases.redis_prefix)
    assert got is not None and got["ds"] == ds and got["model_version"] == "3"
    assert got["score"] == pytest.approx(scores.loc[6, "score"], abs=1e-6)
    assert got["risk_band"] == scores.loc[6, "risk_band"]
    # The two use cases do not see each other's entities, nor share a latest pointer.
    assert lookup_redis(REDIS_URL, "C000007", churn.redis_prefix) is None
    assert lookup_redis(REDIS_URL, 100_001, purchases.redis_prefix) is None
    assert lookup_redis(REDIS_URL, 100_001, churn.redis_prefix)["model_version"] == "9"
    publish_redis(REDIS_URL, _scores(PURCHASES, "2026-02-12", ids[:5]), "2026-02-12", purchases)
    assert client.get(f"{purchases.redis_prefix}:latest").decode() == "2026-02-12"
    assert client.get(f"{churn.redis_prefix}:latest").decode() == ds
    # A re-run with fewer customers leaves no stale ones behind.
    publish_redis(REDIS_URL, scores.iloc[:10], ds, purchases)
    assert client.hlen(f"{purchases.redis_prefix}:{ds}") == 10
    assert lookup_redis(REDIS_URL, "C000200", purchases.redis_prefix, ds) is None
