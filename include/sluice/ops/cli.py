"""The ``sluice`` command: ``usecase``, ``status``, ``demo``, ``load-history``, ``model``, ``serve``, ``airflow-env``.

Commands that read or write one use case's lake take ``--use-case NAME`` (a built-in
name or a folder); the default is ``SLUICE_USE_CASE``, else the first of ``SLUICE_USE_CASES``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.core.train import SplitPlan

log = logging.getLogger("sluice")


def _settings(args: argparse.Namespace):
    """The settings of the environment, for the use case the command names (if it names one)."""
    from sluice.settings import load_settings

    settings = load_settings()
    ref = getattr(args, "use_case", None)
    return settings.for_use_case(ref) if ref else settings


def _status(args: argparse.Namespace) -> int:
    from sluice.core import usecase
    from sluice.edges.lake import Lake

    settings = _settings(args)
    uc = usecase.of(settings)
    from sluice.stages.staleness import stale_days
    from sluice.stages.upkeep import upkeep_summary

    lake = Lake(settings)
    statuses = lake.status()
    stale = stale_days(settings)
    upkeep = upkeep_summary(settings, lake)
    from sluice.stages.monitoring.volume import days_outside_band

    volume = days_outside_band(lake)
    if args.json:
        print(json.dumps({"use_case": uc.name, "lake": settings.lake_root, "tables": [asdict(s) for s in statuses],
                          "stale": stale, "upkeep": upkeep, "volume_outside_band": volume}, indent=2, default=str))
        return 0
    print(f"use case: {uc.name}   lake: {settings.lake_root}")
    header = f"{'table':31} {'version':>7} {'partitions':>10} {'latest':>11} {'rows latest':>11} {'rows total':>11}"
    print(header)
    print("-" * len(header))
    for s in statuses:
        version = "-" if s.version is None else str(s.version)
        print(
            f"{s.table:31} {version:>7} {s.partitions:>10} {s.latest_partition or '-':>11} "
            f"{s.rows_latest_partition:>11,} {s.rows_total:>11,}"
        )
    quarantined = next(s for s in statuses if s.table == uc.tables.quarantine.name)
    print(f"\nquarantined rows: {quarantined.rows_total:,} in {quarantined.partitions} partitions")
    _print_upkeep(upkeep, uc.name)
    if volume:
        print(f"\nVOLUME: {len(volume)} day(s) of {uc.tables.raw.name} outside the band around the trailing median:")
        for r in volume[-10:]:
            print(f"  {r['ds']}: {r['rows']:,} rows, {r['ratio']:.0%} of the median {r['median']:,.0f} ({r['verdict']})")
    if stale:
        first = min(stale)
        print(f"\nSTALE: the state and features of {len(stale)} day(s), {first} .. {max(stale)}, were built on "
              f"inputs rewritten since ({first}: {stale[first]}).\n"
              f"  sluice rebuild --use-case {uc.name} --from {first}   brings them up to date")
    return 0


def _print_upkeep(summary: list, use_case: str) -> None:
    """Files and bytes per table after its last lake_maintenance run (from lake/upkeep)."""
    done = [u for u in summary if u["last_upkeep"] is not None]
    if not done:
        print(f"\nlake upkeep: never ran (the {use_case}__lake_maintenance DAG is paused until unpaused)")
        return
    print(f"\nlake upkeep (after the last {use_case}__lake_maintenance run):")
    header = f"{'table':31} {'files':>7} {'MB':>9} {'live files':>10} {'live MB':>9} {'pinned':>10}  last upkeep"
    print(header)
    print("-" * len(header))
    for u in done:
        pinned = ",".join(str(v) for v in u["pinned_versions"]) or "-"
        print(f"{u['table']:31} {u['files']:>7,} {u['bytes'] / 1e6:>9.2f} {u['live_files']:>10,} "
              f"{u['live_bytes'] / 1e6:>9.2f} {pinned:>10}  {u['last_upkeep'][:19]}")


def _upkeep(args: argparse.Namespace) -> int:
    from sluice.edges.lake import Lake
    from sluice.edges.upkeep import collect_orphans

    settings = _settings(args)
    lake = Lake(settings)
    total = 0
    for table in lake.all_tables():
        if not lake.exists(table):
            continue
        found = collect_orphans(lake, table, older_than=dt.timedelta(hours=args.older_than_hours),
                                dry_run=args.dry_run)
        total += len(found)
        for path in found:
            print(f"{'would delete' if args.dry_run else 'deleted'} {table.name}/{path}")
    print(f"{total} unreferenced data file(s) {'found' if args.dry_run else 'deleted'} in {settings.lake_root}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from sluice.core.lineage import RunContext
    from sluice.stages.staleness import rebuild, stale_days

    settings = _settings(args)
    days = rebuild(settings, args.start, RunContext("sluice-cli", f"rebuild-from-{args.start}"), args.end)
    left = stale_days(settings)
    print(f"rebuilt the state and features of {len(days)} day(s)"
          + (f", {days[0]} .. {days[-1]}" if days else "") + (f"; still stale: {sorted(left)}" if left else ""))
    return 1 if left else 0


def _days(start: str, end: str) -> int:
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1


def _mondays(history_start: str, start: str, end: str, warmup_days: int, horizon: int, plan: SplitPlan) -> list[str]:
    """Logical dates of the weekly runs in [start, end] that can train: their Sunday has enough
    matured snapshot days after the warm-up for ``plan``'s purged split. Earlier weeks would
    only skip (the end-to-end tests cover that path)."""
    from sluice.core.train import NotEnoughData, training_days

    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    lake_days = [d.isoformat() for d in _day_range(dt.date.fromisoformat(history_start), last)]
    day = first + dt.timedelta(days=(7 - first.weekday()) % 7)
    out = []
    while day + dt.timedelta(days=6) <= last:
        try:
            plan.cut(training_days(lake_days, day + dt.timedelta(days=6), horizon=horizon, warmup_days=warmup_days))
            out.append(day.isoformat())
        except NotEnoughData:
            pass
        day += dt.timedelta(days=7)
    return out


def _day_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _wait(airflow, dag_id: str, expected: int, timeout: float, step, home: Path) -> bool:
    runs = airflow.wait_for_runs(dag_id, expected, timeout=timeout)
    failed = [r["run_id"] for r in runs if r["state"] != "success"]
    step(f"{dag_id}: {len(runs) - len(failed)} runs succeeded, {len(failed)} failed")
    if failed:
        print(f"failed runs of {dag_id}: {failed}; task logs under {home / 'logs'}", file=sys.stderr)
    return not failed


def _demo(args: argparse.Namespace) -> int:
    import os

    from sluice.core import usecase
    from sluice.core.names import dag_id as stage_dag_id
    from sluice.ops.embedded import LocalAirflow, free_port
    from sluice.settings import load_settings
    from sluice.stages import etl as pipeline
    from sluice.stages.retrain import split_plan, warmup_days

    project = Path(args.project).resolve()
    home = project / ".airflow"
    lake = project / ".lake"
    ref = args.use_case or load_settings().use_case
    uc = usecase.load_use_case(ref)
    env = {
        "SLUICE_LAKE_URI": lake.as_uri(),
        # The demo's Airflow runs this use case's five DAGs only.
        "SLUICE_USE_CASES": ref,
        "SLUICE_USE_CASE": ref,
        "SLUICE_MLFLOW_TRACKING_URI": f"sqlite:///{project / '.mlflow' / 'mlflow.db'}",
        "SLUICE_SIM_CUSTOMERS": str(args.customers),
        "SLUICE_SIM_DEFECT_RATE": str(args.defect_rate),
        "SLUICE_SIM_DRIFT": args.drift,
    }
    started = time.monotonic()

    def step(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    # The demo is a fresh run every time: its Airflow home, lake and MLflow store are demo state.
    for path in (home, lake, project / ".mlflow"):
        if path.exists():
            shutil.rmtree(path)
    os.environ.update(env)
    settings = load_settings()
    step(f"use case {uc.name} ({uc.folder}): {len(uc.feature_columns)} features, label {uc.label}")

    def dag_id(stage: str) -> str:
        return stage_dag_id(uc.name, stage)

    history_start = dt.date.fromisoformat(args.history_start)
    # By default the Airflow part starts on the Monday of the first week that can train (after
    # the warm-up, the matured days of one purged split and the label horizon), for 17 days:
    # two weekly retrainings, the first promotes on the floors, the second must beat it.
    plan = split_plan(settings, uc)
    first_trainable = history_start + dt.timedelta(days=warmup_days(settings, uc) + plan.min_span - 1 + uc.horizon)
    default_start = first_trainable + dt.timedelta(days=(6 - first_trainable.weekday()) % 7 - 6)
    args.start = args.start or default_start.isoformat()
    args.end = args.end or (dt.date.fromisoformat(args.start) + dt.timedelta(days=16)).isoformat()
    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if history_start < start:
        # Features need their longest window behind them and labels a horizon ahead: a new deployment
        # loads those months once, in one process, before its first scheduled day.
        history_end = start - dt.timedelta(days=1)
        step(f"sluice load-history --from {history_start} --to {history_end} (in this process)")
        quarantined = 0

        def progress(summary: dict) -> None:
            nonlocal quarantined
            quarantined += summary["curate"]["quarantined"]
            day = dt.date.fromisoformat(summary["ds"])
            if day.day == 1 or day == history_end:
                step(f"  loaded {summary['ds']}: {summary['ingest']['rows']:,} events, "
                     f"{summary['features']['entities']:,} {uc.spec.entity.name}s with features; "
                     f"{quarantined:,} rows quarantined so far")

        # A warning per day of a bulk load buries the progress: the quarantine holds each row and
        # its reason (`sluice status` counts them), and the total is printed above.
        etl_log = logging.getLogger(pipeline.__name__)
        level = etl_log.level
        etl_log.setLevel(logging.ERROR)
        try:
            loaded = pipeline.load_history(settings, history_start, history_end, progress=progress)
        finally:
            etl_log.setLevel(level)
        step(f"history loaded: {len(loaded)} days, {sum(d['ingest']['rows'] for d in loaded):,} raw events, "
             f"{quarantined:,} rows quarantined")

    airflow = LocalAirflow(home=home, project=project, port=args.port or free_port(), extra_env=env)
    step(f"Airflow home {home}, lake {lake.as_uri()}")
    airflow.migrate()
    airflow.serialize_dags()
    step("metadata DB migrated, DAGs serialized")
    airflow.apply_settings()
    n = _days(args.start, args.end)
    # Both backfills at once: nightly_etl's wait_for_raw lets each day follow its ingestion.
    for stage in ("ingest_raw", "nightly_etl"):
        airflow.backfill(dag_id(stage), args.start, args.end, max_active_runs=8)
        step(f"airflow backfill create --dag-id {dag_id(stage)} --from-date {args.start} --to-date {args.end}")
    airflow.start()
    try:
        airflow.wait_until_healthy()
        step(f"Airflow is up at {airflow.base_url} (api-server, scheduler, dag-processor); running the backfills")
        for stage in ("ingest_raw", "nightly_etl"):
            if not _wait(airflow, dag_id(stage), n, args.timeout, step, home):
                return 1
        # Weekly retraining for every week with matured labels, then a week of scoring,
        # each day with the model that was champion on it, and its drift reports.
        # The last two weeks that can train: the first promotes on the floors, the
        # second must beat it (--retrain-weeks 0 retrains every week that can).
        mondays = _mondays(args.history_start, args.start, args.end, warmup_days(settings, uc), uc.horizon, plan)
        mondays = mondays[-args.retrain_weeks:] if args.retrain_weeks else mondays
        if mondays:
            retrain = dag_id("weekly_retrain")
            airflow.backfill(retrain, mondays[0], mondays[-1], max_active_runs=1)
            step(f"airflow backfill create --dag-id {retrain} --from-date {mondays[0]} --to-date {mondays[-1]}")
            if not _wait(airflow, retrain, len(mondays), args.timeout, step, home):
                return 1
            score_from = max(start, end - dt.timedelta(days=6)).isoformat()
            for stage, parallel in (("batch_score", 4), ("drift_report", 1)):
                airflow.backfill(dag_id(stage), score_from, args.end, max_active_runs=parallel)
                step(f"airflow backfill create --dag-id {dag_id(stage)} --from-date {score_from} --to-date {args.end}")
                if not _wait(airflow, dag_id(stage), _days(score_from, args.end), args.timeout, step, home):
                    return 1
            # An early retraining triggered by drift runs after the reports: let it finish.
            weekly = len(airflow.runs(retrain))
            if weekly > len(mondays) and not _wait(airflow, retrain, weekly, args.timeout, step, home):
                return 1
        else:
            step(f"no week in {args.start}..{args.end} has matured labels after the warm-up: no retraining")
        # The lake's upkeep once the loop is done: paused at creation, as a new deployment has it
        # during its first load. The embedded scheduler makes no scheduled runs (the demo's days
        # are backfills), so it is unpaused and triggered for the last day.
        upkeep = dag_id("lake_maintenance")
        airflow.cli("dags", "unpause", upkeep)
        airflow.trigger(upkeep, conf={"partition_day": args.end})
        step(f"airflow dags unpause + trigger {upkeep} for {args.end}: compaction, checkpoints, vacuum, "
             "state retention")
        if not _wait(airflow, upkeep, 1, args.timeout, step, home):
            return 1
    finally:
        airflow.stop()
        step("Airflow stopped")
    print()
    _status(argparse.Namespace(json=False, use_case=ref))
    print()
    code = _model(argparse.Namespace(model_command="status", json=False, use_case=ref))
    print()
    _drift_summary(settings)
    return code


def _drift_summary(settings) -> None:
    from sluice.edges.lake import Lake
    from sluice.stages.monitoring import report_uri
    from sluice.tables import DRIFT_HISTORY

    lake = Lake(settings)
    if not lake.exists(DRIFT_HISTORY):
        print("drift: no report yet")
        return
    rows = sorted(lake.read_table(DRIFT_HISTORY).to_pylist(), key=lambda r: r["ds"])
    print("drift reports (share of feature columns that drifted from the data the champion was proven on, its holdout days):")
    for row in rows:
        flag = "  ALERT" if row.get("alert") else ""
        drifted = json.loads(row.get("drifted_columns") or "[]")
        shown = ", ".join(drifted[:6]) + (f" (+{len(drifted) - 6})" if len(drifted) > 6 else "")
        print(f"  {row['ds']}: {row['drift_share']:5.0%} of features drifted vs model v{row['model_version']}{flag}  {shown}")
    print(f"latest report: {report_uri(settings, rows[-1]['ds'])}")


def _load_history(args: argparse.Namespace) -> int:
    from sluice.stages import etl as pipeline

    def progress(summary: dict) -> None:
        print(
            f"{summary['ds']}: {summary['ingest']['rows']:,} raw, {summary['curate']['quarantined']:,} "
            f"quarantined, {summary['features']['entities']:,} in the population",
            flush=True,
        )

    settings = _settings(args)
    pipeline.load_history(
        settings, dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end), progress=progress
    )
    return 0


def _land(args: argparse.Namespace) -> int:
    """Split events files by day into the use case's landing prefix (for SLUICE_SOURCE=files)."""
    from sluice.core import usecase
    from sluice.edges.sources import SourceError
    from sluice.edges.sources.files import land_file

    settings = _settings(args)
    uc = usecase.of(settings)
    for path in args.files:
        try:
            days = land_file(path, settings, uc)
        except SourceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        first, last = (min(days), max(days)) if days else ("-", "-")
        print(f"{path}: {sum(days.values()):,} events of {len(days)} days ({first} .. {last}) landed under "
              f"{settings.landing}/ds=.../")
    return 0


