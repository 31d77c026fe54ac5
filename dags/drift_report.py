"""
# drift_report

Says every day whether the world still looks like the data the champion learned from,
and how the model scored a month ago now that the truth is known. For **partition day D**:

1. `wait_for_predictions` waits until `predictions/scores` D exists (written by `batch_score`).
2. `build_drift_report` compares the features and scores of D with a fixed-size, seeded
   sample of the **champion's holdout days**: the model version that scored D
   records the Delta version of `features/<entity>_daily` and the holdout window it was
   judged on (the most recent data it was proven on; its train window lies two purges,
   60 days for churn, earlier); the sample is scored with that same model. Evidently's data drift (every
   feature, categoricals included), prediction drift (`score`) and missing values go to
   `<use case>/reports/drift/ds=D/report.html` and `report.json`; the summary (drift share, drifted
   columns, prediction drift, alert) replaces `monitoring/drift_history` D.
3. `record_performance` scores the labels that matured on D: realised ROC-AUC / PR-AUC
   of the predictions of D minus the label horizon go to `monitoring/performance_history`
   (that partition, `evaluated_on` D). Nothing is written when that day was not scored.
4. `send_alert` POSTs a JSON alert to the webhook of the connection `sluice_alert_webhook`
   (`extra.url`, or host/schema/port) when the drift share is over
   `SLUICE_DRIFT_SHARE_THRESHOLD` (default 0.3) or the realised ROC-AUC is under
   `SLUICE_PERFORMANCE_ROC_AUC_FLOOR` (default 0.7); it skips when the connection is absent.
   Each reason (data drift of D, performance of the scored day) is sent **at most once**:
   `monitoring/alerts_sent` D records it after the webhook accepted it, so a re-run sends
   nothing twice and a failed POST is sent again by the retry. The POST waits at most
   `SLUICE_TIMEOUT_HTTP_S` (10 s).
5. `decide_early_retrain` lets `trigger_weekly_retrain` start `<use case>__weekly_retrain` for D when
   drift was over the threshold on k of the last n days (`SLUICE_DRIFT_RETRAIN_K` = 3,
   `SLUICE_DRIFT_RETRAIN_N` = 5), at most once per `SLUICE_DRIFT_RETRAIN_COOLDOWN_DAYS`
   (7) days; `record_early_retrain` remembers the trigger in `monitoring/early_retrains`.

* **Schedule:** daily at 00:00 UTC for the day that just ended (after batch_score).
* **Manual run:** set `partition_day`.
* **Backfill:** `airflow backfill create --dag-id <use case>__drift_report --from-date 2026-05-25 --to-date 2026-05-31 --max-active-runs 1`
  (one run at a time, in order, so that each day's early-retraining decision sees the
  days before it; re-running a day replaces its report and rows.)
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
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
    early_retrain_run_id,
    partition_day_param,
    tags,
)
from sluice.tables import DRIFT_HISTORY, PERFORMANCE_HISTORY

_DS = "{{ ti.xcom_pull(task_ids='build_drift_report')['ds'] }}"


def drift_report(ref: str, name: str) -> None:
    retrain_dag_id = dag_id(name, "weekly_retrain")

    @dag(
        dag_id=dag_id(name, "drift_report"),
        schedule=daily(),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # each day's early-retraining decision reads the days before it
        default_args=default_args(),
        deadline=deadline("drift_report", name),  # Airflow's Deadline Alert: notified when late
        tags=tags(name, "monitoring", "drift"),
        params={"partition_day": partition_day_param()},
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task.sensor(poke_interval=60, timeout=dt.timedelta(hours=12), mode="reschedule")
        @bad_input_fails_fast
        def wait_for_predictions() -> bool:
            from sluice.orchestration.context import partition_day, partition_ready

            return partition_ready(ref, "predictions", partition_day(get_current_context()))

        @task(outlets=[Asset(asset_name(name, DRIFT_HISTORY.name))])
        @bad_input_fails_fast
        def build_drift_report() -> dict:
            from sluice.orchestration.context import partition_day, run_context, runtime_settings
            from sluice.stages.monitoring import build_drift_report

            context = get_current_context()
            return build_drift_report(runtime_settings(ref), partition_day(context), run_context(context))

        @task(outlets=[Asset(asset_name(name, PERFORMANCE_HISTORY.name))])
        @bad_input_fails_fast
        def record_performance() -> dict:
            from sluice.orchestration.context import partition_day, run_context, runtime_settings
            from sluice.stages.monitoring import record_performance

            context = get_current_context()
            return record_performance(runtime_settings(ref), partition_day(context), run_context(context))

        @task
        @bad_input_fails_fast
        def send_alert(drift: dict, performance: dict) -> dict:
            from sluice.orchestration.context import partition_day, run_context, send_day_alert

            context = get_current_context()
            return send_day_alert(ref, partition_day(context), run_context(context), drift, performance)

        @task.short_circuit
        @bad_input_fails_fast
        def decide_early_retrain(drift: dict) -> bool:
            from sluice.orchestration.context import runtime_settings
            from sluice.stages.monitoring import decide_early_retrain

            decision = decide_early_retrain(runtime_settings(ref), dt.date.fromisoformat(drift["ds"]))
            get_current_context()["ti"].xcom_push(key="decision", value=decision)
            return bool(decision["trigger"])

        trigger_weekly_retrain = TriggerDagRunOperator(
            task_id="trigger_weekly_retrain",
            trigger_dag_id=retrain_dag_id,
            trigger_run_id=early_retrain_run_id(_DS),  # one per day: a re-run finds it and skips
            conf={"partition_day": _DS},
            logical_date=None,  # not a weekly interval: weekly_retrain reads the day from its param
            skip_when_already_exists=True,
        )

        @task
        @bad_input_fails_fast
        def record_early_retrain() -> int:
            from sluice.orchestration.context import partition_day, run_context, runtime_settings
            from sluice.stages.monitoring import record_early_retrain

            context = get_current_context()
            ti = context["ti"]
            decision = ti.xcom_pull(task_ids="decide_early_retrain", key="decision")
            return record_early_retrain(
                runtime_settings(ref), partition_day(context), run_context(context), decision, retrain_dag_id,
                early_retrain_run_id(decision["ds"]),
            )

        drift = build_drift_report()
        performance = record_performance()
        wait_for_predictions() >> drift >> performance
        send_alert(drift, performance)
        performance >> decide_early_retrain(drift) >> trigger_weekly_retrain >> record_early_retrain()

    pipeline()


for _ref, _name in deployed_use_cases():
    drift_report(_ref, _name)
