"""ETL of one day at 100k and 1M customers, against naive pandas, DuckDB and Polars.

    python benchmarks/etl.py [--customers 100000 1000000] [--history 20] [--use-case churn] [--lake DIR]

For each size it builds a lake with ``--history`` days (simulated events, through
the real contract and feature steps), then measures, each in a fresh process so
that peak memory (max RSS) is the step's own:

* **sluice**: ``curate_day`` + ``build_features_day`` for the next day (the code the
  DAG runs): reads raw D, the state of D-1 and of D-w for every window w of the use case
  (churn: 7, 30, 90), writes D's partitions.
* **naive**: the same contract step, then the features recomputed from all curated
  events of the history with ``features.features_from_history`` (windows over the
  full history, as a notebook would), written to the lake the same way.
* **duckdb-history**, **duckdb-state**, **polars**: what users pick instead, the whole
  day (contract and features) in that engine, from raw D to Parquet files; see
  ``_alternatives.py`` (history: one query over all curated days; state: running totals
  like sluice's).

It prints rows per second (events of the day), wall time (and its contract / features
parts), peak memory and the time against the fastest alternative (every kind but
sluice), then the bytes sluice added to the lake's tables for the day. It fails unless
every kind wrote the same features as sluice (sorted by key: integers and categories
equal, floats ``np.isclose``). It also prints sluice's per-day cost as the history grows,
to show that it does not grow with the number of days already in the lake (only with the
customers seen).

``--lake DIR`` keeps the lake with its history in DIR (built when DIR does not exist,
reused when it does), to measure again without building the history again.

The use case (default churn, the reference) must have a simulator: its spec's
``simulator`` generates the events (``--customers`` of them), as in the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _alternatives import ALTERNATIVES, differences  # benchmarks/ is on sys.path when a script runs
from _measure import peak_rss_kb

KINDS = ("sluice", "naive", *ALTERNATIVES)  # sluice first: the others must not see a lake holding its output

START = dt.date(2026, 1, 1)


def _settings(lake: Path, customers: int, use_case: str):
    from sluice.settings import load_settings

    # The simulator source (the default), whichever SLUICE_SOURCE the shell has.
    return load_settings(lake_uri=str(lake), sim_customers=customers, use_case=use_case, source="simulator")


def build_history(lake: Path, customers: int, days: int, use_case: str) -> list[float]:
    """Run the real steps for ``days`` days; returns the ETL seconds (contract + features) of each day."""
    from sluice.core import usecase
    from sluice.core.lineage import RunContext
    from sluice.edges.sources import make_source
    from sluice.stages.etl import build_features_day, curate_day, ingest_day

    settings = _settings(lake, customers, use_case)
    source = make_source(settings, usecase.of(settings))  # one source: a simulator builds its population once
    ctx = RunContext("benchmark", "history")
    seconds = []
    for i in range(days):
        day = START + dt.timedelta(days=i)
        ingest_day(settings, day, ctx, source)
        t0 = time.perf_counter()
        curate_day(settings, day, ctx)
        build_features_day(settings, day, ctx)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _inputs(lake: Any, uc: Any, day: dt.date) -> dict[str, Any]:
    """The Parquet files an alternative reads: raw D, the curated days before D, the states of D-1 and D-w."""
    from deltalake import DeltaTable

    ds = day.isoformat()

    def files(table: Any, op: str, value: Any) -> list[str]:
        return DeltaTable(lake.uri(table)).file_uris(partition_filters=[("ds", op, value)])

    state_days = set(lake.partitions(uc.tables.state))
    lags = {w: (day - dt.timedelta(days=w)).isoformat() for w in (1, *uc.windows)}
    return {
        "raw": files(uc.tables.raw, "=", ds),
        "curated_before": files(uc.tables.curated, "<", ds),
        "state": {w: files(uc.tables.state, "=", d) if d in state_days else None for w, d in lags.items()},
    }


def measure(kind: str, lake: Path, customers: int, day: dt.date, use_case: str) -> dict:
    """One step in this process; returns time (and its parts) and peak RSS."""
    import pandas as pd
    import pyarrow as pa

    from sluice.core import features as F
    from sluice.core import usecase
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.stages.etl import build_features_day, curate_day, ingest_day

    settings = _settings(lake, customers, use_case)
    uc = usecase.of(settings)
    CURATED_EVENTS, FEATURES = uc.tables.curated, uc.tables.features
    ctx = RunContext("benchmark", kind)
    ingest_day(settings, day, ctx)  # the day's raw input; not timed
    events = Lake(settings).partition_rows(uc.tables.raw)[day.isoformat()]
    if kind in ALTERNATIVES:
        import duckdb  # noqa: F401  (imports are not what is measured)
        import polars  # noqa: F401

        out = _output_dir(lake, kind)
        out.mkdir(parents=True, exist_ok=True)
    rss_before = peak_rss_kb()
    t0 = time.perf_counter()
    if kind in ALTERNATIVES:
        inputs = _inputs(Lake(settings), uc, day)  # (listing the files is part of reading them)
        listed = time.perf_counter() - t0
        parts = ALTERNATIVES[kind](uc, day, inputs, out)
        parts["contract"] += listed
    else:
        curate_day(settings, day, ctx)
        parts = {"contract": time.perf_counter() - t0}
        if kind == "sluice":
            build_features_day(settings, day, ctx)
        else:
            lake_ = Lake(settings)
            days = [d for d in lake_.partitions(CURATED_EVENTS) if d <= day.isoformat()]
            history = lake_.read_partitions(CURATED_EVENTS, days).to_pandas()
            feats = F.features_from_history(history, day, uc)
            table = pa.Table.from_pandas(feats[FEATURES.columns], schema=FEATURES.schema, preserve_index=False)
            lake_.write_partition(FEATURES, day.isoformat(), table, ctx.lineage(day.isoformat(), {}))
            del history, feats, pd
        parts["features"] = time.perf_counter() - t0 - parts["contract"]
    seconds = time.perf_counter() - t0
    peak_kb = peak_rss_kb()
    return {"kind": kind, "use_case": uc.name, "customers": customers, "day": day.isoformat(), "events": events,
            "seconds": seconds, **parts, "peak_mb": peak_kb / 1024, "rss_before_mb": rss_before / 1024}


def _output_dir(lake: Path, kind: str) -> Path:
    """Where an alternative writes its Parquet files: beside the lake, never in it."""
    return lake.parent / "alternatives" / kind


def _features_written(kind: str, lake: Path, customers: int, day: dt.date, use_case: str) -> Any:
    """The features of ``day`` that ``kind`` wrote (sluice and naive: the lake; the others: their file)."""
    import pandas as pd

    from sluice.core import usecase
    from sluice.edges.lake import Lake

    settings = _settings(lake, customers, use_case)
    if kind in ALTERNATIVES:
        return pd.read_parquet(_output_dir(lake, kind) / "features.parquet")
    return Lake(settings).read_partition(usecase.of(settings).tables.features, day.isoformat()).to_pandas()


def _file_sizes(root: Path) -> dict[str, int]:
    sizes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            sizes[path] = os.path.getsize(path)
    return sizes


@contextlib.contextmanager
def bytes_added(folders: dict[str, str]) -> Iterator[dict[str, int]]:
    """Bytes of the files (data and Delta log) added under each folder (by name) while the block runs."""
    before = {name: _file_sizes(Path(folder)) for name, folder in folders.items()}
    added: dict[str, int] = {}
    yield added
    for name, folder in folders.items():
        added[name] = sum(n for path, n in _file_sizes(Path(folder)).items() if path not in before[name])


def _run_child(kind: str, lake: Path, customers: int, day: dt.date, use_case: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(lake), str(customers), day.isoformat(), use_case],
        capture_output=True, text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _lake(args: argparse.Namespace, customers: int, tmp: str) -> tuple[Path, list[float] | None, float]:
    """The lake with ``--history`` days: built (timed per day) unless ``--lake`` names one that exists."""
    lake = Path(args.lake) if args.lake else Path(tmp) / "lake"
    if args.lake and lake.exists():
        return lake, None, 0.0
    t0 = time.perf_counter()
    per_day = build_history(lake, customers, args.history, args.use_case)
    return lake, per_day, time.perf_counter() - t0


def _check_same_features(kind: str, ours: Any, theirs: Any, uc: Any) -> None:
    problems = differences(ours, theirs, uc)
    if problems:
        raise SystemExit(f"{kind} wrote other features than sluice:\n  " + "\n  ".join(problems))


def run_size(args: argparse.Namespace, customers: int) -> None:
    """Every kind on one lake of ``customers``; prints their figures and fails unless the features agree."""
    from sluice.core import usecase
    from sluice.edges.lake import Lake

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        lake, per_day, built = _lake(args, customers, tmp)
        settings = _settings(lake, customers, args.use_case)
        uc = usecase.of(settings)
        # What the ETL writes (raw D is the ingest's, done untimed before it).
        tables = {t.name: Lake(settings).uri(t) for t in uc.tables.all() if t not in (uc.tables.raw, uc.tables.predictions)}
        day = START + dt.timedelta(days=args.history)
        results, written = {}, {}
        for kind in KINDS:
            with bytes_added(tables) as added:
                results[kind] = _run_child(kind, lake, customers, day, args.use_case)
            features = _features_written(kind, lake, customers, day, args.use_case)
            if kind == "sluice":
                written, ours = added, features
            else:
                _check_same_features(kind, ours, features, uc)
        fastest = min(results[k]["seconds"] for k in KINDS if k != "sluice")
        for kind, r in results.items():
            print(f"{customers:>10,} {kind:>14} {r['events']:>9,} {r['seconds']:>8.2f} {r['contract']:>8.2f} "
                  f"{r['features']:>8.2f} {r['events'] / r['seconds']:>10,.0f} {r['peak_mb']:>8,.0f} "
                  f"{r['seconds'] / fastest:>8.2f}x")
        s, fast = results["sluice"], min((k for k in KINDS if k != "sluice"), key=lambda k: results[k]["seconds"])
        print(f"{'':>10} same features ({len(ours):,} {uc.spec.entity.name}s) from every kind; sluice takes "
              f"{s['seconds'] / fastest:.2f}x the time of the fastest alternative ({fast}), "
              f"{results['naive']['seconds'] / s['seconds']:.1f}x faster than naive"
              + (f" (history built in {built:.0f}s)" if per_day is not None else f" (history reused from {lake})"))
        print(f"{'':>10} lake bytes sluice wrote for {day}: "
              + ", ".join(f"{name} {n / 1e6:.1f} MB" for name, n in written.items())
              + f"; total {sum(written.values()) / 1e6:.1f} MB (data files and Delta log)")
        if per_day:
            # Per-day cost as the history grows (timed while building it). Early days are
            # cheaper because fewer customers have been seen yet, not because of history.
            marks = sorted({min(len(per_day), k) for k in (5, 10, 15, 20, len(per_day))})
            print(f"{'':>10} sluice ETL seconds per day as the lake grows: "
                  + ", ".join(f"day {k}: {per_day[k - 1]:.2f}" for k in marks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--history", type=int, default=20, help="days in the lake before the measured day")
    parser.add_argument("--use-case", default="churn", help="a use case with a simulator (default: churn)")
    parser.add_argument("--lake", help="keep the lake here (reused when it exists; one --customers only)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, lake, customers, day, use_case = args.child
        print(json.dumps(measure(kind, Path(lake), int(customers), dt.date.fromisoformat(day), use_case)))
        return
    if args.lake and len(args.customers) != 1:
        parser.error("--lake holds one lake: give one --customers")

    print(f"ETL of one day of {args.use_case} after {args.history} days of history; each kind in a fresh process; "
          "'vs fastest': time over the fastest alternative (every kind but sluice)")
    print(f"{'customers':>10} {'impl':>14} {'events':>9} {'seconds':>8} {'contract':>8} {'features':>8} "
          f"{'rows/s':>10} {'peak MB':>8} {'vs fastest':>9}")
    for customers in args.customers:
        run_size(args, customers)


if __name__ == "__main__":
    main()
