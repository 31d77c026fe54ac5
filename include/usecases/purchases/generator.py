"""A deterministic generator of a retailer's purchases, for the ``purchases`` use case.

Customers (signup day, purchase rate, preferred category, spend level) and their purchases
(time, amount, quantity, category). Any day regenerates identically from ``(seed, day)``
alone, in time linear in the number of customers and independent of how many days came
before. Every customer attribute and every per-day draw has its own random stream and
the rows of a day are in customer order, so a customer's purchases do not depend on how
many customers there are: a population of n is the first n customers of any larger one.

The shape:

* heterogeneous rates: lognormal, a median customer buys about once in 35 days, a few
  weekly, many only a few times a year; each rate rises and falls in a slow wave of its
  own (period 1.5-8 months), so gaps between purchases are irregular;
* signups over time: 55% of the customers exist at the epoch (their earlier purchases are
  not in the lake), the rest sign up over the following two years, with a first purchase
  on their signup day and none before it;
* a lapse process: at a random onset a customer's rate fades within days to weeks and
  then stops for good. The hazard is higher for rare buyers, for a latent fragility and
  for some preferred categories (electronics, fashion), lower for staples (grocery,
  household); a share of new customers are trials that lapse within weeks of signing up.
  The onset is not in the data: only its consequence, recency growing against the usual
  frequency;
* breaks: most customers pause now and then (travel, a competitor's offer, a tight
  budget): no purchases for 1-8 months, then back to normal; drawn per block of a year;
* seasonality: more purchases at weekends and around the year-end holidays, a little
  day-to-day noise common to everyone;
* a preferred category a customer mostly buys; amount and quantity depend on the category
  and on the customer's spend level.

Among customers who bought in the last 365 days, about 30-40% buy nothing in the next 90
(rising over the first year as the lake's population fills with lapsed buyers); days since
the last purchase and frequency predict it (ROC AUC about 0.8), the lapse onset does not show.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from sluice.core.usecase import EXTRA_COLUMN

if TYPE_CHECKING:
    from sluice.core.usecase import UseCase
    from sluice.settings import Settings

COLUMNS = ("customer_id", "purchased_at", "amount", "quantity", "category")
CATEGORIES = ("grocery", "household", "beauty", "fashion", "electronics", "sports")
CATEGORY_SHARE = np.array([0.30, 0.18, 0.15, 0.17, 0.10, 0.10])  # of preferred categories
UNIT_PRICE = np.array([6.0, 9.0, 18.0, 35.0, 140.0, 45.0])  # median price of one unit
EXTRA_UNITS = np.array([5.0, 2.0, 1.0, 0.6, 0.1, 0.4])  # mean units above 1 per order
LAPSE_FACTOR = np.array([0.7, 0.8, 1.0, 1.3, 1.6, 1.2])  # hazard multiplier of the preferred category
WEEKDAY = np.array([0.92, 0.90, 0.93, 0.97, 1.05, 1.18, 1.05])  # Monday .. Sunday, mean 1
HOUR_WEIGHT = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2.5, 3.5, 4, 4.5,
                        5, 4.5, 4, 4, 4.5, 5, 6, 6.5, 6, 5, 3.5, 2])
HOUR_P = HOUR_WEIGHT / HOUR_WEIGHT.sum()
MAX_AMOUNT = 5000.0
MAX_QUANTITY = 100
MEDIAN_GAP_DAYS = 35.0
EXISTING_SHARE = 0.55
SIGNUP_DAYS = 730  # new customers sign up over the two years after the epoch
RATE_SIGMA = 1.0
LAPSE_HAZARD = 1 / 2000  # daily hazard of the lapse onset of a median customer
BREAK_SHARE = 0.6  # chance of a break in a year
BREAK_DAYS = (30, 240)  # length of a break, days (shorter than a block)
BREAK_BLOCK = 365
FADE_TAU_DAYS = 7.0
SALT = 0x50_55  # "PU": streams apart from other generators sharing a seed

# Random streams, one per draw: customers are (SALT, 0, attribute), a day is (SALT, 1, ordinal,
# draw), the breaks of a year are (SALT, 2, year + YEAR_OFFSET, draw). One draw of n values per
# stream keeps a customer's values independent of n (numpy draws a stream in sequence).
(_C_EXISTING, _C_SIGNUP, _C_RATE, _C_PREF, _C_LOYAL, _C_SPEND, _C_FRAGILE, _C_TRIAL, _C_LIFE, _C_TRIAL_LIFE,
 _C_FADE, _C_PERIOD, _C_PHASE, _C_AMPLITUDE) = range(14)
_D_NOISE, _D_COUNT, _D_CATEGORY, _D_OTHER, _D_UNITS, _D_PRICE, _D_HOUR, _D_SECOND = range(8)
_B_HAS, _B_START, _B_LENGTH = range(3)
YEAR_OFFSET = 4096  # stream keys are non-negative; year -1 is the block before the epoch


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, SALT, *key])


@dataclass(frozen=True)
class PurchaseGenerator:
    n_customers: int = 20_000
    seed: int = 7
    epoch: dt.date = dt.date(2026, 1, 1)
    name: str = "simulator"
    use_case: UseCase | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_customers > 9_999_999:
            raise ValueError(f"n_customers must be in [1, 9999999], not {self.n_customers}")
        if self.use_case is not None and set(self.use_case.raw_fields) != set(COLUMNS):
            raise ValueError(f"use case {self.use_case.name!r} has raw fields {self.use_case.raw_fields}; "
                             f"the purchase generator delivers {list(COLUMNS)}")

    @classmethod
    def for_use_case(cls, use_case: UseCase, settings: Settings) -> PurchaseGenerator:
        """The factory the spec names (``simulator.factory``): size, seed and epoch from the settings."""
        return cls(n_customers=settings.sim_customers, seed=settings.sim_seed, epoch=settings.sim_epoch,
                   use_case=use_case)

    @property
    def columns(self) -> list[str]:
        """The raw columns: the use case's raw fields in its order, then ``extra_fields``.

        ``extra_fields`` (undeclared fields as JSON, the platform's raw schema) is always null here.
        """
        fields = list(self.use_case.raw_fields) if self.use_case is not None else list(COLUMNS)
        return [*fields, EXTRA_COLUMN]

    # -- the population ------------------------------------------------------------
    @cached_property
    def customers(self) -> pd.DataFrame:
        """Static attributes and latent behaviour of every customer (days relative to the epoch)."""
        n = self.n_customers

        def r(attr: int) -> np.random.Generator:
            return _rng(self.seed, 0, attr)

        ids = np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), 6))
        # 55% were customers before the lake began (and still buying at its start: who lapsed
        # earlier is not among the n); the rest sign up over the two years after the epoch.
        existing = r(_C_EXISTING).random(n) < EXISTING_SHARE
        u = r(_C_SIGNUP).random(n)
        signup = np.where(existing, -np.floor(u * 730) - 1, np.floor(u * SIGNUP_DAYS)).astype(np.int64)
        rate = np.clip(r(_C_RATE).lognormal(np.log(1 / MEDIAN_GAP_DAYS), RATE_SIGMA, size=n), 1 / 730, 0.5)
        pref = r(_C_PREF).choice(len(CATEGORIES), size=n, p=CATEGORY_SHARE)
        loyalty = r(_C_LOYAL).beta(6, 2, size=n)  # share of orders in the preferred category
        spend = r(_C_SPEND).lognormal(0, 0.45, size=n)
        fragility = r(_C_FRAGILE).lognormal(0, 0.5, size=n)
        # Daily hazard of the lapse onset: rare buyers, fragile customers and some categories lapse sooner.
        hazard = LAPSE_HAZARD * (rate * MEDIAN_GAP_DAYS) ** -0.4 * fragility * LAPSE_FACTOR[pref]
        trial = ~existing & (r(_C_TRIAL).random(n) < np.clip(0.15 * fragility, 0, 0.5))
        life = r(_C_LIFE).exponential(1 / hazard)
        trial_life = r(_C_TRIAL_LIFE).uniform(0, 45, size=n)
        # Memoryless: an existing customer's remaining life from the epoch is drawn like a new one's.
        start = np.where(existing, 0, signup)
        onset = start + np.floor(np.where(trial, trial_life, life)).astype(np.int64)
        fade_len = r(_C_FADE).integers(3, 35, size=n)  # days from the onset to the last possible purchase
        # Buying comes in waves: a slow cycle of the rate with its own period and phase.
        period = r(_C_PERIOD).uniform(45, 240, size=n)
        phase = r(_C_PHASE).uniform(0, 2 * np.pi, size=n)
        amplitude = r(_C_AMPLITUDE).uniform(0.2, 0.9, size=n)
        return pd.DataFrame(
            {
                "customer_id": ids.astype(object),
                "signup": signup,
                "rate": rate,
                "preferred": pref,
                "loyalty": loyalty,
                "spend": spend,
                "fragility": fragility,
                "trial": trial,
                "onset": onset,
                "fade_len": fade_len,
                "period": period,
                "phase": phase,
                "amplitude": amplitude,
            }
        )

    def breaks(self, year: int) -> tuple[np.ndarray, np.ndarray]:
        """Every customer's break starting in block ``year`` (days [365 year, 365 (year+1)) after the
        epoch) as (first day, end day), both relative to the epoch; no break: an empty interval.

        Travel, a competitor's offer, a tight budget: no purchases for 1-8 months. Breaks are
        drawn per block of a year, so a day needs only its block and the one before.
        """
        n = self.n_customers

        def r(draw: int) -> np.random.Generator:
            return _rng(self.seed, 2, year + YEAR_OFFSET, draw)

        has = r(_B_HAS).random(n) < BREAK_SHARE
        start = year * BREAK_BLOCK + np.floor(r(_B_START).random(n) * BREAK_BLOCK).astype(np.int64)
        length = r(_B_LENGTH).integers(*BREAK_DAYS, size=n)
        return start, np.where(has, start + length, start)

    def _on_break(self, first: int, end: int) -> np.ndarray:
        """Whether a break covers every day of [first, end) (days relative to the epoch)."""
        covered = np.zeros(self.n_customers, dtype=bool)
        for year in range(first // BREAK_BLOCK - 1, first // BREAK_BLOCK + 1):
            start, stop = self.breaks(year)
            covered |= (start <= first) & (end <= stop)
        return covered

    # -- one day ---------------------------------------------------------------------
    def purchases_for_day(self, day: dt.date) -> pd.DataFrame:
        """Typed purchases of ``day``: one row per purchase, in customer order then time."""
        c = self.customers
        t = (day - self.epoch).days

        def r(draw: int) -> np.random.Generator:
            return _rng(self.seed, 1, day.toordinal(), draw)

        signup = c["signup"].to_numpy()
        onset = c["onset"].to_numpy()
        since_onset = t - onset
        buying = (signup <= t) & (since_onset < c["fade_len"].to_numpy())
        alive = buying & ~self._on_break(t, t + 1)
        cycle = 2 * np.pi * t / c["period"].to_numpy() + c["phase"].to_numpy()
        wave = np.exp(c["amplitude"].to_numpy() * np.sin(cycle))
        fade = np.exp(-np.clip(since_onset, 0, None) / FADE_TAU_DAYS)
        yearly = 1 + 0.12 * np.cos(2 * np.pi * (day.timetuple().tm_yday - 340) / 365.25)
        noise = float(np.exp(r(_D_NOISE).normal(0, 0.08)))
        lam = np.where(alive, c["rate"].to_numpy() * wave * fade * WEEKDAY[day.weekday()] * yearly * noise, 0.0)
        counts = r(_D_COUNT).poisson(lam)
        counts = np.where(buying & (signup == t), np.maximum(counts, 1), counts)  # signing up is ordering
        owner = np.repeat(np.arange(len(c)), counts)
        total = len(owner)

        pref = c["preferred"].to_numpy()[owner]
        other = (pref + 1 + r(_D_OTHER).integers(0, len(CATEGORIES) - 1, size=total)) % len(CATEGORIES)
        category = np.where(r(_D_CATEGORY).random(total) < c["loyalty"].to_numpy()[owner], pref, other)
        quantity = np.minimum(1 + r(_D_UNITS).poisson(EXTRA_UNITS[category]), MAX_QUANTITY)
        unit = UNIT_PRICE[category] * c["spend"].to_numpy()[owner] * r(_D_PRICE).lognormal(0, 0.35, size=total)
        amount = np.round(np.clip(unit * quantity, 0.5, MAX_AMOUNT), 2)
        seconds = r(_D_HOUR).choice(24, size=total, p=HOUR_P) * 3600 + r(_D_SECOND).integers(0, 3600, size=total)
        order = np.lexsort((seconds, owner))  # customer order (stable across population sizes), then time
        midnight = pd.Timestamp(day, tz="UTC")
        return pd.DataFrame(
            {
                "customer_id": c["customer_id"].to_numpy()[owner][order],
                "purchased_at": midnight + pd.to_timedelta(seconds[order], unit="s"),
                "amount": amount[order],
                "quantity": quantity[order].astype(np.int64),
                "category": np.array(CATEGORIES, dtype=object)[category[order]],
            }
        )

    def raw_day(self, day: dt.date) -> pa.Table:
        """The day's purchases as the source delivers them: every column as text."""
        p = self.purchases_for_day(day)
        stamps = np.datetime_as_string(p["purchased_at"].dt.tz_localize(None).to_numpy().astype("datetime64[s]"),
                                       unit="s")
        text = {
            "customer_id": p["customer_id"].to_numpy(dtype=object),
            "purchased_at": np.char.add(stamps.astype(str), "Z").astype(object),
            "amount": np.char.mod("%.2f", p["amount"].to_numpy()).astype(object),
            "quantity": p["quantity"].to_numpy().astype(str).astype(object),
            "category": p["category"].to_numpy(dtype=object),
            EXTRA_COLUMN: np.full(len(p), None, dtype=object),
        }
        cols = self.columns
        return pa.Table.from_arrays([pa.array(text[name], type=pa.string()) for name in cols],
                                    schema=pa.schema([pa.field(name, pa.string()) for name in cols]))

    def lapse_truth(self, day: dt.date, horizon: int = 90) -> pd.Series:
        """Whether each customer has no possible purchase in (day, day+horizon]: ground truth for tests.

        True for customers whose lapse has run its course by ``day`` (and for those who sign up
        only after the horizon); False means a purchase is possible, not that one happens.
        """
        c = self.customers
        t = (day - self.epoch).days
        last_possible = c["onset"].to_numpy() + c["fade_len"].to_numpy() - 1
        gone = (last_possible <= t) | (c["signup"].to_numpy() > t + horizon)
        gone |= self._on_break(t + 1, t + horizon + 1)  # a break that covers the whole horizon
        return pd.Series(gone, index=pd.Index(c["customer_id"], name="customer_id"), name="lapsed")

    # -- the Source interface ------------------------------------------------------
    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """Every purchase with purchased_at in [start, end): one row each, every column as text."""
        start, end = _utc(start), _utc(end)
        if end <= start:
            return _empty(self.columns)
        first, last = start.date(), (end - dt.timedelta(microseconds=1)).date()
        frames = []
        for i in range((last - first).days + 1):
            day = first + dt.timedelta(days=i)
            table = self.raw_day(day)
            midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            if start > midnight or end < midnight + dt.timedelta(days=1):  # a partial day
                at = pd.to_datetime(pd.Series(table.column("purchased_at").to_pylist()), utc=True)
                keep = ((at >= pd.Timestamp(start)) & (at < pd.Timestamp(end))).to_numpy()
                table = table.filter(pa.array(keep, type=pa.bool_()))
            frames.append(table)
        return pa.concat_tables(frames) if frames else _empty(self.columns)


def _utc(moment: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _empty(columns: list[str]) -> pa.Table:
    return pa.schema([pa.field(name, pa.string()) for name in columns]).empty_table()
