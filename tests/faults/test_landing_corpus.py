"""A landing corpus: file-level and row-level defects, landed as files and run through the ETL steps.

Each case starts from a good day of a built-in use case (churn: integer key and an event id;
purchases: a patterned string key and no event id), spoils it one way, lands it under
``<landing>/ds=D/`` and runs ingest_raw, curate_events and build_features for D in process. Every
defect ends one of three ways:

* accepted: valid + quarantined + exact copies removed = the rows delivered, and each bad row is
  in quarantine with its column and check named;
* refused: a :class:`SourceError` (a bad input: never retried) naming the file and the problem;
  nothing is ingested;
* failed: too many bad rows for the contract, a :class:`ContractViolation` naming the check.

On a refused or failed day the next steps refuse too and no curated or features partition appears.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.core.contracts import ContractViolation
from sluice.core.lineage import RunContext
from sluice.core.usecase import EXTRA_COLUMN, UseCase, load_use_case
from sluice.edges.lake import Lake, LakeError
from sluice.edges.sources import SourceError
from sluice.settings import Settings, load_settings
from sluice.stages import etl
from usecases.churn.simulator import SimulatorSource
from usecases.purchases.generator import PurchaseGenerator

DAY = dt.date(2026, 3, 3)
DS = DAY.isoformat()
USE_CASES = {name: load_use_case(name) for name in ("churn", "purchases")}

PLAN_CHECK = "plan: isin(('basic', 'standard', 'premium'))"
CATEGORY_CHECK = "category: isin(('grocery', 'household', 'beauty', 'fashion', 'electronics', 'sports'))"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLUICE_* or AWS_* variable of the shell reaches the settings."""
    for key in list(os.environ):
        if key.startswith(("SLUICE_", "AWS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLUICE_CODE_VERSION", "faults-test")


# -- the good day and how files are written -------------------------------------------------------------


@cache
def good(use_case: str) -> pd.DataFrame:
    """The day's events as a producer lands them: the declared fields, as text (a small population)."""
    uc = USE_CASES[use_case]
    if use_case == "churn":
        table = SimulatorSource(n_customers=300, seed=5, use_case=uc).raw_day(DAY)
    else:
        table = PurchaseGenerator(n_customers=2000, seed=5, use_case=uc).raw_day(DAY)
    frame = table.to_pandas()
    assert frame[EXTRA_COLUMN].isna().all()
    return frame.drop(columns=[EXTRA_COLUMN])


def churn() -> pd.DataFrame:
    return good("churn").copy()


def purchases() -> pd.DataFrame:
    return good("purchases").copy()


def csv_bytes(frame: pd.DataFrame, **options: object) -> bytes:
    return frame.to_csv(index=False, na_rep="", lineterminator="\n", **options).encode()  # type: ignore[call-overload]


def jsonl_bytes(frame: pd.DataFrame) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in frame.astype(object).where(frame.notna(), None).to_dict("records")).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def spoil(frame: pd.DataFrame, rows: list[int], column: str, value: object) -> pd.DataFrame:
    out = frame.copy()
    out.loc[rows, column] = value
    return out


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


# -- what a case expects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    failures: dict[str, int] = field(default_factory=dict)  # "column: check" -> rows quarantined
    duplicates: int = 0  # exact copies removed and counted
    warns: str | None = None  # a file ignored, named in a warning
    extras: list[str] = field(default_factory=list)  # undeclared fields kept in extra_fields


@dataclass(frozen=True)
class Refused:
    file: str  # the file the message names
    problem: str  # a regular expression for the problem it names


@dataclass(frozen=True)
class Failed:
    quarantined: int  # rows of the day in quarantine
    problem: str  # a regular expression for what the ContractViolation names


@dataclass(frozen=True)
class Case:
    use_case: str
    files: Callable[[], dict[str, bytes]]  # what lands under ds=D/
    rows: int | None  # data rows delivered (for a day that is accepted or fails the contract)
    expect: Accepted | Refused | Failed


