"""Failure notices and alert channels: the notifiers every task's on_failure_callback runs and the
channels alerts and missed deadlines go through, against real HTTP endpoints (the webhook, Slack's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from tests.helpers import webhook_server

from sluice.ops.embedded import free_port
from sluice.orchestration.notify import SlackFailureNotifier, WebhookFailureNotifier, failure_notifiers

SLACK_CONN = "AIRFLOW_CONN_SLUICE_NOTIFY_SLACK"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list]]:
    with webhook_server() as served:
        yield served


def _context(error: Exception) -> dict:
    ti = SimpleNamespace(dag_id="churn__nightly_etl", task_id="curate_events", run_id="scheduled__2026-03-02",
                         try_number=3, log_url="/dags/churn__nightly_etl/runs/x/tasks/curate_events")
    return {"ti": ti, "params": {"partition_day": "2026-03-01"}, "ds": "2026-03-02", "exception": error}


def test_a_failure_is_posted_with_dag_task_day_attempt_and_error(webhook, monkeypatch) -> None:
    url, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", url)
    WebhookFailureNotifier().notify(_context(RuntimeError("amount: parse_number failed for 31% of rows")))
    assert len(received) == 1
    path, body = received[0]
    assert path == "/hooks/sluice"
    assert body["text"] == ("[sluice] churn__nightly_etl.curate_events failed for 2026-03-01 (attempt 3): "
                            "RuntimeError: amount: parse_number failed for 31% of rows")
    assert (body["dag_id"], body["task_id"], body["ds"]) == ("churn__nightly_etl", "curate_events", "2026-03-01")
    assert body["failure"]["log_url"] == "/dags/churn__nightly_etl/runs/x/tasks/curate_events"


def test_without_the_connection_or_with_the_webhook_down_nothing_is_raised(webhook, monkeypatch, caplog) -> None:
    _, received = webhook
    monkeypatch.delenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", raising=False)
    WebhookFailureNotifier().notify(_context(RuntimeError("boom")))
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", f"http://127.0.0.1:{free_port()}/hooks/sluice")
    monkeypatch.setenv("SLUICE_TIMEOUT_HTTP_S", "2")
    with caplog.at_level("WARNING"):
        WebhookFailureNotifier().notify(_context(RuntimeError("boom")))
    assert received == []
    assert "failure of churn__nightly_etl.curate_events not notified" in caplog.text


def test_email_is_added_only_when_recipients_are_named() -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    assert [type(n) for n in failure_notifiers({})] == [WebhookFailureNotifier, SlackFailureNotifier]
    notifiers = failure_notifiers({"SLUICE_NOTIFY_EMAIL_TO": "ml-oncall, data-team"})
    assert [type(n) for n in notifiers] == [WebhookFailureNotifier, SlackFailureNotifier, SmtpNotifier]
    assert list(notifiers[2].to) == ["ml-oncall", "data-team"]
    assert notifiers[2].smtp_conn_id == "sluice_notify_smtp"


# -- Slack ----------------------------------------------------------------------------------------
def _slack_connection(monkeypatch, url: str) -> None:
    """The Slack provider's incoming-webhook connection; a full URL in the password is its documented form."""
    monkeypatch.setenv(SLACK_CONN, json.dumps({"conn_type": "slackwebhook", "password": url}))


def test_a_failure_reaches_slack_through_the_providers_notifier(monkeypatch) -> None:
    with webhook_server("/services/T0/B0/secret") as (url, received):
        _slack_connection(monkeypatch, url)
        notifier = SlackFailureNotifier()
        notifier(_context(RuntimeError("amount: parse_number failed for 31% of rows")))  # as Airflow calls it
    [(path, body)] = received
    assert path == "/services/T0/B0/secret"
    assert body["text"] == (
        ":red_circle: churn__nightly_etl.curate_events failed for 2026-03-01 (run scheduled__2026-03-02, attempt 3): "
        "amount: parse_number failed for 31% of rows\nlog: /dags/churn__nightly_etl/runs/x/tasks/curate_events")


