"""Publish a day's scores where applications read them: PostgreSQL (upsert) and Redis (lookup by id).

Both are idempotent: re-publishing a day overwrites the same keys, never adds rows.
"""

from __future__ import annotations

import io
import json
import logging

import pandas as pd

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["ds", "customer_id", "score", "risk_band", "model_version"]
REDIS_PREFIX = "sluice:churn"
REDIS_TTL_SECONDS = 14 * 24 * 3600


def publish_postgres(dsn: str, scores: pd.DataFrame, table: str = "public.churn_scores") -> int:
    """Upsert the scores into ``table`` keyed by (ds, customer_id); returns rows written."""
    import psycopg2
    from psycopg2 import sql

    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    buffer = io.StringIO()
    scores[SCORE_COLUMNS].to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (ds date NOT NULL, customer_id bigint NOT NULL, "
                "score double precision NOT NULL, risk_band text NOT NULL, model_version text NOT NULL, "
                "published_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (ds, customer_id))"
            ).format(ident)
        )
        cur.execute(sql.SQL("CREATE TEMP TABLE incoming (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(ident))
        cur.copy_expert(
            "COPY incoming (ds, customer_id, score, risk_band, model_version) FROM STDIN WITH (FORMAT csv)", buffer
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (ds, customer_id, score, risk_band, model_version) "
                "SELECT ds, customer_id, score, risk_band, model_version FROM incoming "
                "ON CONFLICT (ds, customer_id) DO UPDATE SET score = EXCLUDED.score, "
                "risk_band = EXCLUDED.risk_band, model_version = EXCLUDED.model_version, published_at = now()"
            ).format(ident)
        )
        written = cur.rowcount
    log.info("upserted %d scores into %s", written, table)
    return int(written)


def publish_redis(url: str, scores: pd.DataFrame, ds: str, prefix: str = REDIS_PREFIX) -> int:
    """One hash per day (field = customer id), and a pointer to the latest day published."""
    import redis

    client = redis.Redis.from_url(url)
    key = f"{prefix}:{ds}"
    values = {
        str(row.customer_id): json.dumps(
            {"score": round(float(row.score), 6), "risk_band": row.risk_band, "model_version": row.model_version, "ds": ds}
        )
        for row in scores.itertuples(index=False)
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)  # a re-run replaces the day: no stale customers left behind
    items = list(values.items())
    for start in range(0, len(items), 10_000):
        pipe.hset(key, mapping=dict(items[start : start + 10_000]))
    pipe.expire(key, REDIS_TTL_SECONDS)
    pipe.execute()
    latest = client.get(f"{prefix}:latest")
    if latest is None or latest.decode() <= ds:
        client.set(f"{prefix}:latest", ds)
    log.info("published %d scores of %s to redis %s", len(values), ds, key)
    return len(values)


def lookup_redis(url: str, customer_id: int, ds: str | None = None, prefix: str = REDIS_PREFIX) -> dict | None:
    """What an application does: the score of one customer (latest day unless ``ds``)."""
    import redis

    client = redis.Redis.from_url(url)
    day = ds or (client.get(f"{prefix}:latest") or b"").decode()
    raw = client.hget(f"{prefix}:{day}", str(customer_id)) if day else None
    return json.loads(raw) if raw else None
