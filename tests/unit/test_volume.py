"""The volume check of ingest_raw: a day with a fraction of its usual rows alerts, with the numbers.

Pure verdicts first (median, band, too little history), then the stage on a local lake fed
by the churn simulator: a day whose source delivered 30% of its rows is POSTed to a real
HTTP webhook once (a re-run sends nothing twice and replaces the record), a normal day is
not, and a use case whose ``contract.volume.fail`` is true fails the day after alerting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError
from tests.helpers import webhook_server

from sluice.core.contracts import ContractViolation
from sluice.core.lineage import RunContext
from sluice.core.usecase import VolumeSpec, load_use_case
from sluice.core.volume import VolumeError, check_volume, trailing_counts
from sluice.edges.alerts import send_alert
from sluice.edges.lake import Lake
from sluice.ops.cli import _status
from sluice.settings import Settings, load_settings
from sluice.stages import etl as pipeline
from sluice.stages.monitoring import check_day_volume
from sluice.tables import ALERTS_SENT, VOLUME_HISTORY
from usecases.churn.simulator import SimulatorSource

SPEC = VolumeSpec()
START = dt.date(2026, 3, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(10)]
LOW_DAY = DAYS[-1]


# -- the verdict (pure) -------------------------------------------------------------------------
def _counts(values: list[int], end: dt.date) -> dict[str, int]:
    return {(end - dt.timedelta(days=len(values) - i)).isoformat(): v for i, v in enumerate(values)}


def test_the_band_is_around_the_median_of_the_trailing_days() -> None:
    day = dt.date(2026, 3, 20)
    counts = _counts([100, 104, 96, 1000, 98, 102, 100, 5], day)  # one burst and one outage in the window
    trailing = trailing_counts(counts, day, SPEC)
    assert len(trailing) == 8
    ok = check_volume(day.isoformat(), 95, trailing, SPEC)
    assert (ok.verdict, ok.median, ok.low, ok.high, ok.alert) == ("ok", 100.0, 50.0, 200.0, False)
    low = check_volume(day.isoformat(), 20, trailing, SPEC)
    assert low.verdict == "low" and low.alert and low.ratio == pytest.approx(0.2)
    assert "20 raw rows on 2026-03-20, 20% of the median 100 of the 8 days before" in low.message()
    assert "below the band [50, 200]" in low.message()
    assert check_volume(day.isoformat(), 201, trailing, SPEC).verdict == "high"


def test_the_window_excludes_the_day_itself_older_days_and_empty_days() -> None:
    day = dt.date(2026, 3, 20)
    counts = {**_counts([100] * 40, day), day.isoformat(): 3, "2026-03-19": 0}
    trailing = trailing_counts(counts, day, VolumeSpec(trailing_days=14))
    assert sorted(trailing) == [(day - dt.timedelta(days=k)).isoformat() for k in range(14, 1, -1)]


def test_too_little_history_gives_no_verdict() -> None:
    day = dt.date(2026, 3, 20)
    check = check_volume(day.isoformat(), 1, trailing_counts(_counts([100] * 6, day), day, SPEC), SPEC)
    assert (check.verdict, check.alert, check.median) == ("no_baseline", False, None)
    assert "no baseline yet (6 earlier days with data)" in check.message()


def test_the_spec_refuses_a_window_shorter_than_its_minimum() -> None:
    with pytest.raises(ValidationError, match="min_days"):
        VolumeSpec(trailing_days=5, min_days=7)


def test_a_volume_error_is_bad_input() -> None:
    assert issubclass(VolumeError, ContractViolation), "the task fails at once, without retries"


# -- the stage on a lake ------------------------------------------------------------------------
class _Thinned:
    """The simulator, delivering only the first ``keep`` share of one day's rows (a lost shard)."""

    def __init__(self, source: SimulatorSource, day: dt.date, keep: float) -> None:
        self.source, self.day, self.keep, self.name = source, day, keep, "simulator (thinned)"

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        table = self.source.extract(start, end)
        return table.slice(0, int(table.num_rows * self.keep)) if start.date() == self.day else table


