"""Re-runs and a failing webhook: drift_report alerts once per day and reason, and duplicates no row.

The tasks of the real ``churn__drift_report`` DAG (parsed from dags/, bodies run in-process
with a hand-made run context) on a lake of their own: the days the champion was judged on (its holdout), the
scored day S = D - 30 whose labels matured (scored upside down: a performance alert), and
day D, whose features moved (a drift alert). The webhook is a real HTTP server in a thread
that answers what the test tells it to and counts the POSTs.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.alerts import AlertError
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.tables import ALERTS_SENT, DRIFT_HISTORY, PERFORMANCE_HISTORY

DAGS = Path(__file__).resolve().parents[2] / "dags"
UC = load_use_case("churn")
DAY = dt.date(2026, 3, 10)
DS = DAY.isoformat()
SCORED_DAY = (DAY - dt.timedelta(days=UC.horizon)).isoformat()  # its labels mature on DAY
HOLDOUT_DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]
ROWS = 300
ENV = {
    "SLUICE_USE_CASES": "churn",
    "SLUICE_DRIFT_REFERENCE_ROWS": str(ROWS),
    "SLUICE_DRIFT_CURRENT_ROWS": str(ROWS),
    "SLUICE_CODE_VERSION": "faults-test",
}


# -- the lake -------------------------------------------------------------------------------------
def features_frame(seed: int, *, shift: float = 1.0) -> pd.DataFrame:
    """``ROWS`` entities with every feature of the use case; numeric ones scaled by ``shift``."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({UC.key: np.arange(ROWS, dtype=np.int64)})
    engagement = rng.beta(2, 3, ROWS)
    types = dict(UC.tables.features.fields)
    for col in UC.feature_columns:
        if col in UC.categorical:
            frame[col] = rng.choice(list(UC.vocabulary(col)), ROWS).astype(object)
        elif types[col].startswith("int"):
            frame[col] = rng.poisson((3 + 10 * engagement) * shift).astype(np.int32)
        else:
            frame[col] = rng.gamma(2.0, 10.0, ROWS) * (1 + engagement) * shift
    return frame


def _write(lake: Lake, table: Any, ds: str, frame: pd.DataFrame) -> int:
    data = pa.Table.from_pandas(frame.assign(ds=ds)[table.columns], schema=table.schema, preserve_index=False)
    return lake.write_partition(table, ds, data, RunContext("faults_test", "setup").lineage(ds, {}))


def _labelled(frame: pd.DataFrame, labels: np.ndarray | None) -> pd.DataFrame:
    return frame.assign(**{UC.label: pd.array(labels if labels is not None else [None] * len(frame), dtype="Int8")})


@pytest.fixture(scope="module")
def built_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, int]:
    """The lake as batch_score leaves it for DAY (the champion v1 judged on HOLDOUT_DAYS); with its booster."""
    import lightgbm as lgb

    from sluice.core.train import FittedModel, model_matrix
    from sluice.stages.score import model_scores, predictions_table

    root = tmp_path_factory.mktemp("alerts") / "lake"
    with mock.patch.dict(os.environ, ENV):
        lake = Lake(load_settings(lake_uri=str(root)))
        train = [features_frame(seed=10 + i) for i in range(len(HOLDOUT_DAYS))]
        rng = np.random.default_rng(0)
        labels = [(rng.random(ROWS) < 0.3).astype(np.int8) for _ in train]
        for ds, frame, y in zip(HOLDOUT_DAYS, train, labels, strict=True):
            pinned = _write(lake, UC.tables.features, ds, _labelled(frame, y))
        booster = lgb.train(
            {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True, "min_data_in_leaf": 5},
            lgb.Dataset(model_matrix(pd.concat(train, ignore_index=True), UC), label=np.concatenate(labels)),
            num_boost_round=5,
        )
        model = FittedModel.from_booster(booster, UC)
        for ds, frame in ((SCORED_DAY, features_frame(seed=20)), (DS, features_frame(seed=30, shift=1.8))):
            version = _write(lake, UC.tables.features, ds, _labelled(frame, None))
            features = lake.read_partition(UC.tables.features, ds, version=version)
            scores = model_scores(model, features)
            lake.write_partition(UC.tables.predictions, ds,
                                 predictions_table(UC, features.column(UC.key), scores, "1", version, ds),
                                 RunContext("faults_test", "setup").lineage(ds, {}))
            if ds == SCORED_DAY:  # its labels arrive 30 days later: the lower the score, the likelier churn
                truth = (scores < np.median(scores)).astype(np.int8)
                _write(lake, UC.tables.features, ds, _labelled(frame, truth))
    return root, booster, pinned