def test_building_the_notifiers_imports_no_slack_provider() -> None:
    """failure_notifiers() runs at every parse of every DAG file: the provider (slack_sdk) is
    imported only when a notice is sent; the notice itself goes through its SlackWebhookNotifier."""
    import subprocess
    import sys

    code = ("import sys; from sluice.orchestration.notify import failure_notifiers; failure_notifiers({}); "
            "print(sorted(m for m in sys.modules if m.startswith(('airflow.providers.slack.notifications', 'airflow.providers.slack.hooks', 'slack_sdk'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_slack_without_its_connection_or_down_never_raises(monkeypatch, caplog) -> None:
    monkeypatch.delenv(SLACK_CONN, raising=False)
    SlackFailureNotifier()(_context(RuntimeError("boom")))
    _slack_connection(monkeypatch, f"http://127.0.0.1:{free_port()}/services/T0/B0/x")
    monkeypatch.setenv("SLUICE_TIMEOUT_HTTP_S", "2")
    with caplog.at_level("WARNING"):
        SlackFailureNotifier()(_context(RuntimeError("boom")))
    assert "failure not notified on Slack" in caplog.text


def test_alerts_go_through_every_configured_channel_and_skip_without_any(webhook, monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from sluice.orchestration.context import send_alert_notice
    from sluice.orchestration.notify import alert_channels

    url, posted = webhook
    payload = {"text": "[sluice] churn 2026-03-01: 41% of features drifted", "reasons": ["drift"], "ds": "2026-03-01"}
    monkeypatch.delenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", raising=False)
    monkeypatch.delenv(SLACK_CONN, raising=False)
    assert alert_channels() == []
    with pytest.raises(AirflowSkipException, match="no alert channel is configured"):
        send_alert_notice(payload)

    with webhook_server("/services/T0/B0/secret") as (slack_url, on_slack):
        _slack_connection(monkeypatch, slack_url)
        assert send_alert_notice(payload) == 200  # Slack alone
        monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", url)
        assert len(alert_channels()) == 2
        assert send_alert_notice(payload) == 200
    assert [body for _, body in posted] == [payload], "the webhook gets the whole payload"
    assert [body["text"] for _, body in on_slack] == [payload["text"]] * 2, "Slack gets its text"

    # Where a connection may not be read (a deadline callback: the Execution API denies it), that
    # channel is off and the others still go.
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    real = BaseHook.get_connection

    def denied(conn_id: str, *args, **kwargs):
        if conn_id == "sluice_notify_slack":
            raise AirflowSecretsBackendAccessDenied(f"Access denied for connection {conn_id!r} by Execution API")
        return real(conn_id, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BaseHook, "get_connection", denied)
        assert len(alert_channels()) == 1

    # A channel that is down fails the send: the alert task's retry sends it again, nothing recorded.
    _slack_connection(monkeypatch, f"http://127.0.0.1:{free_port()}/services/T0/B0/x")
    monkeypatch.setenv("SLUICE_TIMEOUT_HTTP_S", "2")
    with pytest.raises(Exception):  # noqa: B017 (slack_sdk's URLError or the provider's AirflowException)
        send_alert_notice(payload)


# -- deadlines ------------------------------------------------------------------------------------
def test_deadlines_are_minutes_after_queued_and_configurable() -> None:
    from airflow.sdk.definitions.deadline import DeadlineReference

    from sluice.orchestration.notify import deadline, deadline_minutes

    assert deadline_minutes("nightly_etl", {}) == 360 and deadline_minutes("batch_score", {}) == 420
    assert deadline_minutes("nightly_etl", {"SLUICE_DEADLINE_NIGHTLY_ETL_MINUTES": "90"}) == 90
    assert deadline_minutes("weekly_retrain", {}) == 0, "no deadline where none is set"
    with pytest.raises(ValueError, match="SLUICE_DEADLINE_NIGHTLY_ETL_MINUTES must be a number"):
        deadline_minutes("nightly_etl", {"SLUICE_DEADLINE_NIGHTLY_ETL_MINUTES": "6h"})
    alert = deadline("nightly_etl", "churn")
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT, "a backfill of old days is not late at once"
    assert alert.interval.total_seconds() == 6 * 3600
    assert alert.callback.path == "sluice.orchestration.notify.deadline_missed"
    assert alert.callback.kwargs == {"stage": "nightly_etl", "use_case": "churn", "minutes": 360.0}


def test_deadline_off_with_zero(monkeypatch) -> None:
    from sluice.orchestration.notify import deadline

    monkeypatch.setenv("SLUICE_DEADLINE_BATCH_SCORE_MINUTES", "0")
    assert deadline("batch_score", "churn") is None


def test_a_missed_deadline_is_posted_with_the_run_and_its_day(webhook, monkeypatch) -> None:
    from sluice.orchestration.notify import deadline_missed

    url, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", url)
    context = {  # what the scheduler hands the callback (Deadline.handle_miss)
        "dag_run": {"dag_id": "churn__nightly_etl", "dag_run_id": "scheduled__2026-03-01T00:00:00+00:00",
                    "data_interval_start": "2026-03-01T00:00:00Z", "state": "running", "conf": {}},
        "deadline": {"id": "x", "deadline_time": "2026-03-02T06:00:00+00:00"},
    }
    deadline_missed(context, stage="nightly_etl", use_case="churn", minutes=360)
    [(_, body)] = received
    assert body["text"] == ("[sluice] churn__nightly_etl for 2026-03-01 is late: not done by 2026-03-02T06:00:00+00:00 "
                            "(360 min after it was queued; run scheduled__2026-03-01T00:00:00+00:00, running)")
    assert (body["ds"], body["use_case"], body["deadline"]["minutes"]) == ("2026-03-01", "churn", 360)

    # A manual run of a day names that day (its partition_day param).
    context["dag_run"]["conf"] = {"partition_day": "2026-02-20"}
    deadline_missed(context, stage="nightly_etl", use_case="churn", minutes=360)
    assert received[-1][1]["ds"] == "2026-02-20"

    # Slack too, once its connection is configured.
    with webhook_server("/services/T0/B0/secret") as (slack_url, on_slack):
        _slack_connection(monkeypatch, slack_url)
        deadline_missed(context, stage="nightly_etl", use_case="churn", minutes=360)
    [(_, message)] = on_slack
    assert message["text"].startswith("[sluice] churn__nightly_etl for 2026-02-20 is late")
    assert len(received) == 3


# -- asset events ---------------------------------------------------------------------------------
def test_asset_events_carry_the_version_day_and_rows_a_stage_wrote() -> None:
    from sluice.orchestration.context import asset_extra

    curated = {"ds": "2026-03-01", "rows_in": 120, "valid": 100, "quarantined": 15, "duplicates_removed": 5,
               "curated_version": 9, "quarantine_version": 8}
    assert asset_extra("curated", curated) == {"ds": "2026-03-01", "delta_version": 9, "rows": 100, "rows_in": 120,
                                               "rows_quarantined": 15, "duplicates_removed": 5}
    assert asset_extra("quarantine", curated)["rows"] == 15 and asset_extra("quarantine", curated)["delta_version"] == 8
    assert asset_extra("raw", {"ds": "2026-03-01", "rows": 120, "version": 4}) == {
        "ds": "2026-03-01", "delta_version": 4, "rows": 120}
    scored = {"ds": "2026-03-01", "rows": 90, "predictions_version": 3, "model_version": "2", "feature_table_version": 9}
    assert asset_extra("predictions", scored)["model_version"] == "2"
    # The challenger's scores of the day, beside the champion's; a day with no challenger wrote none.
    shadowed = scored | {"shadow": {"model_version": "3", "rows": 90, "version": 5, "mean_score": 0.2}}
    assert asset_extra("shadow", shadowed) == {"ds": "2026-03-01", "delta_version": 5, "rows": 90, "model_version": "3",
                                               "champion_version": "2", "feature_table_version": 9}
    assert asset_extra("shadow", scored | {"shadow": None})["rows"] == 0
