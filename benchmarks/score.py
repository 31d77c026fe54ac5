"""Batch scoring of one day at 1M customers of churn, from the lake to predictions, against MLflow's pyfunc recipe.

    python benchmarks/score.py [--rows 1000000] [--repeat 1] [--customers 200000] [--history 3]

Setup (not timed): a temporary lake and MLflow registry (sqlite). ``load_history`` runs
the real ingest, contract and feature steps for ``--history`` days of ``--customers``
simulated customers; the last features partition is then tiled, with fresh unique
customer ids, into exactly ``--rows`` rows written as the features partition of the next
day D. A LightGBM model (``train.DEFAULT_PARAMS`` with churn's ``model.params``, as ``retrain``
trains it, 200 rounds) is fitted on the last real
partition and registered the way ``retrain`` logs it (``mlflow.lightgbm.log_model``,
pinned pip requirements, no signature), then made champion of D (registry alias and a
``models/promotions`` row). With fewer than 31 days of history no label has matured yet,
so the label is derived from the features: a seeded noisy logistic draw in recency and
activity (``_label``); with a longer history the real ``label_churn_30d`` is used.

Then each variant runs ``--repeat`` times, each run in a fresh process (peak memory is
read from VmHWM, since ru_maxrss survives exec and would report the parent's setup),
with the libraries imported before the clock starts (also MLflow's sqlalchemy stores, which
both variants would otherwise import lazily, ~6 s each here without cached bytecode):

* **sluice**: ``score.score_day`` (what batch_score runs): the champion of D from
  ``models/promotions``, the booster from the MLflow registry, features D read at a
  pinned Delta version, predict, risk bands, ``predictions/scores`` D (under the lake's
  ``churn/`` prefix) in one atomic Delta commit with lineage.
* **pyfunc** (baseline, MLflow's batch-inference recipe in a notebook):
  ``mlflow.pyfunc.load_model("models:/<name>/<version>")``, the parquet files of D listed
  by ``DeltaTable(uri).file_uris(partition_filters=[("ds", "=", D)])`` read with
  ``pandas.read_parquet``, the four string columns cast with ``astype("category")``
  (LightGBM refuses object columns and maps categories to the training ones itself),
  ``model.predict(frame[uc.feature_columns])``, ``customer_id`` + ``score`` written with
  ``DataFrame.to_parquet`` to a file (no risk band, versions, lineage nor atomic commit).

* **limit**: LightGBM's ``booster.predict`` alone, on the matrix sluice predicts from
  (``score.feature_matrix`` of features D, built before the clock starts): what scoring
  cannot beat. Sluice's share is limit time / sluice time (the goal: at least 80%).

It prints rows per second, wall time and peak memory (max RSS, and above the RSS once the
libraries are imported) of every run, the ratios of the medians, sluice's share of the
limit, and fails unless every variant scored the same customers with the same scores (max
abs difference < 1e-9).
The result is also written to ``benchmarks/results/score.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import peak_rss_kb  # benchmarks/ is on sys.path when a script runs

START = dt.date(2026, 1, 1)
ROUNDS = 200
RESULTS = Path(__file__).resolve().parent / "results" / "score.json"
USE_CASE = "churn"  # _label is churn's: the features it reads are churn's


def _settings(root: Path, customers: int = 1):
    from sluice.settings import load_settings

    return load_settings(lake_uri=str(root / "lake"), mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                         sim_customers=customers, use_case=USE_CASE, source="simulator")


def _label(frame):
    """A stand-in churn label when none has matured: noisy, so that the trees grow full."""
    import numpy as np

    rng = np.random.default_rng(0)
    logit = 0.25 * frame["days_since_last_event"] - 0.15 * frame["active_days_30d"] + rng.normal(0, 1, len(frame))
    return (rng.random(len(frame)) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(int)


def setup(root: Path, rows: int, customers: int, history: int) -> dict:
    """The lake, features D of exactly ``rows`` rows, and a registered champion of D."""
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    import numpy as np
    import pyarrow as pa

    from sluice.core import train as T
    from sluice.core import usecase
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.edges.registry import Registry
    from sluice.stages.etl import load_history
    from sluice.stages.promotions import record_promotion
    from sluice.stages.retrain import _model_requirements

    settings = _settings(root, customers)
    uc = usecase.of(settings)
    FEATURES, KEY, LABEL = uc.tables.features, uc.key, uc.label
    ctx = RunContext("bench", "bench")
    last = START + dt.timedelta(days=history - 1)
    load_history(settings, START, last, ctx)
    lake, day = Lake(settings), last + dt.timedelta(days=1)
    ds = day.isoformat()

    real = lake.read_partition(FEATURES, last.isoformat())
    ids = pa.array(np.arange(10**9, 10**9 + rows, dtype=np.int64))  # fresh ids, above every simulated one
    tiled = real.take(pa.array(np.arange(rows) % real.num_rows))
    tiled = tiled.set_column(tiled.schema.get_field_index(KEY), KEY, ids)
    tiled = tiled.set_column(tiled.schema.get_field_index("ds"), "ds", pa.array([ds] * rows, pa.string()))
    tiled = tiled.set_column(tiled.schema.get_field_index(LABEL), LABEL, pa.nulls(rows, pa.int8()))
    lake.write_partition(FEATURES, ds, tiled, ctx.lineage(ds, {}))
    del tiled

    matured = T.matured(lake.read_table(FEATURES).to_pandas(), uc)
    if len(matured) >= 10_000:
        train, y, label = matured, matured[LABEL].astype(int), f"{LABEL} (matured snapshots)"
    else:
        train = real.to_pandas()
        y, label = _label(train), "derived (no label matured yet; see _label)"
    params = {**T.DEFAULT_PARAMS, **uc.spec.model.params}  # what retrain's fit trains with
    cats = T.categories(uc, train)
    booster = lgb.train(params, lgb.Dataset(T.model_matrix(train, uc, cats), label=y), num_boost_round=ROUNDS)

    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name="bench-score"):
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=settings.model,
                                         pip_requirements=_model_requirements())
    version = str(info.registered_model_version)
    registry.promote(version)
    record_promotion(lake, ds, version, None, forced=True, reason="benchmark", ctx=ctx)
    return {"ds": ds, "version": version, "real_rows": real.num_rows, "train_rows": len(train), "label": label,
            "model_name": settings.model}


def measure(kind: str, root: Path, info: dict, out: Path) -> dict:
    """One variant in this (fresh) process."""
    import deltalake
    import lightgbm  # noqa: F401  (imports are not what is measured)
    import mlflow
    import mlflow.lightgbm
    import mlflow.pyfunc
    import mlflow.store.model_registry.sqlalchemy_store
    import mlflow.store.tracking.sqlalchemy_store  # (both variants would import these lazily, timed)
    import pandas as pd

    from sluice.core import usecase
    from sluice.core.lineage import RunContext
    from sluice.edges.lake import Lake
    from sluice.stages.score import score_day

    settings = _settings(root)
    uc = usecase.of(settings)
    if kind == "limit":
        model, matrix, keys = _limit_inputs(settings, info)
    rss_imports = peak_rss_kb()
    t0 = time.perf_counter()
    if kind == "sluice":
        rows = score_day(settings, dt.date.fromisoformat(info["ds"]), RunContext("bench", "bench"))["rows"]
    elif kind == "limit":
        scores = model.booster.predict(matrix, num_iteration=model.best_iteration)
        rows = len(scores)
    else:
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{info['model_name']}/{info['version']}")
        uri = Lake(settings).uri(uc.tables.features)
        files = deltalake.DeltaTable(uri).file_uris(partition_filters=[("ds", "=", info["ds"])])
        frame = pd.read_parquet(files)
        x = frame[uc.feature_columns].astype({c: "category" for c in uc.categorical})
        scores = model.predict(x)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({uc.key: frame[uc.key], "score": scores}).to_parquet(out, index=False)
        rows = len(frame)
    seconds = time.perf_counter() - t0
    rss = peak_rss_kb()
    if kind == "limit":  # (written after the clock, for the comparison)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({uc.key: keys, "score": scores}).to_parquet(out, index=False)
    return {"kind": kind, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_mb": rss / 1024, "above_imports_mb": (rss - rss_imports) / 1024}


def _limit_inputs(settings, info: dict) -> tuple:
    """The registered booster and the matrix of features D that sluice predicts from (setup, not timed)."""
    from sluice.core import usecase
    from sluice.core.train import FittedModel
    from sluice.edges.lake import Lake
    from sluice.edges.registry import Registry
    from sluice.stages.score import feature_matrix

    uc = usecase.of(settings)
    model = FittedModel.from_booster(Registry(settings).load_booster(info["version"]), uc)
    features = Lake(settings).read_partition(uc.tables.features, info["ds"])
    return model, feature_matrix(features, uc, model.categories), features.column(uc.key).to_numpy()


def _run_child(kind: str, root: Path, info: dict, out: Path) -> dict:
    args = json.dumps([kind, str(root), info, str(out)])
    proc = subprocess.run([sys.executable, __file__, "--child", args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(root: Path, info: dict, out: Path, kind: str = "pyfunc") -> float:
    """Max abs score difference between sluice's and ``kind``'s outputs; fails loudly unless they are the same."""
    import numpy as np
    import pandas as pd

    from sluice.core import usecase
    from sluice.edges.lake import Lake

    settings = _settings(root)
    uc = usecase.of(settings)
    ours = Lake(settings).read_partition(uc.tables.predictions, info["ds"]).to_pandas()
    base = pd.read_parquet(out)
    if set(ours["model_version"]) != {info["version"]}:
        raise SystemExit(f"sluice scored with model {set(ours['model_version'])}, not v{info['version']}")
    joined = ours.merge(base, on=uc.key, how="outer", suffixes=("_sluice", "_other"), indicator=True)
    if len(ours) != len(base) or not (joined["_merge"] == "both").all():
        raise SystemExit(f"different customers scored: sluice {len(ours):,} rows, {kind} {len(base):,} rows")
    diff = float(np.max(np.abs(joined["score_sluice"].to_numpy() - joined["score_other"].to_numpy())))
    if not diff < 1e-9:
        raise SystemExit(f"sluice and {kind} disagree: max abs score difference {diff:.3g} (>= 1e-9)")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="customers in the scored partition")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (medians are compared)")
    parser.add_argument("--customers", type=int, default=200_000, help="simulated customers of the history")
    parser.add_argument("--history", type=int, default=3, help="days of history built with load_history")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, root, info, out = json.loads(args.child)
        print(json.dumps(measure(kind, Path(root), info, Path(out))))
        return

    os.environ.setdefault("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "0")
    with tempfile.TemporaryDirectory(prefix="sluice-score-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        info = setup(root, args.rows, args.customers, args.history)
        print(f"setup in {time.perf_counter() - t0:.0f}s: {args.history} days of {args.customers:,} customers, "
              f"features {info['ds']} = {info['real_rows']:,} real rows tiled to {args.rows:,}; model v{info['version']} "
              f"({ROUNDS} rounds) trained on {info['train_rows']:,} rows, label {info['label']}", flush=True)
        print(f"{'rows':>10} {'impl':>7} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} {'above imports':>13}")
        runs: dict[str, list[dict]] = {"sluice": [], "pyfunc": [], "limit": []}
        outs = {"pyfunc": root / "pyfunc" / f"ds={info['ds']}" / "predictions.parquet",
                "limit": root / "limit" / "scores.parquet", "sluice": root / "unused"}
        for _ in range(args.repeat):
            for kind in runs:  # interleaved, so that load on the shared machine hits all alike
                runs[kind].append(r := _run_child(kind, root, info, outs[kind]))
                print(f"{r['rows']:>10,} {kind:>7} {r['seconds']:>8.2f} {r['rows_per_s']:>10,.0f} "
                      f"{r['peak_mb']:>8,.0f} {r['above_imports_mb']:>13,.0f}", flush=True)
        diff = compare(root, info, outs["pyfunc"])
        limit_diff = compare(root, info, outs["limit"], "limit")

    med = {k: {m: statistics.median(r[m] for r in rs) for m in ("seconds", "rows_per_s", "peak_mb",
                                                                  "above_imports_mb")} for k, rs in runs.items()}
    s, b, lim = med["sluice"], med["pyfunc"], med["limit"]
    ratio = {"rows_per_s": s["rows_per_s"] / b["rows_per_s"], "peak_mb": s["peak_mb"] / b["peak_mb"],
             "above_imports_mb": s["above_imports_mb"] / b["above_imports_mb"]}
    print(f"{'':>10} ratio sluice/pyfunc (medians of {args.repeat}): rows/s {ratio['rows_per_s']:.2f}x, "
          f"peak memory {ratio['peak_mb']:.2f}x ({s['peak_mb']:.0f} vs {b['peak_mb']:.0f} MB; above imports "
          f"{ratio['above_imports_mb']:.2f}x); same scores: max abs diff {diff:.1e}")
    share = lim["seconds"] / s["seconds"]
    print(f"{'':>10} limit: booster.predict alone on the same matrix takes {lim['seconds']:.2f}s; sluice's share of "
          f"it (limit / sluice time) is {share:.0%} (goal >= 80%); same scores: max abs diff {limit_diff:.1e}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": args.rows, "repeat": args.repeat, "customers": args.customers,
                                   "history": args.history, "setup": info, "runs": runs, "median": med,
                                   "ratio_sluice_over_pyfunc": ratio, "max_abs_score_diff": diff,
                                   "limit_share": share, "max_abs_limit_diff": limit_diff}, indent=2) + "\n")
    print(f"{'':>10} written to {RESULTS}")


if __name__ == "__main__":
    main()
