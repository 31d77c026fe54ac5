"""lake_maintenance on real files: the lake shrinks, every version a model pins stays readable.

* The pure selection of ``sluice.edges.upkeep`` (what to vacuum, which log entries may go,
  which state partitions are retired), parametrized, with its refusals.
* A churn lake whose last day is re-run 30 times (from five different sources in turn, so
  that the versions differ): three versions are pinned as a registry would pin them
  (champion, previous-champion, challenger). After maintenance fewer files are on disk, an
  unpinned old version is gone, and every pinned version reads back exactly as before (every
  partition, and the drift reference sampled from it); delta-rs's own vacuum with
  ``keep_versions`` agrees on what may go. A second run changes nothing.
* The log: delta-rs deletes the log entries of a pinned version once they are 30 days old;
  after ``keep_log`` it no longer does, and ``clean_log`` keeps the pins loadable.
* Retention of ``state/<entity>_cumulative``: old partitions leave the latest version, a pinned
  earlier version still reads them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.edges import upkeep
from sluice.edges.lake import Lake
from sluice.edges.upkeep import StoredFile
from sluice.settings import Upkeep, load_settings
from sluice.stages import upkeep as stage
from sluice.stages.monitoring.reference import ReferenceSpec, reference_sample
from sluice.tables import ALERTS_SENT, LAKE_UPKEEP, PARTITION_COLUMN

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
MS = 1000


def stored(path: str, age: dt.timedelta = dt.timedelta(days=1), size: int = 100) -> StoredFile:
    return StoredFile(path, NOW - age, size)


# -- pure selection -------------------------------------------------------------------------


def test_commit_actions_read_adds_and_removes_with_their_time() -> None:
    commit = "\n".join(json.dumps(a) for a in (
        {"commitInfo": {"timestamp": 5}},
        {"add": {"path": "ds=2026-01-01/a%20b.parquet", "dataChange": True}},
        {"remove": {"path": "ds=2026-01-01/old.parquet", "deletionTimestamp": 1234}},
        {"remove": {"path": "ds=2026-01-01/untimed.parquet"}},
    ))
    actions = upkeep.commit_actions(commit.encode())
    assert actions.adds == {"ds=2026-01-01/a b.parquet"}
    assert actions.removes == {"ds=2026-01-01/old.parquet": 1234, "ds=2026-01-01/untimed.parquet": None}
    assert upkeep.referenced_in_commit(commit) == {"ds=2026-01-01/a b.parquet"}


@pytest.mark.parametrize(
    ("version", "commits", "checkpoints", "expected"),
    [
        (5, range(0, 8), [], True),  # from version 0
        (5, range(3, 8), [], False),  # early commits gone, no checkpoint
        (5, range(3, 8), [2], True),  # from the checkpoint at 2
        (5, [0, 1, 2, 4, 5], [], False),  # a gap
        (5, [5, 6], [4], True),
        (4, [5, 6], [4], True),  # the checkpoint itself
        (3, [5, 6], [4], False),  # before the oldest checkpoint
    ],
)
def test_a_version_is_replayable_from_version_0_or_a_checkpoint_without_gaps(
    version: int, commits, checkpoints: list[int], expected: bool
) -> None:
    assert upkeep.replayable(version, list(commits), checkpoints) is expected


def test_a_file_is_vacuumed_only_when_out_of_every_kept_version_since_before_the_cutoff() -> None:
    cutoff = NOW - dt.timedelta(days=7)
    old, recent = int((cutoff - dt.timedelta(hours=1)).timestamp() * MS), int((cutoff + dt.timedelta(hours=1)).timestamp() * MS)
    removed = upkeep.removal_times([
        upkeep.CommitActions(frozenset({"p/a.parquet"}), {"p/old.parquet": old, "p/pinned.parquet": old}),
        upkeep.CommitActions(frozenset(), {"p/recent.parquet": recent, "p/untimed.parquet": None}),
        upkeep.CommitActions(frozenset(), {"p/twice.parquet": old}),
        upkeep.CommitActions(frozenset(), {"p/twice.parquet": recent}),  # the last removal counts
    ])
    files = [stored(p) for p in ("p/a.parquet", "p/old.parquet", "p/pinned.parquet", "p/recent.parquet",
                                 "p/untimed.parquet", "p/twice.parquet", "p/orphan.parquet",
                                 "_delta_log/00000000000000000000.json")]
    chosen = upkeep.select_vacuum(files, removed, [{"p/a.parquet"}, {"p/pinned.parquet"}], cutoff=cutoff)
    # live, pinned, recent, untimed, re-removed recently, never committed (an orphan), log: kept
    assert [f.path for f in chosen] == ["p/old.parquet"]


@pytest.mark.parametrize(
    ("pinned", "expected_from", "expected_floor"),
    [
        ((), 24, 20),  # the version that was the latest at the cutoff, from its checkpoint
        ((12,), 12, 10),  # a pin holds the floor back
        ((3, 12), 3, None),  # no checkpoint before the oldest pin: the log stays whole
    ],
)
def test_the_log_is_cleaned_below_the_checkpoint_that_the_oldest_kept_version_loads_from(
    pinned: tuple[int, ...], expected_from: int, expected_floor: int | None
) -> None:
    cutoff = NOW - dt.timedelta(days=30)
    times = {v: cutoff - dt.timedelta(days=30 - v) for v in range(25)} | {v: cutoff + dt.timedelta(hours=v) for v in range(25, 31)}
    keep_from = upkeep.oldest_kept_version(times, pinned, 30, cutoff=cutoff)
    assert keep_from == expected_from
    floor = upkeep.log_floor([10, 20, 30], keep_from)
    assert floor == expected_floor
    if floor is None:
        return
    entries = [StoredFile(f"_delta_log/{v:020d}.json", t, 1) for v, t in times.items()]
    entries += [StoredFile(f"_delta_log/{v:020d}.checkpoint.parquet", times[v], 1) for v in (10, 20, 30)]
    entries += [StoredFile("_delta_log/_last_checkpoint", cutoff - dt.timedelta(days=9), 1),
                StoredFile(f"_delta_log/{2:020d}.{8:020d}.compacted.json", cutoff - dt.timedelta(days=9), 1)]
    chosen = [e.path.rsplit("/", 1)[-1] for e in upkeep.select_log_entries(entries, floor=floor, cutoff=cutoff)]
    assert f"{floor:020d}.checkpoint.parquet" not in chosen and "_last_checkpoint" not in chosen
    assert chosen[:1] == [f"{0:020d}.json"] and f"{floor - 1:020d}.json" in chosen
    assert not any(name.startswith(f"{floor:020d}") for name in chosen)


def test_state_partitions_are_retired_before_the_days_kept() -> None:
    days = [f"2026-01-{d:02d}" for d in range(1, 11)]
    assert upkeep.partitions_to_retire(days, anchor="2026-01-10", keep_days=3) == days[:7]
    assert upkeep.partitions_to_retire(days, anchor="2026-01-10", keep_days=30) == []
    with pytest.raises(ValueError, match="keep_days must be at least 1"):
        upkeep.partitions_to_retire(days, anchor="2026-01-10", keep_days=0)


def test_state_retention_covers_the_longest_window_and_the_horizon(helpers) -> None:
    from sluice.core.usecase import load_use_case

    settings = load_settings()
    assert stage.state_retention_days(settings, helpers.uc) == 90 + 30 + 30  # churn: windows up to 90, horizon 30
    assert stage.state_retention_days(settings, load_use_case("purchases")) == 365 + 90 + 30
    assert stage.state_retention_days(load_settings(upkeep=Upkeep(state_retention_days=121)), helpers.uc) == 121
    with pytest.raises(stage.UpkeepError, match=r"longest feature window \(90\) \+ the label horizon \(30\)"):
        stage.state_retention_days(load_settings(upkeep=Upkeep(state_retention_days=120)), helpers.uc)


def test_the_vacuum_may_not_outrun_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_UPKEEP_VACUUM_RETENTION_HOURS", "800")
    monkeypatch.setenv("SLUICE_UPKEEP_LOG_RETENTION_DAYS", "30")
    with pytest.raises(ValueError, match="must not exceed log_retention_days"):
        load_settings()
    monkeypatch.setenv("SLUICE_UPKEEP_LOG_RETENTION_DAYS", "40")
    assert load_settings().upkeep.vacuum_retention_hours == 800


def test_the_summary_takes_each_tables_latest_record() -> None:
    t0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    rows = [{"table_name": "a", "recorded_at": t0, "n": 1}, {"table_name": "a", "recorded_at": t0 + dt.timedelta(days=1), "n": 2},
            {"table_name": "b", "recorded_at": t0, "n": 3}]
    assert {k: v["n"] for k, v in stage.latest_upkeep(rows).items()} == {"a": 2, "b": 3}


# -- a rewritten lake -----------------------------------------------------------------------


def data_files(lake: Lake, table) -> set[str]:  # noqa: ANN001
    root = Path(lake.uri(table))
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


def test_maintenance_shrinks_a_rewritten_lake_and_every_pinned_version_reads_as_before(history_copy, helpers) -> None:
    settings = history_copy.settings
    uc, features, state = helpers.uc, helpers.uc.tables.features, helpers.uc.tables.state
    lake = Lake(settings)
    last = history_copy.days[-1]
    # 30 re-runs of the last day, from one of five sources (simulator seeds): the versions differ.
    versions = []
    for i in range(30):
        rerun = settings.model_copy(update={"sim_seed": settings.sim_seed + i % 5})
        helpers.run_day(rerun, last, RunContext("nightly_etl", f"manual__rerun{i}"))
        versions.append(lake.version(features))
    # The record tables grow a small file per append: material for compaction.
    for i in range(6):
        lake.append_rows(ALERTS_SENT, last.isoformat(), [{"reason_key": f"k{i}", "reason": "r", "ds": last.isoformat()}],
                         key=["reason_key"], lineage=RunContext("drift_report", f"r{i}").lineage(last.isoformat(), {}))
    pins = [versions[4], versions[13], versions[22]]  # as champion, previous-champion, challenger would pin them
    unpinned = versions[9]
    window = (history_copy.days[0].isoformat(), last.isoformat())
    before = {v: helpers.frame_of(lake, features, version=v) for v in pins}
    reference = {v: reference_sample(lake, uc, ReferenceSpec("1", v, window), 400, 0) for v in pins}
    latest_before = helpers.frame_of(lake, features)
    alerts_before = lake.read_table(ALERTS_SENT).sort_by("reason_key")
    assert not all(before[v].equals(latest_before) for v in pins), "the re-runs should have changed the features"
    assert not lake.read_partition(features, last.isoformat(), version=unpinned).to_pandas().empty
    files_before = {t.name: data_files(lake, t) for t in (features, state, ALERTS_SENT)}
    # delta-rs's vacuum with keep_versions, asked (dry run) what may go once nothing is recent.
    oracle = set(DeltaTable(lake.uri(features)).vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False,
                                                        keep_versions=sorted(pins)))

    t0 = time.monotonic()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)  # every removal is older than the 7 days kept
    ctx = RunContext("churn__lake_maintenance", "scheduled__maintenance")
    done = stage.maintain_lake(settings, last, ctx, pins={features.name: pins}, now=later)
    elapsed = time.monotonic() - t0
    rows = {r["table"]: r for r in done["tables"]}
    f = rows[features.name]
    print(f"\nmaintenance of the lake in {elapsed:.1f}s: {done['files_before']} -> {done['files_after']} files, "
          f"{done['bytes_before']:,} -> {done['bytes_after']:,} bytes; {features.name}: {f['files_before']} -> "
          f"{f['files_after']} files, {f['bytes_before']:,} -> {f['bytes_after']:,} bytes ({f['live_files']} live, "
          f"{f['vacuumed_files']} vacuumed); {state.name}: {rows[state.name]['files_before']} -> "
          f"{rows[state.name]['files_after']} files")

    # Fewer files on disk; what is left is the latest version and the pins' files.
    assert done["files_after"] < done["files_before"] and done["bytes_after"] < done["bytes_before"]
    assert f["vacuumed_files"] > 0 and f["files_after"] < f["files_before"]
    assert f["pinned_versions"] == pins and f["lost_pins"] == []
    assert rows[state.name]["vacuumed_files"] >= 29  # 30 re-runs of state D: the latest alone stays
    assert files_before[features.name] - data_files(lake, features) == oracle, "delta-rs's vacuum agrees"
    # Every pinned version reads back as before: every partition, and the drift reference from it.
    for v in pins:
        assert helpers.frame_of(lake, features, version=v).equals(before[v]), v
        assert Lake(settings).partition_rows(features, version=v) == {
            ds: n for ds, n in before[v].groupby(PARTITION_COLUMN).size().items()}
        assert reference_sample(Lake(settings), uc, ReferenceSpec("1", v, window), 400, 0).equals(reference[v])
    assert helpers.frame_of(Lake(settings), features).equals(latest_before)
    with pytest.raises(OSError):  # an unpinned old version's files are gone
        Lake(settings).read_partition(features, last.isoformat(), version=unpinned)
    # Compaction: the record table's six appends are one file now, with the same rows.
    a = rows[ALERTS_SENT.name]
    assert a["compacted_files"] == 6 and a["live_files"] == 1 and a["vacuumed_files"] == 6
    assert Lake(settings).read_table(ALERTS_SENT).sort_by("reason_key").equals(alerts_before)
    # Recorded, and summarised for status and the view.
    summary = {s["table"]: s for s in stage.upkeep_summary(settings)}
    assert summary[features.name]["files"] == f["files_after"] and summary[features.name]["bytes"] == f["bytes_after"]
    assert summary[features.name]["pinned_versions"] == pins and summary[features.name]["last_upkeep"]
    assert summary[uc.tables.predictions.name]["last_upkeep"] is None  # never written, never maintained
    assert summary[LAKE_UPKEEP.name]["last_upkeep_ds"] is None  # created by this run's record

    # A second run changes nothing but the record.
    again = stage.maintain_lake(settings, last, RunContext("churn__lake_maintenance", "manual__again"),
                                pins={features.name: pins}, now=later)
    for r in again["tables"]:
        if r["table"] == LAKE_UPKEEP.name:
            continue
        assert (r["compacted_files"], r["vacuumed_files"], r["log_files_deleted"], r["orphans_collected"]) == (0, 0, 0, 0), r
        assert r["version_before"] == r["version_after"] == rows[r["table"]]["version_after"], r
        assert (r["files_before"], r["bytes_before"]) == (r["files_after"], r["bytes_after"]) == (
            rows[r["table"]]["files_after"], rows[r["table"]]["bytes_after"]), r
    recorded = Lake(settings).read_table(LAKE_UPKEEP).to_pylist()
    assert len(recorded) == len(done["tables"]) + len(again["tables"])  # lake/upkeep itself: from the 2nd run on
    assert len(again["tables"]) == len(done["tables"]) + 1

    # Forty days later the log goes too, but never below what the oldest pin is loaded from.
    much_later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
    log_dir = Path(lake.uri(features)) / "_delta_log"
    commits_before = sorted(log_dir.glob("*.json"))
    third = stage.maintain_lake(settings, last, RunContext("churn__lake_maintenance", "manual__third"),
                                pins={features.name: pins}, now=much_later)
    cleaned = {r["table"]: r["log_files_deleted"] for r in third["tables"]}
    print(f"40 days later: {third['files_before']} -> {third['files_after']} files, {third['bytes_before']:,} -> "
          f"{third['bytes_after']:,} bytes; {features.name}: {cleaned[features.name]} log entries deleted; "
          f"data files of {features.name}: {len(files_before[features.name])} before, "
          f"{len(data_files(lake, features))} now")
    assert cleaned[features.name] > 0
    assert len(sorted(log_dir.glob("*.json"))) < len(commits_before)
    for v in pins:
        assert helpers.frame_of(Lake(settings), features, version=v).equals(before[v]), v
    with pytest.raises(Exception, match="(?i)log|version|not found|file"):
        DeltaTable(lake.uri(features), version=5)  # long gone, unpinned
    assert helpers.frame_of(Lake(settings), features).equals(latest_before)


def _write_alerts(lake: Lake, n: int, start: int = 0) -> list[int]:
    ctx = RunContext("test", "t")
    return [
        lake.write_partition(ALERTS_SENT, "2026-03-01", pa.Table.from_pylist(
            [{"reason_key": f"k{i}", "ds": "2026-03-01"}], schema=ALERTS_SENT.schema), ctx.lineage("2026-03-01", {}))
        for i in range(start, start + n)
    ]


def _age_the_log(lake: Lake, days: int) -> None:
    old = time.time() - days * 86400
    for entry in (Path(lake.uri(ALERTS_SENT)) / "_delta_log").iterdir():
        os.utime(entry, (old, old))


@pytest.mark.parametrize("keep_log", [True, False], ids=["after keep_log", "delta-rs alone"])
def test_delta_rs_deletes_a_pinned_versions_log_unless_keep_log_stops_it(tmp_path: Path, keep_log: bool) -> None:
    """Every checkpoint a write makes deletes the log entries older than 30 days (delta-rs's
    default), whatever a model pins. After ``keep_log`` the pinned version still opens."""
    lake = Lake(load_settings(lake_uri=str(tmp_path / "lake")))
    pinned = _write_alerts(lake, 12)[2]  # delta-rs checkpoints version 9: it deletes only below a checkpoint
    if keep_log:
        lineage = RunContext("test", "t").lineage("2026-03-01", {})
        assert upkeep.keep_log(lake, ALERTS_SENT, lineage) is True
        assert upkeep.keep_log(lake, ALERTS_SENT, lineage) is False  # once
    _age_the_log(lake, 60)
    _write_alerts(lake, 10, start=12)  # crosses the next checkpoint
    if keep_log:
        assert DeltaTable(lake.uri(ALERTS_SENT), version=pinned).version() == pinned
    else:
        with pytest.raises(Exception, match="(?i)log"):
            DeltaTable(lake.uri(ALERTS_SENT), version=pinned)


def test_old_state_is_retired_and_a_pinned_earlier_version_still_reads_it(settings, ctx, helpers) -> None:
    state = helpers.uc.tables.state
    lake = Lake(settings)
    days = [(dt.date(2026, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(130)]
    rows = pa.Table.from_pylist([{"customer_id": 1, "cum_active_days": i, PARTITION_COLUMN: d} for i, d in enumerate(days)],
                                schema=state.schema)
    pinned = lake.write_partitions(state, days, rows, ctx.lineage(days[-1], {}))
    kept = settings.model_copy(update={"upkeep": Upkeep(state_retention_days=125)})
    last = dt.date.fromisoformat(days[-1])

    retired = stage.retire_old_state(kept, last + dt.timedelta(days=3), ctx)  # the ETL is behind: counts from its last day
    assert retired["partitions"] == days[:5] and retired["first_kept"] == days[5] and retired["keep_days"] == 125
    assert Lake(kept).partitions(state) == days[5:]
    again = stage.retire_old_state(kept, last, ctx)
    assert again["partitions"] == [] and again["version"] is None and Lake(kept).version(state) == retired["version"]
    lineage = Lake(kept).lineage(state)
    assert lineage is not None and lineage.extra["retired_before"] == days[5]
    with pytest.raises(stage.UpkeepError, match="would retire state that re-runs read"):
        stage.retire_old_state(settings.model_copy(update={"upkeep": Upkeep(state_retention_days=60)}), last, ctx)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    done = stage.maintain_lake(kept, last, ctx, pins={state.name: [pinned]}, retired={state.name: retired["partitions"]},
                               now=later)
    row = next(r for r in done["tables"] if r["table"] == state.name)
    assert row["retired_partitions"] == days[:5] and row["vacuumed_files"] == 0  # the pinned version reads them all
    assert Lake(kept).read_partitions(state, days[:5], version=pinned).num_rows == 5
    unpinned = stage.maintain_lake(kept, last, RunContext("t", "unpinned"), pins={}, now=later)
    row = next(r for r in unpinned["tables"] if r["table"] == state.name)
    assert row["vacuumed_files"] == 5  # the retired days' files: no version to keep reads them any more
    assert Lake(kept).read_partitions(state, days[5:]).num_rows == 125


def test_a_day_that_needs_retired_state_is_refused_not_rebuilt_from_zeros(history_copy, ctx) -> None:
    """A re-run of an old day whose window reaches a retired state partition would otherwise take
    "no partition" for "before the lake began" and build every window from zero totals."""
    from sluice.edges.lake import LakeError
    from sluice.stages.etl import build_features_day

    settings = history_copy.settings
    uc = usecase.of(settings)
    lake = Lake(settings)
    days = history_copy.days
    retired = [d.isoformat() for d in days[:3]]
    upkeep.delete_partitions(lake, uc.tables.state, retired, ctx.lineage(retired[-1], {}, upkeep="retire"))
    # Day 10 reads the state of day 3 (its 7-day window): retired.
    with pytest.raises(LakeError, match=rf"{uc.tables.state.name} {retired[2]} was retired by lake_maintenance"):
        build_features_day(settings, days[9], ctx)
    # A day whose windows reach only kept state (or before the lake began) still builds.
    assert build_features_day(settings, days[-1], ctx)["entities"] > 0


def test_status_and_the_view_show_files_and_bytes_after_the_last_upkeep(history_copy, ctx, capsys) -> None:
    import argparse

    from sluice.ops.cli import _status
    from sluice.ui import view

    settings = history_copy.settings
    features = usecase.of(settings).tables.features.name
    before = {t["table"]: t for t in view.freshness(settings)}
    assert before[features]["upkeep"] is None
    stage.maintain_lake(settings, history_copy.days[-1], ctx, pins={})
    after = {t["table"]: t for t in view.freshness(settings)}
    upkept = after[features]["upkeep"]
    assert upkept is not None and upkept["files"] > 0 and upkept["bytes"] > 0 and upkept["last_upkeep"]
    assert upkept["live_files"] <= upkept["files"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLUICE_LAKE_URI", settings.lake_uri)
        _status(argparse.Namespace(json=False, use_case="churn"))
    out = capsys.readouterr().out
    assert "lake upkeep (after the last churn__lake_maintenance run)" in out
    assert any(line.startswith(features) and f"{upkept['files']:,}" in line for line in out.splitlines()[-40:])
