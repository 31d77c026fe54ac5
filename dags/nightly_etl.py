"""
# nightly_etl

For one **partition day D** of one use case:

1. `wait_for_raw` waits until `raw/events` has partition D (written by `ingest_raw`).
2. `curate_events` validates raw D against the use case's contract (types, ranges,
   allowed values, patterns, unique event id, non-null keys). Exact copies of a row
   (a redelivery) are removed and counted. Invalid rows go to `quarantine/events` D
   with the columns and checks they failed. If the invalid share is above the use
   case's `contract.max_invalid_share` (default 5%) the task fails without retrying,
   naming the columns and checks, and no downstream table moves. Otherwise the valid
   rows go to `curated/events` D.
3. `build_features` advances the per-entity running totals (`state/<entity>_cumulative`
   D) and writes point-in-time features of every entity in the population of D to
   `features/<entity>_daily` D, from data up to D only. The snapshot of D minus the
   label horizon gets its label in the same commit. It runs in day order
   (`depends_on_past`), since D needs the totals of D-1.

* **Schedule:** daily at 00:00 UTC for the day that just ended.
* **Manual run:** set `partition_day` (YYYY-MM-DD) in the trigger form.
* **Backfill** (after ingest_raw for the same days):
  `airflow backfill create --dag-id <use case>__nightly_etl --from-date 2026-01-01 --to-date 2026-01-31`

Every write replaces partition D in one atomic commit with lineage (dag, run, day,
code version, input table versions): re-running a day changes nothing else.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, get_current_context, task

from sluice.orchestration.context import (
    START_DATE,
    asset_name,
    bad_input_fails_fast,
    dag_id,
    daily,
    deadline,
    default_args,
    deployed_use_cases,
    partition_day_param,
    tags,
)


def nightly_etl(ref: str, name: str) -> None:
    @dag(
        dag_id=dag_id(name, "nightly_etl"),
        schedule=daily(),
        start_date=START_DATE,
        catchup=False,  # history is loaded on purpose (sluice load-history, backfills)
        max_active_runs=8,  # contract checks run in parallel; features run in day order
        default_args=default_args(),
        deadline=deadline("nightly_etl", name),  # Airflow's Deadline Alert: notified when late
        tags=tags(name, "etl", "features"),
        params={"partition_day": partition_day_param()},
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task.sensor(poke_interval=30, timeout=dt.timedelta(hours=12), mode="reschedule")
        @bad_input_fails_fast
        def wait_for_raw() -> bool:
            from sluice.orchestration.context import partition_day, partition_ready

            return partition_ready(ref, "raw", partition_day(get_current_context()))

        @task(inlets=[Asset(asset_name(name, "raw"))],
              outlets=[Asset(asset_name(name, "curated")), Asset(asset_name(name, "quarantine"))])
        @bad_input_fails_fast
        def curate_events() -> dict:
            from sluice.orchestration.context import emit_assets, partition_day, run_context, runtime_settings
            from sluice.stages.etl import curate_day

            context = get_current_context()
            summary = curate_day(runtime_settings(ref), partition_day(context), run_context(context))
            emit_assets(context, name, summary, "curated", "quarantine")
            return summary

        @task(depends_on_past=True, inlets=[Asset(asset_name(name, "curated"))],
              outlets=[Asset(asset_name(name, "features"))])
        @bad_input_fails_fast
        def build_features() -> dict:
            from sluice.orchestration.context import emit_assets, partition_day, run_context, runtime_settings
            from sluice.stages.etl import build_features_day

            context = get_current_context()
            summary = build_features_day(runtime_settings(ref), partition_day(context), run_context(context))
            emit_assets(context, name, summary, "features")
            return summary

        wait_for_raw() >> curate_events() >> build_features()

    pipeline()


for _ref, _name in deployed_use_cases():
    nightly_etl(_ref, _name)
