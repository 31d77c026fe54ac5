"""Where raw events come from. Every source answers one question: the events of
one data interval, as untyped text columns (the use case's ``raw_fields``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from sluice.core.usecase import EXTRA_COLUMN, UseCase
from sluice.settings import Settings

if TYPE_CHECKING:
    pass


class SourceError(RuntimeError):
    """The source cannot deliver the interval (missing columns, unreadable file, ...)."""


class Source(Protocol):
    @property
    def name(self) -> str: ...

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """Events with event time in [start, end), every column as text."""
        ...


def raw_schema(uc: UseCase) -> pa.Schema:
    """What a source delivers: every declared raw field as text, undeclared ones as JSON in ``extra_fields``."""
    return pa.schema([pa.field(n, pa.string()) for n in [*uc.raw_fields, EXTRA_COLUMN]])


def as_text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_nested(col.type):
        # A list or a struct (Parquet) as JSON, the text a JSON lines file delivers: the contract judges it.
        return pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
    if pa.types.is_timestamp(col.type):
        # In UTC whatever the zone it came in (strftime formats local time); %S carries
        # the fraction; the suffix marks UTC explicitly.
        target = pa.timestamp("us", tz="UTC") if col.type.tz else pa.timestamp("us")
        text = pc.strftime(col.cast(target), format="%Y-%m-%dT%H:%M:%S")
        return pc.binary_join_element_wise(text, pa.scalar("Z" if col.type.tz else ""), "")
    if pa.types.is_date(col.type):
        return pc.strftime(col, format="%Y-%m-%d")
    if not pa.types.is_string(col.type):
        return col.cast(pa.string())
    return col


def conform(table: pa.Table, origin: str, uc: UseCase) -> pa.Table:
    """Cast a source's table to the raw schema: declared fields as text; refuse missing ones.

    Columns the spec does not declare are not dropped: they are kept, per row, as a JSON
    object in ``extra_fields`` (and reported by the ingest step).
    """
    fields = uc.raw_fields
    names = table.column_names
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise SourceError(f"{origin}: column(s) {doubled} appear more than once in the header")
    missing = [name for name in fields if name not in names]
    if missing:
        # Names are matched exactly: say so when the header has one in another case or with spaces.
        near = {n: m for m in missing for n in names if n.strip().lower() == m.lower()}
        hint = f"; the header has {sorted(near)} (names must match exactly)" if near else ""
        raise SourceError(f"{origin}: missing column(s) {missing}; {uc.name} expects {fields}{hint}")
    def text(name: str) -> pa.ChunkedArray | pa.Array:
        try:
            return as_text(table.column(name))
        except pa.ArrowException as exc:  # bytes that are not UTF-8, a type without a text form
            raise SourceError(
                f"{origin}: column {name!r} ({table.schema.field(name).type}) cannot be read as text: {exc}"
            ) from exc

    columns = [text(name) for name in fields]
    extras = [n for n in names if n not in fields and n != EXTRA_COLUMN]
    if extras:
        texts = {n: text(n).to_pylist() for n in extras}
        packed = [
            json.dumps({n: texts[n][i] for n in extras if texts[n][i] is not None}, sort_keys=True)
            for i in range(table.num_rows)
        ]
        columns.append(pa.array(packed, pa.string()))
    elif EXTRA_COLUMN in names:
        columns.append(text(EXTRA_COLUMN))
    else:
        columns.append(pa.nulls(table.num_rows, pa.string()))
    return pa.Table.from_arrays(columns, schema=raw_schema(uc))


def extra_fields(table: pa.Table) -> list[str]:
    """The undeclared fields a raw table carries (for the ingest report)."""
    if EXTRA_COLUMN not in table.column_names:
        return []
    seen: dict[str, None] = {}
    for text in table.column(EXTRA_COLUMN).drop_null().unique().to_pylist():
        seen.update(dict.fromkeys(json.loads(text)))
    return sorted(seen)


def make_source(settings: Settings, uc: UseCase) -> Source:
    """The source the settings name, for use case ``uc``."""
    if settings.source == "simulator":
        if uc.spec.simulator is None:
            raise SourceError(f"{uc.name} has no simulator: set SLUICE_SOURCE to postgres or files")
        factory = uc.resolve(uc.spec.simulator.factory)
        return factory(uc, settings)  # type: ignore[no-any-return]
    if settings.source == "postgres":
        from sluice.edges.sources.postgres import PostgresSource

        if not settings.source_postgres_dsn:
            raise SourceError("SLUICE_SOURCE=postgres needs SLUICE_SOURCE_POSTGRES_DSN (or the Airflow connection)")
        return PostgresSource(settings.source_postgres_dsn, uc, settings.source_postgres_table, timeouts=settings.timeouts)
    if settings.source == "files":
        from sluice.edges.sources.files import FileSource

        return FileSource(settings.landing, settings, uc)
    raise SourceError(f"unknown source {settings.source!r}")
