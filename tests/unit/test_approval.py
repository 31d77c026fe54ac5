"""A person's approval of a promotion (gate.approval.required): asked, answered, recorded, never rewritten.

Real lake (local Delta) and real MLflow (SQLite under tmp_path); the answers are what Airflow's
ApprovalOperator returns (its HITL payload), read by ApprovalResponse.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sluice.core.approval import ApprovalError, ApprovalResponse
from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, PREVIOUS, Registry
from sluice.settings import Settings, load_settings
from sluice.stages import approval, promotions, retrain
from sluice.tables import MODEL_DECISIONS, SHADOW_PERFORMANCE

UC = load_use_case("churn")
CARD = "# Model card: churn v{v}\n\n## Training data\n- rows\n\n## Known limits\n- none\n"


def _copy(tmp_path: Path, gate_extra: str) -> Path:
    folder = tmp_path / "approved" / "churn"  # (the folder's name is the use case's)
    shutil.copytree(UC.folder, folder)
    spec = folder / "usecase.yaml"
    text = spec.read_text()
    assert "  slice_min_rows: 300\n" in text
    spec.write_text(text.replace("  slice_min_rows: 300\n", f"  slice_min_rows: 300\n{gate_extra}"))
    return folder


def _settings(tmp_path: Path, folder: Path) -> Settings:
    return load_settings(lake_uri=str(tmp_path / "lake"), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                         use_cases=[str(folder)], use_case=str(folder), sim_customers=300)


@pytest.fixture
def approved(tmp_path: Path) -> Settings:
    """Churn with gate.approval.required (a 2-hour timeout), its own MLflow; the lake under tmp_path."""
    return _settings(tmp_path, _copy(tmp_path, "  approval: {required: true, timeout_hours: 2}\n"))


def _register(settings: Settings) -> str:
    """A registered version whose training run logged a model card (what retrain registers)."""
    import mlflow

    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        pass
    client = registry.client
    if not client.search_registered_models(f"name = '{settings.model}'"):
        client.create_registered_model(settings.model)
    version = str(client.create_model_version(settings.model, source=f"{run.info.artifact_uri}/model",
                                              run_id=run.info.run_id).version)
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_text(CARD.format(v=version), "model_card.md")
    return version


def _candidate(version: str, champion: str | None, *, promote: bool = True, forced: str | None = None
               ) -> retrain.Candidate:
    checks = [{"name": "floors", "passed": True, "reason": "roc_auc 0.81 >= 0.70"},
              {"name": "improvement", "passed": promote, "reason": "+0.012 over the champion" if promote else "noise"}]
    decision = {"promote": promote or forced is not None, "champion": champion, "challenger": version,
                "forced": forced is not None, "forced_reason": forced, "checks": checks,
                "reasons": [c["reason"] for c in checks if not c["passed"]]}
    return retrain.Candidate(version=version, mlflow_run_id="r", feature_table_version=0, training_data=f"t{version}",
                             decision=decision, holdout_roc_auc=0.81)


def ctx(ds: str) -> RunContext:
    return RunContext("churn__weekly_retrain", f"scheduled__{ds}")


def _finish(settings: Settings, ds: str, candidate: retrain.Candidate, *, dry_run: bool = False) -> dict:
    return retrain._finish(settings, Lake(settings), Registry(settings), ds, candidate, ctx(ds), dry_run=dry_run)


def answer(option: str, user: str | None, at: str = "2026-03-08T09:30:00+00:00", comment: str = "") -> dict:
    """What ApprovalOperator returns (HITLTriggerEventSuccessPayload): a timeout's default has no user."""
    return {"chosen_options": [option], "params_input": {"comment": comment}, "responded_at": at,
            "responded_by_user": None if user is None else {"id": user, "name": user}}


def _settle(settings: Settings, pending: dict, payload: dict) -> dict:
    return approval.settle(settings, pending, ApprovalResponse.from_hitl(payload), ctx(pending["ds"]))


def _decisions(settings: Settings, version: str) -> list[dict]:
    rows = [r for r in Lake(settings).read_table(MODEL_DECISIONS).to_pylist() if r["model_version"] == version]
    return sorted(rows, key=lambda r: r["recorded_at"])


