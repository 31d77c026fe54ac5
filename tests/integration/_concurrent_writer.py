"""Child process of the concurrency tests: write one partition of raw/events.

    python _concurrent_writer.py LAKE_URI ENDPOINT DS ROWS TAG READY_FILE GO_FILE

Imports and prepares everything, touches READY_FILE, waits for GO_FILE (so that all
writers hit the store at the same moment), writes ROWS rows tagged TAG into partition
DS of the churn use case with ``Lake.write_partition`` and prints ``{"ds", "tag", "rows", "version"}`` as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas  # noqa: F401  (imported by the writer anyway; keep its cost before the barrier)
import pyarrow as pa

from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.tables import PARTITION_COLUMN


def main(argv: list[str]) -> int:
    lake_uri, endpoint, ds, rows, tag, ready, go = argv
    n = int(rows)
    settings = load_settings(lake_uri=lake_uri, s3_endpoint_url=endpoint, use_case="churn")
    uc = load_use_case(settings.use_case)
    raw_events = uc.tables.raw
    lake = Lake(settings)
    columns: dict[str, list] = {name: [f"{tag}:{name}:{i}" for i in range(n)] for name in uc.raw_fields}
    columns[EXTRA_COLUMN] = [None] * n
    columns[PARTITION_COLUMN] = [ds] * n
    data = pa.table(columns, schema=raw_events.schema)
    lineage = RunContext(dag_id="integration", run_id=tag).lineage(ds, {}, writer=tag, rows=n)
    lake.exists(raw_events)  # open the object store client before the barrier

    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            print("no go signal within 120 s", file=sys.stderr)
            return 2
        time.sleep(0.005)

    version = lake.write_partition(raw_events, ds, data, lineage)
    print(json.dumps({"ds": ds, "tag": tag, "rows": n, "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
