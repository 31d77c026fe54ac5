"""The ML loop end to end through Airflow: weekly retraining with the gate, then daily
scoring with the champion of each day, published to PostgreSQL and Redis.

Six simulated weeks: the first weeks skip retraining (labels mature 30 days after a
snapshot), later ones train, gate and promote; batch_score then scores the last week,
each day with the model that was champion on it, and re-scoring changes nothing.
The Airflow runs churn's five DAGs (SLUICE_USE_CASES=churn).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest
import redis
from psycopg2 import sql

from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.airflow_client import json_output
from sluice.ops.embedded import LocalAirflow, free_port
from sluice.orchestration.context import dag_id
from sluice.settings import load_settings
from sluice.stages import etl as pipeline
from sluice.stages import promotions
from sluice.tables import DRIFT_HISTORY, EARLY_RETRAINS, MODEL_DECISIONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]  # a busy 2-core machine is slow

USE_CASE = "churn"
TABLES = load_use_case(USE_CASE).tables
FEATURES, PREDICTIONS = TABLES.features, TABLES.predictions
INGEST, ETL, RETRAIN, SCORE, DRIFT = (
    dag_id(USE_CASE, stage) for stage in ("ingest_raw", "nightly_etl", "weekly_retrain", "batch_score", "drift_report")
)

# The months before START are loaded in-process (`sluice load-history`); Airflow runs the rest.
# A model learns only from matured labels (30 days after the snapshot) after the lake's first 90
# days (churn's training.warmup_days), and churn's purged split needs 88 of them (14 train, 7
# validation, 7 holdout, 30 days between each): the week ending 07-26 has 87 (it skips), the
# weeks ending 08-02 and 08-09 have 94 and 101.
HISTORY_START, HISTORY_END = dt.date(2026, 1, 1), dt.date(2026, 7, 23)
START, END = "2026-07-24", "2026-08-09"
MONDAYS = ("2026-07-20", "2026-08-03")  # weeks ending 07-26 (too early: skips), 08-02, 08-09
SCORE_FROM = "2026-08-03"
SCORE_DAYS = [str(dt.date(2026, 8, 3) + dt.timedelta(days=i)) for i in range(7)]
# From this day on, customers come back half as often (the simulator's engagement_drop).
SWITCH = "2026-08-05"
REDIS_DB = 7


@pytest.fixture(scope="module")
def scores_db():
    name = f"sluice_e2e_{uuid.uuid4().hex[:8]}"

    def admin(statement: sql.Composable) -> None:
        # Not `with conn:` (psycopg2 2.9 opens a transaction there, and CREATE DATABASE refuses one).
        conn = psycopg2.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres")
        conn.autocommit = True
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def webhook():
    """A real HTTP endpoint standing in for the chat webhook: it keeps every alert POSTed."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/sluice", received
    server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, scores_db: str, webhook):
    root = tmp_path_factory.mktemp("ml")
    redis.Redis(db=REDIS_DB).flushdb()
    env = {
        "SLUICE_LAKE_URI": (root / "lake").as_uri(),
        "SLUICE_USE_CASES": USE_CASE,
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": "2000",
        "SLUICE_SIM_DRIFT": f"engagement_drop@{SWITCH}",
        "AIRFLOW_CONN_SLUICE_SCORES_POSTGRES": f"postgresql://postgres@127.0.0.1:5432/{scores_db}",
        "AIRFLOW_CONN_SLUICE_SCORES_REDIS": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "AIRFLOW_CONN_SLUICE_ALERT_WEBHOOK": webhook[0],
    }
    airflow = LocalAirflow(home=root / "airflow", port=free_port(), extra_env=env)
    airflow.migrate()
    airflow.serialize_dags()
    airflow.apply_settings()
    settings = load_settings(
        lake_uri=env["SLUICE_LAKE_URI"], mlflow_tracking_uri=env["SLUICE_MLFLOW_TRACKING_URI"],
        sim_customers=2000, sim_drift=env["SLUICE_SIM_DRIFT"], use_cases=[USE_CASE], use_case=USE_CASE,
    )
    pipeline.load_history(settings, HISTORY_START, HISTORY_END)
    airflow.backfill(INGEST, START, END)
    airflow.backfill(ETL, START, END)
    airflow.start()
    try:
        airflow.wait_until_healthy()
        n = (dt.date.fromisoformat(END) - dt.date.fromisoformat(START)).days + 1
        for name in (INGEST, ETL):
            runs = airflow.wait_for_runs(name, n, timeout=1200)
            assert all(r["state"] == "success" for r in runs), runs
        yield airflow, settings
    finally:
        airflow.stop()
        redis.Redis(db=REDIS_DB).flushdb()


