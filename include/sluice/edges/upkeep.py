"""Upkeep of the lake's tables: collect the data files that no version of a table references.

A writer killed after writing its Parquet files and before committing them (a SIGKILL, an
OOM kill, a lost node) leaves those files behind. No reader ever sees them (they are in no
commit: the table stays consistent), but they take space for ever. ``collect_orphans``
deletes them, and only them:

* a file is kept when **any** version still in the log references it, so time travel to
  every version the log retains keeps working (a plain VACUUM deletes the files that older
  versions still need once their removal is older than its retention);
* a file is kept until it is older than ``older_than``, so a writer still writing (its
  files are not committed yet) is never robbed.

Why not delta-rs's ``DeltaTable.vacuum(full=True, keep_versions=<every version>)``, which
comes close (``full=True`` alone also deletes files that kept versions need): it lists the
table through object_store, which hides the staging files (``<name>#<n>``) a writer killed
in the middle of a local upload leaves; its age limit is whole hours; ``keep_versions`` is
experimental and replays the table at every version; and every run that deletes something
commits two versions (VACUUM START/END) without lineage to the table.

Besides the orphans, the rest of a table's upkeep (what ``lake_maintenance`` runs, see
``sluice.stages.upkeep``): compacting small files (delta-rs's ``optimize.compact``), a
checkpoint (delta-rs's ``create_checkpoint``), deleting whole partitions (a Delta delete),
and the two deletions that must never take a version a registered model pins:

* ``vacuum`` deletes the data files that left the table more than a retention ago, except
  those of the latest version and of the **pinned versions**. delta-rs's own
  ``vacuum(keep_versions=...)`` is not used for the deleting: its lite mode finds removed
  files through the tombstones of the current snapshot, and a checkpoint drops the
  tombstones older than ``delta.deletedFileRetentionDuration``, so a file whose tombstone
  expired between two runs is never deleted (the lake only grows); ``keep_versions`` is
  marked experimental; each run that deletes commits VACUUM START/END without lineage. Here
  the removals are read from every JSON commit in the log (as for the orphans) and the
  files of a kept version from delta-rs itself (the table opened at that version).
* ``clean_log`` deletes old log entries, never those a kept version is loaded from. delta-rs
  deletes expired log entries (``delta.logRetentionDuration``, 30 days) after every
  checkpoint a write makes, whatever version a model pins: the pinned version's data files
  are still there, but the table can no longer be opened at it. ``keep_log`` switches that
  off for a table (``delta.enableExpiredLogCleanup = false``) and ``clean_log`` does it
  instead, below the newest checkpoint at or before the oldest version to keep.

The selection is pure (``referenced_in_commit``, ``snapshots_to_read``, ``select_orphans``,
``commit_actions``, ``replayable``, ``select_vacuum``, ``oldest_kept_version``, ``log_floor``,
``select_log_entries``, ``partitions_to_retire``); the listing, the log reading and the
deleting around it go through ``sluice.edges.storage.filesystem``, so the same code serves
``file://`` and ``s3://``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from pyarrow import fs as pafs

from sluice.core.lineage import Lineage
from sluice.edges.lake import Lake, LakeError, check_day
from sluice.edges.storage import filesystem
from sluice.tables import PARTITION_COLUMN, Table

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

DEFAULT_OLDER_THAN = dt.timedelta(hours=6)
DEFAULT_VACUUM_RETENTION = dt.timedelta(days=7)
DEFAULT_LOG_RETENTION = dt.timedelta(days=30)
LOG_FOLDER = "_delta_log"
# Table property: whether delta-rs deletes expired log entries after a checkpoint (default true).
EXPIRED_LOG_CLEANUP = "delta.enableExpiredLogCleanup"

_COMMIT = re.compile(r"(?P<version>[0-9]{20})\.json")
_COMPACTED = re.compile(r"[0-9]{20}\.[0-9]{20}\.compacted\.json")  # log compaction: commits x to y in one
# Classic (one or several parts) and V2 checkpoints; the version is what matters here.
_CHECKPOINT = re.compile(r"(?P<version>[0-9]{20})\.checkpoint(\.[0-9]+\.[0-9]+|\.[0-9a-fA-F-]{36})?\.(parquet|json)")
# Parquet data files, and the staging files ``<file>#<n>`` object_store writes a local
# upload to before renaming it (left behind when the writer dies in the middle).
_DATA_FILE = re.compile(r".+\.parquet(#[0-9]+)?")
# Any entry of the log that belongs to one version: its commit, checkpoint (parts), .crc, temp files.
_VERSIONED = re.compile(r"(?P<version>[0-9]{20})\..+")
_COMPACTED_RANGE = re.compile(r"(?P<start>[0-9]{20})\.(?P<end>[0-9]{20})\.compacted\.json")


@dataclass(frozen=True)
class StoredFile:
    """A file under a table's folder: its path relative to that folder, '/'-separated."""

    path: str
    modified: dt.datetime  # timezone-aware
    size: int


