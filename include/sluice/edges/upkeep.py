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

The selection is pure (``referenced_in_commit``, ``snapshots_to_read``, ``select_orphans``);
the listing, the log reading and the deleting around it go through
``sluice.edges.storage.filesystem``, so the same code serves ``file://`` and ``s3://``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from pyarrow import fs as pafs

from sluice.edges.lake import Lake, LakeError
from sluice.edges.storage import filesystem
from sluice.tables import Table

log = logging.getLogger(__name__)

DEFAULT_OLDER_THAN = dt.timedelta(hours=6)
LOG_FOLDER = "_delta_log"

_COMMIT = re.compile(r"(?P<version>[0-9]{20})\.json")
_COMPACTED = re.compile(r"[0-9]{20}\.[0-9]{20}\.compacted\.json")  # log compaction: commits x to y in one
# Classic (one or several parts) and V2 checkpoints; the version is what matters here.
_CHECKPOINT = re.compile(r"(?P<version>[0-9]{20})\.checkpoint(\.[0-9]+\.[0-9]+|\.[0-9a-fA-F-]{36})?\.(parquet|json)")
# Parquet data files, and the staging files ``<file>#<n>`` object_store writes a local
# upload to before renaming it (left behind when the writer dies in the middle).
_DATA_FILE = re.compile(r".+\.parquet(#[0-9]+)?")


@dataclass(frozen=True)
class StoredFile:
    """A file under a table's folder: its path relative to that folder, '/'-separated."""

    path: str
    modified: dt.datetime  # timezone-aware
    size: int


# -- pure selection -----------------------------------------------------------------------


def referenced_in_commit(commit: str | bytes) -> set[str]:
    """Paths (relative, decoded) of the data files one JSON commit adds.

    ``remove`` actions are not references: a version that still needs a removed file got
    it from an add that is read as well (or from a checkpoint's snapshot). ``cdc`` files
    are counted too, although Sluice never writes them.
    """
    text = commit.decode() if isinstance(commit, bytes) else commit
    paths: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        for kind in ("add", "cdc"):
            if kind in action:
                paths.add(unquote(action[kind]["path"]))
    return paths


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


def _referenced(lake: Lake, table: Table, fs: pafs.FileSystem, base: str) -> set[str] | None:
    """Every data file any version in the log references; None when there is no log.

    The adds of every JSON commit (and compacted log file), plus the snapshots of the
    checkpoints no unbroken run of commits leads to (read by delta-rs, whatever the
    checkpoint's format; see ``snapshots_to_read``). Commits a reader can no longer reach
    only make this set larger: safe.
    """
    log_base = f"{base}/{LOG_FOLDER}"
    infos = fs.get_file_info(pafs.FileSelector(log_base, allow_not_found=True))
    commits: dict[int, str] = {}
    compacted: list[str] = []
    checkpoints: set[int] = set()
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
    if not commits and not checkpoints:
        return None
    if 0 not in commits and not checkpoints:
        raise LakeError(f"{table.name}: the log has neither version 0 nor a checkpoint; not collecting")
    referenced: set[str] = set()
    for version in snapshots_to_read(commits, checkpoints):
        referenced |= _snapshot_files(lake, table, version)
    for path in [*commits.values(), *compacted]:
        with fs.open_input_stream(path) as f:
            referenced |= referenced_in_commit(f.read())
    return referenced


def _snapshot_files(lake: Lake, table: Table, version: int) -> set[str]:
    from deltalake import DeltaTable

    snapshot = DeltaTable(lake.uri(table), version=version, storage_options=lake.storage_options or None)
    return {unquote(p) for p in snapshot.get_add_actions(flatten=False).column("path").to_pylist()}