def test_weekly_retraining_gates_and_promotes(stack) -> None:
    airflow, settings = stack
    airflow.backfill(RETRAIN, *MONDAYS, max_active_runs=1)
    runs = airflow.wait_for_runs(RETRAIN, 3, timeout=1200)
    assert all(r["state"] == "success" for r in runs), runs

    lake = Lake(settings)
    decided = lake.partitions(MODEL_DECISIONS)
    assert decided == ["2026-08-02", "2026-08-09"], "weeks without matured, warmed-up labels skip"
    first = lake.read_partition(MODEL_DECISIONS, "2026-08-02").to_pylist()[-1]
    record = json.loads(first["decision_json"])
    assert record["champion"] is None
    assert first["promoted"], f"the first model clears the floors: {first['reason']} / {record['checks']}"
    assert [c["name"] for c in record["checks"]] == ["floors"]
    second = json.loads(lake.read_partition(MODEL_DECISIONS, "2026-08-09").to_pylist()[0]["decision_json"])
    assert {c["name"] for c in second["checks"]} == {"floors", "improvement", "slices", "calibration"}
    assert all(c["reason"] for c in second["checks"])

    registry = Registry(settings)
    assert registry.name == "sluice-churn"
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    assert champion.tags["gate.promote"] == "True"
    history = promotions.history(lake)
    # Decided as of Sunday 08-02, champion from Monday 08-03 (the first day batch_score scores).
    assert (history[0]["decision_ds"], history[0]["ds"]) == ("2026-08-02", "2026-08-03")
    assert history[-1]["model_version"] == champion.version
    for version in registry.versions():
        assert version.tags.get("feature_table_version"), "every version records its training data"
        train_from = json.loads(version.tags["training_windows"])["train"][0]
        assert train_from >= "2026-04-01", "no snapshot of the lake's first 90 days is trained on"


def test_each_day_is_scored_with_its_champion_and_published(stack, scores_db: str) -> None:
    airflow, settings = stack
    airflow.backfill(SCORE, SCORE_FROM, END, max_active_runs=4)
    runs = airflow.wait_for_runs(SCORE, len(SCORE_DAYS), timeout=900)
    assert all(r["state"] == "success" for r in runs), runs

    lake = Lake(settings)
    assert lake.partitions(PREDICTIONS) == SCORE_DAYS
    features_rows = lake.partition_rows(FEATURES)
    for day in SCORE_DAYS:
        scored = lake.read_partition(PREDICTIONS, day).to_pandas()
        assert len(scored) == features_rows[day] == scored["customer_id"].nunique()
        assert set(scored["model_version"]) == {promotions.champion_on(lake, dt.date.fromisoformat(day))}
        assert scored["score"].between(0, 1).all()
    # The challenger of each day (a retrained model that is not champion) is scored in shadow.
    shadowed = {day: promotions.challenger_on(lake, dt.date.fromisoformat(day)) for day in SCORE_DAYS}
    shadow_rows = lake.partition_rows(TABLES.shadow) if lake.exists(TABLES.shadow) else {}
    assert {d for d, v in shadowed.items() if v} == set(shadow_rows), (shadowed, shadow_rows)
    for day, rows in shadow_rows.items():
        shadow = lake.read_partition(TABLES.shadow, day).to_pandas()
        assert rows == features_rows[day] and set(shadow["model_version"]) == {shadowed[day]}

    with psycopg2.connect(f"host=127.0.0.1 user=postgres dbname={scores_db}") as conn, conn.cursor() as cur:
        cur.execute("SELECT ds::text, count(*) FROM churn_scores GROUP BY ds ORDER BY ds")
        assert cur.fetchall() == [(d, features_rows[d]) for d in SCORE_DAYS]
        cur.execute("SELECT ds::text, model_version FROM churn_scores GROUP BY ds, model_version")
        assert all(v == promotions.champion_on(lake, dt.date.fromisoformat(d)) for d, v in cur.fetchall()), \
            "only the champion's scores are published"
    client = redis.Redis(db=REDIS_DB)
    assert client.get("sluice:churn:latest").decode() == END
    assert client.hlen(f"sluice:churn:{END}") == features_rows[END]


