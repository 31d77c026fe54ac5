"""FileSource reading landed CSV, JSONL and Parquet files from an s3:// landing prefix (churn's fields)."""

from __future__ import annotations

import datetime as dt
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.core.contracts import split_by_contract
from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, load_use_case
from sluice.edges.lake import Lake
from sluice.edges.sources import SourceError, make_source, raw_schema
from sluice.edges.sources.files import FileSource
from sluice.settings import load_settings
from sluice.stages import etl as pipeline
from usecases.churn.simulator import SimulatorSource

pytestmark = pytest.mark.integration

CHURN = load_use_case("churn")
RAW_FIELDS = CHURN.raw_fields
RAW_SCHEMA = raw_schema(CHURN)
RAW_EVENTS = CHURN.tables.raw
DAY = dt.date(2026, 3, 1)
NEXT_DAY = dt.date(2026, 3, 2)
SIM = SimulatorSource(n_customers=200, seed=9)
PREFIX = "landing/events"


def bounds(day: dt.date, days: int = 1) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=days)


def settings_for(bucket: str, endpoint: str, lake_on_s3: bool = True, tmp_path=None):  # type: ignore[no-untyped-def]
    lake_uri = f"s3://{bucket}/sluice" if lake_on_s3 else (tmp_path / "lake").as_uri()
    return load_settings(
        lake_uri=lake_uri, s3_endpoint_url=endpoint, landing_uri=f"s3://{bucket}/{PREFIX}/", source="files",
        use_case="churn",
    )


def files_source(settings) -> FileSource:  # type: ignore[no-untyped-def]
    return FileSource(settings.landing, settings, CHURN)


def landing_text(day: dt.date) -> pd.DataFrame:
    """The simulated events of ``day`` as a producer lands them: text, the declared fields only."""
    text = SIM.raw_day(day).to_pandas()
    assert text[EXTRA_COLUMN].isna().all()
    return text.drop(columns=[EXTRA_COLUMN])


def csv_bytes(text: pd.DataFrame) -> bytes:
    return text.to_csv(index=False, na_rep="").encode()


def jsonl_bytes(text: pd.DataFrame) -> bytes:
    """JSON lines the way a producer writes them: numbers as numbers, nulls as null."""
    lines = []
    for row in text.to_dict("records"):
        for key in ("customer_id",):
            row[key] = int(row[key])
        for key in ("duration_s", "amount"):
            row[key] = None if row[key] is None else float(row[key])
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()


def parquet_bytes(typed: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(typed, preserve_index=False), sink)
    return sink.getvalue()


@pytest.fixture
def landed(s3_client, bucket):  # type: ignore[no-untyped-def]
    """The simulated events of DAY split over a CSV, a JSONL and a Parquet file, plus some noise."""
    typed = SIM.events_for_day(DAY)
    text = landing_text(DAY)  # the same events as text (the simulator's own rendering)
    assert list(text["event_id"]) == list(typed["event_id"])
    n = len(text)
    a, b = n // 3, 2 * n // 3
    parts = {
        "part-000.csv": csv_bytes(text.iloc[:a]),
        "part-001.jsonl": jsonl_bytes(text.iloc[a:b]),
        "part-002.parquet": parquet_bytes(typed.iloc[b:][RAW_FIELDS]),
        "_SUCCESS": b"",  # not an event file
        "notes.txt": b"not events",
    }
    for name, body in parts.items():
        s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/{name}", Body=body)
    # The next day has a file of its own, which must not leak into DAY.
    following = landing_text(NEXT_DAY)
    s3_client.put_object(
        Bucket=bucket, Key=f"{PREFIX}/ds={NEXT_DAY.isoformat()}/part-000.csv", Body=csv_bytes(following)
    )
    return {"text": text, "a": a, "b": b, "next": following}


