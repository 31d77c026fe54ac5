"""The Airflow-facing edge of sluice: shared DAG arguments and run-context helpers.

This is the only module of the package that imports Airflow, and it does so
lightly (``airflow.sdk``), so that DAG files stay cheap to parse.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from airflow.sdk import CronDataIntervalTimetable, Param

from sluice.core.lineage import RunContext
from sluice.core.names import STAGES, asset_name, dag_id, early_retrain_run_id, tags
from sluice.orchestration.notify import ALERT_WEBHOOK as NOTIFY_WEBHOOK
from sluice.orchestration.notify import deadline

__all__ = ["STAGES", "asset_name", "dag_id", "deadline", "early_retrain_run_id", "tags"]  # re-exported for the DAG files

if TYPE_CHECKING:
    from sluice.settings import Settings
    from sluice.stages.monitoring import AlertOutcome

log = logging.getLogger(__name__)

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# Retries wait 1-2 min, then 2-4 min (backoff x2 with Airflow's jitter): a minute's outage is ridden out.
# What every task shares; default_args() adds the execution_timeout read from the settings.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "sluice",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3 (True would be 1: no backoff)
    "max_retry_delay": dt.timedelta(minutes=10),
}

# Training (the weekly retrain) may take this many times the bound of any other task.
TRAINING_TIMEOUT_FACTOR = 3

SOURCE_CONNECTION_ID = "sluice_source_postgres"
SCORES_POSTGRES = "sluice_scores_postgres"
SCORES_REDIS = "sluice_scores_redis"
ALERT_WEBHOOK = NOTIFY_WEBHOOK  # the webhook connection of alerts and failure notices


def deployed_use_cases() -> list[tuple[str, str]]:
    """(reference, name) of every use case this deployment runs (``SLUICE_USE_CASES``), at parse time.

    Reads the environment only: no database, connection or network.
    """
    from sluice.settings import Settings, use_case_name

    return [(ref, use_case_name(ref)) for ref in Settings().use_cases]


def approval_spec(use_case: str) -> Any:
    """The use case's ``gate.approval`` (an :class:`sluice.core.usecase.ApprovalSpec`), at parse time:
    it decides whether weekly_retrain has its approval step. Reads the spec file only."""
    from sluice.core.usecase import load_use_case

    return load_use_case(use_case).spec.gate.approval


def task_timeout(*, training: bool = False) -> dt.timedelta:
    """The ``execution_timeout`` of a task: ``SLUICE_TIMEOUT_TASK_MINUTES`` (training: times
    :data:`TRAINING_TIMEOUT_FACTOR`). Read at parse time, from the environment only."""
    from sluice.settings import Timeouts

    minutes = Timeouts().task_minutes  # only the SLUICE_TIMEOUT_* group: no use case is resolved for it
    return dt.timedelta(minutes=minutes * (TRAINING_TIMEOUT_FACTOR if training else 1))


def default_args() -> dict[str, Any]:
    """``default_args`` of every DAG: owner, retries with backoff, a bounded ``execution_timeout``
    (a sensor's whole wait is bounded by its own ``timeout``; this bounds each of its pokes), and
    the failure notifiers (:mod:`sluice.orchestration.notify`) as ``on_failure_callback``."""
    from sluice.orchestration.notify import failure_notifiers

    return {**DEFAULT_ARGS, "execution_timeout": task_timeout(), "on_failure_callback": failure_notifiers()}


_P = ParamSpec("_P")
_R = TypeVar("_R")

# Errors that a retry would only repeat: the same bad file or the same broken contract.
# By dotted name, so that nothing (pandera, pyarrow) is imported to recognise them.
BAD_INPUT_ERRORS = ("sluice.edges.sources.SourceError", "sluice.core.contracts.ContractViolation")


def is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` is (a subclass of) one of :data:`BAD_INPUT_ERRORS`."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in BAD_INPUT_ERRORS for cls in type(exc).__mro__)


def bad_input_fails_fast(body: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a task body: a bad landing file or a contract failure fails the task at once.

    Retrying would read the same input and fail the same way, after the retry delays;
    :class:`~airflow.sdk.exceptions.AirflowFailException` skips the retries. Its message is
    the error's own (it names the file, the columns, the checks). Other errors (an outage, a
    timeout) are raised as they are and retried.
    """

    @functools.wraps(body)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            if not is_bad_input(exc):
                raise
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc

    return run


def daily() -> CronDataIntervalTimetable:
    """Daily at midnight UTC with a data interval of one whole day: run D covers [D, D+1)."""
    return CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def weekly() -> CronDataIntervalTimetable:
    """Mondays 00:00 UTC; the data interval is the week (Monday to Sunday) that just ended."""
    return CronDataIntervalTimetable("0 0 * * 1", timezone="UTC")


def partition_day_param() -> Param:
    return Param(
        None,
        type=["null", "string"],
        format="date",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="Partition day",
        description=(
            "Day to process, YYYY-MM-DD. Leave empty to use the run's data interval "
            "(for a manual run: the last complete day)."
        ),
    )


def partition_day(context: Mapping[str, Any]) -> dt.date:
    """The day this run is for: the ``partition_day`` param, else the data interval start.

    Never the wall clock: a scheduled run, a backfill and a manual trigger for the same
    day all read and write the same partition.
    """
    params = context.get("params") or {}
    chosen = params.get("partition_day")
    if chosen:
        return dt.date.fromisoformat(str(chosen))
    start = context.get("data_interval_start")
    if start is None:
        raise ValueError("this run has no data interval: trigger it with the partition_day param")
    return start.astimezone(dt.UTC).date()


def as_of_day(context: Mapping[str, Any]) -> dt.date:
    """For a weekly run: the ``partition_day`` param, else the last whole day of the data interval."""
    params = context.get("params") or {}
    if params.get("partition_day"):
        return dt.date.fromisoformat(str(params["partition_day"]))
    end = context.get("data_interval_end")
    if end is None:
        raise ValueError("this run has no data interval: trigger it with the partition_day param")
    return end.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def partition_ready(use_case: str, table: str, day: dt.date) -> bool:
    """Whether a table of the use case has partition ``day`` yet: what every wait_for_* sensor asks.

    ``table`` is a role of the use case's tables (raw, curated, features, predictions, ...)
    or the name of a record table.
    """
    from sluice.core import usecase
    from sluice.edges.lake import Lake
    from sluice.tables import Table, by_name

    settings = runtime_settings(use_case)
    tables = usecase.of(settings).tables
    lake = Lake(settings)
    found: Table = getattr(tables, table) if table in ROLES else by_name(table)
    return lake.has_partition(found, day.isoformat())


ROLES = ("raw", "quarantine", "curated", "state", "features", "predictions")


UNFINISHED = ("queued", "running")


def retrain_runs_taking_effect_on(day: dt.date) -> tuple[list[dt.datetime], list[str]]:
    """The weekly_retrain runs whose promotion would take effect on ``day`` (decided as of day-1):
    the scheduled or backfilled run of the week ending day-1 when that is a Sunday (by logical
    date, the Monday that starts the week), and an early retrain after drift_report day-1 (by run id)."""
    as_of = day - dt.timedelta(days=1)
    logical_dates = []
    if as_of.weekday() == 6:
        monday = as_of - dt.timedelta(days=6)
        logical_dates.append(dt.datetime(monday.year, monday.month, monday.day, tzinfo=dt.UTC))
    return logical_dates, [early_retrain_run_id(as_of.isoformat())]


def retraining_settled(ti: Any, day: dt.date, retrain_dag_id: str) -> bool:
    """Whether no retraining that could change the champion of ``day`` is still queued or running.

    What batch_score waits for before it resolves the model: on a Monday the week's retraining is
    due at the same midnight, and in a backfill the two DAGs' runs interleave. A run that does not
    exist is not waited for (weekly_retrain paused, or not backfilled over that week).
    """
    logical_dates, run_ids = retrain_runs_taking_effect_on(day)
    pending = 0
    if logical_dates:
        pending += ti.get_dr_count(dag_id=retrain_dag_id, logical_dates=logical_dates, states=list(UNFINISHED))
    pending += ti.get_dr_count(dag_id=retrain_dag_id, run_ids=run_ids, states=list(UNFINISHED))
    if pending:
        log.info("waiting for %d %s run(s) decided as of %s to finish", pending, retrain_dag_id, day - dt.timedelta(days=1))
    return pending == 0


def run_context(context: Mapping[str, Any]) -> RunContext:
    dag_run = context["dag_run"]
    return RunContext(dag_id=dag_run.dag_id, run_id=dag_run.run_id)


def runtime_settings(use_case: str | None = None) -> Settings:
    """Settings for a task of ``use_case``: the environment, plus the source connection when one exists."""
    from sluice.settings import load_settings

    settings = load_settings()
    if use_case is not None:
        settings = settings.for_use_case(use_case)
    if settings.source == "postgres" and not settings.source_postgres_dsn:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from sluice.edges.sources import SourceError

        try:
            dsn = postgres_dsn(SOURCE_CONNECTION_ID)
        except AirflowNotFoundException as exc:
            raise SourceError(
                f"SLUICE_SOURCE=postgres needs SLUICE_SOURCE_POSTGRES_DSN or the connection {SOURCE_CONNECTION_ID} "
                "(airflow_settings.yaml creates it from SLUICE_SOURCE_POSTGRES_URI)"
            ) from exc
        settings = settings.model_copy(update={"source_postgres_dsn": dsn})
    return settings


def connection_or_skip(conn_id: str, off: str = "publisher off") -> Any:
    """The Airflow connection, or skip the task when it is not configured (the publisher is off)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSkipException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise AirflowSkipException(f"connection {conn_id} is not configured: {off}") from exc


def publish_scores(use_case: str, kind: str, conn_id: str, ds: str) -> int:
    """Publish the predictions of ``ds`` through the connection ``conn_id`` (skip if absent)."""
    from sluice.core import usecase
    from sluice.edges import publish
    from sluice.edges.lake import Lake

    connection_or_skip(conn_id)
    settings = runtime_settings(use_case)
    uc = usecase.of(settings)
    target = publish.Target.for_use_case(uc)
    scores = Lake(settings).read_partition(uc.tables.predictions, ds).to_pandas()
    if kind == "postgres":
        return publish.publish_postgres(postgres_dsn(conn_id), scores, target, settings.timeouts)
    return publish.publish_redis(redis_url(conn_id), scores, ds, target, settings.timeouts)


def postgres_dsn(conn_id: str) -> str:
    """The libpq DSN of a ``postgres`` connection, read the way PostgresHook reads it.

    The provider's hook resolves the connection (with its IAM token when ``extra.iam`` asks for
    one) and its extras are libpq parameters (``sslmode``, ``sslrootcert``, ``application_name``,
    ...) except the hook's own options; psycopg2's ``make_dsn`` quotes them. The DSN, not the
    hook's connection, goes to the edge: ``bounded_connection`` adds the timeouts every
    connection of Sluice has, which ``PostgresHook.get_conn`` would not.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from psycopg2.extensions import make_dsn

    hook = PostgresHook(postgres_conn_id=conn_id)
    conn = hook.connection
    login, password, port = conn.login, conn.password, conn.port
    if conn.extra_dejson.get("iam", False):
        login, password, port = hook.get_iam_token(conn)
    params: dict[str, Any] = {"host": conn.host, "port": port or 5432, "dbname": hook.database or conn.schema,
                              "user": login, "password": password}
    params |= {k: v for k, v in conn.extra_dejson.items() if k not in hook.ignored_extra_options}
    return make_dsn(**{k: v for k, v in params.items() if v not in (None, "")})


