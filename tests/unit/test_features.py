"""Churn features: the incremental path equals the reference definition, sees no future, labels right."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core import features as F
from sluice.core.contracts import content_ids, parse_events, split_by_contract
from sluice.core.usecase import UseCase, load_use_case
from sluice.edges.lake import Lake, LakeError
from sluice.settings import Settings
from sluice.stages import etl as pipeline
from usecases.churn.simulator import SimulatorSource

DAY = dt.date(2026, 3, 1)
UC = load_use_case("churn")
CURATED_EVENTS, CUSTOMER_STATE, FEATURES_CUSTOMER_DAILY = UC.tables.curated, UC.tables.state, UC.tables.features
LABEL = UC.label  # label_churn_30d


def normalise(df: pd.DataFrame, label: bool = True, uc: UseCase = UC) -> pd.DataFrame:
    """Cast a features frame to the table's types (as the lake stores it), sorted by entity."""
    features = uc.tables.features
    table = pa.Table.from_pandas(df[features.columns], schema=features.schema, preserve_index=False)
    out = table.to_pandas().sort_values(uc.key, ignore_index=True)
    return out if label else out.drop(columns=uc.label)


def event(eid: str, cid: int, when: str, kind: str = "session", duration=None, amount=None, **attrs) -> dict:
    return {
        "event_id": eid,
        "customer_id": cid,
        "event_time": pd.Timestamp(when, tz="UTC"),
        "event_type": kind,
        "duration_s": duration if duration is not None else (600.0 if kind == "session" else np.nan),
        "amount": amount if amount is not None else (10.0 if kind == "order" else np.nan),
        "plan": attrs.get("plan", "basic"),
        "region": attrs.get("region", "eu"),
        "channel": attrs.get("channel", "organic"),
        "device": attrs.get("device", "ios"),
        "signup_date": attrs.get("signup_date", dt.date(2025, 12, 1)),
    }


def frame(*events: dict) -> pd.DataFrame:
    return pd.DataFrame(list(events))


# -- the building blocks on tiny frames ------------------------------------------------------------


def test_daily_activity_counts_and_latest_attributes():
    events = frame(
        event("a", 1, "2026-03-01T08:00", "session", duration=89.6),
        event("b", 1, "2026-03-01T09:00", "session", duration=30.4),
        event("c", 1, "2026-03-01T10:00", "order", amount=19.999),
        event("d", 1, "2026-03-01T11:00", "order", amount=0.015, device=None, plan="premium"),
        event("e", 2, "2026-03-01T07:00", "support_ticket", plan="standard"),
    )
    got = F.daily_activity(events.sample(frac=1, random_state=3), UC).set_index("customer_id")
    assert got.loc[1, ["sessions", "session_seconds", "orders", "spend_cents", "tickets"]].tolist() == [2, 120, 2, 2002, 0]
    assert got.loc[2, ["sessions", "orders", "tickets"]].tolist() == [0, 0, 1]
    # the latest event's own attributes, a null device included
    assert got.loc[1, "plan"] == "premium"
    assert got.loc[1, "device"] is None
    assert got.loc[2, "plan"] == "standard"


def test_advance_state_accumulates_and_keeps_absent_customers():
    d1, d2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    s1 = F.advance_state(None, F.daily_activity(frame(
        event("a", 1, "2026-03-01T08:00"), event("b", 2, "2026-03-01T08:00", "order", amount=5.0)), UC), d1, UC)
    s2 = F.advance_state(s1, F.daily_activity(frame(
        event("c", 1, "2026-03-02T08:00", plan="premium"), event("d", 3, "2026-03-02T09:00")), UC), d2, UC)
    s2 = s2.set_index("customer_id")
    assert list(s2.index) == [1, 2, 3]
    assert s2.loc[1, ["cum_sessions", "cum_session_seconds", "cum_active_days"]].tolist() == [2, 1200, 2]
    assert (s2.loc[1, "first_event_date"], s2.loc[1, "last_event_date"], s2.loc[1, "plan"]) == (d1, d2, "premium")
    # customer 2 was not seen on d2: carried over unchanged
    assert s2.loc[2, ["cum_orders", "cum_spend_cents", "cum_active_days"]].tolist() == [1, 500, 1]
    assert s2.loc[2, "last_event_date"] == d1
    assert (s2.loc[3, "first_event_date"], s2.loc[3, "cum_active_days"]) == (d2, 1)
    assert set(s2["ds"]) == {"2026-03-02"}


