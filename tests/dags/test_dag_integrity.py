"""DAG integrity: every file imports, every DAG is configured on purpose, and parsing
the DAG folder makes no metadata-DB query, looks up no connection or variable, and
imports none of the heavy libraries (they belong inside task bodies). Every task is
bounded (execution_timeout from the settings) and rides out a minute's outage by
retrying; a bad input fails it at once.

Each file of dags/ builds one DAG per use case of ``SLUICE_USE_CASES``: here two
(churn and purchases), so the folder must parse into both sets of six DAGs (the five stages and
lake_maintenance).
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest

from sluice.orchestration.context import STAGES, dag_id

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
USE_CASES = ("churn", "purchases")
DEPLOYED = {"SLUICE_USE_CASES": ",".join(USE_CASES)}
EXPECTED_DAGS = {dag_id(uc, stage): (uc, stage) for uc in USE_CASES for stage in STAGES}
DAILY = ("ingest_raw", "nightly_etl", "batch_score", "drift_report", "lake_maintenance")
HEAVY = ("pandas", "pandera", "deltalake", "lightgbm", "mlflow", "sklearn", "evidently", "boto3", "psycopg2")


class _Forbidden(AssertionError):
    pass


def _refuse(*args: object, **kwargs: object) -> None:
    raise _Forbidden(f"connection or variable looked up while parsing: {args}")


def _parse(use_cases: str, **env: str):
    """Parse the DAG folder for ``SLUICE_USE_CASES=use_cases`` (and ``env``) while counting DB
    queries and refusing connection/variable lookups."""
    import airflow.settings as settings
    from airflow.dag_processing.dagbag import DagBag
    from sqlalchemy import event

    queries: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        queries.append(statement)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"SLUICE_USE_CASES": use_cases, **env}))
        stack.enter_context(mock.patch("airflow.sdk.execution_time.context._get_connection", side_effect=_refuse))
        stack.enter_context(mock.patch("airflow.sdk.execution_time.context._get_variable", side_effect=_refuse))
        stack.enter_context(mock.patch("airflow.models.variable.Variable.get", side_effect=_refuse))
        stack.enter_context(
            mock.patch("airflow.models.connection.Connection.get_connection_from_secrets", side_effect=_refuse)
        )
        event.listen(settings.engine, "before_cursor_execute", count)
        try:
            bag = DagBag(dag_folder=str(DAGS_DIR), safe_mode=False)
        finally:
            event.remove(settings.engine, "before_cursor_execute", count)
    bag.parse_queries = queries  # type: ignore[attr-defined]
    return bag


@pytest.fixture(scope="module")
def dagbag(migrated_db: None):
    return _parse(DEPLOYED["SLUICE_USE_CASES"])


def test_every_dag_file_imports_into_six_dags_per_use_case(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == set(EXPECTED_DAGS)
    assert len(dagbag.dags) == 12


def test_parsing_makes_no_metadata_query(dagbag) -> None:
    assert dagbag.parse_queries == []


def test_a_deployment_parses_only_its_own_use_cases(migrated_db: None) -> None:
    bag = _parse("purchases")
    assert bag.import_errors == {}
    assert set(bag.dags) == {dag_id("purchases", stage) for stage in STAGES}
    assert bag.parse_queries == []


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_parsing_imports_no_heavy_library(dag_file: Path) -> None:
    code = (
        "import runpy, sys\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ | DEPLOYED
    )
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"{dag_file.name} imports {out.stdout.strip()} at parse time"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_is_configured_on_purpose(dagbag, dag_id: str) -> None:
    use_case, stage = EXPECTED_DAGS[dag_id]
    dag = dagbag.dags[dag_id]
    assert Path(dag.fileloc).stem == stage, "each stage's file builds that stage's DAGs"
    assert dag.dag_id == f"{use_case}__{stage}"
    assert "sluice" in dag.tags and f"use_case:{use_case}" in dag.tags, dag.tags
    assert dag.doc_md and "backfill" in dag.doc_md, "doc_md must say how to backfill"
    assert dag.max_active_runs is not None
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.owner and task.owner != "airflow", f"{task.task_id} has no owner"
        assert task.retries >= 2, f"{task.task_id} retries {task.retries}"
        assert task.retry_delay.total_seconds() > 0


# Airflow's retry schedule: try n waits retry_delay * backoff**(n-1) at least (its jitter only adds).
OUTAGE = dt.timedelta(minutes=1)


def _least_retry_wait(task) -> dt.timedelta:  # noqa: ANN001
    """The shortest time between a task's first failure and its last try."""
    backoff = task.retry_exponential_backoff or 1.0
    waits = [task.retry_delay * backoff ** n for n in range(task.retries)]
    if task.max_retry_delay:
        waits = [min(w, task.max_retry_delay) for w in waits]
    return sum(waits, dt.timedelta())


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_every_task_is_bounded_and_rides_out_a_minutes_outage(dagbag, dag_id: str) -> None:
    from airflow.sdk.bases.sensor import BaseSensorOperator

    from sluice.settings import Settings

    bound = dt.timedelta(minutes=Settings().timeouts.task_minutes)
    for task in dagbag.dags[dag_id].tasks:
        timeout = task.execution_timeout
        assert timeout is not None and timeout > dt.timedelta(0), f"{task.task_id} has no execution_timeout"
        assert timeout == (3 * bound if task.task_id == "retrain_and_gate" else bound), (task.task_id, timeout)
        if isinstance(task, BaseSensorOperator):  # a sensor's whole wait has its own bound
            assert 0 < task.timeout <= dt.timedelta(hours=12).total_seconds(), (task.task_id, task.timeout)
            assert task.mode == "reschedule", f"{task.task_id} holds a worker slot while it waits"
        assert task.retries >= 2 and task.retry_delay > dt.timedelta(0), task.task_id
        assert _least_retry_wait(task) > OUTAGE, f"{task.task_id} gives up after {_least_retry_wait(task)}"
        assert task.retry_exponential_backoff > 1, f"{task.task_id}: no backoff ({task.retry_exponential_backoff})"