def redis_url(conn_id: str) -> str:
    """The redis-py URL of a ``redis`` connection, read the way RedisHook reads it.

    RedisHook takes the database from ``extra.db`` and TLS from ``extra.ssl`` (with ``ssl_*``
    options); a connection given as a URI (``redis://host:6379/3``) holds the database in its
    schema, which counts when ``extra.db`` is absent. Returned as a URL because the edge builds
    its own client: with the socket timeouts and the no-retry policy RedisHook does not set.
    """
    from urllib.parse import quote, urlencode

    from airflow.providers.redis.hooks.redis import RedisHook

    conn = RedisHook.get_connection(conn_id)
    extra = conn.extra_dejson
    db = extra.get("db")
    if db in (None, ""):
        db = conn.schema or 0
    password = None if str(conn.password).lower() in ("none", "false", "") else conn.password
    auth = ""
    if conn.login or password:
        auth = f"{quote(conn.login or '', safe='')}{':' + quote(password, safe='') if password else ''}@"
    ssl = str(extra.get("ssl", False)).lower() in ("true", "1")
    query = {k: v for k, v in extra.items() if k.startswith("ssl_") and v not in (None, "")} if ssl else {}
    url = f"{'rediss' if ssl else 'redis'}://{auth}{conn.host or '127.0.0.1'}:{conn.port or 6379}/{int(db)}"
    return f"{url}?{urlencode(query)}" if query else url


