"""The files source: CSV, JSONL and Parquet dropped under <landing>/ds=YYYY-MM-DD/, read as text."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.core.contracts import split_by_contract
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.sources import SourceError, conform, make_source, raw_schema
from sluice.edges.sources.files import FileSource
from sluice.edges.sources.postgres import PostgresSource
from sluice.settings import load_settings
from usecases.churn.simulator import SimulatorSource

DAY = dt.date(2026, 3, 1)
UC = load_use_case("churn")
RAW_EVENT_FIELDS = UC.raw_fields  # the fields a landing file has
RAW_SCHEMA = raw_schema(UC)  # what a source delivers: those as text, then extra_fields
LANDING_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in RAW_EVENT_FIELDS])
HEADER = ",".join(RAW_EVENT_FIELDS)


def utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def one_day(day: dt.date = DAY) -> tuple[dt.datetime, dt.datetime]:
    return utc(day), utc(day + dt.timedelta(days=1))


def row(i: int, **changes) -> dict:
    base = {
        "event_id": f"f-{i}",
        "customer_id": str(100_001 + i),
        "event_time": f"2026-03-01T0{i % 10}:15:00Z",
        "event_type": "order",
        "duration_s": None,
        "amount": "12.50",
        "plan": "basic",
        "region": "eu",
        "channel": "social",
        "device": "ios",
        "signup_date": "2025-11-30",
    }
    return base | changes


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def source(landing: Path, tmp_path: Path) -> FileSource:
    settings = load_settings(lake_uri=str(tmp_path / "lake"), landing_uri=str(landing))
    return FileSource(settings.landing, settings, UC)


def day_dir(landing: Path, day: dt.date = DAY) -> Path:
    path = landing / f"ds={day.isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(path: Path, rows: list[dict], columns: list[str] = RAW_EVENT_FIELDS) -> None:
    lines = [",".join(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("" if v is None else (f'"{v}"' if "," in v else v))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=LANDING_SCHEMA), path)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["event_id"]: r for r in table.to_pylist()}


def test_csv_jsonl_and_parquet_of_the_day_are_all_read_as_text(source, landing):
    d = day_dir(landing)
    write_csv(d / "a.csv", [row(1), row(2, amount="12,50 EUR", customer_id="00123")])
    write_jsonl(d / "b.jsonl", [row(3, event_type="session", duration_s="60", amount=None)])
    write_parquet(d / "c.parquet", [row(4), row(5, device=None)])

    got = source.extract(*one_day())

    assert got.schema == RAW_SCHEMA
    assert got.num_rows == 5
    rows = by_id(got)
    assert set(rows) == {f"f-{i}" for i in range(1, 6)}
    # CSV: no type inference, the text is kept as delivered (also malformed values, leading zeros).
    assert rows["f-2"]["amount"] == "12,50 EUR"
    assert rows["f-2"]["customer_id"] == "00123"
    assert rows["f-1"]["amount"] == "12.50"
    assert rows["f-1"]["duration_s"] is None  # an empty CSV cell is null
    assert rows["f-3"]["duration_s"] == "60"
    assert rows["f-5"]["device"] is None
    assert rows["f-4"] == row(4) | {EXTRA_COLUMN: None}  # no undeclared field


def test_typed_values_are_delivered_as_text(source, landing):
    d = day_dir(landing)
    typed = pa.table(
        {
            "event_id": ["p-1"],
            "customer_id": pa.array([100_007], pa.int64()),
            "event_time": pa.array([dt.datetime(2026, 3, 1, 10, 30, 5, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC")),
            "event_type": ["order"],
            "duration_s": pa.array([None], pa.float64()),
            "amount": pa.array([19.5], pa.float64()),
            "plan": ["basic"],
            "region": ["eu"],
            "channel": ["social"],
            "device": ["web"],
            "signup_date": pa.array([dt.date(2025, 11, 30)], pa.date32()),
            "extra": ["ignored"],
        }
    )
    pq.write_table(typed, d / "typed.parquet")
    got = source.extract(*one_day())
    assert got.schema == RAW_SCHEMA
    r = got.to_pylist()[0]
    assert r["customer_id"] == "100007"
    assert r["amount"] == "19.5"
    assert r["duration_s"] is None
    assert r["signup_date"] == "2025-11-30"
    assert r["event_time"].startswith("2026-03-01T10:30:05") and r["event_time"].endswith("Z")
    # A field the spec does not declare is kept, as JSON, not used.
    assert json.loads(r[EXTRA_COLUMN]) == {"extra": "ignored"}
    # ... and the text parses back to the same values under the contract.
    result = split_by_contract(got.to_pandas(), DAY, UC)
    assert result.failures == {}
    assert result.valid.loc[0, "event_time"] == pd.Timestamp("2026-03-01T10:30:05", tz="UTC")


@pytest.mark.parametrize(
    ("fmt", "writer"),
    [("csv", write_csv), ("jsonl", write_jsonl), ("parquet", write_parquet)],
)
@pytest.mark.parametrize("missing", ["amount", "event_id"])
def test_a_file_missing_a_column_is_refused_naming_it(source, landing, fmt, writer, missing):
    d = day_dir(landing)
    write_csv(d / "good.csv", [row(1)])
    rows = [{k: v for k, v in row(2).items() if k != missing}]
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=LANDING_SCHEMA.remove(LANDING_SCHEMA.get_field_index(missing))),
                       d / f"bad.{fmt}")
    elif fmt == "csv":
        write_csv(d / f"bad.{fmt}", rows, [c for c in RAW_EVENT_FIELDS if c != missing])
    else:
        writer(d / f"bad.{fmt}", rows)
    with pytest.raises(SourceError, match=rf"bad\.{fmt}: missing column\(s\) \['{missing}'\]"):
        source.extract(*one_day())


def test_files_of_other_days_and_other_suffixes_are_ignored(source, landing):
    write_csv(day_dir(landing) / "today.csv", [row(1), row(2)])
    write_csv(day_dir(landing, DAY - dt.timedelta(days=1)) / "yesterday.csv", [row(7)])
    write_csv(day_dir(landing, DAY + dt.timedelta(days=1)) / "tomorrow.csv", [row(8)])
    (day_dir(landing) / "_SUCCESS").write_text("")
    (day_dir(landing) / "notes.txt").write_text("not events")
    (day_dir(landing) / "a.csv.tmp").write_text("partial")
    (landing / "stray.csv").write_text(HEADER + "\n")
    got = source.extract(*one_day())
    assert sorted(got.column("event_id").to_pylist()) == ["f-1", "f-2"]


def test_an_interval_of_two_days_reads_both_folders(source, landing):
    write_csv(day_dir(landing) / "a.csv", [row(1)])
    write_csv(day_dir(landing, DAY + dt.timedelta(days=1)) / "a.csv", [row(2)])
    write_csv(day_dir(landing, DAY + dt.timedelta(days=2)) / "a.csv", [row(3)])
    got = source.extract(utc(DAY), utc(DAY + dt.timedelta(days=2)))
    assert sorted(got.column("event_id").to_pylist()) == ["f-1", "f-2"]


def test_a_day_without_files_is_empty(source, landing):
    got = source.extract(*one_day())
    assert got.num_rows == 0
    assert got.schema == RAW_SCHEMA


def test_an_unreadable_file_is_a_source_error(source, landing):
    (day_dir(landing) / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=r"cannot read landing file .*broken\.parquet"):
        source.extract(*one_day())


def test_a_valid_jsonl_file_passes_the_contract(source, landing):
    # Regression: JSONL used to be read with type inference, turning the date "2025-11-30" into
    # "2025-11-30T00:00:00.000000", which the contract then refused on every row.
    write_jsonl(day_dir(landing) / "events.jsonl", [row(1), row(2)])
    got = source.extract(*one_day())
    assert got.to_pylist()[0]["signup_date"] == "2025-11-30"
    result = split_by_contract(got.to_pandas(), DAY, UC)
    assert result.failures == {}
    assert len(result.valid) == 2


def test_a_malformed_value_in_jsonl_reaches_the_contract(source, landing):
    # Regression: a value of another JSON type than the other rows' used to refuse the whole file.
    rows = [row(1) | {"customer_id": 100_001}, row(2) | {"customer_id": "C-12"}]
    write_jsonl(day_dir(landing) / "events.jsonl", rows)
    got = source.extract(*one_day())
    assert sorted(got.column("customer_id").to_pylist()) == ["100001", "C-12"]


@pytest.mark.parametrize("bad_line", ["{not json", "[1, 2]"], ids=["not-json", "not-an-object"])
def test_an_unparseable_jsonl_file_is_a_source_error(source, landing, bad_line):
    (day_dir(landing) / "broken.jsonl").write_text(json.dumps(row(1)) + "\n" + bad_line + "\n")
    with pytest.raises(SourceError, match=r"cannot read landing file .*broken\.jsonl"):
        source.extract(*one_day())


def test_csv_keeps_na_like_words_as_text(source, landing):
    write_csv(day_dir(landing) / "a.csv", [row(1, device="NA", plan="null"), row(2, device=None)])
    got = by_id(source.extract(*one_day()))
    assert (got["f-1"]["device"], got["f-1"]["plan"]) == ("NA", "null")
    assert got["f-2"]["device"] is None


def test_jsonl_numbers_arrive_as_text(source, landing):
    rows = [row(1) | {"customer_id": 100_001, "amount": 12}, row(2) | {"customer_id": 100_002, "amount": 12.5}]
    write_jsonl(day_dir(landing) / "events.jsonl", rows)
    got = by_id(source.extract(*one_day()))
    assert (got["f-1"]["customer_id"], got["f-1"]["amount"]) == ("100001", "12")
    assert (got["f-2"]["customer_id"], got["f-2"]["amount"]) == ("100002", "12.5")


# -- conform and make_source -----------------------------------------------------------------------


def test_conform_orders_columns_and_keeps_extras_as_json():
    shuffled = pa.table({**{c: ["x", "z"] for c in reversed(RAW_EVENT_FIELDS)}, "extra": ["y", None], "n": [1, 2]})
    got = conform(shuffled, "test", UC)
    assert got.column_names == [*RAW_EVENT_FIELDS, EXTRA_COLUMN]
    assert got.schema == RAW_SCHEMA
    # Per row, the undeclared fields that have a value, as text.
    assert [json.loads(v) for v in got.column(EXTRA_COLUMN).to_pylist()] == [{"extra": "y", "n": "1"}, {"n": "2"}]
    without = conform(pa.table({c: ["x"] for c in RAW_EVENT_FIELDS}), "test", UC)
    assert without.column(EXTRA_COLUMN).to_pylist() == [None]


def test_conform_names_every_missing_column():
    partial = pa.table({"event_id": ["x"], "amount": ["1"]})
    with pytest.raises(SourceError, match=r"origin-x: missing column\(s\) \['customer_id', 'event_time', "):
        conform(partial, "origin-x", UC)


def test_conform_refuses_a_column_given_twice():
    names = [*RAW_EVENT_FIELDS, "amount", "plan"]
    doubled = pa.Table.from_arrays([pa.array(["1"]) for _ in names], names=names)
    with pytest.raises(SourceError, match=r"origin-y: column\(s\) \['amount', 'plan'\] appear more than once"):
        conform(doubled, "origin-y", UC)


def test_a_csv_with_a_column_twice_is_refused_naming_it(source, landing):
    path = day_dir(landing) / "twice.csv"
    write_csv(path, [row(1)], [*RAW_EVENT_FIELDS, "amount"])
    with pytest.raises(SourceError, match=r"twice\.csv: column\(s\) \['amount'\] appear more than once"):
        source.extract(*one_day())


def test_make_source_builds_the_configured_source(tmp_path):
    sim = make_source(load_settings(lake_uri=str(tmp_path), sim_customers=50, sim_drift="null_device@2026-02-01"), UC)
    assert isinstance(sim, SimulatorSource)
    assert (sim.n_customers, sim.drift) == (50, {"null_device": dt.date(2026, 2, 1)})
    assert sim.use_case is UC

    files = make_source(load_settings(lake_uri=str(tmp_path), source="files"), UC)
    assert isinstance(files, FileSource)
    assert files.landing_uri == f"{tmp_path.as_uri()}/churn/landing/events"  # below the use case's prefix
    assert files.use_case is UC

    pg = make_source(load_settings(lake_uri=str(tmp_path), source="postgres",
                                   source_postgres_dsn="host=db dbname=app"), UC)
    assert isinstance(pg, PostgresSource)


def test_make_source_postgres_needs_a_dsn(tmp_path):
    with pytest.raises(SourceError, match="SLUICE_SOURCE=postgres needs SLUICE_SOURCE_POSTGRES_DSN"):
        make_source(load_settings(lake_uri=str(tmp_path), source="postgres"), UC)


def test_file_source_reads_the_default_landing_below_the_lake(tmp_path):
    settings = load_settings(lake_uri=str(tmp_path / "lake"), source="files")
    write_csv(day_dir(tmp_path / "lake" / "churn" / "landing" / "events") / "a.csv", [row(1)])
    got = make_source(settings, UC).extract(*one_day())
    assert got.column("event_id").to_pylist() == ["f-1"]


# -- what a file's bytes may be, and what an error of the store is ---------------------------------


def test_a_jsonl_file_with_a_bom_and_a_line_separator_in_a_value_is_read(source, landing):
    # Regressions: the BOM used to fail the first line; str.splitlines cut the line at U+2028.
    rows = [row(1, channel="social"), row(2)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).replace("social", "soc\u2028ial", 1)
    (day_dir(landing) / "events.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    got = by_id(source.extract(*one_day()))
    assert got["f-1"]["channel"] == "soc\u2028ial"
    assert got["f-2"] == row(2) | {EXTRA_COLUMN: None}


def test_a_json_array_a_header_without_line_end_and_an_upper_case_suffix_are_read(source, landing):
    d = day_dir(landing)
    (d / "a.json").write_text(json.dumps([row(1), row(2)]))
    (d / "b.CSV").write_text(HEADER + "\n" + ",".join("" if v is None else v for v in row(3).values()))
    (d / "c.csv").write_text(HEADER)  # a header only, no line end: no rows
    assert sorted(source.extract(*one_day()).column("event_id").to_pylist()) == ["f-1", "f-2", "f-3"]


class _FailingStore:
    """A file system whose listing works and whose reads fail, as S3 does in an outage."""

    def __init__(self, real: object) -> None:
        self.real = real

    def get_file_info(self, selector: object) -> object:
        return self.real.get_file_info(selector)  # type: ignore[attr-defined]

    def open_input_file(self, path: str) -> object:
        raise OSError(f"When reading information for key '{path}': AWS Error NETWORK_CONNECTION")


def test_an_error_of_the_store_is_not_a_source_error(source, landing, monkeypatch):
    # A SourceError fails the task without a retry: an outage must stay an OSError, retried.
    import sluice.edges.sources.files as files

    write_csv(day_dir(landing) / "a.csv", [row(1)])
    real = files.filesystem
    monkeypatch.setattr(files, "filesystem", lambda s, uri: (_FailingStore(real(s, uri)[0]), real(s, uri)[1]))
    with pytest.raises(OSError, match="NETWORK_CONNECTION") as err:
        source.extract(*one_day())
    assert not isinstance(err.value, SourceError)
