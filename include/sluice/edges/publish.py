"""Publish a day's scores where applications read them: PostgreSQL (upsert) and Redis (lookup by id).

Both are idempotent: re-publishing a day overwrites the same keys, never adds rows. Both are
safe when publishes run at the same time (two runs of a day, a backfill beside the schedule),
and no call waits longer than the timeouts it is given (``Settings.timeouts``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from sluice.core.usecase import UseCase
from sluice.settings import Timeouts

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A target did not take the scores: unreachable, or it did not answer in time."""


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


def publish_postgres(dsn: str, scores: pd.DataFrame, target: Target, timeouts: Timeouts | None = None) -> int:
    """Upsert the scores into the target table keyed by (ds, key); returns rows written."""
    from psycopg2 import sql

    from sluice.edges.sources.postgres import bounded_connection

    schema, _, name = target.postgres_table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    key = sql.Identifier(target.key)
    key_type = sql.SQL("bigint" if target.key_type == "integer" else "text")
    buffer = io.StringIO()
    scores[target.columns].to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    what = f"PostgreSQL publish to table {target.postgres_table}"
    with bounded_connection(dsn, timeouts or Timeouts(), what, PublishError) as conn:
        with conn.cursor() as cur:
            # Two first publishes would both create the table, and one fail on the catalog's unique
            # index: creation is serialised on the table's name, the lock held until it commits.
            lock = f"sluice.publish:{schema or 'public'}.{name}"
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (ds date NOT NULL, {} {} NOT NULL, "
                    "score double precision NOT NULL, risk_band text NOT NULL, model_version text NOT NULL, "
                    "published_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (ds, {}))"
                ).format(ident, key, key_type, key)
            )
        conn.commit()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TEMP TABLE incoming (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(ident))
            cur.copy_expert(
                sql.SQL("COPY incoming (ds, {}, score, risk_band, model_version) FROM STDIN WITH (FORMAT csv)")
                .format(key).as_string(conn),
                buffer,
            )
            # In key order: two publishes of the same day lock its rows in the same order, so one
            # waits for the other instead of both deadlocking.
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (ds, {}, score, risk_band, model_version) "
                    "SELECT ds, {}, score, risk_band, model_version FROM incoming ORDER BY ds, {} "
                    "ON CONFLICT (ds, {}) DO UPDATE SET score = EXCLUDED.score, "
                    "risk_band = EXCLUDED.risk_band, model_version = EXCLUDED.model_version, published_at = now()"
                ).format(ident, key, key, key, key)
            )
            written = cur.rowcount
    log.info("upserted %d scores into %s", written, target.postgres_table)
    return int(written)


# Moves <prefix>:latest forward only (set when absent or older), atomically: publishes of several
# days in any order leave it at the newest. Set or confirmed, it gets the day's TTL, so it never
# expires before the day hash it points to.
_ADVANCE_LATEST = """
local current = redis.call('GET', KEYS[1])
if current and current > ARGV[1] then
    return current
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


def publish_redis(url: str, scores: pd.DataFrame, ds: str, target: Target, timeouts: Timeouts | None = None) -> int:
    """One hash per day (field = entity key), and a pointer to the latest day published."""
    if dt.date.fromisoformat(ds).isoformat() != ds:  # the pointer compares days as text
        raise ValueError(f"ds must be YYYY-MM-DD, got {ds!r}")
    timeouts = timeouts or Timeouts()
    client = _redis_client(url, timeouts)
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
    advance_latest = client.register_script(_ADVANCE_LATEST)
    with _answers(client, f"Redis publish of {ds} to {key}", timeouts):
        # One transaction: a reader sees the day replaced whole, and the pointer never names a
        # day whose hash is not there yet.
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)  # a re-run replaces the day: no stale customers left behind
        items = list(values.items())
        for start in range(0, len(items), 10_000):
            pipe.hset(key, mapping=dict(items[start : start + 10_000]))
        pipe.expire(key, target.redis_ttl_seconds)
        advance_latest(keys=[f"{prefix}:latest"], args=[ds, target.redis_ttl_seconds], client=pipe)
        latest = _text(pipe.execute()[-1])
    log.info("published %d scores of %s to redis %s (latest: %s)", len(values), ds, key, latest)
    return len(values)


def lookup_redis(
    url: str, entity: int | str, prefix: str, ds: str | None = None, timeouts: Timeouts | None = None
) -> dict | None:
    """What an application does: the score of one entity (latest day unless ``ds``)."""
    timeouts = timeouts or Timeouts()
    client = _redis_client(url, timeouts)
    with _answers(client, f"Redis lookup in {prefix}", timeouts):
        day = ds or _text(client.get(f"{prefix}:latest") or b"")
        raw = client.hget(f"{prefix}:{day}", str(entity)) if day else None
    return json.loads(raw) if raw else None


def _redis_client(url: str, timeouts: Timeouts) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries inside a call (redis-py's default is 10): a wait stays one timeout long, and the
    # task's retries are the one retry policy.
    return redis.Redis.from_url(
        url, socket_timeout=timeouts.redis_socket_s, socket_connect_timeout=timeouts.redis_socket_s,
        socket_keepalive=True, retry=Retry(NoBackoff(), 0),
    )


@contextlib.contextmanager
def _answers(client: Any, what: str, timeouts: Timeouts) -> Iterator[None]:
    """Turn the driver's timeout or connection error into one that says what did not answer, where."""
    import redis

    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    try:
        yield
    except redis.TimeoutError as exc:
        raise PublishError(f"{what} at {where} did not answer within {timeouts.redis_socket_s:g} s") from exc
    except redis.ConnectionError as exc:
        raise PublishError(f"{what} at {where}: cannot connect: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