@pytest.mark.parametrize("lake_on_s3", [True, False], ids=["lake-s3", "lake-file"])
def test_extract_reads_every_landed_format_as_text(landed, bucket, s3_endpoint, tmp_path, lake_on_s3) -> None:
    settings = settings_for(bucket, s3_endpoint, lake_on_s3, tmp_path)
    assert settings.landing == f"s3://{bucket}/{PREFIX}"
    source = make_source(settings, CHURN)
    assert isinstance(source, FileSource) and source.landing_uri == settings.landing
    assert source.use_case.name == "churn"

    _, paths = source.files_for(DAY)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["part-000.csv", "part-001.jsonl", "part-002.parquet"]

    table = source.extract(*bounds(DAY))
    assert table.schema == RAW_SCHEMA
    got = table.to_pandas()
    text, a, b = landed["text"], landed["a"], landed["b"]
    assert len(got) == len(text)
    # No file has a field the spec does not declare.
    assert got[EXTRA_COLUMN].isna().all()
    got = got.drop(columns=[EXTRA_COLUMN])
    assert sorted(got["event_id"]) == sorted(text["event_id"])

    got = got.set_index("event_id")
    expected = text.set_index("event_id")
    csv_ids, json_ids, parquet_ids = (
        text["event_id"].iloc[s] for s in (slice(0, a), slice(a, b), slice(b, None))
    )
    # CSV (text in, text out) and Parquet (typed, rendered by conform) give the source's text exactly.
    for ids in (csv_ids, parquet_ids):
        pd.testing.assert_frame_equal(got.loc[ids], expected.loc[ids])
    # JSON lines keep values as delivered: strings are the same text, numbers are their JSON
    # text (a float written as 165.0 stays "165.0"), so numbers are compared by value.
    numeric = ["customer_id", "duration_s", "amount"]
    columns = [c for c in RAW_FIELDS if c not in ("event_id", *numeric)]
    pd.testing.assert_frame_equal(got.loc[json_ids, columns], expected.loc[json_ids, columns])
    pd.testing.assert_frame_equal(
        got.loc[json_ids, numeric].apply(pd.to_numeric).astype(float),
        expected.loc[json_ids, numeric].apply(pd.to_numeric).astype(float),
    )

    # Nulls are nulls in every format.
    for column in ("duration_s", "amount"):
        assert got[column].isna().sum() == expected[column].isna().sum() > 0

    # Two days: both days' files.
    both = source.extract(*bounds(DAY, days=2))
    assert both.num_rows == len(text) + len(landed["next"])
    # No files for a day: an empty table with the raw schema.
    empty = source.extract(*bounds(dt.date(2026, 5, 1)))
    assert empty.num_rows == 0 and empty.schema == RAW_SCHEMA


def test_csv_and_parquet_rows_pass_the_contract(landed, bucket, s3_endpoint) -> None:
    source = files_source(settings_for(bucket, s3_endpoint))
    got = source.extract(*bounds(DAY)).to_pandas()
    jsonl_ids = set(landed["text"]["event_id"].iloc[landed["a"] : landed["b"]])
    result = split_by_contract(got[~got["event_id"].isin(jsonl_ids)], DAY, CHURN)
    assert result.failures == {}
    assert result.duplicates == 0
    assert len(result.valid) == len(got) - len(jsonl_ids)


def test_jsonl_rows_keep_their_text_and_pass_the_contract(landed, bucket, s3_endpoint) -> None:
    settings = settings_for(bucket, s3_endpoint)
    got = files_source(settings).extract(*bounds(DAY)).to_pandas()
    jsonl_ids = set(landed["text"]["event_id"].iloc[landed["a"] : landed["b"]])
    rows = got[got["event_id"].isin(jsonl_ids)]
    expected = landed["text"].set_index("event_id").loc[sorted(jsonl_ids), "signup_date"]
    assert list(rows.set_index("event_id").loc[sorted(jsonl_ids), "signup_date"]) == list(expected)
    assert split_by_contract(rows, DAY, CHURN).failures == {}


def test_parquet_with_a_non_utc_time_zone_keeps_the_instant(s3_client, bucket, s3_endpoint) -> None:
    typed = SIM.events_for_day(DAY).iloc[:20][RAW_FIELDS].copy()
    typed["event_time"] = typed["event_time"].dt.tz_convert("America/New_York")
    s3_client.put_object(
        Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/ny.parquet", Body=parquet_bytes(typed)
    )
    settings = settings_for(bucket, s3_endpoint)
    got = files_source(settings).extract(*bounds(DAY)).to_pandas()
    instants = pd.to_datetime(got["event_time"], utc=True, format="ISO8601")
    expected = typed["event_time"].dt.tz_convert("UTC")
    assert list(instants) == list(expected)


def test_csv_texts_that_look_like_null_markers_stay_text(s3_client, bucket, s3_endpoint) -> None:
    text = landing_text(DAY).iloc[:3].copy()
    text["device"] = ["N/A", "NULL", "nan"]
    s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/odd.csv", Body=csv_bytes(text))
    settings = settings_for(bucket, s3_endpoint)
    got = files_source(settings).extract(*bounds(DAY))
    assert got.column("device").to_pylist() == ["N/A", "NULL", "nan"]


def test_a_file_missing_a_column_is_refused(s3_client, bucket, s3_endpoint) -> None:
    text = landing_text(DAY).iloc[:5].drop(columns=["device"])
    s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/bad.csv", Body=csv_bytes(text))
    settings = settings_for(bucket, s3_endpoint)
    with pytest.raises(SourceError, match="device") as err:
        files_source(settings).extract(*bounds(DAY))
    assert "bad.csv" in str(err.value)


