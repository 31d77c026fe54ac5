"""PostgresSource against a real PostgreSQL server (a throwaway database per session).

The churn use case reads ``public.events`` (an event id, a kind column); the purchases use case
reads a table of its own shape (a string customer id, no event id, no kind column).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass

import pandas as pd
import psycopg2
import pyarrow as pa
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from sluice.core.contracts import split_by_contract
from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, UseCase, load_use_case
from sluice.edges.lake import Lake
from sluice.edges.sources import SourceError, extra_fields, make_source, raw_schema
from sluice.edges.sources.postgres import PostgresSource
from sluice.settings import load_settings
from sluice.stages import etl as pipeline
from usecases.churn.simulator import SimulatorSource
from usecases.purchases.generator import PurchaseGenerator

pytestmark = pytest.mark.integration

CHURN = load_use_case("churn")
PURCHASES = load_use_case("purchases")
RAW_FIELDS = CHURN.raw_fields
RAW_SCHEMA = raw_schema(CHURN)
RAW_EVENTS = CHURN.tables.raw

UTC = dt.UTC
DAYS = [dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)]
ODD_DAY = dt.date(2026, 3, 10)  # rows with nulls, empty strings and look-alike texts
SIM = SimulatorSource(n_customers=500, seed=5)

DDL = """
CREATE TABLE {table} (
    event_id text PRIMARY KEY,
    customer_id bigint,
    event_time timestamptz NOT NULL,
    event_type text,
    duration_s double precision,
    amount numeric(12,2),
    plan text,
    region text,
    channel text,
    device text,
    signup_date date
)
"""

INSERT = (
    "INSERT INTO {table} (event_id, customer_id, event_time, event_type, duration_s, amount, plan, region, "
    "channel, device, signup_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

# Rows right at the edges of the days: (event_id, event_time as PostgreSQL reads it, UTC time).
EDGES = [
    ("edge-0301-start", "2026-03-01 00:00:00+00", dt.datetime(2026, 3, 1, tzinfo=UTC)),
    (
        "edge-0301-last-us",
        "2026-03-01 23:59:59.999999+00",
        dt.datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC),
    ),
    ("edge-0302-start", "2026-03-02 00:00:00+00", dt.datetime(2026, 3, 2, tzinfo=UTC)),
    (
        "edge-0228-last-us",
        "2026-02-28 23:59:59.999999+00",
        dt.datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    ),
    # Local midnight+1:30 in UTC+2 is still the evening of 1 March in UTC.
    ("edge-0301-offset", "2026-03-02 01:30:00+02", dt.datetime(2026, 3, 1, 23, 30, tzinfo=UTC)),
    ("edge-0303-last-s", "2026-03-03 23:59:59+00", dt.datetime(2026, 3, 3, 23, 59, 59, tzinfo=UTC)),
    ("edge-0304-start", "2026-03-04 00:00:00+00", dt.datetime(2026, 3, 4, tzinfo=UTC)),
]


@dataclass(frozen=True)
class LoadedEvents:
    dsn: str
    table: str
    times: dict[str, dt.datetime]  # event_id -> event time (UTC) of every row loaded

    def ids_between(self, start: dt.datetime, end: dt.datetime) -> set[str]:
        return {event_id for event_id, t in self.times.items() if start <= t < end}


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
    return start, start + dt.timedelta(days=1)


def copy_frame(cur, table: str, frame: pd.DataFrame) -> None:
    """COPY a frame in: an unquoted empty CSV field is NULL."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=True, na_rep="")
    buffer.seek(0)
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
            sql.Identifier(*table.split(".")), sql.SQL(", ").join(map(sql.Identifier, frame.columns))
        ),
        buffer,
    )


def create_events_table(cur, table: str) -> None:
    cur.execute(sql.SQL(DDL).format(table=sql.Identifier(*table.split("."))))


def insert_row(cur, table: str, row: tuple) -> None:
    cur.execute(sql.SQL(INSERT).format(table=sql.Identifier(*table.split("."))), row)