# -- pure selection -----------------------------------------------------------------------


@dataclass(frozen=True)
class CommitActions:
    """What one JSON commit does to the files of a table (paths relative, decoded)."""

    adds: frozenset[str]
    # path -> when it left the table (the remove's deletionTimestamp, ms since the epoch; None
    # when the writer gave none: such a file is never vacuumed)
    removes: Mapping[str, int | None] = field(default_factory=dict)


def commit_actions(commit: str | bytes) -> CommitActions:
    """The files one JSON commit adds (``add`` and ``cdc``) and removes, with the removal's time."""
    text = commit.decode() if isinstance(commit, bytes) else commit
    adds: set[str] = set()
    removes: dict[str, int | None] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        for kind in ("add", "cdc"):
            if kind in action:
                adds.add(unquote(action[kind]["path"]))
        if "remove" in action:
            stamp = action["remove"].get("deletionTimestamp")
            removes[unquote(action["remove"]["path"])] = None if stamp is None else int(stamp)
    return CommitActions(frozenset(adds), removes)


def referenced_in_commit(commit: str | bytes) -> set[str]:
    """Paths (relative, decoded) of the data files one JSON commit adds.

    ``remove`` actions are not references: a version that still needs a removed file got
    it from an add that is read as well (or from a checkpoint's snapshot). ``cdc`` files
    are counted too, although Sluice never writes them.
    """
    return set(commit_actions(commit).adds)


def is_data_file(path: str) -> bool:
    """A Parquet data file (or its staging file) outside the log and any hidden folder."""
    parts = path.split("/")
    if any(part.startswith(("_", ".")) for part in parts):  # _delta_log, _change_data, .crc files
        return False
    return _DATA_FILE.fullmatch(parts[-1]) is not None


def snapshots_to_read(commits: Collection[int], checkpoints: Collection[int]) -> list[int]:
    """The checkpoints whose snapshot must be read, besides the adds of every JSON commit.

    A reader loads a version from version 0 or from a checkpoint, replaying the JSON
    commits after it. A checkpoint's files are among the JSON adds already when an unbroken
    run of commits leads to it from version 0 or from a checkpoint counted before; only the
    others must be read: after a log cleanup the oldest one, after a cleanup that died half
    way perhaps more.
    """
    kept = set(commits)
    anchor = -1 if 0 in kept else None  # the last version whose files are all counted
    needed = []
    for checkpoint in sorted(set(checkpoints)):
        if anchor is None or not all(v in kept for v in range(anchor + 1, checkpoint + 1)):
            needed.append(checkpoint)
        anchor = checkpoint
    return needed


def select_orphans(
    files: Iterable[StoredFile], referenced: Collection[str], *, cutoff: dt.datetime
) -> list[StoredFile]:
    """The data files no version references, last modified before ``cutoff``; by path."""
    return sorted(
        (f for f in files if is_data_file(f.path) and f.path not in referenced and f.modified < cutoff),
        key=lambda f: f.path,
    )


def replayable(version: int, commits: Collection[int], checkpoints: Collection[int]) -> bool:
    """Whether a reader can still open ``version``: from version 0 or a checkpoint at or before
    it, with every JSON commit after that one up to ``version`` still in the log."""
    kept = set(commits)
    starts = [c for c in checkpoints if c <= version] + ([-1] if 0 in kept else [])
    return any(all(v in kept for v in range(start + 1, version + 1)) for start in starts)


def removal_times(commits: Iterable[CommitActions]) -> dict[str, int | None]:
    """Path -> when it last left the table (None: some removal of it has no time)."""
    out: dict[str, int | None] = {}
    for actions in commits:
        for path, stamp in actions.removes.items():
            if path not in out:
                out[path] = stamp
            else:
                before = out[path]
                out[path] = None if before is None or stamp is None else max(before, stamp)
    return out


