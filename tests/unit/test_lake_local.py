"""The lake on file://: partition overwrites, versions, time travel, lineage, concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from sluice.core.lineage import Lineage, RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake, LakeError, TableStatus, check_day
from sluice.settings import load_settings
from sluice.tables import MODEL_DECISIONS, PARTITION_COLUMN, RECORD_TABLES, by_name

D1, D2, D3 = "2026-01-01", "2026-01-02", "2026-01-03"
UC = load_use_case("churn")
RAW_EVENTS, QUARANTINE_EVENTS, CURATED_EVENTS = UC.tables.raw, UC.tables.quarantine, UC.tables.curated
RAW_COLUMNS = [c for c in RAW_EVENTS.columns if c != PARTITION_COLUMN]  # the raw fields, then extra_fields


def raw_table(ds: str, n: int, tag: str = "a", days: list[str] | None = None) -> pa.Table:
    """``n`` raw rows of ``ds`` whose values carry ``tag`` (to tell writes apart)."""
    data = {name: [f"{tag}-{name}-{i}" for i in range(n)] for name in RAW_COLUMNS}
    data["ds"] = days if days is not None else [ds] * n
    return pa.table(data)


def lineage(ds: str, **extra) -> Lineage:
    return Lineage(dag_id="ingest_raw", run_id=f"scheduled__{ds}", ds=ds, code_version="abc123", extra=extra)


def rows_of(lake: Lake, ds: str, version: int | None = None) -> list[str]:
    return sorted(lake.read_partition(RAW_EVENTS, ds, version=version).column("event_id").to_pylist())


@pytest.fixture
def lake(settings) -> Lake:
    return Lake(settings)


def test_a_new_lake_has_no_tables(lake):
    assert not lake.exists(RAW_EVENTS)
    assert lake.version(RAW_EVENTS) is None
    assert lake.partitions(RAW_EVENTS) == []
    assert lake.partition_rows(RAW_EVENTS) == {}
    with pytest.raises(LakeError, match=r"table raw/events does not exist yet in file://"):
        lake.read_partition(RAW_EVENTS, D1)
    with pytest.raises(LakeError, match="does not exist yet"):
        lake.lineage(RAW_EVENTS)


def test_uri_of_a_file_lake_is_a_local_path(tmp_path):
    lake = Lake(load_settings(lake_uri=str(tmp_path / "my lake")))
    # Every table of a use case lives below its own prefix of the lake.
    assert lake.uri(RAW_EVENTS) == f"{tmp_path}/my lake/churn/raw/events"
    assert lake.uri(MODEL_DECISIONS) == f"{tmp_path}/my lake/churn/models/decisions"
    s3 = Lake(load_settings(lake_uri="s3://bucket/root"))
    assert s3.uri(CURATED_EVENTS) == "s3://bucket/root/churn/curated/events"
    other = Lake(load_settings(lake_uri="s3://bucket/root", use_case="purchases"))
    assert other.uri(load_use_case("purchases").tables.curated) == "s3://bucket/root/purchases/curated/events"


def test_write_and_read_in_a_path_with_spaces(tmp_path):
    lake = Lake(load_settings(lake_uri=str(tmp_path / "my lake")))
    assert lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 3), lineage(D1)) == 0
    assert len(rows_of(lake, D1)) == 3
    assert (tmp_path / "my lake" / "churn" / "raw" / "events" / "_delta_log").is_dir()


def test_write_partition_replaces_only_that_partition(lake):
    v0 = lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 3, "first"), lineage(D1))
    v1 = lake.write_partition(RAW_EVENTS, D2, raw_table(D2, 2, "other"), lineage(D2))
    before_d2 = lake.read_partition(RAW_EVENTS, D2)

    v2 = lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 5, "second"), lineage(D1))

    assert (v0, v1, v2) == (0, 1, 2)
    assert lake.version(RAW_EVENTS) == 2
    assert rows_of(lake, D1) == sorted(f"second-event_id-{i}" for i in range(5))
    assert lake.read_partition(RAW_EVENTS, D2).equals(before_d2)
    assert lake.partition_rows(RAW_EVENTS) == {D1: 5, D2: 2}
    assert lake.read_table(RAW_EVENTS).num_rows == 7


def test_versions_increase_and_every_version_can_be_read_back(lake):
    versions = [lake.write_partition(RAW_EVENTS, D1, raw_table(D1, n, f"w{n}"), lineage(D1)) for n in (1, 2, 3)]
    assert versions == [0, 1, 2]
    for n, version in zip((1, 2, 3), versions):
        assert rows_of(lake, D1, version=version) == sorted(f"w{n}-event_id-{i}" for i in range(n))
        assert lake.partition_rows(RAW_EVENTS, version=version) == {D1: n}
    assert lake.read_table(RAW_EVENTS, version=0).num_rows == 1


def test_read_partition_returns_the_table_schema_and_columns(lake):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 2), lineage(D1))
    got = lake.read_partition(RAW_EVENTS, D1)
    assert got.schema == RAW_EVENTS.schema
    some = lake.read_partition(RAW_EVENTS, D1, columns=["plan", "event_id"])
    assert some.column_names == ["plan", "event_id"]
    assert lake.read_partition(RAW_EVENTS, D3).num_rows == 0  # an absent day reads as empty


def test_write_partitions_replaces_several_days_in_one_commit(lake):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 1), lineage(D1))
    lake.write_partition(RAW_EVENTS, D3, raw_table(D3, 4), lineage(D3))
    both = pa.concat_tables([raw_table(D1, 2, "x"), raw_table(D2, 3, "x")])
    version = lake.write_partitions(RAW_EVENTS, [D2, D1, D1], both, lineage(D2))
    assert version == 2
    assert lake.partition_rows(RAW_EVENTS) == {D1: 2, D2: 3, D3: 4}
    assert json.loads(lake.history(RAW_EVENTS, limit=1)[0]["sluice.partitions"]) == [D1, D2]


def test_writing_no_rows_empties_the_partition(lake):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 3), lineage(D1))
    lake.write_partition(RAW_EVENTS, D2, raw_table(D2, 3), lineage(D2))
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 0), lineage(D1))
    assert lake.partition_rows(RAW_EVENTS) == {D2: 3}
    assert lake.read_partition(RAW_EVENTS, D1).num_rows == 0


def test_rows_outside_the_declared_partitions_are_refused(lake):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 2), lineage(D1))
    stray = raw_table(D1, 3, days=[D1, D2, D3])
    with pytest.raises(
        LakeError,
        match=r"raw/events: rows for \['2026-01-02', '2026-01-03'\] outside the partitions written \['2026-01-01'\]",
    ):
        lake.write_partition(RAW_EVENTS, D1, stray, lineage(D1))
    assert lake.version(RAW_EVENTS) == 0
    assert lake.partition_rows(RAW_EVENTS) == {D1: 2}


def test_a_refused_first_write_does_not_create_the_table(lake):
    with pytest.raises(LakeError, match="outside the partitions written"):
        lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 1, days=[D2]), lineage(D1))
    assert not lake.exists(RAW_EVENTS)


def test_write_without_days_is_refused(lake):
    with pytest.raises(ValueError, match="no partition day given"):
        lake.write_partitions(RAW_EVENTS, [], raw_table(D1, 1), lineage(D1))


def test_data_is_cast_to_the_table_schema(lake):
    lake.write_partition(QUARANTINE_EVENTS, D1, raw_table(D1, 2).append_column(
        "failed_columns", pa.array(["plan", "amount"])).append_column(
        "failed_checks", pa.array(["plan: isin", "amount: parse_number"])), lineage(D1))
    got = lake.read_partition(QUARANTINE_EVENTS, D1)
    assert got.schema == QUARANTINE_EVENTS.schema
    assert sorted(got.column("failed_columns").to_pylist()) == ["amount", "plan"]
    with pytest.raises(KeyError):
        lake.write_partition(QUARANTINE_EVENTS, D2, raw_table(D2, 1), lineage(D2))  # no failed_* columns


# -- partition days --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "2026-01-01' OR 1=1 --",
        "2026-01-01') OR ds IN ('2026-01-02",
        "2026-1-1",
        "20260101",
        "",
        " 2026-01-01",
        "2026-01-01T00:00:00",
        None,
        20260101,
    ],
)
def test_check_day_rejects_anything_but_a_day(bad):
    with pytest.raises(ValueError, match="partition day must look like YYYY-MM-DD"):
        check_day(bad)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("2026-01-01\n", id="trailing-newline"),
        pytest.param("2026-13-45", id="no-such-date"),
        pytest.param("\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661", id="arabic-indic-digits"),
    ],
)
def test_check_day_rejects_near_misses(bad):
    with pytest.raises(ValueError, match="partition day .*(must look like YYYY-MM-DD|is not a date)"):
        check_day(bad)


def test_check_day_accepts_a_day():
    assert check_day("2026-02-28") == "2026-02-28"


@pytest.mark.parametrize(
    "call",
    [
        lambda lake: lake.read_partition(RAW_EVENTS, "2026-01-01' OR 1=1 --"),
        lambda lake: lake.has_partition(RAW_EVENTS, "2026-01-01' OR 1=1 --"),
        lambda lake: lake.write_partition(
            RAW_EVENTS, "2026-01-01' OR 1=1 --", raw_table(D1, 1, days=["2026-01-01' OR 1=1 --"]), lineage(D1)
        ),
    ],
    ids=["read", "has_partition", "write"],
)
def test_injection_like_days_never_reach_the_table(lake, call):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 2), lineage(D1))
    with pytest.raises(ValueError, match="partition day must look like"):
        call(lake)
    assert lake.version(RAW_EVENTS) == 0
    assert lake.partition_rows(RAW_EVENTS) == {D1: 2}


# -- lineage ---------------------------------------------------------------------------------------


def test_lineage_is_recorded_in_every_commit(lake):
    first = Lineage("ingest_raw", "scheduled__1", D1, "abc123", inputs={}, extra={"rows": 3, "source": "simulator"})
    second = Lineage("nightly_etl", "manual__2", D2, "def456", inputs={"raw/events": 0}, extra={"rows": 2})
    v0 = lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 3), first)
    v1 = lake.write_partition(RAW_EVENTS, D2, raw_table(D2, 2), second)
    assert lake.lineage(RAW_EVENTS, v0) == first
    assert lake.lineage(RAW_EVENTS, v1) == second
    assert lake.lineage(RAW_EVENTS) == second  # latest
    assert lake.lineage(RAW_EVENTS, 7) is None  # no such version


@pytest.mark.parametrize(
    "original",
    [
        Lineage("nightly_etl", "scheduled__2026-01-01T00:00:00+00:00", D1, "0123456789ab-dirty",
                inputs={"raw/events": 12, "state/customer_cumulative": 3},
                extra={"rows": 10, "labelled_snapshot": None, "failures": {"plan: isin": 2}}),
        Lineage("ingest_raw", "", D1, "0.1.0"),
    ],
)
def test_lineage_round_trips_through_commit_metadata(original):
    meta = original.to_metadata()
    assert all(k.startswith("sluice.") and isinstance(v, str) for k, v in meta.items())
    assert Lineage.from_metadata(meta) == original


def test_lineage_from_foreign_metadata_is_none():
    assert Lineage.from_metadata({"operation": "WRITE", "version": 3}) is None


def test_run_context_builds_the_lineage():
    lin = RunContext("nightly_etl", "manual__x").lineage(D1, {"raw/events": 4}, code_version="c0ffee", rows=9)
    assert lin == Lineage("nightly_etl", "manual__x", D1, "c0ffee", {"raw/events": 4}, {"rows": 9})
    # Without an explicit version the detected one is used (fixed by the test environment).
    assert RunContext().lineage(D1, {}).code_version == "unit-test"


# -- status ----------------------------------------------------------------------------------------


def test_status_reports_every_table(lake):
    lake.write_partition(RAW_EVENTS, D1, raw_table(D1, 3), lineage(D1))
    lake.write_partition(RAW_EVENTS, D2, raw_table(D2, 5), lineage(D2, rows=5))
    status = {s.table: s for s in lake.status()}
    assert lake.all_tables() == UC.tables.all() + RECORD_TABLES
    assert list(status) == [t.name for t in lake.all_tables()]
    assert status["raw/events"] == TableStatus(
        table="raw/events",
        version=1,
        partitions=2,
        latest_partition=D2,
        rows_latest_partition=5,
        rows_total=8,
        last_commit=lineage(D2, rows=5),
    )
    assert status["curated/events"] == TableStatus("curated/events", None, 0, None, 0, 0, None)


def test_by_name_finds_registered_tables():
    assert by_name("models/decisions") is MODEL_DECISIONS
    assert by_name("raw/events", UC.tables.all()) is RAW_EVENTS
    with pytest.raises(KeyError, match="unknown table 'raw/events'"):
        by_name("raw/events")  # not a record table: a use case's own
    with pytest.raises(KeyError, match="unknown table 'raw/nope'"):
        by_name("raw/nope", UC.tables.all())


# -- concurrent writers ----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    import pyarrow as pa
    from sluice.edges.lake import Lake
    from sluice.core.lineage import Lineage
    from sluice.core.usecase import load_use_case
    from sluice.settings import load_settings

    RAW_EVENTS = load_use_case("churn").tables.raw
    lake_uri, ds, n, barrier, writers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    lake = Lake(load_settings(lake_uri=lake_uri))
    data = {f: [f"{ds}-{f}-{i}" for i in range(n)] for f in RAW_EVENTS.columns[:-1]}  # all but ds
    data["ds"] = [ds] * n
    table = pa.table(data)
    # A barrier: every writer has imported its modules before any starts writing.
    open(f"{barrier}/{ds}", "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier)) < writers and time.time() < deadline:
        time.sleep(0.01)
    version = lake.write_partition(RAW_EVENTS, ds, table, Lineage("backfill", "run-" + ds, ds, "unit-test"))
    print(json.dumps({"ds": ds, "version": version}))
    """
)


