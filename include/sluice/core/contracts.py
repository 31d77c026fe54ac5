"""The data contract of a use case's raw events (pandera) and the split into valid and quarantined rows.

The contract is built from the spec: every declared field is parsed from text by its
type, then checked by pandera (ranges, allowed values, patterns, nullability, event
times inside the day). Nothing is lost: every row either passes into the typed frame,
is an exact copy of another row (a redelivery: removed and counted, not a defect), or
lands in quarantine with the columns and checks it failed. If the invalid share is
above the use case's limit the caller raises :class:`ContractViolation`, whose message
names them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from sluice.core.usecase import EXTRA_COLUMN, UseCase

EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
# The text a date or a time must be: pandas alone reads "2024-08-1" as 1 August and "T22:5" as
# 22:05, which is how a value cut short (the last field of a truncated file) would pass unseen.
ISO_DATE = r"\d{4}-\d{2}-\d{2}"
_ZONE = r"(?:\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?))?"
ISO_TIMESTAMP = (
    ISO_DATE + r"(?:[Tt ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?" + _ZONE  # 2026-03-01T10:30:05.5+02:00
    + r"|\d{8}[Tt]\d{6}(?:[.,]\d+)?" + _ZONE  # the basic form: 20260301T103005Z
)


class ContractViolation(RuntimeError):
    """Too many rows broke the contract (or the whole day did); nothing downstream was written."""


def parsers(uc: UseCase) -> dict[str, str]:
    """How each text field is parsed before the checks run; a value that does not parse
    fails the check "parse_<kind>" on its row."""
    out = {uc.key: "integer"} if uc.spec.entity.type == "integer" else {}
    out[uc.event_time] = "timestamp"
    for name, f in uc.spec.fields.items():
        if f.type in ("integer", "number", "date", "timestamp"):
            out[name] = f.type
    return out


def _bound(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def events_contract(day: dt.date, uc: UseCase) -> pa.DataFrameSchema:
    """The contract for the parsed events of ``day`` (event times must fall inside the day)."""
    start = pd.Timestamp(day, tz="UTC")
    ev, entity = uc.spec.events, uc.spec.entity
    columns: dict[str, pa.Column] = {}
    if ev.id:
        # Uniqueness of the event id is checked after the other checks, among valid rows
        # only (see split_by_contract), so an invalid copy can never push out a valid one.
        columns[ev.id] = pa.Column(str, pa.Check.str_matches(EVENT_ID_PATTERN))
    if entity.type == "integer":
        key_checks = [] if entity.min is None else [pa.Check.ge(entity.min)]
        columns[uc.key] = pa.Column("Int64", key_checks)
    else:
        columns[uc.key] = pa.Column(str, pa.Check.str_matches(entity.pattern or r"^\S(.{0,126}\S)?$"))
    columns[uc.event_time] = pa.Column(
        pd.DatetimeTZDtype("ns", "UTC"), [pa.Check.ge(start), pa.Check.lt(start + pd.Timedelta(days=1))]
    )
    if ev.kind:
        columns[ev.kind] = pa.Column(str, pa.Check.isin(tuple(ev.kinds)))
    for name, f in uc.spec.fields.items():
        checks = []
        # Whole bounds as integers and values as a tuple: the check names (kept in quarantine rows
        # and failure counts) read "in_range(0, 10000)" and "isin(('a', 'b'))", as before the spec.
        low, high = _bound(f.min), _bound(f.max)
        if low is not None and high is not None:
            checks.append(pa.Check.in_range(low, high))
        elif low is not None:
            checks.append(pa.Check.ge(low))
        elif high is not None:
            checks.append(pa.Check.le(high))
        if f.values is not None:
            checks.append(pa.Check.isin(tuple(f.values)))
        if f.pattern is not None:
            checks.append(pa.Check.str_matches(f.pattern))
        if f.not_after_day:
            checks.append(pa.Check.le(pd.Timestamp(day) if f.type == "date" else start + pd.Timedelta(days=1)))
        dtype: object = {
            "string": str, "category": str, "integer": "Int64", "number": "float64",
            "date": "datetime64[ns]", "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
        }[f.type]
        columns[name] = pa.Column(dtype, checks, nullable=f.nullable)
    return pa.DataFrameSchema(columns, strict="filter", name=f"{uc.name}.raw_events")


def _shaped(text: pd.Series, pattern: str) -> np.ndarray:
    """Whether each value is text of the whole ``pattern`` (null: False)."""
    return text.astype("string").str.fullmatch(pattern).fillna(False).to_numpy(dtype=bool)


def parse_events(raw: pd.DataFrame, uc: UseCase) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the text fields; return the typed frame and (index, column, check) of failures."""
    typed = raw.copy()
    failures = []
    for column, kind in parsers(uc).items():
        text = raw[column]
        if kind == "integer":
            num = pd.to_numeric(text, errors="coerce")
            # Whole numbers that fit in 64 bits; "inf" or 1e30 do not parse as an integer.
            ok = num.isna() | (np.isfinite(num) & (num.abs() < 2**63) & (num == num.round()))
            value = num.where(ok).astype("Int64")
        elif kind == "number":
            value = pd.to_numeric(text, errors="coerce").astype("float64")
        elif kind == "timestamp":
            value = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601").where(_shaped(text, ISO_TIMESTAMP))
        else:
            value = pd.to_datetime(text, errors="coerce", format="%Y-%m-%d").where(_shaped(text, ISO_DATE))
        broken = text.notna() & value.isna()
        if broken.any():
            failures.append(pd.DataFrame({"index": raw.index[broken], "column": column, "check": f"parse_{kind}"}))
        typed[column] = value
    empty = pd.DataFrame({"index": pd.Series(dtype="int64"), "column": pd.Series(dtype=str), "check": pd.Series(dtype=str)})
    return typed, pd.concat([empty, *failures], ignore_index=True)