def _model(args: argparse.Namespace) -> int:
    from sluice.core import usecase
    from sluice.edges.lake import Lake
    from sluice.edges.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry, RegistryError
    from sluice.stages import promotions
    from sluice.stages.retrain import awaiting_approval
    from sluice.tables import MODEL_DECISIONS

    settings = _settings(args)
    today = dt.datetime.now(dt.UTC).date()  # an operator's action takes effect today
    try:
        if args.model_command == "promote":
            previous, new = promotions.promote_by_hand(settings, args.version, args.reason, today)
            print(f"champion: {previous} -> {new} (reason recorded: {args.reason})")
            return 0
        if args.model_command == "rollback":
            old, new = promotions.rollback(settings, args.reason, today)
            print(f"champion rolled back: {old} -> {new} (reason recorded: {args.reason})")
            return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    registry = Registry(settings)
    lake = Lake(settings)
    aliases = registry.aliases()
    decisions = (
        sorted(lake.read_table(MODEL_DECISIONS).to_pylist(), key=lambda r: (r["ds"], r["recorded_at"])) if lake.exists(MODEL_DECISIONS) else []
    )
    history = promotions.history(lake)
    report = {
        "model": settings.model,
        "use_case": settings.use_case_name,
        "aliases": aliases,
        "versions": [
            {"version": v.version, "run_id": v.run_id, "tags": {k: t for k, t in v.tags.items() if k.startswith("gate.")}}
            for v in registry.versions()
        ],
        "last_decision": {k: v for k, v in decisions[-1].items() if k != "decision_json"} if decisions else None,
        "promotions": history,
    }
    in_shadow, evidence, _ = promotions.shadow_status(lake, usecase.of(settings).spec.gate.shadow, today)
    report["shadow"] = None if evidence is None else evidence.to_dict()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"model {settings.model} of use case {settings.use_case_name} ({settings.mlflow_tracking_uri})")
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        print(f"  @{alias:18} v{aliases[alias]}" if alias in aliases else f"  @{alias:18} -")
    if decisions:
        d = decisions[-1]
        against = f"champion v{d['champion_version']}" if d["champion_version"] else "no champion"
        print(f"last decision {d['ds']}: v{d['model_version']} vs {against}: {promotions.verdict(d)}")
        print(f"  reason: {d['reason']}")
        if d.get("approval_state") == "awaiting" and awaiting_approval(lake, d["ds"], d["run_id"]):
            print(f"  awaiting a person's approval: Airflow UI > Required Actions (dag {settings.use_case_name}"
                  f"__weekly_retrain, run {d['run_id']}, task approve_promotion)")
    if evidence is not None:
        print(f"in shadow: v{in_shadow}: {evidence.describe()}")
    for row in history:
        was = f"v{row['previous_version']}" if row["previous_version"] else "no champion"
        decided = f", decided as of {row['decision_ds']}" if row.get("decision_ds") else ""
        print(f"  champion from {row['ds']}: v{row['model_version']} (was {was}{decided})"
              f"{' forced' if row['forced'] else ''}: {row['reason']}")
    return 0