def test_features_as_of_takes_windows_as_state_differences():
    day = dt.date(2026, 3, 31)

    def state(sessions: int, spend: int, active: int, last: dt.date) -> pd.DataFrame:
        return pd.DataFrame([{
            "customer_id": 9, "first_event_date": dt.date(2026, 1, 1), "last_event_date": last,
            "cum_sessions": sessions, "cum_session_seconds": 60 * sessions, "cum_orders": spend // 1000,
            "cum_spend_cents": spend, "cum_tickets": 0, "cum_active_days": active,
            "plan": "basic", "region": "eu", "channel": "organic", "device": "web",
            "signup_date": dt.date(2025, 12, 31), "ds": "x",
        }])

    now = state(100, 9000, 50, day - dt.timedelta(days=2))
    lagged = {7: state(90, 8000, 46, day), 30: state(70, 5000, 30, day), 90: None}
    got = F.features_as_of(now, lagged, day, UC).iloc[0]
    assert (got["sessions_7d"], got["sessions_30d"], got["sessions_90d"]) == (10, 30, 100)
    assert (got["spend_7d"], got["spend_30d"], got["spend_90d"]) == (10.0, 40.0, 90.0)
    assert (got["active_days_7d"], got["active_days_30d"], got["active_days_90d"]) == (4, 20, 50)
    assert got["session_minutes_7d"] == 10.0
    assert got["days_since_last_event"] == 2
    assert got["tenure_days"] == 90
    assert got["sessions_trend_7_30"] == pytest.approx(10 / (30 * 7 / 30))
    assert got["spend_per_order_90d"] == pytest.approx(90.0 / 9)
    assert pd.isna(got[LABEL])


def test_features_as_of_keeps_only_customers_active_in_the_last_30_days():
    day = dt.date(2026, 3, 31)
    base = F.advance_state(None, F.daily_activity(frame(event("a", 1, "2026-03-01T08:00"),
                                                        event("b", 2, "2026-03-02T08:00")), UC), day, UC)
    base["last_event_date"] = [dt.date(2026, 3, 1), dt.date(2026, 3, 2)]  # 30 and 29 days before
    got = F.features_as_of(base, {7: None, 30: None, 90: None}, day, UC)
    assert got["customer_id"].tolist() == [2]


@pytest.mark.parametrize(
    ("last_event", "label"),
    [
        (dt.date(2026, 2, 20), 1),  # gone before the snapshot
        (DAY, 1),  # last seen on the snapshot day itself
        (DAY + dt.timedelta(days=1), 0),
        (DAY + dt.timedelta(days=30), 0),  # the last day of the horizon counts
    ],
)
def test_label_snapshot_is_one_exactly_without_an_event_in_the_horizon(last_event, label):
    snapshot = pd.DataFrame({"customer_id": [5, 6], "x": [1.0, 2.0]})
    horizon = pd.DataFrame({"customer_id": [6, 5], "last_event_date": [DAY + dt.timedelta(days=3), last_event]})
    got = F.label_snapshot(snapshot, horizon, DAY, UC)
    assert got[LABEL].tolist() == [label, 0]
    assert str(got[LABEL].dtype) == "Int8"
    assert got["x"].tolist() == [1.0, 2.0]


# -- equivalence with the reference definition (in memory, 100 days) ------------------------------


@pytest.fixture(scope="module")
def sim_events() -> dict[dt.date, pd.DataFrame]:
    sim = SimulatorSource(n_customers=800, seed=5)
    start = dt.date(2026, 1, 1)
    return {start + dt.timedelta(days=i): sim.events_for_day(start + dt.timedelta(days=i)) for i in range(100)}


def incremental_features(events_by_day: dict[dt.date, pd.DataFrame], uc: UseCase = UC) -> dict[dt.date, pd.DataFrame]:
    """The fast path of build_features_day, in memory."""
    states: dict[dt.date, pd.DataFrame] = {}
    out = {}
    for day in sorted(events_by_day):
        prev = states.get(day - dt.timedelta(days=1))
        states[day] = F.advance_state(prev, F.daily_activity(events_by_day[day], uc), day, uc)
        lagged = {w: states.get(day - dt.timedelta(days=w)) for w in uc.windows}
        out[day] = F.features_as_of(states[day], lagged, day, uc)
    return out


