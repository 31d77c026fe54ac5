"""
# ingest_raw

Extracts the events of one **partition day D** from the configured source
(`SLUICE_SOURCE`: the simulator, a PostgreSQL table read by event time over the
data interval, or files dropped under the landing prefix) into the Delta table
`raw/events`, partition `ds=D`, replacing that partition atomically. Every field is
kept as the source sent it; `nightly_etl` judges it against the contract.

* **Schedule:** daily at 00:00 UTC; run D covers the data interval [D, D+1).
* **Reads:** the source. **Writes:** `raw/events` ds=D; marks the asset `sluice.raw.events`.
* **Manual run:** set `partition_day` (YYYY-MM-DD) in the trigger form.
* **Backfill:**
  `airflow backfill create --dag-id ingest_raw --from-date 2026-01-01 --to-date 2026-01-31 --max-active-runs 8`

Re-running a day replaces its partition: nothing is duplicated.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, get_current_context, task

from sluice.orchestration.context import DEFAULT_ARGS, START_DATE, daily, partition_day_param
from sluice.tables import RAW_EVENTS


@dag(
    schedule=daily(),
    start_date=START_DATE,
    catchup=False,  # history is loaded on purpose, with `airflow backfill create`
    max_active_runs=8,  # days are independent
    default_args=DEFAULT_ARGS,
    tags=["sluice", "ingestion"],
    params={"partition_day": partition_day_param()},
    doc_md=__doc__,
)
def ingest_raw():
    @task(outlets=[Asset(RAW_EVENTS.asset_name)])
    def extract_events() -> dict:
        from sluice.orchestration.context import partition_day, run_context, runtime_settings
        from sluice.stages.etl import ingest_day

        context = get_current_context()
        return ingest_day(runtime_settings(), partition_day(context), run_context(context))

    extract_events()


ingest_raw()