def select_vacuum(
    files: Iterable[StoredFile],
    removed: Mapping[str, int | None],
    kept_versions: Iterable[Collection[str]],
    *,
    cutoff: dt.datetime,
) -> list[StoredFile]:
    """The data files to vacuum, by path: out of the table since before ``cutoff`` (a removal in
    the log says when) and in none of the kept versions (the latest and the pinned ones).

    A file no commit removed is never chosen here: either it is live, or no commit references
    it at all (a killed writer's: ``select_orphans``), or its removal left the log already.
    """
    keep: set[str] = set().union(*kept_versions)
    limit = cutoff.timestamp() * 1000
    chosen = []
    for f in files:
        if not is_data_file(f.path) or f.path in keep or f.path not in removed:
            continue
        stamp = removed[f.path]
        if stamp is not None and stamp < limit:
            chosen.append(f)
    return sorted(chosen, key=lambda f: f.path)


def oldest_kept_version(
    commit_times: Mapping[int, dt.datetime], pinned: Collection[int], latest: int, *, cutoff: dt.datetime
) -> int:
    """The oldest version the log must keep loadable: the oldest pin, and the version that was
    the latest at ``cutoff`` (time travel to any moment since then keeps working)."""
    recent = [v for v, t in commit_times.items() if t >= cutoff]
    at_cutoff = min(recent) - 1 if recent else latest
    return max(0, min([at_cutoff, latest, *pinned]))


def log_floor(checkpoints: Collection[int], keep_from: int) -> int | None:
    """The checkpoint that readers of ``keep_from`` and every later version start from: the newest
    at or before it. None when there is none (then no log entry may go)."""
    candidates = [c for c in checkpoints if c <= keep_from]
    return max(candidates) if candidates else None


def select_log_entries(entries: Iterable[StoredFile], *, floor: int, cutoff: dt.datetime) -> list[StoredFile]:
    """The log entries of versions before ``floor`` (commits, checkpoints, compacted ranges that end
    before it, temp and .crc files) last modified before ``cutoff``, oldest version first.

    ``_last_checkpoint`` and the floor's own checkpoint always stay.
    """
    chosen: list[tuple[int, StoredFile]] = []
    for entry in entries:
        name = entry.path.rsplit("/", 1)[-1]
        if m := _COMPACTED_RANGE.fullmatch(name):
            version = int(m["end"])
        elif m := _VERSIONED.fullmatch(name):
            version = int(m["version"])
        else:
            continue
        if version < floor and entry.modified < cutoff:
            chosen.append((version, entry))
    return [e for _, e in sorted(chosen, key=lambda ve: (ve[0], ve[1].path))]


def partitions_to_retire(days: Iterable[str], *, anchor: str, keep_days: int) -> list[str]:
    """The partition days older than the ``keep_days`` days that end on ``anchor``."""
    if keep_days < 1:
        raise ValueError(f"keep_days must be at least 1, got {keep_days}")
    first_kept = (dt.date.fromisoformat(check_day(anchor)) - dt.timedelta(days=keep_days - 1)).isoformat()
    return sorted(d for d in days if d < first_kept)


# -- I/O ----------------------------------------------------------------------------------


