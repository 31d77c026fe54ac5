"""The single definition of the churn features, used by training and scoring alike.

Point in time: features as of day D use events up to and including D, never later.

Windows are computed from running totals: the state of D holds, per customer,
cumulative counts since the start of the lake, so a window of w days is
``state(D) - state(D - w)``. A day costs the same however long the history is: it
reads the state of four earlier days and the curated events of D alone.
:func:`features_from_history` is the plain definition (windows recomputed from all
events), kept as the reference the fast path is tested against.

The label of a customer on snapshot day S is 1 when it has no event in (S, S+30];
it is known once the state of S+30 exists.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from sluice.tables import CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY, PARTITION_COLUMN

WINDOWS = (7, 30, 90)
ACTIVE_DAYS = 30  # a customer is in the snapshot of D if it had an event in the 30 days up to D
LABEL_HORIZON_DAYS = 30
CATEGORICAL = ("plan", "region", "channel", "device")
ATTRIBUTES = ("plan", "region", "channel", "device", "signup_date")
COUNTERS = ("cum_sessions", "cum_session_seconds", "cum_orders", "cum_spend_cents", "cum_tickets", "cum_active_days")
FEATURE_COLUMNS = [
    c for c in FEATURES_CUSTOMER_DAILY.columns if c not in ("customer_id", "label_churn_30d", PARTITION_COLUMN)
]
NUMERIC_FEATURES = [c for c in FEATURE_COLUMNS if c not in CATEGORICAL]


def day_str(day: dt.date) -> str:
    return day.isoformat()


def daily_activity(events: pd.DataFrame) -> pd.DataFrame:
    """One row per customer active in ``events`` (one day): today's counts and latest attributes."""
    e = events.sort_values(["customer_id", "event_time", "event_id"], kind="stable")
    kind = e["event_type"]
    counts = pd.DataFrame(
        {
            "customer_id": e["customer_id"].to_numpy(),
            "sessions": (kind == "session").to_numpy(np.int64),
            "session_seconds": np.where(kind == "session", e["duration_s"].fillna(0).round(), 0).astype(np.int64),
            "orders": (kind == "order").to_numpy(np.int64),
            # Money in integer cents: running totals stay exact however long they run.
            "spend_cents": np.where(kind == "order", (e["amount"].fillna(0) * 100).round(), 0).astype(np.int64),
            "tickets": (kind == "support_ticket").to_numpy(np.int64),
        }
    )
    totals = counts.groupby("customer_id", sort=True).sum()
    # The latest event's own values, a null included (groupby.last() would skip nulls).
    latest = e.drop_duplicates("customer_id", keep="last").set_index("customer_id")[list(ATTRIBUTES)]
    return totals.join(latest).reset_index()


