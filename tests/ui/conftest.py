"""Fixtures of the browser tests: a filled lake, a real Airflow with a login, and Chromium.

``ui_stack`` fills a lake in-process (history, one retraining, scores, drift reports,
realised performance, and the raw events of the day the test then processes through
Airflow), while the metadata DB of an embedded Airflow is migrated beside it; then it
starts Airflow with the simple auth manager's login on (one admin user, its password
in a file written here). ``browser`` is Debian's Chromium driven by Playwright: no
browser is downloaded at test time, and a missing Chromium fails the tests loudly.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.helpers import login_env, sluice_env

from sluice.ops.embedded import PROJECT_ROOT, LocalAirflow, free_port
from sluice.orchestration.context import dag_id
from sluice.settings import Settings, load_settings

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "ui"

HISTORY_START, HISTORY_END = dt.date(2026, 1, 1), dt.date(2026, 5, 12)
RETRAIN_DAY = dt.date(2026, 5, 10)  # a Sunday: the as-of day of a weekly retraining
SCORED_DAYS = (dt.date(2026, 5, 11), dt.date(2026, 5, 12))  # scored, drift-reported, performance recorded
TRIGGER_DAY = "2026-05-13"  # raw events ingested here; nightly_etl runs it through Airflow
CUSTOMERS = 2000
USER = "admin"
USE_CASE = "churn"  # the Airflow runs churn's five DAGs (SLUICE_USE_CASES)


@dataclass(frozen=True)
class UiStack:
    airflow: LocalAirflow
    settings: Settings
    user: str
    password: str
    retrain_day: str = RETRAIN_DAY.isoformat()
    scored_days: tuple[str, ...] = tuple(d.isoformat() for d in SCORED_DAYS)
    trigger_day: str = TRIGGER_DAY
    use_case: str = USE_CASE

    @property
    def base_url(self) -> str:
        return self.airflow.base_url

    def dag_id(self, stage: str) -> str:
        return dag_id(self.use_case, stage)


def fill_lake(settings: Settings) -> None:
    """What the view shows: history, a champion with its decision, scores, drift and performance."""
    from sluice.core.lineage import RunContext
    from sluice.stages import etl as pipeline
    from sluice.stages import monitoring, retrain, score

    def run(stage: str) -> RunContext:
        return RunContext(dag_id(USE_CASE, stage), "ui-test")

    pipeline.load_history(settings, HISTORY_START, HISTORY_END)
    result = retrain.retrain(settings, RETRAIN_DAY, run("weekly_retrain"))
    assert result["promoted"], f"the first retraining should promote on the floors: {result}"
    for day in SCORED_DAYS:
        # The scores of D - 30, with the champion, so that D's run can measure them against matured labels.
        score.score_day(settings, day - dt.timedelta(days=30), run("batch_score"), use_current_champion=True)
        score.score_day(settings, day, run("batch_score"))
        monitoring.build_drift_report(settings, day, run("drift_report"))
        monitoring.record_performance(settings, day, run("drift_report"))
    pipeline.ingest_day(settings, dt.date.fromisoformat(TRIGGER_DAY), run("ingest_raw"))


def prepare_airflow(airflow: LocalAirflow) -> None:
    airflow.migrate()
    airflow.serialize_dags()
    airflow.apply_settings()


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    root = tmp_path_factory.mktemp("ui")
    login, password = login_env(root, USER)
    env = {
        "SLUICE_LAKE_URI": (root / "lake").as_uri(),
        "SLUICE_USE_CASES": USE_CASE,
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": str(CUSTOMERS),
        # Four months of history: without churn's 90-day warm-up they hold one purged split.
        "SLUICE_TRAIN_WARMUP_DAYS": "0",
        "SLUICE_CODE_VERSION": "ui-test",
        "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "0",
        **login,  # a real login: no automatic admin; one user whose password is in a file of ours
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    with sluice_env(env):
        settings = load_settings()
        # The metadata DB is migrated (a subprocess) while the lake fills here.
        with ThreadPoolExecutor(max_workers=1) as pool:
            prepared = pool.submit(prepare_airflow, airflow)
            fill_lake(settings)
            prepared.result()
    airflow.start()
    try:
        airflow.wait_until_healthy(timeout=300)
        yield UiStack(airflow=airflow, settings=settings, user=USER, password=password)
    finally:
        retried = airflow.retried_tries()
        if retried:
            log.warning("tasks that needed a retry:\n%s", "\n".join(retried))
        airflow.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots of every step go here (git-ignored); those of an earlier session are removed."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def playwright_driver():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_driver):
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium "
            "(install it with `apt-get install -y chromium`); no browser is downloaded at test time",
            pytrace=False,
        )
    browser = playwright_driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)  # a busy 2-core machine: the UI can take a while
    page = context.new_page()
    yield page
    context.close()