def collect_orphans(
    lake: Lake,
    table: Table,
    *,
    older_than: dt.timedelta = DEFAULT_OLDER_THAN,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[str]:
    """Delete the data files of ``table`` that no version in its log references.

    Returns their paths relative to the table's folder (the ones that would be deleted
    when ``dry_run``). A table without a log yet is left alone: nothing proves the files
    in its folder are a killed writer's.
    """
    if older_than < dt.timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    now = dt.datetime.now(dt.UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    fs, base = filesystem(lake.settings, f"{lake.root}/{table.name}")
    # The data files first, the log second: a file committed in between is then seen as
    # referenced; one committed after the log was read is younger than ``older_than``.
    files = [f for f in _list_files(fs, base) if is_data_file(f.path)]
    referenced = _referenced(lake, table, fs, base)
    if referenced is None:
        log.info("%s has no log yet: no orphans collected", table.name)
        return []
    orphans = select_orphans(files, referenced, cutoff=now - older_than)
    paths = [f.path for f in orphans]
    log.info(
        "%s %d orphaned files of %s (%d bytes, unreferenced by any of its versions, older than %s): %s",
        "would collect" if dry_run else "collecting",
        len(orphans),
        table.name,
        sum(f.size for f in orphans),
        older_than,
        paths,
    )
    if not dry_run:
        for path in paths:
            try:
                fs.delete_file(f"{base}/{path}")
            except FileNotFoundError:  # another upkeep run was faster
                log.info("orphan %s of %s was already gone", path, table.name)
    return paths


def _list_files(fs: pafs.FileSystem, base: str) -> list[StoredFile]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        modified = info.mtime
        if modified is None:  # every store Sluice supports reports it; without it, never delete
            continue
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.UTC)
        out.append(StoredFile(info.path[len(base) + 1 :], modified, int(info.size or 0)))
    return out


@dataclass(frozen=True)
class LogListing:
    """What a table's ``_delta_log`` holds (paths are the filesystem's)."""

    commits: dict[int, str]  # version -> path of its JSON commit
    compacted: list[str]
    checkpoints: set[int]
    entries: list[StoredFile]  # every file, relative to the table's folder

    @property
    def empty(self) -> bool:
        return not self.commits and not self.checkpoints

    @property
    def latest(self) -> int:
        return max([*self.commits, *self.checkpoints])


def _log_listing(fs: pafs.FileSystem, base: str) -> LogListing:
    log_base = f"{base}/{LOG_FOLDER}"
    infos = fs.get_file_info(pafs.FileSelector(log_base, allow_not_found=True))
    commits: dict[int, str] = {}
    compacted: list[str] = []
    checkpoints: set[int] = set()
    entries: list[StoredFile] = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        name = info.base_name
        if m := _COMMIT.fullmatch(name):
            commits[int(m["version"])] = info.path
        elif m := _CHECKPOINT.fullmatch(name):
            checkpoints.add(int(m["version"]))
        elif _COMPACTED.fullmatch(name):
            compacted.append(info.path)
        if info.mtime is not None:  # without one, never deleted (every supported store reports it)
            modified = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=dt.UTC)
            entries.append(StoredFile(f"{LOG_FOLDER}/{name}", modified, int(info.size or 0)))
    return LogListing(commits, compacted, checkpoints, entries)


def _read_commit(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def _referenced(lake: Lake, table: Table, fs: pafs.FileSystem, base: str) -> set[str] | None:
    """Every data file any version in the log references; None when there is no log.

    The adds of every JSON commit (and compacted log file), plus the snapshots of the
    checkpoints no unbroken run of commits leads to (read by delta-rs, whatever the
    checkpoint's format; see ``snapshots_to_read``). Commits a reader can no longer reach
    only make this set larger: safe.
    """
    listing = _log_listing(fs, base)
    if listing.empty:
        return None
    if 0 not in listing.commits and not listing.checkpoints:
        raise LakeError(f"{table.name}: the log has neither version 0 nor a checkpoint; not collecting")
    referenced: set[str] = set()
    for version in snapshots_to_read(listing.commits, listing.checkpoints):
        referenced |= _snapshot_files(lake, table, version)
    for path in [*listing.commits.values(), *listing.compacted]:
        referenced |= referenced_in_commit(_read_commit(fs, path))
    return referenced


def _snapshot_files(lake: Lake, table: Table, version: int) -> set[str]:
    from deltalake import DeltaTable

    snapshot = DeltaTable(lake.uri(table), version=version, storage_options=lake.storage_options or None)
    return {unquote(p) for p in snapshot.get_add_actions(flatten=False).column("path").to_pylist()}


# -- the rest of a table's upkeep ------------------------------------------------------------


def _now(now: dt.datetime | None) -> dt.datetime:
    now = dt.datetime.now(dt.UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _not_negative(name: str, value: dt.timedelta) -> None:
    if value < dt.timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value}")


def _table(lake: Lake, table: Table, version: int | None = None) -> DeltaTable:
    """A fresh delta-rs table object, for an operation that commits (not the Lake's kept one)."""
    from deltalake import DeltaTable

    return DeltaTable(lake.uri(table), version=version, storage_options=lake.storage_options or None)


def _commit_properties(lineage: Lineage) -> Any:
    """Lineage on an upkeep commit. Without ``sluice.partitions``: an upkeep commit rewrites no
    partition's content, so the staleness check (``sluice.stages.staleness``) must not see one."""
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata=lineage.to_metadata(), max_commit_retries=20)


def _post_commit() -> Any:
    """Checkpoints as usual, but never delta-rs's expired-log cleanup (see ``clean_log``)."""
    from deltalake import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


_T = TypeVar("_T")


