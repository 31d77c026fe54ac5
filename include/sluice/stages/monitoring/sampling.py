"""Seeded samples of a day's entities, and the read of just those rows.

The arithmetic is pure; :func:`read_entities` is the one read, filtered while scanning.
Entity keys may be integers or strings (the use case says which): they are sorted
before sampling, so the order they come in does not matter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.edges.lake import Lake, check_day
from sluice.tables import Table


def allocate(counts: Mapping[str, int], n: int) -> dict[str, int]:
    """Split a sample of ``n`` rows over days in proportion to their rows (largest remainder).

    The result is what a uniform sample over all the days would take from each on
    average, but lets each day be read and sampled on its own (memory: one day).
    """
    total = sum(counts.values())
    if total <= n:
        return dict(counts)
    exact = {d: c * n / total for d, c in counts.items()}
    out = {d: int(v) for d, v in exact.items()}
    for d in sorted(exact, key=lambda d: (-(exact[d] - out[d]), d))[: n - sum(out.values())]:
        out[d] += 1
    return out


def sample_indices(num_rows: int, k: int, *seed: int) -> np.ndarray:
    """``k`` distinct row positions out of ``num_rows``, sorted; the same for the same seed."""
    if k >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(list(seed)).choice(num_rows, size=k, replace=False))


def day_seed(ds: str) -> int:
    """A seed of its own for every day, so that two days' samples are independent."""
    return dt.date.fromisoformat(ds).toordinal()


def sample_ids(ids: pa.Array | pa.ChunkedArray, k: int, *seed: int) -> pa.Array:
    """A seeded sample of ``k`` of the entity keys (sorted first: the order they come in does not matter)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ordered = ids.take(pc.array_sort_indices(ids))
    return ordered.take(pa.array(sample_indices(len(ordered), k, *seed)))


def read_entities(
    lake: Lake, table: Table, ds: str, version: int, columns: list[str], key: str, ids: pa.Array
) -> pa.Table:
    """The rows of partition ``ds`` (at ``version``) whose ``key`` is in ``ids``, filtered while scanning.

    Memory is the result plus a few record batches, not the whole partition: what
    keeps a 1M-entity day's report lean.
    """
    dataset = lake.partition_dataset(table, check_day(ds), version=version)
    found = dataset.to_table(columns=columns, filter=pc.field(key).isin(ids))
    return found.cast(pa.schema([table.schema.field(c) for c in columns]))
