"""An S3 outage of a minute is ridden out inside one call, by the object stores' own retries.

A FaultProxy sits between the lake and the moto server; an outage refuses every connection
(and cuts the open ones) for 60 s, then forwards again. Before, delta-rs gave up after 2-3 s
and pyarrow's S3 filesystem after 1-3 s, so every step failed and only Airflow's task retries
saved the run, once writing a day's state twice: it had committed, and the version lookup
after the commit failed. Now a step, and a write and read of the lake, simply take longer,
and leave exactly what a run without an outage leaves.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pytest

from faults.proxy import FaultProxy
from sluice.core.lineage import META_PREFIX, RunContext
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges import storage
from sluice.edges.lake import Lake
from sluice.settings import Settings, load_settings
from sluice.stages import etl
from sluice.tables import PARTITION_COLUMN, Table
from usecases.churn.simulator import SimulatorSource

OUTAGE_S = 60.0
CHURN = load_use_case("churn")
TABLES = CHURN.tables
DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(3)]
KEYS: dict[Table, list[str]] = {
    TABLES.raw: [PARTITION_COLUMN, "event_id"],
    TABLES.curated: [PARTITION_COLUMN, "event_id"],
    TABLES.quarantine: TABLES.quarantine.columns,
    TABLES.state: [PARTITION_COLUMN, "customer_id"],
    TABLES.features: [PARTITION_COLUMN, "customer_id"],
}


class Outage:
    """Connections refused from ``start()`` on, for ``OUTAGE_S``; then a timer thread forwards again."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.started: float | None = None
        self.ended: float | None = None
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        assert self.started is None, "one outage per test"
        self.proxy.refuse()
        self.started = time.monotonic()
        self._timer = threading.Timer(OUTAGE_S, self._end)
        self._timer.start()

    def _end(self) -> None:
        self.proxy.forward()
        self.ended = time.monotonic()

    def join(self) -> None:
        if self._timer is not None:
            self._timer.join()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    server = urlparse(s3_endpoint)
    assert server.hostname and server.port
    with FaultProxy(server.hostname, server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def outage(proxy: FaultProxy) -> Iterator[Outage]:
    fault = Outage(proxy)
    try:
        yield fault
    finally:
        fault.join()  # never leave the proxy refusing, nor a timer running, past the test


def via(proxy: FaultProxy, bucket: str, prefix: str) -> Settings:
    """Settings of a lake in ``bucket``/``prefix`` reached through the proxy (default timeouts)."""
    return load_settings(lake_uri=f"s3://{bucket}/{prefix}", s3_endpoint_url=f"http://{proxy.address}",
                         use_case="churn")


def run_days(settings: Settings, source: SimulatorSource, ctx: RunContext) -> list[dict[str, Any]]:
    return [
        {
            "ingest": etl.ingest_day(settings, day, ctx, source=source),
            "curate": etl.curate_day(settings, day, ctx),
            "features": etl.build_features_day(settings, day, ctx),
        }
        for day in DAYS
    ]


def sorted_frame(lake: Lake, table: Table) -> pd.DataFrame:
    keys = KEYS[table]
    return lake.read_table(table).to_pandas().sort_values(keys, na_position="last").reset_index(drop=True)


def commit_tokens(settings: Settings, s3_endpoint: str, table: Table) -> list[str]:
    """The commit token of every version of ``table``, read past the proxy.

    (deltalake's ``history`` holds the GIL while it waits for S3, so through a proxy running in
    threads of this process it waits for its request timeout, however the proxy is set.)
    """
    direct = settings.model_copy(update={"s3_endpoint_url": s3_endpoint})
    return [entry[META_PREFIX + "commit_token"] for entry in Lake(direct).history(table)]


def raw_rows(ds: str, n: int, tag: str) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [f"{tag}:{name}:{i}" for i in range(n)] for name in CHURN.raw_fields}
    columns[EXTRA_COLUMN] = [None] * n
    columns[PARTITION_COLUMN] = [ds] * n
    return pa.table(columns, schema=TABLES.raw.schema)


def sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r[PARTITION_COLUMN], r["event_id"]))


