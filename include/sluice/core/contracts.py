"""The data contract of raw events (pandera) and the split into valid and quarantined rows.

Nothing is lost: every row either passes into the typed frame or lands in quarantine
with the columns and checks it failed. If the invalid share is above the contract's
limit the caller raises :class:`ContractViolation`, whose message names them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from sluice.edges.sources.simulator import DEVICES, EVENT_TYPES, PLANS, REGIONS
from sluice.tables import RAW_EVENT_FIELDS

MAX_DURATION_S = 86_400
MAX_AMOUNT = 10_000


class ContractViolation(RuntimeError):
    """Too many rows broke the contract; nothing downstream was written."""


# How each text field is parsed before the checks run; a value that does not parse
# fails the check "parse_<kind>" on its row.
PARSERS = {
    "customer_id": "integer",
    "event_time": "timestamp",
    "duration_s": "number",
    "amount": "number",
    "signup_date": "date",
}


def events_contract(day: dt.date) -> pa.DataFrameSchema:
    """The contract for the parsed events of ``day`` (event times must fall inside the day)."""
    start = pd.Timestamp(day, tz="UTC")
    return pa.DataFrameSchema(
        {
            # Uniqueness of event_id is checked after the other checks, among valid rows
            # only (see split_by_contract), so an invalid copy can never push out a valid one.
            "event_id": pa.Column(str, pa.Check.str_matches(r"^[A-Za-z0-9_.:\-]{1,128}$")),
            "customer_id": pa.Column("Int64", pa.Check.ge(1)),
            "event_time": pa.Column(
                pd.DatetimeTZDtype("ns", "UTC"),
                [pa.Check.ge(start), pa.Check.lt(start + pd.Timedelta(days=1))],
            ),
            "event_type": pa.Column(str, pa.Check.isin(EVENT_TYPES)),
            "duration_s": pa.Column("float64", pa.Check.in_range(0, MAX_DURATION_S), nullable=True),
            "amount": pa.Column("float64", pa.Check.in_range(0, MAX_AMOUNT), nullable=True),
            "plan": pa.Column(str, pa.Check.isin(PLANS)),
            "region": pa.Column(str, pa.Check.isin(REGIONS)),
            # Acquisition channels are added by the business (a new one is drift, reported by
            # drift_report), so channel is an open category: any lower-case identifier.
            "channel": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_]{0,39}$")),
            "device": pa.Column(str, pa.Check.isin(DEVICES), nullable=True),
            "signup_date": pa.Column("datetime64[ns]", pa.Check.le(pd.Timestamp(day))),
        },
        strict="filter",
        name="raw_events",
    )


def parse_events(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the text fields; return the typed frame and (index, column, check) of failures."""
    typed = raw.copy()
    failures = []
    for column, kind in PARSERS.items():
        text = raw[column]
        if kind == "integer":
            num = pd.to_numeric(text, errors="coerce")
            # Whole numbers that fit in 64 bits; "inf" or 1e30 do not parse as an id.
            ok = num.isna() | (np.isfinite(num) & (num.abs() < 2**63) & (num == num.round()))
            value = num.where(ok).astype("Int64")
        elif kind == "number":
            value = pd.to_numeric(text, errors="coerce").astype("float64")
        elif kind == "timestamp":
            value = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        else:
            value = pd.to_datetime(text, errors="coerce", format="%Y-%m-%d")
        broken = text.notna() & value.isna()
        if broken.any():
            failures.append(pd.DataFrame({"index": raw.index[broken], "column": column, "check": f"parse_{kind}"}))
        typed[column] = value
    empty = pd.DataFrame({"index": pd.Series(dtype="int64"), "column": pd.Series(dtype=str), "check": pd.Series(dtype=str)})
    return typed, pd.concat([empty, *failures], ignore_index=True)