@pytest.fixture(scope="module")
def events(pg_dsn: str) -> LoadedEvents:
    table = "public.events"
    times: dict[str, dt.datetime] = {}
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.events, public.x")
        create_events_table(cur, table)
        cur.execute("CREATE TABLE public.x (id int)")  # the target of the injection attempts
        for day in DAYS:
            frame = SIM.events_for_day(day)
            copy_frame(cur, table, frame[RAW_FIELDS])
            times.update(zip(frame["event_id"], (t.to_pydatetime() for t in frame["event_time"])))
        for event_id, pg_time, utc_time in EDGES:
            insert_row(
                cur,
                table,
                (
                    event_id,
                    999001,
                    pg_time,
                    "order",
                    None,
                    12.5,
                    "basic",
                    "eu",
                    "referral",
                    None,
                    dt.date(2025, 6, 1),
                ),
            )
            times[event_id] = utc_time
        odd_time = dt.datetime.combine(ODD_DAY, dt.time(12), tzinfo=UTC)
        odd_rows = [
            # NULL device, amount and duration.
            (
                "odd-null",
                999002,
                odd_time,
                "session",
                None,
                None,
                "basic",
                "na",
                "organic",
                None,
                dt.date(2025, 1, 1),
            ),
            # Empty strings are values, not NULLs.
            ("odd-empty", 999003, odd_time, "order", 0.0, 0, "", "eu", "", "", dt.date(2025, 1, 1)),
            # Texts that merely look like NULL markers.
            (
                "odd-literal",
                999004,
                odd_time,
                "session",
                1.5,
                7,
                "NULL",
                "NA",
                "null",
                "N/A",
                dt.date(2025, 1, 1),
            ),
        ]
        for row in odd_rows:
            insert_row(cur, table, row)
            times[row[0]] = odd_time
    return LoadedEvents(dsn=pg_dsn, table=table, times=times)


def db_count(loaded: LoadedEvents, start: dt.datetime, end: dt.datetime) -> int:
    with psycopg2.connect(loaded.dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM public.events WHERE event_time >= %s AND event_time < %s", (start, end)
        )
        return cur.fetchone()[0]


def table_exists(dsn: str, name: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return cur.fetchone()[0]


def typed(frame: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    result = split_by_contract(frame, day, CHURN)
    assert result.failures == {}
    assert result.duplicates == 0
    return result.valid.sort_values("event_id").reset_index(drop=True)


# -- extract ----------------------------------------------------------------------------


def test_extract_returns_exactly_the_half_open_interval(events: LoadedEvents) -> None:
    source = PostgresSource(events.dsn, CHURN, events.table)
    for day in DAYS:
        start, end = day_bounds(day)
        table = source.extract(start, end)
        ids = table.column("event_id").to_pylist()
        assert len(ids) == len(set(ids))
        assert set(ids) == events.ids_between(start, end)
        assert len(ids) == db_count(events, start, end)

    first = set(source.extract(*day_bounds(DAYS[0])).column("event_id").to_pylist())
    assert {"edge-0301-start", "edge-0301-last-us", "edge-0301-offset"} <= first
    assert not {"edge-0302-start", "edge-0228-last-us"} & first
    third = set(source.extract(*day_bounds(DAYS[2])).column("event_id").to_pylist())
    assert "edge-0303-last-s" in third and "edge-0304-start" not in third

    # Several days at once are the union of the days; an empty interval is empty, with the schema.
    start, _ = day_bounds(DAYS[0])
    _, end = day_bounds(DAYS[-1])
    assert set(source.extract(start, end).column("event_id").to_pylist()) == events.ids_between(start, end)
    empty = source.extract(dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 2, tzinfo=UTC))
    assert empty.num_rows == 0 and empty.schema == RAW_SCHEMA

    # Bounds given in another time zone mean the same instants.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    shifted = source.extract(
        dt.datetime(2026, 3, 1, 2, tzinfo=plus_two), dt.datetime(2026, 3, 2, 2, tzinfo=plus_two)
    )
    assert set(shifted.column("event_id").to_pylist()) == first


def test_extract_renders_text_independent_of_the_session_time_zone(events: LoadedEvents) -> None:
    # A session time zone far from UTC must not leak into the rendered times.
    dsn = make_dsn(events.dsn, options="-c TimeZone=Pacific/Chatham")
    table = PostgresSource(dsn, CHURN, events.table).extract(*day_bounds(DAYS[0]))
    assert table.schema == RAW_SCHEMA
    assert all(pa.types.is_string(f.type) for f in table.schema)
    rows = {r["event_id"]: r for r in table.to_pylist()}

    assert rows["edge-0301-offset"]["event_time"] == "2026-03-01T23:30:00.000000Z"
    assert rows["edge-0301-start"]["event_time"] == "2026-03-01T00:00:00.000000Z"
    assert rows["edge-0301-last-us"]["event_time"] == "2026-03-01T23:59:59.999999Z"
    edge = rows["edge-0301-start"]
    assert edge["customer_id"] == "999001"
    assert edge["amount"] == "12.50"
    assert edge["signup_date"] == "2025-06-01"
    assert edge["duration_s"] is None and edge["device"] is None
    stamp = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
    assert all(stamp.match(r["event_time"]) for r in rows.values())
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["signup_date"]) for r in rows.values())
    # Ordered by event time.
    times = [r["event_time"] for r in table.to_pylist()]
    assert times == sorted(times)


