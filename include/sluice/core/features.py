"""The feature engine: one definition of a use case's features, used by training and scoring alike.

Point in time: features as of day D use events up to and including D, never later.

Windows are computed from running totals: the state of D holds, per entity, the
use case's counters since the start of the lake, so a window of w days is
``state(D) - state(D - w)``. A day costs the same however long the history is: it
reads the state of one earlier day per window and the curated events of D alone.
:func:`features_from_history` is the plain definition (windows recomputed from all
events), kept as the reference the fast path is tested against.

The label of an entity on snapshot day S looks at (S, S + horizon]; it is known
once the state of S + horizon exists.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from sluice.core.usecase import ACTIVE_DAYS, Feature, UseCase
from sluice.tables import PARTITION_COLUMN

_LABEL_EVENTS = "_label_events"  # today's events of the label's kinds (when the label names kinds)


def day_str(day: dt.date) -> str:
    return day.isoformat()


def event_kinds(events: pd.DataFrame, uc: UseCase) -> pd.Series:
    """The kind of every event: its kind field, or the one kind of a use case without one."""
    kind = uc.spec.events.kind
    if kind is None:
        return pd.Series(uc.spec.events.kinds[0], index=events.index, dtype=object)
    return events[kind]


def counter_columns(uc: UseCase) -> list[str]:
    return [f"cum_{n}" for n in uc.counters] + [f"cum_{ACTIVE_DAYS}"]


def _by_entity_and_time(events: pd.DataFrame, uc: UseCase) -> pd.DataFrame:
    """``events`` in a stable sort by (key, event time, event id): the last row of a key is its latest event.

    Curated events are stored sorted by event id; then a stable sort on integer keys and
    times alone gives the very same order, without comparing the id strings again (the
    largest cost of a day's activity).
    """
    key, time, event_id = events[uc.key], events[uc.event_time], events[uc.event_id]
    integral = pd.api.types.is_integer_dtype(key.dtype) and not key.isna().any()
    timed = pd.api.types.is_datetime64_any_dtype(time.dtype) and not time.isna().any()
    if integral and timed and event_id.is_monotonic_increasing:
        order = np.lexsort((pd.DatetimeIndex(time).asi8, key.to_numpy(np.int64)))
        return events.take(order)
    return events.sort_values([uc.key, uc.event_time, uc.event_id], kind="stable")


def daily_activity(events: pd.DataFrame, uc: UseCase) -> pd.DataFrame:
    """One row per entity active in ``events`` (one day): today's counts and latest attributes."""
    key = uc.key
    e = _by_entity_and_time(events, uc)
    kind = event_kinds(e, uc)
    cols: dict[str, np.ndarray] = {key: e[key].to_numpy()}
    for name, counter in uc.counters.items():
        if counter.count is not None:
            cols[name] = kind.isin(counter.count).to_numpy(np.int64)
            continue
        assert counter.sum is not None
        mask = kind.isin(counter.kinds).to_numpy() if counter.kinds is not None else np.ones(len(e), dtype=bool)
        scale = 10**counter.decimals
        value = e[counter.sum].astype("float64").fillna(0)
        # Integer units (cents for decimals: 2): running totals stay exact however long they run.
        cols[name] = np.where(mask, (value * scale if scale != 1 else value).round(), 0).astype(np.int64)
    if uc.label_kinds_column:
        cols[_LABEL_EVENTS] = kind.isin(uc.spec.label.kinds or ()).to_numpy(np.int64)
    totals = pd.DataFrame(cols).groupby(key, sort=True).sum()
    # The latest event's own values, a null included (groupby.last() would skip nulls).
    latest = e.drop_duplicates(key, keep="last").set_index(key)[list(uc.attributes)]
    return totals.join(latest).reset_index()


def advance_state(previous: pd.DataFrame | None, activity: pd.DataFrame, day: dt.date, uc: UseCase) -> pd.DataFrame:
    """State of ``day`` from the state of the day before and the day's activity."""
    key = uc.key
    counters = counter_columns(uc)
    today = activity.rename(columns={n: f"cum_{n}" for n in uc.counters}).assign(
        **{f"cum_{ACTIVE_DAYS}": 1, "first_event_date": day, "last_event_date": day}
    )
    label_col = uc.label_kinds_column
    if label_col:
        hit = today.pop(_LABEL_EVENTS).to_numpy() > 0
        today[label_col] = pd.Series([day if h else None for h in hit], index=today.index, dtype=object)
    if previous is None or previous.empty:
        state = today
    else:
        prev = previous.set_index(key)
        cur = today.set_index(key)
        state = prev.reindex(prev.index.union(cur.index))
        seen_today = state.index.isin(cur.index)
        added = cur[counters].reindex(state.index, fill_value=0)
        state[counters] = state[counters].fillna(0).astype(np.int64) + added
        state.loc[seen_today, "last_event_date"] = day
        new = state["first_event_date"].isna()
        state.loc[new, "first_event_date"] = day
        if label_col:
            hit = cur[label_col].reindex(state.index)
            state[label_col] = state[label_col].where(hit.isna(), hit)
        for col in uc.attributes:
            state.loc[seen_today, col] = cur.loc[state.index[seen_today], col].to_numpy()
        state = state.reset_index()
    state = state.assign(**{PARTITION_COLUMN: day_str(day)})
    return state[uc.tables.state.columns].sort_values(key, ignore_index=True)


def _compute(out: pd.DataFrame, feature: Feature, cur: pd.DataFrame, windows: dict[int, pd.DataFrame],
             ts: pd.Timestamp, uc: UseCase) -> None:
    spec = feature.spec
    if spec.tenure is not None:
        since = cur["first_event_date"] if spec.tenure == "first_event" else cur[spec.tenure]
        out[feature.name] = (ts - pd.to_datetime(since)).dt.days
    elif spec.recency:
        out[feature.name] = (ts - pd.to_datetime(cur["last_event_date"])).dt.days
    elif spec.window is not None:
        assert feature.window is not None
        diff = windows[feature.window][f"cum_{spec.window}"]
        counter = uc.counters.get(spec.window)
        value: pd.Series = diff
        if counter is not None and counter.decimals:
            value = value / float(10**counter.decimals)
        if spec.divide != 1:
            value = value / spec.divide
        out[feature.name] = value
    elif spec.ratio is not None:
        a, b = out[spec.ratio[0]], out[spec.ratio[1]]
        denominator = b * spec.scale if spec.scale != 1 else b
        out[feature.name] = np.where(denominator > 0, a / denominator.where(denominator > 0, 1), 0.0)
    elif spec.latest is not None:
        out[feature.name] = cur[spec.latest]


def population(state: pd.DataFrame, day: dt.date, uc: UseCase) -> pd.DataFrame:
    """The rows of the state scored on ``day``: an event within the population's window."""
    since = pd.Timestamp(day - dt.timedelta(days=uc.spec.population.active_within_days))
    return state[pd.to_datetime(state["last_event_date"]) > since]


def _empty_label(n: int) -> pd.arrays.IntegerArray:
    return pd.array([pd.NA] * n, dtype="Int8")


def features_as_of(
    state: pd.DataFrame, lagged: dict[int, pd.DataFrame | None], day: dt.date, uc: UseCase
) -> pd.DataFrame:
    """Features of every entity in the population of ``day``.

    ``lagged[w]`` is the state of ``day - w`` (None when that day is before the
    start of the lake, i.e. all totals were zero).
    """
    key = uc.key
    counters = counter_columns(uc)
    cur = population(state, day, uc).set_index(key)
    windows: dict[int, pd.DataFrame] = {}
    for w in uc.windows:
        before = lagged.get(w)
        base = (
            before.set_index(key)[counters].reindex(cur.index).fillna(0).astype(np.int64)
            if before is not None
            else pd.DataFrame(0, index=cur.index, columns=counters)
        )
        windows[w] = cur[counters].astype(np.int64) - base
    ts = pd.Timestamp(day)
    out = pd.DataFrame(index=cur.index)
    for feature in uc.features:
        if not feature.from_hook:
            _compute(out, feature, cur, windows, ts, uc)
    return _finish(out, cur, day, uc)


def _finish(out: pd.DataFrame, cur: pd.DataFrame, day: dt.date, uc: UseCase) -> pd.DataFrame:
    hook = uc.spec.feature_hook
    if hook is not None:
        out = uc.resolve(hook.function)(out, cur, day)
        missing = [c for c in hook.columns if c not in out.columns]
        if missing:
            raise ValueError(f"{uc.name}: feature_hook {hook.function} did not add {missing}")
    out[uc.label] = _empty_label(len(out))
    out[PARTITION_COLUMN] = day_str(day)
    return out.reset_index()[uc.tables.features.columns].sort_values(uc.key, ignore_index=True)


def label_snapshot(snapshot: pd.DataFrame, state_at_horizon: pd.DataFrame, snapshot_day: dt.date,
                   uc: UseCase) -> pd.DataFrame:
    """``snapshot`` (features of day S) with its label filled from the state of S + horizon."""
    column = uc.label_kinds_column or "last_event_date"
    last = state_at_horizon.set_index(uc.key)[column].reindex(snapshot[uc.key])
    event_after = (pd.to_datetime(last.to_numpy()) > pd.Timestamp(snapshot_day))
    positive = ~event_after if uc.spec.label.when == "no_event" else event_after
    return snapshot.assign(**{uc.label: pd.array(np.asarray(positive).astype(np.int8), dtype="Int8")})


def features_from_history(events: pd.DataFrame, day: dt.date, uc: UseCase) -> pd.DataFrame:
    """Reference definition: the features of ``day`` recomputed from all events up to it.

    This is how a notebook would do it (and the baseline of ``benchmarks/etl.py``):
    correct and simple, but its cost grows with the length of the history.
    """
    key, time = uc.key, uc.event_time
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    e = events[events[time] < end]
    e = e.assign(_date=e[time].dt.tz_localize(None).dt.normalize(), _kind=event_kinds(e, uc))
    first = e.groupby(key)["_date"].min()
    activity = e.groupby(key)["_date"].max()
    since = pd.Timestamp(day) - pd.Timedelta(days=uc.spec.population.active_within_days)
    active_ids = activity[activity > since].index
    e = e[e[key].isin(active_ids)]
    ts = pd.Timestamp(day)
    latest = e.sort_values([key, time, uc.event_id]).drop_duplicates(key, keep="last").set_index(key)
    cur = latest[list(uc.attributes)].copy()
    cur["first_event_date"] = first.reindex(cur.index)
    cur["last_event_date"] = activity.reindex(cur.index)
    windows: dict[int, pd.DataFrame] = {}
    for w in uc.windows:
        win = e[e["_date"] > ts - pd.Timedelta(days=w)]
        frame = pd.DataFrame(index=cur.index)
        for name, counter in uc.counters.items():
            if counter.count is not None:
                values = win["_kind"].isin(counter.count).astype(np.int64)
            else:
                assert counter.sum is not None
                mask = win["_kind"].isin(counter.kinds) if counter.kinds is not None else pd.Series(True, win.index)
                scale = 10**counter.decimals
                raw = win[counter.sum].astype("float64").fillna(0)
                values = (raw * scale if scale != 1 else raw).round().where(mask, 0).astype(np.int64)
            frame[f"cum_{name}"] = values.groupby(win[key]).sum().reindex(cur.index).fillna(0).astype(np.int64)
        frame[f"cum_{ACTIVE_DAYS}"] = win.groupby(key)["_date"].nunique().reindex(cur.index).fillna(0).astype(np.int64)
        windows[w] = frame
    out = pd.DataFrame(index=cur.index)
    for feature in uc.features:
        if not feature.from_hook:
            _compute(out, feature, cur, windows, ts, uc)
    return _finish(out, cur, day, uc)
