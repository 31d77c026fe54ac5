"""The audit trail under concurrency: records are appended by racing writers, none lost, none doubled.

``models/decisions`` and ``models/promotions`` are history: ``Lake.append_rows`` only adds
rows, and a writer whose row is there already adds nothing. The old ``upsert_rows`` read the
day, merged and rewrote it once, outside its retry loop: two writers of one day lost a row in
11 of 13 trials, and a lost promotion makes ``champion_on(day)`` wrong.

Here several processes record a promotion of the same day at the same moment (a barrier of
files), trial after trial, on the S3 server and on the local filesystem; each also retries
its own record once (which must add nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.stages import promotions
from sluice.tables import MODEL_PROMOTIONS, PARTITION_COLUMN

APPENDER = Path(__file__).with_name("_record_appender.py")
WRITERS = 5
TRIALS = 6


def _race(tmp_path: Path, env: dict[str, str], lake_uri: str, endpoint: str) -> list[dict]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # The children need the test's (dummy) S3 credentials, set after the session's env was taken.
    env = env | {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(APPENDER), lake_uri, endpoint, f"w{i}", str(TRIALS), str(barrier)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(WRITERS)
    ]
    try:
        for trial in range(TRIALS):
            deadline = time.monotonic() + 180
            while len(list(barrier.glob(f"ready-*-{trial}"))) < WRITERS:
                failed = [p for p in procs if p.poll() not in (None, 0)]
                assert not failed, failed[0].stderr.read() if failed[0].stderr else failed
                assert time.monotonic() < deadline, f"writers not ready for trial {trial}"
                time.sleep(0.01)
            (barrier / f"go-{trial}").touch()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            reports += [json.loads(line) for line in out.splitlines() if line.strip()]
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _check(lake: Lake, reports: list[dict]) -> None:
    assert len(reports) == WRITERS * TRIALS
    assert all(r["version"] is not None and r["again"] is None for r in reports), reports
    rows = lake.read_table(MODEL_PROMOTIONS).to_pylist()
    by_day: dict[str, list[str]] = {}
    for row in rows:
        by_day.setdefault(row[PARTITION_COLUMN], []).append(row["run_id"])
    for trial in range(TRIALS):
        ds = f"2026-04-{trial + 1:02d}"
        assert sorted(by_day.get(ds, [])) == sorted(f"w{i}-{trial}" for i in range(WRITERS)), (ds, by_day.get(ds))
    # Every append is its own commit, and the history reader sees each promotion once.
    assert lake.version(MODEL_PROMOTIONS) == WRITERS * TRIALS - 1
    assert len(promotions.history(lake)) == WRITERS * TRIALS


def test_racing_records_on_s3_lose_nothing_and_double_nothing(s3_settings, s3_endpoint, warm_children, tmp_path):
    reports = _race(tmp_path, warm_children, s3_settings.lake_uri, s3_endpoint)
    _check(Lake(s3_settings), reports)


def test_racing_records_on_the_local_filesystem_lose_nothing_and_double_nothing(warm_children, tmp_path):
    lake_uri = (tmp_path / "lake").as_uri()
    reports = _race(tmp_path, warm_children, lake_uri, "")
    _check(Lake(load_settings(lake_uri=lake_uri, use_case="churn")), reports)


@pytest.mark.parametrize("rows_per_call", [1, 3])
def test_a_record_already_there_is_not_added_again(tmp_path, rows_per_call):
    from sluice.core.lineage import RunContext

    lake = Lake(load_settings(lake_uri=str(tmp_path / "lake"), use_case="churn"))
    ctx = RunContext("faults", "once")
    rows = [
        {"model_version": str(v), "previous_version": None, "forced": False, "reason": "r", "decision_ds": None,
         "run_id": "once", "recorded_at": None, PARTITION_COLUMN: "2026-04-01"}
        for v in range(rows_per_call)
    ]
    assert lake.append_rows(MODEL_PROMOTIONS, "2026-04-01", rows, ("run_id", "model_version"), ctx.lineage("2026-04-01", {})) == 0
    assert lake.append_rows(MODEL_PROMOTIONS, "2026-04-01", rows, ("run_id", "model_version"), ctx.lineage("2026-04-01", {})) is None
    assert lake.read_table(MODEL_PROMOTIONS).num_rows == rows_per_call
    with pytest.raises(Exception, match="outside partition"):
        lake.append_rows(MODEL_PROMOTIONS, "2026-04-02", rows, ("run_id",), ctx.lineage("2026-04-02", {}))