def test_clean_rows_parse_back_through_the_contract_to_the_simulated_events(events: LoadedEvents) -> None:
    source = PostgresSource(events.dsn, CHURN, events.table)
    for day in DAYS:
        extracted = source.extract(*day_bounds(day)).to_pandas()
        sim_ids = set(SIM.events_for_day(day)["event_id"])
        from_db = typed(extracted, day)
        # The simulator's own text rendering of the same events, typed by the same contract.
        expected = typed(SIM.raw_day(day).to_pandas(), day)
        only_sim = from_db[from_db["event_id"].isin(sim_ids)].reset_index(drop=True)
        assert len(only_sim) == len(expected) > 100
        pd.testing.assert_frame_equal(only_sim, expected, check_exact=True)
        # Nulls came through as nulls (no order has a duration, no session an amount).
        assert only_sim.loc[only_sim["event_type"] == "session", "amount"].isna().all()
        assert only_sim.loc[only_sim["event_type"] == "order", "duration_s"].isna().all()
        assert only_sim.loc[only_sim["event_type"] == "order", "amount"].notna().all()


def test_nulls_stay_nulls_and_empty_strings_stay_empty(events: LoadedEvents) -> None:
    table = PostgresSource(events.dsn, CHURN, events.table).extract(*day_bounds(ODD_DAY))
    rows = {r["event_id"]: r for r in table.to_pylist()}
    assert {"odd-null", "odd-empty"} <= set(rows)

    null = rows["odd-null"]
    assert null["device"] is None
    assert null["amount"] is None
    assert null["duration_s"] is None
    empty = rows["odd-empty"]
    assert empty["device"] == ""
    assert empty["plan"] == ""
    assert empty["channel"] == ""
    assert empty["amount"] == "0.00"
    assert empty["duration_s"] == "0"


def test_texts_that_look_like_null_markers_stay_text(events: LoadedEvents) -> None:
    table = PostgresSource(events.dsn, CHURN, events.table).extract(*day_bounds(ODD_DAY))
    literal = {r["event_id"]: r for r in table.to_pylist()}["odd-literal"]
    assert (literal["plan"], literal["region"], literal["channel"], literal["device"]) == (
        "NULL",
        "NA",
        "null",
        "N/A",
    )


# -- table names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "events; DROP TABLE x",
        "public.events; DROP TABLE x",
        'events"; DROP TABLE x; --',
        "events WHERE true; DROP TABLE x; --",
        "public.x; DROP TABLE public.events",
        "events WHERE false) TO STDOUT; DROP TABLE x; COMMIT; COPY (SELECT 1",
    ],
)
def test_an_injection_like_table_name_is_quoted_not_executed(events: LoadedEvents, name: str) -> None:
    source = PostgresSource(events.dsn, CHURN, name)
    with pytest.raises((psycopg2.Error, SourceError)):
        source.extract(*day_bounds(DAYS[0]))
    assert table_exists(events.dsn, "public.x")
    assert table_exists(events.dsn, "public.events")
    assert db_count(events, *day_bounds(DAYS[0])) == len(events.ids_between(*day_bounds(DAYS[0])))