def _truncated_in_last_field() -> dict[str, bytes]:
    # The last row's last field is "2025-11-30": the file ends after "2025-11-3" (no line end).
    data = csv_bytes(spoil(churn(), [len(churn()) - 1], "signup_date", "2025-11-30"))
    return {"part-0.csv": data[:-2]}


def _truncated_quoted() -> dict[str, bytes]:
    # Every field quoted; the file ends inside the last field's quotes.
    data = csv_bytes(spoil(churn(), [len(churn()) - 1], "signup_date", "2025-11-30"), quoting=csv.QUOTE_ALL)
    return {"part-0.csv": data[: data.rindex(b'"')]}


def _truncated_mid_row() -> dict[str, bytes]:
    data = csv_bytes(churn())
    return {"part-0.csv": data[: data.rindex(b"\n", 0, len(data) - 1) + 40]}


def _latin1() -> dict[str, bytes]:
    data = lines(csv_bytes(churn()))
    data[7] = data[7].replace(b"android", "andro\u00efd".encode("latin-1")).replace(b"ios", "\u00efos".encode("latin-1"))
    return {"part-0.csv": b"\n".join(data)}


def _extra_field_in_a_row() -> dict[str, bytes]:
    data = lines(csv_bytes(churn()))
    data[9] += b",12"  # a value with an unquoted ','
    return {"part-0.csv": b"\n".join(data)}


def _doubled_header() -> dict[str, bytes]:
    data = lines(csv_bytes(churn()))
    return {"part-0.csv": b"\n".join([data[0] + b",plan"] + [line + b",basic" for line in data[1:] if line]) + b"\n"}


def _broken_json_line() -> dict[str, bytes]:
    data = lines(jsonl_bytes(churn()))
    data[4] = b'{"event_id": "e-1", "customer_id": 100001, "event_ti'
    return {"part-0.jsonl": b"\n".join(data)}


def _parquet_with(column: str, values: pa.Array) -> dict[str, bytes]:
    """The good day as Parquet, with ``column`` (added or replaced) typed as ``values`` are."""
    table = pa.Table.from_pandas(churn(), preserve_index=False)
    if column in table.column_names:
        table = table.set_column(table.column_names.index(column), column, values)
    else:
        table = table.append_column(column, values)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return {"part-0.parquet": sink.getvalue()}


def _conflicting_ids(n: int) -> dict[str, bytes]:
    # A redelivery of n events with another amount: the same event ids, other contents.
    again = churn().iloc[:n].assign(amount="999.99", event_type="order", duration_s=None)
    return {"part-0.csv": csv_bytes(churn()), "part-1.csv": csv_bytes(again)}


N_CHURN, N_PURCHASES = len(good("churn")), len(good("purchases"))
TAIL = N_CHURN - 1

