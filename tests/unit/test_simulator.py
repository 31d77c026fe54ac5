"""The simulated source: deterministic per (seed, day), realistic churn, drift and defects on demand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.contracts import split_by_contract
from sluice.core.usecase import load_use_case
from sluice.edges.sources import raw_schema
from sluice.settings import load_settings
from usecases.churn.simulator import (
    CANCEL_IN_APP_FROM,
    CHANNELS,
    DEVICES,
    EVENT_TYPES,
    NEW_CHANNEL,
    PLANS,
    REGIONS,
    SimulatorSource,
    _rng,
    inject_defects,
    parse_drift,
)

DAY = dt.date(2026, 3, 1)
UC = load_use_case("churn")
RAW_SCHEMA = raw_schema(UC)
SWITCH = dt.date(2026, 2, 1)


def utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sim() -> SimulatorSource:
    return SimulatorSource(n_customers=1500, seed=7)


# -- determinism -----------------------------------------------------------------------------------


def test_same_seed_and_day_give_an_identical_raw_table():
    a = SimulatorSource(n_customers=800, seed=3).raw_day(DAY)
    b = SimulatorSource(n_customers=800, seed=3).raw_day(DAY)
    assert a.num_rows > 100
    assert a.schema == RAW_SCHEMA
    assert a.equals(b)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: SimulatorSource(n_customers=800, seed=3).raw_day(DAY + dt.timedelta(days=1)), id="next-day"),
        pytest.param(lambda: SimulatorSource(n_customers=800, seed=4).raw_day(DAY), id="other-seed"),
    ],
)
def test_another_day_or_seed_gives_different_events(other):
    base = SimulatorSource(n_customers=800, seed=3).raw_day(DAY).to_pandas()
    changed = other().to_pandas()
    assert not base.equals(changed)
    # Not only the ids differ: the activity itself does.
    assert set(base["customer_id"]) != set(changed["customer_id"])


def test_a_day_does_not_depend_on_which_days_were_generated_before():
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    forward = SimulatorSource(n_customers=600, seed=5)
    backward = SimulatorSource(n_customers=600, seed=5)
    fwd = {d: forward.raw_day(d) for d in days}
    bwd = {d: backward.raw_day(d) for d in reversed(days)}
    fresh = SimulatorSource(n_customers=600, seed=5).raw_day(days[2])
    for d in days:
        assert fwd[d].equals(bwd[d])
    assert fresh.equals(fwd[days[2]])


def test_extract_of_an_interval_is_the_days_concatenated(sim):
    got = sim.extract(utc(DAY), utc(DAY + dt.timedelta(days=2)))
    expected = pa.concat_tables([sim.raw_day(DAY), sim.raw_day(DAY + dt.timedelta(days=1))])
    assert got.equals(expected)
    assert sim.extract(utc(DAY), utc(DAY)).num_rows == 0


def test_events_of_a_day_are_clean_and_inside_the_day(sim):
    events = sim.events_for_day(DAY)
    assert len(events) > 300
    assert events["event_id"].is_unique
    start = pd.Timestamp(DAY, tz="UTC")
    assert events["event_time"].between(start, start + pd.Timedelta(days=1), inclusive="left").all()
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert set(events["plan"]) <= set(PLANS)
    assert set(events["region"]) <= set(REGIONS)
    assert set(events["channel"]) <= set(CHANNELS)
    assert set(events["device"]) <= set(DEVICES)
    assert (pd.to_datetime(events["signup_date"]) <= pd.Timestamp(DAY)).all()
    sessions = events[events["event_type"] == "session"]
    orders = events[events["event_type"] == "order"]
    assert sessions["duration_s"].notna().all() and sessions["amount"].isna().all()
    assert orders["amount"].gt(0).all() and orders["duration_s"].isna().all()


@pytest.mark.parametrize("day", [dt.date(2026, 1, 1), DAY, dt.date(2026, 6, 30)])
def test_clean_simulated_days_pass_the_contract(sim, day):
    raw = sim.raw_day(day).to_pandas()
    result = split_by_contract(raw, day, UC)
    assert result.failures == {}
    assert len(result.valid) == len(raw)


def test_customers_attributes_are_static_and_signups_span_the_population(sim):
    c = sim.customers
    assert len(c) == 1500
    assert c["customer_id"].is_unique
    first = sim.events_for_day(DAY).drop_duplicates("customer_id").set_index("customer_id")
    later = sim.events_for_day(DAY + dt.timedelta(days=9)).drop_duplicates("customer_id").set_index("customer_id")
    both = first.index.intersection(later.index)
    assert len(both) > 50
    for col in ("plan", "region", "channel", "device", "signup_date"):
        assert first.loc[both, col].equals(later.loc[both, col]), col


# -- churn -----------------------------------------------------------------------------------------


def test_churn_share_among_recently_active_customers_is_between_5_and_15_percent():
    sim = SimulatorSource(n_customers=5000, seed=7)
    active, after = set(), set()
    for offset in range(-29, 31):
        ids = set(sim.events_for_day(DAY + dt.timedelta(days=offset))["customer_id"])
        (active if offset <= 0 else after).update(ids)
    churned = active - after
    share = len(churned) / len(active)
    assert len(active) > 1000
    assert 0.05 <= share <= 0.15, share
    # The simulator's ground truth agrees: a customer whose activity has ended has no later event.
    truth = sim.churn_truth(DAY)
    ended = set(truth[truth].index) & active
    assert ended, "some active customers must be at the end of their life"
    assert ended <= churned


def test_churn_truth_customers_have_no_event_in_the_horizon(sim):
    truth = sim.churn_truth(DAY, horizon=30)
    gone = set(truth[truth].index)
    for offset in (1, 10, 30):
        ids = set(sim.events_for_day(DAY + dt.timedelta(days=offset))["customer_id"])
        assert not ids & gone


# -- the in-app cancellation: the world changes once on its own ------------------------------------
def _last_day_sessions(source: SimulatorSource, first: dt.date, days: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Over ``days`` days from ``first``: the sessions of those for whom it was the last day they
    could be active, and everybody else's."""
    c = source.customers
    last_day = c.set_index("customer_id")["onset"] + c.set_index("customer_id")["decay_len"] - 1
    leavers, others = [], []
    for day in (first + dt.timedelta(days=i) for i in range(days)):
        events = source.events_for_day(day)
        sessions = events[events["event_type"] == "session"]
        last = (last_day.reindex(sessions["customer_id"]).to_numpy() == (day - source.epoch).days)
        leavers.append(sessions[last])
        others.append(sessions[~last])
    return pd.concat(leavers), pd.concat(others)