def test_a_table_name_with_odd_characters_is_read_as_that_table(events: LoadedEvents) -> None:
    odd = "events; DROP TABLE x"  # a legal (quoted) identifier
    with psycopg2.connect(events.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", odd)))
        create_events_table(cur, f"public.{odd}")
        insert_row(
            cur,
            f"public.{odd}",
            (
                "odd-1",
                5,
                "2026-03-01 10:00:00+00",
                "session",
                30.0,
                None,
                "basic",
                "eu",
                "organic",
                "ios",
                "2025-01-01",
            ),
        )
    try:
        table = PostgresSource(events.dsn, CHURN, f"public.{odd}").extract(*day_bounds(DAYS[0]))
        assert table.column("event_id").to_pylist() == ["odd-1"]
        assert table_exists(events.dsn, "public.x")
    finally:
        with psycopg2.connect(events.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", odd)))


def with_events(uc: UseCase, **events: str) -> UseCase:
    """The use case with other event field names, unvalidated: what the source does with any name."""
    return UseCase(uc.spec.model_copy(update={"events": uc.spec.events.model_copy(update=events)}), uc.folder)


def test_malformed_table_names_are_refused(events: LoadedEvents) -> None:
    with pytest.raises(SourceError, match="bad table name"):
        PostgresSource(events.dsn, CHURN, "a.b.c").extract(*day_bounds(DAYS[0]))
    # The time column comes from the use case's spec now: a hostile name is quoted as well.
    hostile = with_events(CHURN, time="event_time; DROP TABLE x")
    assert PostgresSource(events.dsn, hostile, events.table).time_column == "event_time; DROP TABLE x"
    with pytest.raises(psycopg2.Error):
        PostgresSource(events.dsn, hostile, events.table).extract(*day_bounds(DAYS[0]))
    with pytest.raises(psycopg2.Error):
        PostgresSource(events.dsn, with_events(CHURN, id="event_id; DROP TABLE x"), events.table).extract(
            *day_bounds(DAYS[0])
        )
    assert table_exists(events.dsn, "public.x")
    assert table_exists(events.dsn, "public.events")


# -- into the lake ------------------------------------------------------------------------


def test_ingest_day_from_postgres_into_a_file_lake(events: LoadedEvents, tmp_path) -> None:
    settings = load_settings(
        lake_uri=(tmp_path / "lake").as_uri(),
        source="postgres",
        source_postgres_dsn=events.dsn,
        source_postgres_table=events.table,
        use_case="churn",
    )
    source = make_source(settings, CHURN)
    assert isinstance(source, PostgresSource) and source.table == events.table
    assert source.use_case.name == "churn"
    ctx = RunContext(dag_id="integration", run_id="pg")
    lake = Lake(settings)
    day = DAYS[0]
    ds = day.isoformat()
    expected = db_count(events, *day_bounds(day))

    first = pipeline.ingest_day(settings, day, ctx)  # the source named by the settings
    assert first["source"] == "postgres"
    assert first["rows"] == expected
    assert lake.partition_rows(RAW_EVENTS) == {ds: expected}
    raw = lake.read_partition(RAW_EVENTS, ds)
    assert set(raw.column("event_id").to_pylist()) == events.ids_between(*day_bounds(day))
    assert first["extra_fields"] == []
    assert lake.lineage(RAW_EVENTS, first["version"]).extra == {
        "source": "postgres", "rows": expected, "extra_fields": [],
    }

    # Re-running the day replaces it: same rows, a new version, no duplicates.
    second = pipeline.ingest_day(settings, day, ctx, source=PostgresSource(events.dsn, CHURN, events.table))
    assert second["rows"] == expected
    assert second["version"] == first["version"] + 1
    assert lake.partition_rows(RAW_EVENTS) == {ds: expected}
    ids = lake.read_partition(RAW_EVENTS, ds).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == expected

    # Another day lands beside it; then the contract passes every row of the clean day.
    other = pipeline.ingest_day(settings, DAYS[1], ctx)
    assert lake.partition_rows(RAW_EVENTS) == {ds: expected, DAYS[1].isoformat(): other["rows"]}
    curated = pipeline.curate_day(settings, day, ctx)
    assert (curated["rows_in"], curated["valid"], curated["quarantined"], curated["duplicates_removed"]) == (
        expected, expected, 0, 0,
    )


# -- a second use case: purchases (string key, no event id, no kind column) -------------------

PURCHASE_GEN = PurchaseGenerator(n_customers=3000, seed=5, use_case=PURCHASES)
PURCHASE_COLUMNS = ["customer_id", "purchased_at", "amount", "quantity", "category"]
PURCHASES_DDL = """
CREATE TABLE {table} (
    customer_id text,
    purchased_at timestamptz NOT NULL,
    amount numeric(12,2),
    quantity int,
    category text,
    store_id text
)
"""
PURCHASE_ODD_DAY = dt.date(2026, 3, 10)


@dataclass(frozen=True)
class LoadedPurchases:
    dsn: str
    table: str
    days: dict[dt.date, pd.DataFrame]  # the generator's typed purchases of each clean day


def insert_purchase(cur, table: str, row: tuple) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (customer_id, purchased_at, amount, quantity, category, store_id) "
            "VALUES (%s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(*table.split("."))),
        row,
    )


@pytest.fixture(scope="module")
def purchases(pg_dsn: str) -> LoadedPurchases:
    """The generator's purchases of DAYS, plus rows at the day edges and a day of odd rows.

    The table has a column the spec does not declare (store_id).
    """
    table = "public.purchases"
    days = {}
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.purchases")
        cur.execute(sql.SQL(PURCHASES_DDL).format(table=sql.Identifier(*table.split("."))))
        for day in DAYS:
            frame = PURCHASE_GEN.purchases_for_day(day)
            days[day] = frame
            copy_frame(cur, table, frame.assign(store_id="S01"))
        # 1:30 at UTC+2 on 2 March is the evening of 1 March in UTC; midnight UTC of 4 March is outside.
        insert_purchase(cur, table, ("C900001", "2026-03-02 01:30:00+02", 10.0, 1, "grocery", "S02"))
        insert_purchase(cur, table, ("C900002", "2026-03-04 00:00:00+00", 10.0, 1, "grocery", "S02"))
        odd = "2026-03-10 12:00:00+00"
        for row in [
            ("C900010", odd, 19.99, 2, "grocery", "S01"),
            ("C900010", odd, 19.99, 2, "grocery", "S01"),  # the same row twice: a redelivery
            ("C900010", odd, 19.99, 2, "grocery", "S07"),  # ... the same but for a column not selected
            ("C900010", odd, 5.00, 2, "grocery", "S01"),  # same customer and time, another purchase
            (None, odd, 3.50, 1, "beauty", "S01"),  # no customer
            ("X-1", odd, 3.50, 1, "beauty", "S01"),  # a key the spec's pattern refuses
            ("C900011", odd, 3.50, 1, "toys", "S01"),  # not a category of the spec
            ("C900012", odd, 3.50, 0, "beauty", "S01"),  # quantity below the minimum
        ]:
            insert_purchase(cur, table, row)
    return LoadedPurchases(dsn=pg_dsn, table=table, days=days)


def purchase_keys(frame: pd.DataFrame) -> list[tuple[str, pd.Timestamp]]:
    return sorted(zip(frame["customer_id"], pd.to_datetime(frame["purchased_at"], utc=True, format="ISO8601")))


def test_purchases_extract_a_day_by_their_time_column(purchases: LoadedPurchases) -> None:
    source = PostgresSource(purchases.dsn, PURCHASES, purchases.table)
    assert source.time_column == "purchased_at"
    for day in DAYS:
        table = source.extract(*day_bounds(day))
        # The use case's raw fields, as text: no event id, no kind column.
        assert table.schema == raw_schema(PURCHASES)
        assert table.column_names == [*PURCHASE_COLUMNS, EXTRA_COLUMN]
        got = table.to_pandas()
        expected = purchase_keys(purchases.days[day])
        edge = [("C900001", pd.Timestamp("2026-03-01 23:30", tz="UTC"))] if day == DAYS[0] else []
        assert purchase_keys(got) == sorted(expected + edge)
        assert len(got) > 40
        # Ordered by the time, then the entity key (events without an id).
        order = list(zip(got["purchased_at"], got["customer_id"]))
        assert order == sorted(order)
        assert got["purchased_at"].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z").all()
    last = set(source.extract(*day_bounds(DAYS[-1])).column("customer_id").to_pylist())
    assert "C900002" not in last  # midnight of the next day belongs to the next day
    empty = source.extract(dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 2, tzinfo=UTC))
    assert empty.num_rows == 0 and empty.schema == raw_schema(PURCHASES)


