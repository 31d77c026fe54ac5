"""Events from a PostgreSQL table, read incrementally by event time over the data interval."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

from sluice.edges.sources import RAW_SCHEMA, SourceError, conform
from sluice.tables import RAW_EVENT_FIELDS

# Text renderings that round-trip through the contract's parsers.
_RENDER = {
    "event_time": "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "signup_date": "to_char({c}, 'YYYY-MM-DD')",
}


@dataclass(frozen=True)
class PostgresSource:
    dsn: str
    table: str = "public.events"
    time_column: str = "event_time"
    name: str = "postgres"

    def _query(self) -> object:
        from psycopg2 import sql

        parts = self.table.split(".")
        if not 1 <= len(parts) <= 2:
            raise SourceError(f"bad table name {self.table!r}: use schema.table")
        columns = [
            sql.SQL(_RENDER[c].format(c="{}") if c in _RENDER else "{}::text").format(sql.Identifier(c))
            + sql.SQL(" AS ")
            + sql.Identifier(c)
            for c in RAW_EVENT_FIELDS
        ]
        return sql.SQL(
            "COPY (SELECT {cols} FROM {table} WHERE {t} >= {start} AND {t} < {end} ORDER BY {t}, event_id) "
            "TO STDOUT WITH (FORMAT csv, HEADER true)"
        ).format(
            cols=sql.SQL(", ").join(columns),
            table=sql.Identifier(*parts),
            t=sql.Identifier(self.time_column),
            start=sql.Placeholder("start"),
            end=sql.Placeholder("end"),
        )

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """Rows with ``start <= event_time < end``: the run's data interval, nothing else."""
        import psycopg2

        buffer = io.BytesIO()
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            query = cur.mogrify(self._query().as_string(conn), {"start": start, "end": end})  # type: ignore[attr-defined]
            cur.copy_expert(query.decode(), buffer)
        buffer.seek(0)
        if not buffer.getbuffer().nbytes:
            return RAW_SCHEMA.empty_table()
        table = pacsv.read_csv(
            buffer,
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in RAW_EVENT_FIELDS},
                # COPY writes NULL as an unquoted empty field and nothing else: text such as
                # "NA" or "null" is data, kept for the contract to judge.
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )
        return conform(table, f"postgres table {self.table}")
