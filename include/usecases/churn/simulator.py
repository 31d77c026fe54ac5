"""A deterministic simulator of a subscription business.

Customers (plan, region, channel, device, signup date) and their daily activity
(sessions, orders, spend, support tickets). Any day regenerates identically from
``(seed, day)`` alone, in time linear in the number of customers and independent
of how many days came before, so 1M customers stay affordable.

Churn follows from engagement decay: at a random onset (more likely on the basic
plan, through paid acquisition, or after support trouble) a customer's activity
decays over a couple of weeks and then stops. About 5-15% of active customers churn
within 30 days, and the decay is visible in the features beforehand.

The world changes once on its own: from ``CANCEL_IN_APP_FROM`` days after the epoch
(2026-04-15 by default; ``cancel_in_app_from=None`` keeps the business stationary),
customers cancel in the app, and seven in ten of those who leave spend their last visit in
the cancellation flow: a long session on their last day. Before that day a long visit
meant an engaged customer; after it, for a recent one who went quiet, it means one who
left. A model trained only on earlier days reads it the old way, so a retraining that has
seen the new days is genuinely better (``make demo`` shows the gate promoting it).

Drift scenarios (``spend_shift``, ``new_channel``, ``null_device``) switch on from a
date; a defect rate injects duplicates, nulls, malformed and out-of-range values.
Both are off by default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sluice.core.usecase import UseCase, load_use_case
from sluice.edges.sources import conform, raw_schema
from sluice.settings import Settings

PLANS = ("basic", "standard", "premium")
REGIONS = ("na", "eu", "apac", "latam")
CHANNELS = ("organic", "paid_search", "social", "referral", "partner")
DEVICES = ("ios", "android", "web")
EVENT_TYPES = ("session", "order", "support_ticket")
NEW_CHANNEL = "tiktok"
DRIFT_SCENARIOS = ("spend_shift", "new_channel", "null_device", "engagement_drop")
# Days after the epoch from which leaving customers may cancel in the app (see the module text).
CANCEL_IN_APP_FROM = 104
DEFECT_KINDS = ("duplicate", "null_key", "malformed", "out_of_range", "bad_category")


_FOLDER = Path(__file__).resolve().parent


def parse_drift(spec: str) -> dict[str, dt.date]:
    """'spend_shift@2026-03-01,null_device@2026-03-10' -> {scenario: start day}."""
    out: dict[str, dt.date] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, day = part.partition("@")
        if name not in DRIFT_SCENARIOS or not day:
            raise ValueError(f"bad drift scenario {part!r}; use NAME@YYYY-MM-DD with NAME in {DRIFT_SCENARIOS}")
        out[name] = dt.date.fromisoformat(day)
    return out


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


@dataclass(frozen=True)
class SimulatorSource:
    n_customers: int = 20_000
    seed: int = 7
    epoch: dt.date = dt.date(2026, 1, 1)
    drift: dict[str, dt.date] = field(default_factory=dict)
    defect_rate: float = 0.0
    defect_days: tuple[dt.date, ...] = ()
    # Days after the epoch from which leavers may cancel in the app; None: never (a stationary business).
    cancel_in_app_from: int | None = CANCEL_IN_APP_FROM
    name: str = "simulator"
    use_case: UseCase = field(default_factory=lambda: load_use_case(_FOLDER), compare=False, repr=False)

    @classmethod
    def for_use_case(cls, use_case: UseCase, settings: Settings) -> SimulatorSource:
        """The factory the spec names (``simulator.factory``)."""
        return cls.from_settings(settings, use_case)

    @classmethod
    def from_settings(cls, settings: Settings, use_case: UseCase | None = None) -> SimulatorSource:
        return cls(
            use_case=use_case or load_use_case(_FOLDER),
            n_customers=settings.sim_customers,
            seed=settings.sim_seed,
            epoch=settings.sim_epoch,
            drift=parse_drift(settings.sim_drift),
            defect_rate=settings.sim_defect_rate,
            defect_days=tuple(settings.sim_defect_days),
        )

    # -- the population ------------------------------------------------------------
    @cached_property
    def customers(self) -> pd.DataFrame:
        """Static attributes and latent behaviour of every customer."""
        n = self.n_customers
        rng = _rng(self.seed, 0)
        ids = np.arange(1, n + 1, dtype=np.int64) + 100_000
        signup = rng.integers(-540, 365, size=n)  # days relative to the epoch
        plan = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
        region = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
        channel = rng.choice(5, size=n, p=[0.35, 0.25, 0.2, 0.12, 0.08])
        device = rng.choice(3, size=n, p=[0.35, 0.35, 0.3])
        # Habits differ: daily users, weekly ones, and light users who drop by a few times a
        # month (for whom a quiet month is no sign of leaving). Higher plans lean to habits.
        segment = (rng.random(n) < np.array([0.30, 0.40, 0.55])[plan]).astype(int) + (rng.random(n) < 0.55)
        base = np.array([0.10, 0.40, 0.75])[segment]
        engagement = np.clip(base * rng.lognormal(0, 0.35, size=n), 0.02, 0.95)
        # Hazard of leaving per day: basic plan, paid acquisition, light users and the
        # latam/apac regions leave more; a customer's own inclination varies beyond that.
        hazard = (1 / 520) * np.array([1.6, 1.0, 0.6])[plan] * np.array([1.0, 1.5, 1.2, 0.8, 1.3])[channel]
        hazard *= np.array([0.9, 1.0, 1.2, 1.3])[region] * np.array([1.5, 1.0, 0.8])[segment]
        hazard *= rng.lognormal(0, 0.5, size=n)
        onset = signup + 7 + _onset_after(hazard, signup + 7, rng.exponential(size=n))
        # How a customer leaves: two in five fade over days to weeks (fewer, shorter sessions, often
        # support trouble first), the others simply stop: nothing in the data announces them.
        fades = rng.random(n) < 0.4
        decay_len = np.where(fades, rng.integers(6, 28, size=n), rng.integers(1, 3, size=n))
        troubled = fades & (rng.random(n) < 0.45)
        # Breaks (holidays, a busy month) of 1-5 weeks, after which the customer comes back.
        pauses = rng.beta(1.5, 5.0, size=n)
        spend_scale = np.array([18.0, 35.0, 70.0])[plan] * rng.lognormal(0, 0.3, size=n)
        return pd.DataFrame(
            {
                "customer_id": ids,
                "signup": signup,
                "plan": plan,
                "region": region,
                "channel": channel,
                "device": device,
                "segment": segment,
                "engagement": engagement,
                "onset": onset,
                "decay_len": decay_len,
                "troubled": troubled,
                "pauses": pauses,
                "spend_scale": spend_scale,
            }
        )

    # -- one day ---------------------------------------------------------------------
    def events_for_day(self, day: dt.date) -> pd.DataFrame:
        """Typed events of ``day`` before defects: one row per event."""
        c = self.customers
        t = (day - self.epoch).days
        rng = _rng(self.seed, 1, day.toordinal())
        since_onset = t - c["onset"].to_numpy()
        decay = np.where(since_onset >= 0, np.exp(-np.clip(since_onset, 0, None) / (c["decay_len"].to_numpy() / 2.5)), 1)
        alive = (c["signup"].to_numpy() <= t) & (since_onset < c["decay_len"].to_numpy())
        weekday = 0.85 if day.weekday() >= 5 else 1.0
        # engagement_drop: a competitor launches; everyone comes back less often, for shorter.
        dropped = 0.5 if self._drift_on("engagement_drop", day) else 1.0
        away = _on_a_break(c["customer_id"].to_numpy(), c["pauses"].to_numpy(), t, self.seed)
        p_active = c["engagement"].to_numpy() * decay * weekday * _season(day) * dropped * np.where(away, 0.03, 1.0)
        active = alive & (rng.random(len(c)) < p_active)
        # Cancelling in the app: on its last day, a leaver who cancels comes once more, for long.
        cancelling = self._cancels_in_app(t) & (since_onset == c["decay_len"].to_numpy() - 1)
        active |= cancelling
        idx = np.flatnonzero(active)
        k = len(idx)
        eng = c["engagement"].to_numpy()[idx]
        decaying = since_onset[idx] >= 0
        n_sessions = 1 + rng.poisson(2.5 * eng * np.where(decaying, 0.5, 1.0) * dropped)
        n_orders = rng.binomial(1, np.clip(0.12 + 0.1 * c["plan"].to_numpy()[idx], 0, 1))
        # Support trouble: some of those who fade complain first; anyone may have a bad day.
        trouble = c["troubled"].to_numpy()[idx] & (since_onset[idx] >= -10)
        n_tickets = rng.binomial(1, np.where(trouble, 0.25, 0.03))
        counts = np.stack([n_sessions, n_orders, n_tickets], axis=1)  # (k, 3)
        per_customer = counts.sum(axis=1)
        total = int(per_customer.sum())
        owner = np.repeat(idx, per_customer)
        etype = np.concatenate([np.repeat(np.arange(3), row) for row in counts]) if k else np.array([], dtype=int)
        seq = np.arange(total) - np.repeat(np.cumsum(per_customer) - per_customer, per_customer)
        seconds = np.sort(rng.integers(0, 86_400, size=total))  # order within the day is arbitrary
        rng.shuffle(seconds)

        fading = np.repeat(np.where(decaying, 0.6, 1.0), per_customer)
        # The cancellation flow takes a while: a leaver's sessions on the last day are long.
        fading = np.where(np.repeat(cancelling[idx], per_customer), 5.0, fading)
        duration = np.where(etype == 0, np.round(rng.lognormal(6.0, 0.7, size=total) * dropped * fading), np.nan)
        spend_factor = 1.6 if self._drift_on("spend_shift", day) else 1.0
        amount = np.where(
            etype == 1,
            np.round(c["spend_scale"].to_numpy()[owner] * rng.lognormal(0, 0.25, size=total) * spend_factor, 2),
            np.nan,
        )
        channel = np.array(CHANNELS + (NEW_CHANNEL,), dtype=object)[c["channel"].to_numpy()[owner]]
        if self._drift_on("new_channel", day):
            # Customers who signed up since the switch come through the new channel (a third of them).
            start = (self.drift["new_channel"] - self.epoch).days
            new = (c["signup"].to_numpy()[owner] >= start) & (c["customer_id"].to_numpy()[owner] % 3 == 0)
            channel = np.where(new, NEW_CHANNEL, channel)
        device = np.array(DEVICES, dtype=object)[c["device"].to_numpy()[owner]]
        if self._drift_on("null_device", day):
            device = np.where(rng.random(total) < 0.6, None, device)

        customer_id = c["customer_id"].to_numpy()[owner]
        day_str = day.strftime("%Y%m%d")
        event_id = pd.Series(customer_id).astype(str).radd(f"e{day_str}-") + "-" + pd.Series(seq).astype(str)
        midnight = pd.Timestamp(day, tz="UTC")
        return pd.DataFrame(
            {
                "event_id": event_id.to_numpy(),
                "customer_id": customer_id,
                "event_time": midnight + pd.to_timedelta(seconds, unit="s"),
                "event_type": np.array(EVENT_TYPES, dtype=object)[etype],
                "duration_s": duration,
                "amount": amount,
                "plan": np.array(PLANS, dtype=object)[c["plan"].to_numpy()[owner]],
                "region": np.array(REGIONS, dtype=object)[c["region"].to_numpy()[owner]],
                "channel": channel,
                "device": device,
                "signup_date": (pd.Timestamp(self.epoch) + pd.to_timedelta(c["signup"].to_numpy()[owner], unit="D")).date,
            }
        )

    def _cancels_in_app(self, t: int) -> np.ndarray:
        """Who leaves through the in-app cancellation on day ``t`` (days after the epoch): seven in
        ten of those who leave, once the app offers it."""
        start = self.cancel_in_app_from
        if start is None or t < start:
            return np.zeros(self.n_customers, dtype=bool)
        return self._cancellers

    @cached_property
    def _cancellers(self) -> np.ndarray:
        """The customers who cancel in the app when they leave: static, like the population."""
        c = self.customers
        most = _mix(c["customer_id"].to_numpy(), self.seed, 13) % 10 < 7
        return most & (c["onset"].to_numpy() >= (self.cancel_in_app_from or 0))

    def _drift_on(self, scenario: str, day: dt.date) -> bool:
        start = self.drift.get(scenario)
        return start is not None and day >= start

    def churn_truth(self, day: dt.date, horizon: int = 30) -> pd.Series:
        """Whether each customer has no possible activity in (day, day+horizon]: ground truth for tests."""
        c = self.customers
        t = (day - self.epoch).days
        last_possible = c["onset"] + c["decay_len"] - 1
        return pd.Series(last_possible.to_numpy() <= t, index=c["customer_id"])

    # -- the Source interface ------------------------------------------------------
    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        days = pd.date_range(start.date(), (end - dt.timedelta(microseconds=1)).date(), freq="D")
        frames = [self.raw_day(d.date()) for d in days]
        return pa.concat_tables(frames) if frames else raw_schema(self.use_case).empty_table()

    def raw_day(self, day: dt.date) -> pa.Table:
        """The day's events as the source would deliver them: text, defects included."""
        events = self.events_for_day(day)
        table = conform(pa.Table.from_pandas(events, preserve_index=False), f"simulator {day}", self.use_case)
        if self.defect_rate > 0 and (not self.defect_days or day in self.defect_days):
            table = inject_defects(table, self.defect_rate, _rng(self.seed, 2, day.toordinal()))
        return table