@pytest.fixture
def webhook() -> Iterator[tuple[str, list]]:
    """The alert webhook; the list holds the (path, JSON body) POSTed to it."""
    with webhook_server() as served:
        yield served


def _to(url: str):
    """The alert channel of these tests: the webhook at ``url`` (the DAG's are its connections)."""
    return lambda payload: send_alert(url, payload)


def _ingest(settings: Settings, keep: float) -> None:
    source = _Thinned(SimulatorSource.from_settings(settings, load_use_case(settings.use_case)), LOW_DAY, keep)
    for day in DAYS:
        pipeline.ingest_day(settings, day, RunContext("ingest_raw", f"manual__{day}"), source)


def test_a_thin_day_alerts_once_with_its_numbers_and_a_normal_day_does_not(tmp_path: Path, webhook, capsys) -> None:
    url, received = webhook
    settings = load_settings(lake_uri=str(tmp_path / "lake"), sim_customers=400, use_case="churn")
    _ingest(settings, keep=0.3)
    ctx = RunContext("churn__ingest_raw", "scheduled__low")

    normal = check_day_volume(settings, DAYS[-2], ctx, _to(url))
    assert normal["verdict"] == "ok" and not normal["alert_sent"] and received == []

    first = check_day_volume(settings, LOW_DAY, ctx, _to(url))
    assert first["verdict"] == "low" and first["alert_sent"] and first["baseline_days"] == len(DAYS) - 1
    again = check_day_volume(settings, LOW_DAY, RunContext("churn__ingest_raw", "manual__rerun"), _to(url))
    assert again["verdict"] == "low" and not again["alert_sent"], "sent at most once per day"

    assert len(received) == 1
    alert = received[0][1]
    assert alert["ds"] == LOW_DAY.isoformat() and alert["use_case"] == "churn" and alert["dag_id"] == ctx.dag_id
    assert alert["volume"]["verdict"] == "low" and alert["volume"]["ratio"] < 0.5
    assert f"{first['rows']} raw rows on {LOW_DAY}" in alert["text"]
    lake = Lake(settings)
    assert lake.partition_rows(VOLUME_HISTORY)[LOW_DAY.isoformat()] == 1, "a re-run replaces the record"
    assert [r["reason_key"] for r in lake.read_partition(ALERTS_SENT, LOW_DAY.isoformat()).to_pylist()] == [
        f"volume:{LOW_DAY}"]

    # sluice status names the day with its numbers.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLUICE_LAKE_URI", settings.lake_uri)
        mp.setenv("SLUICE_SIM_CUSTOMERS", "400")
        _status(argparse.Namespace(json=False, use_case="churn"))
    out = capsys.readouterr().out
    assert "VOLUME: 1 day(s) of raw/events outside the band" in out
    assert f"{LOW_DAY}: {first['rows']:,} rows, {first['ratio']:.0%} of the median" in out


def test_a_use_case_that_says_so_fails_the_day_after_alerting(tmp_path: Path, webhook) -> None:
    url, received = webhook
    folder = tmp_path / "strict" / "churn"  # a copy of churn whose volume check fails the day
    shutil.copytree(load_use_case("churn").folder, folder)
    spec = folder / "usecase.yaml"
    spec.write_text(spec.read_text().replace("  max_invalid_share: 0.05\n",
                                             "  max_invalid_share: 0.05\n  volume: {fail: true}\n"))
    settings = load_settings(lake_uri=str(tmp_path / "lake"), sim_customers=400, use_cases=[str(folder)],
                             use_case=str(folder))
    assert load_use_case(str(folder)).spec.contract.volume.fail
    _ingest(settings, keep=0.3)
    with pytest.raises(VolumeError, match=rf"raw/events {LOW_DAY}: .* below the band .*contract.volume"):
        check_day_volume(settings, LOW_DAY, RunContext("churn__ingest_raw", "scheduled__low"), _to(url))
    assert len(received) == 1, "the alert went out before the day failed"
    assert Lake(settings).partition_rows(VOLUME_HISTORY)[LOW_DAY.isoformat()] == 1
