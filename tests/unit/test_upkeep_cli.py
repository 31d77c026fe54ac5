"""`sluice upkeep`: the files a killed writer left (no version references them) are listed, then deleted."""

from __future__ import annotations

import os
import time

from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.ops.cli import main
from sluice.settings import load_settings
from sluice.tables import MODEL_PROMOTIONS, PARTITION_COLUMN


def test_upkeep_lists_then_deletes_only_unreferenced_old_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLUICE_LAKE_URI", str(tmp_path / "lake"))
    settings = load_settings(use_case="churn")
    lake = Lake(settings)
    row = {"model_version": "1", "previous_version": None, "forced": False, "reason": "r", "decision_ds": None,
           "run_id": "a", "recorded_at": None, PARTITION_COLUMN: "2026-04-01"}
    lake.append_rows(MODEL_PROMOTIONS, "2026-04-01", [row], ("run_id",), RunContext("t", "a").lineage("2026-04-01", {}))
    folder = tmp_path / "lake" / "churn" / MODEL_PROMOTIONS.name / "ds=2026-04-01"
    (kept,) = list(folder.glob("*.parquet"))
    stray = folder / "part-00000-killed-writer.snappy.parquet"
    stray.write_bytes(kept.read_bytes())
    young = folder / "part-00001-still-writing.snappy.parquet"
    young.write_bytes(kept.read_bytes())
    old = time.time() - 7 * 3600
    os.utime(stray, (old, old))

    assert main(["upkeep", "--dry-run", "--use-case", "churn"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {MODEL_PROMOTIONS.name}/ds=2026-04-01/{stray.name}" in out and young.name not in out
    assert stray.exists()

    assert main(["upkeep", "--use-case", "churn"]) == 0
    assert "1 unreferenced data file(s) deleted" in capsys.readouterr().out
    assert not stray.exists() and young.exists() and kept.exists()
    assert Lake(settings).read_table(MODEL_PROMOTIONS).num_rows == 1
