"""Events from a PostgreSQL table, read incrementally by event time over the data interval.

Also the one way Sluice opens a PostgreSQL connection (:func:`bounded_connection`, used by the
publisher too): every wait on the server is bounded, and a timeout says what timed out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv

from sluice.core.usecase import UseCase
from sluice.edges.sources import SourceError, conform, raw_schema
from sluice.settings import Timeouts

# Text renderings that round-trip through the contract's parsers.
_TIMESTAMP = "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_DATE = "to_char({c}, 'YYYY-MM-DD')"

# A peer that is gone (host down, link cut) is noticed within about a minute: keepalive probes
# while the connection is idle, tcp_user_timeout (ms) for data sent and never acknowledged.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
              "tcp_user_timeout": 60_000}


class _Watchdog:
    """Cuts the connection's socket when one round trip takes longer than ``seconds``.

    The server bounds its own work (statement_timeout, lock_timeout); this is for a server that
    cannot answer at all (hung, stopped, behind a network that swallows replies), which the
    keepalives miss as long as the kernel on the other side still acknowledges.
    """

    def __init__(self, fd: int, seconds: int) -> None:
        self.fd = fd
        self.seconds = seconds
        self.fired = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> None:
        timer = threading.Timer(self.seconds, self._cut)
        timer.daemon = True
        with self._lock:
            self._timer = timer
        timer.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:  # once out of here, the fd is never touched again (it may be closed and reused)
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _cut(self) -> None:
        with self._lock:
            if threading.current_thread() is not self._timer:
                return  # that round trip came back in the meantime
            self.fired = True
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked call returns with an error


class _Connection(psycopg2.extensions.connection):  # type: ignore[misc]
    watchdog: _Watchdog

    def commit(self) -> None:
        with self.watchdog:
            super().commit()

    def rollback(self) -> None:
        with self.watchdog:
            super().rollback()


class _Cursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """A cursor whose round trips (``execute``, ``copy_expert``) are watched."""

    def execute(self, query: Any, vars: Any = None) -> None:
        with self.connection.watchdog:
            super().execute(query, vars)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        with self.connection.watchdog:
            super().copy_expert(sql, file, size)


def address(dsn: str) -> str:
    """host:port of a DSN, for messages (libpq's defaults when it names none)."""
    params = psycopg2.extensions.parse_dsn(dsn)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"


@contextlib.contextmanager
def bounded_connection(
    dsn: str, timeouts: Timeouts, what: str, error: type[Exception] = SourceError
) -> Iterator[Any]:
    """A psycopg2 connection on which nothing waits unbounded; commits when the block succeeds.

    connect_timeout bounds the connection, statement_timeout and lock_timeout each statement and
    lock wait, idle_in_transaction_session_timeout lets the server drop a client that vanished
    mid-transaction, keepalives notice a dead peer, and a watchdog gives up on a reply that has
    not come after the statement timeout and the connect timeout more. A timeout (or a failure to
    connect) raises ``error``, its message naming ``what`` and where; other errors of the
    driver (a bad query) pass unchanged.
    """
    where = address(dsn)
    own = (
        f"-c statement_timeout={timeouts.postgres_statement_s}s -c lock_timeout={timeouts.postgres_lock_s}s "
        f"-c idle_in_transaction_session_timeout={timeouts.postgres_statement_s}s"
    )
    options = " ".join(o for o in (psycopg2.extensions.parse_dsn(dsn).get("options"), own) if o)
    try:
        conn = psycopg2.connect(
            dsn, connect_timeout=timeouts.postgres_connect_s, options=options,
            connection_factory=_Connection, cursor_factory=_Cursor, **KEEPALIVES,
        )
    except psycopg2.OperationalError as exc:
        if "timeout expired" in str(exc):
            raise error(
                f"{what} at {where} did not answer within {timeouts.postgres_connect_s} s (connect_timeout)"
            ) from exc
        raise error(f"{what} at {where}: cannot connect: {str(exc).strip()}") from exc
    watchdog = conn.watchdog = _Watchdog(conn.fileno(), timeouts.postgres_statement_s + timeouts.postgres_connect_s)
    try:
        yield conn
        conn.commit()
    except psycopg2.Error as exc:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        if watchdog.fired:
            raise error(f"{what} at {where} did not answer within {watchdog.seconds} s (no reply)") from exc
        if isinstance(exc, psycopg2.errors.QueryCanceled) and "statement timeout" in str(exc):
            raise error(
                f"{what} at {where} did not answer within {timeouts.postgres_statement_s} s (statement_timeout)"
            ) from exc
        if isinstance(exc, psycopg2.errors.LockNotAvailable) and "lock timeout" in str(exc):
            raise error(
                f"{what} at {where} waited for a lock longer than {timeouts.postgres_lock_s} s (lock_timeout)"
            ) from exc
        raise
    finally:
        conn.close()


@dataclass(frozen=True)
class PostgresSource:
    dsn: str
    use_case: UseCase
    table: str = "public.events"
    name: str = "postgres"
    timeouts: Timeouts = field(default_factory=Timeouts, hash=False)

    @property
    def time_column(self) -> str:
        return self.use_case.event_time

    def _render(self) -> dict[str, str]:
        out = {self.time_column: _TIMESTAMP}
        for name, f in self.use_case.spec.fields.items():
            if f.type == "timestamp":
                out[name] = _TIMESTAMP
            elif f.type == "date":
                out[name] = _DATE
        return out

    def _query(self) -> object:
        from psycopg2 import sql

        parts = self.table.split(".")
        if not 1 <= len(parts) <= 2:
            raise SourceError(f"bad table name {self.table!r}: use schema.table")
        render = self._render()
        fields = self.use_case.raw_fields
        columns = [
            sql.SQL(render[c].format(c="{}") if c in render else "{}::text").format(sql.Identifier(c))
            + sql.SQL(" AS ")
            + sql.Identifier(c)
            for c in fields
        ]
        # A stable order: the time, then the event id (or the entity key when events have no id).
        tie = self.use_case.spec.events.id or self.use_case.key
        return sql.SQL(
            "COPY (SELECT {cols} FROM {table} WHERE {t} >= {start} AND {t} < {end} ORDER BY {t}, {tie}) "
            "TO STDOUT WITH (FORMAT csv, HEADER true)"
        ).format(
            cols=sql.SQL(", ").join(columns),
            tie=sql.Identifier(tie),
            table=sql.Identifier(*parts),
            t=sql.Identifier(self.time_column),
            start=sql.Placeholder("start"),
            end=sql.Placeholder("end"),
        )

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """Rows with ``start <= event_time < end``: the run's data interval, nothing else."""
        buffer = io.BytesIO()
        what = f"PostgreSQL source table {self.table}"
        with bounded_connection(self.dsn, self.timeouts, what) as conn, conn.cursor() as cur:
            query = cur.mogrify(self._query().as_string(conn), {"start": start, "end": end})  # type: ignore[attr-defined]
            cur.copy_expert(query.decode(), buffer)
        buffer.seek(0)
        if not buffer.getbuffer().nbytes:
            return raw_schema(self.use_case).empty_table()
        table = pacsv.read_csv(
            buffer,
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in self.use_case.raw_fields},
                # COPY writes NULL as an unquoted empty field and nothing else: text such as
                # "NA" or "null" is data, kept for the contract to judge.
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )
        return conform(table, f"postgres table {self.table}", self.use_case)
