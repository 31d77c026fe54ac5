"""The daily drift report for 1M customers: sluice's sampled report against Evidently on all rows.

    python benchmarks/drift.py                       # 1M customers, reference = 1 training day of 1M
    python benchmarks/drift.py --rows 100000 --reference-days 3

Setup (not timed): a temporary lake of the reference use case (``churn``) with
``--reference-days`` days of its features table (the champion's training snapshot) and
day D, all with ``--rows`` customers and the use case's 23 features (numbers shaped like
its simulator's, four categoricals); D has drift: the spend columns x1.6, ``device`` 60 %
missing, ``session_minutes_30d`` x1.05 (a small shift, near Evidently's threshold, so
that sampling error would show). A small LightGBM model is fitted on the reference and
scores D into the use case's predictions table (``sluice.stages.score.model_scores``).

Then each variant runs in its own fresh process (so max RSS is its own), reading the
lake, scoring the reference with the model, and producing the same Evidently report
(``sluice.stages.monitoring.report.run_report``: data drift of every feature, prediction
drift, missing values) including its HTML:

* **evidently** (baseline): the whole reference window and all of D, as a notebook would.
* **sluice**: what ``drift_report`` does: a seeded 20k-row reference sample read day by
  day (``monitoring.reference.reference_sample``), D's features joined to its scores in
  Arrow and sampled to 50k rows (``monitoring.current.current_sample``), Evidently on the
  samples.

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
USE_CASE = "churn"  # the reference use case: the features below are shaped like its simulator's
SPEND = ("spend_7d", "spend_30d", "spend_90d", "spend_per_order_90d")


def _settings(lake: str | Path):
    from sluice.settings import load_settings

    return load_settings(lake_uri=str(lake), use_case=USE_CASE)


def _use_case(settings):
    from sluice.core import usecase

    return usecase.of(settings)


def synthetic_features(uc, n: int, ds: str, seed: int, *, drift: bool):
    """``n`` customers' features of one day, in the use case's features schema."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    eng = rng.beta(2, 3, n)
    out = pd.DataFrame({uc.key: np.arange(1, n + 1, dtype=np.int64)})
    for col in uc.feature_columns:
        if col in uc.categorical:
            out[col] = rng.choice(list(uc.vocabulary(col)), n).astype(object)
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
    out[uc.label] = pd.array((rng.random(n) < 0.6 * (1 - eng)).astype(np.int8), dtype="Int8")
    out["ds"] = ds
    return out[uc.tables.features.columns]


def setup(lake: str, rows: int, reference_days: int) -> dict:
    root = Path(lake)
    import lightgbm as lgb
    import pyarrow as pa

    from sluice.core import train as T
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.stages.score import model_scores, predictions_table

    settings = _settings(lake)
    uc = _use_case(settings)
    features = uc.tables.features
    lake_ = Lake(settings)
    ctx = RunContext("benchmark", "setup")
    ref_days = [(D - dt.timedelta(days=40 + i)).isoformat() for i in range(reference_days)][::-1]
    for i, ds in enumerate([*ref_days, D.isoformat()]):
        frame = synthetic_features(uc, rows, ds, seed=i, drift=ds == D.isoformat())
        table = pa.Table.from_pandas(frame, schema=features.schema, preserve_index=False)
        lake_.write_partition(features, ds, table, ctx.lineage(ds, {}))
        if i == 0:
            train = frame.sample(min(rows, 50_000), random_state=0)
            booster = lgb.train({**T.DEFAULT_PARAMS, "num_threads": 2}, lgb.Dataset(
                T.model_matrix(train, uc), label=train[uc.label].astype(int)), num_boost_round=60)
            booster.save_model(str(root / "model.txt"))
        elif ds == D.isoformat():
            fv = lake_.version(features)
            scores = model_scores(T.FittedModel.from_booster(booster, uc), table)
            lake_.write_partition(uc.tables.predictions, ds,
                                  predictions_table(uc, table.column(uc.key), scores, "1", fv, ds),
                                  ctx.lineage(ds, {}))
    return {"reference_days": ref_days, "feature_version": lake_.version(features)}


def measure(kind: str, lake: str, info: dict, sample: int, reference_sample: int) -> dict:
    """One variant in this (fresh) process."""
    root = Path(lake)
    import evidently.presets  # noqa: F401  (imports are not what is measured)
    import lightgbm as lgb

    from sluice.core.train import FittedModel
    from sluice.edges.lake import Lake
    from sluice.stages.monitoring import current as monitoring_current
    from sluice.stages.monitoring import reference as monitoring_reference
    from sluice.stages.monitoring import report as monitoring_report

    settings = _settings(lake)
    uc = _use_case(settings)
    rss_imports = peak_rss_kb()
    t0 = time.perf_counter()
    lake_ = Lake(settings)
    model = FittedModel.from_booster(lgb.Booster(model_file=str(root / "model.txt")), uc)
    spec = monitoring_reference.ReferenceSpec(
        "1", info["feature_version"], (info["reference_days"][0], info["reference_days"][-1]))
    if kind == "sluice":
        reference = monitoring_reference.reference_sample(lake_, uc, spec, reference_sample, 0)
        current = monitoring_current.current_sample(lake_, uc, D.isoformat(), sample, 0).frame
    else:
        reference = lake_.read_partitions(uc.tables.features, info["reference_days"],
                                          version=spec.feature_table_version).to_pandas()
        features = lake_.read_partition(uc.tables.features, D.isoformat(), columns=[uc.key, *uc.feature_columns])
        scores = lake_.read_partition(uc.tables.predictions, D.isoformat(),
                                      columns=[uc.key, monitoring_report.PREDICTION])
        current = features.join(scores, uc.key).to_pandas()
        del features, scores
    reference[monitoring_report.PREDICTION] = model.predict(reference)
    t_data = time.perf_counter() - t0
    run = monitoring_report.run_report(reference, current, columns=uc.feature_columns, categorical=uc.categorical)
    html = run.snapshot.get_html_str(as_iframe=False)
    summary = run.summary()
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
        "skipped": summary.skipped_columns,
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
