"""ETL of one day at 100k and 1M customers, against a naive pandas baseline.

    python benchmarks/etl.py [--customers 100000 1000000] [--history 20] [--use-case churn]

For each size it builds a lake with ``--history`` days (simulated events, through
the real contract and feature steps), then measures, each in a fresh process so
that peak memory (max RSS) is the step's own:

* **sluice**: ``curate_day`` + ``build_features_day`` for the next day (the code the
  DAG runs): reads raw D, the state of D-1 and of D-w for every window w of the use case
  (churn: 7, 30, 90), writes D's partitions.
* **naive**: the same contract step, then the features recomputed from all curated
  events of the history with ``features.features_from_history`` (windows over the
  full history, as a notebook would), written to the lake the same way.

It prints rows per second (events of the day), wall time and peak memory for both,
and the ratio. It also prints sluice's per-day cost as the history grows, to show that it does not
grow with the number of days already in the lake (only with the customers seen).

The use case (default churn, the reference) must have a simulator: its spec's
``simulator`` generates the events (``--customers`` of them), as in the demo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import peak_rss_kb  # benchmarks/ is on sys.path when a script runs

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


def measure(kind: str, lake: Path, customers: int, day: dt.date, use_case: str) -> dict:
    """One step in this process; returns time and peak RSS."""
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
    rss_before = peak_rss_kb()
    t0 = time.perf_counter()
    summary = curate_day(settings, day, ctx)
    if kind == "sluice":
        build_features_day(settings, day, ctx)
    else:
        lake_ = Lake(settings)
        days = [d for d in lake_.partitions(CURATED_EVENTS) if d <= day.isoformat()]
        events = lake_.read_partitions(CURATED_EVENTS, days).to_pandas()
        feats = F.features_from_history(events, day, uc)
        table = pa.Table.from_pandas(feats[FEATURES.columns], schema=FEATURES.schema, preserve_index=False)
        lake_.write_partition(FEATURES, day.isoformat(), table, ctx.lineage(day.isoformat(), {}))
        del events, feats, pd
    seconds = time.perf_counter() - t0
    peak_kb = peak_rss_kb()
    return {"kind": kind, "use_case": uc.name, "customers": customers, "day": day.isoformat(),
            "events": summary["rows_in"],
            "seconds": seconds, "peak_mb": peak_kb / 1024, "rss_before_mb": rss_before / 1024}


def _run_child(kind: str, lake: Path, customers: int, day: dt.date, use_case: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(lake), str(customers), day.isoformat(), use_case],
        capture_output=True, text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--history", type=int, default=20, help="days in the lake before the measured day")
    parser.add_argument("--use-case", default="churn", help="a use case with a simulator (default: churn)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, lake, customers, day, use_case = args.child
        print(json.dumps(measure(kind, Path(lake), int(customers), dt.date.fromisoformat(day), use_case)))
        return

    print(f"ETL of one day of {args.use_case} after {args.history} days of history; "
          "baseline: naive pandas windows over the full history")
    print(f"{'customers':>10} {'impl':>7} {'events':>9} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}")
    for customers in args.customers:
        with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
            lake = Path(tmp) / "lake"
            t0 = time.perf_counter()
            per_day = build_history(lake, customers, args.history, args.use_case)
            built = time.perf_counter() - t0
            day = START + dt.timedelta(days=args.history)
            results = {}
            # sluice first (the baseline must not see a lake that holds its own output)
            for kind in ("sluice", "naive"):
                results[kind] = r = _run_child(kind, lake, customers, day, args.use_case)
                print(f"{customers:>10,} {kind:>7} {r['events']:>9,} {r['seconds']:>8.2f} "
                      f"{r['events'] / r['seconds']:>10,.0f} {r['peak_mb']:>8,.0f}")
            s, n = results["sluice"], results["naive"]
            print(f"{'':>10} ratio: sluice is {n['seconds'] / s['seconds']:.1f}x faster than naive, "
                  f"peak memory {s['peak_mb']:.0f} MB vs {n['peak_mb']:.0f} MB "
                  f"(history built in {built:.0f}s)")
            # Per-day cost as the history grows (timed while building it). Early days are
            # cheaper because fewer customers have been seen yet, not because of history.
            marks = sorted({min(len(per_day), k) for k in (5, 10, 15, 20, len(per_day))})
            print(f"{'':>10} sluice ETL seconds per day as the lake grows: "
                  + ", ".join(f"day {k}: {per_day[k - 1]:.2f}" for k in marks))


if __name__ == "__main__":
    main()