def test_the_gate_asks_and_an_approval_promotes_with_the_name_in_both_records(approved: Settings) -> None:
    v1 = _register(approved)
    outcome = _finish(approved, "2026-03-07", _candidate(v1, None))
    assert not outcome["promoted"] and CHAMPION not in Registry(approved).aliases()
    pending = outcome["awaiting_approval"]
    assert pending == {"model_version": v1, "champion_version": None, "ds": "2026-03-07",
                       "run_id": "scheduled__2026-03-07", "forced": False, "reason": pending["reason"]}
    assert "awaiting approval" in pending["reason"]
    again = _finish(approved, "2026-03-07", _candidate(v1, None))  # a retry of the task: the same question
    assert again["decided_before"] and again["awaiting_approval"] == pending
    assert [r["approval_state"] for r in _decisions(approved, v1)] == ["awaiting"]
    assert promotions.verdict(_decisions(approved, v1)[0]) == "awaiting approval"

    subject, body = approval.request(approved, pending, card_url="http://airflow.test/sluice/cards/1")
    assert subject == f"Promote {approved.model} v{v1} (churn) to champion?"
    assert "becomes the first champion" in body and "| improvement | pass | +0.012 over the champion |" in body
    assert "# Model card: churn v1" in body and "http://airflow.test/sluice/cards/1" in body

    result = _settle(approved, pending, answer("Approve", "alice", comment="holdout and slices look right"))
    assert result["promoted"] and result["approval"] == "approved" and result["approved_by"] == "alice"
    assert Registry(approved).aliases()[CHAMPION] == v1
    lake = Lake(approved)
    [promotion] = promotions.history(lake)
    assert (promotion["ds"], promotion["model_version"], promotion["approved_by"], promotion["decision_ds"]) == (
        "2026-03-08", v1, "alice", "2026-03-07")
    assert promotion["reason"].startswith("approved by alice at 2026-03-08 09:30 UTC: holdout and slices look right")
    rows = _decisions(approved, v1)
    assert [(r["approval_state"], r["promoted"], r["approved_by"]) for r in rows] == [
        ("awaiting", False, None), ("approved", True, "alice")]  # the row that asked is not rewritten
    assert promotions.verdict(rows[1]) == "promoted (approved by alice)"
    card = Registry(approved).model_card(v1)
    assert card is not None and "## Approval\nApproved by alice at 2026-03-08 09:30 UTC" in card
    assert card.index("## Known limits") < card.index("## Approval")

    repeat = _settle(approved, pending, answer("Approve", "alice", comment="holdout and slices look right"))
    assert repeat["answered_before"] and len(promotions.history(lake)) == 1 and len(_decisions(approved, v1)) == 2
    assert _finish(approved, "2026-03-07", _candidate(v1, None))["awaiting_approval"] is None  # answered


def _with_champion(settings: Settings) -> str:
    v1 = _register(settings)
    pending = _finish(settings, "2026-02-28", _candidate(v1, None))["awaiting_approval"]
    _settle(settings, pending, answer("Approve", "alice", at="2026-03-01T08:00:00+00:00"))
    return v1


@pytest.mark.parametrize(("option", "user", "state", "verdict"), [
    ("Reject", "bob", "rejected", "not promoted (rejected by bob)"),
    ("Reject", None, "timed out", "not promoted (no approval in time)"),
], ids=["rejected", "timed-out"])
def test_a_rejection_or_no_answer_keeps_the_champion(
    approved: Settings, option: str, user: str | None, state: str, verdict: str
) -> None:
    v1 = _with_champion(approved)
    v2 = _register(approved)
    pending = _finish(approved, "2026-03-07", _candidate(v2, v1))["awaiting_approval"]
    assert pending["champion_version"] == v1
    result = _settle(approved, pending, answer(option, user, comment="the partner slice worries me"))
    assert not result["promoted"] and result["approval"] == state and result["approved_by"] == user
    assert Registry(approved).aliases()[CHAMPION] == v1
    assert [r["model_version"] for r in promotions.history(Lake(approved))] == [v1]
    rows = _decisions(approved, v2)
    assert [r["approval_state"] for r in rows] == ["awaiting", state] and promotions.verdict(rows[1]) == verdict
    card = Registry(approved).model_card(v2)
    assert card is not None and ("No answer within 2 h" if user is None else "Rejected by bob") in card


