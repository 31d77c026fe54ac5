"""Publishing and the PostgreSQL source under faults: hung servers, races, interleaved runs.

Real PostgreSQL and Redis, a FaultProxy in front of them where a server has to hang. Every
wait is bounded by the ``Timeouts`` given (small ones here), and a timeout says what timed out;
publishes running at the same time neither fail nor deadlock, and leave exactly the rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import psycopg2
import pytest
import redis
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from faults.proxy import FaultProxy
from sluice.core.usecase import load_use_case
from sluice.edges.publish import PublishError, Target, lookup_redis, publish_postgres, publish_redis
from sluice.edges.sources import SourceError
from sluice.edges.sources.postgres import PostgresSource
from sluice.settings import Timeouts

REDIS_URL = "redis://127.0.0.1:6379/0"
FAST = Timeouts(postgres_connect_s=1, postgres_statement_s=2, postgres_lock_s=1, redis_socket_s=0.5)
# For the races: a publish may wait for another's commit, and must not give up doing so.
PATIENT = Timeouts(postgres_connect_s=5, postgres_statement_s=60, postgres_lock_s=30, redis_socket_s=5)
CHURN = load_use_case("churn")
DAY = dt.date(2026, 3, 1)


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:10]}"


def target(table: str, prefix: str = "unused", ttl: int = 3600) -> Target:
    return Target(postgres_table=f"public.{table}", redis_prefix=prefix, key="customer_id", redis_ttl_seconds=ttl)


def scores(ds: str, keys: list[int], version: str = "1") -> pd.DataFrame:
    """Predictions of ``ds`` in the shape batch_score writes them, rows in the order of ``keys``."""
    rng = random.Random(f"{ds}{version}")
    score = [rng.random() for _ in keys]
    return pd.DataFrame({
        "ds": ds, "customer_id": keys, "score": score,
        "risk_band": ["high" if s >= 0.7 else "low" for s in score], "model_version": version,
    })


def day(i: int) -> str:
    return (DAY + dt.timedelta(days=i)).isoformat()


def rows(dsn: str, table: str) -> list[tuple[str, int, int, list[str]]]:
    """(ds, rows, distinct keys, model versions) of each day in the table."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT ds::text, count(*), count(DISTINCT customer_id), array_agg(DISTINCT model_version) "
                "FROM {} GROUP BY ds ORDER BY ds"
            ).format(sql.Identifier("public", table))
        )
        return cur.fetchall()


def proxied(dsn: str, proxy: FaultProxy) -> str:
    return make_dsn(dsn, host="127.0.0.1", port=proxy.port)


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """The error ``call`` raised (None if it returned), and how long it took."""
    start = time.monotonic()
    try:
        call()
    except Exception as exc:  # the error is what the test looks at
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def at_once(calls: list[Callable[[], Any]]) -> list[BaseException | None]:
    """Run the calls in threads released together; the error of each (None if it returned)."""
    gate = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> BaseException | None:
        gate.wait()
        try:
            call()
        except Exception as exc:
            return exc
        return None

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    namespace = unique("sluice-faults")
    yield namespace
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


# -- a PostgreSQL server that accepts and never answers ------------------------------------


def test_publish_to_a_hung_postgres_times_out_then_a_retry_publishes_once(pg_dsn: str) -> None:
    table = unique("hung_publish")
    day_scores = scores(day(0), list(range(1, 301)))
    with FaultProxy("127.0.0.1", 5432) as proxy:
        dsn = proxied(pg_dsn, proxy)
        proxy.blackhole()
        error, elapsed = timed(lambda: publish_postgres(dsn, day_scores, target(table), FAST))
        assert isinstance(error, PublishError)
        assert elapsed < 3
        assert str(error) == (
            f"PostgreSQL publish to table public.{table} at {proxy.address} did not answer within 1 s (connect_timeout)"
        )
        proxy.forward()
        assert publish_postgres(dsn, day_scores, target(table), FAST) == 300
        assert publish_postgres(dsn, day_scores, target(table), FAST) == 300  # the retry of a retry
        assert rows(pg_dsn, table) == [(day(0), 300, 300, ["1"])]