class _OutageAtFirstRead:
    """A pyarrow filesystem whose first ``open_input_stream`` starts the outage, then reads."""

    def __init__(self, fs: Any, outage: Outage) -> None:
        self._fs, self._outage = fs, outage

    def open_input_stream(self, path: str) -> Any:
        if self._outage.started is None:
            self._outage.start()
        return self._fs.open_input_stream(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


def test_a_day_step_rides_out_a_minute_of_outage_in_one_call(
    proxy: FaultProxy, outage: Outage, bucket: str, s3_endpoint: str, aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The incident: the outage begins right after build_features_day committed the day's state,
    as the lake reads the log for the version of that commit (through pyarrow's filesystem)."""
    source = SimulatorSource(n_customers=200, seed=5, defect_rate=0.02)
    ctx = RunContext(dag_id="faults", run_id="s3-outage")
    reference_settings = load_settings(lake_uri=f"s3://{bucket}/reference", s3_endpoint_url=s3_endpoint,
                                       use_case="churn")
    settings = via(proxy, bucket, "outage")
    reference = run_days(reference_settings, source, ctx)

    state_log = f"{settings.lake_root}/{TABLES.state.name}/_delta_log"
    real_filesystem = storage.filesystem
    armed = threading.Event()  # set while the step of day 2 runs

    def filesystem(s: Settings, uri: str) -> tuple[Any, str]:
        fs, path = real_filesystem(s, uri)
        return (_OutageAtFirstRead(fs, outage), path) if uri == state_log and armed.is_set() else (fs, path)

    began = took = 0.0
    monkeypatch.setattr(storage, "filesystem", filesystem)  # the lake imports it when it looks a commit up
    runs = []
    for day in DAYS:
        run: dict[str, Any] = {
            "ingest": etl.ingest_day(settings, day, ctx, source=source),
            "curate": etl.curate_day(settings, day, ctx),
        }
        if day == DAYS[1]:
            armed.set()
            began = time.monotonic()
        run["features"] = etl.build_features_day(settings, day, ctx)  # one call: no retry here
        if day == DAYS[1]:
            took = time.monotonic() - began
            armed.clear()
        runs.append(run)
    outage.join()

    assert outage.started is not None, "the outage never started: does the lake still look commits up via storage?"
    assert outage.ended is not None
    assert took >= OUTAGE_S, f"the step took {took:.1f} s: the outage was not inside it"
    assert began <= outage.started < outage.ended <= began + took
    assert runs == reference  # the same rows, counts and versions
    lake, reference_lake = Lake(settings), Lake(reference_settings)
    for table in KEYS:
        assert lake.version(table) == reference_lake.version(table) == len(DAYS) - 1, table.name  # no extra commit
        assert lake.partition_rows(table) == reference_lake.partition_rows(table), table.name
        tokens = commit_tokens(settings, s3_endpoint, table)
        assert len(tokens) == len(set(tokens)) == len(DAYS), table.name  # no write committed twice
        pd.testing.assert_frame_equal(sorted_frame(lake, table), sorted_frame(reference_lake, table),
                                      check_exact=True)


def test_lake_write_and_reads_ride_out_a_minute_of_outage(
    proxy: FaultProxy, outage: Outage, bucket: str, s3_endpoint: str, aws_env: None
) -> None:
    """A write (delta-rs: data file, commit) and reads of the lake (delta-rs and pyarrow) during one outage."""
    settings = via(proxy, bucket, "lake")
    raw = TABLES.raw
    day1, day2 = "2026-03-01", "2026-03-02"
    before, during = raw_rows(day1, 5, "before"), raw_rows(day2, 7, "during")
    lake = Lake(settings)
    assert lake.write_partition(raw, day1, before, RunContext("faults", "before").lineage(day1, {})) == 0
    first_commit = f"{settings.lake_root}/{raw.name}/_delta_log/{0:020d}.json"

    def read_day1() -> tuple[pa.Table, float]:
        began = time.monotonic()
        data = Lake(settings).read_partition(raw, day1)  # a fresh Lake: opens the table in the outage
        return data, time.monotonic() - began

    def read_first_commit() -> tuple[bytes, float]:
        began = time.monotonic()
        fs, path = storage.filesystem(settings, first_commit)
        with fs.open_input_stream(path) as f:
            return f.read(), time.monotonic() - began

    outage.start()
    with ThreadPoolExecutor(2) as pool:
        delta_read, log_read = pool.submit(read_day1), pool.submit(read_first_commit)
        began = time.monotonic()
        version = lake.write_partition(raw, day2, during, RunContext("faults", "during").lineage(day2, {}))
        took = time.monotonic() - began
        day1_rows, delta_read_took = delta_read.result()
        commit, log_read_took = log_read.result()
    outage.join()

    assert min(took, delta_read_took, log_read_took) >= OUTAGE_S - 1, (took, delta_read_took, log_read_took)
    assert version == 1 and lake.version(raw) == 1
    assert sorted_rows(day1_rows) == sorted_rows(before)
    assert json.loads(commit.splitlines()[0]) and b'"sluice.commit_token"' in commit  # the log entry, whole
    assert sorted_rows(lake.read_partition(raw, day2)) == sorted_rows(during)
    assert sorted_rows(Lake(settings).read_table(raw)) == sorted_rows(pa.concat_tables([before, during]))
    tokens = commit_tokens(settings, s3_endpoint, raw)
    assert len(tokens) == len(set(tokens)) == 2