def test_incremental_features_equal_the_reference_over_100_days(sim_events):
    fast = incremental_features(sim_events)
    history = pd.concat(sim_events.values(), ignore_index=True)
    days = sorted(sim_events)
    for day in (days[0], days[7], days[30], days[90], days[-1]):
        reference = F.features_from_history(history, day, UC)
        assert len(reference) > 50
        pd.testing.assert_frame_equal(normalise(fast[day]), normalise(reference), check_exact=True, obj=str(day))


# -- the same equivalence for a use case of another shape: purchases -------------------------------
# > 180 days: the 30, 90 and 180-day windows read a lagged state (the 365-day one the zero state
# before the lake began, the same code path as a lagged state of zeros).
PURCHASE_DAYS = 200


def curated_purchases(raw: pd.DataFrame, uc: UseCase) -> pd.DataFrame:
    """What the contract makes of a clean day of purchases, without pandera's per-call cost
    (checked against split_by_contract on some of the days below)."""
    typed, failures = parse_events(raw, uc)
    assert failures.empty
    ids = content_ids(raw, list(raw.columns))
    return typed.assign(event_id=ids).sort_values("event_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def purchases() -> tuple[UseCase, dict[dt.date, pd.DataFrame]]:
    """Curated purchases (string keys, content ids, one kind) of PURCHASE_DAYS days from the use case's generator."""
    uc = load_use_case("purchases")
    assert uc.spec.simulator is not None
    source = uc.resolve(uc.spec.simulator.factory)(uc, Settings(sim_customers=250, sim_seed=5, use_case="purchases"))
    start = dt.date(2026, 1, 1)
    curated = {}
    for i in range(PURCHASE_DAYS):
        day = start + dt.timedelta(days=i)
        raw = source.raw_day(day).to_pandas()
        curated[day] = curated_purchases(raw, uc)
        if i % 25 == 0:
            result = split_by_contract(raw, day, uc)
            assert result.failures == {} and result.duplicates == 0, day
            pd.testing.assert_frame_equal(curated[day], result.valid, obj=str(day))
    return uc, curated


def test_incremental_purchase_features_equal_the_reference(purchases):
    """Another shape: string entity key, no event id, no kind field, sums over every event (with
    and without decimals), tenure since the first event, a population of 365 days."""
    uc, by_day = purchases
    assert uc.spec.entity.type == "string" and uc.spec.events.id is None and uc.spec.events.kind is None
    fast = incremental_features(by_day, uc)
    history = pd.concat(by_day.values(), ignore_index=True)
    days = sorted(by_day)
    for day in (days[0], days[29], days[30], days[89], days[90], days[179], days[180], days[-1]):
        reference = F.features_from_history(history, day, uc)
        assert len(reference) > (0 if day == days[0] else 60), (day, len(reference))
        pd.testing.assert_frame_equal(
            normalise(fast[day], uc=uc), normalise(reference, uc=uc), check_exact=True, obj=str(day)
        )
    # The comparison is not between empty or constant columns.
    last = normalise(fast[days[-1]], uc=uc)
    for col in ("purchases_90d", "purchases_180d", "spend_90d", "units_365d", "active_days_90d", "recency",
                "tenure_days", "avg_order_value_365d"):
        assert last[col].nunique() > 3, col
    assert last["last_category"].nunique() > 1


# -- leakage: nothing after D changes the features of D --------------------------------------------


def test_events_after_the_day_do_not_change_its_features(sim_events):
    days = sorted(sim_events)
    day = days[60]
    history = pd.concat(sim_events.values(), ignore_index=True)
    before = F.features_from_history(history, day, UC)

    later = history[history["event_time"] >= pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")]
    assert len(later) > 1000
    changed = history.copy()
    is_later = changed.index.isin(later.index)
    changed.loc[is_later, "amount"] = changed.loc[is_later, "amount"] * 10
    changed.loc[is_later, "plan"] = "premium"
    # ... and more events of D+1..D+5, for known and new customers
    extra = history[history["event_time"].dt.date == day].copy()
    extra_days = []
    for k in range(1, 6):
        e = extra.assign(event_id=extra["event_id"] + f"-x{k}", event_time=extra["event_time"] + pd.Timedelta(days=k))
        e.loc[e.index[:20], "customer_id"] += 10_000_000
        extra_days.append(e)
    changed = pd.concat([changed, *extra_days], ignore_index=True)

    after = F.features_from_history(changed, day, UC)
    pd.testing.assert_frame_equal(normalise(after), normalise(before), check_exact=True)
    # The incremental path, fed the changed future too, gives the same features of D.
    changed_by_day = {d: g for d, g in changed.groupby(changed["event_time"].dt.date)}
    fast = incremental_features({d: changed_by_day[d] for d in days[: 60 + 6]})
    pd.testing.assert_frame_equal(normalise(fast[day]), normalise(before), check_exact=True)


def test_an_event_on_the_day_itself_does_change_its_features(sim_events):
    """The leakage test above could not pass by accident: the features do react to day D."""
    days = sorted(sim_events)
    day = days[60]
    history = pd.concat(sim_events.values(), ignore_index=True)
    before = F.features_from_history(history, day, UC)
    one = history[history["event_time"].dt.date == day].iloc[[0]]
    added = one.assign(event_id="late-arrival", event_type="order", amount=123.0, duration_s=np.nan)
    after = F.features_from_history(pd.concat([history, added], ignore_index=True), day, UC)
    cid = one["customer_id"].iloc[0]
    b, a = before.set_index("customer_id").loc[cid], after.set_index("customer_id").loc[cid]
    assert a["spend_7d"] == pytest.approx(b["spend_7d"] + 123.0)
    assert a["orders_30d"] == b["orders_30d"] + 1


# -- the same through the pipeline and the lake ----------------------------------------------------


@pytest.mark.parametrize("index", [0, 7, 20, 39])
def test_pipeline_features_equal_the_reference(history_lake, index):
    lake = history_lake.lake
    day = history_lake.days[index]
    curated = lake.read_table(CURATED_EVENTS).to_pandas()
    reference = F.features_from_history(curated, day, UC)
    stored = lake.read_partition(FEATURES_CUSTOMER_DAILY, F.day_str(day)).to_pandas()
    assert len(stored) > 40
    labelled = stored[LABEL].notna().any()
    # The label of D is only known (and compared separately) once D + 30 was built.
    assert labelled == (index + UC.horizon <= len(history_lake.days) - 1)
    pd.testing.assert_frame_equal(
        normalise(stored, label=False), normalise(reference, label=False), check_exact=True
    )
    assert list(stored.columns) == FEATURES_CUSTOMER_DAILY.columns


def test_pipeline_labels_one_exactly_for_customers_without_an_event_in_the_horizon(history_lake):
    lake = history_lake.lake
    days = history_lake.days
    curated = lake.read_table(CURATED_EVENTS, columns=["customer_id", "ds"]).to_pandas()
    churners = 0
    for snap in days[: len(days) - UC.horizon]:
        horizon = {F.day_str(snap + dt.timedelta(days=k)) for k in range(1, UC.horizon + 1)}
        seen = set(curated.loc[curated["ds"].isin(horizon), "customer_id"])
        stored = lake.read_partition(FEATURES_CUSTOMER_DAILY, F.day_str(snap)).to_pandas()
        assert stored[LABEL].notna().all(), snap
        expected = (~stored["customer_id"].isin(seen)).astype(int)
        assert stored[LABEL].astype(int).tolist() == expected.tolist(), snap
        churners += int(expected.sum())
    assert churners > 0  # the comparison above is not all zeros


def test_pipeline_labels_agree_with_the_simulators_truth(history_lake):
    lake = history_lake.lake
    snap = history_lake.days[5]
    stored = lake.read_partition(FEATURES_CUSTOMER_DAILY, F.day_str(snap)).to_pandas().set_index("customer_id")
    truth = SimulatorSource.from_settings(history_lake.settings).churn_truth(snap)
    gone = truth[truth].index.intersection(stored.index)
    assert (stored.loc[gone, LABEL] == 1).all()


def test_pipeline_fills_the_label_of_s_when_s_plus_30_is_built(history_lake):
    lake = history_lake.lake
    days = history_lake.days
    version_of_day = {
        entry["sluice.ds"]: int(entry["version"])
        for entry in lake.history(FEATURES_CUSTOMER_DAILY)
        if "sluice.ds" in entry
    }
    for snap in (days[0], days[len(days) - UC.horizon - 1]):
        ds = F.day_str(snap)
        labeller = version_of_day[F.day_str(snap + dt.timedelta(days=UC.horizon))]
        before = lake.read_partition(FEATURES_CUSTOMER_DAILY, ds, version=labeller - 1).to_pandas()
        after = lake.read_partition(FEATURES_CUSTOMER_DAILY, ds, version=labeller).to_pandas()
        assert len(before) == len(after) > 0
        assert before[LABEL].isna().all()
        assert after[LABEL].notna().all()
        # Only the label changed.
        pd.testing.assert_frame_equal(
            before.drop(columns=LABEL).sort_values("customer_id", ignore_index=True),
            after.drop(columns=LABEL).sort_values("customer_id", ignore_index=True),
        )
    # Snapshots whose horizon has not closed yet stay unlabelled.
    for snap in days[len(days) - UC.horizon:]:
        stored = lake.read_partition(FEATURES_CUSTOMER_DAILY, F.day_str(snap), columns=[LABEL])
        assert stored.column(LABEL).null_count == stored.num_rows > 0


def test_pipeline_reports_the_labelled_snapshot(history_lake):
    days = history_lake.days
    lake = history_lake.lake
    for i, result in enumerate(history_lake.results):
        build = result["build"]
        if i < UC.horizon:
            assert (build["labelled_snapshot"], build["labelled_rows"], build["snapshot_positive_rate"]) == (None, 0, None)
            continue
        snap = F.day_str(days[i - UC.horizon])
        assert build["labelled_snapshot"] == snap
        labels = lake.read_partition(FEATURES_CUSTOMER_DAILY, snap, columns=[LABEL]).to_pandas()
        assert build["labelled_rows"] == len(labels)
        assert build["snapshot_positive_rate"] == round(float(labels[LABEL].astype(float).mean()), 4)


def test_pipeline_leakage_later_days_do_not_change_the_features_of_d(history_copy, ctx, helpers):
    settings, days = history_copy.settings, history_copy.days
    lake = Lake(settings)
    d = days[29]
    ds = F.day_str(d)
    features_before = helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, ds)
    state_before = helpers.frame_of(lake, CUSTOMER_STATE, ds)
    next_before = helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, F.day_str(days[30]))

    # Other events for D+1..D+5: another simulated population.
    other = SimulatorSource(n_customers=450, seed=999)
    helpers.run_days(settings, days[30:35], ctx, source=other)
    assert not helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, F.day_str(days[30])).equals(next_before)
    pd.testing.assert_frame_equal(helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, ds), features_before)

    # Rebuilding D itself while the changed later days exist gives the same features and state.
    pipeline.build_features_day(settings, d, ctx)
    pd.testing.assert_frame_equal(helpers.frame_of(lake, FEATURES_CUSTOMER_DAILY, ds), features_before)
    pd.testing.assert_frame_equal(helpers.frame_of(lake, CUSTOMER_STATE, ds), state_before)


