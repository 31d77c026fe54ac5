"""Killed writers: a real writer process SIGKILLed at random moments, again and again.

The issue "trustworthy under faults": after every kill a fresh reader sees a consistent
table (it opens, and every day holds exactly one complete write), a retry of the killed
write completes, and at the end the lake's upkeep (``sluice.edges.upkeep``) deletes
exactly the files the killed writers left behind: no file any version references, so
the table still reads at every version.

The writer is ``_killed_writer_child.py``: it writes days of the churn use case's raw
table with ``Lake.write_partition`` in a loop; every row carries its write's id and row
count, so a partial or mixed day is visible. Kill delays are seeded (``SEED``) and spread
over about two writes, so most kills land inside a write: while the rows are built,
while the Parquet file is written, during the commit or right after it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from pyarrow import fs as pafs

from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges import upkeep
from sluice.edges.lake import Lake
from sluice.edges.storage import filesystem
from sluice.settings import Settings, load_settings
from sluice.tables import PARTITION_COLUMN

from ._killed_writer_child import event_id, write_rows
from .conftest import DUMMY_KEY_ID, DUMMY_SECRET

CHILD = Path(__file__).with_name("_killed_writer_child.py")
RAW_EVENTS = load_use_case("churn").tables.raw
DAYS = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"]
SEED = 20260301
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


# -- the selection on its own ---------------------------------------------------------------


def stored(path: str, age: dt.timedelta = dt.timedelta(days=1)) -> upkeep.StoredFile:
    return upkeep.StoredFile(path, NOW - age, 100)


@pytest.mark.parametrize(
    ("path", "age", "selected"),
    [
        ("ds=2026-03-01/part-00000-a-c000.snappy.parquet", dt.timedelta(days=1), True),
        ("ds=2026-03-01/part-00000-a-c000.snappy.parquet#1", dt.timedelta(days=1), True),  # a staged upload
        ("ds=2026-03-01/part-00000-a-c000.snappy.parquet", dt.timedelta(hours=5), False),  # a writer's, maybe
        ("ds=2026-03-01/part-00000-ref-c000.snappy.parquet", dt.timedelta(days=1), False),  # referenced
        ("_delta_log/00000000000000000003.json", dt.timedelta(days=1), False),
        ("_delta_log/_commit_0a1b.json.tmp", dt.timedelta(days=1), False),
        ("_change_data/cdc-00000.snappy.parquet", dt.timedelta(days=1), False),
        ("ds=2026-03-01/.part-00000-a-c000.snappy.parquet.crc", dt.timedelta(days=1), False),
        ("deletion_vector_0a1b.bin", dt.timedelta(days=1), False),  # not Parquet: never touched
    ],
)
def test_select_orphans_takes_old_unreferenced_parquet_files_only(
    path: str, age: dt.timedelta, selected: bool
) -> None:
    referenced = {"ds=2026-03-01/part-00000-ref-c000.snappy.parquet"}
    chosen = upkeep.select_orphans([stored(path, age)], referenced, cutoff=NOW - dt.timedelta(hours=6))
    assert [f.path for f in chosen] == ([path] if selected else [])


def test_referenced_in_commit_reads_add_paths_decoded_and_ignores_removes() -> None:
    commit = "\n".join(
        json.dumps(action)
        for action in [
            {"commitInfo": {"operation": "WRITE"}},
            {"remove": {"path": "ds=2026-03-01/old.parquet", "dataChange": True}},
            {"add": {"path": "ds=2026-03-01/new.parquet", "size": 1}},
            {"add": {"path": "region=north%20east/x.parquet", "size": 1}},
        ]
    )
    assert upkeep.referenced_in_commit(commit.encode() + b"\n") == {
        "ds=2026-03-01/new.parquet",
        "region=north east/x.parquet",
    }


@pytest.mark.parametrize(
    ("commits", "checkpoints", "needed"),
    [
        (range(13), [9], []),  # the whole log: the commits say it all
        (range(9, 13), [9], [9]),  # after a log cleanup: the oldest checkpoint
        (range(10, 30), [9, 19, 29], [9]),
        (range(12, 30), [9, 19, 29], [9, 19]),  # a cleanup killed half way: 10 and 11 gone
        ([], [9], [9]),
    ],
)
def test_snapshots_to_read_are_the_checkpoints_no_run_of_commits_leads_to(
    commits: range | list[int], checkpoints: list[int], needed: list[int]
) -> None:
    assert upkeep.snapshots_to_read(commits, checkpoints) == needed


def test_collect_orphans_refuses_a_negative_age(tmp_path: Path) -> None:
    lake = Lake(load_settings(lake_uri=f"file://{tmp_path}/lake", use_case="churn"))
    with pytest.raises(ValueError, match="older_than must not be negative"):
        upkeep.collect_orphans(lake, RAW_EVENTS, older_than=-dt.timedelta(seconds=1))


# -- helpers: the table as a fresh reader sees it ---------------------------------------------


def table_files(settings: Settings) -> set[str]:
    """Every file under the table's folder outside the log, relative to it."""
    fs, base = filesystem(settings, f"{settings.lake_root}/{RAW_EVENTS.name}")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    paths = {i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File}
    return {p for p in paths if not p.startswith("_delta_log/")}


