"""A person's approval of a promotion (``gate.approval.required``): the request they read, their answer.

Pure: the request is Markdown built from the gate decision and the model card; the answer
is what Airflow's Human-in-the-loop operator returns (``chosen_options``, ``params_input``,
``responded_by_user``, ``responded_at``), read into :class:`ApprovalResponse`. The lake, the
registry and Airflow are at the edges (:mod:`sluice.stages.approval`,
:mod:`sluice.orchestration.approval`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

APPROVE, REJECT = "Approve", "Reject"  # the options of Airflow's ApprovalOperator
COMMENT = "comment"  # the form field of the request: why the person decided as they did

# The states of models/decisions.approval_state: asked, then one row for the answer.
AWAITING = "awaiting"
APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed out"
ANSWERS = (APPROVED, REJECTED, TIMED_OUT)


class ApprovalError(RuntimeError):
    """Nothing awaits approval where an answer was given, or the answer cannot be read."""


@dataclasses.dataclass(frozen=True)
class ApprovalResponse:
    """One answer to a request: approved or not, by whom (None: nobody answered in time), when, why."""

    approved: bool
    by: str | None
    at: dt.datetime
    comment: str = ""

    @property
    def state(self) -> str:
        if self.by is None:
            return TIMED_OUT
        return APPROVED if self.approved else REJECTED

    @classmethod
    def from_hitl(cls, payload: Mapping[str, Any] | None) -> ApprovalResponse:
        """Read what the HITL operator returned; the timeout's default answer has no user."""
        if not payload or not payload.get("chosen_options"):
            raise ApprovalError(f"no answer in the approval task's result: {payload!r}")
        chosen = list(payload["chosen_options"])
        if chosen not in ([APPROVE], [REJECT]):
            raise ApprovalError(f"an approval is {APPROVE!r} or {REJECT!r}, got {chosen!r}")
        user = payload.get("responded_by_user") or None
        by = None
        if user is not None:
            by = str(user.get("name") or user.get("id")) if isinstance(user, Mapping) else str(user)
        at = payload.get("responded_at")
        if isinstance(at, str):
            at = dt.datetime.fromisoformat(at)
        if not isinstance(at, dt.datetime):
            raise ApprovalError(f"the answer has no time: {payload!r}")
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        comment = str((payload.get("params_input") or {}).get(COMMENT) or "").strip()
        # A timeout answers with the defaults (Reject): never an approval, whatever they were.
        return cls(approved=by is not None and chosen == [APPROVE], by=by, at=at, comment=comment)

    def describe(self, timeout_hours: float | None = None) -> str:
        if self.state == TIMED_OUT:
            within = f" within {timeout_hours:g} h" if timeout_hours else ""
            return f"no answer{within} (at {self.at:%Y-%m-%d %H:%M} UTC): the champion stays"
        said = f": {self.comment}" if self.comment else ""
        return f"{self.state} by {self.by} at {self.at:%Y-%m-%d %H:%M} UTC{said}"


def request(
    *, use_case: str, model: str, version: str, champion: str | None, ds: str, decision: Mapping[str, Any],
    reason: str, card: str | None, card_url: str | None = None,
) -> tuple[str, str]:
    """The subject and Markdown body a person reads before they approve or reject."""
    subject = f"Promote {model} v{version} ({use_case}) to champion?"
    was = f"replaces champion v{champion}" if champion else "becomes the first champion"
    checks = "\n".join(
        f"| {c.get('name')} | {'pass' if c.get('passed') else 'FAIL'} | {c.get('reason') or ''} |"
        for c in decision.get("checks") or []
    ) or "| (none recorded) | | |"
    forced = decision.get("forced_reason")
    shadow = decision.get("shadow") or {}
    lines = [
        f"**v{version}** {was}. The gate as of **{ds}** would promote it"
        + (f", **forced**: {forced}" if forced else "") + ".",
        "",
        f"Reason recorded: {reason}" if reason else "",
        "",
        "| check | result | reason |",
        "|---|---|---|",
        checks,
    ]
    if shadow:
        lines += ["", f"Live days in shadow: {shadow.get('verdict')} over {shadow.get('days')} days "
                      f"({shadow.get('metric')})."]
    lines += ["", "**Approve** promotes it from the day after the decision (or today, if later); **Reject**, or "
                  "no answer in time, keeps the champion. Both are recorded with your name and comment."]
    if card_url:
        lines += ["", f"Model card in the Sluice view: {card_url}"]
    if card:
        lines += ["", "---", "", card]
    return subject, "\n".join(lines)


CARD_SECTION = "## Approval"


def card_section(response: ApprovalResponse, timeout_hours: float | None = None) -> str:
    """The model card's approval section: who decided, when, why."""
    said = response.describe(timeout_hours)
    return f"{CARD_SECTION}\n{said[0].upper()}{said[1:]}.\n"