def test_purchases_pass_the_contract_as_the_generated_purchases(purchases: LoadedPurchases) -> None:
    source = PostgresSource(purchases.dsn, PURCHASES, purchases.table)
    for day in DAYS[1:]:  # (the first day has the edge row besides the generated ones)
        extracted = source.extract(*day_bounds(day)).to_pandas()
        result = split_by_contract(extracted, day, PURCHASES)
        assert result.failures == {}
        assert result.duplicates == 0
        assert len(result.valid) == len(extracted) == len(purchases.days[day])
        valid = result.valid
        # Without an id field every event gets an id from its content: unique, and the same on every read.
        assert valid["event_id"].is_unique and valid["event_id"].str.startswith("h").all()
        again = split_by_contract(source.extract(*day_bounds(day)).to_pandas(), day, PURCHASES).valid
        assert list(again["event_id"]) == list(valid["event_id"])
        # The typed values are the generator's.
        got = valid[PURCHASE_COLUMNS].sort_values(["customer_id", "purchased_at", "amount"]).reset_index(drop=True)
        expected = (
            purchases.days[day][PURCHASE_COLUMNS]
            .sort_values(["customer_id", "purchased_at", "amount"])
            .reset_index(drop=True)
        )
        assert got["customer_id"].map(type).eq(str).all()  # a string key stays a string
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)


