"""Helpers shared by tests of several folders.

(Not in conftest.py: importing a conftest as a module runs it a second time, and ours
points Airflow at a fresh AIRFLOW_HOME when it runs — the tests' in-process Airflow and
the DB their subprocesses migrate then differ.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def webhook_server(path: str = "/hooks/sluice") -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """A real HTTP endpoint on 127.0.0.1 for the alert connection: answers 200 and keeps every
    (path, JSON body) POSTed. Yields (its URL ending in ``path``, the list)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", received
    finally:
        server.shutdown()
        server.server_close()


def map_in_processes(fn: Callable, items: Iterable, module_file: str, workers: int = 2) -> list:
    """``fn`` over ``items`` in ``workers`` spawned processes (one per core; spawned, so that no
    forked process inherits LightGBM's OpenMP state). Each process imports ``fn``'s module by its
    folder (``module_file``: the caller's ``__file__``)."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=sys.path.insert,
                             initargs=(0, str(Path(module_file).parent))) as pool:
        return list(pool.map(fn, items))


def use_case_with_approval(root: Path, timeout_hours: float = 2) -> Path:
    """A copy of churn whose promotions need a person's approval (the folder's name is the use case's)."""
    from sluice.core.usecase import load_use_case

    folder = root / "approving" / "churn"
    shutil.copytree(load_use_case("churn").folder, folder)
    spec = folder / "usecase.yaml"
    text = spec.read_text()
    assert "  slice_min_rows: 300\n" in text
    spec.write_text(text.replace(
        "  slice_min_rows: 300\n", f"  slice_min_rows: 300\n  approval: {{required: true, timeout_hours: {timeout_hours}}}\n"))
    return folder


class AirflowApi:
    """Airflow's REST API as one logged-in user (a JWT from /auth/token)."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url
        token = self._call("POST", "/auth/token", {"username": user, "password": password}, token=None)
        self.token = token["access_token"]

    def _call(self, method: str, path: str, body: Any = None, *, token: str | None) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self._call("GET", f"/api/v2{path}", token=self.token)

    def patch(self, path: str, body: Any) -> Any:
        return self._call("PATCH", f"/api/v2{path}", body, token=self.token)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", f"/api/v2{path}", body, token=self.token)


def wait_for(what: str, probe: Callable[[], Any], airflow: Any, timeout: float = 900, poll: float = 5) -> Any:
    """``probe()`` until it returns something true, while the embedded ``airflow`` stays alive."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        airflow.check_alive()
        last = probe()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r}); retried tries:\n"
                         + "\n".join(airflow.retried_tries()))


def login_env(root: Path, user: str) -> tuple[dict[str, str], str]:
    """The environment of an embedded Airflow with a real login (the simple auth manager, no automatic
    admin): one admin ``user`` whose new password is in a file under ``root``. Returns it and the password."""
    password = secrets.token_urlsafe(12)
    passwords = root / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({user: password}))
    passwords.chmod(0o600)
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }, password


@contextlib.contextmanager
def sluice_env(env: dict[str, str]) -> Iterator[None]:
    """This process sees exactly the SLUICE_ (and no AWS_) variables of ``env`` (the AIRFLOW__ ones are
    the embedded Airflow's), as the tasks of that Airflow will."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("SLUICE_", "AWS_")):
                mp.delenv(key)
        for key, value in env.items():
            if not key.startswith("AIRFLOW__"):
                mp.setenv(key, value)
        yield


APPROVAL_HISTORY = (dt.date(2026, 1, 1), dt.date(2026, 5, 10))
APPROVAL_RETRAIN_DAY = "2026-05-10"  # a Sunday: without churn's warm-up, four months hold one purged split
APPROVAL_RETRAIN = "churn__weekly_retrain"


@contextlib.contextmanager
def approval_airflow(root: Path, user: str, code_version: str) -> Iterator[tuple[Any, Any, str]]:
    """An embedded Airflow with a real login for ``user`` running a copy of churn whose promotions need a
    person's approval, over four months of history loaded in-process. Yields (airflow, settings, password)."""
    from sluice.ops.embedded import LocalAirflow, free_port
    from sluice.settings import load_settings
    from sluice.stages import etl as pipeline

    login, password = login_env(root, user)
    env = {
        "SLUICE_LAKE_URI": (root / "lake").as_uri(),
        "SLUICE_USE_CASES": str(use_case_with_approval(root)),
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": "2000",
        "SLUICE_TRAIN_WARMUP_DAYS": "0",
        "SLUICE_CODE_VERSION": code_version,
        "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "0",
        **login,
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    with sluice_env(env):
        settings = load_settings()
        pipeline.load_history(settings, *APPROVAL_HISTORY)
        airflow.migrate()
        airflow.serialize_dags()
        airflow.apply_settings()
        airflow.start()
        try:
            airflow.wait_until_healthy(timeout=300)
            airflow.wait_for_dags([APPROVAL_RETRAIN])
            yield airflow, settings, password
        finally:
            airflow.stop()


def retraining_that_asks(api: AirflowApi, airflow: Any, conf: dict[str, Any], timeout: float = 1200
                         ) -> tuple[str, dict[str, Any]]:
    """Trigger the approval use case's weekly_retrain with ``conf``; once approve_promotion waits for a
    person: the run id and what retrain_and_gate left awaiting approval (version, champion, day)."""
    dag = APPROVAL_RETRAIN
    run_id = api.post(f"/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    task = f"/dags/{dag}/dagRuns/{run_id}/taskInstances/approve_promotion"

    def asking() -> bool:
        run = api.get(f"/dags/{dag}/dagRuns/{run_id}")
        assert run["state"] in ("queued", "running"), f"{run_id} ended before it asked: {run['state']}"
        state = api.get(task)["state"]
        assert state not in ("skipped", "failed", "upstream_failed"), f"approve_promotion: {state}"
        return state == "awaiting_input"

    wait_for(f"{run_id}: approve_promotion waiting for a person", asking, airflow, timeout=timeout)
    outcome = api.get(f"/dags/{dag}/dagRuns/{run_id}/taskInstances/retrain_and_gate/xcomEntries/return_value")
    pending = outcome["value"]["awaiting_approval"]
    assert pending and pending["run_id"] == run_id, pending
    return run_id, pending


def finished_run(api: AirflowApi, airflow: Any, run_id: str, timeout: float = 600) -> dict[str, str]:
    """Wait for the run's end: the state of each of its tasks, and of the run under "run"."""
    dag = APPROVAL_RETRAIN

    def finished() -> str | None:
        state = api.get(f"/dags/{dag}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    state = wait_for(f"{run_id} to finish", finished, airflow, timeout=timeout)
    tasks = api.get(f"/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {"run": state, **{t["task_id"]: t["state"] for t in tasks}}


APPROVAL_RUN_DONE = {"run": "success", "wait_for_features": "success", "retrain_and_gate": "success",
                     "approve_promotion": "success", "settle_approval": "success"}


def log_in(page: Any, base_url: str, user: str, password: str, before_submit: Callable[[], None] = lambda: None
           ) -> None:
    """Log in on Airflow's login page in the browser; back on the home page once the Sluice entry shows."""
    import re

    page.goto(base_url + "/")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    before_submit()
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base_url + "/")
    # The plugin's entry in the nav bar (asset links named sluice.* match a loose "Sluice").
    page.get_by_test_id("nav-sidebar").get_by_role("link", name="Sluice", exact=True).wait_for()
