"""Alerts (the drift report's, the volume check's): a JSON payload POSTed to a webhook (Slack, Teams, a pager...).

No Airflow and no HTTP library here: the DAG looks the webhook up in its connection
and calls :func:`send_alert`; :func:`alert_payload` says whether there is anything to send.
Each reason carries a key that a re-run of the same day finds again (:func:`day_reasons`),
so that ``sluice.stages.monitoring.alerting`` sends every reason at most once.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

log = logging.getLogger(__name__)

ALERT_CONNECTION_ID = "sluice_alert_webhook"


class AlertError(RuntimeError):
    """The webhook could not be reached or refused the alert."""


@dataclass(frozen=True)
class AlertReason:
    """One reason to alert. ``key`` names the kind of alert and the day it is about: the same on
    every re-run of that day, unlike ``text``, which carries the numbers of the run."""

    key: str
    text: str


def day_reasons(drift: Mapping[str, Any] | None, performance: Mapping[str, Any] | None) -> list[AlertReason]:
    """Pure: one reason per alert raised by the day's drift summary and performance record."""
    reasons = []
    if drift and drift.get("alert"):
        columns = list(drift.get("drifted_columns") or [])
        reasons.append(AlertReason(
            f"data_drift:{drift.get('ds')}",
            f"data drift on {drift.get('ds')}: {float(drift['drift_share']):.0%} of {drift.get('n_columns')} feature "
            f"columns drifted (threshold {float(drift.get('threshold', 0)):.0%}): {', '.join(columns)}",
        ))
    if performance and performance.get("evaluated") and performance.get("alert"):
        reasons.append(AlertReason(
            f"performance:{performance.get('ds')}",
            f"realised ROC-AUC {float(performance['roc_auc']):.3f} of model v{performance.get('model_version')} "
            f"on {performance.get('ds')} (evaluated on {performance.get('evaluated_on')}) is below the floor "
            f"{float(performance.get('roc_auc_floor', 0)):.3f}",
        ))
    return reasons


def volume_reason(check: Mapping[str, Any]) -> AlertReason | None:
    """Pure: the reason to alert of a volume check (``VolumeCheck.as_dict()``), None within its band."""
    if not check.get("alert"):
        return None
    return AlertReason(f"volume:{check.get('ds')}", f"volume {check.get('verdict')}: {check.get('message')}")


def volume_payload(
    check: Mapping[str, Any], *, dag_id: str, run_id: str | None = None, already_sent: Collection[str] = ()
) -> dict[str, Any] | None:
    """Pure: the JSON body of a volume alert (the same shape as :func:`alert_payload`'s), or None."""
    reason = volume_reason(check)
    if reason is None or reason.key in already_sent:
        return None
    ds = check.get("ds")
    return {
        "text": f"[sluice] {dag_id} {ds}: {reason.text}",
        "source": "sluice",
        "dag_id": dag_id,
        "run_id": run_id,
        "ds": ds,
        "reasons": [reason.text],
        "reason_keys": [reason.key],
        "volume": {k: check.get(k) for k in ("rows", "baseline_days", "median", "ratio", "low", "high", "verdict")},
    }


def failure_payload(
    *, dag_id: str, task_id: str, run_id: str, ds: str | None, try_number: int | None, error: str | None,
    log_url: str | None = None,
) -> dict[str, Any]:
    """Pure: the JSON body that says a task failed (on_failure_callback), in the shape of the others."""
    day = f" for {ds}" if ds else ""
    why = f": {error}" if error else ""
    attempt = f" (attempt {try_number})" if try_number else ""
    text = f"[sluice] {dag_id}.{task_id} failed{day}{attempt}{why}"
    return {
        "text": text[:3000],  # chat webhooks cap a message; the log has the rest
        "source": "sluice",
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "ds": ds,
        "reasons": [text[:3000]],
        "reason_keys": [f"task_failed:{dag_id}.{task_id}:{run_id}:{try_number}"],
        "failure": {"try_number": try_number, "error": (error or "")[:3000], "log_url": log_url},
    }


