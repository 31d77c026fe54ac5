"""The purchases use case's generator: deterministic per (seed, day), the spec's raw shape and
bounds, a realistic lapse rate, and a day that costs the same whatever came before it."""

from __future__ import annotations

import datetime as dt
import re
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.usecase import EXTRA_COLUMN, UseCase, load_use_case
from sluice.settings import Settings

EPOCH = dt.date(2026, 1, 1)
DAY = dt.date(2026, 3, 1)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
AMOUNT = re.compile(r"^\d+\.\d{2}$")
QUANTITY = re.compile(r"^[1-9]\d*$")


def utc(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def uc() -> UseCase:
    return load_use_case("purchases")


@pytest.fixture(scope="module")
def Gen(uc):  # noqa: N802 - the generator class, loaded from the use case folder
    return uc.resolve("generator:PurchaseGenerator")


@pytest.fixture(scope="module")
def gen(uc, Gen):
    return Gen(n_customers=1500, seed=7, epoch=EPOCH, use_case=uc)


# -- the use case and its factory ------------------------------------------------------------------


def test_the_spec_declares_the_purchase_shape(uc):
    assert uc.raw_fields == ["customer_id", "purchased_at", "amount", "quantity", "category"]
    assert uc.spec.entity.type == "string"
    assert uc.spec.events.id is None and uc.spec.events.kind is None
    assert uc.spec.events.kinds == ("purchase",)
    assert uc.spec.population.active_within_days == 365
    assert uc.spec.label.when == "no_event" and uc.horizon == 90
    assert uc.warmup_days == 180 < max(uc.windows) == 365
    assert uc.categorical == ["last_category"]
    assert uc.guarded_slices == ("last_category",)


def test_the_factory_the_spec_names_builds_the_generator_from_settings(uc, Gen):
    settings = Settings(sim_customers=2000, sim_seed=11, sim_epoch=dt.date(2026, 2, 1))
    made = uc.resolve(uc.spec.simulator.factory)(uc, settings)
    assert isinstance(made, Gen)
    assert (made.n_customers, made.seed, made.epoch, made.name) == (2000, 11, dt.date(2026, 2, 1), "simulator")
    assert made.use_case is uc
    # The use case is not part of the generator's identity.
    assert made == Gen(n_customers=2000, seed=11, epoch=dt.date(2026, 2, 1))


# -- determinism -----------------------------------------------------------------------------------


def test_same_seed_and_day_give_an_identical_table(uc, Gen):
    a = Gen(n_customers=800, seed=3, epoch=EPOCH, use_case=uc).extract(utc(DAY), utc(DAY + dt.timedelta(days=1)))
    b = Gen(n_customers=800, seed=3, epoch=EPOCH, use_case=uc).extract(utc(DAY), utc(DAY + dt.timedelta(days=1)))
    assert a.num_rows > 10
    assert a.equals(b)


@pytest.mark.parametrize("change", ["next-day", "other-seed"])
def test_another_day_or_seed_gives_different_purchases(uc, Gen, change):
    base = Gen(n_customers=800, seed=3, epoch=EPOCH, use_case=uc).raw_day(DAY).to_pandas()
    if change == "next-day":
        other = Gen(n_customers=800, seed=3, epoch=EPOCH, use_case=uc).raw_day(DAY + dt.timedelta(days=1))
    else:
        other = Gen(n_customers=800, seed=4, epoch=EPOCH, use_case=uc).raw_day(DAY)
    assert set(base["customer_id"]) != set(other.to_pandas()["customer_id"])


def test_a_day_does_not_depend_on_which_days_were_generated_before(uc, Gen):
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    forward = Gen(n_customers=600, seed=5, epoch=EPOCH, use_case=uc)
    backward = Gen(n_customers=600, seed=5, epoch=EPOCH, use_case=uc)
    fwd = {d: forward.raw_day(d) for d in days}
    bwd = {d: backward.raw_day(d) for d in reversed(days)}
    fresh = Gen(n_customers=600, seed=5, epoch=EPOCH, use_case=uc).raw_day(days[2])
    for d in days:
        assert fwd[d].equals(bwd[d])
    assert fresh.equals(fwd[days[2]])


# -- the Source interface --------------------------------------------------------------------------


def test_extract_returns_the_raw_fields_as_text_in_the_spec_order(gen, uc):
    table = gen.extract(utc(DAY), utc(DAY + dt.timedelta(days=1)))
    # The platform's raw schema: the spec's raw fields in order, then extra_fields (none here).
    assert table.column_names == [*uc.raw_fields, EXTRA_COLUMN]
    assert all(f.type == pa.string() for f in table.schema)
    assert table.num_rows > 20
    assert sum(table.column(name).null_count for name in uc.raw_fields) == 0
    assert table.column(EXTRA_COLUMN).null_count == table.num_rows


def test_extract_of_an_interval_is_the_days_concatenated(gen):
    got = gen.extract(utc(DAY), utc(DAY + dt.timedelta(days=2)))
    assert got.equals(pa.concat_tables([gen.raw_day(DAY), gen.raw_day(DAY + dt.timedelta(days=1))]))
    assert gen.extract(utc(DAY), utc(DAY)).num_rows == 0
    assert gen.extract(utc(DAY), utc(DAY)).column_names == gen.columns
    # A naive datetime is UTC.
    assert gen.extract(dt.datetime(2026, 3, 1), dt.datetime(2026, 3, 2)).equals(gen.raw_day(DAY))


def test_extract_of_a_partial_interval_keeps_only_the_purchases_inside_it(gen):
    start, end = utc(DAY, 12), utc(DAY + dt.timedelta(days=1), 12)
    got = gen.extract(start, end).to_pandas()
    both = pd.concat([gen.raw_day(DAY).to_pandas(), gen.raw_day(DAY + dt.timedelta(days=1)).to_pandas()])
    at = pd.to_datetime(both["purchased_at"], utc=True)
    expected = both[(at >= pd.Timestamp(start)) & (at < pd.Timestamp(end))].reset_index(drop=True)
    assert len(got) > 10
    pd.testing.assert_frame_equal(got, expected)


# -- the contract of the spec ----------------------------------------------------------------------


def test_customer_ids_match_the_entity_pattern(gen, uc):
    pattern = re.compile(uc.spec.entity.pattern)
    ids = gen.customers["customer_id"]
    assert ids.is_unique and len(ids) == 1500
    assert ids.map(lambda v: bool(pattern.match(v))).all()
    raw = gen.extract(utc(DAY), utc(DAY + dt.timedelta(days=7))).to_pandas()
    assert raw["customer_id"].map(lambda v: bool(pattern.match(v))).all()
    assert set(raw["customer_id"]) <= set(ids)


@pytest.mark.parametrize("day", [EPOCH, DAY, dt.date(2026, 7, 15), dt.date(2026, 12, 20)])
def test_values_satisfy_the_contract_bounds_of_the_spec(gen, uc, day):
    raw = gen.raw_day(day).to_pandas()
    fields = uc.spec.fields
    assert len(raw) > 10
    assert raw["amount"].str.match(AMOUNT.pattern).all()
    amount = raw["amount"].astype(float)
    assert amount.between(fields["amount"].min, fields["amount"].max).all()
    assert raw["quantity"].str.match(QUANTITY.pattern).all()
    assert raw["quantity"].astype(int).between(fields["quantity"].min, fields["quantity"].max).all()
    assert set(raw["category"]) <= set(fields["category"].values)


def test_purchase_times_are_iso_utc_inside_the_day(gen):
    for day in (EPOCH, DAY, dt.date(2026, 10, 3)):
        raw = gen.raw_day(day).to_pandas()
        assert raw["purchased_at"].str.match(TIMESTAMP.pattern).all()
        at = pd.to_datetime(raw["purchased_at"], utc=True)
        start = pd.Timestamp(day, tz="UTC")
        assert at.between(start, start + pd.Timedelta(days=1), inclusive="left").all()


def test_the_generators_categories_are_the_specs(uc, Gen):
    module = sys.modules[Gen.__module__]
    assert module.CATEGORIES == uc.spec.fields["category"].values
    assert module.MAX_AMOUNT <= uc.spec.fields["amount"].max
    assert module.MAX_QUANTITY <= uc.spec.fields["quantity"].max


# -- the shape of the business ---------------------------------------------------------------------


def _events(gen, first: int, last: int) -> pd.DataFrame:
    """Typed purchases of days first..last after the epoch, with their day number t."""
    frames = []
    for t in range(first, last + 1):
        p = gen.purchases_for_day(gen.epoch + dt.timedelta(days=t))
        frames.append(p.assign(t=t))
    return pd.concat(frames, ignore_index=True)


def test_no_purchase_before_signup_and_a_first_purchase_on_the_signup_day(gen):
    c = gen.customers.set_index("customer_id")
    events = _events(gen, 50, 80)
    assert (c.loc[events["customer_id"], "signup"].to_numpy() <= events["t"].to_numpy()).all()
    new = c[(c["signup"] >= 50) & (c["signup"] <= 80)]
    assert len(new) > 10
    first = events.groupby("customer_id")["t"].min()
    assert (first.reindex(new.index) == new["signup"]).all()


def test_customers_mostly_buy_their_preferred_category_and_weekends_are_busier(gen):
    events = _events(gen, 0, 83)  # twelve weeks
    c = gen.customers.set_index("customer_id")
    categories = gen.use_case.spec.fields["category"].values
    preferred = np.array(categories, dtype=object)[c.loc[events["customer_id"], "preferred"].to_numpy()]
    assert 0.6 < (events["category"].to_numpy() == preferred).mean() < 0.9
    assert events["category"].nunique() == len(categories)
    weekday = pd.to_datetime(events["purchased_at"]).dt.weekday
    per_day = events.groupby(weekday).size() / 12
    assert per_day[[5, 6]].mean() > 1.05 * per_day[[0, 1, 2, 3]].mean()
    # Heterogeneous customers: a few buy weekly, many only now and then.
    counts = events.groupby("customer_id").size()
    assert counts.max() >= 10 and (counts <= 2).mean() > 0.3


def _auc(score: pd.Series, label: pd.Series) -> float:
    ranks = score.rank()
    pos = label.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_lapse_rate_among_last_years_buyers_is_realistic_and_learnable(uc, Gen):
    g = Gen(n_customers=2000, seed=7, epoch=EPOCH, use_case=uc)
    snapshot, horizon = 250, uc.horizon
    events = _events(g, 0, snapshot + horizon)
    past = events[events["t"] <= snapshot]  # the lake is younger than 365 days: everything so far
    future = events[events["t"] > snapshot]
    last = past.groupby("customer_id")["t"].max()
    frequency = past[past["t"] > snapshot - 180].groupby("customer_id").size().reindex(last.index, fill_value=0)
    label = ~last.index.isin(future["customer_id"].unique())
    label = pd.Series(label, index=last.index)
    share = label.mean()
    assert len(last) > 1000
    assert 0.25 <= share <= 0.50, share
    # Learnable but not trivial: recency and frequency each carry signal, neither gives it away.
    recency = snapshot - last
    assert 0.65 < _auc(recency, label) < 0.95
    assert 0.6 < _auc(-frequency, label) < 0.9
    # The ground truth agrees: a customer with no possible purchase has none.
    truth = g.lapse_truth(EPOCH + dt.timedelta(days=snapshot), horizon=horizon)
    gone = truth[truth].index.intersection(last.index)
    assert len(gone) > 100
    assert label[gone].all()
    assert label.sum() > len(gone)  # some buy nothing by chance, not because they lapsed


# -- cost: linear in customers, independent of the days before --------------------------------------


def test_a_population_is_the_first_customers_of_any_larger_one(uc, Gen):
    small = Gen(n_customers=1000, seed=9, epoch=EPOCH, use_case=uc)
    large = Gen(n_customers=2000, seed=9, epoch=EPOCH, use_case=uc)
    pd.testing.assert_frame_equal(small.customers, large.customers.head(1000))
    for day in (EPOCH, DAY):
        mine = large.raw_day(day).to_pandas()
        mine = mine[mine["customer_id"].isin(small.customers["customer_id"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(small.raw_day(day).to_pandas(), mine)
    # So a day's work is per customer: twice the customers, about twice the purchases.
    month = (utc(DAY), utc(DAY + dt.timedelta(days=28)))
    ratio = large.extract(*month).num_rows / small.extract(*month).num_rows
    assert 1.6 < ratio < 2.5, ratio


def test_a_late_day_is_generated_without_the_days_before_it(uc, Gen, monkeypatch):
    g = Gen(n_customers=500, seed=2, epoch=EPOCH, use_case=uc)
    generated: list[dt.date] = []
    original = Gen.purchases_for_day

    def spy(self, day):
        generated.append(day)
        return original(self, day)

    monkeypatch.setattr(Gen, "purchases_for_day", spy)
    late = dt.date(2027, 6, 30)
    g.extract(utc(late), utc(late + dt.timedelta(days=1)))
    assert generated == [late]
    customers = g.customers
    g.raw_day(late)
    assert g.customers is customers  # built once