def test_execution_timeouts_are_read_from_the_environment_at_parse_time(migrated_db: None) -> None:
    bag = _parse("purchases", SLUICE_TIMEOUT_TASK_MINUTES="7")
    assert bag.import_errors == {} and bag.parse_queries == []
    timeouts = {(d.dag_id, t.task_id): t.execution_timeout for d in bag.dags.values() for t in d.tasks}
    assert timeouts.pop((dag_id("purchases", "weekly_retrain"), "retrain_and_gate")) == dt.timedelta(minutes=21)
    assert set(timeouts.values()) == {dt.timedelta(minutes=7)}


def test_every_task_body_fails_fast_on_bad_input(dagbag) -> None:
    """Each TaskFlow body is wrapped by bad_input_fails_fast (TriggerDagRunOperator runs no sluice code)."""
    from sluice.orchestration.context import bad_input_fails_fast

    wrapper = bad_input_fails_fast(lambda: None).__code__
    bodies = [(d, t) for d in dagbag.dags.values() for t in d.tasks if hasattr(t, "python_callable")]
    assert len(bodies) == 2 * (2 + 3 + 5 + 2 + 6 + 2)  # ingest, etl, score, retrain, drift, maintenance
    for dag, task in bodies:
        assert task.python_callable.__code__ is wrapper, f"{dag.dag_id}.{task.task_id} is not wrapped"
        assert inspect.unwrap(task.python_callable).__name__ == task.task_id


@pytest.mark.parametrize(
    ("error", "fails_fast"),
    [
        ("sluice.edges.sources.SourceError", True),
        ("sluice.core.contracts.ContractViolation", True),
        ("sluice.stages.monitoring.DriftError", False),
        ("sluice.edges.alerts.AlertError", False),
        ("builtins.TimeoutError", False),
    ],
)
def test_bad_input_fails_without_retries_and_keeps_its_message(error: str, fails_fast: bool) -> None:
    import importlib

    from airflow.sdk.exceptions import AirflowFailException

    from sluice.orchestration.context import bad_input_fails_fast

    module, name = error.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    message = "s3://landing/ds=2026-03-01/events.csv: missing column(s) ['amount']"

    @bad_input_fails_fast
    def body(x: int, *, y: int) -> int:
        raise cls(message)

    with pytest.raises(AirflowFailException if fails_fast else cls, match=r"missing column\(s\) \['amount'\]") as got:
        body(1, y=2)
    if fails_fast:
        assert isinstance(got.value.__cause__, cls), "the original error stays attached"
    assert bad_input_fails_fast(lambda x, *, y: x + y)(1, y=2) == 3


def test_assets_are_named_per_use_case(dagbag) -> None:
    """Each use case's tasks mark its own assets: an update of churn's features never looks like purchases'."""
    for dag_id_, (use_case, _stage) in EXPECTED_DAGS.items():
        for task in dagbag.dags[dag_id_].tasks:
            for outlet in task.outlets:
                assert outlet.name.startswith(f"sluice.{use_case}."), (dag_id_, task.task_id, outlet.name)