def test_from_its_day_most_leavers_come_once_more_for_a_long_session_and_before_it_none_does():
    source = SimulatorSource(n_customers=20_000, seed=3)
    stationary = SimulatorSource(n_customers=20_000, seed=3, cancel_in_app_from=None)
    before = source.epoch + dt.timedelta(days=CANCEL_IN_APP_FROM - 1)
    assert source.events_for_day(before).equals(stationary.events_for_day(before)), "nothing changes before its day"

    after = source.epoch + dt.timedelta(days=CANCEL_IN_APP_FROM + 40)
    c = source.customers
    t = (after - source.epoch).days
    leaving = int((((c["onset"] + c["decay_len"] - 1) >= t) & ((c["onset"] + c["decay_len"] - 1) < t + 10)).sum())
    came, others = _last_day_sessions(source, after)
    assert leaving > 50
    assert came["customer_id"].nunique() >= 0.6 * leaving, "seven in ten cancel in the app"
    assert came["duration_s"].median() > 3 * others["duration_s"].median(), "the cancellation flow takes a while"

    quiet_came, quiet_others = _last_day_sessions(stationary, after)
    assert quiet_came["customer_id"].nunique() < 0.5 * leaving, "a stationary business has no such visit"
    assert quiet_came["duration_s"].median() < 2 * quiet_others["duration_s"].median()


# -- drift -----------------------------------------------------------------------------------------


def _orders_mean(source: SimulatorSource, day: dt.date) -> float:
    events = source.events_for_day(day)
    return float(events.loc[events["event_type"] == "order", "amount"].mean())


def test_spend_shift_raises_amounts_after_its_date_only(sim):
    drifted = SimulatorSource(n_customers=1500, seed=7, drift={"spend_shift": DAY})
    before = DAY - dt.timedelta(days=1)
    # Before the date the drifted source delivers exactly the same events.
    assert drifted.raw_day(before).equals(sim.raw_day(before))
    ratio = _orders_mean(drifted, DAY) / _orders_mean(sim, DAY)
    assert ratio == pytest.approx(1.6, rel=0.02)
    assert _orders_mean(drifted, DAY + dt.timedelta(days=5)) > 1.4 * _orders_mean(sim, DAY + dt.timedelta(days=5))


