"""The steps of ingest_raw and nightly_etl for one partition day: I/O at the edge.

Each step reads and writes partition D only (plus the label of D - 30), records
lineage in every commit, and returns a small dict for XCom.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from sluice.core import features as F
from sluice.core.contracts import ContractViolation, split_by_contract
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake, LakeError
from sluice.edges.sources import Source, SourceError, make_source
from sluice.settings import Settings
from sluice.tables import (
    CURATED_EVENTS,
    CUSTOMER_STATE,
    FEATURES_CUSTOMER_DAILY,
    PARTITION_COLUMN,
    QUARANTINE_EVENTS,
    RAW_EVENTS,
    Table,
)

log = logging.getLogger(__name__)


def _frame_to_table(table: Table, df: pd.DataFrame, ds: str | None = None) -> pa.Table:
    if ds is not None:
        df = df.assign(**{PARTITION_COLUMN: ds})
    return pa.Table.from_pandas(df[table.columns], schema=table.schema, preserve_index=False)


def ingest_day(settings: Settings, day: dt.date, ctx: RunContext, source: Source | None = None) -> dict[str, Any]:
    """Extract the events of ``day`` from the source into ``raw/events`` partition D."""
    source = source or make_source(settings)
    ds = F.day_str(day)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    data = source.extract(start, start + dt.timedelta(days=1))
    if data.num_rows == 0:
        # A subscription business never has a day without a single event: an empty extract
        # means an upstream outage or a misconfigured source. Fail loudly and write nothing.
        raise SourceError(f"{source.name}: no events for {ds} in [{start:%Y-%m-%d %H:%M}, +1 day); nothing written")
    data = data.append_column(PARTITION_COLUMN, pa.array([ds] * data.num_rows, pa.string()))
    lake = Lake(settings)
    version = lake.write_partition(
        RAW_EVENTS, ds, data, ctx.lineage(ds, {}, source=source.name, rows=data.num_rows)
    )
    return {"table": RAW_EVENTS.name, "ds": ds, "rows": data.num_rows, "version": version, "source": source.name}


def curate_day(settings: Settings, day: dt.date, ctx: RunContext) -> dict[str, Any]:
    """Validate raw D: invalid rows to quarantine; valid rows to ``curated/events`` D.

    Raises :class:`ContractViolation` (after quarantining) when the invalid share
    is above the contract's limit; ``curated/events`` is then left as it was.
    """
    lake = Lake(settings)
    ds = F.day_str(day)
    if not lake.has_partition(RAW_EVENTS, ds):
        raise LakeError(f"raw/events has no partition {ds}: run ingest_raw for {ds} first")
    raw_version = lake.version(RAW_EVENTS)
    assert raw_version is not None
    raw = lake.read_partition(RAW_EVENTS, ds, version=raw_version).to_pandas()
    result = split_by_contract(raw, day)
    inputs = {RAW_EVENTS.name: raw_version}
    summary: dict[str, Any] = {
        "ds": ds,
        "rows_in": result.rows_in,
        "valid": len(result.valid),
        "quarantined": len(result.quarantined),
        "invalid_share": round(result.invalid_share, 6),
        "failures": result.failures,
    }
    # Quarantine is written every time (also empty) so a re-run leaves no stale rows.
    summary["quarantine_version"] = lake.write_partition(
        QUARANTINE_EVENTS,
        ds,
        _frame_to_table(QUARANTINE_EVENTS, result.quarantined, ds),
        ctx.lineage(ds, inputs, rows=len(result.quarantined), failures=result.failures),
    )
    limit = settings.contract_max_invalid_share
    if result.invalid_share > limit:
        raise ContractViolation(
            f"raw/events {ds}: {len(result.quarantined)} of {result.rows_in} rows "
            f"({result.invalid_share:.1%}) break the contract, above the limit of {limit:.1%}. "
            f"Failed column: check (rows): {result.describe()}. "
            f"The rows are kept in {QUARANTINE_EVENTS.name} ds={ds}; curated/events and features were not changed."
        )
    if result.failures:
        log.warning("raw/events %s: %d rows quarantined: %s", ds, len(result.quarantined), result.describe())
    summary["curated_version"] = lake.write_partition(
        CURATED_EVENTS,
        ds,
        _frame_to_table(CURATED_EVENTS, result.valid, ds),
        ctx.lineage(ds, inputs, rows=len(result.valid)),
    )
    return summary


def _read_or_none(lake: Lake, table: Table, ds: str, version: int | None) -> pd.DataFrame | None:
    if version is None:
        return None
    frame = lake.read_partition(table, ds, version=version).to_pandas()
    return frame if len(frame) else None


def build_features_day(settings: Settings, day: dt.date, ctx: RunContext) -> dict[str, Any]:
    """Advance the customer state to D, write features of D, and label the snapshot of D - 30."""
    lake = Lake(settings)
    ds = F.day_str(day)
    if not lake.has_partition(CURATED_EVENTS, ds):
        raise LakeError(f"curated/events has no partition {ds}: the contract step for {ds} has not succeeded")
    curated_version = lake.version(CURATED_EVENTS)
    state_version = lake.version(CUSTOMER_STATE)
    state_days = set(lake.partitions(CUSTOMER_STATE))
    first_day = min(state_days | {ds})

    def state_of(d: dt.date, required: bool) -> pd.DataFrame | None:
        key = F.day_str(d)
        if key in state_days:
            return _read_or_none(lake, CUSTOMER_STATE, key, state_version)
        if key < first_day:
            return None  # before the lake began: all totals are zero
        if required:
            raise LakeError(
                f"{CUSTOMER_STATE.name} has no partition {key} but has earlier days: "
                f"run nightly_etl for {key} before {ds}"
            )
        return None

    previous = state_of(day - dt.timedelta(days=1), required=True)
    events = lake.read_partition(CURATED_EVENTS, ds, version=curated_version).to_pandas()
    state = F.advance_state(previous, F.daily_activity(events), day)
    lagged = {w: state_of(day - dt.timedelta(days=w), required=True) for w in F.WINDOWS}
    feats = F.features_as_of(state, lagged, day)
    horizon = day + dt.timedelta(days=F.LABEL_HORIZON_DAYS)
    if F.day_str(horizon) in state_days:
        # Re-running an old day: its label is already known, keep it filled.
        feats = F.churn_labels(feats, state_of(horizon, required=False), day)

    inputs = {CURATED_EVENTS.name: curated_version or 0}
    if state_version is not None:
        inputs[CUSTOMER_STATE.name] = state_version
    new_state_version = lake.write_partition(
        CUSTOMER_STATE, ds, _frame_to_table(CUSTOMER_STATE, state), ctx.lineage(ds, inputs, rows=len(state))
    )

    snapshot_day = day - dt.timedelta(days=F.LABEL_HORIZON_DAYS)
    days, frames = [ds], [feats]
    labelled = 0
    if lake.has_partition(FEATURES_CUSTOMER_DAILY, F.day_str(snapshot_day)):
        snapshot = lake.read_partition(FEATURES_CUSTOMER_DAILY, F.day_str(snapshot_day)).to_pandas()
        snapshot = F.churn_labels(snapshot, state, snapshot_day)
        days.append(F.day_str(snapshot_day))
        frames.append(snapshot)
        labelled = len(snapshot)
    out = pd.concat(frames, ignore_index=True)
    features_version = lake.write_partitions(
        FEATURES_CUSTOMER_DAILY,
        days,
        _frame_to_table(FEATURES_CUSTOMER_DAILY, out),
        ctx.lineage(ds,
            inputs | {CUSTOMER_STATE.name: new_state_version},
            rows=len(feats),
            labelled_snapshot=F.day_str(snapshot_day) if labelled else None,
        ),
    )
    churn_rate = None
    if labelled:
        churn_rate = round(float(frames[1]["label_churn_30d"].astype(float).mean()), 4)
    return {
        "ds": ds,
        "customers": len(feats),
        "features_version": features_version,
        "state_version": new_state_version,
        "labelled_snapshot": F.day_str(snapshot_day) if labelled else None,
        "labelled_rows": labelled,
        "snapshot_churn_rate": churn_rate,
    }


def load_history(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    ctx: RunContext | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """The historical load: ingest, curate and build the features of ``start`` .. ``end``, in order, here.

    The same three steps nightly_etl runs for a day, without a scheduler: what a new
    deployment does once for the months before its first scheduled day (features need
    90 days of history, models 30 more for their labels). Each day is idempotent like
    the tasks, so an interrupted load is resumed by running it again.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    ctx = ctx or RunContext("sluice-history", f"history__{start.isoformat()}__{end.isoformat()}")
    source = make_source(settings)  # one source for all days (the simulator builds its customers once)
    done = []
    day = start
    while day <= end:
        summary = {
            "ds": day.isoformat(),
            "ingest": ingest_day(settings, day, ctx, source),
            "curate": curate_day(settings, day, ctx),
            "features": build_features_day(settings, day, ctx),
        }
        done.append(summary)
        if progress is not None:
            progress(summary)
        day += dt.timedelta(days=1)
    return done