def test_ingest_day_from_s3_landing_into_the_s3_lake(landed, bucket, s3_endpoint) -> None:
    settings = settings_for(bucket, s3_endpoint)
    ctx = RunContext(dag_id="integration", run_id="files")
    lake = Lake(settings)
    ds = DAY.isoformat()

    first = pipeline.ingest_day(settings, DAY, ctx)
    assert (first["source"], first["rows"], first["extra_fields"]) == ("files", len(landed["text"]), [])
    second = pipeline.ingest_day(settings, DAY, ctx)
    assert second["version"] == first["version"] + 1
    assert lake.partition_rows(RAW_EVENTS) == {ds: len(landed["text"])}
    raw = lake.read_partition(RAW_EVENTS, ds).to_pandas()
    assert sorted(raw["event_id"]) == sorted(landed["text"]["event_id"])
    # The landing files sit beside the lake in the same bucket and stay where they are.
    assert len(files_source(settings).files_for(DAY)[1]) == 3


# -- fields the spec does not declare ---------------------------------------------------------


def test_an_undeclared_csv_column_lands_in_extra_fields_and_the_ingest_summary(s3_client, bucket, s3_endpoint) -> None:
    text = landing_text(DAY)
    n = len(text)
    with_coupon = text.iloc[: n // 2].copy()
    # A producer started sending a coupon code: not in churn's spec. Some rows have none. The codes
    # look like numbers: kept as delivered all the same ("007", not 7).
    with_coupon.insert(3, "coupon", [f"{i % 9:03d}" if i % 3 else None for i in range(len(with_coupon))])
    without = text.iloc[n // 2 :]
    for name, frame in (("part-000.csv", with_coupon), ("part-001.csv", without)):
        s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/{name}", Body=csv_bytes(frame))
    settings = settings_for(bucket, s3_endpoint)

    extracted = files_source(settings).extract(*bounds(DAY))
    assert extracted.schema == RAW_SCHEMA  # the declared fields, in order, then extra_fields
    extras = extracted.to_pandas().set_index("event_id")[EXTRA_COLUMN]
    for event_id, coupon in zip(with_coupon["event_id"], with_coupon["coupon"], strict=True):
        assert json.loads(extras[event_id]) == ({} if coupon is None else {"coupon": coupon})
    assert extras.loc[list(without["event_id"])].isna().all()  # a file without undeclared fields: null

    ctx = RunContext(dag_id="integration", run_id="extra")
    ingest = pipeline.ingest_day(settings, DAY, ctx)
    assert ingest["rows"] == n
    assert ingest["extra_fields"] == ["coupon"]
    lake = Lake(settings)
    assert lake.lineage(RAW_EVENTS, ingest["version"]).extra["extra_fields"] == ["coupon"]
    raw = lake.read_partition(RAW_EVENTS, DAY.isoformat()).to_pandas().set_index("event_id")
    assert "coupon" not in raw.columns
    coupons = raw[EXTRA_COLUMN].dropna().map(json.loads).map(lambda d: d.get("coupon"))
    assert sorted(coupons.dropna()) == sorted(with_coupon["coupon"].dropna())

    # The contract checks the declared fields only: the extra column breaks nothing, nor does it reach curated.
    curate = pipeline.curate_day(settings, DAY, ctx)
    assert (curate["valid"], curate["quarantined"], curate["duplicates_removed"]) == (n, 0, 0)
    curated = lake.read_partition(CHURN.tables.curated, DAY.isoformat())
    assert "coupon" not in curated.column_names and EXTRA_COLUMN not in curated.column_names


def test_a_csv_with_a_column_twice_is_refused_naming_the_file_and_the_column(s3_client, bucket, s3_endpoint) -> None:
    text = landing_text(DAY).iloc[:5]
    good = csv_bytes(text)
    header, _, body = csv_bytes(text).decode().partition("\n")
    doubled = f"{header},plan\n" + "".join(f"{line},gold\n" for line in body.splitlines())
    s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/part-000.csv", Body=good)
    s3_client.put_object(Bucket=bucket, Key=f"{PREFIX}/ds={DAY.isoformat()}/twice.csv", Body=doubled.encode())
    settings = settings_for(bucket, s3_endpoint)

    with pytest.raises(SourceError, match="more than once") as err:
        files_source(settings).extract(*bounds(DAY))
    assert f"ds={DAY.isoformat()}/twice.csv" in str(err.value)
    assert "'plan'" in str(err.value)
    # Nothing of the day is ingested: not the good file either.
    with pytest.raises(SourceError, match="twice.csv"):
        pipeline.ingest_day(settings, DAY, RunContext(dag_id="integration", run_id="twice"))
    assert not Lake(settings).exists(RAW_EVENTS)