def content_ids(raw: pd.DataFrame, columns: list[str]) -> pd.Series:
    """An id from a row's content, for events without an id field: copies share it, nothing else does."""
    if raw.empty:  # (agg over no rows gives a frame, not a series)
        return pd.Series(index=raw.index, dtype=object)
    joined = raw[columns].astype(object).where(raw[columns].notna(), "\x00").astype(str).agg("\x1f".join, axis=1)
    return joined.map(lambda text: "h" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest())


@dataclass
class ContractResult:
    valid: pd.DataFrame  # typed rows that passed
    quarantined: pd.DataFrame  # raw rows that failed, with failed_columns and failed_checks
    failures: dict[str, int] = field(default_factory=dict)  # "column: check" -> rows
    duplicates: int = 0  # exact copies of another row (redelivery), removed before the checks
    conflicting_ids: list[str] = field(default_factory=list)  # event ids delivered with different contents

    @property
    def rows_in(self) -> int:
        """Every row delivered: valid, quarantined, or removed as an exact copy."""
        return len(self.valid) + len(self.quarantined) + self.duplicates

    @property
    def invalid_share(self) -> float:
        return len(self.quarantined) / self.rows_in if self.rows_in else 0.0

    def describe(self) -> str:
        top = sorted(self.failures.items(), key=lambda kv: -kv[1])
        return "; ".join(f"{check} ({n} rows{self._ids(check)})" for check, n in top) or "no failures"

    def _ids(self, check: str) -> str:
        """For the uniqueness check, which ids came with different contents (the first few)."""
        if not check.endswith(": field_uniqueness") or not self.conflicting_ids:
            return ""
        ids = self.conflicting_ids
        return f": id {', '.join(ids[:5])}{f' and {len(ids) - 5} more' if len(ids) > 5 else ''}"


def split_by_contract(raw: pd.DataFrame, day: dt.date, uc: UseCase) -> ContractResult:
    """Validate raw text rows of ``day``; return typed valid rows and quarantined rows."""
    fields = list(uc.raw_fields)
    missing = [c for c in fields if c not in raw.columns]
    if missing:
        raise ContractViolation(
            f"raw events of {uc.name} lack column(s) {missing}: the whole day breaks the contract "
            f"(a landing file needs {fields})"
        )
    every = fields + ([EXTRA_COLUMN] if EXTRA_COLUMN in raw.columns else [])
    raw = raw[every]
    # Exact copies (every field equal, undeclared ones too) are a redelivery, not a defect.
    copies_of_earlier = raw.duplicated(keep="first")
    duplicates = int(copies_of_earlier.sum())
    raw = raw[~copies_of_earlier.to_numpy()]
    id_column = uc.spec.events.id
    # Copies of an event id are put in a canonical order, so which copy counts as the
    # first does not depend on arrival order; other rows keep theirs (sorting every row
    # on every column would cost more than all the checks together).
    if id_column:
        same_id = raw[id_column].duplicated(keep=False).to_numpy()
        if same_id.any():
            canonical = raw[same_id].sort_values(every, kind="stable", na_position="last")
            raw = pd.concat([raw[~same_id], canonical])
    raw = raw.reset_index(drop=True)
    typed, parse_failures = parse_events(raw, uc)
    try:
        events_contract(day, uc).validate(typed, lazy=True)
        check_failures = parse_failures.iloc[:0]
    except SchemaErrors as err:
        cases = err.failure_cases
        whole = cases[cases["index"].isna()]
        if len(whole):
            raise ContractViolation(
                f"raw events of {uc.name} break the contract as a whole: "
                + "; ".join(f"{r.column}: {r.check}" for r in whole.itertuples())
            ) from err
        check_failures = cases[["index", "column", "check"]].astype({"index": "int64", "column": str, "check": str})
    bad = pd.concat([parse_failures, check_failures], ignore_index=True)
    conflicting_ids: list[str] = []
    if id_column:
        # Unique event id among the rows that pass every other check: the first copy (in
        # the stable order) is kept, later copies (same id, other content) are quarantined.
        otherwise_valid = typed.drop(index=bad["index"].unique())
        copies = otherwise_valid.index[otherwise_valid[id_column].duplicated(keep="first")]
        conflicting_ids = sorted(set(otherwise_valid.loc[copies, id_column].astype(str)))
        bad = pd.concat(
            [bad, pd.DataFrame({"index": copies, "column": id_column, "check": "field_uniqueness"})],
            ignore_index=True,
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
    valid = typed.drop(index=per_row.index)
    if id_column is None:
        valid = valid.assign(event_id=content_ids(raw.loc[valid.index], every))
    elif id_column != "event_id":
        valid = valid.rename(columns={id_column: "event_id"})
    valid = valid.sort_values("event_id").reset_index(drop=True)
    if uc.spec.entity.type == "integer":
        valid[uc.key] = valid[uc.key].astype("int64")
    for name, f in uc.spec.fields.items():
        if f.type == "date":
            valid[name] = valid[name].dt.date
    return ContractResult(
        valid=valid, quarantined=quarantined, failures={k: int(v) for k, v in failures.items()}, duplicates=duplicates,
        conflicting_ids=conflicting_ids,
    )
