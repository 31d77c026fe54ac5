"""How often a Lake opens a Delta table, and that reusing an open table never reads stale data.

Opening a table replays its log (on S3: a listing and several GETs). A ``Lake`` opens a
table once and then follows it with ``update_incremental``; these tests count the real
``DeltaTable`` constructions (the spy opens the table as usual) and check that commits
of this Lake, of another Lake, of plain delta-rs and of another process are all seen by
the next unpinned read, while pinned reads keep returning their version.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError

from sluice.core.lineage import Lineage, RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake, LakeError
from sluice.settings import Settings
from sluice.stages import etl as pipeline
from sluice.tables import PARTITION_COLUMN, Table
from usecases.churn.simulator import SimulatorSource

D1, D2, D3 = "2026-01-01", "2026-01-02", "2026-01-03"
UC = load_use_case("churn")
RAW_EVENTS = UC.tables.raw
RAW_COLUMNS = [c for c in RAW_EVENTS.columns if c != PARTITION_COLUMN]  # the raw fields, then extra_fields


class Opens:
    """Counts ``DeltaTable`` constructions per table path: those that opened and those that found nothing."""

    def __init__(self) -> None:
        self.opened: Counter[tuple[str, int | None]] = Counter()
        self.missing: Counter[str] = Counter()
        self.counting = True

    def of(self, lake: Lake, table: Table, *, version: int | None = None) -> int:
        return self.opened[(lake.uri(table), version)]

    def total(self) -> int:
        return sum(self.opened.values())

    def by_table(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (path, _), n in self.opened.items():
            counts[path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]] += n
        return dict(counts)

    def clear(self) -> None:
        self.opened.clear()
        self.missing.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Not counted: the opens of whoever commits behind the back of the Lake under test."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Opens:
    """Spy on ``DeltaTable.__init__``: counts, then opens the real table (also inside delta-rs' writer)."""
    seen = Opens()
    real_init = DeltaTable.__init__

    def counting_init(self: DeltaTable, table_uri: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        path = str(table_uri).rstrip("/")
        version = kwargs.get("version", args[0] if args else None)
        try:
            real_init(self, table_uri, *args, **kwargs)  # type: ignore[arg-type]
        except Exception:
            seen.missing[path] += seen.counting
            raise
        seen.opened[(path, version)] += seen.counting  # type: ignore[index]

    monkeypatch.setattr(DeltaTable, "__init__", counting_init)
    return seen


def raw_rows(ds: str, n: int, tag: str) -> pa.Table:
    columns = {name: [f"{tag}-{name}-{i}" for i in range(n)] for name in RAW_COLUMNS}
    columns[PARTITION_COLUMN] = [ds] * n
    return pa.table(columns)


def lineage(ds: str, run_id: str) -> Lineage:
    return Lineage(dag_id="unit_test", run_id=run_id, ds=ds, code_version="unit-test")


def tags_of(lake: Lake, ds: str, version: int | None = None) -> set[str]:
    """The write tags found in partition ``ds`` (each write below uses one tag for all its rows)."""
    ids = lake.read_partition(RAW_EVENTS, ds, version=version, columns=["event_id"]).column("event_id")
    return {event_id.split("-event_id-")[0] for event_id in ids.to_pylist()}


# -- how often a table is opened -----------------------------------------------------------


def test_a_step_opens_an_existing_table_once(settings: Settings, opens: Opens) -> None:
    Lake(settings).write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "setup"), lineage(D1, "setup"))
    opens.clear()

    lake = Lake(settings)
    assert lake.exists(RAW_EVENTS)
    assert lake.version(RAW_EVENTS) == 0
    assert lake.write_partition(RAW_EVENTS, D2, raw_rows(D2, 2, "two"), lineage(D2, "two")) == 1
    assert lake.write_partition(RAW_EVENTS, D3, raw_rows(D3, 4, "three"), lineage(D3, "three")) == 2
    assert lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 5, "again"), lineage(D1, "again")) == 3
    # Every read sees this Lake's own last write.
    assert tags_of(lake, D1) == {"again"}
    assert lake.partitions(RAW_EVENTS) == [D1, D2, D3]
    assert lake.has_partition(RAW_EVENTS, D3)
    assert lake.version(RAW_EVENTS) == 3
    assert lake.partition_rows(RAW_EVENTS) == {D1: 5, D2: 2, D3: 4}
    assert lake.lineage(RAW_EVENTS) == lineage(D1, "again")
    assert lake.lineage(RAW_EVENTS, 1) == lineage(D2, "two")
    assert len(lake.history(RAW_EVENTS)) == 4
    assert lake.read_table(RAW_EVENTS).num_rows == 11
    # A pinned read of the version just read is served by the same snapshot.
    assert lake.read_partition(RAW_EVENTS, D1, version=lake.version(RAW_EVENTS)).num_rows == 5
    lake.append_rows(RAW_EVENTS, D2, raw_rows(D2, 1, "upsert").to_pylist(), ("event_id",), lineage(D2, "upsert"))
    assert tags_of(lake, D2) == {"two", "upsert"}
    (status,) = lake.status([RAW_EVENTS])
    assert (status.version, status.partitions, status.rows_total) == (4, 3, 12)
    assert status.last_commit == lineage(D2, "upsert")

    assert opens.by_table() == {RAW_EVENTS.name: 1}
    assert not opens.missing


