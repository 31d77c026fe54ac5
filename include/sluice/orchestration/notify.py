"""Failure notifications: every task of every Sluice DAG says when it failed, through Airflow notifiers.

``on_failure_callback`` of :func:`sluice.orchestration.context.default_args` is
:func:`failure_notifiers`, a list of Airflow notifiers (``BaseNotifier``: they run in the
task's process after its last attempt failed, and compose with the providers' own):

* :class:`WebhookFailureNotifier`: a JSON POST to the connection ``sluice_alert_webhook``,
  the webhook the drift and volume alerts use (a Slack or Teams incoming webhook shows its
  ``text``). Without the connection it logs and does nothing.
* :class:`SlackFailureNotifier`: the Slack provider's ``SlackWebhookNotifier`` through the
  connection ``sluice_notify_slack`` (an incoming webhook: ``SLUICE_SLACK_WEBHOOK_URI`` in
  airflow_settings.yaml). Without the connection it logs and does nothing.
* the SMTP provider's ``SmtpNotifier`` when ``SLUICE_NOTIFY_EMAIL_TO`` names recipients
  (comma-separated), through the connection ``SLUICE_NOTIFY_SMTP_CONN_ID`` names
  (``sluice_notify_smtp``, from ``SLUICE_SMTP_URI`` in airflow_settings.yaml).

A notifier that cannot deliver logs why and never hides the task's own failure.

**Alerts** (the drift report's, the volume check's) and missed deadlines go through the
same channels (:func:`alert_channels`): the webhook gets the JSON payload, Slack its
``text``. An alert task is skipped only when no channel is configured.

**Deadlines** (Airflow 3's Deadline Alerts, :func:`deadline`): a daily run that is not done
within its stage's interval after it was queued (ingest_raw 3 h, nightly_etl 6 h,
batch_score 7 h, drift_report 8 h: a scheduled run of D is queued at 00:00 of D+1, so
nightly_etl is due by 06:00 UTC of D+1) calls :func:`deadline_missed`, which sends the
notice through the same channels. It runs in the executor without a task's identity, and
there Airflow 3.3.2's Execution API denies connection lookups (seen in the e2e test): it
finds the channels that are ``AIRFLOW_CONN_*`` variables of the scheduler, and skips the others. ``SLUICE_DEADLINE_<STAGE>_MINUTES`` (read at parse time)
changes an interval; 0 turns it off. Queued, not logical, time: a backfill of last
month's days is due hours after it starts, not already late.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier

log = logging.getLogger(__name__)

ALERT_WEBHOOK = "sluice_alert_webhook"
SLACK_WEBHOOK = "sluice_notify_slack"


class WebhookFailureNotifier(BaseNotifier):
    """POST that a task failed (dag, task, run, day, attempt, error) to the alert webhook connection."""

    template_fields = ("conn_id",)

    def __init__(self, conn_id: str = ALERT_WEBHOOK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def notify(self, context: Mapping[str, Any]) -> None:
        from sluice.edges.alerts import failure_payload, send_alert
        from sluice.settings import load_settings

        url = _webhook_url(self.conn_id)
        if url is None:
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
        try:
            send_alert(url, payload, timeout=load_settings().timeouts.http_s)
        except Exception as exc:  # the task failed already: say why the notice did not go, hide nothing
            log.warning("failure of %s.%s not notified: %s", payload["dag_id"], payload["task_id"], exc)


class SlackFailureNotifier(BaseNotifier):
    """A failure notice through the Slack provider's ``SlackWebhookNotifier``, quiet (it logs) while
    its connection is not configured. The provider (and slack_sdk, 0.27 s) is imported only when a
    notice goes, as SMTP's is: this object is built at every parse of every DAG file."""

    template_fields = ("slack_webhook_conn_id", "text")

    def __init__(self, slack_webhook_conn_id: str = SLACK_WEBHOOK, text: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slack_webhook_conn_id = slack_webhook_conn_id
        self.text = text or (
            ":red_circle: {{ ti.dag_id }}.{{ ti.task_id }} failed for {{ params.partition_day or ds }} "
            "(run {{ ti.run_id }}, attempt {{ ti.try_number }}): {{ exception }}\nlog: {{ ti.log_url }}"
        )

    def notify(self, context: Mapping[str, Any]) -> None:
        if not _has_connection(self.slack_webhook_conn_id):
            log.info("connection %s is not configured: failure not notified on Slack", self.slack_webhook_conn_id)
            return
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        try:  # self.text is rendered already (BaseNotifier renders template_fields before notify)
            SlackWebhookNotifier(slack_webhook_conn_id=self.slack_webhook_conn_id, text=self.text,
                                 timeout=_http_timeout()).notify(context)
        except Exception as exc:  # the task failed already: say why the notice did not go, hide nothing
            log.warning("failure not notified on Slack: %s", exc)


def failure_notifiers(env: Mapping[str, str] | None = None) -> list[BaseNotifier]:
    """The notifiers every task's ``on_failure_callback`` runs (see the module docstring)."""
    env = os.environ if env is None else env
    notifiers: list[BaseNotifier] = [WebhookFailureNotifier(), SlackFailureNotifier()]
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


# Minutes after a daily run is queued by which it must be done (00:00 UTC of D+1 for a scheduled run).
DEADLINE_MINUTES = {"ingest_raw": 180, "nightly_etl": 360, "batch_score": 420, "drift_report": 480}


def deadline_minutes(stage: str, env: Mapping[str, str] | None = None) -> float:
    """The deadline of ``stage`` in minutes (``SLUICE_DEADLINE_<STAGE>_MINUTES``; 0: none)."""
    env = os.environ if env is None else env
    raw = env.get(f"SLUICE_DEADLINE_{stage.upper()}_MINUTES")
    try:
        minutes = float(raw) if raw not in (None, "") else float(DEADLINE_MINUTES.get(stage, 0))
    except ValueError as exc:
        raise ValueError(f"SLUICE_DEADLINE_{stage.upper()}_MINUTES must be a number of minutes, got {raw!r}") from exc
    if minutes < 0:
        raise ValueError(f"SLUICE_DEADLINE_{stage.upper()}_MINUTES must be >= 0, got {raw!r}")
    return minutes


def deadline(stage: str, use_case: str) -> Any:
    """The ``deadline`` of a daily DAG of ``stage`` (an Airflow ``DeadlineAlert``), or None when off."""
    minutes = deadline_minutes(stage)
    if not minutes:
        return None
    from airflow.sdk.definitions.callback import SyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=minutes),
        callback=SyncCallback(deadline_missed, kwargs={"stage": stage, "use_case": use_case, "minutes": minutes}),
        name=f"{use_case}__{stage} done {minutes:g} min after queued",
    )


