"""The steps of ingest_raw and nightly_etl on a file:// lake: contract gate, re-runs, lineage."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from sluice.core import features as F
from sluice.core.contracts import ContractViolation
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.lake import Lake, LakeError
from sluice.edges.sources import SourceError, conform, raw_schema
from sluice.stages import etl as pipeline
from usecases.churn.simulator import SimulatorSource

UC = load_use_case("churn")
RAW_SCHEMA = raw_schema(UC)
RAW_EVENTS, QUARANTINE_EVENTS, CURATED_EVENTS = UC.tables.raw, UC.tables.quarantine, UC.tables.curated
CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY = UC.tables.state, UC.tables.features
LABEL = UC.label

DAY = dt.date(2026, 3, 1)
DS = DAY.isoformat()
PLAN_CHECK = "plan: isin(('basic', 'standard', 'premium'))"
# The tables the ingest and ETL steps write.
PIPELINE_TABLES = (RAW_EVENTS, QUARANTINE_EVENTS, CURATED_EVENTS, CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY)


@dataclass(frozen=True)
class StaticSource:
    """A source that delivers a fixed table whatever the interval."""

    table: pa.Table
    name: str = "static"

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        return self.table


def simulated_raw(day: dt.date = DAY) -> pd.DataFrame:
    return SimulatorSource(n_customers=300, seed=7).raw_day(day).to_pandas()


def spoiled(raw: pd.DataFrame, n_amount: int, n_plan: int) -> StaticSource:
    bad = raw.copy()
    bad.loc[bad.index[:n_amount], "amount"] = "12,50 EUR"
    bad.loc[bad.index[n_amount : n_amount + n_plan], "plan"] = "gold"
    return StaticSource(pa.Table.from_pandas(bad, schema=RAW_SCHEMA, preserve_index=False))


def files_by_partition(lake: Lake, table) -> dict[str, set[str]]:
    """The data files of each partition (a rewritten partition gets new files)."""
    actions = pa.table(DeltaTable(lake.uri(table)).get_add_actions(flatten=True)).to_pydict()
    part = next(k for k in actions if k.startswith("partition") and k.endswith("ds"))
    out: dict[str, set[str]] = {}
    for ds, path in zip(actions[part], actions["path"]):
        out.setdefault(ds, set()).add(path)
    return out


# -- the contract gate -----------------------------------------------------------------------------


def test_curate_above_the_limit_raises_quarantines_and_leaves_curated_unchanged(settings, ctx, helpers):
    lake = Lake(settings)
    raw = simulated_raw()
    # A clean earlier run of D and of the day before: curated has both.
    pipeline.ingest_day(settings, DAY - dt.timedelta(days=1), ctx)
    pipeline.curate_day(settings, DAY - dt.timedelta(days=1), ctx)
    pipeline.ingest_day(settings, DAY, ctx, source=StaticSource(pa.Table.from_pandas(raw, schema=RAW_SCHEMA)))
    pipeline.curate_day(settings, DAY, ctx)
    curated_version = lake.version(CURATED_EVENTS)
    curated_partitions = lake.partition_rows(CURATED_EVENTS)
    curated_before = helpers.frame_of(lake, CURATED_EVENTS)

    # Re-delivered with 10 malformed amounts and 5 unknown plans.
    n = len(raw)
    pipeline.ingest_day(settings, DAY, ctx, source=spoiled(raw, 10, 5))
    share = f"{15 / n:.1%}"
    expected = (
        rf"raw/events {DS}: 15 of {n} rows \({re.escape(share)}\) break the contract, above the limit of 5\.0%\. "
        rf"Failed column: check \(rows\): amount: parse_number \(10 rows\); {re.escape(PLAN_CHECK)} \(5 rows\)\. "
        rf"The rows are kept in quarantine/events ds={DS}; curated/events and features were not changed\."
    )
    with pytest.raises(ContractViolation, match=expected):
        pipeline.curate_day(settings, DAY, ctx)

    quarantine = lake.read_partition(QUARANTINE_EVENTS, DS).to_pandas()
    assert len(quarantine) == 15
    assert quarantine["failed_checks"].value_counts().to_dict() == {"amount: parse_number": 10, PLAN_CHECK: 5}
    assert set(quarantine["ds"]) == {DS}
    assert (quarantine.loc[quarantine["failed_columns"] == "amount", "amount"] == "12,50 EUR").all()
    # curated/events: same version, same partitions, same rows.
    assert lake.version(CURATED_EVENTS) == curated_version
    assert lake.partition_rows(CURATED_EVENTS) == curated_partitions
    pd.testing.assert_frame_equal(helpers.frame_of(lake, CURATED_EVENTS), curated_before)
    # The quarantine commit records what it read and what failed.
    lineage = lake.lineage(QUARANTINE_EVENTS)
    assert lineage.inputs == {"raw/events": lake.version(RAW_EVENTS)}
    assert lineage.extra == {"rows": 15, "failures": {"amount: parse_number": 10, PLAN_CHECK: 5},
                             "duplicates_removed": 0}


def test_curate_at_the_limit_is_still_accepted(tmp_path, ctx, helpers):
    from sluice.settings import load_settings

    raw = simulated_raw()
    n_bad = 3
    settings = load_settings(lake_uri=str(tmp_path / "lake"), contract_max_invalid_share=n_bad / len(raw))
    pipeline.ingest_day(settings, DAY, ctx, source=spoiled(raw, n_bad, 0))
    summary = pipeline.curate_day(settings, DAY, ctx)
    assert summary["quarantined"] == n_bad
    settings_strict = load_settings(lake_uri=str(tmp_path / "lake"), contract_max_invalid_share=(n_bad - 1) / len(raw))
    with pytest.raises(ContractViolation, match="above the limit"):
        pipeline.curate_day(settings_strict, DAY, ctx)


def test_curate_below_the_limit_writes_valid_rows_and_quarantines_the_rest(settings, ctx, helpers):
    lake = Lake(settings)
    raw = simulated_raw()
    n = len(raw)
    pipeline.ingest_day(settings, DAY, ctx, source=spoiled(raw, 2, 1))

    summary = pipeline.curate_day(settings, DAY, ctx)

    assert summary["rows_in"] == n
    assert (summary["valid"], summary["quarantined"], summary["duplicates_removed"]) == (n - 3, 3, 0)
    assert summary["invalid_share"] == round(3 / n, 6)
    assert summary["failures"] == {"amount: parse_number": 2, PLAN_CHECK: 1}
    assert lake.partition_rows(CURATED_EVENTS) == {DS: n - 3}
    assert lake.partition_rows(QUARANTINE_EVENTS) == {DS: 3}
    assert summary["curated_version"] == lake.version(CURATED_EVENTS) == 0
    curated = lake.read_partition(CURATED_EVENTS, DS)
    assert curated.schema == CURATED_EVENTS.schema
    # every raw row is in exactly one of the two
    out_ids = curated.column("event_id").to_pylist() + lake.read_partition(QUARANTINE_EVENTS, DS).column(
        "event_id").to_pylist()
    assert sorted(out_ids) == sorted(raw["event_id"])
    assert lake.lineage(CURATED_EVENTS).inputs == {"raw/events": 0}


def test_curate_removes_and_counts_a_redelivery_and_quarantines_a_clashing_id(settings, ctx):
    """Exact copies of events are a redelivery: removed, counted, not quarantined. An event id
    delivered again with other content is a defect: quarantined as not unique."""
    lake = Lake(settings)
    raw = simulated_raw()
    n = len(raw)
    copies = raw.iloc[[0, 1, 1, 5]]
    clash = raw.iloc[[7]].assign(plan="premium" if raw.iloc[7]["plan"] != "premium" else "basic")
    delivered = pd.concat([raw, copies, clash], ignore_index=True)
    pipeline.ingest_day(settings, DAY, ctx, source=StaticSource(pa.Table.from_pandas(delivered, schema=RAW_SCHEMA)))

    summary = pipeline.curate_day(settings, DAY, ctx)

    assert summary["rows_in"] == len(delivered) == n + 5
    assert (summary["valid"], summary["quarantined"], summary["duplicates_removed"]) == (n, 1, 4)
    assert summary["valid"] + summary["quarantined"] + summary["duplicates_removed"] == summary["rows_in"]
    assert summary["failures"] == {"event_id: field_uniqueness": 1}
    assert summary["invalid_share"] == round(1 / len(delivered), 6)
    curated = lake.read_partition(CURATED_EVENTS, DS).to_pandas()
    assert curated["event_id"].is_unique and sorted(curated["event_id"]) == sorted(raw["event_id"])
    quarantine = lake.read_partition(QUARANTINE_EVENTS, DS).to_pandas()
    assert quarantine["event_id"].tolist() == [raw.iloc[7]["event_id"]]
    assert quarantine["failed_checks"].tolist() == ["event_id: field_uniqueness"]
    # Both commits record how many copies were removed.
    assert lake.lineage(CURATED_EVENTS).extra == {"rows": n, "duplicates_removed": 4}
    assert lake.lineage(QUARANTINE_EVENTS).extra["duplicates_removed"] == 4


def test_a_clean_rerun_clears_the_quarantine_of_the_day(settings, ctx):
    lake = Lake(settings)
    raw = simulated_raw()
    pipeline.ingest_day(settings, DAY, ctx, source=spoiled(raw, 2, 0))
    pipeline.curate_day(settings, DAY, ctx)
    assert lake.partition_rows(QUARANTINE_EVENTS) == {DS: 2}
    pipeline.ingest_day(settings, DAY, ctx, source=StaticSource(pa.Table.from_pandas(raw, schema=RAW_SCHEMA)))
    summary = pipeline.curate_day(settings, DAY, ctx)
    assert summary["quarantined"] == 0
    assert lake.partition_rows(QUARANTINE_EVENTS) == {}
    assert lake.partition_rows(CURATED_EVENTS) == {DS: len(raw)}


def test_defects_from_the_settings_are_caught_on_their_day_only(tmp_path, ctx):
    from sluice.settings import load_settings

    settings = load_settings(lake_uri=str(tmp_path / "lake"), sim_customers=300, sim_defect_rate=0.2,
                             sim_defect_days=DS)
    pipeline.ingest_day(settings, DAY - dt.timedelta(days=1), ctx)
    assert pipeline.curate_day(settings, DAY - dt.timedelta(days=1), ctx)["quarantined"] == 0
    pipeline.ingest_day(settings, DAY, ctx)
    with pytest.raises(ContractViolation, match=rf"raw/events {DS}: \d+ of \d+ rows \(1\d\.\d%\)"):
        pipeline.curate_day(settings, DAY, ctx)
    assert Lake(settings).partitions(CURATED_EVENTS) == [F.day_str(DAY - dt.timedelta(days=1))]


def test_curate_refuses_a_day_that_was_not_ingested(settings, ctx):
    with pytest.raises(LakeError, match=rf"raw/events has no partition {DS}: run ingest_raw for {DS} first"):
        pipeline.curate_day(settings, DAY, ctx)


# -- ingest ----------------------------------------------------------------------------------------


def test_ingest_writes_the_sources_rows_with_lineage(settings, ctx):
    lake = Lake(settings)
    summary = pipeline.ingest_day(settings, DAY, ctx)
    expected = SimulatorSource.from_settings(settings).raw_day(DAY)
    assert summary == {"table": "raw/events", "ds": DS, "rows": expected.num_rows, "version": 0,
                       "source": "simulator", "extra_fields": []}
    stored = lake.read_partition(RAW_EVENTS, DS).drop_columns(["ds"])
    assert stored.sort_by("event_id").equals(expected.sort_by("event_id"))
    lineage = lake.lineage(RAW_EVENTS, 0)
    assert (lineage.dag_id, lineage.run_id, lineage.ds, lineage.code_version) == (
        "unit_test", "manual__unit", DS, "unit-test")
    assert lineage.extra == {"source": "simulator", "rows": expected.num_rows, "extra_fields": []}


def test_ingest_keeps_undeclared_fields_and_reports_them(settings, ctx):
    raw = simulated_raw().drop(columns=EXTRA_COLUMN)
    delivered = raw.assign(coupon=["SPRING"] + [None] * (len(raw) - 1), utm_source="newsletter")
    table = conform(pa.Table.from_pandas(delivered, preserve_index=False), "static", UC)

    summary = pipeline.ingest_day(settings, DAY, ctx, source=StaticSource(table))

    assert summary["extra_fields"] == ["coupon", "utm_source"]
    lake = Lake(settings)
    assert lake.lineage(RAW_EVENTS).extra["extra_fields"] == ["coupon", "utm_source"]
    stored = lake.read_partition(RAW_EVENTS, DS).to_pandas().set_index("event_id")
    first = raw.iloc[0]["event_id"]
    assert stored.loc[first, EXTRA_COLUMN] == '{"coupon": "SPRING", "utm_source": "newsletter"}'
    # Kept in raw, not used: the day curates as without them.
    curated = pipeline.curate_day(settings, DAY, ctx)
    assert (curated["valid"], curated["quarantined"]) == (len(raw), 0)
    assert EXTRA_COLUMN not in lake.read_partition(CURATED_EVENTS, DS).column_names


# -- re-runs ---------------------------------------------------------------------------------------


def snapshot(lake: Lake, helpers) -> dict:
    return {
        table.name: {
            "version": lake.version(table),
            "rows": lake.partition_rows(table),
            "files": files_by_partition(lake, table) if lake.exists(table) else {},
            "data": helpers.frame_of(lake, table) if lake.exists(table) else None,
        }
        for table in PIPELINE_TABLES
    }


def test_rerunning_the_last_day_changes_nothing_but_versions(history_copy, ctx, helpers):
    lake = Lake(history_copy.settings)
    day = history_copy.days[-1]
    ds = F.day_str(day)
    labelled = F.day_str(day - dt.timedelta(days=UC.horizon))
    before = snapshot(lake, helpers)

    helpers.run_day(history_copy.settings, day, ctx)

    after = snapshot(lake, helpers)
    for name, old in before.items():
        new = after[name]
        assert new["rows"] == old["rows"], name
        if old["data"] is not None:
            pd.testing.assert_frame_equal(new["data"], old["data"], obj=name)
        rewritten = {ds, labelled} if name == FEATURES_CUSTOMER_DAILY.name else {ds}
        for part, files in old["files"].items():
            if part not in rewritten:
                assert new["files"][part] == files, (name, part)
    # Every table got exactly one new commit (quarantine too, empty as it is).
    assert {n: after[n]["version"] - before[n]["version"] for n in before} == {t.name: 1 for t in PIPELINE_TABLES}
    # The rewritten partitions are new files with the same content.
    assert after[RAW_EVENTS.name]["files"][ds] != before[RAW_EVENTS.name]["files"][ds]


def test_rerunning_a_middle_day_twice_is_idempotent(history_copy, ctx, helpers):
    """ingest + curate of an unlabelled middle day, twice: same rows and content as the first run."""
    lake = Lake(history_copy.settings)
    ds = F.day_str(history_copy.days[20])
    tables = (RAW_EVENTS, CURATED_EVENTS, QUARANTINE_EVENTS)
    before = {t.name: lake.partition_rows(t) for t in tables}
    data_before = {t.name: helpers.frame_of(lake, t, ds) for t in (RAW_EVENTS, CURATED_EVENTS)}
    for _ in range(2):
        pipeline.ingest_day(history_copy.settings, history_copy.days[20], ctx)
        pipeline.curate_day(history_copy.settings, history_copy.days[20], ctx)
    assert {t.name: lake.partition_rows(t) for t in tables} == before
    for name, data in data_before.items():
        pd.testing.assert_frame_equal(helpers.frame_of(lake, pipeline_table(name), ds), data)


def pipeline_table(name: str):
    return {t.name: t for t in PIPELINE_TABLES}[name]


def test_rerunning_a_labelled_day_keeps_its_label(history_copy, ctx, helpers):
    lake = Lake(history_copy.settings)
    day = history_copy.days[3]
    ds = F.day_str(day)
    before = helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, ds)
    assert before[LABEL].notna().all()

    helpers.run_day(history_copy.settings, day, ctx)

    after = helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, ds)
    assert after[LABEL].notna().all()
    pd.testing.assert_frame_equal(after, before)


# -- a day without events --------------------------------------------------------------------------


def test_a_day_without_events_fails_loudly_and_writes_nothing(settings, ctx, helpers):
    """An empty extract means an upstream outage: the ingest fails, naming the day, and writes nothing."""
    days = helpers.day_range(dt.date(2026, 1, 1), 2)
    helpers.run_day(settings, days[0], ctx)
    lake = Lake(settings)
    version = lake.version(RAW_EVENTS)
    with pytest.raises(SourceError, match=f"no events for {days[1].isoformat()}"):
        pipeline.ingest_day(settings, days[1], ctx, source=StaticSource(RAW_SCHEMA.empty_table()))
    assert lake.version(RAW_EVENTS) == version
    assert lake.partitions(RAW_EVENTS) == [days[0].isoformat()]


# -- lineage through the steps ---------------------------------------------------------------------


def test_every_step_records_its_inputs(history_lake):
    lake = history_lake.lake
    last = history_lake.results[-1]
    ds = F.day_str(history_lake.days[-1])
    raw_v = last["ingest"]["version"]
    curated_v = last["curate"]["curated_version"]
    state_v = last["build"]["state_version"]
    features_v = last["build"]["features_version"]

    assert lake.lineage(CURATED_EVENTS, curated_v).inputs == {"raw/events": raw_v}
    state_lineage = lake.lineage(CUSTOMER_STATE, state_v)
    assert state_lineage.inputs == {"curated/events": curated_v, "state/customer_cumulative": state_v - 1}
    features_lineage = lake.lineage(FEATURES_CUSTOMER_DAILY, features_v)
    assert features_lineage.inputs == {"curated/events": curated_v, "state/customer_cumulative": state_v}
    assert features_lineage.extra["labelled_snapshot"] == F.day_str(history_lake.days[-1 - UC.horizon])
    assert {lin.ds for lin in (state_lineage, features_lineage)} == {ds}
    assert (features_lineage.dag_id, features_lineage.run_id) == ("history", "backfill")