def send_alert_notice(payload: Mapping[str, Any]) -> int:
    """Send an alert through every configured channel (``notify.alert_channels``: the webhook
    connection ``sluice_alert_webhook``, the Slack connection ``sluice_notify_slack``); returns
    the first channel's HTTP status. Without any channel the task is skipped: nothing is sent."""
    from airflow.sdk.exceptions import AirflowSkipException

    from sluice.orchestration.notify import SLACK_WEBHOOK, alert_channels

    channels = alert_channels()
    if not channels:
        raise AirflowSkipException(f"no alert channel is configured ({ALERT_WEBHOOK}, {SLACK_WEBHOOK}): alert not sent")
    return [send(payload) for send in channels][0]


def check_volume(use_case: str, day: dt.date, ctx: RunContext) -> dict[str, Any]:
    """ingest_raw's volume check of ``day``; its alert goes through the alert channels."""
    from sluice.stages.monitoring import check_day_volume

    return check_day_volume(runtime_settings(use_case), day, ctx, send_alert_notice)


def send_day_alert(
    use_case: str, day: dt.date, ctx: RunContext, drift: Mapping[str, Any], performance: Mapping[str, Any]
) -> AlertOutcome:
    """drift_report's alert of ``day``: the reasons not sent yet, through the alert channels."""
    from sluice.stages.monitoring import send_day_alert as send

    return send(runtime_settings(use_case), day, ctx, drift, performance, send_alert_notice)