def test_rescoring_a_day_changes_nothing(stack, scores_db: str) -> None:
    airflow, settings = stack
    lake = Lake(settings)
    before = lake.read_partition(PREDICTIONS, END).to_pandas()
    airflow.backfill(SCORE, END, END, reprocess="completed")
    runs = airflow.wait_for_runs(SCORE, len(SCORE_DAYS), timeout=600)
    assert all(r["state"] == "success" for r in runs), runs
    after = lake.read_partition(PREDICTIONS, END).to_pandas()
    assert after.sort_values("customer_id").reset_index(drop=True).equals(
        before.sort_values("customer_id").reset_index(drop=True)
    )
    with psycopg2.connect(f"host=127.0.0.1 user=postgres dbname={scores_db}") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (ds, customer_id)) FROM churn_scores")
        total, distinct = cur.fetchone()
        assert total == distinct


def test_a_dry_run_decides_but_moves_no_alias(stack) -> None:
    airflow, settings = stack
    registry = Registry(settings)
    champion = registry.by_alias(CHAMPION).version
    run_id = airflow.trigger(
        RETRAIN, conf={"partition_day": END, "dry_run": True, "force_promote": True, "reason": "e2e dry run"}
    )
    runs = airflow.wait_for_runs(RETRAIN, 4, timeout=900)
    assert {r["run_id"]: r["state"] for r in runs}[run_id] == "success"
    decisions = Lake(settings).read_partition(MODEL_DECISIONS, END).to_pylist()
    assert len(decisions) == 2, "the scheduled decision of the day is kept beside the dry run"
    decision = next(d for d in decisions if d["run_id"] == run_id)
    assert decision["dry_run"] and decision["forced"] and not decision["promoted"]
    assert "e2e dry run" in decision["reason"]
    assert registry.by_alias(CHAMPION).version == champion


