"""Publish a day's scores where applications read them: PostgreSQL (upsert) and Redis (lookup by id).

Both are idempotent: re-publishing a day overwrites the same keys, never adds rows.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from sluice.core.usecase import UseCase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a use case's scores go: its own table and key prefix, keyed by its entity."""

    postgres_table: str
    redis_prefix: str
    key: str = "entity_id"
    key_type: Literal["integer", "string"] = "integer"
    redis_ttl_seconds: int = 14 * 24 * 3600

    @property
    def columns(self) -> list[str]:
        return ["ds", self.key, "score", "risk_band", "model_version"]

    @classmethod
    def for_use_case(cls, uc: UseCase) -> Target:
        """The targets the use case's spec names, keyed by its entity."""
        spec = uc.spec.publish
        return cls(postgres_table=spec.postgres_table, redis_prefix=spec.redis_prefix, key=uc.key,
                   key_type=uc.spec.entity.type, redis_ttl_seconds=spec.redis_ttl_days * 24 * 3600)


def publish_postgres(dsn: str, scores: pd.DataFrame, target: Target) -> int:
    """Upsert the scores into the target table keyed by (ds, key); returns rows written."""
    import psycopg2
    from psycopg2 import sql

    schema, _, name = target.postgres_table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    key = sql.Identifier(target.key)
    key_type = sql.SQL("bigint" if target.key_type == "integer" else "text")
    buffer = io.StringIO()
    scores[target.columns].to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (ds date NOT NULL, {} {} NOT NULL, "
                "score double precision NOT NULL, risk_band text NOT NULL, model_version text NOT NULL, "
                "published_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (ds, {}))"
            ).format(ident, key, key_type, key)
        )
        cur.execute(sql.SQL("CREATE TEMP TABLE incoming (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(ident))
        cur.copy_expert(
            sql.SQL("COPY incoming (ds, {}, score, risk_band, model_version) FROM STDIN WITH (FORMAT csv)")
            .format(key).as_string(conn),
            buffer,
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (ds, {}, score, risk_band, model_version) "
                "SELECT ds, {}, score, risk_band, model_version FROM incoming "
                "ON CONFLICT (ds, {}) DO UPDATE SET score = EXCLUDED.score, "
                "risk_band = EXCLUDED.risk_band, model_version = EXCLUDED.model_version, published_at = now()"
            ).format(ident, key, key, key)
        )
        written = cur.rowcount
    log.info("upserted %d scores into %s", written, target.postgres_table)
    return int(written)


def publish_redis(url: str, scores: pd.DataFrame, ds: str, target: Target) -> int:
    """One hash per day (field = entity key), and a pointer to the latest day published."""
    import redis

    client = redis.Redis.from_url(url)
    prefix = target.redis_prefix
    key = f"{prefix}:{ds}"
    values = {
        str(entity): json.dumps(
            {"score": round(float(score), 6), "risk_band": band, "model_version": version, "ds": ds}
        )
        for entity, score, band, version in zip(
            scores[target.key], scores["score"], scores["risk_band"], scores["model_version"], strict=True
        )
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)  # a re-run replaces the day: no stale customers left behind
    items = list(values.items())
    for start in range(0, len(items), 10_000):
        pipe.hset(key, mapping=dict(items[start : start + 10_000]))
    pipe.expire(key, target.redis_ttl_seconds)
    pipe.execute()
    latest = client.get(f"{prefix}:latest")
    if latest is None or _text(latest) <= ds:
        client.set(f"{prefix}:latest", ds)
    log.info("published %d scores of %s to redis %s", len(values), ds, key)
    return len(values)


def lookup_redis(url: str, entity: int | str, prefix: str, ds: str | None = None) -> dict | None:
    """What an application does: the score of one entity (latest day unless ``ds``)."""
    import redis

    client = redis.Redis.from_url(url)
    day = ds or _text(client.get(f"{prefix}:latest") or b"")
    raw = client.hget(f"{prefix}:{day}", str(entity)) if day else None
    return json.loads(raw) if raw else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