FILE_LEVEL = {
    # -- accepted ------------------------------------------------------------------------------------
    "utf8-bom-csv": Case("churn", lambda: {"part-0.csv": b"\xef\xbb\xbf" + csv_bytes(churn())}, N_CHURN, Accepted()),
    "crlf-csv": Case("churn", lambda: {"part-0.csv": csv_bytes(churn()).replace(b"\n", b"\r\n")}, N_CHURN, Accepted()),
    "excel-export-bom-crlf": Case(
        "purchases", lambda: {"p.csv": b"\xef\xbb\xbf" + csv_bytes(purchases()).replace(b"\n", b"\r\n")},
        N_PURCHASES, Accepted()),
    "utf8-bom-crlf-jsonl": Case(
        "churn", lambda: {"part-0.jsonl": b"\xef\xbb\xbf" + jsonl_bytes(churn()).replace(b"\n", b"\r\n")},
        N_CHURN, Accepted()),
    "json-array": Case("churn", lambda: {"part-0.json": json.dumps(json.loads(
        b"[" + b",".join(jsonl_bytes(churn()).splitlines()) + b"]")).encode()}, N_CHURN, Accepted()),
    "header-only-beside-a-good-file": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn()), "part-1.csv": lines(csv_bytes(churn()))[0]},
        N_CHURN, Accepted()),
    "upper-case-suffix": Case("churn", lambda: {"PART-0.CSV": csv_bytes(churn())}, N_CHURN, Accepted()),
    "unknown-suffix-beside-a-good-file": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn()), "part-1.csv.gz": b"\x1f\x8b"},
        N_CHURN, Accepted(warns="part-1.csv.gz")),
    "marker-files-ignored": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn()), "_SUCCESS": b"", ".part-0.csv.crc": b"x"},
        N_CHURN, Accepted()),
    "parquet-with-a-nested-undeclared-column": Case(
        "churn", lambda: _parquet_with("tags", pa.array([["a", "b"] if i % 2 else None for i in range(N_CHURN)])),
        N_CHURN, Accepted(extras=["tags"])),
    "truncated-in-the-last-field": Case(
        "churn", _truncated_in_last_field, N_CHURN, Accepted({"signup_date: parse_date": 1})),
    "truncated-in-the-last-category": Case(
        "purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [N_PURCHASES - 1], "category", "electronics"))[:-6]},
        N_PURCHASES, Accepted({CATEGORY_CHECK: 1})),
    # -- refused -------------------------------------------------------------------------------------
    "empty-file": Case("churn", lambda: {"part-0.csv": b""}, None, Refused("part-0.csv", r"empty \(0 bytes\)")),
    "empty-file-beside-a-good-file": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn()), "part-1.csv": b""}, None,
        Refused("part-1.csv", r"empty \(0 bytes\)")),
    "empty-jsonl": Case("churn", lambda: {"part-0.jsonl": b""}, None, Refused("part-0.jsonl", r"empty \(0 bytes\)")),
    "blank-lines-only": Case("churn", lambda: {"part-0.csv": b"\r\n\n"}, None,
                             Refused("part-0.csv", r"no header line")),
    "header-only": Case("churn", lambda: {"part-0.csv": lines(csv_bytes(churn()))[0] + b"\n"}, None,
                        Refused("part-0.csv", r"hold no rows")),
    "duplicated-header-column": Case(
        "churn", _doubled_header, None, Refused("part-0.csv", r"column\(s\) \['plan'\] appear more than once")),
    "header-repeated-as-data": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn().iloc[:60]) + csv_bytes(churn().iloc[60:])}, None,
        Refused("part-0.csv", r"header comes again as data \(1 row\(s\)\): files concatenated")),
    "truncated-mid-row": Case(
        "churn", _truncated_mid_row, None,
        Refused("part-0.csv", rf"line {N_CHURN + 1} has \d+ field\(s\) where the header has 11: a truncated file")),
    "truncated-in-a-quoted-field": Case(
        "churn", _truncated_quoted, None,
        Refused("part-0.csv", rf"a quoted field opens on line {N_CHURN + 1} and never closes: a truncated file")),
    "row-with-an-extra-field": Case(
        "churn", _extra_field_in_a_row, None, Refused("part-0.csv", r"line 10 has 12 field\(s\) where the header has 11")),
    "parquet-bytes-not-utf8": Case(
        "churn", lambda: _parquet_with("plan", pa.array([b"basic"] * (N_CHURN - 1) + [b"b\xe9sic"], pa.binary())),
        None, Refused("part-0.parquet", r"column 'plan' \(binary\) cannot be read as text: Invalid UTF8")),
    "truncated-parquet": Case(
        "churn", lambda: {"part-0.parquet": parquet_bytes(churn())[:2000]}, None,
        Refused("part-0.parquet", r"not a readable Parquet file \(truncated or corrupt\?\)")),
    "corrupt-parquet-page": Case(
        "churn", lambda: {"part-0.parquet": (lambda b: b[:200] + bytes(x ^ 0xFF for x in b[200:260]) + b[260:])(
            parquet_bytes(churn()))}, None,
        Refused("part-0.parquet", r"not a readable Parquet file")),
    "jsonl-broken-line": Case(
        "churn", _broken_json_line, None, Refused("part-0.jsonl", r"line 5 is not valid JSON \(column \d+: ")),
    "jsonl-truncated": Case(
        "churn", lambda: {"part-0.jsonl": jsonl_bytes(churn())[:-30]}, None,
        Refused("part-0.jsonl", rf"line {N_CHURN} is not valid JSON")),
    "jsonl-line-not-an-object": Case(
        "churn", lambda: {"part-0.jsonl": jsonl_bytes(churn()) + b'["e-1", 100001]\n'}, None,
        Refused("part-0.jsonl", rf"line {N_CHURN + 1} is an array, not an object of fields")),
    "latin-1-bytes": Case(
        "churn", _latin1, None, Refused("part-0.csv", r"not UTF-8 text: byte 0xef on line 8 .*save it as UTF-8")),
    "utf-16": Case("purchases", lambda: {"p.csv": csv_bytes(purchases()).decode().encode("utf-16")}, None,
                   Refused("p.csv", r"UTF-16 text .*save it as UTF-8")),
    "semicolon-delimited": Case(
        "purchases", lambda: {"p.csv": csv_bytes(purchases(), sep=";", decimal=",")}, None,
        Refused("p.csv", r"delimited by ';', not ','")),
    "tab-delimited": Case("purchases", lambda: {"p.csv": csv_bytes(purchases(), sep="\t")}, None,
                          Refused("p.csv", r"delimited by a tab, not ','")),
    "missing-required-column": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn().drop(columns=["amount"]))}, None,
        Refused("part-0.csv", r"missing column\(s\) \['amount'\]")),
    "column-name-in-another-case": Case(
        "purchases", lambda: {"p.csv": csv_bytes(purchases().rename(columns={"quantity": "Quantity "}))}, None,
        Refused("p.csv", r"missing column\(s\) \['quantity'\].*the header has \['Quantity '\] \(names must match")),
    "missing-column-in-jsonl": Case(
        "churn", lambda: {"part-0.jsonl": jsonl_bytes(churn().drop(columns=["event_time"]))}, None,
        Refused("part-0.jsonl", r"missing column\(s\) \['event_time'\]")),
    "unknown-suffix-only": Case(
        "churn", lambda: {"part-0.tsv": csv_bytes(churn(), sep="\t")}, None,
        Refused("part-0.tsv", r"has no \.csv, \.jsonl, \.json or \.parquet file, only \['part-0\.tsv'\]")),
}
ROW_LEVEL = {
    # -- quarantined with the column and check named ----------------------------------------------------
    "null-key": Case("churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [3], "customer_id", None))},
                     N_CHURN, Accepted({"customer_id: not_nullable": 1})),
    "key-not-an-integer": Case("churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [4], "customer_id", "C-12"))},
                               N_CHURN, Accepted({"customer_id: parse_integer": 1})),
    "key-not-matching-its-pattern": Case(
        "purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [2], "customer_id", "X00012"))},
        N_PURCHASES, Accepted({"customer_id: str_matches('^C[0-9]{6,7}$')": 1})),
    "null-key-string": Case("purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [5], "customer_id", None))},
                            N_PURCHASES, Accepted({"customer_id: not_nullable": 1})),
    "event-id-not-matching-its-pattern": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [6], "event_id", "e 1; DROP"))},
        N_CHURN, Accepted({"event_id: str_matches('^[A-Za-z0-9_.:\\-]{1,128}$')": 1})),
    "text-in-a-number": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [2, 8], "amount", "12,50 EUR"))},
        N_CHURN, Accepted({"amount: parse_number": 2})),
    "text-in-an-integer": Case("purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [1], "quantity", "two"))},
                               N_PURCHASES, Accepted({"quantity: parse_integer": 1})),
    "out-of-range": Case("churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [5], "duration_s", "999999"))},
                         N_CHURN, Accepted({"duration_s: in_range(0, 86400)": 1})),
    "out-of-range-integer": Case("purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [0], "quantity", "0"))},
                                 N_PURCHASES, Accepted({"quantity: in_range(1, 100)": 1})),
    "outside-the-allowed-values": Case("churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [1], "plan", "gold"))},
                                       N_CHURN, Accepted({PLAN_CHECK: 1})),
    "unparseable-timestamp": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(spoil(churn(), [10], "event_time", "03/03/2026 10:00"))},
        N_CHURN, Accepted({"event_time: parse_timestamp": 1})),
    "timestamp-outside-the-day": Case(
        "purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), [3], "purchased_at", "2026-03-04T00:00:00Z"))},
        N_PURCHASES, Accepted({"purchased_at: less_than(2026-03-04 00:00:00+00:00)": 1})),
    "timestamp-before-the-day": Case(
        "churn", lambda: {"part-0.jsonl": jsonl_bytes(spoil(churn(), [0], "event_time", "2026-03-02T23:59:59Z"))},
        N_CHURN, Accepted({"event_time: greater_than_or_equal_to(2026-03-03 00:00:00+00:00)": 1})),
    "out-of-range-in-parquet": Case(
        "churn", lambda: {"part-0.parquet": parquet_bytes(spoil(churn(), [TAIL], "amount", "-4.00"))},
        N_CHURN, Accepted({"amount: in_range(0, 10000)": 1})),
    "same-id-other-content": Case(
        "churn", lambda: _conflicting_ids(2), N_CHURN + 2, Accepted({"event_id: field_uniqueness": 2})),
    "exact-redelivery-of-a-file": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn()), "part-0-again.csv": csv_bytes(churn())},
        2 * N_CHURN, Accepted(duplicates=N_CHURN)),
    "exact-redelivery-without-an-event-id": Case(
        "purchases", lambda: {"p.csv": csv_bytes(pd.concat([purchases(), purchases().iloc[:5]]))},
        N_PURCHASES + 5, Accepted(duplicates=5)),
    # -- too many for the contract: the day fails ----------------------------------------------------
    "every-row-outside-the-allowed-values": Case(
        "churn", lambda: {"part-0.csv": csv_bytes(churn().assign(plan="gold"))}, N_CHURN,
        Failed(N_CHURN, rf"{N_CHURN} of {N_CHURN} rows \(100\.0%\) break the contract.*{re.escape(PLAN_CHECK)}")),
    "many-ids-with-other-content": Case(
        "churn", lambda: _conflicting_ids(12), N_CHURN + 12,
        Failed(12, r"event_id: field_uniqueness \(12 rows: id e20260303-\d+-\d, e20260303-\d+-\d, .* and 7 more\)")),
    "many-timestamps-outside-the-day": Case(
        "purchases", lambda: {"p.csv": csv_bytes(spoil(purchases(), list(range(6)), "purchased_at", "2026-03-04T10:00:00Z"))},
        N_PURCHASES, Failed(6, r"purchased_at: less_than\(2026-03-04 00:00:00\+00:00\) \(6 rows\)")),
}

