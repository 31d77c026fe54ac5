"""Child process of the audit-trail race: record one promotion per trial, all writers at once.

    python _record_appender.py LAKE_URI ENDPOINT TAG TRIALS BARRIER_DIR

For trial t it touches BARRIER_DIR/ready-TAG-t, waits for BARRIER_DIR/go-t (so that every
writer commits at the same moment), then records a promotion of day 2026-04-<t+1> with run
id TAG-t through ``sluice.stages.promotions.record_promotion`` (``Lake.append_rows``), and
prints one JSON line per trial.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.stages.promotions import record_promotion
from sluice.tables import MODEL_PROMOTIONS


def main(argv: list[str]) -> int:
    lake_uri, endpoint, tag, trials, barrier = argv
    settings = load_settings(lake_uri=lake_uri, s3_endpoint_url=endpoint or None, use_case="churn")
    lake = Lake(settings)
    lake.exists(MODEL_PROMOTIONS)  # the object store client is up before the first barrier
    for trial in range(int(trials)):
        Path(barrier, f"ready-{tag}-{trial}").touch()
        deadline = time.monotonic() + 120
        while not Path(barrier, f"go-{trial}").exists():
            if time.monotonic() > deadline:
                print(f"no go signal for trial {trial} within 120 s", file=sys.stderr)
                return 2
            time.sleep(0.005)
        ds = f"2026-04-{trial + 1:02d}"
        ctx = RunContext("faults", f"{tag}-{trial}")
        version = record_promotion(lake, ds, f"{tag}", None, forced=True, reason=f"race {trial}", ctx=ctx)
        # A second call of the same run (a retry) must add nothing.
        again = record_promotion(lake, ds, f"{tag}", None, forced=True, reason=f"race {trial}", ctx=ctx)
        print(json.dumps({"trial": trial, "tag": tag, "version": version, "again": again}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