def _committing(table: Table, what: str, attempt: Callable[[], _T], *, max_attempts: int = 5) -> _T:
    """Run ``attempt`` (which opens the table anew and commits) until no concurrent writer's commit
    conflicts with it (e.g. nightly_etl rewriting a partition being compacted); bounded."""
    from deltalake.exceptions import CommitFailedError

    for n in range(1, max_attempts + 1):
        try:
            return attempt()
        except CommitFailedError as exc:
            if n == max_attempts:
                raise
            log.warning("%s of %s conflicted with another commit (%s); retry %d", what, table.name, exc, n)
            time.sleep(min(0.5 * n, 5.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Footprint:
    """What a table takes in the object store: every object under its folder (data and log)."""

    files: int
    bytes: int


def footprint(lake: Lake, table: Table) -> Footprint:
    fs, base = filesystem(lake.settings, f"{lake.root}/{table.name}")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    sizes = [int(i.size or 0) for i in infos if i.type == pafs.FileType.File]
    return Footprint(len(sizes), sum(sizes))


def live_footprint(lake: Lake, table: Table) -> Footprint:
    """The data files of the latest version, from the log (nothing listed)."""
    actions = _table(lake, table).get_add_actions(flatten=True)
    return Footprint(actions.num_rows, int(sum(s or 0 for s in actions.column("size_bytes").to_pylist())))


def keep_log(lake: Lake, table: Table, lineage: Lineage) -> bool:
    """Switch off delta-rs's expired-log cleanup for ``table``; True when this commit did it.

    With it on, every checkpoint a write makes deletes the log entries older than 30 days,
    also those a pinned version is opened from; ``clean_log`` does the cleanup instead.
    One metadata commit per table, once.
    """

    def attempt() -> bool:
        dt_ = _table(lake, table)
        if dt_.metadata().configuration.get(EXPIRED_LOG_CLEANUP) == "false":
            return False
        dt_.alter.set_table_properties(
            {EXPIRED_LOG_CLEANUP: "false"},
            commit_properties=_commit_properties(lineage),
            post_commithook_properties=_post_commit(),
        )
        return True

    done = _committing(table, "switching off expired-log cleanup", attempt)
    if done:
        log.info("%s: delta-rs's expired-log cleanup switched off (upkeep cleans the log, keeping pins)", table.name)
    return done


@dataclass(frozen=True)
class Compacted:
    files_removed: int
    files_added: int
    version: int | None  # of the commit; None when there was nothing to compact


def compact(lake: Lake, table: Table, lineage: Lineage) -> Compacted:
    """Rewrite each partition's small files into few (delta-rs's ``optimize.compact``).

    The data of every version stays as it was (the old files leave the latest version only;
    ``vacuum`` deletes them later, unless a pinned version reads them). Nothing to compact,
    nothing committed: a second run changes nothing.
    """

    def attempt() -> Compacted:
        dt_ = _table(lake, table)
        before = dt_.version()
        metrics = dt_.optimize.compact(
            commit_properties=_commit_properties(lineage), post_commithook_properties=_post_commit()
        )
        removed, added = int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))
        return Compacted(removed, added, dt_.version() if dt_.version() != before else None)

    done = _committing(table, "compaction", attempt)
    if done.version is not None:
        log.info("compacted %s: %d files into %d, version %d", table.name, done.files_removed, done.files_added,
                 done.version)
    return done


def checkpoint(lake: Lake, table: Table) -> int | None:
    """Write a checkpoint at the latest version (readers then replay no JSON commit); returns that
    version, or None when it has one already."""
    dt_ = _table(lake, table)
    version = dt_.version()
    fs, base = filesystem(lake.settings, f"{lake.root}/{table.name}")
    if version in _log_listing(fs, base).checkpoints:
        return None
    dt_.create_checkpoint()
    log.info("checkpoint of %s at version %d", table.name, version)
    return version


@dataclass(frozen=True)
class Vacuumed:
    deleted: list[str]  # relative to the table's folder
    bytes: int
    kept_versions: list[int]  # the latest and the pins the log can still open
    lost_pins: list[int] = field(default_factory=list)  # pins the log can no longer open


def _pins(table: Table, pinned: Collection[int], listing: LogListing, latest: int) -> tuple[list[int], list[int]]:
    """The pins the log can still open, and those it cannot (logged: nothing can bring them back)."""
    good, lost = [], []
    for version in sorted(set(pinned)):
        if 0 <= version <= latest and replayable(version, listing.commits, listing.checkpoints):
            good.append(version)
        else:
            lost.append(version)
    if lost:
        log.error("%s: pinned version(s) %s cannot be opened from the log (latest version %d): deleted before "
                  "upkeep kept them, or never written", table.name, lost, latest)
    return good, lost