CASES = FILE_LEVEL | ROW_LEVEL


def test_the_corpus_is_broad() -> None:
    assert len(FILE_LEVEL) >= 12 and len(ROW_LEVEL) >= 12 and not FILE_LEVEL.keys() & ROW_LEVEL.keys()
    assert {type(c.expect) for c in FILE_LEVEL.values()} == {Accepted, Refused}
    assert {type(c.expect) for c in ROW_LEVEL.values()} == {Accepted, Failed}


# -- running a day ----------------------------------------------------------------------------------------


def settings_for(tmp_path: Path, use_case: str) -> Settings:
    return load_settings(lake_uri=str(tmp_path / "lake"), landing_uri=str(tmp_path / "landing"), source="files",
                         use_case=use_case)


def land(tmp_path: Path, files: dict[str, bytes]) -> None:
    folder = tmp_path / "landing" / f"ds={DS}"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def assert_downstream_refuses(settings: Settings, uc: UseCase, after: str) -> None:
    """The next steps of the day refuse, and no curated or features partition appears."""
    ctx = RunContext(dag_id="faults", run_id="corpus-next")
    lake = Lake(settings)
    if after == "ingest":
        with pytest.raises(LakeError, match=f"raw/events has no partition {DS}: run ingest_raw"):
            etl.curate_day(settings, DAY, ctx)
        with pytest.raises(LakeError, match=rf"has no partition {DS}: .*{uc.tables.raw.name} has no partition {DS}"):
            etl.build_features_day(settings, DAY, ctx)
        assert not lake.has_partition(uc.tables.raw, DS)
    else:
        with pytest.raises(LakeError, match=rf"no valid event on {DS}: \d+ of the \d+ rows .* were quarantined"):
            etl.build_features_day(settings, DAY, ctx)
    for table in (uc.tables.curated, uc.tables.state, uc.tables.features):
        assert not lake.has_partition(table, DS), table.name


