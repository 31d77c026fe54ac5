"""Publishing scores to the real PostgreSQL and Redis: upserts, no duplicates on re-run."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import psycopg2
import pytest
import redis

from sluice.edges.publish import lookup_redis, publish_postgres, publish_redis

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


def _scores(ds: str, n: int, version: str = "3", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    return pd.DataFrame(
        {
            "ds": ds,
            "customer_id": np.arange(100_001, 100_001 + n),
            "score": score,
            "risk_band": np.where(score >= 0.5, "high", np.where(score >= 0.2, "medium", "low")),
            "model_version": version,
        }
    )


def test_postgres_upsert_is_idempotent_and_updates(pg_dsn: str) -> None:
    table = f"public.scores_{uuid.uuid4().hex[:8]}"
    first = _scores("2026-02-10", 500)
    assert publish_postgres(pg_dsn, first, table) == 500
    assert publish_postgres(pg_dsn, first, table) == 500  # re-run
    rescored = _scores("2026-02-10", 500, version="4", seed=1)
    publish_postgres(pg_dsn, rescored, table)
    publish_postgres(pg_dsn, _scores("2026-02-11", 200), table)
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT ds::text, count(*), count(DISTINCT customer_id), min(model_version) FROM {table} GROUP BY ds ORDER BY ds")
        assert cur.fetchall() == [("2026-02-10", 500, 500, "4"), ("2026-02-11", 200, 200, "3")]
        cur.execute(f"SELECT score FROM {table} WHERE ds = '2026-02-10' AND customer_id = 100001")
        assert cur.fetchone()[0] == pytest.approx(rescored.loc[0, "score"])


def test_redis_lookup_by_customer_and_rerun_replaces_the_day() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    prefix = f"sluice-test-{uuid.uuid4().hex[:8]}:churn"  # never the real keys
    ds, earlier = "2026-02-10", "2026-02-09"
    key = f"{prefix}:{ds}"
    try:
        scores = _scores(ds, 300)
        assert publish_redis(REDIS_URL, scores, ds, prefix) == 300
        assert publish_redis(REDIS_URL, scores, ds, prefix) == 300
        assert client.hlen(key) == 300
        got = lookup_redis(REDIS_URL, 100_005, prefix=prefix)  # latest day
        assert got["ds"] == ds
        assert got["score"] == pytest.approx(scores.loc[4, "score"], abs=1e-6)
        assert got["model_version"] == "3" and got["ds"] == ds
        # A re-run with fewer customers leaves no stale ones behind.
        publish_redis(REDIS_URL, scores.iloc[:100], ds, prefix)
        assert client.hlen(key) == 100
        assert lookup_redis(REDIS_URL, 100_250, ds, prefix) is None
        assert client.ttl(key) > 0
        # Re-publishing an earlier day does not move the latest pointer back.
        publish_redis(REDIS_URL, _scores(earlier, 10), earlier, prefix)
        assert client.get(f"{prefix}:latest").decode() == ds
    finally:
        client.delete(key, f"{prefix}:{earlier}", f"{prefix}:latest")
