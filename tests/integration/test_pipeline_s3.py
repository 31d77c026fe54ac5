"""The day pipeline (ingest -> curate -> features) on s3:// gives what it gives on file://."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.stages import etl as pipeline
from sluice.tables import PARTITION_COLUMN
from usecases.churn.simulator import SimulatorSource

pytestmark = pytest.mark.integration

CHURN = load_use_case("churn")
RAW_EVENTS, QUARANTINE_EVENTS, CURATED_EVENTS = CHURN.tables.raw, CHURN.tables.quarantine, CHURN.tables.curated
CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY = CHURN.tables.state, CHURN.tables.features

DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(5)]


def run_days(settings, source: SimulatorSource) -> list[dict]:
    ctx = RunContext(dag_id="integration", run_id="pipeline")
    summaries = []
    for day in DAYS:
        ingest = pipeline.ingest_day(settings, day, ctx, source=source)
        curate = pipeline.curate_day(settings, day, ctx)
        features = pipeline.build_features_day(settings, day, ctx)
        summaries.append({"ingest": ingest, "curate": curate, "features": features})
    return summaries


def frame(lake: Lake, table, keys: list[str]) -> pd.DataFrame:
    return (
        lake.read_table(table)
        .to_pandas()
        .sort_values(keys, kind="stable", na_position="last")
        .reset_index(drop=True)
    )


def test_day_pipeline_on_s3_equals_the_same_on_file(s3_settings, tmp_path) -> None:
    # A few defects, so that quarantine/events has rows to compare as well.
    source = SimulatorSource(n_customers=500, seed=11, defect_rate=0.02)
    local_settings = load_settings(lake_uri=(tmp_path / "lake").as_uri(), use_case="churn")

    s3_runs = run_days(s3_settings, source)
    local_runs = run_days(local_settings, source)

    s3_lake, local_lake = Lake(s3_settings), Lake(local_settings)
    assert s3_lake.root.startswith("s3://") and local_lake.root.startswith("file://")
    assert s3_lake.root.endswith("/churn") and local_lake.root.endswith("/churn")

    for s3_run, local_run in zip(s3_runs, local_runs):
        assert s3_run["ingest"]["rows"] == local_run["ingest"]["rows"] > 0
        assert s3_run["curate"] == local_run["curate"]
        curate = s3_run["curate"]
        # Every row delivered is valid, quarantined, or an exact copy removed (a redelivery).
        assert curate["rows_in"] == s3_run["ingest"]["rows"]
        assert curate["valid"] + curate["quarantined"] + curate["duplicates_removed"] == curate["rows_in"]
        assert 0 < curate["quarantined"] < curate["valid"]
        assert not any("uniqueness" in failure for failure in curate["failures"])
        assert s3_run["features"]["entities"] == local_run["features"]["entities"] > 0
    # The simulator's defects include exact copies of rows: they were removed, and counted.
    assert sum(run["curate"]["duplicates_removed"] for run in s3_runs) > 0

    days = [d.isoformat() for d in DAYS]
    for table in (RAW_EVENTS, CURATED_EVENTS, CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY, QUARANTINE_EVENTS):
        assert s3_lake.partitions(table) == local_lake.partitions(table) == days, table.name
        assert s3_lake.partition_rows(table) == local_lake.partition_rows(table), table.name
        assert s3_lake.version(table) == local_lake.version(table) == len(DAYS) - 1, table.name

    keys = {
        RAW_EVENTS: [PARTITION_COLUMN, "event_id"],
        CURATED_EVENTS: [PARTITION_COLUMN, "event_id"],
        CUSTOMER_STATE: [PARTITION_COLUMN, "customer_id"],
        FEATURES_CUSTOMER_DAILY: [PARTITION_COLUMN, "customer_id"],
        QUARANTINE_EVENTS: QUARANTINE_EVENTS.columns,
    }
    for table, key in keys.items():
        pd.testing.assert_frame_equal(
            frame(s3_lake, table, key), frame(local_lake, table, key), check_exact=True
        )

    # The raw layer holds exactly what the source delivered.
    for day in DAYS:
        raw = s3_lake.read_partition(RAW_EVENTS, day.isoformat()).to_pandas().drop(columns=[PARTITION_COLUMN])
        expected = source.raw_day(day).to_pandas()
        pd.testing.assert_frame_equal(
            raw.sort_values("event_id").reset_index(drop=True),
            expected.sort_values("event_id").reset_index(drop=True),
        )

    # Lineage on s3: the features commit of the last day names the versions it read.
    last = s3_runs[-1]["features"]
    lineage = s3_lake.lineage(FEATURES_CUSTOMER_DAILY, last["features_version"])
    assert lineage.ds == DAYS[-1].isoformat()
    assert lineage.inputs[CUSTOMER_STATE.name] == last["state_version"]
    assert lineage.inputs[CURATED_EVENTS.name] == s3_lake.version(CURATED_EVENTS)
    assert lineage.extra["rows"] == last["entities"]


def test_rerunning_a_day_on_s3_is_idempotent(s3_settings) -> None:
    source = SimulatorSource(n_customers=200, seed=3)
    ctx = RunContext(dag_id="integration", run_id="rerun")
    day = DAYS[0]
    lake = Lake(s3_settings)

    first = pipeline.ingest_day(s3_settings, day, ctx, source=source)
    pipeline.curate_day(s3_settings, day, ctx)
    before = {t.name: lake.partition_rows(t) for t in (RAW_EVENTS, CURATED_EVENTS)}
    curated = frame(lake, CURATED_EVENTS, ["event_id"])

    second = pipeline.ingest_day(s3_settings, day, ctx, source=source)
    pipeline.curate_day(s3_settings, day, ctx)

    assert second["rows"] == first["rows"]
    assert second["version"] == first["version"] + 1
    assert {t.name: lake.partition_rows(t) for t in (RAW_EVENTS, CURATED_EVENTS)} == before
    pd.testing.assert_frame_equal(frame(lake, CURATED_EVENTS, ["event_id"]), curated)