def test_publish_hanging_mid_transaction_is_cut_off_then_a_retry_publishes_once(pg_dsn: str) -> None:
    """The server stops answering after the connection is up: no server-side timeout can help."""
    table = unique("hung_midway")
    publish_postgres(pg_dsn, scores(day(0), list(range(1, 201))), target(table), FAST)
    rescored = scores(day(0), list(range(1, 201)), version="2")
    with FaultProxy("127.0.0.1", 5432) as proxy, contextlib.closing(psycopg2.connect(pg_dsn)) as blocker:
        dsn = proxied(pg_dsn, proxy)
        with blocker.cursor() as cur:  # the publish waits for this lock, and meanwhile the server hangs
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier("public", table)))
        threading.Timer(0.5, proxy.blackhole).start()
        error, elapsed = timed(lambda: publish_postgres(dsn, rescored, target(table), FAST))
        blocker.rollback()
        assert isinstance(error, PublishError)
        assert str(error) == (
            f"PostgreSQL publish to table public.{table} at {proxy.address} did not answer within 3 s (no reply)"
        )
        assert 2.5 < elapsed < 5
        proxy.forward()
        assert publish_postgres(dsn, rescored, target(table), FAST) == 200
    assert rows(pg_dsn, table) == [(day(0), 200, 200, ["2"])]


def test_publish_waiting_for_a_lock_gives_up_after_the_lock_timeout(pg_dsn: str) -> None:
    table = unique("locked")
    publish_postgres(pg_dsn, scores(day(0), [1, 2, 3]), target(table), FAST)
    with contextlib.closing(psycopg2.connect(pg_dsn)) as blocker, blocker.cursor() as cur:
        cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier("public", table)))
        error, elapsed = timed(lambda: publish_postgres(pg_dsn, scores(day(0), [1, 2, 3], "2"), target(table), FAST))
    assert isinstance(error, PublishError)
    assert str(error) == (
        f"PostgreSQL publish to table public.{table} at 127.0.0.1:5432 waited for a lock longer than 1 s (lock_timeout)"
    )
    assert elapsed < 2.5
    assert rows(pg_dsn, table) == [(day(0), 3, 3, ["1"])]  # nothing of the failed publish is left


EVENTS_DDL = """
CREATE TABLE {table} (
    event_id text PRIMARY KEY, customer_id bigint, event_time timestamptz NOT NULL, event_type text,
    duration_s double precision, amount numeric(12,2), plan text, region text, channel text, device text,
    signup_date date
)
"""


@pytest.fixture
def events_table(pg_dsn: str) -> str:
    """A small events table of DAY (three events), and a view of it that takes its time (``<table>_slow``)."""
    table = unique("events")
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(EVENTS_DDL).format(table=sql.Identifier("public", table)))
        for i in range(3):
            cur.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, 'session', 30, NULL, 'basic', 'eu', 'organic', 'ios', "
                        "'2025-01-01')").format(sql.Identifier("public", table)),
                (f"e{i}", 100 + i, f"{DAY.isoformat()} 1{i}:00:00+00"),
            )
        cur.execute(
            sql.SQL("CREATE VIEW {} AS SELECT e.* FROM {} e CROSS JOIN LATERAL (SELECT pg_sleep(3)) s").format(
                sql.Identifier("public", f"{table}_slow"), sql.Identifier("public", table)
            )
        )
    return table


