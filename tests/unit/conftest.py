"""Shared fixtures of the unit suite: no network, no services, the lake under tmp_path.

The one expensive fixture is ``history_lake``: the incremental pipeline
(ingest -> curate -> build features) run once per session over
``HISTORY_DAYS`` consecutive days of a small simulated business. Tests that
change a lake work on a copy of it (``history_copy``), never on the original.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, UseCase, load_use_case
from sluice.edges.lake import Lake
from sluice.settings import Settings, load_settings
from sluice.stages import etl as pipeline
from sluice.tables import Table

DAY = dt.date(2026, 3, 1)
HISTORY_START = dt.date(2026, 1, 1)
HISTORY_DAYS = 40  # > 30 so that snapshots get labelled, > 7 and 30 so that the windows use lagged state
HISTORY_CUSTOMERS = 500
HISTORY_SEED = 3
# The reference use case: the settings below (no SLUICE_USE_CASE) work on it, its first built-in.
CHURN: UseCase = load_use_case("churn")

# Primary keys used to give frames read back from the lake a stable order.
KEYS = {
    "raw/events": ["event_id", "customer_id", "event_time", "amount", "plan"],
    "quarantine/events": ["event_id", "customer_id", "event_time", "amount", "plan", "failed_checks"],
    "curated/events": ["ds", "event_id"],
    "state/customer_cumulative": ["ds", "customer_id"],
    "features/customer_daily": ["ds", "customer_id"],
}


def _clear_env(mp: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SLUICE_", "AWS_")):
            mp.delenv(key)
    # Commits record a code version; a fixed one avoids asking git in every test.
    mp.setenv("SLUICE_CODE_VERSION", "unit-test")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLUICE_* or AWS_* variable of the developer's shell leaks into a test."""
    _clear_env(monkeypatch)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(lake_uri=str(tmp_path / "lake"), sim_customers=300)


@pytest.fixture
def ctx() -> RunContext:
    return RunContext(dag_id="unit_test", run_id="manual__unit")


def day_range(start: dt.date, n: int) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range(n)]


def run_day(settings: Settings, day: dt.date, ctx: RunContext, source=None) -> dict:
    """ingest_raw + nightly_etl for one day, as the DAGs chain them."""
    ingested = pipeline.ingest_day(settings, day, ctx, source=source)
    curated = pipeline.curate_day(settings, day, ctx)
    built = pipeline.build_features_day(settings, day, ctx)
    return {"ingest": ingested, "curate": curated, "build": built}


def run_days(settings: Settings, days: Iterable[dt.date], ctx: RunContext, source=None) -> list[dict]:
    return [run_day(settings, d, ctx, source) for d in days]


def frame_of(lake: Lake, table: Table, ds: str | None = None, version: int | None = None) -> pd.DataFrame:
    """A partition (or the whole table) as pandas, in a stable row order."""
    data = lake.read_table(table, version=version) if ds is None else lake.read_partition(table, ds, version=version)
    df = data.to_pandas()
    keys = [k for k in KEYS[table.name] if k in df.columns]
    return df.sort_values(keys, kind="stable", na_position="last", ignore_index=True)


def raw_rows(n: int = 6, day: dt.date = DAY) -> pd.DataFrame:
    """``n`` valid raw churn events of ``day``, every field as text (as a source delivers them:
    the declared fields, then ``extra_fields``, null without undeclared fields)."""
    rows = []
    for i in range(n):
        kind = ("session", "order", "support_ticket")[i % 3]
        rows.append(
            {
                "event_id": f"e{day:%Y%m%d}-{i}",
                "customer_id": str(100_001 + i % 4),
                "event_time": f"{day.isoformat()}T{(i * 3) % 24:02d}:{i % 60:02d}:07Z",
                "event_type": kind,
                "duration_s": "321" if kind == "session" else None,
                "amount": "19.99" if kind == "order" else None,
                "plan": ("basic", "standard", "premium")[i % 3],
                "region": ("na", "eu", "apac", "latam")[i % 4],
                "channel": ("organic", "paid_search", "social", "referral", "partner")[i % 5],
                "device": ("ios", "android", "web")[i % 3],
                "signup_date": "2025-06-30",
                EXTRA_COLUMN: None,
            }
        )
    return pd.DataFrame(rows, columns=[*CHURN.raw_fields, EXTRA_COLUMN])


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The helpers above, as a fixture (test modules do not import conftest)."""
    return SimpleNamespace(
        DAY=DAY,
        uc=CHURN,
        day_range=day_range,
        run_day=run_day,
        run_days=run_days,
        frame_of=frame_of,
        raw_rows=raw_rows,
    )


@dataclass(frozen=True)
class HistoryLake:
    root: Path
    settings: Settings
    days: list[dt.date]
    results: tuple[dict, ...] = ()  # what the steps returned, day by day (session lake only)

    @property
    def lake(self) -> Lake:
        return Lake(self.settings)


def _history_settings(root: Path) -> Settings:
    return load_settings(lake_uri=str(root), sim_customers=HISTORY_CUSTOMERS, sim_seed=HISTORY_SEED)


@pytest.fixture(scope="session")
def history_lake(tmp_path_factory: pytest.TempPathFactory) -> HistoryLake:
    """The pipeline run over HISTORY_DAYS days (the simulator named by the settings, no defects)."""
    root = tmp_path_factory.mktemp("history") / "lake"
    days = day_range(HISTORY_START, HISTORY_DAYS)
    with pytest.MonkeyPatch.context() as mp:
        _clear_env(mp)
        settings = _history_settings(root)
        results = run_days(settings, days, RunContext(dag_id="history", run_id="backfill"))
    return HistoryLake(root=root, settings=settings, days=days, results=tuple(results))


@pytest.fixture
def history_copy(history_lake: HistoryLake, tmp_path: Path) -> HistoryLake:
    """A private copy of the session's history lake, free to change."""
    root = tmp_path / "lake"
    shutil.copytree(history_lake.root, root)
    return HistoryLake(root=root, settings=_history_settings(root), days=history_lake.days)
