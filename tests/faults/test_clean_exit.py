"""A process that read the lake exits 0: no abort of Arrow's I/O threads at interpreter shutdown.

Reading a Delta table through deltalake's ``to_pyarrow_table`` scans via a filesystem
written in Python; a scan's read-ahead may release its last Python file on one of Arrow's
I/O threads while the interpreter shuts down, and that thread then aborts the process
("terminate called without an active exception", exit 134): one `make demo` in two, about
one exit in four after two record appends (measured before the fix: 3 of 12). The lake
reads through pyarrow's own filesystem instead. 16 exits here: the same script reading the
old way aborted 3 times in 16 (a regression fails this test about 19 times in 20).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import datetime as dt, sys
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.stages.promotions import history
from sluice.tables import MODEL_PROMOTIONS
lake = Lake(load_settings(lake_uri=sys.argv[1], use_case="churn"))
for run in ("a", "b"):
    row = {"model_version": "1", "previous_version": None, "forced": False, "reason": "r", "decision_ds": None,
           "run_id": run, "recorded_at": dt.datetime.now(dt.UTC), "ds": "2026-04-01"}
    lake.append_rows(MODEL_PROMOTIONS, "2026-04-01", [row], ("run_id",), RunContext("t", run).lineage("2026-04-01", {}))
assert len(history(lake)) == 2
print("read", lake.read_partition(MODEL_PROMOTIONS, "2026-04-01").num_rows)
"""


def test_sixteen_processes_that_read_the_lake_all_exit_zero(tmp_path: Path, warm_children) -> None:
    codes = []
    for i in range(16):
        done = subprocess.run([sys.executable, "-c", SCRIPT, (tmp_path / f"lake{i}").as_uri()], env=warm_children,
                              capture_output=True, text=True, timeout=120)
        codes.append((done.returncode, done.stderr[-300:]))
        assert "read 2" in done.stdout, done.stderr[-2000:]
    assert [c for c, _ in codes] == [0] * 16, [c for c in codes if c[0]]
