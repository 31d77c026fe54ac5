"""The ML loop on the CeleryExecutor, through the native twin of docker-compose.yaml.

The twin (sluice.ops.twin) runs in a temporary state directory with its own ports, databases,
Redis DBs and bucket: PostgreSQL metadata, Redis broker, moto standing in for MinIO (bucket
versioning on), an MLflow server, and Airflow's API server, scheduler, DAG processor, triggerer
and two Celery workers. The warm-up history (January to July: models never train on the lake's
first 90 days) is loaded in process with sluice.stages.etl.load_history while the twin starts, into
a staging folder that is then put into the bucket (SLUICE_CLUSTER_TEST_HISTORY=s3 loads it
straight into the bucket: the same tables, minutes slower against moto). Airflow runs August:
ingest + ETL backfills, weekly retraining, daily scoring published to PostgreSQL and Redis,
drift reports. Then: every run succeeded, tasks ran on both workers, the lake is consistent, the
champion is in the MLflow server with its files in the bucket, the published scores are the
predictions, and LightGBM trained inside the workers with no OpenMP runtime in any process that
forks. The twin is torn down in a finally and nothing it started may be left running.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
import redis

from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.twin import Cluster, free_port
from sluice.orchestration.context import dag_id
from sluice.settings import Settings, load_settings
from sluice.stages import etl as pipeline
from sluice.tables import DRIFT_HISTORY, MODEL_DECISIONS

# The whole loop runs in the first test's setup: give it more than pytest's default 20 minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2700)]
log = logging.getLogger(__name__)

USE_CASE = "churn"  # the twin's Airflow runs this use case's DAGs only (SLUICE_USE_CASES)
UC = load_use_case(USE_CASE)
TABLES = UC.tables
KEY = UC.key  # customer_id
# The twin's Airflow runs all six DAGs; lake_maintenance is paused at creation (and the twin
# makes no scheduled runs), so only the five of the loop run.
DAG = {stage: dag_id(USE_CASE, stage) for stage in
       ("ingest_raw", "nightly_etl", "weekly_retrain", "batch_score", "drift_report", "lake_maintenance")}
CUSTOMERS = 2000
# Models never train on the lake's first 90 days, and labels mature 30 days after a snapshot:
# the months before May are loaded in process, the way a new deployment starts.
# Seven months of history: churn's 90 warm-up days, then the 88 matured days of its purged
# split (14 train, 7 validation, 7 holdout, 30 days between each), 30 more for them to mature.
HISTORY_START, HISTORY_END = dt.date(2026, 1, 1), dt.date(2026, 7, 30)
START, END = "2026-07-31", "2026-08-16"
MONDAYS = ("2026-08-03", "2026-08-10")  # the weeks ending 08-09 and 08-16
SCORE_FROM, DRIFT_FROM = "2026-08-10", "2026-08-14"
SCORE_DAYS = [str(dt.date(2026, 8, 10) + dt.timedelta(days=i)) for i in range(7)]
EXPECTED_RUNS = {DAG["ingest_raw"]: 17, DAG["nightly_etl"]: 17, DAG["weekly_retrain"]: 2, DAG["batch_score"]: 7,
                 DAG["drift_report"]: 3}


def _days(start: dt.date, end: dt.date) -> list[str]:
    return [str(start + dt.timedelta(days=i)) for i in range((end - start).days + 1)]


def _empty_redis_dbs(count: int) -> list[int]:
    """Redis DB numbers nobody uses right now (the twin flushes only DBs that were empty)."""
    free = [db for db in range(8, 16) if redis.Redis(db=db).dbsize() == 0]
    if len(free) < count:
        pytest.fail(f"need {count} empty Redis DBs among 8..15, found {free}")
    return free[-count:]


@dataclass
class Loop:
    twin: Cluster
    settings: Settings
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


def _publish_lake(local_root: Path, lake_uri: str, endpoint: str) -> int:
    """Upload a lake folder to the bucket, data files before the Delta logs that name them.

    A Delta table only holds paths relative to itself, so the copy is the same table.
    """
    import boto3

    bucket, _, prefix = lake_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    files = sorted((p for p in local_root.rglob("*") if p.is_file()), key=lambda p: ("_delta_log" in p.parts, str(p)))
    data = [p for p in files if "_delta_log" not in p.parts]
    logs = [p for p in files if "_delta_log" in p.parts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for batch in (data, logs):
            list(pool.map(lambda p: s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local_root).as_posix()}"), batch))
    return len(files)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory):
    token = uuid.uuid4().hex[:8]
    broker_db, scores_db = _empty_redis_dbs(2)
    cluster = Cluster(
        state_dir=tmp_path_factory.mktemp("twin"),
        dotenv=None,
        ports={name: free_port() for name in ("airflow-apiserver", "mlflow", "minio", "flower")},
        overrides={
            "AIRFLOW_DB": f"sluice_twin_{token}_airflow",
            "MLFLOW_DB": f"sluice_twin_{token}_mlflow",
            "SCORES_DB": f"sluice_twin_{token}_scores",
            "CELERY_REDIS_DB": str(broker_db),
            "SCORES_REDIS_DB": str(scores_db),
            "SLUICE_BUCKET": f"sluice-twin-{token}",
            "SLUICE_SIM_CUSTOMERS": str(CUSTOMERS),
            "SLUICE_USE_CASES": USE_CASE,
        },
    )
    try:
        yield cluster
    finally:
        stopping = time.monotonic()
        cluster.down()
        print(f"twin down in {time.monotonic() - stopping:.0f}s")
        left = cluster.leftovers()
        assert not left, "the twin left processes running:\n" + "\n".join(left)
        ports = cluster.state()["ports"]
        for name in ("airflow-apiserver", "mlflow", "minio"):
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", ports[name]), timeout=1).close()
        assert not cluster.state()["processes"]


@pytest.fixture(scope="module")
def loop(twin: Cluster, tmp_path_factory: pytest.TempPathFactory):
    env = twin.service_env("airflow-worker")
    settings = load_settings(
        lake_uri=env["SLUICE_LAKE_URI"],
        s3_endpoint_url=env["SLUICE_S3_ENDPOINT_URL"],
        mlflow_tracking_uri=env["SLUICE_MLFLOW_TRACKING_URI"],
        sim_customers=CUSTOMERS,
        use_cases=env["SLUICE_USE_CASES"].split(","),
        use_case=USE_CASE,
    )
    assert twin.use_cases() == [USE_CASE] and twin.dag_ids() == sorted(DAG.values())
    result = Loop(twin, settings, env)
    begin = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        # This process reads the bucket too (history load, checks): the workers' credentials.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"):
            mp.setenv(key, env[key])
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)

        def stage(name: str, started: float) -> None:
            result.timings[name] = round(time.monotonic() - started, 1)
            print(f"{name}: {result.timings[name]}s", flush=True)

        t0 = time.monotonic()
        if os.environ.get("SLUICE_CLUSTER_TEST_HISTORY") == "s3":
            # Straight into the bucket: every Delta open is ~15 requests to moto (a Python server),
            # so this costs minutes more than the staged load below.
            twin.up(only=["minio-init"])
            pipeline.load_history(settings, HISTORY_START, HISTORY_END)
            stage("history (in process, straight into the S3 lake)", t0)
            t0 = time.monotonic()
            twin.up()
            stage("twin up", t0)
        else:
            # The same load_history, into a staging folder while the twin starts, then uploaded.
            staging = tmp_path_factory.mktemp("history") / "lake"
            local = settings.model_copy(update={"lake_uri": staging.as_uri()})
            with ThreadPoolExecutor(max_workers=1) as pool:
                history = pool.submit(pipeline.load_history, local, HISTORY_START, HISTORY_END)
                twin.up()
                stage("twin up (PostgreSQL, Redis, moto, MLflow, Airflow, 2 Celery workers)", t0)
                history.result()
            stage("history (in process) + twin up", t0)
            t0 = time.monotonic()
            files = _publish_lake(staging, settings.lake_uri, settings.s3_endpoint_url or "")
            stage(f"history uploaded to the bucket ({files} files)", t0)
        print(f"twin: {twin.urls()}")
        assert Lake(settings).partitions(TABLES.features)[-1] == str(HISTORY_END)

        t0 = time.monotonic()
        twin.backfill(DAG["ingest_raw"], START, END, max_active_runs=4)
        twin.backfill(DAG["nightly_etl"], START, END, max_active_runs=4, reprocess="failed")
        for name in (DAG["ingest_raw"], DAG["nightly_etl"]):
            twin.wait_for_runs(name, EXPECTED_RUNS[name], timeout=1500)
        stage("ingest_raw + nightly_etl", t0)

        t0 = time.monotonic()
        twin.backfill(DAG["weekly_retrain"], *MONDAYS, max_active_runs=1)
        twin.wait_for_runs(DAG["weekly_retrain"], EXPECTED_RUNS[DAG["weekly_retrain"]], timeout=1200)
        stage("weekly_retrain", t0)

        t0 = time.monotonic()
        twin.backfill(DAG["batch_score"], SCORE_FROM, END, max_active_runs=4)
        twin.wait_for_runs(DAG["batch_score"], EXPECTED_RUNS[DAG["batch_score"]], timeout=900)
        stage("batch_score", t0)

        t0 = time.monotonic()
        twin.backfill(DAG["drift_report"], DRIFT_FROM, END, max_active_runs=1)
        twin.wait_for_runs(DAG["drift_report"], EXPECTED_RUNS[DAG["drift_report"]], timeout=900)
        stage("drift_report", t0)
        stage("the loop, in all", begin)

        print("task instances: count, mean run s, mean wait from queued s")
        for row in twin.sql(
            "SELECT dag_id, task_id, count(*), round(avg(extract(epoch FROM end_date - start_date))::numeric, 1),"
            " round(avg(extract(epoch FROM start_date - queued_dttm))::numeric, 1) FROM task_instance"
            " GROUP BY dag_id, task_id ORDER BY dag_id, task_id"
        ):
            print("  " + " ".join(str(v) for v in row))
        retried = twin.retried_tries()
        if retried:  # a retry that succeeded hides its cause: show it
            print("tasks that needed a retry:\n" + "\n".join(retried))
        yield result


def test_every_run_succeeds_and_tasks_ran_on_both_workers(loop: Loop) -> None:
    for name, expected in EXPECTED_RUNS.items():
        runs = loop.twin.runs(name)
        assert len(runs) >= expected, (name, runs)
        assert all(r["state"] == "success" for r in runs), (name, [(r["run_id"], r["state"]) for r in runs])
    serialized = {row[0] for row in loop.twin.sql("SELECT dag_id FROM serialized_dag")}
    assert serialized == set(DAG.values()), "the twin's Airflow runs the DAGs of SLUICE_USE_CASES only"
    tis = [t for t in loop.twin.task_instances() if t["state"] == "success"]
    hosts = Counter(t["hostname"] for t in tis)
    print(f"successful task instances per host: {dict(hosts)}")
    workers = {Cluster.worker_hostname(i) for i in (1, 2)}
    assert set(hosts) == workers, f"tasks must run on the Celery workers only, and on both: {dict(hosts)}"
    by_dag = {dag: Counter(t["hostname"] for t in tis if t["dag_id"] == dag) for dag in EXPECTED_RUNS}
    print(f"per DAG: { {d: dict(c) for d, c in by_dag.items()} }")


def test_the_lake_is_consistent(loop: Loop) -> None:
    lake = Lake(loop.settings)
    all_days = _days(HISTORY_START, dt.date.fromisoformat(END))
    assert lake.root == f"{loop.settings.lake_uri}/{USE_CASE}", "the use case's tables live under its own prefix"
    for table in (TABLES.raw, TABLES.curated, TABLES.state, TABLES.features):
        assert lake.partitions(table) == all_days, f"{table.name}: one partition per day, no gap, no extra"
    features = lake.read_table(TABLES.features, columns=["ds", KEY]).to_pandas()
    assert not features.duplicated(["ds", KEY]).any(), "a customer appears twice in a day's features"
    curated = lake.read_table(TABLES.curated, columns=["event_id"]).to_pandas()
    assert curated["event_id"].is_unique, "a curated event appears twice"
    assert lake.partitions(TABLES.predictions) == SCORE_DAYS
    predictions = lake.read_table(TABLES.predictions, columns=["ds", KEY]).to_pandas()
    assert not predictions.duplicated(["ds", KEY]).any()
    feature_rows, predicted_rows = lake.partition_rows(TABLES.features), lake.partition_rows(TABLES.predictions)
    assert {d: predicted_rows[d] for d in SCORE_DAYS} == {d: feature_rows[d] for d in SCORE_DAYS}
    assert lake.partitions(DRIFT_HISTORY) == _days(dt.date.fromisoformat(DRIFT_FROM), dt.date.fromisoformat(END))
    assert lake.partitions(MODEL_DECISIONS) == ["2026-08-09", "2026-08-16"]


def test_the_champion_is_in_the_mlflow_server_and_its_files_in_the_bucket(loop: Loop) -> None:
    import boto3
    from mlflow import MlflowClient

    assert loop.settings.mlflow_tracking_uri.startswith("http://127.0.0.1:")
    client = MlflowClient(tracking_uri=loop.settings.mlflow_tracking_uri)
    assert loop.settings.model == f"sluice-{USE_CASE}"
    champion = client.get_model_version_by_alias(loop.settings.model, CHAMPION)
    assert CHAMPION in champion.aliases
    assert Registry(loop.settings).by_alias(CHAMPION).version == str(champion.version)

    s3 = boto3.client("s3", endpoint_url=loop.settings.s3_endpoint_url, region_name="us-east-1")
    bucket = loop.settings.lake_uri.removeprefix("s3://").split("/")[0]
    assert s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    model_id = champion.source.removeprefix("models:/") if champion.source.startswith("models:/") else None
    location = client.get_logged_model(model_id).artifact_location if model_id else client.get_run(champion.run_id).info.artifact_uri
    assert location.startswith(f"s3://{bucket}/"), location
    prefix = location.removeprefix(f"s3://{bucket}/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys), keys
    run_files = client.list_artifacts(champion.run_id, "gate")
    assert [f.path for f in run_files] == ["gate/decision.json"]


def test_published_scores_are_the_predictions(loop: Loop) -> None:
    lake = Lake(loop.settings)
    pg_url = loop.env["SLUICE_SCORES_POSTGRES_URI"]
    redis_url = loop.env["SLUICE_SCORES_REDIS_URI"]
    client = redis.Redis.from_url(redis_url)
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        for day in SCORE_DAYS:
            predicted = lake.read_partition(TABLES.predictions, day).to_pandas().set_index(KEY)
            cur.execute("SELECT customer_id, score, model_version FROM churn_scores WHERE ds = %s", (day,))
            published = {cid: (score, version) for cid, score, version in cur.fetchall()}
            assert set(published) == set(predicted.index), f"{day}: published customers differ"
            for cid, (score, version) in published.items():
                assert score == pytest.approx(predicted.at[cid, "score"], abs=1e-12)
                assert version == predicted.at[cid, "model_version"]
            cached = {int(k): json.loads(v) for k, v in client.hgetall(f"sluice:churn:{day}").items()}
            assert set(cached) == set(predicted.index), f"{day}: Redis customers differ"
            assert all(cached[c]["score"] == round(float(predicted.at[c, "score"]), 6) for c in cached)
    assert client.get("sluice:churn:latest").decode() == END


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_training_and_scoring_ran_in_the_workers_with_no_openmp_before_a_fork(loop: Loop) -> None:
    from sluice.core.train import DEFAULT_PARAMS

    tis = loop.twin.task_instances()
    workers = {Cluster.worker_hostname(i) for i in (1, 2)}
    trained = [t for t in tis if (t["dag_id"], t["task_id"]) == (DAG["weekly_retrain"], "retrain_and_gate")]
    scored = [t for t in tis if (t["dag_id"], t["task_id"]) == (DAG["batch_score"], "score_entities")]
    assert len(trained) == 2 and len(scored) == 7
    def seconds(ti: dict) -> float:  # the client gives times as ISO text, on PostgreSQL as on SQLite
        return (dt.datetime.fromisoformat(ti["end_date"]) - dt.datetime.fromisoformat(ti["start_date"])).total_seconds()

    for ti in trained + scored:
        assert ti["state"] == "success" and ti["hostname"] in workers, ti
        minutes = seconds(ti) / 60
        assert minutes < 10, f"{ti['task_id']} of {ti['run_id']} took {minutes:.1f} min: a hang?"
    print("training: " + ", ".join(f"{t['run_id']} on {t['hostname']} {seconds(t):.0f}s" for t in trained))

    # What makes LightGBM safe in Celery's prefork workers: no process that forks ever loaded it.
    # The worker parents and their pool processes fork (pool children, then the task supervisor
    # forks the task process); LightGBM and its OpenMP runtime are imported only in the task
    # process (inside the task body), which forks nothing, and run with one thread.
    assert DEFAULT_PARAMS["num_threads"] == 1
    worker_records = [r for r in loop.twin.records() if r.service == "airflow-worker"]
    assert len(worker_records) == 2
    checked = 0
    for replica, record in enumerate(worker_records, start=1):
        # (Airflow's setproctitle overwrites /proc/<pid>/environ: check what the worker was started with.)
        assert loop.twin.env("airflow-worker", replica)["OMP_NUM_THREADS"] == "1"
        for pid in record.members():
            maps = _maps(pid)
            assert "lib_lightgbm" not in maps and "libgomp" not in maps, f"{record.name} pid {pid} loaded OpenMP"
            checked += 1
    assert checked >= 4, "each worker has a parent and pool processes"
