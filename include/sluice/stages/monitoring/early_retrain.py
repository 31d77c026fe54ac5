"""Early retraining: when drift persists, retrain before the weekly schedule would.

:func:`should_retrain_early` (pure) decides from the drift history; a trigger is
remembered in ``monitoring/early_retrains`` for the cooldown (it survives restarts
and backfills).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.settings import Settings
from sluice.stages.monitoring.policy import DriftPolicy
from sluice.tables import DRIFT_HISTORY, EARLY_RETRAINS, PARTITION_COLUMN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainDecision:
    trigger: bool
    reason: str
    drift_days: list[str]


def should_retrain_early(
    history_rows: Iterable[Mapping[str, Any]],
    today: dt.date,
    *,
    k: int = 3,
    n: int = 5,
    cooldown_days: int = 7,
    last_trigger: dt.date | None = None,
    threshold: float = 0.3,
) -> RetrainDecision:
    """Pure: retrain early when drift share > ``threshold`` on ``k`` of the ``n`` days up to
    ``today`` (a day without a report does not count), unless the last early retraining
    (on or before ``today``) was less than ``cooldown_days`` ago."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if last_trigger is not None and last_trigger > today:
        raise ValueError(f"last trigger {last_trigger} is after {today}: pass the last one on or before it")
    first = today - dt.timedelta(days=n - 1)
    over = sorted(
        {
            str(r[PARTITION_COLUMN])
            for r in history_rows
            if first <= dt.date.fromisoformat(str(r[PARTITION_COLUMN])) <= today
            and r.get("drift_share") is not None
            and float(r["drift_share"]) > threshold
        }
    )
    window = f"{first.isoformat()}..{today.isoformat()}"
    if len(over) < k:
        return RetrainDecision(False, f"drift over {threshold} on {len(over)} of the {n} days {window}; needs {k}", over)
    if last_trigger is not None and (today - last_trigger).days < cooldown_days:
        again = last_trigger + dt.timedelta(days=cooldown_days)
        return RetrainDecision(
            False,
            f"drift over {threshold} on {len(over)} of the {n} days {window}, but an early retraining was "
            f"triggered on {last_trigger} (cooldown {cooldown_days} days: not before {again})",
            over,
        )
    return RetrainDecision(True, f"drift over {threshold} on {len(over)} of the {n} days {window}: {over}", over)


def last_early_retrain(lake: Lake, today: dt.date) -> dt.date | None:
    """The last day on or before ``today`` an early retraining was triggered."""
    days = [d for d in lake.partitions(EARLY_RETRAINS) if d <= today.isoformat()]
    return dt.date.fromisoformat(days[-1]) if days else None


def decide_early_retrain(settings: Settings, day: dt.date, policy: DriftPolicy | None = None) -> dict[str, Any]:
    """Read the drift history and the last early trigger; decide (see :func:`should_retrain_early`)."""
    policy = policy or settings.drift
    lake = Lake(settings)
    first = (day - dt.timedelta(days=policy.drift_retrain_n - 1)).isoformat()
    days = [d for d in lake.partitions(DRIFT_HISTORY) if first <= d <= day.isoformat()]
    rows = (
        lake.read_partitions(DRIFT_HISTORY, days, columns=["drift_share", "model_version", PARTITION_COLUMN]).to_pylist()
        if days
        else []
    )
    last = last_early_retrain(lake, day)
    decision = should_retrain_early(
        rows, day, k=policy.drift_retrain_k, n=policy.drift_retrain_n, cooldown_days=policy.drift_retrain_cooldown_days,
        last_trigger=last, threshold=policy.drift_share_threshold,
    )
    log.info("early retraining for %s: %s (%s)", day, decision.trigger, decision.reason)
    today_rows = [r for r in rows if r[PARTITION_COLUMN] == day.isoformat()]
    return {
        "ds": day.isoformat(),
        **asdict(decision),
        "last_trigger": last.isoformat() if last else None,
        "model_version": today_rows[0]["model_version"] if today_rows else None,
    }


def record_early_retrain(
    settings: Settings, day: dt.date, ctx: RunContext, decision: Mapping[str, Any], triggered_dag_id: str,
    triggered_run_id: str,
) -> int:
    """Remember the trigger of day D (a re-run replaces it): the cooldown starts here."""
    ds = day.isoformat()
    row = {
        "model_version": decision.get("model_version"),
        "drift_days": json.dumps(list(decision.get("drift_days") or [])),
        "reason": str(decision.get("reason", "")),
        "triggered_dag_id": triggered_dag_id,
        "triggered_run_id": triggered_run_id,
        "run_id": ctx.run_id,
        "recorded_at": dt.datetime.now(dt.UTC),  # an audit time, not business logic
        PARTITION_COLUMN: ds,
    }
    return Lake(settings).write_partition(
        EARLY_RETRAINS, ds, pa.Table.from_pylist([row], schema=EARLY_RETRAINS.schema), ctx.lineage(ds, {})
    )