@dataclass
class ContractResult:
    valid: pd.DataFrame  # typed rows that passed
    quarantined: pd.DataFrame  # raw rows that failed, with failed_columns and failed_checks
    failures: dict[str, int] = field(default_factory=dict)  # "column: check" -> rows

    @property
    def rows_in(self) -> int:
        return len(self.valid) + len(self.quarantined)

    @property
    def invalid_share(self) -> float:
        return len(self.quarantined) / self.rows_in if self.rows_in else 0.0

    def describe(self) -> str:
        top = sorted(self.failures.items(), key=lambda kv: -kv[1])
        return "; ".join(f"{check} ({n} rows)" for check, n in top) or "no failures"


def split_by_contract(raw: pd.DataFrame, day: dt.date) -> ContractResult:
    """Validate raw text rows of ``day``; return typed valid rows and quarantined rows."""
    missing = [c for c in RAW_EVENT_FIELDS if c not in raw.columns]
    if missing:
        raise ContractViolation(f"raw events lack column(s) {missing}: the whole day breaks the contract")
    # Copies of an event id are put in a canonical order, so which copy counts as the
    # first does not depend on arrival order; other rows keep theirs (sorting every row
    # on every column would cost more than all the checks together).
    raw = raw[RAW_EVENT_FIELDS]
    copies = raw["event_id"].duplicated(keep=False).to_numpy()
    if copies.any():
        canonical = raw[copies].sort_values(RAW_EVENT_FIELDS, kind="stable", na_position="last")
        raw = pd.concat([raw[~copies], canonical])
    raw = raw.reset_index(drop=True)
    typed, parse_failures = parse_events(raw)
    schema = events_contract(day)
    try:
        schema.validate(typed, lazy=True)
        check_failures = parse_failures.iloc[:0]
    except SchemaErrors as err:
        cases = err.failure_cases
        whole = cases[cases["index"].isna()]
        if len(whole):
            raise ContractViolation(
                "raw events break the contract as a whole: "
                + "; ".join(f"{r.column}: {r.check}" for r in whole.itertuples())
            ) from err
        check_failures = cases[["index", "column", "check"]].astype({"index": "int64", "column": str, "check": str})
    bad = pd.concat([parse_failures, check_failures], ignore_index=True)
    # Unique event id, among the rows that pass every other check: the first copy (in the
    # stable order) is kept, later copies are quarantined.
    otherwise_valid = typed.drop(index=bad["index"].unique())
    copies = otherwise_valid.index[otherwise_valid["event_id"].duplicated(keep="first")]
    bad = pd.concat(
        [bad, pd.DataFrame({"index": copies, "column": "event_id", "check": "field_uniqueness"})], ignore_index=True
    )
    # A value that did not parse is null afterwards: report the parse, not the null.
    parsed_away = set(zip(parse_failures["index"], parse_failures["column"]))
    keep = [not (chk == "not_nullable" and (i, col) in parsed_away) for i, col, chk in bad.itertuples(index=False)]
    bad = bad[np.array(keep, dtype=bool)].drop_duplicates()
    bad = bad.assign(reason=bad["column"] + ": " + bad["check"])

    failures = bad.groupby("reason")["index"].nunique().astype(int).to_dict()
    per_row = (
        bad.sort_values(["index", "column", "check"])
        .groupby("index")
        .agg(
            failed_columns=("column", lambda s: ",".join(dict.fromkeys(s))),
            failed_checks=("reason", lambda s: "; ".join(dict.fromkeys(s))),
        )
    )
    # Outputs in a canonical order (valid event ids are unique): the same rows in any
    # arrival order give the same frames.
    quarantined = raw.loc[per_row.index].join(per_row)
    quarantined = quarantined.sort_values(list(quarantined.columns), na_position="last").reset_index(drop=True)
    valid = typed.drop(index=per_row.index).sort_values("event_id").reset_index(drop=True)
    valid["customer_id"] = valid["customer_id"].astype("int64")
    valid["signup_date"] = valid["signup_date"].dt.date
    return ContractResult(valid=valid, quarantined=quarantined, failures={k: int(v) for k, v in failures.items()})
