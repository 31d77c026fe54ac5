"""Failure notifications: every task of every Sluice DAG says when it failed, through Airflow notifiers.

``on_failure_callback`` of :func:`sluice.orchestration.context.default_args` is
:func:`failure_notifiers`, a list of Airflow notifiers (``BaseNotifier``: they run in the
task's process after its last attempt failed, and compose with the providers' own):

* :class:`WebhookFailureNotifier`: a JSON POST to the connection ``sluice_alert_webhook``,
  the webhook the drift and volume alerts use (a Slack or Teams incoming webhook shows its
  ``text``). Without the connection it logs and does nothing.
* the SMTP provider's ``SmtpNotifier`` when ``SLUICE_NOTIFY_EMAIL_TO`` names recipients
  (comma-separated), through the connection ``SLUICE_NOTIFY_SMTP_CONN_ID`` names
  (``sluice_notify_smtp``, from ``SLUICE_SMTP_URI`` in airflow_settings.yaml).

A notifier that cannot deliver logs why and never hides the task's own failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier

log = logging.getLogger(__name__)

ALERT_WEBHOOK = "sluice_alert_webhook"


class WebhookFailureNotifier(BaseNotifier):
    """POST that a task failed (dag, task, run, day, attempt, error) to the alert webhook connection."""

    template_fields = ("conn_id",)

    def __init__(self, conn_id: str = ALERT_WEBHOOK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def notify(self, context: Mapping[str, Any]) -> None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from sluice.edges.alerts import failure_payload, send_alert, webhook_url
        from sluice.settings import load_settings

        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            log.info("connection %s is not configured: failure not notified by webhook", self.conn_id)
            return
        ti = context.get("ti") or context.get("task_instance")
        params = context.get("params") or {}
        ds = params.get("partition_day") or context.get("ds")
        error = context.get("exception")
        payload = failure_payload(
            dag_id=str(getattr(ti, "dag_id", "") or context.get("dag_id") or ""),
            task_id=str(getattr(ti, "task_id", "") or ""),
            run_id=str(getattr(ti, "run_id", "") or context.get("run_id") or ""),
            ds=str(ds) if ds else None,
            try_number=getattr(ti, "try_number", None),
            error=f"{type(error).__name__}: {error}" if error is not None else None,
            log_url=getattr(ti, "log_url", None),
        )
        url = webhook_url(conn_type=conn.conn_type, host=conn.host, port=conn.port, schema=conn.schema,
                          extra=conn.extra_dejson)
        try:
            send_alert(url, payload, timeout=load_settings().timeouts.http_s)
        except Exception as exc:  # the task failed already: say why the notice did not go, hide nothing
            log.warning("failure of %s.%s not notified: %s", payload["dag_id"], payload["task_id"], exc)


def failure_notifiers(env: Mapping[str, str] | None = None) -> list[BaseNotifier]:
    """The notifiers every task's ``on_failure_callback`` runs (see the module docstring)."""
    env = os.environ if env is None else env
    notifiers: list[BaseNotifier] = [WebhookFailureNotifier()]
    recipients = [r.strip() for r in env.get("SLUICE_NOTIFY_EMAIL_TO", "").split(",") if r.strip()]
    if recipients:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(SmtpNotifier(
            to=recipients,
            smtp_conn_id=env.get("SLUICE_NOTIFY_SMTP_CONN_ID", "sluice_notify_smtp"),
            subject="[sluice] {{ ti.dag_id }}.{{ ti.task_id }} failed for {{ params.partition_day or ds }}",
            html_content="{{ ti.dag_id }}.{{ ti.task_id }} failed (run {{ ti.run_id }}, attempt {{ ti.try_number }}): "
                         "{{ exception }}<br>log: {{ ti.log_url }}",
        ))
    return notifiers