def test_a_new_table_is_probed_then_opened_once(settings: Settings, opens: Opens) -> None:
    lake = Lake(settings)
    assert not lake.exists(RAW_EVENTS)  # probe 1: nothing there
    assert lake.version(RAW_EVENTS) is None  # probe 2: another process may have created it since
    # Probe 3 right before the write, probe 4 inside write_deltalake, which then creates the
    # table by URI; the Lake opens it once afterwards and follows it from there.
    assert lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "one"), lineage(D1, "one")) == 0
    lake.write_partition(RAW_EVENTS, D2, raw_rows(D2, 2, "two"), lineage(D2, "two"))
    assert lake.exists(RAW_EVENTS)
    assert lake.partition_rows(RAW_EVENTS) == {D1: 3, D2: 2}
    assert lake.lineage(RAW_EVENTS) == lineage(D2, "two")

    assert opens.by_table() == {RAW_EVENTS.name: 1}
    assert opens.missing == {lake.uri(RAW_EVENTS): 4}


def test_status_opens_each_existing_table_once(settings: Settings, opens: Opens) -> None:
    writer = Lake(settings)
    writer.write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "one"), lineage(D1, "one"))
    writer.write_partition(RAW_EVENTS, D2, raw_rows(D2, 2, "two"), lineage(D2, "two"))
    opens.clear()

    lake = Lake(settings)
    first = lake.status()
    assert lake.status() == first
    assert {s.table: s.version for s in first if s.version is not None} == {RAW_EVENTS.name: 1}
    assert opens.by_table() == {RAW_EVENTS.name: 1}
    # Missing tables are looked for again every time: another process may create them.
    assert sum(opens.missing.values()) == 2 * (len(lake.all_tables()) - 1)


def test_a_pinned_version_is_opened_once_and_stays_that_version(settings: Settings, opens: Opens) -> None:
    writer = Lake(settings)
    for tag in ("v0", "v1", "v2"):
        writer.write_partition(RAW_EVENTS, D1, raw_rows(D1, 2, tag), lineage(D1, tag))
    opens.clear()

    lake = Lake(settings)
    assert lake.version(RAW_EVENTS) == 2
    for _ in range(2):
        assert tags_of(lake, D1, version=0) == {"v0"}
        assert lake.partitions(RAW_EVENTS, version=0) == [D1]
        assert lake.partition_rows(RAW_EVENTS, version=0) == {D1: 2}
        assert lake.read_table(RAW_EVENTS, version=0).num_rows == 2
        assert tags_of(lake, D1, version=2) == {"v2"}  # the latest snapshot itself
    assert tags_of(lake, D1) == {"v2"}
    assert opens.of(lake, RAW_EVENTS) == 1
    assert opens.of(lake, RAW_EVENTS, version=0) == 1
    assert opens.total() == 2

    with pytest.raises(DeltaError, match="version 7"):
        lake.read_partition(RAW_EVENTS, D1, version=7)  # no such version: an error, as before
    assert lake.version(RAW_EVENTS) == 2


