"""
# lake_maintenance

Keeps one use case's lake from only growing, every day, without losing a version a registered
model pins.

1. `retire_old_state` deletes the partitions of `state/<entity>_cumulative` older than what
   re-runs and rebuilds read: the last `SLUICE_UPKEEP_STATE_RETENTION_DAYS` days before D
   (default: the longest feature window + the label horizon + 30 days; never fewer than
   window + horizon + 1). A Delta delete: earlier versions still read them until vacuumed.
2. `maintain_tables`, for every table of the use case and the record tables: compacts small
   files, writes a checkpoint, vacuums the data files out of the table for longer than
   `SLUICE_UPKEEP_VACUUM_RETENTION_HOURS` (default 168), deletes log entries older than
   `SLUICE_UPKEEP_LOG_RETENTION_DAYS` (default 30) and the files killed writers left. The
   feature-table versions that the champion, previous-champion and challenger were trained on
   (registry tag `feature_table_version`) keep their files and log entries, however old: read
   from the registry before anything is deleted (an unreachable registry fails the task, it
   never vacuums without its pins). Each table's figures (files and bytes before and after,
   versions) are appended to `lake/upkeep` D; `sluice.stages.upkeep.upkeep_summary` reads them.

* **Schedule:** daily at 00:00 UTC for the day that just ended; one run at a time. The DAG is
  **paused at creation** (whatever `DAGS_ARE_PAUSED_AT_CREATION` says): unpause it once the first
  historical load and its backfills are done (`airflow dags unpause <use case>__lake_maintenance`).
* **Manual run:** set `partition_day` (YYYY-MM-DD) in the trigger form: retention counts back from it.
* **Backfill:** not needed (each run maintains the lake as it is);
  `airflow backfill create --dag-id <use case>__lake_maintenance --from-date 2026-05-01 --to-date 2026-05-01`
  runs it for a past day, which retires no more state than that day's retention.

Re-running a day changes nothing but its record: nothing is left to compact, vacuum or retire.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, get_current_context, task

from sluice.orchestration.context import (
    START_DATE,
    asset_name,
    bad_input_fails_fast,
    dag_id,
    daily,
    default_args,
    deployed_use_cases,
    partition_day_param,
    tags,
)
from sluice.tables import LAKE_UPKEEP


def lake_maintenance(ref: str, name: str) -> None:
    @dag(
        dag_id=dag_id(name, "lake_maintenance"),
        schedule=daily(),
        start_date=START_DATE,
        catchup=False,  # a run maintains the lake as it is now: missed days need no run of their own
        max_active_runs=1,  # two upkeeps of one lake would race to delete the same files
        # Paused until an operator (or `sluice demo` at its end) turns it on: during a first load
        # and its backfills it would only compete with the writers, and retire state they read.
        is_paused_upon_creation=True,
        default_args=default_args(),
        tags=tags(name, "upkeep", "lake"),
        params={"partition_day": partition_day_param()},
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task(outlets=[Asset(asset_name(name, "state"))])
        @bad_input_fails_fast
        def retire_old_state() -> dict:
            from sluice.orchestration.context import partition_day, run_context, runtime_settings
            from sluice.stages.upkeep import retire_old_state as retire

            context = get_current_context()
            return dict(retire(runtime_settings(ref), partition_day(context), run_context(context)))

        @task(outlets=[Asset(asset_name(name, LAKE_UPKEEP.name))])
        @bad_input_fails_fast
        def maintain_tables(retired: dict) -> dict:
            from sluice.orchestration.context import partition_day, run_context, runtime_settings
            from sluice.stages.upkeep import maintain_lake

            context = get_current_context()
            return dict(maintain_lake(runtime_settings(ref), partition_day(context), run_context(context),
                                      retired={retired["table"]: retired["partitions"]}))

        maintain_tables(retire_old_state())

    pipeline()


for _ref, _name in deployed_use_cases():
    lake_maintenance(_ref, _name)