def quarantine_of(settings: Settings, uc: UseCase) -> pd.DataFrame:
    return Lake(settings).read_partition(uc.tables.quarantine, DS).to_pandas()


def assert_named_in_quarantine(quarantined: pd.DataFrame, failures: dict[str, int]) -> None:
    """Each bad row carries the column and the check it failed."""
    for reason, n in failures.items():
        column = reason.split(": ", 1)[0]
        rows = quarantined[[reason in checks.split("; ") for checks in quarantined["failed_checks"]]]
        assert len(rows) == n, (reason, quarantined[["failed_columns", "failed_checks"]])
        assert all(column in columns.split(",") for columns in rows["failed_columns"])
    assert len(quarantined) == sum(failures.values())


@pytest.mark.parametrize("kind", list(CASES))
def test_a_landed_defect_is_accepted_quarantined_or_refused_by_name(kind: str, tmp_path: Path, caplog) -> None:
    case = CASES[kind]
    uc = USE_CASES[case.use_case]
    settings = settings_for(tmp_path, case.use_case)
    ctx = RunContext(dag_id="faults", run_id=f"corpus-{kind}")
    land(tmp_path, case.files())
    expect = case.expect

    if isinstance(expect, Refused):
        with pytest.raises(SourceError) as err:
            etl.ingest_day(settings, DAY, ctx)
        message = str(err.value)
        assert f"ds={DS}" in message and expect.file in message, message
        assert re.search(expect.problem, message), message
        # Not an I/O error that a retry could cure; not a bare pandas/pyarrow error either.
        assert type(err.value) is SourceError and not isinstance(err.value, OSError)
        assert_downstream_refuses(settings, uc, after="ingest")
        return

    with caplog.at_level(logging.WARNING, logger="sluice.edges.sources.files"):
        ingested = etl.ingest_day(settings, DAY, ctx)
    assert ingested["rows"] == case.rows  # every row delivered reached raw/events, no more, no fewer
    assert ingested["extra_fields"] == (expect.extras if isinstance(expect, Accepted) else [])

    if isinstance(expect, Failed):
        with pytest.raises(ContractViolation) as violation:
            etl.curate_day(settings, DAY, ctx)
        message = str(violation.value)
        assert re.search(expect.problem, message), message
        assert "were not changed" in message
        assert len(quarantine_of(settings, uc)) == expect.quarantined
        assert_downstream_refuses(settings, uc, after="curate")
        return

    curated = etl.curate_day(settings, DAY, ctx)
    assert curated["valid"] + curated["quarantined"] + curated["duplicates_removed"] == case.rows == curated["rows_in"]
    assert curated["failures"] == expect.failures
    assert curated["duplicates_removed"] == expect.duplicates
    assert_named_in_quarantine(quarantine_of(settings, uc), expect.failures)
    if expect.warns:
        assert any(expect.warns in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    built = etl.build_features_day(settings, DAY, ctx)
    lake = Lake(settings)
    assert lake.partition_rows(uc.tables.curated)[DS] == curated["valid"]
    assert built["ds"] == DS and lake.has_partition(uc.tables.features, DS)