def test_drift_is_reported_after_the_switch_not_before_and_triggers_one_early_retrain(stack, webhook) -> None:
    airflow, settings = stack
    weekly_before = {r["run_id"] for r in airflow.runs(RETRAIN)}
    airflow.backfill(DRIFT, SCORE_FROM, END, max_active_runs=1)
    runs = airflow.wait_for_runs(DRIFT, len(SCORE_DAYS), timeout=1200)
    assert all(r["state"] == "success" for r in runs), runs

    lake = Lake(settings)
    history = {r["ds"]: r for r in lake.read_table(DRIFT_HISTORY).to_pylist()}
    assert sorted(history) == SCORE_DAYS
    summary = {d: (round(r["drift_share"], 2), r["alert"]) for d, r in history.items()}
    for day in SCORE_DAYS:
        row = history[day]
        assert row["model_version"] == promotions.champion_on(lake, dt.date.fromisoformat(day))
        report = Path(urlparse(row["report_uri"]).path)
        assert "<html" in report.read_text()[:2000].lower(), f"the report of {day} is an HTML page"
    before = [d for d in SCORE_DAYS if d < SWITCH]
    settled = [d for d in SCORE_DAYS if d >= str(dt.date.fromisoformat(SWITCH) + dt.timedelta(days=2))]
    assert not any(history[d]["alert"] for d in before), summary
    assert all(history[d]["alert"] for d in settled), summary
    assert "sessions_7d" in json.loads(history[settled[0]]["drifted_columns"]), "the activity columns drift"

    # Each day over the threshold was POSTed to the webhook of the connection, once.
    # (ingest_raw's volume check may alert too: half the sessions is half the events.)
    alerts = [d for d in SCORE_DAYS if history[d]["alert"]]
    received = [a for a in webhook[1] if a.get("drift")]
    volume = [a for a in webhook[1] if a.get("volume")]
    assert all(a["ds"] >= SWITCH and a["volume"]["verdict"] == "low" for a in volume), volume
    assert sorted(a["ds"] for a in received) == alerts
    assert all(a["path"] == "/hooks/sluice" and a["drift"]["drift_share"] > 0.3 for a in received)
    assert all(a["use_case"] == USE_CASE for a in received), "an alert says which use case drifted"

    # Over the threshold on 3 of the last 5 days: drift_report triggers weekly_retrain
    # once, and not again within the 7-day cooldown.
    trigger_day = alerts[2]
    weekly = airflow.wait_for_runs(RETRAIN, len(weekly_before) + 1, timeout=900)
    early = {r["run_id"]: r["state"] for r in weekly if r["run_id"] not in weekly_before}
    assert early == {f"early_retrain__{trigger_day}": "success"}
    assert lake.partitions(EARLY_RETRAINS) == [trigger_day]
    decisions = lake.read_partition(MODEL_DECISIONS, trigger_day).to_pylist()
    assert [d["run_id"] for d in decisions] == [f"early_retrain__{trigger_day}"], "the early retrain was gated"


def _utc(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _task_instances(airflow: LocalAirflow, dag_id: str, run_id: str) -> dict[str, dict]:
    rows = json_output(airflow.cli("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json").stdout)
    return {row["task_id"]: row for row in rows}


def test_scoring_waits_for_the_retraining_that_takes_effect_on_its_day(stack) -> None:
    """churn__batch_score D must not resolve its model while a churn__weekly_retrain run decided as
    of D-1 is still queued: that run's promotion would make D's champion. Here the retraining stays
    queued (its DAG is paused) until the test lets it run; scoring starts only after it."""
    airflow, settings = stack
    day, decided = "2026-08-07", "2026-08-06"
    airflow.cli("dags", "pause", RETRAIN)
    try:
        retrain_run = airflow.trigger(
            RETRAIN, conf={"partition_day": decided, "dry_run": True}, run_id=f"early_retrain__{decided}"
        )
        score_run = airflow.trigger(SCORE, conf={"partition_day": day})
        deadline = time.monotonic() + 600
        while True:  # the sensor has looked and found the retraining pending
            tis = _task_instances(airflow, SCORE, score_run)
            if tis["wait_for_retraining"]["state"] == "up_for_reschedule":
                break
            assert tis["wait_for_retraining"]["state"] in (None, "None", "", "scheduled", "queued", "running"), tis
            assert time.monotonic() < deadline, tis
            time.sleep(5)
        time.sleep(30)  # more than one scheduler loop: still nothing scored
        tis = _task_instances(airflow, SCORE, score_run)
        assert tis["score_entities"]["state"] in (None, "None", ""), tis
        assert tis["wait_for_retraining"]["state"] == "up_for_reschedule", tis
    finally:
        airflow.cli("dags", "unpause", RETRAIN)

    runs = airflow.wait_for_runs(SCORE, len(SCORE_DAYS) + 1, timeout=1200)
    assert {r["run_id"]: r["state"] for r in runs}[score_run] == "success"
    retrain = {r["run_id"]: r for r in airflow.runs(RETRAIN)}[retrain_run]
    assert retrain["state"] == "success", retrain
    scored = _task_instances(airflow, SCORE, score_run)["score_entities"]
    assert _utc(scored["start_date"]) >= _utc(retrain["end_date"]), (scored, retrain)
    lake = Lake(settings)
    predictions = lake.read_partition(PREDICTIONS, day).to_pandas()
    assert set(predictions["model_version"]) == {promotions.champion_on(lake, dt.date.fromisoformat(day))}