def deadline_missed(context: Mapping[str, Any], stage: str, use_case: str, minutes: float, **_: Any) -> None:
    """The callback of a missed deadline (run by the executor): the notice through every alert channel."""
    from sluice.edges.alerts import deadline_payload

    run = dict(context.get("dag_run") or {})
    due = (context.get("deadline") or {}).get("deadline_time")
    payload = deadline_payload(
        dag_id=str(run.get("dag_id") or f"{use_case}__{stage}"), run_id=str(run.get("dag_run_id") or run.get("run_id")),
        ds=_day_of(run), state=run.get("state"), due=str(due) if due else None, minutes=minutes,
        use_case=use_case,
    )
    log.warning("DEADLINE missed: %s", payload["text"])
    channels = alert_channels()
    if not channels:
        log.info("no alert channel is configured (%s, %s): the missed deadline is only logged",
                 ALERT_WEBHOOK, SLACK_WEBHOOK)
    for send in channels:
        send(payload)


def alert_channels(timeout: float | None = None) -> list[Callable[[Mapping[str, Any]], int]]:
    """One sender per configured alert channel, each returning the HTTP status or raising.

    The webhook connection gets the JSON payload; the Slack connection (the provider's
    ``SlackWebhookHook``) gets the payload's ``text``.
    """
    from sluice.edges.alerts import send_alert

    timeout = _http_timeout() if timeout is None else timeout
    channels: list[Callable[[Mapping[str, Any]], int]] = []
    url = _webhook_url(ALERT_WEBHOOK)
    if url is not None:
        channels.append(lambda payload: send_alert(url, payload, timeout=timeout))
    if _has_connection(SLACK_WEBHOOK):
        channels.append(lambda payload: _send_to_slack(SLACK_WEBHOOK, str(payload["text"]), timeout))
    return channels


def _send_to_slack(conn_id: str, text: str, timeout: float) -> int:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    # The hook raises on any answer but 200 (check_webhook_response).
    response = SlackWebhookHook(slack_webhook_conn_id=conn_id, timeout=max(1, round(timeout))).send(text=text)
    log.info("alert sent to Slack (%s): HTTP %s", conn_id, response.status_code)
    return int(response.status_code)


def _http_timeout() -> int:
    from sluice.settings import load_settings

    return max(1, round(load_settings().timeouts.http_s))


def _has_connection(conn_id: str) -> bool:
    return _connection(conn_id) is not None


def _connection(conn_id: str) -> Any:
    """The connection ``conn_id``, or None when it is not configured or cannot be read here. In a
    deadline callback (the executor, no task identity) the Execution API denies connection
    lookups; only ``AIRFLOW_CONN_*`` variables are found there, and a denied one counts as absent."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSecretsBackendAccessDenied

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    except AirflowSecretsBackendAccessDenied as exc:
        log.warning("connection %s cannot be read here: %s", conn_id, exc)
        return None


def _day_of(run: Mapping[str, Any]) -> str | None:
    """The partition day of a run: its partition_day param, else the start of its data interval."""
    conf = run.get("conf") or {}
    if conf.get("partition_day"):
        return str(conf["partition_day"])
    start = run.get("data_interval_start") or run.get("logical_date")
    return str(start)[:10] if start else None


def _webhook_url(conn_id: str) -> str | None:
    """The URL the webhook connection holds (``sluice.edges.alerts.webhook_url``), None when it is absent."""
    from sluice.edges.alerts import webhook_url

    conn = _connection(conn_id)
    if conn is None:
        return None
    return webhook_url(conn_type=conn.conn_type, host=conn.host, port=conn.port, schema=conn.schema,
                       extra=conn.extra_dejson)
