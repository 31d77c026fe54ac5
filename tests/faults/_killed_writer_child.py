"""Child process of the killed-writer experiment: write partitions of raw/events in a loop.

    python _killed_writer_child.py LAKE_URI ENDPOINT ROWS DAY [DAY ...]

Imports everything and opens the table, prints ``ready``, then waits for one line
``FIRST COUNT`` on stdin (so the parent can start the next writer while it kills this
one). Writes the writes FIRST, FIRST+1, ... (COUNT of them) of the churn use case's raw
table with ``Lake.write_partition``; write ``w`` replaces day ``DAY[w % len(DAY)]``. Every write
is a pure function of ``w`` (a retry writes exactly the same rows), and every row carries
the write's id and row count in ``extra_fields``, so a reader can tell whether a day holds
one complete write. Prints one JSON line per event, flushed at once (the parent SIGKILLs
this process at random moments and classifies the kill from what it last saw):

    {"event": "ready"}                       imports done, table opened: waiting for FIRST COUNT
    {"event": "start", "write": w}           about to build and write write w
    {"event": "done", "write": w, "version": v}
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache

import numpy as np
import pandas  # noqa: F401  (write_deltalake imports it: keep its cost out of the first write)
import pyarrow as pa
import pyarrow.compute as pc

from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.lake import Lake
from sluice.settings import load_settings
from sluice.tables import PARTITION_COLUMN


def write_rows(write: int, base_rows: int) -> int:
    """Row count of write ``write``: differs between writes, so counts alone tell writes apart."""
    return base_rows + (write * 7919) % max(base_rows // 4, 1)


def write_marker(write: int, rows: int) -> str:
    return json.dumps({"write": write, "rows": rows}, sort_keys=True)


def event_id(write: int, i: int) -> str:
    return f"w{write:04d}-{i:07d}"


@lru_cache(maxsize=2)
def _base(rows: int) -> pa.Table:
    """Realistic-looking event columns, built once per process: each write takes a slice."""
    rng = np.random.default_rng(0)
    seconds = rng.integers(0, 86_400, rows)

    def pick(values: list[str]) -> np.ndarray:
        return np.array(values)[rng.integers(0, len(values), rows)]

    columns = {
        "index": [f"{i:07d}" for i in range(rows)],
        "customer_id": rng.integers(1, 200_000, rows).astype(str),
        "time_of_day": [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in seconds.tolist()],
        "event_type": pick(["session", "order", "support_ticket"]),
        "duration_s": np.round(rng.exponential(600.0, rows), 1).astype(str),
        "amount": np.round(rng.exponential(40.0, rows), 2).astype(str),
        "plan": pick(["basic", "standard", "premium"]),
        "region": pick(["na", "eu", "apac", "latam"]),
        "channel": pick(["organic", "paid_search", "social", "referral", "partner"]),
        "device": pick(["ios", "android", "web"]),
        "signup_date": pick([f"2025-{m:02d}-15" for m in range(1, 13)]),
    }
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def build(schema: pa.Schema, write: int, ds: str, base_rows: int) -> pa.Table:
    """The rows of write ``write`` (a pure function of it): cheap, so the time goes to the write."""
    n = write_rows(write, base_rows)
    most = write_rows(0, base_rows) + max(base_rows // 4, 1)
    base = _base(2 * most).slice((write * 104_729) % most, n)
    index = _base(2 * most).column("index").slice(0, n)
    columns = {name: base.column(name) for name in base.column_names}
    columns["event_id"] = pc.binary_join_element_wise(f"w{write:04d}", index, "-")
    columns["event_time"] = pc.binary_join_element_wise(ds, base.column("time_of_day"), "T")
    columns[EXTRA_COLUMN] = pa.repeat(pa.scalar(write_marker(write, n)), n)
    columns[PARTITION_COLUMN] = pa.repeat(pa.scalar(ds), n)
    return pa.table([columns[name] for name in schema.names], schema=schema)


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    lake_uri, endpoint, rows, *days = argv
    settings = load_settings(lake_uri=lake_uri, s3_endpoint_url=endpoint or None, use_case="churn")
    raw_events = load_use_case(settings.use_case).tables.raw
    lake = Lake(settings)
    lake.exists(raw_events)  # open the table (and the object store client) before the first write
    build(raw_events.schema, 0, days[0], int(rows))  # and build the columns writes slice
    emit(event="ready")
    order = sys.stdin.readline().split()
    if not order:  # the parent closed stdin: not needed after all
        return 0
    first, count = (int(x) for x in order)
    for write in range(first, first + count):
        ds = days[write % len(days)]
        emit(event="start", write=write)
        data = build(raw_events.schema, write, ds, int(rows))
        lineage = RunContext(dag_id="faults", run_id=f"write-{write}").lineage(
            ds, {}, write=write, rows=data.num_rows
        )
        version = lake.write_partition(raw_events, ds, data, lineage)
        emit(event="done", write=write, version=version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
