"""The daily drift report for 1M customers: sluice's sampled report against Evidently on all rows.

    python benchmarks/drift.py                       # 1M customers, reference = 1 training day of 1M
    python benchmarks/drift.py --rows 100000 --reference-days 3

Setup (not timed): a temporary lake with ``--reference-days`` days of
``features/customer_daily`` (the champion's training snapshot) and day D, all with
``--rows`` customers and the 23 features of the real table (numbers shaped like the
simulator's, four categoricals); D has drift: the spend columns x1.6, ``device`` 60 %
missing, ``session_minutes_30d`` x1.05 (a small shift, near Evidently's threshold, so
that sampling error would show). A small LightGBM model is fitted on the reference and
scores D into ``predictions/churn``.

Then each variant runs in its own fresh process (so max RSS is its own), reading the
lake, scoring the reference with the model, and producing the same Evidently report
(``sluice.stages.drift.run_report``: data drift of every feature, prediction drift, missing
values) including its HTML:

* **evidently** (baseline): the whole reference window and all of D, as a notebook would.
* **sluice**: what ``drift_report`` does: a seeded 20k-row reference sample read day by
  day (``drift.reference_sample``), D's features joined to its scores in Arrow and
  sampled to 50k rows (``drift.current_sample``), Evidently on the samples.

It prints wall time, peak memory (max RSS, and above the process's RSS once the
libraries are imported), the ratios, and whether every per-column verdict (value drift
and missing share) and the prediction-drift verdict agree, with the largest difference
between the two variants' drift scores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import peak_rss_kb  # benchmarks/ is on sys.path when a script runs

D = dt.date(2026, 3, 10)
SPEND = ("spend_7d", "spend_30d", "spend_90d", "spend_per_order_90d")


def _settings(lake: str | Path):
    from sluice.settings import load_settings

    return load_settings(lake_uri=str(lake))


def synthetic_features(n: int, ds: str, seed: int, *, drift: bool):
    """``n`` customers' features of one day, in the table's schema."""
    import numpy as np
    import pandas as pd

    from sluice.core.features import FEATURE_COLUMNS
    from sluice.tables import FEATURES_CUSTOMER_DAILY

    rng = np.random.default_rng(seed)
    eng = rng.beta(2, 3, n)
    out = pd.DataFrame({"customer_id": np.arange(1, n + 1, dtype=np.int64)})
    cats = {"plan": ["basic", "standard", "premium"], "region": ["na", "eu", "apac", "latam"],
            "channel": ["organic", "paid_search", "social", "referral", "partner"], "device": ["ios", "android", "web"]}
    for col in FEATURE_COLUMNS:
        if col in cats:
            out[col] = rng.choice(cats[col], n).astype(object)
        elif col.startswith("spend"):
            out[col] = np.round(rng.lognormal(3.0, 0.6, n) * (1 + eng) * (1.6 if drift else 1.0), 2)
        elif col == "sessions_trend_7_30":
            out[col] = rng.gamma(4, 0.25, n)
        elif "minutes" in col:
            out[col] = rng.gamma(2, 20, n) * (1 + eng) * (1.05 if drift and col == "session_minutes_30d" else 1.0)
        else:
            out[col] = rng.poisson(1 + (12 if "90" in col else 6) * eng).astype(np.int32)
    if drift:
        out.loc[rng.random(n) < 0.6, "device"] = None
    out["label_churn_30d"] = pd.array((rng.random(n) < 0.6 * (1 - eng)).astype(np.int8), dtype="Int8")
    out["ds"] = ds
    return out[FEATURES_CUSTOMER_DAILY.columns]


def setup(lake: str, rows: int, reference_days: int) -> dict:
    root = Path(lake)
    import lightgbm as lgb
    import pyarrow as pa

    from sluice.core import train as T
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.stages.score import churn_scores, predictions_table
    from sluice.tables import FEATURES_CUSTOMER_DAILY, PREDICTIONS_CHURN

    lake_ = Lake(_settings(lake))
    ctx = RunContext("benchmark", "setup")
    ref_days = [(D - dt.timedelta(days=40 + i)).isoformat() for i in range(reference_days)][::-1]
    for i, ds in enumerate([*ref_days, D.isoformat()]):
        frame = synthetic_features(rows, ds, seed=i, drift=ds == D.isoformat())
        table = pa.Table.from_pandas(frame, schema=FEATURES_CUSTOMER_DAILY.schema, preserve_index=False)
        lake_.write_partition(FEATURES_CUSTOMER_DAILY, ds, table, ctx.lineage(ds, {}))
        if i == 0:
            train = frame.sample(min(rows, 50_000), random_state=0)
            booster = lgb.train({**T.DEFAULT_PARAMS, "num_threads": 2}, lgb.Dataset(
                T.model_matrix(train), label=train["label_churn_30d"].astype(int)), num_boost_round=60)
            booster.save_model(str(root / "model.txt"))
        elif ds == D.isoformat():
            fv = lake_.version(FEATURES_CUSTOMER_DAILY)
            scores = churn_scores(T.FittedModel.from_booster(booster), table)
            lake_.write_partition(PREDICTIONS_CHURN, ds, predictions_table(table.column("customer_id"), scores, "1", fv, ds),
                                  ctx.lineage(ds, {}))
    return {"reference_days": ref_days, "feature_version": lake_.version(FEATURES_CUSTOMER_DAILY)}


def measure(kind: str, lake: str, info: dict, sample: int, reference_sample: int) -> dict:
    """One variant in this (fresh) process."""
    root = Path(lake)
    import evidently.presets  # noqa: F401  (imports are not what is measured)
    import lightgbm as lgb

    from sluice.core.features import FEATURE_COLUMNS
    from sluice.core.train import FittedModel
    from sluice.edges.lake import Lake
    from sluice.stages import drift
    from sluice.tables import FEATURES_CUSTOMER_DAILY, PREDICTIONS_CHURN

    rss_imports = peak_rss_kb()
    t0 = time.perf_counter()
    lake_ = Lake(_settings(lake))
    model = FittedModel.from_booster(lgb.Booster(model_file=str(root / "model.txt")))
    spec = drift.ReferenceSpec("1", info["feature_version"], (info["reference_days"][0], info["reference_days"][-1]))
    if kind == "sluice":
        reference = drift.reference_sample(lake_, spec, reference_sample, 0)
        current = drift.current_sample(lake_, D.isoformat(), sample, 0).frame
    else:
        reference = lake_.read_partitions(FEATURES_CUSTOMER_DAILY, info["reference_days"],
                                          version=spec.feature_table_version).to_pandas()
        features = lake_.read_partition(FEATURES_CUSTOMER_DAILY, D.isoformat(),
                                        columns=["customer_id", *FEATURE_COLUMNS])
        scores = lake_.read_partition(PREDICTIONS_CHURN, D.isoformat(), columns=["customer_id", "score"])
        current = features.join(scores, "customer_id").to_pandas()
        del features, scores
    reference[drift.PREDICTION] = model.predict(reference)
    t_data = time.perf_counter() - t0
    snapshot = drift.run_report(reference, current)
    html = snapshot.get_html_str(as_iframe=False)
    summary = drift.drift_summary(snapshot.dict())
    seconds = time.perf_counter() - t0
    rss = peak_rss_kb()
    return {
        "kind": kind,
        "seconds": round(seconds, 2),
        "seconds_data": round(t_data, 2),
        "max_rss_mb": round(rss / 1024),
        "rss_above_imports_mb": round((rss - rss_imports) / 1024),
        "reference_rows": len(reference),
        "current_rows": len(current),
        "html_mb": round(len(html) / 2**20, 1),
        "drifted": summary.drifted_columns,
        "missing_drifted": summary.missing_drifted,
        "prediction_drifted": summary.prediction_drifted,
        "share": summary.share,
        "scores": summary.scores,
    }


def _in_child(function: str, *args: object) -> dict:
    """Run ``function(*args)`` of this module in a fresh interpreter (its peak memory is its own)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import drift as b\n"
        "print('RESULT ' + json.dumps(getattr(b, sys.argv[2])(*json.loads(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), function, json.dumps(args, default=str)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if out.returncode:
        raise SystemExit(f"{function}{args[:1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="customers per day")
    parser.add_argument("--reference-days", type=int, default=1, help="days in the training window")
    parser.add_argument("--sample", type=int, default=50_000, help="sluice: rows of D the report runs on")
    parser.add_argument("--reference-sample", type=int, default=20_000, help="sluice: reference rows")
    parser.add_argument("--keep", type=Path, default=None, help="build the lake here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sluice-drift-bench-") as tmp:
        lake = (args.keep or Path(tmp)) / "lake"
        lake.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info = _in_child("setup", lake, args.rows, args.reference_days)
        print(f"setup: {args.reference_days} reference day(s) + D of {args.rows:,} customers "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {kind: _in_child("measure", kind, lake, info, args.sample, args.reference_sample)
                   for kind in ("evidently", "sluice")}

    base, ours = results["evidently"], results["sluice"]
    print(f"\n{'variant':<10} {'rows ref/cur':>20} {'seconds':>8} {'(data)':>7} {'max RSS MB':>11} "
          f"{'above imports':>13} {'HTML MB':>8}")
    for r in (base, ours):
        print(f"{r['kind']:<10} {r['reference_rows']:>10,}/{r['current_rows']:<9,} {r['seconds']:>8.1f} "
              f"{r['seconds_data']:>7.1f} {r['max_rss_mb']:>11,} {r['rss_above_imports_mb']:>13,} {r['html_mb']:>8}")
    print(f"\nsluice vs evidently on all rows: {base['seconds'] / ours['seconds']:.1f}x faster, "
          f"{base['max_rss_mb'] / ours['max_rss_mb']:.1f}x less peak memory "
          f"({max(base['rss_above_imports_mb'], 1) / max(ours['rss_above_imports_mb'], 1):.1f}x above imports)")
    same = (base["drifted"] == ours["drifted"] and base["missing_drifted"] == ours["missing_drifted"]
            and base["prediction_drifted"] == ours["prediction_drifted"])
    diffs = {c: abs(base["scores"][c] - ours["scores"][c]) for c in base["scores"]}
    worst = max(diffs, key=diffs.get)
    print(f"verdicts agree: {same}  (drifted {base['drifted']} vs {ours['drifted']}; prediction drift "
          f"{base['prediction_drifted']} vs {ours['prediction_drifted']}; share {base['share']:.3f} vs {ours['share']:.3f})")
    print(f"largest drift-score difference: {worst} {base['scores'][worst]:.4f} vs {ours['scores'][worst]:.4f} "
          f"(threshold 0.1); session_minutes_30d {base['scores']['session_minutes_30d']:.4f} vs "
          f"{ours['scores']['session_minutes_30d']:.4f}")


if __name__ == "__main__":
    main()