def test_null_device_blanks_most_devices_after_its_date(sim):
    drifted = SimulatorSource(n_customers=1500, seed=7, drift={"null_device": DAY})
    before = drifted.events_for_day(DAY - dt.timedelta(days=1))
    after = drifted.events_for_day(DAY)
    assert before["device"].notna().all()
    share = after["device"].isna().mean()
    assert 0.5 < share < 0.7, share
    # Only the device changes.
    plain = sim.events_for_day(DAY)
    assert after.drop(columns="device").equals(plain.drop(columns="device"))


def test_new_channel_appears_after_its_date_only():
    drifted = SimulatorSource(n_customers=3000, seed=7, drift={"new_channel": SWITCH})
    before = drifted.events_for_day(SWITCH - dt.timedelta(days=1))
    after = drifted.events_for_day(dt.date(2026, 4, 1))
    assert NEW_CHANNEL not in set(before["channel"])
    assert NEW_CHANNEL in set(after["channel"])
    tiktok = after[after["channel"] == NEW_CHANNEL]
    # Only customers who signed up since the switch come through the new channel.
    assert (pd.to_datetime(tiktok["signup_date"]) >= pd.Timestamp(SWITCH)).all()


def test_new_channel_drift_is_data_not_a_contract_defect():
    drifted = SimulatorSource(n_customers=3000, seed=7, drift={"new_channel": SWITCH})
    day = dt.date(2026, 6, 1)
    raw = drifted.raw_day(day).to_pandas()
    assert (raw["channel"] == NEW_CHANNEL).mean() > 0.05  # the drift is there
    result = split_by_contract(raw, day, UC)
    assert result.invalid_share <= UC.spec.contract.max_invalid_share


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("spend_shift@2026-03-01", {"spend_shift": dt.date(2026, 3, 1)}),
        (
            " spend_shift@2026-03-01 , null_device@2026-03-10,new_channel@2026-04-01,",
            {
                "spend_shift": dt.date(2026, 3, 1),
                "null_device": dt.date(2026, 3, 10),
                "new_channel": dt.date(2026, 4, 1),
            },
        ),
    ],
)
def test_parse_drift(spec, expected):
    assert parse_drift(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("price_war@2026-03-01", r"bad drift scenario 'price_war@2026-03-01'"),
        ("spend_shift", r"bad drift scenario 'spend_shift'; use NAME@YYYY-MM-DD"),
        ("spend_shift@", r"bad drift scenario 'spend_shift@'"),
        ("null_device@2026-03-01,oops@2026-01-01", r"bad drift scenario 'oops@2026-01-01'"),
        ("spend_shift@yesterday", r"Invalid isoformat string"),
    ],
)
def test_parse_drift_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_drift(spec)


def test_from_settings_maps_every_simulator_setting():
    settings = load_settings(
        lake_uri="/tmp/unused-lake",
        sim_customers=123,
        sim_seed=99,
        sim_epoch="2025-12-01",
        sim_defect_rate=0.25,
        sim_defect_days="2026-01-03,2026-01-05",
        sim_drift="spend_shift@2026-02-01",
    )
    sim = SimulatorSource.from_settings(settings)
    assert sim.n_customers == 123
    assert sim.seed == 99
    assert sim.epoch == dt.date(2025, 12, 1)
    assert sim.defect_rate == 0.25
    assert sim.defect_days == (dt.date(2026, 1, 3), dt.date(2026, 1, 5))
    assert sim.drift == {"spend_shift": dt.date(2026, 2, 1)}
    assert sim.use_case.name == "churn"
    # The factory churn's spec names builds the same simulator.
    assert UC.spec.simulator is not None
    built = UC.resolve(UC.spec.simulator.factory)(UC, settings)
    assert isinstance(built, SimulatorSource) and built == sim and built.use_case is UC
    assert built.raw_day(DAY).equals(sim.raw_day(DAY))


