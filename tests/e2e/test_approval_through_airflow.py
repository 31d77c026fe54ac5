"""Human approval through Airflow: a retraining of a use case with gate.approval.required waits in
its approve_promotion step (Airflow's ApprovalOperator) and completes once a person approves it
through Airflow's REST API; the champion moves and both records name who approved it.

A real embedded Airflow (API server with the simple auth manager's login, scheduler, DAG
processor), a real lake and MLflow; the history is loaded in-process, Airflow runs the retraining.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterator

import pytest
from tests.helpers import (
    APPROVAL_RETRAIN,
    APPROVAL_RETRAIN_DAY,
    APPROVAL_RUN_DONE,
    AirflowApi,
    approval_airflow,
    finished_run,
    retraining_that_asks,
)

from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.embedded import LocalAirflow
from sluice.settings import Settings
from sluice.stages import promotions
from sluice.tables import MODEL_DECISIONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

USER = "reviewer"
RETRAIN = APPROVAL_RETRAIN


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAirflow, Settings, str]]:
    with approval_airflow(tmp_path_factory.mktemp("approval"), USER, "e2e-approval") as running:
        yield running


def test_a_retraining_waits_for_approval_and_completes_once_approved_through_the_rest_api(stack) -> None:
    airflow, settings, password = stack
    api = AirflowApi(airflow.base_url, USER, password)
    run_id, pending = retraining_that_asks(api, airflow, {"partition_day": APPROVAL_RETRAIN_DAY})
    assert pending["ds"] == APPROVAL_RETRAIN_DAY
    task = f"/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/approve_promotion"
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
    [asked] = Lake(settings).read_partition(MODEL_DECISIONS, APPROVAL_RETRAIN_DAY).to_pylist()
    assert asked["approval_state"] == "awaiting" and not asked["promoted"]

    answer = api.patch(f"{task}/-1/hitlDetails",
                       {"chosen_options": ["Approve"], "params_input": {"comment": "checked the slices"}})
    assert answer["responded_by"]["name"] == USER
    with pytest.raises(urllib.error.HTTPError) as twice:  # an answer is given once
        api.patch(f"{task}/-1/hitlDetails", {"chosen_options": ["Reject"], "params_input": {"comment": ""}})
    assert twice.value.code == 409

    assert finished_run(api, airflow, run_id) == APPROVAL_RUN_DONE
    assert Registry(settings).aliases()[CHAMPION] == "1"
    lake = Lake(settings)
    [promotion] = promotions.history(lake)
    assert promotion["approved_by"] == USER and promotion["model_version"] == "1"
    assert promotion["decision_ds"] == APPROVAL_RETRAIN_DAY and "checked the slices" in promotion["reason"]
    rows = sorted(lake.read_partition(MODEL_DECISIONS, APPROVAL_RETRAIN_DAY).to_pylist(), key=lambda r: r["recorded_at"])
    assert [(r["approval_state"], r["approved_by"], r["promoted"]) for r in rows] == [
        ("awaiting", None, False), ("approved", USER, True)]
    assert promotions.verdict(rows[-1]) == f"promoted (approved by {USER})"
    card = Registry(settings).model_card("1")
    assert card is not None and f"## Approval\nApproved by {USER}" in card
