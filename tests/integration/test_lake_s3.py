"""The lake on s3:// against a real S3-compatible server (moto in its own process).

Writing, reading, versions, time travel, lineage and status go through the same
code as on file://; commits from concurrent processes rely on conditional puts
(AWS_CONDITIONAL_PUT=etag; the server answers 412 to the loser).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.lake import Lake, LakeError
from sluice.tables import PARTITION_COLUMN, RECORD_TABLES

from .conftest import DUMMY_KEY_ID, DUMMY_SECRET

pytestmark = pytest.mark.integration

WRITER = Path(__file__).with_name("_concurrent_writer.py")
CHURN = load_use_case("churn")
RAW_EVENTS, CURATED_EVENTS = CHURN.tables.raw, CHURN.tables.curated


def raw_rows(ds: str, n: int, tag: str, uc=CHURN) -> pa.Table:  # type: ignore[no-untyped-def]
    columns: dict[str, list] = {name: [f"{tag}:{name}:{i}" for i in range(n)] for name in uc.raw_fields}
    columns[EXTRA_COLUMN] = [None] * n
    columns[PARTITION_COLUMN] = [ds] * n
    return pa.table(columns, schema=uc.tables.raw.schema)


def ctx(run_id: str) -> RunContext:
    return RunContext(dag_id="integration", run_id=run_id)


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r[PARTITION_COLUMN], r["event_id"]))


# -- single writer ------------------------------------------------------------------


def test_settings_point_the_lake_at_the_s3_server(s3_settings, s3_endpoint, bucket) -> None:
    opts = s3_settings.storage_options()
    assert opts["AWS_ENDPOINT_URL"] == s3_endpoint
    assert opts["AWS_ALLOW_HTTP"] == "true"
    assert opts["AWS_CONDITIONAL_PUT"] == "etag"
    assert opts["AWS_ACCESS_KEY_ID"] == DUMMY_KEY_ID
    # Every table of a use case lives under <lake_uri>/<use case>.
    assert s3_settings.lake_root == f"s3://{bucket}/sluice/churn"
    assert Lake(s3_settings).uri(RAW_EVENTS) == f"s3://{bucket}/sluice/churn/raw/events"


def test_write_read_versions_time_travel_and_lineage(s3_settings, s3_client, bucket) -> None:
    lake = Lake(s3_settings)
    assert not lake.exists(RAW_EVENTS)
    assert lake.version(RAW_EVENTS) is None
    assert lake.partitions(RAW_EVENTS) == []

    day1, day2 = "2026-03-01", "2026-03-02"
    first = raw_rows(day1, 5, "first")
    other = raw_rows(day2, 3, "other")
    second = raw_rows(day1, 7, "second")

    v0 = lake.write_partition(RAW_EVENTS, day1, first, ctx("run-a").lineage(day1, {}, rows=5))
    v1 = lake.write_partition(RAW_EVENTS, day2, other, ctx("run-b").lineage(day2, {}, rows=3))
    v2 = lake.write_partition(RAW_EVENTS, day1, second, ctx("run-c").lineage(day1, {"x": 4}, rows=7))
    assert (v0, v1, v2) == (0, 1, 2)
    assert lake.version(RAW_EVENTS) == 2
    assert len(lake.history(RAW_EVENTS)) == 3

    # The objects really are in the bucket, Delta log included.
    keys = {
        o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="sluice/churn/raw/events/")["Contents"]
    }
    assert "sluice/churn/raw/events/_delta_log/00000000000000000000.json" in keys
    assert "sluice/churn/raw/events/_delta_log/00000000000000000002.json" in keys
    assert any(k.startswith(f"sluice/churn/raw/events/ds={day1}/") and k.endswith(".parquet") for k in keys)

    # Latest: day1 replaced, day2 untouched.
    assert sorted_rows(lake.read_partition(RAW_EVENTS, day1)) == sorted_rows(second)
    assert sorted_rows(lake.read_partition(RAW_EVENTS, day2)) == sorted_rows(other)
    assert sorted_rows(lake.read_table(RAW_EVENTS)) == sorted_rows(pa.concat_tables([second, other]))
    assert lake.partitions(RAW_EVENTS) == [day1, day2]
    assert lake.partition_rows(RAW_EVENTS) == {day1: 7, day2: 3}
    assert lake.has_partition(RAW_EVENTS, day2)
    assert not lake.has_partition(RAW_EVENTS, "2026-03-03")

    # Time travel.
    assert sorted_rows(lake.read_partition(RAW_EVENTS, day1, version=0)) == sorted_rows(first)
    assert sorted_rows(lake.read_partition(RAW_EVENTS, day1, version=1)) == sorted_rows(first)
    assert lake.read_partition(RAW_EVENTS, day2, version=0).num_rows == 0
    assert lake.partitions(RAW_EVENTS, version=0) == [day1]
    assert lake.partition_rows(RAW_EVENTS, version=1) == {day1: 5, day2: 3}
    assert lake.read_table(RAW_EVENTS, version=1).num_rows == 8
    assert lake.read_partition(RAW_EVENTS, day1, version=0, columns=["event_id"]).column_names == ["event_id"]

    # Lineage of each commit.
    l0, l1, l2 = (lake.lineage(RAW_EVENTS, v) for v in (0, 1, 2))
    assert (l0.ds, l0.run_id, l0.dag_id, l0.extra) == (day1, "run-a", "integration", {"rows": 5})
    assert (l1.ds, l1.run_id, l1.extra) == (day2, "run-b", {"rows": 3})
    assert (l2.ds, l2.run_id, l2.inputs, l2.extra) == (day1, "run-c", {"x": 4}, {"rows": 7})
    assert lake.lineage(RAW_EVENTS) == l2
    assert lake.lineage(RAW_EVENTS, 99) is None
    assert l0.code_version


def test_replacing_a_partition_leaves_other_days_untouched(s3_settings) -> None:
    lake = Lake(s3_settings)
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    originals = {d: raw_rows(d, 4 + i, f"orig-{d}") for i, d in enumerate(days)}
    for d, data in originals.items():
        lake.write_partition(RAW_EVENTS, d, data, ctx("orig").lineage(d, {}))
    files_before = set(lake._open(RAW_EVENTS).file_uris())

    replacement = raw_rows(days[1], 2, "new")
    lake.write_partition(RAW_EVENTS, days[1], replacement, ctx("replace").lineage(days[1], {}))

    assert sorted_rows(lake.read_partition(RAW_EVENTS, days[1])) == sorted_rows(replacement)
    for d in (days[0], days[2]):
        assert sorted_rows(lake.read_partition(RAW_EVENTS, d)) == sorted_rows(originals[d])
    # The other days' data files are the very same objects (not rewritten).
    files_after = set(lake._open(RAW_EVENTS).file_uris())
    kept = {p for p in files_before if f"ds={days[1]}" not in p}
    assert len(kept) == 2 and kept <= files_after
    assert not (files_before - kept) & files_after
    assert lake.partition_rows(RAW_EVENTS) == {days[0]: 4, days[1]: 2, days[2]: 6}

    # Writing several days at once replaces exactly those days.
    both = pa.concat_tables([raw_rows(days[0], 1, "multi"), raw_rows(days[2], 1, "multi")])
    version = lake.write_partitions(RAW_EVENTS, [days[0], days[2]], both, ctx("multi").lineage(days[2], {}))
    assert lake.partition_rows(RAW_EVENTS) == {days[0]: 1, days[1]: 2, days[2]: 1}
    assert json.loads(lake.history(RAW_EVENTS, limit=1)[0]["sluice.partitions"]) == [days[0], days[2]]
    assert lake.lineage(RAW_EVENTS, version).run_id == "multi"

    # An empty partition write empties that day only.
    lake.write_partition(RAW_EVENTS, days[1], raw_rows(days[1], 0, "none"), ctx("empty").lineage(days[1], {}))
    assert lake.partition_rows(RAW_EVENTS).get(days[1], 0) == 0
    assert lake.read_partition(RAW_EVENTS, days[1]).num_rows == 0
    assert lake.read_partition(RAW_EVENTS, days[0]).num_rows == 1


def test_refused_writes_commit_nothing(s3_settings) -> None:
    lake = Lake(s3_settings)
    day = "2026-03-01"
    lake.write_partition(RAW_EVENTS, day, raw_rows(day, 3, "ok"), ctx("ok").lineage(day, {}))

    stray = pa.concat_tables([raw_rows(day, 1, "a"), raw_rows("2026-03-02", 1, "b")])
    with pytest.raises(LakeError, match="outside the partitions"):
        lake.write_partition(RAW_EVENTS, day, stray, ctx("bad").lineage(day, {}))
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        lake.write_partition(
            RAW_EVENTS, "2026-03-01' OR '1'='1", raw_rows(day, 1, "x"), ctx("x").lineage(day, {})
        )
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        lake.read_partition(RAW_EVENTS, "2026-03-01' OR '1'='1")

    assert lake.version(RAW_EVENTS) == 0
    assert lake.partition_rows(RAW_EVENTS) == {day: 3}


def test_status_reports_every_table(s3_settings) -> None:
    lake = Lake(s3_settings)
    lake.write_partition(
        RAW_EVENTS, "2026-03-01", raw_rows("2026-03-01", 4, "a"), ctx("r1").lineage("2026-03-01", {})
    )
    lake.write_partition(
        RAW_EVENTS, "2026-03-02", raw_rows("2026-03-02", 6, "b"), ctx("r2").lineage("2026-03-02", {})
    )
    lake.write_partition(
        RAW_EVENTS, "2026-03-01", raw_rows("2026-03-01", 5, "c"), ctx("r3").lineage("2026-03-01", {})
    )

    status = {s.table: s for s in lake.status()}
    assert set(status) == {t.name for t in (*CHURN.tables.all(), *RECORD_TABLES)}
    assert {t.name for t in lake.all_tables()} == set(status)
    raw = status[RAW_EVENTS.name]
    assert raw.version == 2
    assert raw.partitions == 2
    assert raw.latest_partition == "2026-03-02"
    assert raw.rows_latest_partition == 6
    assert raw.rows_total == 11
    assert raw.last_commit is not None and raw.last_commit.run_id == "r3"
    curated = status[CURATED_EVENTS.name]
    assert (curated.version, curated.partitions, curated.rows_total, curated.last_commit) == (
        None,
        0,
        0,
        None,
    )


def test_use_cases_sharing_a_lake_uri_keep_to_their_own_prefix(s3_settings, s3_client, bucket) -> None:
    """Two use cases in one deployment: the same table names, each under <lake_uri>/<use case>."""
    purchases = load_use_case("purchases")
    p_settings = s3_settings.for_use_case("purchases")
    churn_lake, purchases_lake = Lake(s3_settings), Lake(p_settings)
    assert purchases_lake.root == f"s3://{bucket}/sluice/purchases"
    assert purchases.tables.raw.name == RAW_EVENTS.name == "raw/events"
    assert purchases_lake.uri(purchases.tables.raw) == f"s3://{bucket}/sluice/purchases/raw/events"

    day = "2026-03-01"
    churn_lake.write_partition(RAW_EVENTS, day, raw_rows(day, 4, "c"), ctx("churn").lineage(day, {}))
    purchases_lake.write_partition(
        purchases.tables.raw, day, raw_rows(day, 6, "p", purchases), ctx("purchases").lineage(day, {})
    )

    # Each sees its own table at its own first version, with its own schema.
    assert churn_lake.partition_rows(RAW_EVENTS) == {day: 4}
    assert purchases_lake.partition_rows(purchases.tables.raw) == {day: 6}
    assert churn_lake.version(RAW_EVENTS) == purchases_lake.version(purchases.tables.raw) == 0
    got = purchases_lake.read_partition(purchases.tables.raw, day)
    assert got.column_names == purchases.tables.raw.columns
    assert "event_id" not in got.column_names and "purchased_at" in got.column_names
    assert sorted(got.column("customer_id").to_pylist()) == sorted(f"p:customer_id:{i}" for i in range(6))
    assert churn_lake.lineage(RAW_EVENTS).run_id == "churn"
    assert purchases_lake.lineage(purchases.tables.raw).run_id == "purchases"
    # Record tables are per use case as well: nothing of churn's shows in purchases' status.
    status = {s.table: s for s in purchases_lake.status()}
    assert set(status) == {t.name for t in (*purchases.tables.all(), *RECORD_TABLES)}
    assert status["raw/events"].rows_total == 6

    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="sluice/")["Contents"]]
    assert {k.split("/")[1] for k in keys} == {"churn", "purchases"}


# -- concurrent writers -------------------------------------------------------------


def run_writers(
    tmp_path: Path, env: dict[str, str], lake_uri: str, endpoint: str, jobs: list[tuple[str, int, str]]
) -> list[dict]:
    """Start one process per (ds, rows, tag), release them together, return their reports."""
    env = dict(
        env,
        AWS_ACCESS_KEY_ID=DUMMY_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DUMMY_SECRET,
        AWS_EC2_METADATA_DISABLED="true",
    )
    go = tmp_path / "go"
    procs = []
    for i, (ds, rows, tag) in enumerate(jobs):
        ready = tmp_path / f"ready-{i}"
        cmd = [sys.executable, str(WRITER), lake_uri, endpoint, ds, str(rows), tag, str(ready), str(go)]
        procs.append(
            (ready, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        )
    try:
        deadline = time.monotonic() + 120
        while not all(ready.exists() for ready, _ in procs):
            failed = [p for _, p in procs if p.poll() is not None]
            if failed:
                _, err = failed[0].communicate()
                pytest.fail(f"a writer died before the barrier: {err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the writers were not ready within 120 s")
            time.sleep(0.02)
        go.touch()
        reports = []
        for _, proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{err[-3000:]}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_concurrent_writers_of_different_partitions_all_land(
    s3_settings, s3_endpoint, warm_children, tmp_path
) -> None:
    lake = Lake(s3_settings)
    jobs = [(f"2026-04-{i + 1:02d}", 10 + i, f"w{i}") for i in range(8)]

    reports = run_writers(tmp_path, warm_children, s3_settings.lake_uri, s3_endpoint, jobs)

    assert lake.partition_rows(RAW_EVENTS) == {ds: rows for ds, rows, _ in jobs}
    # One version per write, none lost, none doubled.
    assert lake.version(RAW_EVENTS) == len(jobs) - 1
    assert len(lake.history(RAW_EVENTS)) == len(jobs)
    versions = sorted(r["version"] for r in reports)
    assert versions == list(range(len(jobs)))
    # Each writer's version is the commit that carries its own lineage.
    for report in reports:
        lineage = lake.lineage(RAW_EVENTS, report["version"])
        assert lineage is not None
        assert (lineage.ds, lineage.run_id, lineage.extra["writer"]) == (
            report["ds"],
            report["tag"],
            report["tag"],
        )
    # And the data of every partition is that writer's.
    table = lake.read_table(RAW_EVENTS)
    for ds, rows, tag in jobs:
        ids = [r["event_id"] for r in table.filter(pc.equal(table["ds"], ds)).to_pylist()]
        assert sorted(ids) == sorted(f"{tag}:event_id:{i}" for i in range(rows))


def test_concurrent_rewrites_of_the_same_partition_leave_one_copy(
    s3_settings, s3_endpoint, warm_children, tmp_path
) -> None:
    lake = Lake(s3_settings)
    day, other = "2026-04-01", "2026-04-02"
    lake.write_partition(RAW_EVENTS, day, raw_rows(day, 3, "old"), ctx("old").lineage(day, {}))
    lake.write_partition(RAW_EVENTS, other, raw_rows(other, 4, "other"), ctx("other").lineage(other, {}))
    jobs = [(day, 20 + i, f"r{i}") for i in range(6)]

    reports = run_writers(tmp_path, warm_children, s3_settings.lake_uri, s3_endpoint, jobs)

    assert lake.version(RAW_EVENTS) == 1 + len(jobs)
    assert sorted(r["version"] for r in reports) == list(range(2, 2 + len(jobs)))
    winner = max(reports, key=lambda r: r["version"])
    rows = lake.read_partition(RAW_EVENTS, day).to_pylist()
    # Exactly one writer's rows, once each: the last commit's.
    assert len(rows) == winner["rows"]
    assert sorted(r["event_id"] for r in rows) == sorted(
        f"{winner['tag']}:event_id:{i}" for i in range(winner["rows"])
    )
    assert lake.partition_rows(RAW_EVENTS) == {day: winner["rows"], other: 4}
    assert lake.lineage(RAW_EVENTS).run_id == winner["tag"]
    for report in reports:
        assert lake.lineage(RAW_EVENTS, report["version"]).run_id == report["tag"]
        # Time travel to each writer's own commit shows its rows, and only its rows.
        seen = lake.read_partition(
            RAW_EVENTS, day, version=report["version"], columns=["event_id"]
        ).to_pylist()
        assert sorted(r["event_id"] for r in seen) == sorted(
            f"{report['tag']}:event_id:{i}" for i in range(report["rows"])
        )
    assert sorted_rows(lake.read_partition(RAW_EVENTS, other)) == sorted_rows(raw_rows(other, 4, "other"))
