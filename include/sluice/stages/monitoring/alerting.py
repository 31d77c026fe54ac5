"""The drift report's alert of day D: every reason sent at most once, whatever re-runs.

The reasons of D (:func:`sluice.edges.alerts.day_reasons`) that ``monitoring/alerts_sent`` D
does not hold yet are sent in one alert, through ``send`` (the orchestration layer's
channels: the alert webhook, Slack). They are recorded only after it was accepted: a
failed send records nothing, so the task's retry (or a re-run) sends them again, and a
re-run after a success finds them and sends nothing.

The one gap left: a send accepted, then the record's commit failing, is sent again by the
retry (at least once beats at most once for an alert).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypedDict

from sluice.core.lineage import RunContext
from sluice.edges import alerts
from sluice.edges.lake import Lake
from sluice.settings import Settings
from sluice.tables import ALERTS_SENT, DRIFT_HISTORY, PARTITION_COLUMN, PERFORMANCE_HISTORY

log = logging.getLogger(__name__)

# Delivers an alert payload (``text``, ``reasons``, ...) through the configured channels and returns
# the HTTP status; raises when it was not delivered (or to say no channel is configured).
Send = Callable[[Mapping[str, Any]], int]


class AlertOutcome(TypedDict):
    """What the send_alert task returns (small: it goes to XCom)."""

    ds: str
    sent: bool
    status: int | None
    reasons: list[str]  # the sentences sent by this run
    already_sent: list[str]  # keys of the day's reasons a former run sent
    detail: str


def pending_reasons(reasons: Sequence[alerts.AlertReason], sent: Collection[str]) -> list[alerts.AlertReason]:
    """Pure: the reasons whose key was not sent yet, in order, each key once."""
    seen = set(sent)
    out = []
    for reason in reasons:
        if reason.key not in seen:
            seen.add(reason.key)
            out.append(reason)
    return out


def sent_rows(
    ds: str, keys: Sequence[str], texts: Sequence[str], *, status: int, run_id: str, sent_at: dt.datetime
) -> list[dict[str, Any]]:
    """Pure: the ``monitoring/alerts_sent`` rows of one accepted alert, one per reason."""
    return [
        {"reason_key": key, "reason": text, "sent_at": sent_at, "run_id": run_id, "status": int(status),
         PARTITION_COLUMN: ds}
        for key, text in zip(keys, texts, strict=True)
    ]


def sent_reason_keys(lake: Lake, ds: str) -> set[str]:
    """The keys of the reasons already sent for day ``ds``."""
    if not lake.has_partition(ALERTS_SENT, ds):
        return set()
    return {str(k) for k in lake.read_partition(ALERTS_SENT, ds, columns=["reason_key"]).column("reason_key").to_pylist()}


def send_day_alert(
    settings: Settings,
    day: dt.date,
    ctx: RunContext,
    drift: Mapping[str, Any],
    performance: Mapping[str, Any],
    send: Send,
) -> AlertOutcome:
    """Send the reasons of ``day`` not sent yet through ``send``, then record them.

    ``send`` is called only when there is something to send (it may raise to say no
    channel is configured). An error of it (unreachable, refused) propagates with nothing
    recorded.
    """
    ds = day.isoformat()
    lake = Lake(settings)
    reasons = alerts.day_reasons(drift, performance)
    if not reasons:
        return AlertOutcome(ds=ds, sent=False, status=None, reasons=[], already_sent=[],
                            detail="drift and realised performance within their limits")
    sent = sent_reason_keys(lake, ds)
    already = [r.key for r in reasons if r.key in sent]
    payload = alerts.alert_payload(ds, drift, performance, dag_id=ctx.dag_id, run_id=ctx.run_id, already_sent=sent)
    if payload is None:
        log.info("alert of %s: every reason was sent already (%s)", ds, already)
        return AlertOutcome(ds=ds, sent=False, status=None, reasons=[], already_sent=already,
                            detail="every reason of the day was sent already")
    inputs = {name: int(record["history_version"]) for name, record in
              ((DRIFT_HISTORY.name, drift), (PERFORMANCE_HISTORY.name, performance))
              if record.get("history_version") is not None}
    status = _deliver(settings, lake, ds, ctx, payload, send, inputs)
    return AlertOutcome(ds=ds, sent=True, status=status, reasons=list(payload["reasons"]), already_sent=already,
                        detail=f"HTTP {status}")


def send_volume_alert(
    settings: Settings, check: Mapping[str, Any], ctx: RunContext, send: Send, inputs: Mapping[str, int]
) -> AlertOutcome:
    """Send the volume alert of ``check`` (``VolumeCheck.as_dict()``) unless it was sent already, then record it."""
    ds = str(check["ds"])
    lake = Lake(settings)
    sent = sent_reason_keys(lake, ds)
    payload = alerts.volume_payload(check, dag_id=ctx.dag_id, run_id=ctx.run_id, already_sent=sent)
    if payload is None:
        detail = "within the band" if not check.get("alert") else "sent already"
        return AlertOutcome(ds=ds, sent=False, status=None, reasons=[], already_sent=sorted(sent), detail=detail)
    status = _deliver(settings, lake, ds, ctx, payload, send, inputs)
    return AlertOutcome(ds=ds, sent=True, status=status, reasons=list(payload["reasons"]), already_sent=[],
                        detail=f"HTTP {status}")


def _deliver(
    settings: Settings, lake: Lake, ds: str, ctx: RunContext, payload: dict[str, Any], send: Send,
    inputs: Mapping[str, int],
) -> int:
    """Send ``payload``; once it was accepted, record its reasons in ``monitoring/alerts_sent`` ds."""
    payload["use_case"] = settings.use_case_name
    try:
        status = send(payload)
    except Exception:
        log.warning("ALERT of %s not sent: %s", ds, payload["text"])
        raise
    rows = sent_rows(ds, payload["reason_keys"], payload["reasons"], status=status, run_id=ctx.run_id,
                     sent_at=dt.datetime.now(dt.UTC))  # an audit time, not business logic
    # History, appended to: a concurrent run of the same day cannot drop a record of this one.
    lake.append_rows(ALERTS_SENT, ds, rows, ("reason_key",), ctx.lineage(ds, dict(inputs)))
    return status
