"""The Airflow UI in a real browser (Debian's Chromium through Playwright), against a real Airflow.

The Airflow runs churn's DAGs. A person logs in on the login page, triggers
``churn__nightly_etl`` from its trigger form for
one partition day, waits for the run to succeed, and opens the Sluice view: the
champion, the last gate decision, the drift chart and a drift report are there, and
the table freshness shows the day just processed. The trigger form refuses an invalid
partition day with a readable message, and creates no run. The view refuses requests
without a login. A screenshot of every step is kept under ``test-artifacts/ui/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.helpers import log_in

from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake

if TYPE_CHECKING:
    from tests.ui.conftest import UiStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

RUN_TIMEOUT = 900  # s: a busy machine may need a task retry (1 min delay) on the way


def shot(page, artifacts: Path, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=full_page)


def sluice_nav(page):
    """The plugin's entry in the nav bar (asset links named sluice.* match a loose "Sluice")."""
    return page.get_by_test_id("nav-sidebar").get_by_role("link", name="Sluice", exact=True)


def login(page, stack: UiStack, artifacts: Path, prefix: str) -> None:
    log_in(page, stack.base_url, stack.user, stack.password, lambda: shot(page, artifacts, f"{prefix}-login"))


def dag_runs(page, stack: UiStack, dag_id: str) -> list[dict]:
    """The DAG's runs, from the REST API with the browser's login cookie."""
    for attempt in range(5):
        try:
            response = page.context.request.get(f"{stack.base_url}/api/v2/dags/{dag_id}/dagRuns", timeout=120_000)
        except Exception:  # a stalled API server on a busy machine: ask again
            if attempt == 4:
                raise
            time.sleep(5)
            continue
        assert response.status == 200, response.text()
        return list(response.json()["dag_runs"])
    raise AssertionError("unreachable")


def open_trigger_form(page, stack: UiStack, dag_id: str):
    page.goto(f"{stack.base_url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Trigger Dag - {dag_id}").wait_for()
    return dialog


def test_the_view_refuses_requests_without_a_login(ui_stack: UiStack, playwright_driver) -> None:
    anonymous = playwright_driver.request.new_context()
    try:
        for path in ("/sluice/", "/sluice/api/overview", f"/sluice/reports/{ui_stack.scored_days[0]}/report.html",
                     "/sluice/icon.svg"):
            response = anonymous.get(ui_stack.base_url + path, timeout=120_000)
            assert response.status == 401, f"{path}: {response.status}"
            assert response.json() == {"detail": "Not authenticated"}
        forged = anonymous.get(ui_stack.base_url + "/sluice/", headers={"Cookie": "_token=forged"}, timeout=120_000)
        assert forged.status == 403
    finally:
        anonymous.dispose()


