"""
# ingest_raw

Extracts the events of one **partition day D** from the use case's source
(`SLUICE_SOURCE`: its simulator, a PostgreSQL table read by event time over the
data interval, or files dropped under the landing prefix) into the Delta table
`raw/events` of the use case, partition `ds=D`, replacing that partition atomically.
Every declared field is kept as the source sent it (undeclared ones as JSON in
`extra_fields`); `nightly_etl` judges them against the use case's contract.

* **Schedule:** daily at 00:00 UTC; run D covers the data interval [D, D+1).
* **Reads:** the source. **Writes:** `raw/events` ds=D; marks the asset `sluice.<use case>.raw`.
* **Volume:** `check_volume` compares the raw rows of D with the median of the 28 days
  before it (the use case's `contract.volume`): below half or above double the median, it
  alerts through the webhook connection `sluice_alert_webhook` with the numbers (once per
  day) and records the verdict in `monitoring/volume_history` D. It fails the run only when
  `contract.volume.fail` is true; otherwise the day goes on to `nightly_etl`.
* **Manual run:** set `partition_day` (YYYY-MM-DD) in the trigger form.
* **Backfill:** `airflow backfill create --dag-id <use case>__ingest_raw --from-date 2026-01-01 --to-date 2026-01-31`

One DAG per use case of `SLUICE_USE_CASES` (`<use case>__ingest_raw`).
Re-running a day replaces its partition: nothing is duplicated. A source that cannot
deliver the day (an unreadable or malformed landing file, missing columns, no events)
fails the task at once, naming the file, without retrying: the same input would fail
again. An outage of the source is retried (twice, after one and two minutes or more).
"""

from __future__ import annotations

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


def ingest_raw(ref: str, name: str) -> None:
    @dag(
        dag_id=dag_id(name, "ingest_raw"),
        schedule=daily(),
        start_date=START_DATE,
        catchup=False,  # history is loaded on purpose (sluice load-history, backfills)
        max_active_runs=8,  # days are independent
        default_args=default_args(),
        deadline=deadline("ingest_raw", name),  # Airflow's Deadline Alert: notified when late
        tags=tags(name, "ingestion"),
        params={"partition_day": partition_day_param()},
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task(outlets=[Asset(asset_name(name, "raw"))])
        @bad_input_fails_fast
        def extract_events() -> dict:
            from sluice.orchestration.context import emit_assets, partition_day, run_context, runtime_settings
            from sluice.stages.etl import ingest_day

            context = get_current_context()
            summary = ingest_day(runtime_settings(ref), partition_day(context), run_context(context))
            emit_assets(context, name, summary, "raw")
            return summary

        @task
        @bad_input_fails_fast
        def check_volume() -> dict:
            from sluice.orchestration.context import check_volume, partition_day, run_context

            context = get_current_context()
            return check_volume(ref, partition_day(context), run_context(context))

        extract_events() >> check_volume()

    pipeline()


for _ref, _name in deployed_use_cases():
    ingest_raw(_ref, _name)
