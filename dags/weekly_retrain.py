"""
# weekly_retrain

Trains a **challenger** model of one use case and lets it replace the **champion** only when it
is demonstrably better.

1. `wait_for_features` waits until `features/<entity>_daily` has the as-of day D.
2. `retrain_and_gate` reads `features/<entity>_daily` at **one pinned Delta version**,
   keeps snapshot days whose label has matured by D (at most the last `training.max_days`,
   none of the lake's first `training.warmup_days`: their windows are not full), splits them by time
   (train, validation, holdout = the most recent matured days), trains LightGBM
   deterministically, logs params, metrics, plots and a model card to MLflow and
   registers a version. Champion and challenger are scored on the **same holdout**;
   the gate (floors, paired-bootstrap improvement, guarded slices, calibration)
   decides. The decision (every check with its numbers and reason) goes to
   `models/decisions` D and onto the model version's tags; a promotion moves the
   alias `champion` (the former one keeps `previous-champion`) and is appended to
   `models/promotions`. Runs in the `training` pool (one slot) so retraining never
   starves scoring. A retry resumes the version its earlier try registered. It may run
   3 x `SLUICE_TIMEOUT_TASK_MINUTES` (every other task: 1 x, default 120 minutes).
   Too few matured days (a young lake) skips the run.

* **Schedule:** weekly, Mondays 00:00 UTC; D is the Sunday that ends the week's data interval
  (the run waits for that day's features). `drift_report` also triggers it early
  (run id `early_retrain__D`) when drift persists.
* **Manual run params:** `partition_day` (as-of day), `dry_run` (decide, do not
  promote), `force_promote` with a required `reason` (recorded in the decision).
* **Backfill:** `airflow backfill create --dag-id <use case>__weekly_retrain --from-date 2026-05-04 --to-date 2026-05-25`
* **Approval** (`gate.approval.required` of the use case): a model the gate (or a forced run)
  would promote is recorded as *awaiting approval*; `approve_promotion` (Airflow's
  ApprovalOperator) shows the decision and the model card on the **Required Actions** page and
  waits up to `gate.approval.timeout_hours` (default 72); `settle_approval` records the answer
  (who, when, the comment) and promotes only on **Approve**. Reject or no answer keeps the champion.
* **Roll back:** `sluice model rollback --use-case NAME --reason "..."`.

One DAG per use case of `SLUICE_USE_CASES` (`<use case>__weekly_retrain`).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, get_current_context, task

from sluice.orchestration.context import (
    START_DATE,
    approval_spec,
    asset_name,
    bad_input_fails_fast,
    dag_id,
    default_args,
    deployed_use_cases,
    partition_day_param,
    tags,
    task_timeout,
    weekly,
)
from sluice.tables import MODEL_DECISIONS


def weekly_retrain(ref: str, name: str) -> None:
    @dag(
        dag_id=dag_id(name, "weekly_retrain"),
        schedule=weekly(),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # one retraining at a time: each gate compares against the current champion
        default_args=default_args(),
        tags=tags(name, "training", "models"),
        params={
            "partition_day": partition_day_param(),
            "dry_run": Param(
                False, type="boolean", title="Dry run", description="Decide and record, but move no alias."
            ),
            "force_promote": Param(
                False,
                type="boolean",
                title="Force promotion",
                description="Promote the challenger whatever the gate says. Needs a reason.",
            ),
            "reason": Param(
                "",
                type="string",
                maxLength=500,
                title="Reason",
                description="Why a promotion is forced (required with force_promote); recorded in the decision.",
            ),
        },
        doc_md=__doc__,
    )
    def pipeline() -> None:
        @task.sensor(poke_interval=60, timeout=dt.timedelta(hours=12), mode="reschedule")
        @bad_input_fails_fast
        def wait_for_features() -> bool:
            from sluice.orchestration.context import as_of_day, partition_ready

            return partition_ready(ref, "features", as_of_day(get_current_context()))

        @task(
            pool="training",
            execution_timeout=task_timeout(training=True),
            outlets=[Asset(asset_name(name, MODEL_DECISIONS.name))],
        )
        @bad_input_fails_fast
        def retrain_and_gate() -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from sluice.core.train import NotEnoughData
            from sluice.orchestration.context import as_of_day, run_context, runtime_settings
            from sluice.stages.retrain import retrain

            context = get_current_context()
            params = context["params"]
            if params.get("force_promote") and not str(params.get("reason") or "").strip():
                raise AirflowFailException("force_promote needs a reason")
            try:
                return retrain(
                    runtime_settings(ref),
                    as_of_day(context),
                    run_context(context),
                    dry_run=bool(params.get("dry_run")),
                    force_promote=bool(params.get("force_promote")),
                    reason=params.get("reason") or None,
                )
            except NotEnoughData as exc:
                raise AirflowSkipException(f"no retraining this week: {exc}") from exc

        decided = retrain_and_gate()
        wait_for_features() >> decided
        if approval.required:
            from sluice.orchestration.approval import APPROVE_TASK, SETTLE_TASK, PromotionApproval

            ask = PromotionApproval(
                task_id=APPROVE_TASK, use_case=name, outcome_task_id="retrain_and_gate",
                timeout_hours=approval.timeout_hours, approvers=approval.approvers,
                doc_md="Approve or reject the promotion (Airflow UI: Required Actions; or the REST API).",
            )

            @task(task_id=SETTLE_TASK, outlets=[Asset(asset_name(name, MODEL_DECISIONS.name))])
            @bad_input_fails_fast
            def settle_approval() -> dict:
                from sluice.core.approval import ApprovalResponse
                from sluice.orchestration.context import run_context, runtime_settings
                from sluice.stages.approval import settle

                context = get_current_context()
                ti = context["ti"]
                pending = (ti.xcom_pull(task_ids="retrain_and_gate") or {})["awaiting_approval"]
                response = ApprovalResponse.from_hitl(ti.xcom_pull(task_ids=APPROVE_TASK))
                return settle(runtime_settings(ref), pending, response, run_context(context))

            decided >> ask >> settle_approval()

    approval = approval_spec(ref)
    pipeline()


for _ref, _name in deployed_use_cases():
    weekly_retrain(_ref, _name)