def _embedded(args: argparse.Namespace):
    import os

    from sluice.ops.embedded import LocalAirflow

    project = Path(args.project).resolve()
    # The project's own lake, unless one is exported: the tasks, the view and this CLI
    # must all read the same lake.
    lake = os.environ.get("SLUICE_LAKE_URI") or (project / ".lake").as_uri()
    return LocalAirflow(
        home=Path(args.home).resolve() if getattr(args, "home", None) else project / ".airflow",
        project=project,
        port=args.port,
        extra_env={"SLUICE_LAKE_URI": lake},
        schedules=args.schedules,
    )


def _airflow_env(args: argparse.Namespace) -> int:
    """Print `export` lines so that the `airflow` CLI talks to the embedded Airflow."""
    airflow = _embedded(args)
    keys = [k for k in airflow.env() if k.startswith(("AIRFLOW", "SLUICE"))]
    for key in sorted(keys):
        print(f"export {key}={shlex.quote(airflow.env()[key])}")
    print(f"export PATH={shlex.quote(str(airflow.bin_dir))}:\"$PATH\"")
    return 0


def _serve(args: argparse.Namespace) -> int:
    airflow = _embedded(args)
    airflow.migrate()
    airflow.apply_settings()
    airflow.start()
    try:
        airflow.wait_until_healthy()
        print(f"Airflow UI: {airflow.base_url}  (logs: {airflow.home / 'logs'}; Ctrl-C stops)", flush=True)
        while all(p.poll() is None for p in airflow.processes.values()):
            time.sleep(2)
        print("an Airflow component exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        airflow.stop()


def main(argv: list[str] | None = None) -> int:
    from sluice.ops import usecase_cli

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    usecase_cli.add_parser(sub)

    history = sub.add_parser(
        "load-history", help="ingest, curate and build features for a range of days in this process (a first load)"
    )
    history.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD")
    history.add_argument("--to", dest="end", required=True, help="last day, YYYY-MM-DD")
    history.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    history.set_defaults(func=_load_history)

    land = sub.add_parser(
        "land", help="split events files (csv, jsonl, parquet) by day into the use case's landing prefix"
    )
    land.add_argument("files", nargs="+", help="files of events, any days")
    land.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    land.set_defaults(func=_land)

    status = sub.add_parser("status", help="what is in the lake: tables, versions, latest partition, rows")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    status.set_defaults(func=_status)

    demo = sub.add_parser("demo", help="run the pipelines through an embedded Airflow over a simulated history")
    demo.add_argument("--project", default=".", help="project root (holds dags/, .airflow, .lake)")
    demo.add_argument("--use-case", help="the use case to run (name or folder); default: the first of SLUICE_USE_CASES")
    demo.add_argument(
        "--history-start", default="2026-01-01", help="first day of the history loaded in-process before --start"
    )
    demo.add_argument(
        "--start", help="first day run through Airflow (default: when the use case can first train)"
    )
    demo.add_argument("--retrain-weeks", type=int, default=2, help="retrain the last N weeks that can (0: all)")
    demo.add_argument("--end", help="last day run through Airflow (default: 16 days after --start)")
    demo.add_argument(
        "--drift", default="", help="simulated drift, e.g. spend_shift@2026-05-27 (see SLUICE_SIM_DRIFT)"
    )
    demo.add_argument("--customers", type=int, default=20_000)
    demo.add_argument("--defect-rate", type=float, default=0.01, help="share of spoiled source rows (below the limit)")
    demo.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    demo.add_argument("--timeout", type=float, default=1500, help="seconds to wait for each backfill")
    demo.set_defaults(func=_demo)

    model = sub.add_parser("model", help="a use case's registered model: status, promote, rollback")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    m_status = model_sub.add_parser("status", help="aliases, versions, the last gate decision, promotion history")
    m_status.add_argument("--json", action="store_true")
    m_promote = model_sub.add_parser("promote", help="make VERSION the champion by hand")
    m_promote.add_argument("version")
    m_promote.add_argument("--reason", required=True, help="why; recorded in the promotion history")
    m_rollback = model_sub.add_parser("rollback", help="make the previous champion the champion again")
    m_rollback.add_argument("--reason", required=True, help="why; recorded in the promotion history")
    for cmd in (m_status, m_promote, m_rollback):
        cmd.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    model.set_defaults(func=_model)

    for name, func, text in (
        ("serve", _serve, "start the embedded Airflow (API server and UI, scheduler, DAG processor) until Ctrl-C"),
        ("airflow-env", _airflow_env, "print `export` lines for running the airflow CLI against the embedded Airflow"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--project", default=".", help="project root")
        cmd.add_argument("--port", type=int, default=8080)
        cmd.add_argument(
            "--schedules", action="store_true", help="let the scheduler create scheduled runs (off: backfills and triggers only)"
        )
        cmd.set_defaults(func=func)

    upkeep = sub.add_parser(
        "upkeep", help="delete data files no table version references (left by killed writers); --dry-run lists them"
    )
    upkeep.add_argument("--older-than-hours", type=float, default=6.0,
                        help="only files at least this old (a writer still writing keeps its files)")
    upkeep.add_argument("--dry-run", action="store_true")
    upkeep.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    upkeep.set_defaults(func=_upkeep)

    rebuild = sub.add_parser(
        "rebuild", help="rebuild state and features from a day on, in order (after a past day was re-run)"
    )
    rebuild.add_argument("--from", dest="start", required=True, type=dt.date.fromisoformat, help="first day")
    rebuild.add_argument("--to", dest="end", type=dt.date.fromisoformat, help="last day (default: the latest)")
    rebuild.add_argument("--use-case", help="the use case (name or folder); default: SLUICE_USE_CASE or the first")
    rebuild.set_defaults(func=_rebuild)

    backfill = sub.add_parser(
        "backfill",
        help="create a backfill of the embedded Airflow and check it exists (make serve running); --wait follows it",
    )
    backfill.add_argument("dag_id", help="<use case>__<stage>, e.g. the nightly_etl of a use case")
    backfill.add_argument("--from", dest="start", required=True, type=dt.date.fromisoformat, help="first logical date")
    backfill.add_argument("--to", dest="end", required=True, type=dt.date.fromisoformat, help="last logical date")
    backfill.add_argument("--max-active-runs", type=int, default=8)
    backfill.add_argument("--reprocess-behavior", default="failed", choices=("none", "failed", "completed"),
                          help="days that ran already: skip them, re-run the failed ones (default), or re-run all")
    backfill.add_argument("--wait", action="store_true", help="follow the runs; exit 1 unless every one succeeds")
    backfill.add_argument("--timeout", type=float, default=6 * 3600, help="with --wait: give up after this many s")
    backfill.add_argument("--project", default=".", help="project root")
    backfill.add_argument("--home", help="the embedded Airflow's home (default: <project>/.airflow)")
    backfill.set_defaults(func=_backfill, port=8080, schedules=False)

    args = parser.parse_args(argv)
    return int(args.func(args))


def _backfill(args: argparse.Namespace) -> int:
    from sluice.ops import backfill

    airflow = _embedded(args)
    try:
        report = backfill.create(airflow, args.dag_id, args.start, args.end, max_active_runs=args.max_active_runs,
                                 reprocess=args.reprocess_behavior)
        print(report.describe(), flush=True)
        if args.wait and report.runs:
            report = backfill.wait(airflow, report, args.timeout)
            print(report.describe(), flush=True)
    except backfill.BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
