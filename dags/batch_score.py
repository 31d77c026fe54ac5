"""
# batch_score

Scores every customer in `features/customer_daily` for **partition day D**.

1. `wait_for_features` waits until the features of D exist (written by `nightly_etl`);
   `wait_for_retraining` waits while a `weekly_retrain` run decided as of D-1 is queued or
   running (its promotion takes effect on D; on a Monday both are due at the same midnight).
2. `score_customers` resolves the model **once** to a concrete version: the model that
   was champion on D (from `models/promotions`; a gate decision as of day X takes effect
   on X+1), or the current `@champion` when the
   `use_current_champion` param is set. It writes `predictions/churn` D (customer id,
   score, risk band, model version, feature table version), replacing the partition.
3. `publish_postgres` upserts the scores into `public.churn_scores` keyed by
   (ds, customer_id), if the connection `sluice_scores_postgres` exists;
   `publish_redis` writes them to Redis (`sluice:churn:<ds>`, field = customer id), if
   the connection `sluice_scores_redis` exists. Both skip otherwise; re-runs never duplicate.

* **Schedule:** daily at 00:00 UTC for the day that just ended (after nightly_etl).
* **Manual run:** `partition_day`, and `use_current_champion` to re-score a past day
  with today's champion instead of the one of that day.
* **Backfill:** `airflow backfill create --dag-id batch_score --from-date 2026-05-25 --to-date 2026-05-31 --max-active-runs 4`
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, get_current_context, task

from sluice.orchestration.context import DEFAULT_ARGS, START_DATE, daily, partition_day_param
from sluice.tables import FEATURES_CUSTOMER_DAILY, PREDICTIONS_CHURN

SCORES_POSTGRES = "sluice_scores_postgres"
SCORES_REDIS = "sluice_scores_redis"


@dag(
    schedule=daily(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=4,
    default_args=DEFAULT_ARGS,
    tags=["sluice", "scoring"],
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
def batch_score():
    @task.sensor(poke_interval=30, timeout=dt.timedelta(hours=12), mode="reschedule")
    def wait_for_features() -> bool:
        from sluice.orchestration.context import partition_day, partition_ready

        return partition_ready(FEATURES_CUSTOMER_DAILY.name, partition_day(get_current_context()))

    @task.sensor(poke_interval=60, timeout=dt.timedelta(hours=12), mode="reschedule")
    def wait_for_retraining() -> bool:
        from sluice.orchestration.context import partition_day, retraining_settled

        context = get_current_context()
        return retraining_settled(context["ti"], partition_day(context))

    @task(outlets=[Asset(PREDICTIONS_CHURN.asset_name)])
    def score_customers() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from sluice.orchestration.context import partition_day, run_context, runtime_settings
        from sluice.stages.score import NoChampion, score_day

        context = get_current_context()
        try:
            return score_day(
                runtime_settings(),
                partition_day(context),
                run_context(context),
                use_current_champion=bool(context["params"].get("use_current_champion")),
            )
        except NoChampion as exc:
            raise AirflowSkipException(f"nothing to score with: {exc}") from exc

    @task
    def publish_postgres(scored: dict) -> int:
        from sluice.orchestration.context import publish_scores

        return publish_scores("postgres", SCORES_POSTGRES, scored["ds"])

    @task
    def publish_redis(scored: dict) -> int:
        from sluice.orchestration.context import publish_scores

        return publish_scores("redis", SCORES_REDIS, scored["ds"])

    scored = score_customers()
    [wait_for_features(), wait_for_retraining()] >> scored
    publish_postgres(scored)
    publish_redis(scored)


batch_score()
