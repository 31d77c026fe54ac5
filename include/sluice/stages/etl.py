"""The steps of ingest_raw and nightly_etl for one partition day: I/O at the edge.

Each step reads and writes partition D only (plus the label of D - horizon), records
lineage in every commit, and returns a small dict for XCom. What the tables hold, which
checks run and which features are built comes from the use case's spec.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from sluice.core import features as F
from sluice.core import usecase
from sluice.core.contracts import ContractViolation, split_by_contract
from sluice.core.lineage import RunContext
from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake, LakeError
from sluice.edges.sources import Source, SourceError, conform, extra_fields, make_source
from sluice.settings import Settings
from sluice.tables import PARTITION_COLUMN, Table

log = logging.getLogger(__name__)


def _frame_to_table(table: Table, df: pd.DataFrame, ds: str | None = None) -> pa.Table:
    if ds is not None:
        df = df.assign(**{PARTITION_COLUMN: ds})
    return pa.Table.from_pandas(df[table.columns], schema=table.schema, preserve_index=False)


def max_invalid_share(settings: Settings, uc: UseCase) -> float:
    """The use case's limit, unless the deployment overrides it (SLUICE_CONTRACT_MAX_INVALID_SHARE)."""
    override = settings.contract_max_invalid_share
    return uc.spec.contract.max_invalid_share if override is None else override


def ingest_day(settings: Settings, day: dt.date, ctx: RunContext, source: Source | None = None) -> dict[str, Any]:
    """Extract the events of ``day`` from the source into ``raw/events`` partition D."""
    uc = usecase.of(settings)
    RAW_EVENTS = uc.tables.raw
    source = source or make_source(settings, uc)
    ds = F.day_str(day)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    data = source.extract(start, start + dt.timedelta(days=1))
    if data.num_rows == 0:
        # An empty extract means an upstream outage or a misconfigured source far more often
        # than a day without a single event. Fail loudly and write nothing.
        raise SourceError(f"{source.name}: no events for {ds} in [{start:%Y-%m-%d %H:%M}, +1 day); nothing written")
    data = conform(data, source.name, uc)  # whatever the source, the raw schema of the use case
    extras = extra_fields(data)
    if extras:
        log.warning("%s %s: field(s) %s are not in the spec of %s: kept in raw/events.extra_fields, not used",
                    source.name, ds, extras, uc.name)
    data = data.append_column(PARTITION_COLUMN, pa.array([ds] * data.num_rows, pa.string()))
    lake = Lake(settings)
    version = lake.write_partition(
        RAW_EVENTS, ds, data, ctx.lineage(ds, {}, source=source.name, rows=data.num_rows, extra_fields=extras)
    )
    return {"table": RAW_EVENTS.name, "ds": ds, "rows": data.num_rows, "version": version, "source": source.name,
            "extra_fields": extras}


def curate_day(settings: Settings, day: dt.date, ctx: RunContext) -> dict[str, Any]:
    """Validate raw D: invalid rows to quarantine; valid rows to ``curated/events`` D.

    Raises :class:`ContractViolation` (after quarantining) when the invalid share
    is above the contract's limit; ``curated/events`` is then left as it was.
    """
    uc = usecase.of(settings)
    RAW_EVENTS, QUARANTINE_EVENTS, CURATED_EVENTS = uc.tables.raw, uc.tables.quarantine, uc.tables.curated
    lake = Lake(settings)
    ds = F.day_str(day)
    if not lake.has_partition(RAW_EVENTS, ds):
        raise LakeError(f"raw/events has no partition {ds}: run ingest_raw for {ds} first")
    raw_version = lake.version(RAW_EVENTS)
    assert raw_version is not None
    raw = lake.read_partition(RAW_EVENTS, ds, version=raw_version).to_pandas()
    result = split_by_contract(raw, day, uc)
    inputs = {RAW_EVENTS.name: raw_version}
    summary: dict[str, Any] = {
        "ds": ds,
        "rows_in": result.rows_in,
        "valid": len(result.valid),
        "quarantined": len(result.quarantined),
        "invalid_share": round(result.invalid_share, 6),
        "failures": result.failures,
        "duplicates_removed": result.duplicates,
    }
    # Quarantine is written every time (also empty) so a re-run leaves no stale rows.
    summary["quarantine_version"] = lake.write_partition(
        QUARANTINE_EVENTS,
        ds,
        _frame_to_table(QUARANTINE_EVENTS, result.quarantined, ds),
        ctx.lineage(ds, inputs, rows=len(result.quarantined), failures=result.failures,
                    duplicates_removed=result.duplicates),
    )
    limit = max_invalid_share(settings, uc)
    if result.invalid_share > limit:
        raise ContractViolation(
            f"raw/events {ds}: {len(result.quarantined)} of {result.rows_in} rows "
            f"({result.invalid_share:.1%}) break the contract, above the limit of {limit:.1%}. "
            f"Failed column: check (rows): {result.describe()}. "
            f"The rows are kept in {QUARANTINE_EVENTS.name} ds={ds}; {CURATED_EVENTS.name} and features were not "
            "changed."
        )
    if result.failures:
        log.warning("raw/events %s: %d rows quarantined: %s", ds, len(result.quarantined), result.describe())
    summary["curated_version"] = lake.write_partition(
        CURATED_EVENTS,
        ds,
        _frame_to_table(CURATED_EVENTS, result.valid, ds),
        ctx.lineage(ds, inputs, rows=len(result.valid), duplicates_removed=result.duplicates),
    )
    return summary