@pytest.mark.parametrize("dag_id", sorted(d for d, (_, stage) in EXPECTED_DAGS.items() if stage in DAILY))
def test_daily_dags_have_a_whole_day_data_interval(dagbag, dag_id: str) -> None:
    import datetime as dt

    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval

    # What the scheduler uses: the core twin of the DAG's timetable.
    timetable = coerce_to_core_timetable(dagbag.dags[dag_id].timetable)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        ),
        restriction=mock.Mock(earliest=None, latest=None, catchup=True),
    )
    assert info.data_interval.start == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert info.data_interval.end - info.data_interval.start == dt.timedelta(days=1)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_partition_day_param_rejects_bad_values(dagbag, dag_id: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    param = dagbag.dags[dag_id].params.get_param("partition_day")
    assert param.description, "the trigger form must explain the param"
    assert param.resolve(None) is None
    assert param.resolve("2026-01-05") == "2026-01-05"
    for bad in ("2026-13-01", "2026-02-30", "yesterday", "2026-01-01' OR 1=1 --", "../../etc", "20260105"):
        with pytest.raises(ParamValidationError):
            param.resolve(bad)


@pytest.mark.parametrize("use_case", USE_CASES)
def test_weekly_retrain_runs_in_the_training_pool_with_typed_params(dagbag, use_case: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags[dag_id(use_case, "weekly_retrain")]
    assert dag.get_task("retrain_and_gate").pool == "training"
    assert dag.max_active_runs == 1
    params = dag.params
    for name in ("partition_day", "dry_run", "force_promote", "reason"):
        assert params.get_param(name).description, name
    assert params.get_param("dry_run").resolve(True) is True
    with pytest.raises(ParamValidationError):
        params.get_param("dry_run").resolve("yes please")
    with pytest.raises(ParamValidationError):
        params.get_param("reason").resolve("x" * 501)


def test_weekly_retrain_as_of_day_is_the_sunday_that_ends_the_week() -> None:
    import datetime as dt

    from sluice.orchestration.context import as_of_day

    monday = dt.datetime(2026, 2, 9, tzinfo=dt.UTC)
    context = {"params": {}, "data_interval_start": monday, "data_interval_end": monday + dt.timedelta(days=7)}
    assert as_of_day(context) == dt.date(2026, 2, 15)
    assert as_of_day({"params": {"partition_day": "2026-02-20"}}) == dt.date(2026, 2, 20)


@pytest.mark.parametrize("use_case", USE_CASES)
def test_drift_report_triggers_its_own_use_cases_retraining(dagbag, use_case: str) -> None:
    trigger = dagbag.dags[dag_id(use_case, "drift_report")].get_task("trigger_weekly_retrain")
    assert trigger.trigger_dag_id == dag_id(use_case, "weekly_retrain")


class _RecordingTI:
    """A task instance that answers get_dr_count with 0 and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict] = []

    def get_dr_count(self, **kwargs: object) -> int:
        self.asked.append(kwargs)
        return 0


def test_batch_score_waits_for_the_retraining_whose_promotion_takes_effect_on_its_day(dagbag) -> None:
    """Scoring Monday D+1 waits for the weekly run decided as of Sunday D (found by the logical date
    the real timetable gives that run) and for an early retrain after drift_report D; other days
    wait only for an early retrain. Each use case's sensor asks about its own `<use case>__weekly_retrain`."""
    import datetime as dt

    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval

    from sluice.orchestration.context import as_of_day, retrain_runs_taking_effect_on
    from sluice.stages.promotions import effective_day

    for use_case in USE_CASES:
        dag = dagbag.dags[dag_id(use_case, "batch_score")]
        assert {"wait_for_features", "wait_for_retraining"} <= dag.get_task("score_entities").upstream_task_ids
    timetable = coerce_to_core_timetable(dagbag.dags[dag_id("churn", "weekly_retrain")].timetable)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(
            dt.datetime(2026, 5, 4, tzinfo=dt.UTC), dt.datetime(2026, 5, 11, tzinfo=dt.UTC)
        ),
        restriction=mock.Mock(earliest=None, latest=None, catchup=True),
    )
    decided = as_of_day({"params": {}, "data_interval_start": info.data_interval.start,
                         "data_interval_end": info.data_interval.end})
    assert decided == dt.date(2026, 5, 17)
    monday = dt.date.fromisoformat(effective_day(decided.isoformat()))
    assert monday == dt.date(2026, 5, 18)
    assert retrain_runs_taking_effect_on(monday) == ([info.logical_date], ["early_retrain__2026-05-17"])
    for day in (dt.date(2026, 5, 17), dt.date(2026, 5, 19), dt.date(2026, 5, 24)):
        assert retrain_runs_taking_effect_on(day) == ([], [f"early_retrain__{day - dt.timedelta(days=1)}"])

    # The sensor itself, run with a task instance that records the runs it asks about.
    for use_case in USE_CASES:
        sensor = dagbag.dags[dag_id(use_case, "batch_score")].get_task("wait_for_retraining")
        ti = _RecordingTI()
        context = {"ti": ti, "params": {"partition_day": monday.isoformat()}}
        body = inspect.unwrap(sensor.python_callable)  # inside bad_input_fails_fast
        with mock.patch.dict(body.__globals__, {"get_current_context": lambda c=context: c}):
            assert sensor.python_callable() is True
        assert {a["dag_id"] for a in ti.asked} == {dag_id(use_case, "weekly_retrain")}, ti.asked
        assert [a.get("logical_dates") for a in ti.asked if a.get("logical_dates")] == [[info.logical_date]]
        assert [a.get("run_ids") for a in ti.asked if a.get("run_ids")] == [["early_retrain__2026-05-17"]]


@pytest.mark.parametrize("use_case", USE_CASES)
def test_lake_maintenance_retires_state_before_it_maintains_the_tables_one_run_at_a_time(
    dagbag, use_case: str
) -> None:
    dag = dagbag.dags[dag_id(use_case, "lake_maintenance")]
    assert dag.max_active_runs == 1, "two upkeeps of one lake would race to delete the same files"
    assert dag.get_task("maintain_tables").upstream_task_ids == {"retire_old_state"}
    assert [o.name for o in dag.get_task("maintain_tables").outlets] == [f"sluice.{use_case}.lake.upkeep"]


def test_every_task_notifies_its_failure(dagbag) -> None:
    """on_failure_callback of every task holds the webhook and Slack notifiers (and SMTP's only when asked for)."""
    from sluice.orchestration.notify import SlackFailureNotifier, WebhookFailureNotifier

    for dag in dagbag.dags.values():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert [type(c) for c in callbacks] == [WebhookFailureNotifier, SlackFailureNotifier], (
                f"{dag.dag_id}.{task.task_id}")


def test_the_daily_dags_have_a_deadline_alert_and_the_others_none(dagbag) -> None:
    for dag in dagbag.dags.values():
        stage = dag.dag_id.split("__", 1)[1]
        alerts = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline] if dag.deadline else []
        if stage in ("ingest_raw", "nightly_etl", "batch_score", "drift_report"):
            assert len(alerts) == 1, dag.dag_id
            assert alerts[0].callback.kwargs["stage"] == stage
        else:
            assert alerts == [], dag.dag_id


