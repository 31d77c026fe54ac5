"""Versioned tables on object storage (Delta Lake via delta-rs).

Writing a day replaces that day's partition in one atomic commit; every commit
carries lineage; any earlier version can be read back. The same code serves
``file://`` (the embedded default) and ``s3://`` (MinIO, AWS), where commits use
conditional puts so that concurrent backfill runs cannot corrupt a table.

Opening a table replays its log (on S3 a listing and several GETs), so a ``Lake``
opens each table once and then brings it up to date incrementally: see ``_current``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from sluice.core.lineage import META_PREFIX as _META_PREFIX
from sluice.core.lineage import Lineage
from sluice.settings import Settings
from sluice.tables import PARTITION_COLUMN, RECORD_TABLES, Table

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

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
    """The lake of one use case: ``settings.lake_root`` (``<lake_uri>/<use case>``).

    Keeps every table it opened: a read of the latest version first applies the log
    entries committed since (by this or any other process), a read of a pinned version
    gets exactly that version. A ``Lake`` is meant for one task or request, not to be
    shared between threads.
    """

    _PINNED_KEPT = 8  # time-travel snapshots kept per Lake (they never change)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.lake_root
        self.storage_options = settings.storage_options()
        self._latest: dict[str, DeltaTable] = {}  # table name -> follows the latest version
        self._pinned: dict[tuple[str, int], DeltaTable] = {}  # (table name, version) -> that version
        self._fs: pafs.FileSystem | None = None  # pyarrow's own, for reading data files (see _dataset)

    # -- locations --------------------------------------------------------------
    def uri(self, table: Table) -> str:
        uri = f"{self.root}/{table.name}"
        if uri.startswith("file://"):
            return unquote(urlparse(uri).path)
        return uri

    def _load(self, table: Table, version: int | None = None) -> DeltaTable | None:
        """A full open: replays the log from the last checkpoint. None while the table does not exist."""
        try:
            return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def _current(self, table: Table) -> DeltaTable | None:
        """The table at its latest committed version, or None while it does not exist.

        Opened once; afterwards ``update_incremental`` reads only the log entries added
        since (one listing when there are none), so commits of other processes and of
        this Lake are seen without opening the table again.
        """
        dt = self._latest.get(table.name)
        if dt is not None:
            dt.update_incremental()
            return dt
        dt = self._load(table)
        if dt is not None:
            self._latest[table.name] = dt
        return dt

    def _at_version(self, table: Table, version: int) -> DeltaTable | None:
        """The table at exactly ``version``; the latest snapshot serves when it is that version."""
        dt = self._latest.get(table.name)
        if dt is not None and dt.version() < version:
            dt.update_incremental()
        if dt is not None and dt.version() == version:
            return dt
        key = (table.name, version)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = self._load(table, version)
            if pinned is None:
                return None
            if len(self._pinned) >= self._PINNED_KEPT:
                del self._pinned[next(iter(self._pinned))]  # the oldest
            self._pinned[key] = pinned
        return pinned

    def _snapshot(self, table: Table, version: int | None = None) -> DeltaTable | None:
        return self._current(table) if version is None else self._at_version(table, version)

    def _open(self, table: Table, version: int | None = None) -> DeltaTable:
        dt = self._snapshot(table, version)
        if dt is None:
            raise LakeError(f"table {table.name} does not exist yet in {self.root}")
        return dt

    def exists(self, table: Table) -> bool:
        # Nothing here deletes a table, so one seen once still exists; a first check opens
        # the table for the reads that follow.
        return table.name in self._latest or self._current(table) is not None

    def version(self, table: Table) -> int | None:
        dt = self._current(table)
        return None if dt is None else dt.version()

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
        # The overwrite removes the files of ``days`` in the snapshot it is given.
        version = self._commit(table, days, lineage, lambda current: data, max_attempts=max_attempts,
                               mode="overwrite", predicate=predicate)
        assert version is not None
        log.info("wrote %s partitions %s: %d rows, version %d", table.name, days, data.num_rows, version)
        return version

    def _commit(
        self,
        table: Table,
        days: Sequence[str],
        lineage: Lineage,
        build: Callable[[DeltaTable | None], pa.Table | None],
        *,
        max_attempts: int,
        **write: Any,
    ) -> int | None:
        """One commit of ``build(snapshot)`` to ``table`` with its lineage; returns its version.

        ``build`` is given the table up to date right before each attempt (None while it does
        not exist: it is then created by URI) and returns the rows to write, or None for
        nothing to write. A conflict with another writer's commit (e.g. a concurrent backfill
        run creating the table) left our files invisible: the table is re-opened and the
        write tried again, with the rows built anew.
        """
        token = uuid.uuid4().hex
        metadata = lineage.to_metadata() | {_META_PREFIX + "commit_token": token,
                                            _META_PREFIX + "partitions": json.dumps(list(days))}
        for attempt in range(1, max_attempts + 1):
            current = self._current(table)
            data = build(current)
            if data is None:
                return None
            try:
                write_deltalake(
                    self.uri(table) if current is None else current,
                    data,
                    partition_by=[PARTITION_COLUMN],
                    storage_options=self.storage_options or None,
                    # Used when the table is created: a checkpoint every 10 commits keeps the
                    # log replay of every read short, however long the table's history.
                    configuration={"delta.checkpointInterval": "10"},
                    commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=20),
                    **write,
                )
            except CommitFailedError as exc:
                if attempt == max_attempts:
                    raise
                # The table object took part in the failed commit: its state is not to be
                # trusted (seen: its refresh then stopped short of later commits). Re-open.
                self._latest.pop(table.name, None)
                log.warning("commit to %s conflicted (%s); retry %d", table.name, exc, attempt)
                time.sleep(min(0.1 * attempt, 2.0) * (0.5 + random.random()))  # jitter: writers spread out
                continue
            version = self._version_of_commit(table, token)
            if version is not None:
                return version
            # The write reported success, yet no commit in the log is ours: a store whose
            # put-if-absent is not atomic let a concurrent writer's commit file replace ours
            # (seen on moto's S3 server). The log is whole without it, and nothing of ours is
            # visible: commit again, from the table as it now is.
            if attempt == max_attempts:
                break
            log.warning("commit to %s was lost (replaced by a concurrent writer's); retry %d", table.name, attempt)
        raise LakeError(f"commit {token} to {table.name} not found in its log after {max_attempts} attempts")

    def write_partition(self, table: Table, ds: str, data: pa.Table, lineage: Lineage) -> int:
        return self.write_partitions(table, [ds], data, lineage)

    def append_rows(
        self,
        table: Table,
        ds: str,
        rows: list[dict[str, Any]],
        key: Sequence[str],
        lineage: Lineage,
        *,
        max_attempts: int = 30,
    ) -> int | None:
        """Append ``rows`` to partition ``ds`` unless a row with the same ``key`` is there already.

        For the record tables (decisions, promotions): history is only ever added to, never
        rewritten. A re-run of the same run finds its row and adds nothing (returns None);
        concurrent writers each add theirs (an append does not conflict with another append;
        a commit that does conflict, e.g. two first writes creating the table, is retried
        after looking for the key again).
        """
        check_day(ds)
        if any(row.get(PARTITION_COLUMN) != ds for row in rows):
            raise LakeError(f"{table.name}: rows outside partition {ds}")
        key = tuple(key)
        new: list[dict[str, Any]] = []

        def unrecorded(current: DeltaTable | None) -> pa.Table | None:
            nonlocal new
            present = self._scan(table, current, [ds], list(key)) if current is not None else None
            seen = set(zip(*(present.column(k).to_pylist() for k in key), strict=True)) if present else set()
            new = [row for row in rows if tuple(row[k] for k in key) not in seen]
            return pa.Table.from_pylist(new, schema=table.schema) if new else None

        # An append does not conflict with another append; ``schema_mode="merge"``: a record
        # table of an older lake gains the columns added since.
        version = self._commit(table, [ds], lineage, unrecorded, max_attempts=max_attempts, mode="append",
                               schema_mode="merge")
        if version is None:
            log.info("%s %s: every row is recorded already (key %s)", table.name, ds, key)
        else:
            log.info("appended %d rows to %s %s: version %d", len(new), table.name, ds, version)
        return version

    def _version_of_commit(self, table: Table, token: str) -> int | None:
        """The version our commit landed at, read from the newest commit files themselves;
        None when none of them is ours.

        (``DeltaTable.history()`` numbers entries by position, which is off while other
        writers are committing concurrently.)
        """
        from sluice.edges.storage import filesystem

        fs, base = filesystem(self.settings, f"{self.root}/{table.name}/_delta_log")
        for fresh in (False, True):
            if fresh:  # the kept table object did not reach our commit: read the log anew
                self._latest.pop(table.name, None)
            latest = self._open(table).version()  # at or after our commit
            for version in range(latest, max(latest - 200, -1), -1):
                with fs.open_input_stream(f"{base}/{version:020d}.json") as f:
                    if token.encode() in f.read():
                        return version
        return None

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
        return self._scan(table, self._open(table, version), days, columns)

    def read_partition(
        self, table: Table, ds: str, *, version: int | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        return self.read_partitions(table, [ds], version=version, columns=columns)

    def read_table(self, table: Table, *, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
        return self._scan(table, self._open(table, version), None, columns)

    def partition_dataset(self, table: Table, ds: str, *, version: int | None = None) -> pads.Dataset:
        """The files of partition ``ds`` as a pyarrow dataset (without the ``ds`` column), for lazy scans."""
        dt = self._open(table, version)
        return self._dataset(table, dt, check_day(ds))

    def _dataset(self, table: Table, dt: DeltaTable, ds: str) -> pads.Dataset:
        """One partition's data files, read through pyarrow's own filesystem.

        Not ``DeltaTable.to_pyarrow_table``: that scans through a filesystem implemented in
        Python, and a scan's read-ahead can release its last Python file on one of Arrow's I/O
        threads while the interpreter shuts down; the thread then cannot take the GIL and the
        process aborts ("terminate called without an active exception", exit 134), about one
        exit in four after a partition-filtered read (seen in `make demo` and in every child
        process that reads a record table).
        """
        import pyarrow.dataset as pads

        if self._fs is None:
            from sluice.edges.storage import filesystem

            self._fs = filesystem(self.settings, self.root)[0]
        paths = [_fs_path(uri) for uri in dt.file_uris(partition_filters=[(PARTITION_COLUMN, "=", ds)])]
        schema = pa.schema([f for f in table.schema if f.name != PARTITION_COLUMN])
        return pads.dataset(paths, schema=schema, format="parquet", filesystem=self._fs)

    def _scan(
        self, table: Table, dt: DeltaTable, days: Sequence[str] | None, columns: list[str] | None
    ) -> pa.Table:
        """Rows of the partitions ``days`` that exist (None: all), cast to the table's schema."""
        target = table.schema if columns is None else pa.schema([table.schema.field(c) for c in columns])
        present = {p[PARTITION_COLUMN] for p in dt.partitions()}
        data_columns = [n for n in target.names if n != PARTITION_COLUMN]
        parts = []
        for ds in sorted(present) if days is None else [d for d in days if d in present]:
            data = self._dataset(table, dt, ds).to_table(columns=data_columns)
            parts.append(data.append_column(PARTITION_COLUMN, pa.array([ds] * data.num_rows, pa.string())))
        if not parts:
            return target.empty_table()
        return pa.concat_tables([p.select(target.names).cast(target) for p in parts])

    def partitions(self, table: Table, *, version: int | None = None) -> list[str]:
        dt = self._snapshot(table, version)
        return [] if dt is None else sorted({p[PARTITION_COLUMN] for p in dt.partitions()})

    def has_partition(self, table: Table, ds: str) -> bool:
        return check_day(ds) in self.partitions(table)

    def partition_rows(self, table: Table, *, version: int | None = None) -> dict[str, int]:
        """Row count of every partition, from the log's file statistics (no data read)."""
        dt = self._snapshot(table, version)
        return {} if dt is None else _partition_rows(dt)

    def history(self, table: Table, limit: int | None = None) -> list[dict[str, Any]]:
        return self._open(table).history(limit=limit)

    def lineage(self, table: Table, version: int | None = None) -> Lineage | None:
        """Lineage recorded in the commit that produced ``version`` (default: latest)."""
        return _lineage(self._open(table), version)

    def all_tables(self) -> tuple[Table, ...]:
        """The use case's tables, then the record tables every use case has."""
        from sluice.core import usecase

        return usecase.of(self.settings).tables.all() + RECORD_TABLES

    def status(self, tables: Sequence[Table] | None = None) -> list[TableStatus]:
        out = []
        tables = self.all_tables() if tables is None else tables
        for table in tables:
            dt = self._current(table)  # one snapshot per table: the figures agree with each other
            if dt is None:
                out.append(TableStatus(table.name, None, 0, None, 0, 0, None))
                continue
            rows = _partition_rows(dt)
            latest = max(rows) if rows else None
            out.append(
                TableStatus(
                    table=table.name,
                    version=dt.version(),
                    partitions=len(rows),
                    latest_partition=latest,
                    rows_latest_partition=rows.get(latest, 0) if latest else 0,
                    rows_total=sum(rows.values()),
                    last_commit=_lineage(dt, None),
                )
            )
        return out


def _fs_path(uri: str) -> str:
    """A data file's URI as delta-rs gives it, as a path of pyarrow's filesystem for the lake."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path if parsed.scheme else uri)  # delta-rs percent-encodes the paths it gives
    return f"{parsed.netloc}{unquote(parsed.path)}"


def _partition_rows(dt: DeltaTable) -> dict[str, int]:
    actions = dt.get_add_actions(flatten=True)
    counts: dict[str, int] = {}
    names = actions.column_names
    part_col = next(n for n in names if n.endswith(PARTITION_COLUMN) and n.startswith("partition"))
    for ds, rows in zip(actions.column(part_col).to_pylist(), actions.column("num_records").to_pylist()):
        counts[ds] = counts.get(ds, 0) + int(rows or 0)
    return dict(sorted(counts.items()))


def _lineage(dt: DeltaTable, version: int | None) -> Lineage | None:
    target = dt.version() if version is None else version
    for entry in dt.history():
        if int(entry["version"]) == target:
            return Lineage.from_metadata(entry)
    return None
