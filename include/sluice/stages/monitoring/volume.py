"""ingest_raw's volume check of day D: raw rows against the median of the trailing days.

The verdict (:func:`sluice.core.volume.check_volume`) replaces ``monitoring/volume_history``
D, so a re-run (after the source delivered the rest of the day) corrects it. Outside the
band it is logged and sent through the alert channels (webhook, Slack), at most once per day
(``monitoring/alerts_sent``, key ``volume:D``); it fails the task only when the use case
says so (``contract.volume.fail``), and then after the alert.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pyarrow as pa

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.core.volume import VolumeError, check_volume, trailing_counts
from sluice.edges.lake import Lake, LakeError
from sluice.settings import Settings
from sluice.stages.monitoring.alerting import Send, send_volume_alert
from sluice.tables import PARTITION_COLUMN, VOLUME_HISTORY

log = logging.getLogger(__name__)


def check_day_volume(settings: Settings, day: dt.date, ctx: RunContext, send: Send) -> dict[str, Any]:
    """Judge the raw rows of ``day``, record the verdict, alert (and fail, if the use case says) outside the band."""
    uc = usecase.of(settings)
    spec = uc.spec.contract.volume
    lake = Lake(settings)
    ds = day.isoformat()
    raw = uc.tables.raw
    raw_version = lake.version(raw)
    counts = lake.partition_rows(raw, version=raw_version) if raw_version is not None else {}
    if ds not in counts:
        raise LakeError(f"{raw.name} has no partition {ds}: run ingest_raw's extract_events for {ds} first")
    check = check_volume(ds, counts[ds], trailing_counts(counts, day, spec), spec)
    row = {k: v for k, v in check.as_dict().items() if k in VOLUME_HISTORY.schema.names and k != "ds"}
    row.update(raw_version=raw_version, **{PARTITION_COLUMN: ds})
    version = lake.write_partition(
        VOLUME_HISTORY, ds, pa.Table.from_pylist([row], schema=VOLUME_HISTORY.schema),
        ctx.lineage(ds, {raw.name: int(raw_version or 0)}),
    )
    result: dict[str, Any] = {**check.as_dict(), "history_version": version, "alert_sent": False}
    if not check.alert:
        log.info("volume %s: %s", ds, check.message())
        return result
    log.warning("VOLUME %s %s: %s", uc.name, check.verdict, check.message())
    try:
        outcome = send_volume_alert(settings, check.as_dict(), ctx, send, {VOLUME_HISTORY.name: version})
        result["alert_sent"] = outcome["sent"]
    finally:
        if spec.fail:
            raise VolumeError(
                f"{raw.name} {ds}: {check.message()} (contract.volume of {uc.name} fails the day; re-run "
                f"ingest_raw for {ds} once the source delivered it, or set contract.volume.fail: false)"
            )
    return result


def days_outside_band(lake: Lake) -> list[dict[str, Any]]:
    """The days ``monitoring/volume_history`` holds outside their band, oldest first (for status)."""
    if not lake.exists(VOLUME_HISTORY):
        return []
    rows = lake.read_table(VOLUME_HISTORY).to_pylist()
    return sorted((r for r in rows if r["verdict"] in ("low", "high")), key=lambda r: r[PARTITION_COLUMN])
