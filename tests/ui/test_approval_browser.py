"""A person approves or rejects a promotion in the Airflow UI, in a real browser (Debian's Chromium).

The use case is a copy of churn whose promotions need a person's approval
(``gate.approval.required``). A retraining waits in its ``approve_promotion`` step (Airflow's
ApprovalOperator, task state ``awaiting_input``); a person logs in on Airflow's login page, finds
the request on the Required Actions pages (from the navigation, and from the Sluice view's
link), reads the gate decision and the model card in it, types a comment and clicks Reject or
Approve. The run then completes; the champion moves only on Approve, and the Sluice view names
who answered. A screenshot of every step is kept under ``test-artifacts/ui/approval-*.png``.

A real embedded Airflow (API server with the simple auth manager's login, scheduler, DAG
processor), a real lake and MLflow; the history is loaded in-process, Airflow runs the retrainings.

The two tests rely on their order in this file: the rejection comes first. An approval promotes
from the day of the answer (today, months after the as-of day), so any later retraining of the
same week is "superseded" and asks nobody. Each test triggers its own retraining as of the same
day: the first a plain one (the gate would promote the first model: it clears every floor), the
second a forced one (a plain re-run of the same data finds the first run's decision and asks
nothing; a forced one resumes the same trained version and asks again). Each also passes alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from tests.helpers import (
    APPROVAL_RETRAIN,
    APPROVAL_RETRAIN_DAY,
    APPROVAL_RUN_DONE,
    AirflowApi,
    approval_airflow,
    finished_run,
    log_in,
    retraining_that_asks,
)

from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.embedded import LocalAirflow
from sluice.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

RETRAIN_DAY = APPROVAL_RETRAIN_DAY
USER = "reviewer"
USE_CASE = "churn"
RETRAIN = APPROVAL_RETRAIN


@dataclass(frozen=True)
class ApprovalStack:
    airflow: LocalAirflow
    settings: Settings
    user: str
    password: str

    @property
    def base_url(self) -> str:
        return self.airflow.base_url

    def api(self) -> AirflowApi:
        return AirflowApi(self.base_url, self.user, self.password)


@pytest.fixture(scope="module")
def approval_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalStack]:
    with approval_airflow(tmp_path_factory.mktemp("ui-approval"), USER, "ui-approval") as (airflow, settings, password):
        yield ApprovalStack(airflow=airflow, settings=settings, user=USER, password=password)


# -- helpers --------------------------------------------------------------------------------------

def shot(page, artifacts: Path, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(artifacts / f"approval-{name}.png"), full_page=full_page)


def login(page, stack: ApprovalStack, artifacts: Path, prefix: str) -> None:
    log_in(page, stack.base_url, stack.user, stack.password, lambda: shot(page, artifacts, f"{prefix}-login"))


def asking(stack: ApprovalStack, conf: dict) -> tuple[str, dict]:
    run_id, pending = retraining_that_asks(stack.api(), stack.airflow, conf)
    assert pending["ds"] == RETRAIN_DAY, pending
    return run_id, pending


def completed(stack: ApprovalStack, run_id: str) -> None:
    """The run ends with every task done: the answer was recorded, whichever it was."""
    states = finished_run(stack.api(), stack.airflow, run_id)
    assert states == APPROVAL_RUN_DONE, "\n".join([str(states), *stack.airflow.retried_tries()])


def task_path(run_id: str) -> str:
    return f"/dags/{RETRAIN}/runs/{run_id}/tasks/approve_promotion/required_actions"


def subject_of(stack: ApprovalStack, version: str) -> str:
    return f"Promote {stack.settings.model} v{version} ({USE_CASE}) to champion?"


def read_the_request(page, stack: ApprovalStack, version: str) -> None:
    """On the task's Required Actions tab: the request's subject, gate decision and model card."""
    page.get_by_text(subject_of(stack, version), exact=True).first.wait_for()
    page.get_by_role("heading", name=f"Model card: {stack.settings.model} v{version} ({USE_CASE})").wait_for()
    # The gate decision in the request: its checks, as a table (Markdown rendered by Airflow).
    floors = page.get_by_role("row").filter(has=page.get_by_role("cell", name="floors", exact=True)).filter(
        has=page.get_by_role("cell", name="pass", exact=True))
    assert floors.count() >= 1, "the request shows the gate's checks"
    assert f"The gate as of {RETRAIN_DAY} would promote it" in page.locator("body").inner_text()


def answer(page, option: str, comment: str) -> dict:
    """Type the comment and click ``option`` (Approve or Reject): the answer Airflow recorded."""
    field = page.locator("#element_comment")  # Airflow's form field of the "comment" param
    field.scroll_into_view_if_needed()
    field.fill(comment)
    button = page.get_by_role("button", name=option, exact=True)
    assert button.is_enabled(), f"{option} is clickable once a comment is typed"
    with page.expect_response(lambda r: r.request.method == "PATCH" and r.url.endswith(
            "/taskInstances/approve_promotion/-1/hitlDetails")) as patched:
        button.click()
    assert patched.value.status == 200, patched.value.text()
    page.get_by_text("approve_promotion response successful").wait_for()
    return patched.value.json()


def open_view(page, stack: ApprovalStack) -> None:
    page.goto(f"{stack.base_url}/sluice/?use_case={USE_CASE}")
    page.locator("#champion").wait_for(timeout=180_000)  # the first page may still wait for MLflow
    page.locator("#decisions").wait_for()


# -- tests ----------------------------------------------------------------------------------------

def test_a_rejected_retraining_keeps_the_champion_and_the_view_names_who_rejected_it(
        approval_stack: ApprovalStack, page, artifacts: Path) -> None:
    # First in this file (see the module docstring): a plain retraining, the gate's own verdict.
    stack = approval_stack
    assert CHAMPION not in Registry(stack.settings).aliases()
    run_id, pending = asking(stack, {"partition_day": RETRAIN_DAY})
    version = pending["model_version"]
    assert pending["champion_version"] is None and not pending["forced"], pending
    login(page, stack, artifacts, "reject-01")

    # -- Browse > Required Actions: the pending request of this run, then its task's page ------------
    page.get_by_test_id("nav-sidebar").get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    page.wait_for_url(re.compile(r".*/required_actions(\?.*)?$"))
    row = page.get_by_role("row").filter(has_text=run_id)
    row.get_by_text("Approval Required").wait_for()
    shot(page, artifacts, "reject-02-required-actions")
    row.get_by_role("link", name=subject_of(stack, version)).click()
    page.wait_for_url(re.compile(r".*/tasks/approve_promotion/required_actions$"))
    read_the_request(page, stack, version)
    assert "becomes the first champion" in page.locator("body").inner_text()
    shot(page, artifacts, "reject-03-request")

    # -- reject, with a comment --------------------------------------------------------------------
    said = answer(page, "Reject", "the partner channel is too weak")
    assert said["chosen_options"] == ["Reject"] and said["responded_by"]["name"] == stack.user
    assert said["params_input"] == {"comment": "the partner channel is too weak"}
    shot(page, artifacts, "reject-04-answered")

    completed(stack, run_id)
    assert CHAMPION not in Registry(stack.settings).aliases(), "a rejection moves no alias"

    # -- the Sluice view: no champion; the decision says who rejected it ----------------------------
    open_view(page, stack)
    assert "No champion yet" in page.locator("#champion").inner_text()
    assert page.locator("#promotions").count() == 0, "no promotion recorded"
    decision = page.locator("details.decision").first  # newest first: the answer's row, unfolded
    assert run_id in decision.locator("summary").inner_text()
    assert f"v{version}" in decision.locator("summary").inner_text()
    decision.get_by_text(f"not promoted (rejected by {stack.user})", exact=True).wait_for()
    approval = decision.locator("p.approval")
    assert f"rejected by {stack.user}" in approval.inner_text()
    assert approval.locator("strong.approved-by").inner_text() == stack.user
    assert "the partner channel is too weak" in decision.inner_text()
    assert page.locator("a.approval-link").count() == 0, "nothing waits for an answer any more"
    shot(page, artifacts, "reject-05-sluice-view", full_page=True)


def test_an_approved_retraining_moves_the_champion_and_the_view_names_who_approved_it(
        approval_stack: ApprovalStack, page, artifacts: Path) -> None:
    # Second in this file: forced, so that it asks again after the rejection of the same week's model.
    stack = approval_stack
    before = Registry(stack.settings).aliases().get(CHAMPION)
    run_id, pending = asking(stack, {"partition_day": RETRAIN_DAY, "force_promote": True, "reason": "browser test"})
    version = pending["model_version"]
    assert pending["forced"] and pending["champion_version"] == before
    login(page, stack, artifacts, "approve-01")

    # -- Home > Required Actions: the drawer shows the pending request of this run ------------------
    page.get_by_role("button", name=re.compile(r"Required Actions")).click()
    drawer = page.get_by_role("dialog")
    drawer.get_by_text(subject_of(stack, version), exact=True).first.wait_for()
    drawer.get_by_text(run_id, exact=True).first.wait_for()
    shot(page, artifacts, "approve-02-home-required-actions")
    page.keyboard.press("Escape")

    # -- the Sluice view's link leads to the request -------------------------------------------------
    open_view(page, stack)
    decision = page.locator("details.decision").first  # newest first: this run's question
    assert run_id in decision.locator("summary").inner_text()
    decision.get_by_text("awaiting approval", exact=True).wait_for()
    link = decision.locator("a.approval-link")
    assert link.get_attribute("href") == task_path(quote(run_id))  # as the view quotes it
    assert Registry(stack.settings).aliases().get(CHAMPION) == before, "waiting moves nothing"
    shot(page, artifacts, "approve-03-sluice-view-waiting")
    link.click()
    page.wait_for_url(re.compile(r".*/tasks/approve_promotion/required_actions$"))
    page.get_by_test_id("nav-sidebar").wait_for()  # in the Airflow UI
    read_the_request(page, stack, version)
    assert "forced" in page.locator("body").inner_text() and "browser test" in page.locator("body").inner_text()
    shot(page, artifacts, "approve-04-request")

    # -- approve, with a comment --------------------------------------------------------------------
    said = answer(page, "Approve", "checked the slices in the browser")
    assert said["chosen_options"] == ["Approve"] and said["responded_by"]["name"] == stack.user
    shot(page, artifacts, "approve-05-answered")

    completed(stack, run_id)
    assert Registry(stack.settings).aliases()[CHAMPION] == version, "the approved model is champion"

    # -- the Sluice view: the champion, and who approved it -------------------------------------------
    open_view(page, stack)
    assert f"version v{version} is the champion" in page.locator("#champion-now").inner_text()
    promotion = page.locator("#promotions tbody tr").first
    assert promotion.locator("span.approved-by").inner_text() == f"approved by {stack.user}"
    assert run_id in promotion.inner_text() and f"v{version}" in promotion.inner_text()
    decision = page.locator("details.decision").first
    assert run_id in decision.locator("summary").inner_text()
    decision.get_by_text(f"promoted (approved by {stack.user})", exact=True).wait_for()
    approval = decision.locator("p.approval")
    assert f"approved by {stack.user}" in approval.inner_text()
    assert approval.locator("strong.approved-by").inner_text() == stack.user
    assert "checked the slices in the browser" in decision.inner_text()
    assert page.locator("a.approval-link").count() == 0, "nothing waits for an answer any more"
    shot(page, artifacts, "approve-06-sluice-view", full_page=True)