def advance_state(previous: pd.DataFrame | None, activity: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """State of ``day`` from the state of the day before and the day's activity."""
    today = activity.rename(
        columns={
            "sessions": "cum_sessions",
            "session_seconds": "cum_session_seconds",
            "orders": "cum_orders",
            "spend_cents": "cum_spend_cents",
            "tickets": "cum_tickets",
        }
    ).assign(cum_active_days=1, first_event_date=day, last_event_date=day)
    if previous is None or previous.empty:
        state = today
    else:
        prev = previous.set_index("customer_id")
        cur = today.set_index("customer_id")
        state = prev.reindex(prev.index.union(cur.index))
        seen_today = state.index.isin(cur.index)
        added = cur[list(COUNTERS)].reindex(state.index, fill_value=0)
        state[list(COUNTERS)] = state[list(COUNTERS)].fillna(0).astype(np.int64) + added
        state.loc[seen_today, "last_event_date"] = day
        new = state["first_event_date"].isna()
        state.loc[new, "first_event_date"] = day
        for col in ATTRIBUTES:
            state.loc[seen_today, col] = cur.loc[state.index[seen_today], col].to_numpy()
        state = state.reset_index()
    state = state.assign(**{PARTITION_COLUMN: day_str(day)})
    return state[CUSTOMER_STATE.columns].sort_values("customer_id", ignore_index=True)


def features_as_of(state: pd.DataFrame, lagged: dict[int, pd.DataFrame | None], day: dt.date) -> pd.DataFrame:
    """Features of every customer active as of ``day``.

    ``lagged[w]`` is the state of ``day - w`` (None when that day is before the
    start of the lake, i.e. all totals were zero).
    """
    active = state[pd.to_datetime(state["last_event_date"]) > pd.Timestamp(day - dt.timedelta(days=ACTIVE_DAYS))]
    cur = active.set_index("customer_id")
    windows: dict[int, pd.DataFrame] = {}
    for w in WINDOWS:
        before = lagged.get(w)
        base = (
            before.set_index("customer_id")[list(COUNTERS)].reindex(cur.index).fillna(0).astype(np.int64)
            if before is not None
            else pd.DataFrame(0, index=cur.index, columns=list(COUNTERS))
        )
        windows[w] = cur[list(COUNTERS)].astype(np.int64) - base

    ts = pd.Timestamp(day)
    out = pd.DataFrame(index=cur.index)
    out["tenure_days"] = (ts - pd.to_datetime(cur["signup_date"])).dt.days
    out["days_since_last_event"] = (ts - pd.to_datetime(cur["last_event_date"])).dt.days
    for w in WINDOWS:
        out[f"sessions_{w}d"] = windows[w]["cum_sessions"]
    for w in (7, 30):
        out[f"session_minutes_{w}d"] = windows[w]["cum_session_seconds"] / 60.0
    for w in (30, 90):
        out[f"orders_{w}d"] = windows[w]["cum_orders"]
    for w in WINDOWS:
        out[f"spend_{w}d"] = windows[w]["cum_spend_cents"] / 100.0
    for w in (30, 90):
        out[f"tickets_{w}d"] = windows[w]["cum_tickets"]
    for w in WINDOWS:
        out[f"active_days_{w}d"] = windows[w]["cum_active_days"]
    expected_7 = out["sessions_30d"] * (7 / 30)
    out["sessions_trend_7_30"] = np.where(expected_7 > 0, out["sessions_7d"] / expected_7.where(expected_7 > 0, 1), 0.0)
    out["spend_per_order_90d"] = np.where(
        out["orders_90d"] > 0, out["spend_90d"] / out["orders_90d"].where(out["orders_90d"] > 0, 1), 0.0
    )
    for col in CATEGORICAL:
        out[col] = cur[col]
    out["label_churn_30d"] = pd.array([pd.NA] * len(out), dtype="Int8")
    out[PARTITION_COLUMN] = day_str(day)
    return out.reset_index()[FEATURES_CUSTOMER_DAILY.columns].sort_values("customer_id", ignore_index=True)


def churn_labels(snapshot: pd.DataFrame, state_at_horizon: pd.DataFrame, snapshot_day: dt.date) -> pd.DataFrame:
    """``snapshot`` (features of day S) with its label filled from the state of S + 30."""
    last = state_at_horizon.set_index("customer_id")["last_event_date"].reindex(snapshot["customer_id"])
    churned = pd.to_datetime(last.to_numpy()) <= pd.Timestamp(snapshot_day)
    return snapshot.assign(label_churn_30d=pd.array(churned.astype(np.int8), dtype="Int8"))


def features_from_history(events: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Reference definition: the features of ``day`` recomputed from all events up to it.

    This is how a notebook would do it (and the baseline of ``benchmarks/etl.py``):
    correct and simple, but its cost grows with the length of the history.
    """
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    e = events[events["event_time"] < end]
    e = e.assign(date=e["event_time"].dt.tz_localize(None).dt.normalize())
    activity = e.groupby("customer_id")["date"].max()
    active_ids = activity[activity > pd.Timestamp(day) - pd.Timedelta(days=ACTIVE_DAYS)].index
    e = e[e["customer_id"].isin(active_ids)]
    ts = pd.Timestamp(day)
    latest = e.sort_values(["customer_id", "event_time", "event_id"]).drop_duplicates("customer_id", keep="last")
    out = latest.set_index("customer_id")[list(ATTRIBUTES)].copy()
    out["tenure_days"] = (ts - pd.to_datetime(out["signup_date"])).dt.days
    out["days_since_last_event"] = (ts - activity.reindex(out.index)).dt.days
    for w in WINDOWS:
        win = e[e["date"] > ts - pd.Timedelta(days=w)]
        g = win.groupby("customer_id")
        kind = win["event_type"]
        out[f"sessions_{w}d"] = (kind == "session").groupby(win["customer_id"]).sum()
        out[f"session_minutes_{w}d"] = (
            win["duration_s"].where(kind == "session", 0).fillna(0).round().groupby(win["customer_id"]).sum() / 60.0
        )
        out[f"orders_{w}d"] = (kind == "order").groupby(win["customer_id"]).sum()
        out[f"spend_{w}d"] = (win["amount"].where(kind == "order", 0).fillna(0) * 100).round().groupby(
            win["customer_id"]
        ).sum() / 100.0
        out[f"tickets_{w}d"] = (kind == "support_ticket").groupby(win["customer_id"]).sum()
        out[f"active_days_{w}d"] = g["date"].nunique()
    out = out.fillna({c: 0 for c in out.columns if c not in ATTRIBUTES})
    expected_7 = out["sessions_30d"] * (7 / 30)
    out["sessions_trend_7_30"] = np.where(expected_7 > 0, out["sessions_7d"] / expected_7.where(expected_7 > 0, 1), 0.0)
    out["spend_per_order_90d"] = np.where(
        out["orders_90d"] > 0, out["spend_90d"] / out["orders_90d"].where(out["orders_90d"] > 0, 1), 0.0
    )
    out["label_churn_30d"] = pd.array([pd.NA] * len(out), dtype="Int8")
    out[PARTITION_COLUMN] = day_str(day)
    return out.reset_index()[FEATURES_CUSTOMER_DAILY.columns].sort_values("customer_id", ignore_index=True)