# Where a stage's summary holds the Delta version and the rows written of each asset it marks.
_ASSET_FIELDS = {
    "raw": ("version", "rows"),
    "curated": ("curated_version", "valid"),
    "quarantine": ("quarantine_version", "quarantined"),
    "features": ("features_version", "entities"),
    "predictions": ("predictions_version", "rows"),
}


def asset_extra(kind: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Pure: the ``extra`` of the asset event of ``kind`` for a stage's summary: table version, day, rows."""
    if kind == "shadow":  # the challenger's scores of the day (none written: no challenger on that day)
        shadow = summary.get("shadow") or {}
        return {"ds": summary.get("ds"), "delta_version": shadow.get("version"), "rows": shadow.get("rows", 0),
                "model_version": shadow.get("model_version"), "champion_version": summary.get("model_version"),
                "feature_table_version": summary.get("feature_table_version")}
    version_key, rows_key = _ASSET_FIELDS[kind]
    extra: dict[str, Any] = {"ds": summary.get("ds"), "delta_version": summary.get(version_key),
                             "rows": summary.get(rows_key)}
    if kind in ("curated", "quarantine"):
        extra.update(rows_in=summary.get("rows_in"), rows_quarantined=summary.get("quarantined"),
                     duplicates_removed=summary.get("duplicates_removed"))
    if kind == "predictions":
        extra.update(model_version=summary.get("model_version"), feature_table_version=summary.get("feature_table_version"))
    if kind == "features":
        extra.update(state_version=summary.get("state_version"), labelled_snapshot=summary.get("labelled_snapshot"))
    return extra


def emit_assets(context: Mapping[str, Any], use_case: str, summary: Mapping[str, Any], *kinds: str) -> None:
    """Attach what was written (Delta version, day, rows, quarantined) to the task's asset events,
    so that the Assets view of the UI says which version of which day an update made."""
    from airflow.sdk import Asset

    events = context["outlet_events"]
    for kind in kinds:
        events[Asset(asset_name(use_case, kind))].extra = asset_extra(kind, summary)