def test_a_missing_table_reads_as_before(settings: Settings, opens: Opens) -> None:
    lake = Lake(settings)
    assert lake.partitions(RAW_EVENTS, version=0) == []
    assert lake.partition_rows(RAW_EVENTS, version=0) == {}
    with pytest.raises(LakeError, match=r"table raw/events does not exist yet in "):
        lake.read_partition(RAW_EVENTS, D1, version=0)
    with pytest.raises(LakeError, match="does not exist yet"):
        lake.history(RAW_EVENTS)
    assert opens.total() == 0


# -- no stale reads ---------------------------------------------------------------------------

OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from sluice.edges.lake import Lake
    from sluice.core.lineage import Lineage
    from sluice.core.usecase import load_use_case
    from sluice.settings import load_settings

    RAW_EVENTS = load_use_case("churn").tables.raw
    root, ds, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = {f: [f"{tag}-{f}-{i}" for i in range(n)] for f in RAW_EVENTS.columns[:-1]}  # all but ds
    data["ds"] = [ds] * n
    Lake(load_settings(lake_uri=root)).write_partition(
        RAW_EVENTS, ds, pa.table(data), Lineage("unit_test", tag, ds, "unit-test"))
    """
)


def commit_with_another_lake(settings: Settings, ds: str, n: int, tag: str) -> None:
    Lake(settings).write_partition(RAW_EVENTS, ds, raw_rows(ds, n, tag), lineage(ds, tag))


def commit_with_delta_rs(settings: Settings, ds: str, n: int, tag: str) -> None:
    path = Lake(settings).uri(RAW_EVENTS)
    data = raw_rows(ds, n, tag).cast(RAW_EVENTS.schema)
    write_deltalake(path, data, mode="overwrite", predicate=f"{PARTITION_COLUMN} = '{ds}'",
                    partition_by=[PARTITION_COLUMN])


def commit_from_another_process(settings: Settings, ds: str, n: int, tag: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, settings.lake_uri, ds, str(n), tag],
        env=env, check=True, timeout=120, capture_output=True,
    )


COMMITTERS = [
    pytest.param(commit_with_another_lake, id="another-lake"),
    pytest.param(commit_with_delta_rs, id="plain-delta-rs"),
    pytest.param(commit_from_another_process, id="another-process"),
]


@pytest.mark.parametrize("commit", COMMITTERS)
def test_a_commit_by_someone_else_is_seen_by_the_next_read(
    settings: Settings, opens: Opens, commit: Callable[[Settings, str, int, str], None]
) -> None:
    lake = Lake(settings)
    lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "mine"), lineage(D1, "mine"))
    assert tags_of(lake, D1) == {"mine"}
    assert lake.partitions(RAW_EVENTS) == [D1]

    with opens.paused():
        commit(settings, D1, 4, "theirs")  # replaces D1: version 1
    assert lake.version(RAW_EVENTS) == 1
    assert tags_of(lake, D1) == {"theirs"}

    with opens.paused():
        commit(settings, D2, 2, "new-day")  # adds D2: version 2
    assert lake.partitions(RAW_EVENTS) == [D1, D2]
    assert lake.has_partition(RAW_EVENTS, D2)

    with opens.paused():
        commit(settings, D1, 1, "last")  # replaces D1 again: version 3
    assert lake.partition_rows(RAW_EVENTS) == {D1: 1, D2: 2}
    assert lake.read_table(RAW_EVENTS).num_rows == 3
    (status,) = lake.status([RAW_EVENTS])
    assert (status.version, status.partitions, status.rows_total) == (3, 2, 3)

    # Writing on top of them keeps their days: the write starts from the latest version too.
    assert lake.write_partition(RAW_EVENTS, D3, raw_rows(D3, 2, "mine"), lineage(D3, "mine")) == 4
    assert lake.partition_rows(RAW_EVENTS) == {D1: 1, D2: 2, D3: 2}
    assert lake.lineage(RAW_EVENTS) == lineage(D3, "mine")

    # The pinned past is still the past.
    assert tags_of(lake, D1, version=0) == {"mine"}
    assert tags_of(lake, D1, version=1) == {"theirs"}
    # All of it with the one open after the table was created (by the first write).
    assert opens.of(lake, RAW_EVENTS) == 1
    assert opens.total() == 3  # the two pinned versions


@pytest.mark.parametrize("commit", COMMITTERS)
def test_a_write_right_after_someone_elses_commit_replaces_their_rows_too(
    settings: Settings, commit: Callable[[Settings, str, int, str], None]
) -> None:
    lake = Lake(settings)
    lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "mine"), lineage(D1, "mine"))
    commit(settings, D1, 4, "theirs")
    commit(settings, D2, 2, "theirs")
    # No read in between: the write itself must start from their commits, not from version 0.
    assert lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 1, "again"), lineage(D1, "again")) == 3
    assert tags_of(lake, D1) == {"again"}
    assert lake.partition_rows(RAW_EVENTS) == {D1: 1, D2: 2}


def test_a_table_created_elsewhere_is_found_by_a_lake_that_saw_none(settings: Settings) -> None:
    lake = Lake(settings)
    assert not lake.exists(RAW_EVENTS)
    assert lake.partitions(RAW_EVENTS) == []
    commit_with_another_lake(settings, D1, 2, "theirs")
    assert lake.exists(RAW_EVENTS)
    assert lake.version(RAW_EVENTS) == 0
    assert tags_of(lake, D1) == {"theirs"}


def test_pinned_reads_return_their_version_whatever_was_committed_since(settings: Settings, opens: Opens) -> None:
    lake = Lake(settings)
    lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 2, "v0"), lineage(D1, "v0"))
    lake.write_partition(RAW_EVENTS, D1, raw_rows(D1, 3, "v1"), lineage(D1, "v1"))
    pinned = lake.version(RAW_EVENTS)
    assert pinned == 1

    with opens.paused():
        commit_with_another_lake(settings, D1, 4, "v2")
    # Not refreshed by a pinned read of an older version, nor needed: version 1 is version 1.
    assert tags_of(lake, D1, version=pinned) == {"v1"}
    assert lake.partition_rows(RAW_EVENTS, version=pinned) == {D1: 3}
    # A version newer than what this Lake has seen is reached incrementally, without an open.
    assert tags_of(lake, D1, version=2) == {"v2"}
    opened_so_far = opens.of(lake, RAW_EVENTS)

    with opens.paused():
        commit_with_another_lake(settings, D2, 1, "v3")
    assert lake.version(RAW_EVENTS) == 3
    assert tags_of(lake, D1, version=pinned) == {"v1"}
    assert lake.partitions(RAW_EVENTS, version=pinned) == [D1]
    assert tags_of(lake, D1, version=0) == {"v0"}
    assert lake.partitions(RAW_EVENTS) == [D1, D2]
    assert opens.of(lake, RAW_EVENTS, version=pinned) == 1
    assert opens.of(lake, RAW_EVENTS, version=0) == 1
    assert opens.of(lake, RAW_EVENTS) == opened_so_far


# -- one day of the pipeline -----------------------------------------------------------------


def test_each_pipeline_step_opens_each_of_its_tables_once(settings: Settings, opens: Opens) -> None:
    source = SimulatorSource(n_customers=200, seed=5)
    ctx = RunContext(dag_id="unit_test", run_id="opens")
    first, second = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    pipeline.ingest_day(settings, first, ctx, source=source)
    pipeline.curate_day(settings, first, ctx)
    pipeline.build_features_day(settings, first, ctx)

    steps = {
        "ingest": (lambda: pipeline.ingest_day(settings, second, ctx, source=source), {"raw/events"}),
        "curate": (lambda: pipeline.curate_day(settings, second, ctx),
                   {"raw/events", "quarantine/events", "curated/events"}),
        "features": (lambda: pipeline.build_features_day(settings, second, ctx),
                     {"curated/events", "state/customer_cumulative", "features/customer_daily"}),
    }
    for name, (run, tables) in steps.items():
        opens.clear()
        run()
        assert opens.by_table() == dict.fromkeys(tables, 1), name
        assert not opens.missing, name


def test_the_spy_counts_real_opens(tmp_path: Path, opens: Opens) -> None:
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"x": [1, 2]}))
    assert DeltaTable(path).to_pyarrow_table().num_rows == 2
    assert opens.missing == {path: 1}  # write_deltalake looked for the table first
    assert opens.opened == {(path, None): 1}