def test_concurrent_writers_of_a_new_table_all_succeed(tmp_path):
    lake_uri = str(tmp_path / "lake")
    days = {f"2026-02-{d:02d}": 3 + 2 * d for d in range(1, 7)}  # six writers, different sizes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "AWS_"))}
    env["SLUICE_CODE_VERSION"] = "unit-test"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, lake_uri, ds, str(n), str(barrier), str(len(days))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ds, n in days.items()
    ]
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        got = json.loads(out.strip().splitlines()[-1])
        results[got["ds"]] = got["version"]

    lake = Lake(load_settings(lake_uri=lake_uri))
    assert lake.partition_rows(RAW_EVENTS) == days
    for ds, n in days.items():
        assert rows_of(lake, ds) == sorted(f"{ds}-event_id-{i}" for i in range(n))
    assert sorted(results.values()) == list(range(len(days)))
    assert lake.version(RAW_EVENTS) == len(days) - 1
    commits = {int(entry["version"]): entry for entry in lake.history(RAW_EVENTS)}
    for ds, version in results.items():
        recorded = lake.lineage(RAW_EVENTS, version)
        assert recorded is not None
        assert (recorded.ds, recorded.run_id) == (ds, "run-" + ds)
        # The commit at that version holds the writer's partition and nothing else.
        assert json.loads(commits[version]["sluice.partitions"]) == [ds]
