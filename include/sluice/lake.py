"""Versioned tables on object storage (Delta Lake via delta-rs).

Writing a day replaces that day's partition in one atomic commit; every commit
carries lineage; any earlier version can be read back. The same code serves
``file://`` (the embedded default) and ``s3://`` (MinIO, AWS), where commits use
conditional puts so that concurrent backfill runs cannot corrupt a table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from sluice.lineage import META_PREFIX as _META_PREFIX
from sluice.lineage import Lineage
from sluice.settings import Settings
from sluice.tables import ALL_TABLES, PARTITION_COLUMN, Table

log = logging.getLogger(__name__)

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class LakeError(RuntimeError):
    """A table or partition is missing or cannot be written."""


def check_day(ds: str) -> str:
    """Validate a partition day; it ends up in a predicate, so nothing else may pass."""
    if not isinstance(ds, str) or not _DAY.fullmatch(ds):
        raise ValueError(f"partition day must look like YYYY-MM-DD, got {ds!r}")
    try:
        dt.date.fromisoformat(ds)
    except ValueError as exc:
        raise ValueError(f"partition day {ds!r} is not a date") from exc
    return ds


@dataclass(frozen=True)
class TableStatus:
    table: str
    version: int | None
    partitions: int
    latest_partition: str | None
    rows_latest_partition: int
    rows_total: int
    last_commit: Lineage | None


class Lake:
    """The lake under ``settings.lake_uri``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.lake_uri
        self.storage_options = settings.storage_options()

    # -- locations --------------------------------------------------------------
    def uri(self, table: Table) -> str:
        uri = f"{self.root}/{table.name}"
        if uri.startswith("file://"):
            return unquote(urlparse(uri).path)
        return uri

    def _open(self, table: Table, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options or None)
        except TableNotFoundError as exc:
            raise LakeError(f"table {table.name} does not exist yet in {self.root}") from exc

    def exists(self, table: Table) -> bool:
        try:
            self._open(table)
        except LakeError:
            return False
        return True

    def version(self, table: Table) -> int | None:
        return self._open(table).version() if self.exists(table) else None

    # -- writing ----------------------------------------------------------------
    def write_partitions(
        self,
        table: Table,
        days: Sequence[str],
        data: pa.Table,
        lineage: Lineage,
        *,
        max_attempts: int = 30,
    ) -> int:
        """Replace the partitions ``days`` of ``table`` with ``data`` in one commit.

        Returns the version of the commit. Rows outside ``days`` are refused, so a
        write can never touch another day's data.
        """
        days = sorted({check_day(d) for d in days})
        if not days:
            raise ValueError("no partition day given")
        data = data.select(table.schema.names).cast(table.schema)
        if data.num_rows:
            present = set(data.column(PARTITION_COLUMN).unique().to_pylist())
            stray = present - set(days)
            if stray:
                raise LakeError(f"{table.name}: rows for {sorted(stray)} outside the partitions written {days}")
        predicate = f"{PARTITION_COLUMN} IN ({', '.join(repr(d) for d in days)})"
        token = uuid.uuid4().hex
        metadata = lineage.to_metadata() | {_META_PREFIX + "commit_token": token,
                                            _META_PREFIX + "partitions": json.dumps(days)}
        for attempt in range(1, max_attempts + 1):
            try:
                write_deltalake(
                    self.uri(table),
                    data,
                    partition_by=[PARTITION_COLUMN],
                    mode="overwrite",
                    predicate=predicate,
                    storage_options=self.storage_options or None,
                    # Used when the table is created: a checkpoint every 10 commits keeps the
                    # log replay of every read short, however long the table's history.
                    configuration={"delta.checkpointInterval": "10"},
                    commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=20),
                )
                break
            except CommitFailedError as exc:
                # Another writer committed first (e.g. a concurrent backfill run creating
                # the table); our files are not visible, so simply try again.
                if attempt == max_attempts:
                    raise
                log.warning("commit to %s conflicted (%s); retry %d", table.name, exc, attempt)
                time.sleep(min(0.1 * attempt, 2.0) * (0.5 + random.random()))  # jitter: writers spread out
        version = self._version_of_commit(table, token)
        log.info("wrote %s partitions %s: %d rows, version %d", table.name, days, data.num_rows, version)
        return version

    def write_partition(self, table: Table, ds: str, data: pa.Table, lineage: Lineage) -> int:
        return self.write_partitions(table, [ds], data, lineage)

    def upsert_rows(self, table: Table, ds: str, rows: list[dict[str, Any]], key: str, lineage: Lineage) -> int:
        """Add ``rows`` to partition ``ds``, replacing the day's rows with the same ``key``.

        For small record tables (decisions, promotions): re-running the same run replaces
        its own row, while other runs of the same day keep theirs.
        """
        existing = self.read_partition(table, ds).to_pylist() if self.has_partition(table, ds) else []
        keys = {row[key] for row in rows}
        merged = [row for row in existing if row[key] not in keys] + rows
        return self.write_partition(table, ds, pa.Table.from_pylist(merged, schema=table.schema), lineage)

    def _version_of_commit(self, table: Table, token: str) -> int:
        """The version our commit landed at, read from the newest commit files themselves.

        (``DeltaTable.history()`` numbers entries by position, which is off while other
        writers are committing concurrently.)
        """
        from sluice.storage import filesystem

        fs, base = filesystem(self.settings, f"{self.root}/{table.name}/_delta_log")
        latest = self._open(table).version()
        for version in range(latest, max(latest - 200, -1), -1):
            with fs.open_input_stream(f"{base}/{version:020d}.json") as f:
                if token.encode() in f.read():
                    return version
        raise LakeError(f"commit {token} not found in the log of {table.name}")

    # -- reading ----------------------------------------------------------------
    def read_partitions(
        self,
        table: Table,
        days: Iterable[str],
        *,
        version: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        days = sorted({check_day(d) for d in days})
        dt = self._open(table, version)
        result = dt.to_pyarrow_table(partitions=[(PARTITION_COLUMN, "in", days)], columns=columns)
        target = table.schema if columns is None else pa.schema([table.schema.field(c) for c in columns])
        return result.select(target.names).cast(target)

    def read_partition(
        self, table: Table, ds: str, *, version: int | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        return self.read_partitions(table, [ds], version=version, columns=columns)

    def read_table(self, table: Table, *, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
        result = self._open(table, version).to_pyarrow_table(columns=columns)
        target = table.schema if columns is None else pa.schema([table.schema.field(c) for c in columns])
        return result.select(target.names).cast(target)

    def partitions(self, table: Table, *, version: int | None = None) -> list[str]:
        if not self.exists(table):
            return []
        return sorted({p[PARTITION_COLUMN] for p in self._open(table, version).partitions()})

    def has_partition(self, table: Table, ds: str) -> bool:
        return check_day(ds) in self.partitions(table)

    def partition_rows(self, table: Table, *, version: int | None = None) -> dict[str, int]:
        """Row count of every partition, from the log's file statistics (no data read)."""
        if not self.exists(table):
            return {}
        actions = self._open(table, version).get_add_actions(flatten=True)
        counts: dict[str, int] = {}
        names = actions.column_names
        part_col = next(n for n in names if n.endswith(PARTITION_COLUMN) and n.startswith("partition"))
        for ds, rows in zip(actions.column(part_col).to_pylist(), actions.column("num_records").to_pylist()):
            counts[ds] = counts.get(ds, 0) + int(rows or 0)
        return dict(sorted(counts.items()))

    def history(self, table: Table, limit: int | None = None) -> list[dict[str, Any]]:
        return self._open(table).history(limit=limit)

    def lineage(self, table: Table, version: int | None = None) -> Lineage | None:
        """Lineage recorded in the commit that produced ``version`` (default: latest)."""
        dt = self._open(table)
        target = dt.version() if version is None else version
        for entry in dt.history():
            if int(entry["version"]) == target:
                return Lineage.from_metadata(entry)
        return None

    def status(self, tables: Sequence[Table] = ALL_TABLES) -> list[TableStatus]:
        out = []
        for table in tables:
            if not self.exists(table):
                out.append(TableStatus(table.name, None, 0, None, 0, 0, None))
                continue
            rows = self.partition_rows(table)
            latest = max(rows) if rows else None
            out.append(
                TableStatus(
                    table=table.name,
                    version=self.version(table),
                    partitions=len(rows),
                    latest_partition=latest,
                    rows_latest_partition=rows.get(latest, 0) if latest else 0,
                    rows_total=sum(rows.values()),
                    last_commit=self.lineage(table),
                )
            )
        return out
