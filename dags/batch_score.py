"""
# batch_score

Scores every entity in `features/<entity>_daily` of one use case for **partition day D**.

1. `wait_for_features` waits until the features of D exist (written by `nightly_etl`);
   `wait_for_retraining` waits while a `<use case>__weekly_retrain` run decided as of D-1 is queued or
   running (its promotion takes effect on D; on a Monday both are due at the same midnight).
2. `score_entities` resolves the model **once** to a concrete version: the model that
   was champion on D (from `models/promotions`; a gate decision as of day X takes effect
   on X+1), or the current `@champion` when the
   `use_current_champion` param is set. It writes `predictions/scores` D (entity key,
   score, risk band from the use case's bands, model version, feature table version),
   replacing the partition.
3. `publish_postgres` upserts the scores into the use case's `publish.postgres_table` keyed by
   (ds, entity key), if the connection `sluice_scores_postgres` exists;
   `publish_redis` writes them to Redis (`<publish.redis_prefix>:<ds>`, field = entity key), if
   the connection `sluice_scores_redis` exists. Both skip otherwise; re-runs never duplicate.

* **Schedule:** daily at 00:00 UTC for the day that just ended (after nightly_etl).
* **Manual run:** `partition_day`, and `use_current_champion` to re-score a past day
  with today's champion instead of the one of that day.
* **Backfill:** `airflow backfill create --dag-id <use case>__batch_score --from-date 2026-05-25 --to-date 2026-05-31 --max-active-runs 4`
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, get_current_context, task

from sluice.orchestration.context import (
    SCORES_POSTGRES,
    SCORES_REDIS,
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


def batch_score(ref: str, name: str) -> None:
    @dag(
        dag_id=dag_id(name, "batch_score"),
        schedule=daily(),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=4,
        default_args=default_args(),
        deadline=deadline("batch_score", name),  # Airflow's Deadline Alert: notified when late
        tags=tags(name, "scoring"),
        params={
            "partition_day": partition_day_param(),
            "use_current_champion": Param(
                False,
                type="boolean",
                title="Use the current champion",
                description="Score with today's @champion instead of the model that was champion on the day.",
            ),
        },
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task.sensor(poke_interval=30, timeout=dt.timedelta(hours=12), mode="reschedule")
        @bad_input_fails_fast
        def wait_for_features() -> bool:
            from sluice.orchestration.context import partition_day, partition_ready

            return partition_ready(ref, "features", partition_day(get_current_context()))

        @task.sensor(poke_interval=60, timeout=dt.timedelta(hours=12), mode="reschedule")
        @bad_input_fails_fast
        def wait_for_retraining() -> bool:
            from sluice.orchestration.context import partition_day, retraining_settled

            context = get_current_context()
            return retraining_settled(context["ti"], partition_day(context), dag_id(name, "weekly_retrain"))

        @task(inlets=[Asset(asset_name(name, "features"))],
              outlets=[Asset(asset_name(name, "predictions")), Asset(asset_name(name, "shadow"))])
        @bad_input_fails_fast
        def score_entities() -> dict:
            from airflow.sdk.exceptions import AirflowSkipException

            from sluice.orchestration.context import emit_assets, partition_day, run_context, runtime_settings
            from sluice.stages.score import NoChampion, score_day

            context = get_current_context()
            try:
                summary = score_day(
                    runtime_settings(ref),
                    partition_day(context),
                    run_context(context),
                    use_current_champion=bool(context["params"].get("use_current_champion")),
                )
            except NoChampion as exc:
                raise AirflowSkipException(f"nothing to score with: {exc}") from exc
            emit_assets(context, name, summary, "predictions", "shadow")
            return summary

        @task
        @bad_input_fails_fast
        def publish_postgres(scored: dict) -> int:
            from sluice.orchestration.context import publish_scores

            return publish_scores(ref, "postgres", SCORES_POSTGRES, scored["ds"])

        @task
        @bad_input_fails_fast
        def publish_redis(scored: dict) -> int:
            from sluice.orchestration.context import publish_scores

            return publish_scores(ref, "redis", SCORES_REDIS, scored["ds"])

        scored = score_entities()
        [wait_for_features(), wait_for_retraining()] >> scored
        publish_postgres(scored)
        publish_redis(scored)

    pipeline()


for _ref, _name in deployed_use_cases():
    batch_score(_ref, _name)