def test_a_use_case_that_requires_approval_asks_a_person_before_it_promotes(migrated_db: None, tmp_path: Path) -> None:
    """gate.approval.required adds Airflow's ApprovalOperator and the task that records its answer."""
    import shutil

    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from sluice.core.usecase import load_use_case

    folder = tmp_path / "approved" / "churn"
    shutil.copytree(load_use_case("churn").folder, folder)
    spec = folder / "usecase.yaml"
    spec.write_text(spec.read_text().replace(
        "  slice_min_rows: 300\n", "  slice_min_rows: 300\n  approval: {required: true, timeout_hours: 36, approvers: [risk]}\n"))
    bag = _parse(str(folder))
    assert bag.import_errors == {} and bag.parse_queries == []
    dag = bag.dags[dag_id("churn", "weekly_retrain")]
    ask = dag.get_task("approve_promotion")
    assert isinstance(ask, ApprovalOperator)
    assert ask.upstream_task_ids == {"retrain_and_gate"} and ask.downstream_task_ids == {"settle_approval"}
    assert ask.response_timeout == dt.timedelta(hours=36) and ask.defaults == ["Reject"]  # no answer: the champion stays
    assert ask.assigned_users == [{"id": "risk", "name": "risk"}] and "comment" in ask.params
    assert dag.get_task("settle_approval").trigger_rule == "all_success"
    assert ask.retries >= 2 and ask.execution_timeout is not None
    # Without the requirement the retraining has no approval step (the default use cases).
    plain = _parse("churn").dags[dag_id("churn", "weekly_retrain")]
    assert set(plain.task_ids) == {"wait_for_features", "retrain_and_gate"}