def test_build_refuses_a_day_whose_previous_state_is_missing(settings, ctx, helpers):
    days = helpers.day_range(dt.date(2026, 1, 1), 4)
    helpers.run_days(settings, days[:2], ctx)
    pipeline.ingest_day(settings, days[3], ctx)
    pipeline.curate_day(settings, days[3], ctx)
    lake = Lake(settings)
    versions = (lake.version(CUSTOMER_STATE), lake.version(FEATURES_CUSTOMER_DAILY))

    with pytest.raises(
        LakeError,
        match=r"state/customer_cumulative has no partition 2026-01-03 but has earlier days: "
        r"run nightly_etl for 2026-01-03 before 2026-01-04",
    ):
        pipeline.build_features_day(settings, days[3], ctx)

    assert (lake.version(CUSTOMER_STATE), lake.version(FEATURES_CUSTOMER_DAILY)) == versions
    assert lake.partitions(CUSTOMER_STATE) == ["2026-01-01", "2026-01-02"]
    # Once the gap is filled, the day builds.
    pipeline.ingest_day(settings, days[2], ctx)
    pipeline.curate_day(settings, days[2], ctx)
    pipeline.build_features_day(settings, days[2], ctx)
    assert pipeline.build_features_day(settings, days[3], ctx)["ds"] == "2026-01-04"


def test_build_refuses_a_day_without_curated_events(settings, ctx):
    with pytest.raises(LakeError, match=r"curated/events has no partition 2026-01-01: curate_events for 2026-01-01 has not run yet"):
        pipeline.build_features_day(settings, dt.date(2026, 1, 1), ctx)
