"""Lake upkeep (``lake_maintenance``): keep what re-runs, rebuilds and registered models need, no more.

Every table of a Delta lake keeps the files of its past versions until something deletes
them: after 57 rewrites of a table, 115 files (1.9 GB) stayed on disk for 3 live ones. Each
day, for every table of the use case and the record tables every use case has:

1. **compact** small files (delta-rs's ``optimize.compact``; record tables grow one small
   file per append),
2. write a **checkpoint** at the latest version,
3. **vacuum** the files out of the table for longer than ``upkeep.vacuum_retention_hours``,
4. **clean the log** below the oldest version to keep, older than ``upkeep.log_retention_days``,
5. **collect the orphans** (files a killed writer left, no commit references them),

and append what it did (files and bytes before and after, versions) to ``lake/upkeep``.
Before that, ``retire_old_state`` deletes the partitions of ``state/<entity>_cumulative``
older than what re-runs and rebuilds read.

**Pinned versions.** The version of the features table a model learned from is pinned in
its registry tags (``feature_table_version``): training, re-evaluation and the drift
reference read it. The versions of the model versions under the aliases ``champion``,
``previous-champion`` and ``challenger`` are never vacuumed and their log entries are never
deleted, however old (``sluice.edges.upkeep``). The registry is read before anything is
deleted, and an unreachable registry fails the run rather than vacuum without its pins. A
version pinned after that read is a recent one (a retraining reads the latest version), kept
by the retention.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.core.usecase import UseCase
from sluice.edges import upkeep
from sluice.edges.lake import Lake
from sluice.settings import Settings
from sluice.tables import LAKE_UPKEEP, PARTITION_COLUMN, Table

log = logging.getLogger(__name__)

FEATURE_VERSION_TAG = "feature_table_version"  # set on every registered version by sluice.stages.retrain


class UpkeepError(RuntimeError):
    """Upkeep was asked to do something that would lose what re-runs or models need."""


class Retired(TypedDict):
    table: str
    keep_days: int
    first_kept: str | None
    partitions: list[str]  # the days deleted
    version: int | None  # of the delete commit


class TableUpkeep(TypedDict):
    table: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    live_files: int
    live_bytes: int
    version_before: int
    version_after: int
    pinned_versions: list[int]
    lost_pins: list[int]
    compacted_files: int
    vacuumed_files: int
    log_files_deleted: int
    orphans_collected: int
    retired_partitions: list[str]


class Maintenance(TypedDict):
    ds: str
    pins: dict[str, list[int]]
    tables: list[TableUpkeep]
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int


class UpkeepSummary(TypedDict):
    table: str
    files: int | None  # every object under the table's folder after the last upkeep
    bytes: int | None
    live_files: int | None
    live_bytes: int | None
    version: int | None
    pinned_versions: list[int]
    last_upkeep: str | None  # ISO time of the last upkeep; None: never maintained
    last_upkeep_ds: str | None


# -- what to keep ---------------------------------------------------------------------------


def state_retention_days(settings: Settings, uc: UseCase) -> int:
    """Days of state kept: re-running day D reads the state of D-1 and of D-w for each window w,
    and the label of D - horizon is rebuilt from it, so at least the longest window + the
    horizon + 1; by default a margin more (``upkeep.state_retention_margin_days``)."""
    need = max(uc.windows, default=0) + uc.horizon
    configured = settings.upkeep.state_retention_days
    if configured is None:
        return need + settings.upkeep.state_retention_margin_days
    if configured <= need:
        raise UpkeepError(
            f"{uc.name}: upkeep.state_retention_days={configured} would retire state that re-runs read: it must "
            f"exceed the longest feature window ({max(uc.windows, default=0)}) + the label horizon ({uc.horizon})"
        )
    return configured


def registry_pins(settings: Settings) -> dict[str, list[int]]:
    """Table name -> the versions registered models pin: the features table's versions in the tags
    of the model versions under champion, previous-champion and challenger.

    A registry error propagates: a vacuum without its pins could take a champion's data.
    """
    from sluice.edges.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry

    registry = Registry(settings)
    versions: set[int] = set()
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        ref = registry.by_alias(alias)
        if ref is None:
            continue
        raw = ref.tags.get(FEATURE_VERSION_TAG)
        try:
            version = int(raw) if raw is not None else -1
        except ValueError:
            version = -1
        if version < 0:
            log.warning("model %s v%s (%s) records no %s: nothing of it can be kept", registry.name, ref.version,
                        alias, FEATURE_VERSION_TAG)
            continue
        versions.add(version)
    features = usecase.of(settings).tables.features.name
    return {features: sorted(versions)} if versions else {}


# -- the steps ------------------------------------------------------------------------------


def retire_old_state(settings: Settings, day: dt.date, ctx: RunContext) -> Retired:
    """Delete the partitions of ``state/<entity>_cumulative`` older than ``state_retention_days``
    before day D (or before the latest state, when the ETL is behind D).

    A Delta delete: the latest version no longer has them, earlier versions still read them
    until vacuumed. Nothing older than the retention: nothing committed (a re-run of D is a
    no-op).
    """
    uc = usecase.of(settings)
    table = uc.tables.state
    keep = state_retention_days(settings, uc)
    lake = Lake(settings)
    days = lake.partitions(table) if lake.exists(table) else []
    if not days:
        return Retired(table=table.name, keep_days=keep, first_kept=None, partitions=[], version=None)
    anchor = min(day.isoformat(), days[-1])
    retired = upkeep.partitions_to_retire(days, anchor=anchor, keep_days=keep)
    first_kept = (dt.date.fromisoformat(anchor) - dt.timedelta(days=keep - 1)).isoformat()
    version = None
    if retired:
        lineage = ctx.lineage(day.isoformat(), {table.name: lake.version(table) or 0}, upkeep="retire",
                              retired_before=first_kept, retired=len(retired))
        version = upkeep.delete_partitions(lake, table, retired, lineage)
    return Retired(table=table.name, keep_days=keep, first_kept=first_kept, partitions=retired, version=version)


def maintain_lake(
    settings: Settings,
    day: dt.date,
    ctx: RunContext,
    *,
    pins: Mapping[str, Iterable[int]] | None = None,
    retired: Mapping[str, Sequence[str]] | None = None,
    now: dt.datetime | None = None,
) -> Maintenance:
    """Compact, checkpoint, vacuum, clean the log of and collect the orphans of every table of the
    use case, keeping the ``pins`` (default: read from the registry now); record each table's
    upkeep in ``lake/upkeep`` D.

    ``retired``: partitions deleted by ``retire_old_state`` in this run, recorded with their
    table. ``now`` is for tests: what "older than the retention" is measured from. A second
    run changes nothing but the record.
    """
    lake = Lake(settings)
    ds = day.isoformat()
    pinned = {name: sorted(set(v)) for name, v in (registry_pins(settings) if pins is None else pins).items()}
    retired = retired or {}
    rows = [
        _maintain(lake, table, ds, ctx, pinned.get(table.name, []), retired.get(table.name, []), now)
        for table in lake.all_tables()  # the use case's, then the record tables (lake/upkeep last)
        if lake.exists(table)
    ]
    _record(lake, ds, ctx, rows)
    result = Maintenance(
        ds=ds,
        pins=pinned,
        tables=rows,
        files_before=sum(r["files_before"] for r in rows),
        files_after=sum(r["files_after"] for r in rows),
        bytes_before=sum(r["bytes_before"] for r in rows),
        bytes_after=sum(r["bytes_after"] for r in rows),
    )
    log.info("upkeep of %s: %d -> %d files, %d -> %d bytes in %d tables (pins %s)", settings.lake_root,
             result["files_before"], result["files_after"], result["bytes_before"], result["bytes_after"], len(rows),
             pinned)
    return result


def _maintain(
    lake: Lake, table: Table, ds: str, ctx: RunContext, pins: list[int], retired: Sequence[str],
    now: dt.datetime | None,
) -> TableUpkeep:
    policy = lake.settings.upkeep
    before = upkeep.footprint(lake, table)
    version_before = lake.version(table)
    assert version_before is not None  # the table exists
    lineage = ctx.lineage(ds, {table.name: version_before}, upkeep="maintain")
    upkeep.keep_log(lake, table, lineage)
    compacted = upkeep.compact(lake, table, lineage)
    upkeep.checkpoint(lake, table)
    vacuumed = upkeep.vacuum(lake, table, pinned=pins, retention=dt.timedelta(hours=policy.vacuum_retention_hours),
                             now=now)
    cleaned = upkeep.clean_log(lake, table, pinned=pins, retention=dt.timedelta(days=policy.log_retention_days),
                               now=now)
    orphans = upkeep.collect_orphans(lake, table, older_than=dt.timedelta(hours=policy.orphan_age_hours), now=now)
    after, live = upkeep.footprint(lake, table), upkeep.live_footprint(lake, table)
    version_after = lake.version(table)
    assert version_after is not None
    return TableUpkeep(
        table=table.name,
        files_before=before.files,
        files_after=after.files,
        bytes_before=before.bytes,
        bytes_after=after.bytes,
        live_files=live.files,
        live_bytes=live.bytes,
        version_before=version_before,
        version_after=version_after,
        pinned_versions=[v for v in vacuumed.kept_versions if v in pins],
        lost_pins=vacuumed.lost_pins,
        compacted_files=compacted.files_removed,
        vacuumed_files=len(vacuumed.deleted),
        log_files_deleted=len(cleaned),
        orphans_collected=len(orphans),
        retired_partitions=sorted(retired),
    )


_JSON_COLUMNS = ("pinned_versions", "retired_partitions")


def _record(lake: Lake, ds: str, ctx: RunContext, rows: Sequence[TableUpkeep]) -> int | None:
    """One row per table in ``lake/upkeep`` D; a retry of the same run adds none twice."""
    recorded_at = dt.datetime.now(dt.UTC)
    counts = [c for c in LAKE_UPKEEP.columns if c in TableUpkeep.__annotations__ and c not in _JSON_COLUMNS]
    records: list[dict[str, Any]] = []
    for r in rows:
        values: dict[str, Any] = dict(r)
        records.append({
            "table_name": r["table"],
            **{c: values[c] for c in counts},
            **{c: json.dumps(values[c]) for c in _JSON_COLUMNS},
            "run_id": ctx.run_id,
            "recorded_at": recorded_at,
            PARTITION_COLUMN: ds,
        })
    if not records:
        return None
    lineage = ctx.lineage(ds, {}, rows=len(records))
    return lake.append_rows(LAKE_UPKEEP, ds, records, key=("table_name", "run_id"), lineage=lineage)


# -- what status and the view show ---------------------------------------------------------------


def latest_upkeep(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Pure: table name -> its most recent upkeep record (by ``recorded_at``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for row in records:
        name = row["table_name"]
        if name not in out or row["recorded_at"] > out[name]["recorded_at"]:
            out[name] = row
    return out


def upkeep_summary(settings: Settings, lake: Lake | None = None) -> list[UpkeepSummary]:
    """Per table of the use case: files and bytes after its last upkeep, and when that was.

    Read from ``lake/upkeep`` alone (one small table; the object store is not listed), so
    ``sluice status`` and the view can show it cheaply. A table never maintained has None.
    """
    lake = lake or Lake(settings)  # the caller's: each table is opened once per page
    rows = lake.read_table(LAKE_UPKEEP).to_pylist() if lake.exists(LAKE_UPKEEP) else []
    latest = latest_upkeep(rows)
    out = []
    for table in lake.all_tables():
        r = latest.get(table.name)
        out.append(UpkeepSummary(
            table=table.name,
            files=None if r is None else int(r["files_after"]),
            bytes=None if r is None else int(r["bytes_after"]),
            live_files=None if r is None else int(r["live_files"]),
            live_bytes=None if r is None else int(r["live_bytes"]),
            version=None if r is None else int(r["version_after"]),
            pinned_versions=[] if r is None else json.loads(r["pinned_versions"] or "[]"),
            last_upkeep=None if r is None else r["recorded_at"].isoformat(),
            last_upkeep_ds=None if r is None else r[PARTITION_COLUMN],
        ))
    return out
