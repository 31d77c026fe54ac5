"""Human approval through Airflow: a retraining of a use case with gate.approval.required waits in
its approve_promotion step (Airflow's ApprovalOperator) and completes once a person approves it
through Airflow's REST API; the champion moves and both records name who approved it.

A real embedded Airflow (API server with the simple auth manager's login, scheduler, DAG
processor), a real lake and MLflow; the history is loaded in-process, Airflow runs the retraining.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
import urllib.error
from collections.abc import Iterator

import pytest
from tests.helpers import AirflowApi, use_case_with_approval, wait_for

from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.embedded import LocalAirflow, free_port
from sluice.orchestration.context import dag_id
from sluice.settings import Settings, load_settings
from sluice.stages import promotions
from sluice.tables import MODEL_DECISIONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

HISTORY_START, HISTORY_END = dt.date(2026, 1, 1), dt.date(2026, 5, 10)
RETRAIN_DAY = "2026-05-10"  # a Sunday: without churn's warm-up, four months hold one purged split
USER = "reviewer"
RETRAIN = dag_id("churn", "weekly_retrain")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAirflow, Settings, str]]:
    from sluice.stages import etl as pipeline

    root = tmp_path_factory.mktemp("approval")
    password = secrets.token_urlsafe(12)
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: password}))
    folder = use_case_with_approval(root)
    env = {
        "SLUICE_LAKE_URI": (root / "lake").as_uri(),
        "SLUICE_USE_CASES": str(folder),
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": "2000",
        "SLUICE_TRAIN_WARMUP_DAYS": "0",
        "SLUICE_CODE_VERSION": "e2e-approval",
        "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "0",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("SLUICE_", "AWS_")):
                mp.delenv(key)
        for key, value in env.items():
            if not key.startswith("AIRFLOW__"):
                mp.setenv(key, value)
        settings = load_settings()
        pipeline.load_history(settings, HISTORY_START, HISTORY_END)
        airflow.migrate()
        airflow.serialize_dags()
        airflow.apply_settings()
        airflow.start()
        try:
            airflow.wait_until_healthy(timeout=300)
            airflow.wait_for_dags([RETRAIN])
            yield airflow, settings, password
        finally:
            airflow.stop()


def test_a_retraining_waits_for_approval_and_completes_once_approved_through_the_rest_api(stack) -> None:
    airflow, settings, password = stack
    api = AirflowApi(airflow.base_url, USER, password)
    run_id = api.post(f"/dags/{RETRAIN}/dagRuns", {"logical_date": None, "conf": {"partition_day": RETRAIN_DAY}})[
        "dag_run_id"]
    task = f"/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/approve_promotion"

    def asking() -> dict | None:
        run = api.get(f"/dags/{RETRAIN}/dagRuns/{run_id}")
        assert run["state"] in ("queued", "running"), f"the run ended before it asked: {run['state']}"
        ti = api.get(task)
        return ti if ti["state"] == "awaiting_input" else None

    wait_for("approve_promotion waiting for a person", asking, airflow, timeout=1200)
    detail = api.get(f"{task}/-1/hitlDetails")
    assert detail["options"] == ["Approve", "Reject"] and detail["response_received"] is False
    assert set(detail["params"]) == {"comment"}, "the form asks for a comment, not the DAG's run params"
    assert detail["subject"].startswith(f"Promote {settings.model} v1 (churn) to champion?")
    assert "becomes the first champion" in detail["body"] and "# Model card:" in detail["body"]
    assert "| floors | pass |" in detail["body"]

    # Waiting holds no worker slot and moves nothing: no champion yet, the decision says it waits.
    time.sleep(10)
    assert api.get(task)["state"] == "awaiting_input"
    assert CHAMPION not in Registry(settings).aliases()
    [asked] = Lake(settings).read_partition(MODEL_DECISIONS, RETRAIN_DAY).to_pylist()
    assert asked["approval_state"] == "awaiting" and not asked["promoted"]

    answer = api.patch(f"{task}/-1/hitlDetails",
                       {"chosen_options": ["Approve"], "params_input": {"comment": "checked the slices"}})
    assert answer["responded_by"]["name"] == USER
    with pytest.raises(urllib.error.HTTPError) as twice:  # an answer is given once
        api.patch(f"{task}/-1/hitlDetails", {"chosen_options": ["Reject"], "params_input": {"comment": ""}})
    assert twice.value.code == 409

    def finished() -> str | None:
        state = api.get(f"/dags/{RETRAIN}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    assert wait_for("the retraining to finish", finished, airflow, timeout=600) == "success"
    states = {t["task_id"]: t["state"] for t in api.get(f"/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances")[
        "task_instances"]}
    assert states == {"wait_for_features": "success", "retrain_and_gate": "success",
                      "approve_promotion": "success", "settle_approval": "success"}
    assert Registry(settings).aliases()[CHAMPION] == "1"
    lake = Lake(settings)
    [promotion] = promotions.history(lake)
    assert promotion["approved_by"] == USER and promotion["model_version"] == "1"
    assert promotion["decision_ds"] == RETRAIN_DAY and "checked the slices" in promotion["reason"]
    rows = sorted(lake.read_partition(MODEL_DECISIONS, RETRAIN_DAY).to_pylist(), key=lambda r: r["recorded_at"])
    assert [(r["approval_state"], r["approved_by"], r["promoted"]) for r in rows] == [
        ("awaiting", None, False), ("approved", USER, True)]
    assert promotions.verdict(rows[-1]) == f"promoted (approved by {USER})"
    card = Registry(settings).model_card("1")
    assert card is not None and f"## Approval\nApproved by {USER}" in card