# -- defects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3])
def test_inject_defects_spoils_about_rate_of_the_rows(sim, rate):
    clean = sim.raw_day(DAY)
    n = clean.num_rows
    spoiled = inject_defects(clean, rate, _rng(1, 2, 3))
    result = split_by_contract(spoiled.to_pandas(), DAY, UC)
    n_bad = round(rate * n)
    assert spoiled.schema == RAW_SCHEMA
    assert n_bad / n == pytest.approx(rate, abs=1 / n)
    # Duplicates are added rows (a fifth of the defects), exact copies: a redelivery, removed and
    # counted, not quarantined. The other kinds alter rows in place, and every one is caught.
    n_dup = spoiled.num_rows - n
    assert n_dup == pytest.approx(n_bad / 5, abs=1) and n_dup > 0
    assert result.duplicates == n_dup
    assert len(result.quarantined) == n_bad - n_dup
    assert "event_id: field_uniqueness" not in result.failures
    assert len(result.valid) + len(result.quarantined) + result.duplicates == spoiled.num_rows == result.rows_in
    assert len(result.valid) == n - (n_bad - n_dup)
    # The invalid share is of the rows delivered: the four fifths of the defects that alter a row.
    assert result.invalid_share == pytest.approx((n_bad - n_dup) / spoiled.num_rows)
    assert result.invalid_share == pytest.approx(rate * 4 / 5, rel=0.15)


def test_inject_defects_covers_every_kind(sim):
    spoiled = inject_defects(sim.raw_day(DAY), 0.3, _rng(1, 2, 3))
    result = split_by_contract(spoiled.to_pandas(), DAY, UC)
    checks = {reason.split("(")[0] for reason in result.failures}
    expected = {
        "customer_id: not_nullable", "event_id: not_nullable",  # null key
        "amount: parse_number", "event_time: parse_timestamp", "customer_id: parse_integer",  # malformed
        "amount: in_range", "duration_s: in_range", "event_time: greater_than_or_equal_to",  # out of range
        "event_type: isin", "plan: isin", "region: isin",  # bad category
    }
    assert checks == expected
    assert result.duplicates > 0  # duplicate: removed and counted, not a failed check


def test_inject_defects_at_rate_zero_returns_the_table_unchanged(sim):
    clean = sim.raw_day(DAY)
    assert inject_defects(clean, 0.0, _rng(1)).equals(clean)


def test_defects_only_on_the_defect_days():
    spoiled_day = DAY + dt.timedelta(days=1)
    src = SimulatorSource(n_customers=800, seed=7, defect_rate=0.1, defect_days=(spoiled_day,))
    clean = SimulatorSource(n_customers=800, seed=7)
    assert src.raw_day(DAY).equals(clean.raw_day(DAY))
    dirty = src.raw_day(spoiled_day).to_pandas()
    result = split_by_contract(dirty, spoiled_day, UC)
    # About a tenth of the day's rows spoiled: four fifths altered (quarantined), a fifth copied (removed).
    delivered = result.rows_in - result.duplicates
    assert (len(result.quarantined) + result.duplicates) / delivered == pytest.approx(0.1, abs=0.01)
    assert result.duplicates > 0
    # ... and deterministic too
    assert src.raw_day(spoiled_day).equals(src.raw_day(spoiled_day))


def test_defects_every_day_when_no_defect_days_are_given():
    src = SimulatorSource(n_customers=800, seed=7, defect_rate=0.1)
    for day in (DAY, DAY + dt.timedelta(days=3)):
        assert split_by_contract(src.raw_day(day).to_pandas(), day, UC).invalid_share > 0.05


def test_customer_ids_are_numeric_text_and_unique_per_customer(sim):
    raw = sim.raw_day(DAY).to_pandas()
    assert raw["customer_id"].str.fullmatch(r"\d+").all()
    assert np.array_equal(
        np.sort(sim.customers["customer_id"].to_numpy()),
        np.arange(100_001, 100_001 + sim.n_customers),
    )


def test_engagement_drop_halves_activity_after_its_date_only():
    plain = SimulatorSource(n_customers=3000, seed=7)
    dropped = SimulatorSource(n_customers=3000, seed=7, drift={"engagement_drop": DAY})
    before = DAY - dt.timedelta(days=1)
    assert dropped.events_for_day(before).equals(plain.events_for_day(before))
    after_plain, after_dropped = plain.events_for_day(DAY), dropped.events_for_day(DAY)
    active = after_dropped["customer_id"].nunique() / after_plain["customer_id"].nunique()
    assert 0.4 < active < 0.6
    minutes = after_dropped["duration_s"].mean() / after_plain["duration_s"].mean()
    assert 0.4 < minutes < 0.6