def _read_or_none(lake: Lake, table: Table, ds: str, version: int | None,
                  columns: list[str] | None = None) -> pd.DataFrame | None:
    if version is None:
        return None
    frame = lake.read_partition(table, ds, version=version, columns=columns).to_pandas()
    return frame if len(frame) else None


def build_features_day(settings: Settings, day: dt.date, ctx: RunContext) -> dict[str, Any]:
    """Advance the entity state to D, write features of D, and label the snapshot of D - horizon."""
    uc = usecase.of(settings)
    CURATED_EVENTS, STATE, FEATURES = uc.tables.curated, uc.tables.state, uc.tables.features
    lake = Lake(settings)
    ds = F.day_str(day)
    if not lake.has_partition(CURATED_EVENTS, ds):
        quarantined = lake.partition_rows(uc.tables.quarantine).get(ds, 0)
        if quarantined:
            # (Not necessarily all of them: above the contract's limit, curate_events writes no valid row.)
            raw_rows = lake.partition_rows(uc.tables.raw).get(ds, 0)
            raise LakeError(
                f"{CURATED_EVENTS.name} has no valid event on {ds}: {quarantined} of the {raw_rows} rows of "
                f"{uc.tables.raw.name} {ds} were quarantined, too many for the contract (see "
                f"{uc.tables.quarantine.name} ds={ds}); fix the source and re-run nightly_etl for {ds}"
            )
        unsourced = "" if lake.has_partition(uc.tables.raw, ds) else (
            f", nor has ingest_raw: {uc.tables.raw.name} has no partition {ds} (a landing file refused? see its log)")
        raise LakeError(f"{CURATED_EVENTS.name} has no partition {ds}: curate_events for {ds} has not run yet{unsourced}")
    curated_version = lake.version(CURATED_EVENTS)
    state_version = lake.version(STATE)
    state_days = set(lake.partitions(STATE))
    # The lake began with its first curated day, not its first state day: lake_maintenance
    # retires old state partitions, and a day before the first kept one is not "all zeros".
    first_day = min(set(lake.partitions(CURATED_EVENTS)) | state_days | {ds})
    first_kept = min(state_days, default=None)

    def state_of(d: dt.date, required: bool, columns: list[str] | None = None) -> pd.DataFrame | None:
        key = F.day_str(d)
        if key in state_days:
            return _read_or_none(lake, STATE, key, state_version, columns)
        if key < first_day:
            return None  # before the lake began: all totals are zero
        if required and first_kept is not None and key < first_kept:
            raise LakeError(
                f"{STATE.name} {key} was retired by lake_maintenance (state is kept from {first_kept}): "
                f"{ds} needs it and is too old to re-run (SLUICE_UPKEEP_STATE_RETENTION_DAYS sets how far back)"
            )
        if required:
            raise LakeError(
                f"{STATE.name} has no partition {key} but has earlier days: "
                f"run nightly_etl for {key} before {ds}"
            )
        return None

    previous = state_of(day - dt.timedelta(days=1), required=True)
    events = lake.read_partition(CURATED_EVENTS, ds, version=curated_version).to_pandas()
    state = F.advance_state(previous, F.daily_activity(events, uc), day, uc)
    # A window needs only the totals of its earlier day (a state is one row per entity ever seen).
    totals = [uc.key, *F.counter_columns(uc)]
    lagged = {w: state_of(day - dt.timedelta(days=w), required=True, columns=totals) for w in uc.windows}
    feats = F.features_as_of(state, lagged, day, uc)
    horizon = day + dt.timedelta(days=uc.horizon)
    if F.day_str(horizon) in state_days:
        # Re-running an old day: its label is already known, keep it filled.
        horizon_state = state_of(horizon, required=False)
        if horizon_state is not None:
            feats = F.label_snapshot(feats, horizon_state, day, uc)

    inputs = {CURATED_EVENTS.name: curated_version or 0}
    if state_version is not None:
        inputs[STATE.name] = state_version
    new_state_version = lake.write_partition(
        STATE, ds, _frame_to_table(STATE, state), ctx.lineage(ds, inputs, rows=len(state))
    )

    snapshot_day = day - dt.timedelta(days=uc.horizon)
    days, frames = [ds], [feats]
    labelled = 0
    if lake.has_partition(FEATURES, F.day_str(snapshot_day)):
        snapshot = lake.read_partition(FEATURES, F.day_str(snapshot_day)).to_pandas()
        snapshot = F.label_snapshot(snapshot, state, snapshot_day, uc)
        days.append(F.day_str(snapshot_day))
        frames.append(snapshot)
        labelled = len(snapshot)
    out = pd.concat(frames, ignore_index=True)
    features_version = lake.write_partitions(
        FEATURES,
        days,
        _frame_to_table(FEATURES, out),
        ctx.lineage(ds,
            inputs | {STATE.name: new_state_version},
            rows=len(feats),
            labelled_snapshot=F.day_str(snapshot_day) if labelled else None,
        ),
    )
    positive_rate = None
    if labelled:
        positive_rate = round(float(frames[1][uc.label].astype(float).mean()), 4)
    return {
        "ds": ds,
        "entities": len(feats),
        "features_version": features_version,
        "state_version": new_state_version,
        "labelled_snapshot": F.day_str(snapshot_day) if labelled else None,
        "labelled_rows": labelled,
        "snapshot_positive_rate": positive_rate,
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
    the longest window of history, models a label horizon more). Each day is idempotent like
    the tasks, so an interrupted load is resumed by running it again.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    ctx = ctx or RunContext("sluice-history", f"history__{start.isoformat()}__{end.isoformat()}")
    source = make_source(settings, usecase.of(settings))  # one source for all days (a simulator builds its population once)
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