def test_trigger_nightly_etl_then_read_the_sluice_view(ui_stack: UiStack, page, artifacts: Path) -> None:
    stack = ui_stack
    login(page, stack, artifacts, "01")
    shot(page, artifacts, "02-home")

    # -- trigger churn__nightly_etl for one partition day from the form ----------------------------
    etl = stack.dag_id("nightly_etl")
    dialog = open_trigger_form(page, stack, etl)
    dialog.locator("#element_partition_day").fill(stack.trigger_day)
    shot(page, artifacts, "03-trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/dags/{etl}/dagRuns")) as posted:
        dialog.get_by_role("button", name="Trigger").click()
    assert posted.value.status == 200, posted.value.text()
    run = posted.value.json()
    assert run["conf"] == {"partition_day": stack.trigger_day} and run["triggered_by"] == "ui"
    page.wait_for_url(re.compile(rf".*/dags/{etl}/runs/.+"))
    shot(page, artifacts, "04-run-started")

    deadline = time.monotonic() + RUN_TIMEOUT
    state = run["state"]
    while time.monotonic() < deadline:
        stack.airflow.check_alive()
        state = {r["dag_run_id"]: r["state"] for r in dag_runs(page, stack, etl)}[run["dag_run_id"]]
        if state in ("success", "failed"):
            break
        time.sleep(5)
    page.reload()
    page.get_by_text("build_features").first.wait_for()
    shot(page, artifacts, "05-run-finished")
    assert state == "success", "\n".join([f"{etl} {run['dag_run_id']}: {state}", *stack.airflow.retried_tries()])
    features = load_use_case(stack.use_case).tables.features
    assert Lake(stack.settings).has_partition(features, stack.trigger_day), "the run built the day's features"

    # -- the Sluice view, inside the Airflow UI ------------------------------------------------
    sluice_nav(page).click()
    page.wait_for_url(re.compile(r".*/plugin/sluice.*"))
    view = page.frame_locator("iframe[title='Sluice']")
    view.locator("#champion-now").wait_for(timeout=180_000)  # the first page may still wait for MLflow
    shot(page, artifacts, "06-sluice-view")
    assert f"Use case {stack.use_case}: model sluice-{stack.use_case}" in view.locator("body").inner_text()

    from sluice.edges.registry import CHAMPION, Registry

    champion = Registry(stack.settings).by_alias(CHAMPION)
    assert champion is not None
    assert view.locator("#tile-champion").inner_text().split()[1] == f"v{champion.version}"
    assert f"version v{champion.version} is the champion" in view.locator("#champion-now").inner_text()
    promotion = view.locator("#promotions tbody tr").first.inner_text()
    assert stack.retrain_day in promotion and "by the gate" in promotion

    last_decision = view.locator("#tile-decision").inner_text()
    assert f"v{champion.version}: promoted" in last_decision and stack.retrain_day in last_decision
    decision = view.locator("details.decision").first
    assert decision.get_attribute("open") is not None, "the last decision is shown unfolded"
    checks = decision.locator("table.checks tbody tr")
    assert checks.count() >= 1 and "floors" in checks.first.inner_text() and "passed" in checks.first.inner_text()
    assert "challenger.roc_auc" in checks.first.inner_text()

    chart = view.locator("#drift-chart svg")
    chart.wait_for()
    assert chart.locator("circle").count() == len(stack.scored_days)
    assert chart.locator("a.point-link").count() == len(stack.scored_days), "every point links to its report"
    assert view.locator("#performance-chart svg circle").count() == 2 * len(stack.scored_days)  # ROC-AUC and PR-AUC
    view.locator("#drift").scroll_into_view_if_needed()
    shot(page, artifacts, "07-sluice-view-drift")

    features_row = view.locator("#tables tbody tr", has_text=features.name).inner_text()
    assert stack.trigger_day in features_row and etl in features_row, "the view shows the day just processed"

    # -- a drift report opens from its link ----------------------------------------------------
    day = stack.scored_days[-1]
    # The link names the use case the page shows (?use_case=churn).
    report_url = f"/sluice/reports/{day}/report.html?use_case={stack.use_case}"
    with (
        page.expect_event("framenavigated", predicate=lambda frame: frame.url.endswith(report_url)) as navigated,
        page.expect_response(lambda r: r.url.endswith(report_url)) as report,
    ):
        view.get_by_role("link", name=f"report of {day}").click()
    assert report.value.status == 200
    assert report.value.headers["content-type"].startswith("text/html")
    report_frame = navigated.value
    assert report_frame.parent_frame is not None, "the report opens inside the Airflow UI's frame"
    report_frame.get_by_text("Dataset Drift").first.wait_for(timeout=120_000)  # Evidently's report has rendered
    shot(page, artifacts, "08-drift-report")

    # -- the whole page on its own (a screenshot of the iframe shows only its top) ---------------
    page.goto(stack.base_url + "/sluice/")
    page.locator("#freshness").wait_for()
    shot(page, artifacts, "09-sluice-page-full", full_page=True)
    for path, status in ((f"/sluice/reports/{day}/report.json", 200), ("/sluice/reports/2026-13-45/report.html", 400),
                         (f"/sluice/reports/{day}/report.json?use_case={stack.use_case}", 200),
                         (f"/sluice/?use_case={stack.use_case}", 200),
                         ("/sluice/?use_case=purchases", 404),  # not a use case of this deployment
                         (f"/sluice/reports/{day}/report.json?use_case=..%2F..", 404),
                         ("/sluice/reports/..%2F..%2Fraw%2Fevents/report.html", 404),
                         (f"/sluice/reports/{day}/..%2F..%2F..%2Fmodels%2Fdecisions", 404)):
        assert page.context.request.get(stack.base_url + path, timeout=120_000).status == status, path


@pytest.mark.parametrize("bad_day", ["yesterday", "2026-13-45"])
def test_the_trigger_form_refuses_an_invalid_partition_day(ui_stack: UiStack, page, artifacts: Path, bad_day: str) -> None:
    stack = ui_stack
    name = f"invalid-{re.sub(r'[^a-z0-9]+', '-', bad_day)}"
    login(page, stack, artifacts, name)
    etl = stack.dag_id("nightly_etl")
    before = {r["dag_run_id"] for r in dag_runs(page, stack, etl)}

    dialog = open_trigger_form(page, stack, etl)
    # The date field cannot hold anything but a date; the run's configuration JSON can.
    dialog.get_by_text("Advanced Options").click()
    dialog.locator(".monaco-editor .view-lines").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(f'{{"partition_day": "{bad_day}"}}')
    shot(page, artifacts, f"{name}-1-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/dags/{etl}/dagRuns")) as posted:
        dialog.get_by_role("button", name="Trigger").click()
    assert posted.value.status == 400, posted.value.text()

    message = dialog.get_by_text(f"Invalid input for param partition_day: '{bad_day}'")
    message.wait_for()
    shot(page, artifacts, f"{name}-2-refused")
    assert "is not a 'date'" in message.inner_text()
    assert dialog.is_visible(), "the form stays open, with the person's input, to be corrected"
    assert {r["dag_run_id"] for r in dag_runs(page, stack, etl)} == before, "no run was created"