def test_an_answer_days_later_takes_effect_on_its_own_day_and_a_forced_run_asks_too(approved: Settings) -> None:
    v1 = _with_champion(approved)
    v2 = _register(approved)
    outcome = _finish(approved, "2026-03-07", _candidate(v2, v1, promote=False, forced="hotfix for the EU slice"))
    pending = outcome["awaiting_approval"]
    assert pending["forced"] and Registry(approved).aliases()[CHAMPION] == v1  # forced, and still asked
    _settle(approved, pending, answer("Approve", "carol", at="2026-03-11T17:00:00+00:00"))
    last = promotions.history(Lake(approved))[-1]
    assert (last["ds"], last["model_version"], last["previous_version"], last["forced"]) == ("2026-03-11", v2, v1, True)
    assert promotions.champion_on(Lake(approved), dt.date(2026, 3, 10)) == v1  # days scored before the answer
    assert Registry(approved).aliases()[PREVIOUS] == v1


def test_an_approval_does_not_undo_a_promotion_made_after_the_question(approved: Settings) -> None:
    v1 = _with_champion(approved)
    v2, v3 = _register(approved), _register(approved)
    pending = _finish(approved, "2026-03-07", _candidate(v2, v1))["awaiting_approval"]
    promotions.promote_by_hand(approved, v3, "incident fix", dt.date(2026, 3, 9))
    result = _settle(approved, pending, answer("Approve", "alice", at="2026-03-10T08:00:00+00:00"))
    assert result["approval"] == "approved" and not result["promoted"] and "superseded: v3" in result["reason"]
    assert Registry(approved).aliases()[CHAMPION] == v3
    assert promotions.verdict(_decisions(approved, v2)[-1]) == "approved by alice, not promoted"


def test_nothing_is_asked_for_a_dry_run_or_a_model_the_gate_rejects(approved: Settings) -> None:
    v1 = _with_champion(approved)
    v2, v3 = _register(approved), _register(approved)
    assert _finish(approved, "2026-03-07", _candidate(v2, v1), dry_run=True)["awaiting_approval"] is None
    assert _finish(approved, "2026-03-14", _candidate(v3, v1, promote=False))["awaiting_approval"] is None
    with pytest.raises(ApprovalError, match="awaits no approval"):
        _settle(approved, {"model_version": v3, "ds": "2026-03-14", "run_id": "scheduled__2026-03-14"},
                answer("Approve", "alice"))


def test_without_the_requirement_nothing_waits(tmp_path: Path) -> None:
    settings = load_settings(lake_uri=str(tmp_path / "lake"), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                             sim_customers=300)
    assert not load_use_case("churn").spec.gate.approval.required  # the default
    v1 = _register(settings)
    outcome = _finish(settings, "2026-03-07", _candidate(v1, None))
    assert outcome["promoted"] and outcome["awaiting_approval"] is None
    assert _decisions(settings, v1)[0]["approval_state"] is None


def test_a_challenger_that_passes_in_shadow_waits_for_approval_too(tmp_path: Path) -> None:
    settings = _settings(tmp_path, _copy(tmp_path, "  shadow: {required: true, min_days: 3}\n"
                                                   "  approval: {required: true}\n"))
    v1 = _with_champion(settings)
    v2, v3 = _register(settings), _register(settings)
    assert _finish(settings, "2026-03-07", _candidate(v2, v1))["shadow_state"] == "challenger"
    lake = Lake(settings)
    for i in range(3):  # three matured live days on which v2 beats v1
        ds = (dt.date(2026, 3, 8) + dt.timedelta(days=i)).isoformat()
        row = {"ds": ds, "challenger_version": v2, "champion_version": v1, "rows": 500, "positive_rate": 0.1,
               "champion_roc_auc": 0.80, "challenger_roc_auc": 0.82 + 0.001 * i, "champion_pr_auc": 0.5,
               "challenger_pr_auc": 0.52, "champion_log_loss": 0.4, "challenger_log_loss": 0.38,
               "evaluated_on": (dt.date(2026, 3, 8) + dt.timedelta(days=i + 30)).isoformat()}
        lake.write_partition(SHADOW_PERFORMANCE, ds, pa.Table.from_pylist([row], schema=SHADOW_PERFORMANCE.schema),
                             RunContext("churn__drift_report", "seed").lineage(ds, {}))
    outcome = _finish(settings, "2026-04-11", _candidate(v3, v1))
    assert outcome["shadow_judged"]["shadow_state"] == "passed" and outcome["shadow_state"] == "waiting"
    pending = outcome["awaiting_approval"]
    assert pending["model_version"] == v2 and Registry(settings).aliases()[CHAMPION] == v1
    assert promotions.challenger_on(lake, dt.date(2026, 4, 12)) is None  # judged: out of shadow
    _settle(settings, pending, answer("Approve", "dana", at="2026-04-11T20:00:00+00:00"))
    assert Registry(settings).aliases()[CHAMPION] == v2
    assert _decisions(settings, v2)[-1]["shadow_state"] == "promoted"
    assert json.loads(_decisions(settings, v2)[-1]["shadow_json"])["verdict"] == "better"


