"""Failure notices: the notifiers every task's on_failure_callback runs, against a real HTTP webhook."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from tests.helpers import webhook_server

from sluice.ops.embedded import free_port
from sluice.orchestration.notify import WebhookFailureNotifier, failure_notifiers


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

    assert [type(n) for n in failure_notifiers({})] == [WebhookFailureNotifier]
    notifiers = failure_notifiers({"SLUICE_NOTIFY_EMAIL_TO": "ml-oncall, data-team"})
    assert [type(n) for n in notifiers] == [WebhookFailureNotifier, SmtpNotifier]
    assert list(notifiers[1].to) == ["ml-oncall", "data-team"]
    assert notifiers[1].smtp_conn_id == "sluice_notify_smtp"


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