class _Registry:
    """The registry edge as drift_report uses it: the champion's tags and its booster."""

    booster: Any = None
    tags: dict[str, str] = {}

    def __init__(self, settings: Any) -> None:
        pass

    def version(self, version: str) -> SimpleNamespace:
        return SimpleNamespace(version=version, tags=self.tags)

    def load_booster(self, version: str) -> Any:
        return self.booster


@pytest.fixture
def lake_env(built_lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """A copy of the built lake, the environment of a drift_report task pointing at it."""
    root, booster, pinned = built_lake
    copy = tmp_path / "lake"
    shutil.copytree(root, copy)
    for key in list(os.environ):
        if key.startswith(("SLUICE_", "AWS_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(key)
    for key, value in {**ENV, "SLUICE_LAKE_URI": str(copy)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(_Registry, "booster", booster)
    monkeypatch.setattr(_Registry, "tags", {"feature_table_version": str(pinned),
                                            "training_windows": json.dumps({"holdout": [HOLDOUT_DAYS[0], HOLDOUT_DAYS[-1]]})})
    monkeypatch.setattr("sluice.edges.registry.Registry", _Registry)
    return Lake(load_settings())


# -- the webhook ------------------------------------------------------------------------------------
class Webhook:
    """A real HTTP server on 127.0.0.1: answers the next of ``answers`` (then 200) and records each POST."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.posts: list[tuple[int, dict]] = []  # (status answered, payload)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = hook.answers.pop(0) if hook.answers else 200
                hook.posts.append((status, payload))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/sluice"

    def statuses(self) -> list[int]:
        return [status for status, _ in self.posts]


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook()
    monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", hook.url)  # what the task looks up
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


# -- the DAG's tasks ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drift_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    with mock.patch.dict(os.environ, {"SLUICE_USE_CASES": "churn"}):
        bag = DagBag(dag_folder=str(DAGS / "drift_report.py"), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags["churn__drift_report"]


class DriftReportRun:
    """One run of drift_report for DAY: its task bodies, called as Airflow would call them."""

    def __init__(self, dag: Any, run_id: str) -> None:
        self.dag = dag
        self.context = {"params": {"partition_day": DS}, "dag_run": SimpleNamespace(dag_id=dag.dag_id, run_id=run_id)}

    def task(self, task_id: str, *args: Any) -> Any:
        callable_ = self.dag.get_task(task_id).python_callable
        body = inspect.unwrap(callable_)
        with mock.patch.dict(body.__globals__, {"get_current_context": lambda: self.context}):
            return callable_(*args)

    def report(self) -> tuple[dict, dict]:
        return self.task("build_drift_report"), self.task("record_performance")

    def alert(self, drift: dict, performance: dict) -> dict:
        return self.task("send_alert", drift, performance)


def rows(lake: Lake, table: Any) -> list[dict]:
    return sorted(lake.read_table(table).to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


# -- the tests -------------------------------------------------------------------------------------------
def test_rerunning_the_day_posts_its_alert_once_and_duplicates_no_row(drift_dag, lake_env: Lake, webhook) -> None:
    first = DriftReportRun(drift_dag, "scheduled__2026-03-10T00:00:00+00:00")
    drift, performance = first.report()
    assert drift["alert"] and performance["evaluated"] and performance["alert"], (drift, performance)
    sent = first.alert(drift, performance)
    assert sent["sent"] and sent["status"] == 200 and len(sent["reasons"]) == 2
    assert webhook.statuses() == [200]
    payload = webhook.posts[0][1]
    assert payload["reason_keys"] == [f"data_drift:{DS}", f"performance:{SCORED_DAY}"]
    assert payload["use_case"] == "churn" and payload["run_id"] == first.context["dag_run"].run_id
    history = {DRIFT_HISTORY.name: rows(lake_env, DRIFT_HISTORY), PERFORMANCE_HISTORY.name: rows(lake_env, PERFORMANCE_HISTORY)}
    assert [len(r) for r in history.values()] == [1, 1]

    again = DriftReportRun(drift_dag, "manual__2026-03-11T08:00:00+00:00")  # a re-run of the same day
    drift2, performance2 = again.report()
    assert drift2["alert"] and performance2["alert"]
    resent = again.alert(drift2, performance2)
    assert not resent["sent"] and resent["already_sent"] == payload["reason_keys"], resent
    assert webhook.statuses() == [200], "the re-run posted the alert again"
    assert {DRIFT_HISTORY.name: rows(lake_env, DRIFT_HISTORY),
            PERFORMANCE_HISTORY.name: rows(lake_env, PERFORMANCE_HISTORY)} == history, "the re-run changed a row"
    recorded = lake_env.read_table(ALERTS_SENT).to_pylist()
    assert [(r["ds"], r["reason_key"], r["status"], r["run_id"]) for r in recorded] == [
        (DS, key, 200, first.context["dag_run"].run_id) for key in payload["reason_keys"]]
    assert [r["reason"] for r in recorded] == payload["reasons"]


def test_a_refused_alert_is_sent_again_by_the_retry_and_recorded_once(drift_dag, lake_env: Lake, webhook) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    webhook.answers = [500]
    run = DriftReportRun(drift_dag, "scheduled__2026-03-10T00:00:00+00:00")
    drift, performance = run.report()
    with pytest.raises(AlertError, match="answered 500") as refused:
        run.alert(drift, performance)
    assert not isinstance(refused.value, AirflowFailException), "an outage of the webhook is retried"
    assert not lake_env.has_partition(ALERTS_SENT, DS), "nothing recorded for a refused alert"

    retried = run.alert(drift, performance)  # Airflow's retry of send_alert
    assert retried["sent"] and retried["status"] == 200
    assert not run.alert(drift, performance)["sent"]  # and a re-run of the task after it
    assert webhook.statuses() == [500, 200]
    assert webhook.posts[0][1]["reason_keys"] == webhook.posts[1][1]["reason_keys"]
    recorded = lake_env.read_table(ALERTS_SENT).to_pylist()
    assert sorted(r["reason_key"] for r in recorded) == [f"data_drift:{DS}", f"performance:{SCORED_DAY}"]
    assert {r["status"] for r in recorded} == {200}


def test_without_an_alert_channel_the_alert_is_skipped_and_sent_later(
    drift_dag, lake_env: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    run = DriftReportRun(drift_dag, "scheduled__2026-03-10T00:00:00+00:00")
    drift = {"ds": DS, "alert": True, "drift_share": 0.5, "n_columns": 23, "drifted_columns": ["spend_7d"],
             "threshold": 0.3}
    monkeypatch.delenv("AIRFLOW_CONN_SLUICE_NOTIFY_SLACK", raising=False)
    with pytest.raises(AirflowSkipException, match=r"no alert channel is configured \(sluice_alert_webhook, "
                                                   r"sluice_notify_slack\): alert not sent"):
        run.alert(drift, {"evaluated": False})
    assert not lake_env.has_partition(ALERTS_SENT, DS)
    hook = Webhook()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK", hook.url)
        assert run.alert(drift, {"evaluated": False})["sent"]
        assert run.alert({**drift, "drift_share": 0.55}, {"evaluated": False})["already_sent"] == [f"data_drift:{DS}"]
        assert hook.statuses() == [200], "another drift share on a re-run is the same reason"
    finally:
        hook.server.shutdown()
        hook.server.server_close()