def day_bounds() -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def test_source_reading_through_a_hung_postgres_times_out_then_reads(pg_dsn: str, events_table: str) -> None:
    with FaultProxy("127.0.0.1", 5432) as proxy:
        source = PostgresSource(proxied(pg_dsn, proxy), CHURN, f"public.{events_table}", timeouts=FAST)
        proxy.blackhole()
        error, elapsed = timed(lambda: source.extract(*day_bounds()))
        assert isinstance(error, SourceError)
        assert elapsed < 3
        assert str(error) == (
            f"PostgreSQL source table public.{events_table} at {proxy.address} did not answer within 1 s "
            "(connect_timeout)"
        )
        proxy.forward()
        assert source.extract(*day_bounds()).column("event_id").to_pylist() == ["e0", "e1", "e2"]

        # Hung while the query runs: the watchdog gives up after the statement timeout and the connect timeout.
        slow = PostgresSource(proxied(pg_dsn, proxy), CHURN, f"public.{events_table}_slow", timeouts=FAST)
        threading.Timer(0.5, proxy.blackhole).start()
        error, elapsed = timed(lambda: slow.extract(*day_bounds()))
        assert isinstance(error, SourceError)
        assert str(error) == (
            f"PostgreSQL source table public.{events_table}_slow at {proxy.address} did not answer within 3 s "
            "(no reply)"
        )
        assert 2.5 < elapsed < 5
        proxy.forward()
        assert source.extract(*day_bounds()).num_rows == 3


def test_a_source_query_running_too_long_is_cancelled_by_the_statement_timeout(
    pg_dsn: str, events_table: str
) -> None:
    slow = PostgresSource(pg_dsn, CHURN, f"public.{events_table}_slow", timeouts=FAST)
    error, elapsed = timed(lambda: slow.extract(*day_bounds()))
    assert isinstance(error, SourceError)
    assert str(error) == (
        f"PostgreSQL source table public.{events_table}_slow at 127.0.0.1:5432 did not answer within 2 s "
        "(statement_timeout)"
    )
    assert elapsed < 3.5


# -- publishes at the same time --------------------------------------------------------------


def test_concurrent_first_publishes_into_a_fresh_table_all_succeed(pg_dsn: str) -> None:
    """16 runs publish their day at once into a table none has created yet (it used to be 12 failures in 16)."""
    for _trial in range(4):
        table = unique("fresh")
        days = [scores(day(i), list(range(1, 51))) for i in range(16)]
        errors = at_once([functools.partial(publish_postgres, pg_dsn, s, target(table), PATIENT) for s in days])
        assert errors == [None] * 16
        assert rows(pg_dsn, table) == [(day(i), 50, 50, ["1"]) for i in range(16)]


