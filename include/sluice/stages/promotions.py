"""The champion's history: who was champion from which day, and why.

Every promotion (by the gate, forced, by hand or by a rollback) is a row of
``models/promotions`` in partition ds = the day it takes effect, so that scoring a
past day can use the model that was champion on that day.

A gate decision as of day D (weekly_retrain for the week ending D, or an early retrain
after drift_report D) takes effect on D+1. D's scores are made with the champion before
it, so the result does not depend on whether batch_score D or the retraining finishes
first (both are due at the same midnight), and a drift report of D never sees D's scores
credited to a model promoted afterwards. A promotion by hand or a rollback takes effect
on the day it is made (that day is scored the next night).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry, RegistryError
from sluice.settings import Settings
from sluice.tables import MODEL_PROMOTIONS, PARTITION_COLUMN

log = logging.getLogger(__name__)


def effective_day(decision_ds: str) -> str:
    """The day a gate decision as of ``decision_ds`` makes its model champion: the next one."""
    return (dt.date.fromisoformat(decision_ds) + dt.timedelta(days=1)).isoformat()


def record_promotion(
    lake: Lake,
    ds: str,
    version: str,
    previous: str | None,
    *,
    forced: bool,
    reason: str,
    ctx: RunContext,
    decision_ds: str | None = None,
    approved_by: str | None = None,
) -> int | None:
    """Append a promotion to the history of day ``ds`` (a re-run of the same run adds nothing)."""
    row = {
        "model_version": str(version),
        "previous_version": previous,
        "forced": forced,
        "reason": reason,
        "decision_ds": decision_ds,
        "run_id": ctx.run_id,
        "recorded_at": dt.datetime.now(dt.UTC),  # an audit time, not business logic
        "approved_by": approved_by,
        PARTITION_COLUMN: ds,
    }
    return lake.append_rows(MODEL_PROMOTIONS, ds, [row], ("run_id", "model_version"), ctx.lineage(ds, {}))


def verdict(decision: Mapping[str, Any]) -> str:
    """A row of ``models/decisions`` in words: what the gate decided and what was done."""
    approval = decision.get("approval_state")
    if approval == "awaiting":
        return "awaiting approval"
    if approval == "approved":
        return f"promoted (approved by {decision.get('approved_by')})" if decision["promoted"] else \
            f"approved by {decision.get('approved_by')}, not promoted"
    if approval == "rejected":
        return f"not promoted (rejected by {decision.get('approved_by')})"
    if approval == "timed out":
        return "not promoted (no approval in time)"
    if decision["dry_run"]:
        return "dry run: would promote" if decision["promote"] else "dry run: would not promote"
    if decision["promoted"]:
        return "promoted (forced)" if decision["forced"] else "promoted"
    return "not promoted"


def history(lake: Lake) -> list[dict]:
    """Every promotion in the order it took effect (day, then time recorded); a row recorded twice
    (two tries of one run racing) counts once."""
    if not lake.exists(MODEL_PROMOTIONS):
        return []
    rows = sorted(lake.read_table(MODEL_PROMOTIONS).to_pylist(), key=lambda r: (r[PARTITION_COLUMN], r["recorded_at"]))
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for row in rows:
        key = (row[PARTITION_COLUMN], row["run_id"], row["model_version"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def champion_on(lake: Lake, day: dt.date) -> str | None:
    """The version that was champion on ``day``: the last promotion recorded by then."""
    rows = [r for r in history(lake) if r[PARTITION_COLUMN] <= day.isoformat()]
    return rows[-1]["model_version"] if rows else None


def challenger_on(lake: Lake, day: dt.date) -> str | None:
    """The version in shadow on ``day``: the newest model decided before it, when it is not the champion.

    Every retraining makes its model the challenger (promoted or not), unless the use case
    requires shadow evidence: then only a model that passed the offline gate, and only while no
    other is still collecting its evidence (``shadow_state`` of the decisions). A decision as of
    D takes effect on D+1, as a promotion does. Read from the decision records, so that a re-run or a
    backfill of ``day`` shadows the model of its own time, not today's.
    """
    from sluice.tables import MODEL_DECISIONS

    if not lake.exists(MODEL_DECISIONS):
        return None
    columns = ["model_version", "recorded_at", "shadow_state", "dry_run", PARTITION_COLUMN]
    decided = [r for r in lake.read_table(MODEL_DECISIONS, columns=columns).to_pylist()
               if effective_day(r[PARTITION_COLUMN]) <= day.isoformat()]
    current = None
    for row in sorted(decided, key=lambda r: (r[PARTITION_COLUMN], r["recorded_at"])):
        state = row["shadow_state"]
        if state is not None and row["dry_run"]:
            continue  # a dry run of a gate that requires shadow evidence changes nothing
        if state in (None, "challenger"):  # (None: the offline gate alone decides; every model is shadowed)
            current = row["model_version"]
        elif state in ("promoted", "retired", "passed") and current == row["model_version"]:
            current = None
        # waiting, rejected: the model in shadow stays
    return None if current == champion_on(lake, day) else current


def shadow_days(lake: Lake, as_of: str | None = None) -> list[dict[str, Any]]:
    """The paired live days of ``monitoring/shadow_performance``, oldest first; with ``as_of``, only
    those evaluated by then (a decision of an old week sees only its past)."""
    from sluice.tables import SHADOW_PERFORMANCE

    if not lake.exists(SHADOW_PERFORMANCE):
        return []
    rows = sorted(lake.read_table(SHADOW_PERFORMANCE).to_pylist(), key=lambda r: r[PARTITION_COLUMN])
    return rows if as_of is None else [r for r in rows if r["evaluated_on"] <= as_of]


def shadow_status(lake: Lake, spec: Any, today: dt.date) -> tuple[str | None, Any, list[dict[str, Any]]]:
    """The model in shadow now (else the one of the newest paired day), its evidence under the use
    case's ``gate.shadow`` spec, and every paired live day, oldest first."""
    from sluice.core.shadow import evidence_under

    rows = shadow_days(lake)
    challenger = challenger_on(lake, today) or (rows[-1]["challenger_version"] if rows else None)
    return challenger, None if challenger is None else evidence_under(spec, rows, challenger), rows


def promote_by_hand(settings: Settings, version: str, reason: str, today: dt.date) -> tuple[str | None, str]:
    if not reason.strip():
        raise RegistryError("a manual promotion needs a reason")
    registry = Registry(settings)
    registry.version(version)  # fails clearly if it does not exist
    current = registry.by_alias(CHAMPION)
    if current is not None and current.version == str(version):
        raise RegistryError(f"v{version} is already the champion: nothing to promote")
    previous = registry.promote(version)
    registry.tag(version, {"promotion.manual_reason": reason})
    record_promotion(
        Lake(settings), today.isoformat(), version, previous, forced=True, reason=f"manual: {reason}",
        ctx=RunContext("sluice-cli", f"promote-{version}-{uuid.uuid4().hex[:8]}"),
    )
    return previous, version


def rollback(settings: Settings, reason: str, today: dt.date) -> tuple[str, str]:
    if not reason.strip():
        raise RegistryError("a rollback needs a reason")
    registry = Registry(settings)
    old, new = registry.rollback()
    record_promotion(
        Lake(settings), today.isoformat(), new, old, forced=True, reason=f"rollback: {reason}",
        ctx=RunContext("sluice-cli", f"rollback-to-{new}-{uuid.uuid4().hex[:8]}"),
    )
    log.info("rolled back %s: champion %s -> %s", CHAMPION, old, new)
    return old, new