@pytest.mark.parametrize("payload", [
    {"chosen_options": ["Maybe"], "responded_at": "2026-03-08T00:00:00+00:00", "responded_by_user": None},
    {"chosen_options": [], "responded_at": "2026-03-08T00:00:00+00:00"},
    None,
])
def test_an_answer_that_is_not_approve_or_reject_is_refused(payload: dict | None) -> None:
    with pytest.raises(ApprovalError):
        ApprovalResponse.from_hitl(payload)


def test_a_timeout_is_never_an_approval_whatever_its_default() -> None:
    response = ApprovalResponse.from_hitl(answer("Approve", None))
    assert response.state == "timed out" and not response.approved
    at = dt.datetime(2026, 3, 8, 9, 30, tzinfo=dt.UTC)
    assert ApprovalResponse.from_hitl(answer("Approve", "eve") | {"responded_at": at}).at == at


def test_the_view_links_the_waiting_question_to_airflow_and_shows_who_answered(approved: Settings) -> None:
    from sluice.ui import view

    v1 = _register(approved)
    pending = _finish(approved, "2026-03-07", _candidate(v1, None))["awaiting_approval"]
    [asked] = view.decisions(approved)
    assert asked["verdict"] == "awaiting approval"
    assert asked["approval_link"] == ("/dags/churn__weekly_retrain/runs/scheduled__2026-03-07"
                                      "/tasks/approve_promotion/required_actions")
    page = view.render_page(view.overview(approved))
    assert 'class="approval-link" href="/dags/churn__weekly_retrain/runs/scheduled__2026-03-07/' in page

    _settle(approved, pending, answer("Approve", "alice", comment="fine"))
    answer_row, asked = view.decisions(approved)
    assert answer_row["verdict"] == "promoted (approved by alice)" and answer_row["approval_link"] is None
    assert asked["verdict"] == "asked for approval (answered)" and asked["approval_link"] is None
    assert answer_row["anchor"] != asked["anchor"]
    [promotion] = view.champion(approved)["history"]
    assert promotion["approved_by"] == "alice" and promotion["decision_anchor"] == answer_row["anchor"]
    page = view.render_page(view.overview(approved))
    assert '<span class="badge good approved-by">approved by alice</span>' in page
    assert 'approved by <strong class="approved-by">alice</strong>' in page
    json.dumps(view.overview(approved), allow_nan=False, default=str)


def test_sluice_model_status_says_what_waits_and_who_answered(
    approved: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sluice.ops.cli import main

    for key, value in {"SLUICE_LAKE_URI": approved.lake_uri, "SLUICE_MLFLOW_TRACKING_URI": approved.mlflow_tracking_uri,
                       "SLUICE_USE_CASES": approved.use_case}.items():
        monkeypatch.setenv(key, str(value))
    v1 = _register(approved)
    pending = _finish(approved, "2026-03-07", _candidate(v1, None))["awaiting_approval"]
    assert main(["model", "status", "--use-case", str(approved.use_case)]) == 0
    out = capsys.readouterr().out
    assert f"last decision 2026-03-07: v{v1} vs no champion: awaiting approval" in out
    assert "awaiting a person's approval: Airflow UI > Required Actions (dag churn__weekly_retrain, run " \
           "scheduled__2026-03-07, task approve_promotion)" in out
    _settle(approved, pending, answer("Approve", "alice"))
    assert main(["model", "status", "--use-case", str(approved.use_case)]) == 0
    out = capsys.readouterr().out
    assert "promoted (approved by alice)" in out and "awaiting a person's approval" not in out
