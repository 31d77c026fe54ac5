"""The alternatives of benchmarks/etl.py (DuckDB, Polars) compute Sluice's features, defects included.

The benchmark fails when they disagree at full size; this checks the same at a size that
runs in seconds, on days with every kind of defect of the simulator, so that their
contract filters are exercised too (copies, nulls, malformed, out of range, bad categories).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("polars")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _alternatives import ALTERNATIVES, differences  # noqa: E402
from etl import _inputs  # noqa: E402

from sluice.core import usecase  # noqa: E402
from sluice.core.lineage import RunContext  # noqa: E402
from sluice.edges.lake import Lake  # noqa: E402
from sluice.edges.sources import make_source  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from sluice.stages.etl import build_features_day, curate_day, ingest_day  # noqa: E402

START = dt.date(2026, 1, 1)
DAYS = 9  # the last day has a state 7 days before it (a window's earlier totals), not 30 nor 90


@pytest.fixture(scope="module")
def lake_of_defects(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-equivalence")
    settings = load_settings(lake_uri=str(root / "lake"), sim_customers=400, source="simulator",
                             sim_defect_rate=0.03)
    uc = usecase.of(settings)
    source, ctx = make_source(settings, uc), RunContext("unit_test", "bench")
    for i in range(DAYS):
        day = START + dt.timedelta(days=i)
        ingest_day(settings, day, ctx, source)
        curate_day(settings, day, ctx)
        build_features_day(settings, day, ctx)
    return settings, uc, root


@pytest.mark.parametrize("kind", list(ALTERNATIVES))
def test_an_alternative_writes_sluices_features(lake_of_defects, kind):
    import pandas as pd

    settings, uc, root = lake_of_defects
    day = START + dt.timedelta(days=DAYS - 1)
    lake = Lake(settings)
    assert lake.partition_rows(uc.tables.quarantine).get(day.isoformat(), 0) > 0  # defects were there
    out = root / kind
    out.mkdir()
    ALTERNATIVES[kind](uc, day, _inputs(lake, uc, day), out)
    ours = lake.read_partition(uc.tables.features, day.isoformat()).to_pandas()
    assert differences(ours, pd.read_parquet(out / "features.parquet"), uc) == []


def test_differences_names_the_column_that_differs(lake_of_defects):
    settings, uc, _ = lake_of_defects
    ours = Lake(settings).read_partition(uc.tables.features, (START + dt.timedelta(days=DAYS - 1)).isoformat())
    ours = ours.to_pandas()
    theirs = ours.assign(sessions_7d=ours["sessions_7d"] + 1, spend_7d=ours["spend_7d"] * 1.01 + 1)
    found = differences(ours, theirs, uc)
    assert [p.split(":")[0] for p in found] == ["sessions_7d", "spend_7d"]