def deadline_payload(
    *, dag_id: str, run_id: str, ds: str | None, state: str | None, due: str | None, minutes: float, use_case: str,
) -> dict[str, Any]:
    """Pure: the JSON body that says a run missed its deadline (Airflow's Deadline Alert)."""
    day = f" for {ds}" if ds else ""
    text = (f"[sluice] {dag_id}{day} is late: not done by {due or '?'} ({minutes:g} min after it was queued; "
            f"run {run_id}, {state or 'state unknown'})")
    return {
        "text": text,
        "source": "sluice",
        "dag_id": dag_id,
        "run_id": run_id,
        "ds": ds,
        "use_case": use_case,
        "reasons": [text],
        "reason_keys": [f"deadline:{dag_id}:{run_id}"],
        "deadline": {"due": due, "minutes": minutes, "state": state},
    }


def alert_reasons(drift: Mapping[str, Any] | None, performance: Mapping[str, Any] | None) -> list[str]:
    """Pure: one sentence per alert raised by the day's drift summary and performance record."""
    return [reason.text for reason in day_reasons(drift, performance)]


def alert_payload(
    ds: str,
    drift: Mapping[str, Any] | None,
    performance: Mapping[str, Any] | None,
    *,
    dag_id: str = "drift_report",
    run_id: str | None = None,
    already_sent: Collection[str] = (),
) -> dict[str, Any] | None:
    """Pure: the JSON body of the day's alert, or None when nothing is wrong (or nothing new).

    ``text`` is what chat webhooks display; the rest is for machines. Reasons whose key is
    in ``already_sent`` are left out; ``reason_keys`` lists the keys of those sent, in order.
    """
    pending = [r for r in day_reasons(drift, performance) if r.key not in already_sent]
    if not pending:
        return None
    reasons = [r.text for r in pending]
    keep_drift = ("drift_share", "n_columns", "drifted_columns", "prediction_drifted", "model_version", "report_uri",
                  "threshold", "alert")
    keep_perf = ("ds", "model_version", "roc_auc", "pr_auc", "rows", "evaluated_on", "roc_auc_floor", "alert")
    return {
        "text": f"[sluice] {dag_id} {ds}: " + "; ".join(reasons),
        "source": "sluice",
        "dag_id": dag_id,
        "run_id": run_id,
        "ds": ds,
        "reasons": reasons,
        "reason_keys": [r.key for r in pending],
        "drift": {k: drift.get(k) for k in keep_drift} if drift else None,
        "performance": {k: performance.get(k) for k in keep_perf} if performance and performance.get("evaluated")
        else None,
    }


def webhook_url(
    *,
    conn_type: str | None,
    host: str | None,
    port: int | None = None,
    schema: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The webhook URL held by a connection: ``extra["url"]`` if set, else built from its fields.

    ``AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK='https://hooks.example.com/services/T0/B0/x'``
    parses to conn_type ``https``, host ``hooks.example.com``, schema ``services/T0/B0/x``;
    an HTTP-style connection may also carry the scheme in its host (``https://hooks...``).
    """
    extra = extra or {}
    if extra.get("url"):
        url = str(extra["url"])
    elif not host:
        raise ValueError("the webhook connection has neither a host nor extra.url")
    else:
        if "://" in host:
            base = host.rstrip("/")
        else:
            scheme = conn_type if conn_type in ("http", "https") else str(extra.get("scheme") or "https")
            base = f"{scheme}://{host}"
        if port and not urlparse(base).port:
            base = f"{base}:{int(port)}"
        url = f"{base}/{quote(schema.lstrip('/'), safe='/?=&%:+~-._')}" if schema else base
    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        raise ValueError(f"the webhook URL must be http(s)://host/...; got {urlparse(url).scheme}://...")
    return url


def send_alert(url: str, payload: Mapping[str, Any], *, timeout: float | None = None) -> int:
    """POST ``payload`` as JSON to ``url``; returns the HTTP status, raises :class:`AlertError` otherwise.

    ``timeout`` (seconds) bounds the connection and every read; default ``SLUICE_TIMEOUT_HTTP_S``.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise ValueError("alerts go to http(s) URLs only")
    if timeout is None:
        from sluice.settings import load_settings

        timeout = load_settings().timeouts.http_s
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "sluice-alerts"}
    )
    host = urlparse(url).netloc  # never log the path: chat webhooks keep their secret there
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise AlertError(f"webhook at {host} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise AlertError(f"webhook at {host} unreachable: {exc}") from exc
    log.info("alert sent to %s: HTTP %d, %d bytes", host, status, len(body))
    return status