def test_the_same_day_published_twice_at_once_in_opposite_orders_does_not_deadlock(pg_dsn: str) -> None:
    """Two runs of one day (a retry beside a backfill), their rows in opposite orders: it used to deadlock."""
    table = unique("same_day")
    keys = list(range(1, 2001))
    publish_postgres(pg_dsn, scores(day(-1), [1]), target(table), PATIENT)  # the table exists: no race to create it
    for trial in range(10):
        ds = day(trial // 2)  # a fresh day (inserts), then the same day again (updates)
        runs = [scores(ds, keys, f"a{trial}"), scores(ds, keys[::-1], f"b{trial}")]
        errors = at_once([functools.partial(publish_postgres, pg_dsn, s, target(table), PATIENT) for s in runs])
        assert errors == [None, None]
        by_day = {d: (n, distinct, versions) for d, n, distinct, versions in rows(pg_dsn, table)}
        n, distinct, versions = by_day[ds]
        assert (n, distinct) == (2000, 2000)
        assert versions in (["a" + str(trial)], ["b" + str(trial)])  # the whole day of one run, not a mix
        assert len(by_day) == trial // 2 + 2


# -- Redis ---------------------------------------------------------------------------------


def publishes(url: str, ds: str, tgt: Target) -> BaseException | None:
    """Publish day ``ds`` (model version = the day); the error, None if it published."""
    try:
        publish_redis(url, scores(ds, list(range(1, 301)), ds), ds, tgt, PATIENT)
    except Exception as exc:
        return exc
    return None


def sample(client: redis.Redis, key: str, done: threading.Event, into: list[bytes | None]) -> None:
    """Read ``key`` over and over until ``done``."""
    while not done.is_set():
        into.append(client.get(key))
        time.sleep(0.0005)


def test_the_latest_pointer_only_moves_forward_under_interleaved_publishes(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for trial in range(3):
        prefix = f"{redis_prefix}:{trial}"
        pointer = f"{prefix}:latest"
        # Any order (trial 0), or as a backfill runs: 16 at a time, in random order within each 16.
        days = [day(i) for i in range(120)]
        block = len(days) if trial == 0 else 16
        rng = random.Random(trial)
        days = [d for b in range(0, len(days), block) for d in rng.sample(days[b : b + block], len(days[b : b + block]))]
        tgt = target("unused", prefix, ttl=3600)
        samples: list[bytes | None] = []
        done = threading.Event()
        sampler = threading.Thread(target=sample, args=(client, pointer, done, samples))
        sampler.start()
        try:
            with ThreadPoolExecutor(16) as pool:  # 16 runs at a time
                errors = list(pool.map(functools.partial(publishes, REDIS_URL, tgt=tgt), days))
        finally:
            done.set()
            sampler.join()
        assert errors == [None] * len(days)
        seen = [s.decode() for s in samples if s is not None]
        assert samples[len(samples) - len(seen):] == [s.encode() for s in seen]  # once set, never gone
        assert len(seen) > 20  # the sampler saw the race, not just its end
        assert seen == sorted(seen)  # never backwards
        newest = max(days)
        assert client.get(pointer) == newest.encode()
        assert 3500 < client.ttl(pointer) <= 3600
        assert client.ttl(pointer) >= client.ttl(f"{prefix}:{newest}")  # it outlives the day it names
        assert lookup_redis(REDIS_URL, 7, prefix)["model_version"] == newest

    # Confirmed by a re-run of the newest day, the pointer's TTL is refreshed with the day's.
    client.expire(pointer, 60)
    publish_redis(REDIS_URL, scores(newest, [1, 2], "again"), newest, tgt, PATIENT)
    assert client.ttl(pointer) > 3500
    assert lookup_redis(REDIS_URL, 2, prefix)["model_version"] == "again"
    # An older day is published, the pointer neither moves nor has its TTL touched.
    client.expire(pointer, 60)
    publish_redis(REDIS_URL, scores(day(0), [1], "old"), day(0), tgt, PATIENT)
    assert client.get(pointer) == newest.encode()
    assert client.ttl(pointer) <= 60


def test_redis_that_never_answers_times_out_then_a_retry_publishes(redis_prefix: str) -> None:
    tgt = target("unused", f"{redis_prefix}:hung")
    day_scores = scores(day(0), list(range(1, 101)))
    with FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://{proxy.address}/0"
        proxy.blackhole()
        error, elapsed = timed(lambda: publish_redis(url, day_scores, day(0), tgt, FAST))
        assert isinstance(error, PublishError)
        assert str(error) == (
            f"Redis publish of {day(0)} to {tgt.redis_prefix}:{day(0)} at {proxy.address} did not answer within 0.5 s"
        )
        assert elapsed < 2
        error, elapsed = timed(lambda: lookup_redis(url, 1, tgt.redis_prefix, timeouts=FAST))
        assert isinstance(error, PublishError) and "did not answer within 0.5 s" in str(error)
        assert elapsed < 2
        proxy.forward()
        assert publish_redis(url, day_scores, day(0), tgt, FAST) == 100
        assert lookup_redis(url, 100, tgt.redis_prefix, timeouts=FAST)["ds"] == day(0)
    assert redis.Redis.from_url(REDIS_URL).hlen(f"{tgt.redis_prefix}:{day(0)}") == 100
