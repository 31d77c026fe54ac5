"""A person's answer to a promotion that awaits approval (``gate.approval.required``).

weekly_retrain records the decision of a model the gate would promote as ``awaiting``
(:func:`sluice.stages.retrain.awaiting_approval`) and moves no alias. Its
``approve_promotion`` task (Airflow's ``ApprovalOperator``) shows :func:`request` and waits;
``settle_approval`` then calls :func:`settle` with the answer:

* **approved**: the model becomes champion (``champion`` alias; the one it replaces keeps
  ``previous-champion``) from the day after the decision, or from the day of the answer if
  that is later (days scored before the answer keep the model they were scored with), and
  ``models/promotions`` records who approved it;
* **rejected** or **timed out** (no answer within ``gate.approval.timeout_hours``): the champion
  stays.

Either way the answer is a row of its own in ``models/decisions`` (``approval_state``,
``approved_by``, the comment in ``reason``): the row that asked stays as it was. A retry of
``settle_approval`` finds its row and adds nothing; a promotion recorded after the request
(by hand, a rollback) is not undone by approving an older request.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from sluice.core import usecase
from sluice.core.approval import ANSWERS, ApprovalError, ApprovalResponse, card_section
from sluice.core.approval import request as request_text
from sluice.core.lineage import RunContext
from sluice.core.shadow import with_card_section
from sluice.edges.lake import Lake
from sluice.edges.registry import Registry
from sluice.settings import Settings
from sluice.stages.promotions import effective_day, history, record_promotion
from sluice.stages.retrain import DECISION_KEY, recorded_decisions
from sluice.tables import MODEL_DECISIONS, PARTITION_COLUMN

log = logging.getLogger(__name__)


def request(settings: Settings, pending: dict[str, Any], card_url: str | None = None) -> tuple[str, str]:
    """Subject and Markdown body of the approval request of ``pending``
    (:func:`sluice.stages.retrain.awaiting_approval`): the gate decision and the model card."""
    uc = usecase.of(settings)
    asked = _asked(recorded_decisions(Lake(settings), pending["ds"], pending["model_version"]), pending)
    card = Registry(settings).model_card(pending["model_version"])
    return request_text(
        use_case=uc.name, model=settings.model, version=pending["model_version"], champion=asked["champion_version"],
        ds=pending["ds"], decision=json.loads(asked["decision_json"] or "{}"), reason=asked["reason"], card=card,
        card_url=card_url,
    )


def _asked(rows: list[dict[str, Any]], pending: dict[str, Any]) -> dict[str, Any]:
    """The decision row of ``pending`` that asked, among the decision rows of its model and day."""
    rows = [r for r in rows if r["run_id"] == pending["run_id"] and r["approval_state"] == "awaiting"]
    if not rows:
        raise ApprovalError(f"v{pending['model_version']} as of {pending['ds']} awaits no approval of run "
                            f"{pending['run_id']} in {MODEL_DECISIONS.name}")
    return rows[0]


def settle(settings: Settings, pending: dict[str, Any], response: ApprovalResponse, ctx: RunContext) -> dict[str, Any]:
    """Record the answer to ``pending`` and, when approved, promote; safe to repeat."""
    lake = Lake(settings)
    registry = Registry(settings)
    uc = usecase.of(settings)
    timeout_hours = uc.spec.gate.approval.timeout_hours
    ds, version = pending["ds"], pending["model_version"]
    rows = recorded_decisions(lake, ds, version)
    asked = _asked(rows, pending)
    answered = [r for r in rows if r["run_id"] == asked["run_id"] and r["approval_state"] in ANSWERS]
    if answered:
        row = answered[0]
        if row["promoted"]:  # the try that recorded the answer may have died before the promotion record
            _record(lake, row, asked, asked["champion_version"], response, ctx)
        log.info("v%s as of %s was answered already: %s", version, ds, row["approval_state"])
        return _result(row, already=True)

    said = response.describe(timeout_hours)
    promoted = response.approved
    reason = f"{said}. Gate: {asked['reason']}"
    later = [r for r in history(lake) if r["recorded_at"] > asked["recorded_at"]]
    if promoted and later:
        promoted = False
        reason = (f"{said}; superseded: v{later[-1]['model_version']} was made champion from "
                  f"{later[-1][PARTITION_COLUMN]} after this was asked: the alias stays. Gate: {asked['reason']}")
    previous = None
    if promoted:
        moved_from = registry.promote(version)
        previous = asked["champion_version"] if moved_from == version else moved_from
    registry.tag(version, {"approval.state": response.state, "approval.by": response.by or "",
                           "approval.comment": response.comment[:4000]})
    row = dict(asked) | {
        "promoted": promoted,
        "reason": reason,
        "run_id": asked["run_id"],  # the retraining's run: the answer belongs to its decision
        "recorded_at": dt.datetime.now(dt.UTC),  # an audit time, not business logic
        "approval_state": response.state,
        "approved_by": response.by,
        "shadow_state": {"passed": "promoted" if promoted else "retired"}.get(asked["shadow_state"],
                                                                            asked["shadow_state"]),
    }
    lake.append_rows(MODEL_DECISIONS, ds, [row], DECISION_KEY, ctx.lineage(ds, {}, model_version=version))
    if promoted:
        _record(lake, row, asked, previous, response, ctx)
    card = registry.model_card(version)
    if card is not None:
        registry.write_model_card(version, with_card_section(card, card_section(response, timeout_hours)))
    log.info("v%s as of %s: %s", version, ds, reason)
    return _result(row, already=False)


def _record(lake: Lake, row: dict[str, Any], asked: dict[str, Any], previous: str | None,
            response: ApprovalResponse, ctx: RunContext) -> None:
    """The promotion of an approved model in the champion's history (once per run and version): from
    the day after the decision, or the day of the answer when later."""
    record_promotion(
        lake, max(effective_day(asked[PARTITION_COLUMN]), response.at.date().isoformat()), row["model_version"],
        previous, forced=bool(asked["forced"]), reason=row["reason"], ctx=RunContext(ctx.dag_id, asked["run_id"]),
        decision_ds=asked[PARTITION_COLUMN], approved_by=row["approved_by"],
    )


def _result(row: dict[str, Any], *, already: bool) -> dict[str, Any]:
    return {"ds": row[PARTITION_COLUMN], "model_version": row["model_version"], "approval": row["approval_state"],
            "approved_by": row["approved_by"], "promoted": bool(row["promoted"]), "reason": row["reason"],
            "answered_before": already}