def log_leftovers(settings: Settings) -> list[str]:
    """Files in the log that are neither commits nor checkpoints (a commit killed half-way)."""
    fs, base = filesystem(settings, f"{settings.lake_root}/{RAW_EVENTS.name}/_delta_log")
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))]
    return sorted(
        n
        for n in names
        if not (upkeep._COMMIT.fullmatch(n) or upkeep._CHECKPOINT.fullmatch(n) or n == "_last_checkpoint")
    )


def referenced_by_any_version(settings: Settings) -> dict[int, set[str]]:
    """The files of every version, as delta-rs itself loads each one (the oracle)."""
    lake = Lake(settings)
    uri, opts = lake.uri(RAW_EVENTS), lake.storage_options or None
    latest = DeltaTable(uri, storage_options=opts).version()
    table = DeltaTable(uri, version=0, storage_options=opts)
    out = {}
    for version in range(latest + 1):
        table.load_as_version(version)
        out[version] = set(table.get_add_actions(flatten=False).column("path").to_pylist())
    return out


def day_writes(data: pa.Table) -> dict[str, tuple[int, int]]:
    """For every day: (write id, rows) of the one complete write it holds; fails otherwise."""
    out = {}
    for ds in sorted(set(data.column(PARTITION_COLUMN).to_pylist())):
        day = data.filter(pc.equal(data[PARTITION_COLUMN], ds))
        markers = set(day.column(EXTRA_COLUMN).to_pylist())
        assert len(markers) == 1, f"{ds} mixes writes: {sorted(markers)[:5]}"
        marker = json.loads(markers.pop())
        write, rows = marker["write"], marker["rows"]
        assert day.num_rows == rows, f"{ds}: {day.num_rows} rows of write {write}, which wrote {rows}"
        if "event_id" in day.column_names:
            ids = day.column("event_id")
            assert pc.count_distinct(ids).as_py() == rows
            bounds = pc.min_max(ids)
            assert (bounds["min"].as_py(), bounds["max"].as_py()) == (event_id(write, 0), event_id(write, rows - 1))
        out[ds] = (write, rows)
    return out


# -- the child writer -----------------------------------------------------------------------


