"""The data contract of raw events: every defect is caught, named, and no row is lost."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from sluice.core.contracts import (
    ContractResult,
    ContractViolation,
    events_contract,
    parse_events,
    split_by_contract,
)
from sluice.core.usecase import EXTRA_COLUMN, load_use_case

DAY = dt.date(2026, 3, 1)
UC = load_use_case("churn")

EVENT_TYPES_CHECK = "event_type: isin(('session', 'order', 'support_ticket'))"
PLAN_CHECK = "plan: isin(('basic', 'standard', 'premium'))"
REGION_CHECK = "region: isin(('na', 'eu', 'apac', 'latam'))"
DAY_START_CHECK = "event_time: greater_than_or_equal_to(2026-03-01 00:00:00+00:00)"
DAY_END_CHECK = "event_time: less_than(2026-03-02 00:00:00+00:00)"


def spoil(raw: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    out = raw.copy()
    out.loc[row, column] = value
    return out


def assert_no_row_lost(raw: pd.DataFrame, result: ContractResult) -> None:
    # Every row delivered is valid, quarantined, or an exact copy of another (removed and counted).
    assert len(result.valid) + len(result.quarantined) + result.duplicates == len(raw)
    assert result.rows_in == len(raw)
    # Every distinct raw row comes out exactly once (as text in quarantine, typed in valid).
    compared = [c for c in [*UC.raw_fields, EXTRA_COLUMN] if c in raw.columns]
    distinct = raw[compared].drop_duplicates()
    assert result.duplicates == len(raw) - len(distinct)
    out_ids = list(result.valid["event_id"]) + list(result.quarantined["event_id"])
    assert sorted(map(str, out_ids)) == sorted(map(str, distinct["event_id"]))


# -- one defect per case: (column, bad value, the "column: check" it must fail) ------------------------
DEFECTS = [
    pytest.param("event_id", None, "event_id: not_nullable", id="null-event_id"),
    pytest.param("customer_id", None, "customer_id: not_nullable", id="null-customer_id"),
    pytest.param("amount", "12,50 EUR", "amount: parse_number", id="malformed-amount"),
    pytest.param("event_time", "yesterday", "event_time: parse_timestamp", id="malformed-event_time"),
    pytest.param("customer_id", "C-12", "customer_id: parse_integer", id="malformed-customer_id"),
    pytest.param("customer_id", "1.5", "customer_id: parse_integer", id="fractional-customer_id"),
    pytest.param("signup_date", "30/06/2025", "signup_date: parse_date", id="malformed-signup_date"),
    # A value cut short (the last field of a truncated file): pandas alone would read 3 November, 10:05.
    pytest.param("signup_date", "2025-11-3", "signup_date: parse_date", id="cut-signup_date"),
    pytest.param("event_time", "2026-03-01T10:0", "event_time: parse_timestamp", id="cut-event_time"),
    pytest.param("duration_s", "NaN", "duration_s: parse_number", id="nan-text-duration"),
    pytest.param("amount", "-40.00", "amount: in_range(0, 10000)", id="negative-amount"),
    pytest.param("amount", "10000.01", "amount: in_range(0, 10000)", id="huge-amount"),
    pytest.param("duration_s", "999999", "duration_s: in_range(0, 86400)", id="huge-duration"),
    pytest.param("event_time", "1999-01-01T00:00:00Z", DAY_START_CHECK, id="event_time-before-day"),
    pytest.param("event_time", "2026-02-28T23:59:59Z", DAY_START_CHECK, id="event_time-just-before-day"),
    pytest.param("event_time", "2026-03-02T00:00:00Z", DAY_END_CHECK, id="event_time-next-midnight"),
    pytest.param("event_time", "2026-03-01T23:30:00-02:00", DAY_END_CHECK, id="event_time-offset-past-midnight"),
    pytest.param("customer_id", "0", "customer_id: greater_than_or_equal_to(1)", id="customer_id-zero"),
    pytest.param("signup_date", "2026-03-02", "signup_date: less_than_or_equal_to(2026-03-01 00:00:00)",
                 id="signup-after-day"),
    pytest.param("event_type", "sesion", EVENT_TYPES_CHECK, id="bad-event_type"),
    pytest.param("plan", "gold", PLAN_CHECK, id="bad-plan"),
    pytest.param("region", "mars", REGION_CHECK, id="bad-region"),
    pytest.param("channel", None, "channel: not_nullable", id="null-channel"),
    pytest.param("event_id", "bad id; DROP", "event_id: str_matches('^[A-Za-z0-9_.:\\-]{1,128}$')", id="bad-event_id"),
]


@pytest.mark.parametrize(("column", "value", "reason"), DEFECTS)
def test_each_defect_is_quarantined_with_its_column_and_check(helpers, column, value, reason):
    raw = helpers.raw_rows(6)
    bad = spoil(raw, 2, column, value)
    spoiled_id = bad.loc[2, "event_id"]

    result = split_by_contract(bad, DAY, UC)

    assert_no_row_lost(bad, result)
    assert len(result.quarantined) == 1
    row = result.quarantined.iloc[0]
    assert row["failed_columns"] == column
    assert row["failed_checks"] == reason
    assert result.failures == {reason: 1}
    # The quarantined row is the raw text as delivered, not the parsed value.
    assert row[column] == value or (value is None and pd.isna(row[column]))
    if column != "event_id":
        assert row["event_id"] == spoiled_id
    assert spoiled_id not in set(result.valid["event_id"]) or column == "event_id"
    assert len(result.valid) == 5


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("device", None),  # device may be unknown
        ("duration_s", None),
        ("amount", None),
        ("amount", "0"),
        ("amount", "10000"),
        ("duration_s", "86400"),
        ("event_time", "2026-03-01T00:00:00Z"),  # first instant of the day
        ("event_time", "2026-03-01T23:59:59.999999Z"),
        ("event_time", "2026-03-01T10:00:00+05:00"),  # an offset still inside the day in UTC
        ("event_time", "2026-03-01 12:00:00"),  # naive: read as UTC
        ("customer_id", "100002.0"),  # an integral number written as a float
        ("signup_date", "2026-03-01"),  # signed up on the day itself
    ],
)
def test_allowed_values_pass(helpers, column, value):
    raw = spoil(helpers.raw_rows(6), 1, column, value)
    result = split_by_contract(raw, DAY, UC)
    assert result.failures == {}
    assert len(result.quarantined) == 0
    assert len(result.valid) == 6


def test_clean_rows_pass_and_valid_frame_is_typed(helpers):
    raw = helpers.raw_rows(9)
    result = split_by_contract(raw, DAY, UC)
    assert result.failures == {}
    assert result.invalid_share == 0.0
    assert result.describe() == "no failures"
    valid = result.valid
    assert len(valid) == 9
    assert valid["customer_id"].dtype == np.dtype("int64")
    assert isinstance(valid["event_time"].dtype, pd.DatetimeTZDtype)
    assert str(valid["event_time"].dt.tz) == "UTC"
    assert valid["duration_s"].dtype == np.dtype("float64")
    assert valid["amount"].dtype == np.dtype("float64")
    assert all(isinstance(d, dt.date) and not isinstance(d, dt.datetime) for d in valid["signup_date"])
    assert (valid["event_time"] >= pd.Timestamp(DAY, tz="UTC")).all()
    # Values are parsed, not just re-labelled.
    orders = valid[valid["event_type"] == "order"]
    assert orders["amount"].tolist() == [19.99] * len(orders)
    assert sorted(valid["customer_id"].unique().tolist()) == [100001, 100002, 100003, 100004]
    t = valid.set_index("event_id").loc["e20260301-1", "event_time"]
    assert t == pd.Timestamp("2026-03-01T03:01:07", tz="UTC")


def test_exact_copies_are_a_redelivery_removed_and_counted_not_quarantined(helpers):
    raw = helpers.raw_rows(5)
    dup = pd.concat([raw, raw.iloc[[1]], raw.iloc[[1]], raw.iloc[[3]]], ignore_index=True)

    result = split_by_contract(dup, DAY, UC)

    assert_no_row_lost(dup, result)
    assert len(result.valid) == 5
    assert result.valid["event_id"].is_unique
    assert set(result.valid["event_id"]) == set(raw["event_id"])
    assert result.duplicates == 3
    assert len(result.quarantined) == 0
    assert result.failures == {}
    assert result.invalid_share == 0.0
    assert len(result.valid) + len(result.quarantined) + result.duplicates == len(dup) == result.rows_in
    # The kept copy is the event as delivered once.
    pd.testing.assert_frame_equal(result.valid, split_by_contract(raw, DAY, UC).valid)


def test_the_same_event_id_with_other_content_is_quarantined_as_not_unique(helpers):
    raw = helpers.raw_rows(5)
    other_1 = raw.iloc[[1]].assign(amount="55.00", event_type="order")  # same id, different content
    other_3 = raw.iloc[[3]].assign(plan="premium")
    again_3 = raw.iloc[[3]].assign(region="na")
    copy_0 = raw.iloc[[0]]  # an exact copy: removed, not quarantined
    mixed = pd.concat([raw, other_1, other_3, again_3, copy_0], ignore_index=True)

    result = split_by_contract(mixed, DAY, UC)

    assert_no_row_lost(mixed, result)
    assert result.duplicates == 1
    assert len(result.valid) == 5 and result.valid["event_id"].is_unique
    assert set(result.valid["event_id"]) == set(raw["event_id"])
    assert sorted(result.quarantined["event_id"]) == sorted([raw.loc[1, "event_id"]] + [raw.loc[3, "event_id"]] * 2)
    assert set(result.quarantined["failed_checks"]) == {"event_id: field_uniqueness"}
    assert set(result.quarantined["failed_columns"]) == {"event_id"}
    assert result.failures == {"event_id: field_uniqueness": 3}
    assert len(result.valid) + len(result.quarantined) + result.duplicates == len(mixed) == result.rows_in
    assert result.invalid_share == pytest.approx(3 / len(mixed))
    # The ids are named where the failure is reported (the ContractViolation, the log).
    assert result.conflicting_ids == sorted({raw.loc[1, "event_id"], raw.loc[3, "event_id"]})
    assert result.describe() == f"event_id: field_uniqueness (3 rows: id {', '.join(result.conflicting_ids)})"


def test_which_duplicate_is_kept_does_not_depend_on_arrival_order(helpers):
    raw = helpers.raw_rows(4)
    other = raw.iloc[[2]].assign(device="web", duration_s="999")  # same event id, different content
    a = pd.concat([raw, other], ignore_index=True)
    b = pd.concat([other, raw.iloc[::-1]], ignore_index=True)

    ra, rb = split_by_contract(a, DAY, UC), split_by_contract(b, DAY, UC)

    pd.testing.assert_frame_equal(ra.valid, rb.valid)
    pd.testing.assert_frame_equal(ra.quarantined, rb.quarantined)
    assert len(ra.quarantined) == 1


def test_a_valid_copy_of_an_event_wins_over_an_invalid_duplicate(helpers):
    raw = helpers.raw_rows(3)
    broken_first_delivery = raw.iloc[[1]].assign(amount="12,50 EUR")
    both = pd.concat([broken_first_delivery, raw], ignore_index=True)
    result = split_by_contract(both, DAY, UC)
    assert_no_row_lost(both, result)
    assert result.duplicates == 0
    assert sorted(result.valid["event_id"]) == sorted(raw["event_id"])
    assert result.quarantined["failed_checks"].tolist() == ["amount: parse_number"]


def test_nulls_in_event_id_are_not_reported_as_duplicates(helpers):
    raw = helpers.raw_rows(5)
    raw.loc[[0, 3], "event_id"] = None
    result = split_by_contract(raw, DAY, UC)
    assert result.failures == {"event_id: not_nullable": 2}
    assert_no_row_lost(raw, result)


def test_a_row_with_several_defects_lists_all_of_them_once(helpers):
    raw = helpers.raw_rows(6)
    raw.loc[4, ["amount", "plan", "event_time"]] = ["12,50 EUR", "gold", "1999-01-01T00:00:00Z"]
    result = split_by_contract(raw, DAY, UC)
    assert len(result.quarantined) == 1
    row = result.quarantined.iloc[0]
    assert row["failed_columns"] == "amount,event_time,plan"
    assert row["failed_checks"] == f"amount: parse_number; {DAY_START_CHECK}; {PLAN_CHECK}"
    assert result.failures == {"amount: parse_number": 1, DAY_START_CHECK: 1, PLAN_CHECK: 1}


def test_an_unparseable_value_reports_the_parse_not_a_null(helpers):
    # A value that fails to parse is null afterwards; only the parse failure is reported.
    raw = spoil(helpers.raw_rows(4), 0, "event_time", "yesterday")
    result = split_by_contract(raw, DAY, UC)
    assert result.failures == {"event_time: parse_timestamp": 1}
    assert "not_nullable" not in result.quarantined.iloc[0]["failed_checks"]


def test_failures_count_rows_per_column_and_check(helpers):
    raw = helpers.raw_rows(12)
    raw.loc[[0, 1, 2], "plan"] = "gold"
    raw.loc[[3, 4], "amount"] = "12,50 EUR"
    raw.loc[5, "customer_id"] = None
    raw.loc[2, "region"] = "mars"  # row 2 fails twice; counted once per check

    result = split_by_contract(raw, DAY, UC)

    assert result.failures == {
        PLAN_CHECK: 3,
        "amount: parse_number": 2,
        "customer_id: not_nullable": 1,
        REGION_CHECK: 1,
    }
    assert len(result.quarantined) == 6
    assert result.invalid_share == pytest.approx(6 / 12)
    assert result.describe().startswith(f"{PLAN_CHECK} (3 rows); amount: parse_number (2 rows)")
    assert_no_row_lost(raw, result)


def test_quarantine_has_the_columns_of_the_quarantine_table(helpers):
    raw = spoil(helpers.raw_rows(3), 0, "plan", "gold")
    result = split_by_contract(raw, DAY, UC)
    expected = [c for c in UC.tables.quarantine.columns if c != "ds"]
    assert list(result.quarantined.columns) == expected
    # raw text is kept: nothing in quarantine is parsed
    assert result.quarantined.loc[0, "customer_id"] == raw.loc[0, "customer_id"]
    assert isinstance(result.quarantined.loc[0, "customer_id"], str)


def test_every_row_bad_is_all_quarantined(helpers):
    raw = helpers.raw_rows(5).assign(event_time="yesterday")
    result = split_by_contract(raw, DAY, UC)
    assert len(result.valid) == 0
    assert len(result.quarantined) == 5
    assert result.invalid_share == 1.0
    assert result.failures == {"event_time: parse_timestamp": 5}


def test_empty_input_gives_empty_result(helpers):
    result = split_by_contract(helpers.raw_rows(0), DAY, UC)
    assert len(result.valid) == 0 and len(result.quarantined) == 0
    assert result.invalid_share == 0.0
    assert result.failures == {}


def test_input_index_and_extra_columns_do_not_matter(helpers):
    raw = helpers.raw_rows(6)
    odd = raw.set_axis(raw.index * 10 + 7).assign(extra="x")
    odd.loc[27, "plan"] = "gold"  # positional row 2
    result = split_by_contract(odd, DAY, UC)
    assert result.failures == {PLAN_CHECK: 1}
    assert result.quarantined.loc[0, "event_id"] == raw.loc[2, "event_id"]
    assert "extra" not in result.valid.columns


def test_event_time_window_follows_the_day_argument(helpers):
    raw = helpers.raw_rows(3)
    # The same rows are out of range when validated as the events of another day.
    result = split_by_contract(raw, DAY + dt.timedelta(days=1), UC)
    assert len(result.quarantined) == 3
    assert result.failures == {"event_time: greater_than_or_equal_to(2026-03-02 00:00:00+00:00)": 3}


def test_parse_events_reports_each_parse_failure():
    raw = pd.DataFrame(
        {
            "customer_id": ["7", "C-12", None],
            "event_time": ["2026-03-01T01:00:00Z", "2026-03-01T02:00:00Z", "yesterday"],
            "duration_s": ["1", "x", None],
            "amount": [None, "1.5", "12,50 EUR"],
            "signup_date": ["2026-01-01", "2026-01-02", "2026/01/03"],
        }
    )
    typed, failures = parse_events(raw, UC)
    got = set(zip(failures["index"], failures["column"], failures["check"]))
    assert got == {
        (1, "customer_id", "parse_integer"),
        (2, "event_time", "parse_timestamp"),
        (1, "duration_s", "parse_number"),
        (2, "amount", "parse_number"),
        (2, "signup_date", "parse_date"),
    }
    assert str(typed["customer_id"].dtype) == "Int64"
    assert typed.loc[0, "customer_id"] == 7
    assert typed["amount"].tolist()[1] == 1.5


def test_events_contract_is_a_pandera_schema_for_the_day():
    schema = events_contract(DAY, UC)
    assert isinstance(schema, pa.DataFrameSchema)
    assert set(schema.columns) == set(UC.raw_fields)
    assert schema.columns["device"].nullable
    assert not schema.columns["event_id"].nullable
    # event_id uniqueness is enforced among otherwise-valid rows by split_by_contract (tested below)


# -- whole-frame problems ------------------------------------------------------------------------


def test_a_wrongly_typed_column_quarantines_its_rows_with_a_dtype_check(helpers):
    # pandera reports a dtype mismatch per row here, so the rows land in quarantine (none lost).
    raw = helpers.raw_rows(4)
    raw["event_type"] = np.arange(4)
    result = split_by_contract(raw, DAY, UC)
    assert len(result.valid) == 0
    assert result.failures == {"event_type: dtype('str')": 4, EVENT_TYPES_CHECK: 4}
    assert_no_row_lost(raw, result)


def test_a_check_that_cannot_run_on_the_column_breaks_the_contract_as_a_whole(helpers):
    # A failure without a row (here: a string check on a float column) refuses the whole frame.
    raw = helpers.raw_rows(4)
    raw["event_id"] = np.nan
    with pytest.raises(ContractViolation, match=r"break the contract as a whole: event_id: str_matches"):
        split_by_contract(raw, DAY, UC)


@pytest.mark.parametrize("missing", [["amount"], ["plan", "region"]])
def test_a_missing_column_raises_contract_violation_naming_it(helpers, missing):
    raw = helpers.raw_rows(4).drop(columns=missing)
    with pytest.raises(ContractViolation, match="|".join(missing)):
        split_by_contract(raw, DAY, UC)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("value", ["inf", "-inf", "99999999999999999999"])
def test_an_out_of_int64_customer_id_is_quarantined_not_a_crash(helpers, value):
    raw = spoil(helpers.raw_rows(4), 1, "customer_id", value)
    result = split_by_contract(raw, DAY, UC)
    assert result.failures == {"customer_id: parse_integer": 1}
    assert len(result.valid) == 3


# -- a use case without an event id field (purchases): a row's content is its id ------------------


def purchase_rows(n: int) -> pd.DataFrame:
    rows = [
        {"customer_id": f"C{100_001 + i % 3:06d}", "purchased_at": f"2026-03-01T{i % 24:02d}:15:00Z",
         "amount": f"{10 + i}.50", "quantity": str(1 + i % 4), "category": "grocery", EXTRA_COLUMN: None}
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=[*load_use_case("purchases").raw_fields, EXTRA_COLUMN])


def test_without_an_id_field_events_get_content_ids_and_copies_are_removed():
    purchases = load_use_case("purchases")
    raw = purchase_rows(4)
    delivered = pd.concat([raw, raw.iloc[[2]]], ignore_index=True)
    result = split_by_contract(delivered, DAY, purchases)
    assert (len(result.valid), len(result.quarantined), result.duplicates) == (4, 0, 1)
    assert result.rows_in == len(delivered)
    ids = result.valid["event_id"]
    assert ids.is_unique and ids.str.fullmatch(r"h[0-9a-f]{24}").all()
    # The id is the content's: the same rows in another order get the same ids.
    again = split_by_contract(delivered.iloc[::-1], DAY, purchases)
    pd.testing.assert_frame_equal(again.valid, result.valid)


def test_without_an_id_field_a_day_with_no_valid_row_is_quarantined_not_a_crash():
    purchases = load_use_case("purchases")
    raw = purchase_rows(3).assign(purchased_at="yesterday")
    result = split_by_contract(raw, DAY, purchases)
    assert len(result.valid) == 0 and "event_id" in result.valid.columns
    assert len(result.quarantined) == 3 and result.invalid_share == 1.0
    assert result.failures == {"purchased_at: parse_timestamp": 3}
    empty = split_by_contract(raw.iloc[:0], DAY, purchases)
    assert (len(empty.valid), len(empty.quarantined), empty.rows_in) == (0, 0, 0)
