"""The approval step of weekly_retrain (``gate.approval.required``): Airflow's ApprovalOperator.

:class:`PromotionApproval` is the standard provider's ``ApprovalOperator`` (Human-in-the-loop)
with two Sluice habits:

* it asks only when the retraining left a model awaiting approval (the ``awaiting_approval``
  of ``retrain_and_gate``'s result); otherwise it is skipped, and ``settle_approval`` with it;
* **Reject** is an answer to record, not a reason to skip what follows: ``settle_approval``
  runs for every answer (Approve, Reject, and the timeout's default Reject, which has no user).

The request shows the gate decision and the model card (Markdown) in the Airflow UI's
Required Actions page, with a comment field; the REST API answers it too (``PATCH
/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve_promotion/-1/hitlDetails``).
On Airflow 3.3 the task waits in the ``awaiting_input`` state: an answer resumes it through
the API server, a timeout through the scheduler; no worker slot and no triggerer are held.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param

from sluice.core.approval import COMMENT, REJECT

APPROVE_TASK = "approve_promotion"
SETTLE_TASK = "settle_approval"


class PromotionApproval(ApprovalOperator):
    """Ask a person to approve the promotion ``outcome_task_id`` left awaiting (see the module docstring)."""

    def __init__(self, *, use_case: str, outcome_task_id: str, timeout_hours: float,
                 approvers: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(
            subject=f"Promote a model of {use_case}?",  # replaced by the request's own subject at run time
            defaults=REJECT,  # what a timeout answers: the champion stays
            response_timeout=dt.timedelta(hours=timeout_hours),
            assigned_users=[{"id": a, "name": a} for a in approvers] or None,
            params={**dict(kwargs.pop("params", None) or {}),  # (the DAG's: HITLOperator keeps only its own)
                    COMMENT: Param(None, type=["null", "string"], maxLength=2000, title="Comment",
                                   description="Why you approve or reject (optional; recorded with your name).")},
            **kwargs,
        )
        self.use_case = use_case
        self.outcome_task_id = outcome_task_id

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from sluice.orchestration.context import runtime_settings
        from sluice.stages.approval import request

        outcome = context["ti"].xcom_pull(task_ids=self.outcome_task_id) or {}
        pending = outcome.get("awaiting_approval")
        if not pending:
            raise AirflowSkipException("nothing awaits approval: the gate would not promote, or decided already")
        base = _base_url()
        card_url = f"{base}/sluice/cards/{pending['model_version']}?use_case={self.use_case}" if base else None
        self.subject, self.body = request(runtime_settings(self.use_case), pending, card_url=card_url)
        self.params = self._own_params()  # the form asks for the comment, not the DAG's run params
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # Not ApprovalOperator's: a Reject would skip settle_approval and leave the answer unrecorded.
        self.params = self._own_params()
        return HITLOperator.execute_complete(self, context, event)

    def _own_params(self) -> Any:
        """Only the comment: the DAG's params (partition_day, dry_run, ...) join every task's at run
        time, and HITLOperator would show them in the form and demand them in every answer."""
        from airflow.sdk.definitions.param import ParamsDict

        return ParamsDict({COMMENT: self.params.get_param(COMMENT)})


def _base_url() -> str | None:
    from airflow.providers.common.compat.sdk import conf

    return (conf.get("api", "base_url", fallback=None) or "").rstrip("/") or None
