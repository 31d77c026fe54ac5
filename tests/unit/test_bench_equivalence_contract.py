"""The contract's vectorised paths (made for benchmarks/etl.py) give what its plain rules give.

``parse_events`` casts the common text forms with Arrow and ``split_by_contract`` lets
pandera validate only the rows some check may fail; the plain definitions (pandas'
parsers on every value, pandera on every row) must give the very same frames, on values
chosen to sit on the edges of both.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from sluice.core import contracts as C
from sluice.core.usecase import load_use_case

DAY = dt.date(2026, 3, 1)
UC = load_use_case("churn")

EDGES = {
    "customer_id": ["7", "-3", "0", "100002.0", "999999999999999", "9999999999999999", "C-12", " 12", "1e3", None],
    "event_time": ["2026-03-01T10:00:00Z", "2026-03-01T10:00:00.123456789Z", "2026-02-30T10:00:00Z",
                   "2026-03-01T24:00:00Z", "2026-03-01 12:00:00", "2026-03-01T10:00:00+05:00", "1999-01-01T00:00:00Z",
                   "2026-03-01T10:0", "yesterday", "２０２６-03-01T10:00:00Z"],
    "signup_date": ["2026-03-01", "2024-02-29", "2026-02-29", "2026-13-01", "1900-01-01", "2262-04-12",
                    "2025-11-3", "30/06/2025", "٢٠٢٥-01-01", None],
    "channel": ["organic", "a_b9", "Organic", "organic\n", "organic ", "ä", "x" * 41, "1abc", "", "organic\x0b"],
}


def test_parse_events_equals_the_rules_on_every_value():
    n = len(EDGES["customer_id"])
    raw = pd.DataFrame({**EDGES, "duration_s": ["1"] * n, "amount": [None] * n})
    typed, failures = C.parse_events(raw, UC)
    rules = {"customer_id": C._integers, "event_time": C._timestamps, "signup_date": C._dates}
    for column, parse in rules.items():
        pd.testing.assert_series_equal(typed[column], parse(raw[column]), check_names=False)
    assert set(failures["column"]) == {"customer_id", "event_time", "signup_date"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validating_the_suspect_rows_only_equals_validating_them_all(helpers, monkeypatch, seed):
    raw = helpers.raw_rows(40)
    rng = np.random.default_rng(seed)
    for column, values in EDGES.items():  # spoil a random third of the cells with the edge values
        rows = rng.choice(len(raw), size=len(raw) // 3, replace=False)
        raw.loc[rows, column] = rng.choice(np.array(values, dtype=object), size=len(rows))
    fast = C.split_by_contract(raw, DAY, UC)
    monkeypatch.setattr(C, "rows_to_validate", lambda typed, schema: None)  # pandera on every row
    plain = C.split_by_contract(raw, DAY, UC)
    pd.testing.assert_frame_equal(fast.valid, plain.valid)
    pd.testing.assert_frame_equal(fast.quarantined, plain.quarantined)
    assert fast.failures == plain.failures and fast.failures