def vacuum(
    lake: Lake,
    table: Table,
    *,
    pinned: Collection[int] = (),
    retention: dt.timedelta = DEFAULT_VACUUM_RETENTION,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> Vacuumed:
    """Delete the data files that left ``table`` more than ``retention`` ago, except those of the
    latest version and of the ``pinned`` versions (see the module's docstring for why not
    delta-rs's vacuum). Commits nothing; a second run finds nothing more.
    """
    _not_negative("retention", retention)
    now = _now(now)
    fs, base = filesystem(lake.settings, f"{lake.root}/{table.name}")
    # Files first, log second (as collect_orphans): a file committed in between is seen as referenced.
    files = [f for f in _list_files(fs, base) if is_data_file(f.path)]
    listing = _log_listing(fs, base)
    if listing.empty:
        return Vacuumed([], 0, [])
    latest = listing.latest
    good, lost = _pins(table, pinned, listing, latest)
    kept = sorted({latest, *good})
    removed = removal_times(commit_actions(_read_commit(fs, path)) for _, path in sorted(listing.commits.items()))
    chosen = select_vacuum(files, removed, [_snapshot_files(lake, table, v) for v in kept], cutoff=now - retention)
    size = sum(f.size for f in chosen)
    log.info("%s %d files of %s (%d bytes, out of the table for more than %s; versions %s kept)",
             "would vacuum" if dry_run else "vacuuming", len(chosen), table.name, size, retention, kept)
    if not dry_run:
        _delete(fs, base, table, [f.path for f in chosen])
    return Vacuumed([f.path for f in chosen], size, kept, lost)


def clean_log(
    lake: Lake,
    table: Table,
    *,
    pinned: Collection[int] = (),
    retention: dt.timedelta = DEFAULT_LOG_RETENTION,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[str]:
    """Delete the log entries older than ``retention`` that no version to keep is opened from.

    What delta-rs's expired-log cleanup does, except that the pinned versions stay loadable:
    the floor is the newest checkpoint at or before the oldest pin (and before the version
    that was the latest ``retention`` ago). Returns the entries' paths, oldest first.
    """
    _not_negative("retention", retention)
    now = _now(now)
    fs, base = filesystem(lake.settings, f"{lake.root}/{table.name}")
    listing = _log_listing(fs, base)
    if listing.empty:
        return []
    latest = listing.latest
    good, _ = _pins(table, pinned, listing, latest)
    times = {int(m["version"]): e.modified for e in listing.entries
             if (m := _COMMIT.fullmatch(e.path.rsplit("/", 1)[-1]))}
    keep_from = oldest_kept_version(times, good, latest, cutoff=now - retention)
    floor = log_floor(listing.checkpoints, keep_from)
    if floor is None:
        return []
    chosen = [e.path for e in select_log_entries(listing.entries, floor=floor, cutoff=now - retention)]
    log.info("%s %d log entries of %s below checkpoint %d (versions from %d kept)",
             "would delete" if dry_run else "deleting", len(chosen), table.name, floor, keep_from)
    if not dry_run:
        _delete(fs, base, table, chosen)
    return chosen


def delete_partitions(lake: Lake, table: Table, days: Sequence[str], lineage: Lineage) -> int | None:
    """Delete the partitions ``days`` of ``table`` in one commit (a Delta delete: their files leave
    the latest version; earlier versions still read them until vacuumed). Returns the version,
    None when there was nothing to delete."""
    days = sorted({check_day(d) for d in days})
    if not days:
        return None
    predicate = f"{PARTITION_COLUMN} IN ({', '.join(repr(d) for d in days)})"

    def attempt() -> int | None:
        dt_ = _table(lake, table)
        present = {p[PARTITION_COLUMN] for p in dt_.partitions()}
        if not present & set(days):
            return None  # deleted by an earlier try
        dt_.delete(predicate, commit_properties=_commit_properties(lineage), post_commithook_properties=_post_commit())
        return dt_.version()

    version = _committing(table, "delete", attempt)
    if version is not None:
        log.info("deleted %d partitions of %s (%s .. %s): version %d", len(days), table.name, days[0], days[-1],
                 version)
    return version


def _delete(fs: pafs.FileSystem, base: str, table: Table, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            fs.delete_file(f"{base}/{path}")
        except FileNotFoundError:  # another upkeep run was faster
            log.info("%s of %s was already gone", path, table.name)
