"""Where raw events come from. Every source answers one question: the events of
one data interval, as untyped text columns (``tables.RAW_EVENT_FIELDS``)."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from sluice.settings import Settings
from sluice.tables import RAW_EVENT_FIELDS

RAW_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in RAW_EVENT_FIELDS])


class SourceError(RuntimeError):
    """The source cannot deliver the interval (missing columns, unreadable file, ...)."""


class Source(Protocol):
    name: str

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """Events with event time in [start, end), every column as text."""
        ...


def conform(table: pa.Table, origin: str) -> pa.Table:
    """Cast a source's table to the raw schema: all fields, as text; refuse missing ones."""
    missing = [name for name in RAW_EVENT_FIELDS if name not in table.column_names]
    if missing:
        raise SourceError(f"{origin}: missing column(s) {missing}; expected {RAW_EVENT_FIELDS}")
    columns = []
    for name in RAW_EVENT_FIELDS:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            # In UTC whatever the zone it came in (strftime formats local time); %S carries
            # the fraction; the suffix marks UTC explicitly.
            target = pa.timestamp("us", tz="UTC") if col.type.tz else pa.timestamp("us")
            text = pc.strftime(col.cast(target), format="%Y-%m-%dT%H:%M:%S")
            col = pc.binary_join_element_wise(text, pa.scalar("Z" if col.type.tz else ""), "")
        elif pa.types.is_date(col.type):
            col = pc.strftime(col, format="%Y-%m-%d")
        elif not pa.types.is_string(col.type):
            col = col.cast(pa.string())
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=RAW_SCHEMA)


def make_source(settings: Settings) -> Source:
    """The source the settings name."""
    if settings.source == "simulator":
        from sluice.edges.sources.simulator import SimulatorSource

        return SimulatorSource.from_settings(settings)
    if settings.source == "postgres":
        from sluice.edges.sources.postgres import PostgresSource

        if not settings.source_postgres_dsn:
            raise SourceError("SLUICE_SOURCE=postgres needs SLUICE_SOURCE_POSTGRES_DSN (or the Airflow connection)")
        return PostgresSource(settings.source_postgres_dsn, settings.source_postgres_table)
    if settings.source == "files":
        from sluice.edges.sources.files import FileSource

        return FileSource(settings.landing, settings)
    raise SourceError(f"unknown source {settings.source!r}")