def test_extra_columns_of_a_postgres_table_are_not_selected(purchases: LoadedPurchases) -> None:
    """The table has store_id, which the spec does not declare.

    PostgresSource selects the declared raw fields only (one typed rendering per field), so an
    undeclared column of the table is NOT delivered: extra_fields is null on every row and the
    ingest reports no extra field. (FileSource, which reads whatever a file holds, keeps
    undeclared columns in extra_fields; see test_files_source_s3.)
    """
    table = PostgresSource(purchases.dsn, PURCHASES, purchases.table).extract(*day_bounds(DAYS[0]))
    assert "store_id" not in table.column_names
    assert table.column(EXTRA_COLUMN).null_count == table.num_rows
    assert extra_fields(table) == []


def test_odd_purchases_are_removed_as_copies_or_quarantined(purchases: LoadedPurchases) -> None:
    extracted = PostgresSource(purchases.dsn, PURCHASES, purchases.table).extract(*day_bounds(PURCHASE_ODD_DAY))
    raw = extracted.to_pandas()
    assert len(raw) == 8
    result = split_by_contract(raw, PURCHASE_ODD_DAY, PURCHASES)
    # Two exact copies of the first row: the redelivery, and the row from another store (the
    # store is not selected, so the source delivers the very same row).
    assert result.duplicates == 2
    assert len(result.valid) == 2  # the purchase, and the other purchase of the same customer and time
    assert sorted(result.valid["amount"]) == [5.0, 19.99]
    assert result.valid["event_id"].is_unique
    assert len(result.quarantined) == 4
    assert len(result.valid) + len(result.quarantined) + result.duplicates == len(raw) == result.rows_in
    failures = result.failures
    assert failures[f"customer_id: str_matches('{PURCHASES.spec.entity.pattern}')"] == 1
    assert failures["customer_id: not_nullable"] == 1
    assert sum(v for k, v in failures.items() if k.startswith("category: isin")) == 1
    assert sum(v for k, v in failures.items() if k.startswith("quantity: in_range")) == 1
    assert not any("uniqueness" in k for k in failures)


def test_ingest_and_curate_purchases_from_postgres_into_their_own_lake(purchases: LoadedPurchases, tmp_path) -> None:
    settings = load_settings(
        lake_uri=(tmp_path / "lake").as_uri(),
        source="postgres",
        source_postgres_dsn=purchases.dsn,
        source_postgres_table=purchases.table,
        use_case="purchases",
    )
    source = make_source(settings, PURCHASES)
    assert isinstance(source, PostgresSource) and source.use_case.name == "purchases"
    lake = Lake(settings)
    assert lake.root == (tmp_path / "lake").as_uri() + "/purchases"
    ctx = RunContext(dag_id="integration", run_id="pg-purchases")
    day, ds = DAYS[1], DAYS[1].isoformat()
    n = len(purchases.days[day])

    first = pipeline.ingest_day(settings, day, ctx)
    assert (first["source"], first["rows"], first["extra_fields"]) == ("postgres", n, [])
    raw_table = PURCHASES.tables.raw
    assert lake.partition_rows(raw_table) == {ds: n}
    curate = pipeline.curate_day(settings, day, ctx)
    assert (curate["rows_in"], curate["valid"], curate["quarantined"], curate["duplicates_removed"]) == (n, n, 0, 0)
    curated = lake.read_partition(PURCHASES.tables.curated, ds)
    assert curated.schema.field("customer_id").type == pa.string()
    assert curated.column_names[:2] == ["event_id", "customer_id"]
    ids = sorted(curated.column("event_id").to_pylist())

    # A re-run of the day: the same rows and the same content ids, no duplicates.
    again = pipeline.ingest_day(settings, day, ctx)
    assert again["version"] == first["version"] + 1
    pipeline.curate_day(settings, day, ctx)
    assert lake.partition_rows(raw_table) == {ds: n}
    assert sorted(lake.read_partition(PURCHASES.tables.curated, ds).column("event_id").to_pylist()) == ids

    # Features of the day for its own entity: the string-keyed customers who bought.
    features = pipeline.build_features_day(settings, day, ctx)
    assert features["entities"] == purchases.days[day]["customer_id"].nunique()
    assert not (tmp_path / "lake" / "churn").exists()