def _onset_after(hazard: np.ndarray, start: np.ndarray, effort: np.ndarray) -> np.ndarray:
    """Days from ``start`` until a customer's hazard, which rises and falls with the seasons
    (more leave after the summer and in January), has used up its ``effort`` (an Exp(1) draw)."""
    grid = np.arange(-600, 1200)
    seasonal = 1 + 0.35 * np.sin(2 * np.pi * (grid - 200) / 365) + 0.25 * np.exp(-(((grid % 365) - 20) / 12.0) ** 2)
    cumulative = np.concatenate([[0.0], np.cumsum(seasonal)])  # cumulative[i]: grid days before grid[i]
    at_start = cumulative[np.clip(start - grid[0], 0, len(grid))]
    end = np.searchsorted(cumulative, at_start + effort / hazard)
    return np.maximum(end + grid[0] - start, 0).astype(np.int64)


def _season(day: dt.date) -> float:
    """Activity over the year: a summer lull and a December peak."""
    doy = day.timetuple().tm_yday
    return float(1 - 0.12 * np.exp(-(((doy - 215) / 25.0) ** 2)) + 0.10 * np.exp(-(((doy - 350) / 10.0) ** 2)))


def _on_a_break(ids: np.ndarray, propensity: np.ndarray, t: int, seed: int) -> np.ndarray:
    """Whether each customer is on a break on day ``t``: deterministic per (seed, customer, block).

    Time falls into 60-day blocks, shifted per customer; in each block a customer takes a break
    with probability ``propensity``, of 7-35 days from an offset within the block. Any day is a
    pure function of its arguments, so no day depends on having generated the ones before.
    """
    phase = _mix(ids, seed, 11) % 60
    block = (t + phase) // 60
    h = _mix(ids * 1_000_003 + block, seed, 12)
    takes = (h % 10_000) / 10_000 < propensity
    offset = (h // 10_000) % 30
    length = 7 + (h // 300_000) % 29
    within = (t + phase) % 60
    return takes & (within >= offset) & (within < offset + length)


def _mix(x: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """splitmix64 of (x, seed, salt): a cheap, well-spread hash of integers, vectorised."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64) + np.uint64(salt)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def inject_defects(table: pa.Table, rate: float, rng: np.random.Generator) -> pa.Table:
    """Spoil about ``rate`` of the rows, spread over every kind of defect."""
    df = table.to_pandas()
    n = len(df)
    n_bad = int(round(rate * n))
    if n_bad == 0:
        return table
    victims = rng.choice(n, size=min(n_bad, n), replace=False)
    kinds = np.array(DEFECT_KINDS)[np.arange(len(victims)) % len(DEFECT_KINDS)]
    duplicates = victims[kinds == "duplicate"]
    for row, kind in zip(victims, kinds):
        if kind == "null_key":
            df.iat[row, df.columns.get_loc("customer_id" if row % 2 else "event_id")] = None
        elif kind == "malformed":
            col, value = [("amount", "12,50 EUR"), ("event_time", "yesterday"), ("customer_id", "C-12")][row % 3]
            df.iat[row, df.columns.get_loc(col)] = value
        elif kind == "out_of_range":
            col, value = [("amount", "-40.00"), ("duration_s", "999999"), ("event_time", "1999-01-01T00:00:00Z")][row % 3]
            df.iat[row, df.columns.get_loc(col)] = value
        elif kind == "bad_category":
            col, value = [("event_type", "sesion"), ("plan", "gold"), ("region", "mars")][row % 3]
            df.iat[row, df.columns.get_loc(col)] = value
    df = pd.concat([df, df.iloc[duplicates]], ignore_index=True)
    return pa.Table.from_pandas(df, schema=table.schema, preserve_index=False)