class Writer:
    """One child process, started warm: it waits for ``go`` before its first write."""

    def __init__(self, env: dict[str, str], settings: Settings, rows: int, log_path: Path) -> None:
        self.log_path = log_path
        self._stderr = open(log_path, "w")  # noqa: SIM115 - closed in wait()
        cmd = [sys.executable, str(CHILD), settings.lake_uri, settings.s3_endpoint_url or "", str(rows), *DAYS]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._queue: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put((time.monotonic(), json.loads(line)))
        self._queue.put(None)

    def wait_for(self, event: str, write: int | None = None, timeout: float = 120.0) -> float:
        """The time ``event`` (of ``write``) arrived; fails when the child dies or stalls first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no {event} {write} from the writer within {timeout} s: {self.stderr()}")
            if item is None:
                self.proc.wait(timeout=30)
                pytest.fail(f"writer exited ({self.proc.returncode}) before {event} {write}: {self.stderr()}")
            self.events.append(item)
            at, got = item
            if got["event"] == event and (write is None or got.get("write") == write):
                return at

    def go(self, first: int, count: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{first} {count}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit; every event it printed is in ``events`` afterwards."""
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.events.append(item)
        self._stderr.close()
        return rc

    def stop(self) -> None:
        """A writer still waiting for its go exits when stdin closes; any other is killed."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def started(self) -> list[int]:
        return [e["write"] for _, e in self.events if e["event"] == "start"]

    def done(self) -> dict[int, int]:
        return {e["write"]: e["version"] for _, e in self.events if e["event"] == "done"}

    def durations(self) -> list[float]:
        starts = {e["write"]: at for at, e in self.events if e["event"] == "start"}
        return [at - starts[e["write"]] for at, e in self.events if e["event"] == "done" and e["write"] in starts]


# -- the experiment -------------------------------------------------------------------------


@dataclass
class Outcome:
    kills: int = 0
    targeted: int = 0  # kills timed by a new file appearing, not by the clock
    where: Counter[str] = field(default_factory=Counter)  # how each kill landed
    orphans_left: int = 0  # unreferenced files the kills left (before upkeep)
    orphans: list[str] = field(default_factory=list)  # their paths, as the oracle found them
    durations: list[float] = field(default_factory=list)
    versions: int = 0


def check_fresh_reader(
    settings: Settings, rows: int, latest: dict[str, int], in_flight: int | None
) -> dict[str, int]:
    """A new Lake and a new DeltaTable see one complete write per day; returns day -> write id.

    Every day holds the last write reported done, or the write in flight when the kill came
    (it may have committed without living to report it).
    """
    lake = Lake(settings)
    seen = day_writes(lake.read_table(RAW_EVENTS, columns=["event_id", EXTRA_COLUMN, PARTITION_COLUMN]))
    raw = DeltaTable(lake.uri(RAW_EVENTS), storage_options=lake.storage_options or None)
    assert day_writes(raw.to_pyarrow_table(columns=[EXTRA_COLUMN, PARTITION_COLUMN])) == seen
    maybe = {DAYS[in_flight % len(DAYS)]: in_flight} if in_flight is not None else {}
    assert set(latest) <= set(seen) <= set(latest) | set(maybe)
    for ds, (write, count) in seen.items():
        allowed = {latest.get(ds), maybe.get(ds)} - {None}
        assert write in allowed, f"{ds} holds write {write}, expected one of {allowed}"
        assert count == write_rows(write, rows)
    assert lake.partition_rows(RAW_EVENTS) == {ds: rows for ds, (_, rows) in seen.items()}
    lineage = lake.lineage(RAW_EVENTS)
    assert lineage is not None and lineage.extra["write"] == seen[lineage.ds][0]
    return {ds: write for ds, (write, _) in seen.items()}


def kill_writers_repeatedly(
    settings: Settings, env: dict[str, str], tmp_path: Path, *, kills: int, rows: int, seed: int
) -> Outcome:
    rng = random.Random(seed)
    env = dict(env, SLUICE_CODE_VERSION="faults-killed-writer")
    outcome = Outcome()
    latest: dict[str, int] = {}  # day -> the write it must hold (the last one reported done)
    next_write = 0
    writers: list[Writer] = []

    def new_writer() -> Writer:
        writers.append(Writer(env, settings, rows, tmp_path / f"writer-{len(writers)}.log"))
        return writers[-1]

    lake = Lake(settings)
    standby = new_writer()
    try:
        for _ in range(kills):
            writer, standby = standby, None
            writer.wait_for("ready")
            writer.go(next_write, 1000)
            # The retry of the write the previous kill interrupted (or the very first write).
            retried = writer.wait_for("done", next_write)
            standby = new_writer()  # warms up while this one writes on
            outcome.durations += writer.durations()
            typical = statistics.median(outcome.durations)
            if outcome.kills % 3 == 2:
                # Every third kill waits for the next write's first file to appear, then strikes:
                # the moment a writer has files out and no commit yet.
                outcome.targeted += 1
                before = table_files(settings)
                deadline = time.monotonic() + 3 * typical + 10
                while not table_files(settings) - before and time.monotonic() < deadline:
                    time.sleep(0.001)
            else:
                time.sleep(max(retried + rng.uniform(0.0, 2.5) * typical - time.monotonic(), 0.0))
            killed_at = time.monotonic() - retried
            writer.kill()
            outcome.kills += 1

            done = writer.done()
            for write in sorted(done):
                latest[DAYS[write % len(DAYS)]] = write
            started = writer.started()
            in_flight = started[-1] if started[-1] not in done else None
            seen = check_fresh_reader(settings, rows, latest, in_flight)
            # No writer runs now (the standby waits for its go): every young file counts.
            orphans = len(upkeep.collect_orphans(lake, RAW_EVENTS, older_than=dt.timedelta(0), dry_run=True))
            orphans_before, outcome.orphans_left = outcome.orphans_left, orphans
            if in_flight is None:
                where = "between writes"
            elif seen.get(DAYS[in_flight % len(DAYS)]) == in_flight:
                where = "after its commit, before reporting it"
                latest[DAYS[in_flight % len(DAYS)]] = in_flight
            elif orphans > orphans_before:
                where = "mid-write: files out, no commit (orphans)"
            else:
                where = "mid-write: no file out yet"
            outcome.where[where] += 1
            print(f"kill {outcome.kills:2d}: {killed_at:5.2f} s after write {next_write} was done: {where}")
            next_write = max(started) + (1 if in_flight is None else 0)

        # The last retry: a writer that completes the killed write and exits.
        writer, standby = standby, None
        writer.wait_for("ready")
        writer.go(next_write, 1)
        writer.wait_for("done", next_write)
        assert writer.wait() == 0, writer.stderr()
        for write in writer.done():
            latest[DAYS[write % len(DAYS)]] = write
        assert check_fresh_reader(settings, rows, latest, None) == latest
        outcome.durations += writer.durations()
    finally:
        for w in writers:
            w.stop()
    outcome.versions = (Lake(settings).version(RAW_EVENTS) or 0) + 1
    return outcome


def check_upkeep_collects_exactly_the_orphans(settings: Settings, outcome: Outcome, *, local: bool) -> int:
    """Upkeep deletes the unreferenced files, no other; returns how many it deleted."""
    lake = Lake(settings)
    by_version = referenced_by_any_version(settings)
    referenced = set().union(*by_version.values())
    files = table_files(settings)
    expected = sorted(files - referenced)
    assert referenced <= files, f"files the log references are missing: {sorted(referenced - files)[:5]}"
    assert len(expected) == outcome.orphans_left
    outcome.orphans = expected
    collected = 0

    # A writer might still be writing them: nothing younger than the default age goes.
    assert upkeep.collect_orphans(lake, RAW_EVENTS) == []
    if local and expected:
        # Half of them are old enough for the default age (6 hours).
        base = Path(lake.uri(RAW_EVENTS))
        aged = expected[::2]
        for path in aged:
            past = time.time() - 7 * 3600
            os.utime(base / path, (past, past))
        assert upkeep.collect_orphans(lake, RAW_EVENTS, dry_run=True) == aged
        assert upkeep.collect_orphans(lake, RAW_EVENTS) == aged
        collected += len(aged)
        expected = sorted(set(expected) - set(aged))
    assert upkeep.collect_orphans(lake, RAW_EVENTS, older_than=dt.timedelta(0), dry_run=True) == expected
    assert table_files(settings) == referenced | set(expected)  # a dry run deletes nothing
    assert upkeep.collect_orphans(lake, RAW_EVENTS, older_than=dt.timedelta(0)) == expected
    collected += len(expected)
    assert table_files(settings) == referenced
    assert upkeep.collect_orphans(lake, RAW_EVENTS, older_than=dt.timedelta(0)) == []

    # Every version still reads, each day of it one complete write; the lineage says which.
    history = {int(h["version"]): h for h in lake.history(RAW_EVENTS)}
    for version in by_version:
        data = lake.read_table(RAW_EVENTS, version=version, columns=[EXTRA_COLUMN, PARTITION_COLUMN])
        writes = day_writes(data)
        meta = history[version]
        assert writes[meta["sluice.ds"]][0] == json.loads(meta["sluice.extra"])["write"]
    assert day_writes(Lake(settings).read_table(RAW_EVENTS))  # and the latest, every column
    return collected


def report(name: str, outcome: Outcome, collected: int, leftovers: list[str]) -> None:
    staged = sum("#" in path for path in outcome.orphans)
    print(
        f"\n[{name}] {outcome.kills} kills ({outcome.targeted} at a new file), {outcome.versions} versions, writes of "
        f"{statistics.median(outcome.durations):.2f} s (median); kills landed: {dict(outcome.where)}; "
        f"orphaned files left: {outcome.orphans_left} ({staged} of them staged uploads), collected: {collected}; "
        f"log leftovers: {leftovers}"
    )
    for path in outcome.orphans:
        print(f"  orphan: {path}")


# -- the experiments ------------------------------------------------------------------------


def test_killed_writers_leave_a_consistent_table_and_upkeep_collects_their_files(
    warm_children: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(lake_uri=f"file://{tmp_path}/lake", use_case="churn")
    outcome = kill_writers_repeatedly(settings, warm_children, tmp_path, kills=20, rows=40_000, seed=SEED)
    assert outcome.kills >= 20
    assert sum(n for where, n in outcome.where.items() if where.startswith("mid-write")) > 0
    assert outcome.orphans_left > 0, f"no kill left files behind: {dict(outcome.where)}"  # upkeep had work
    collected = check_upkeep_collects_exactly_the_orphans(settings, outcome, local=True)
    report("file://", outcome, collected, log_leftovers(settings))


def test_killed_writers_on_s3(
    s3_settings: Settings, warm_children: dict[str, str], tmp_path: Path
) -> None:
    env = dict(
        warm_children,
        AWS_ACCESS_KEY_ID=DUMMY_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DUMMY_SECRET,
        AWS_EC2_METADATA_DISABLED="true",
    )
    outcome = kill_writers_repeatedly(s3_settings, env, tmp_path, kills=6, rows=15_000, seed=SEED + 1)
    collected = check_upkeep_collects_exactly_the_orphans(s3_settings, outcome, local=False)
    report("s3:// (moto)", outcome, collected, log_leftovers(s3_settings))


def test_upkeep_keeps_what_the_oldest_checkpoint_needs_once_early_commits_are_gone(tmp_path: Path) -> None:
    """After log cleanup the oldest checkpoint is where readers start: its files stay."""
    from sluice.core.lineage import RunContext

    from ._killed_writer_child import build

    settings = load_settings(lake_uri=f"file://{tmp_path}/lake", use_case="churn")
    lake = Lake(settings)
    for write in range(13):  # delta-rs checkpoints after every 10th commit: at version 9
        ds = DAYS[write % 3]
        lake.write_partition(
            RAW_EVENTS, ds, build(RAW_EVENTS.schema, write, ds, 20), RunContext("t", f"w{write}").lineage(ds, {})
        )
    log_dir = Path(lake.uri(RAW_EVENTS)) / "_delta_log"
    assert (log_dir / f"{9:020d}.checkpoint.parquet").exists()
    by_version = referenced_by_any_version(settings)
    for version in range(9):  # what a log cleanup removes: the commits before the checkpoint
        (log_dir / f"{version:020d}.json").unlink()
    still_readable = set().union(*(by_version[v] for v in range(9, 13)))
    unreachable = sorted(table_files(settings) - still_readable)
    assert unreachable  # files only versions 0-8 had

    assert upkeep.collect_orphans(lake, RAW_EVENTS, older_than=dt.timedelta(0)) == unreachable
    assert table_files(settings) == still_readable
    for version in range(9, 13):
        day_writes(Lake(settings).read_table(RAW_EVENTS, version=version))
