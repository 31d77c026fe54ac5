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
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from pandera.engines import pandas_engine
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


def _text_array(text: pd.Series) -> pyarrow.Array | None:
    """The values as an Arrow string array, or None when they are not all text (or null)."""
    if text.dtype != object or pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):
        return None
    return pyarrow.array(text.to_numpy(), type=pyarrow.string(), from_pandas=True)


# Constructs Python's re accepts that RE2 reads otherwise: "{,n}" (RE2: literal text), "[[:alpha:]]"
# (Python: a set of characters). Python refuses the others RE2 adds (\p{..}) when the spec is loaded.
_RE2_READS_OTHERWISE = ("{,", "[:")


def _re2_matches(text: pd.Series, anchored: str, python: Callable[[pd.Series], pd.Series]) -> np.ndarray | None:
    """``python(text)`` (a per-value ``re`` test, null: False) computed by Arrow's RE2 where that is the same.

    RE2 and Python's ``re`` read a pattern alike on printable ASCII; on other text (Unicode
    digits and spaces, control characters) they may not, so those values get ``python``.
    None when the values are not all text, or RE2 does not take the pattern or could read it
    otherwise (``_RE2_READS_OTHERWISE``).
    """
    arr = _text_array(text)
    if arr is None or any(construct in anchored for construct in _RE2_READS_OTHERWISE):
        return None
    try:
        hit = pc.match_substring_regex(arr, anchored)
    except pyarrow.ArrowInvalid:  # a construct RE2 lacks (backreferences, lookarounds)
        return None
    out = hit.fill_null(False).to_numpy(zero_copy_only=False)
    odd = pc.invert(pc.match_substring_regex(arr, r"^[\x20-\x7e]*$")).fill_null(False).to_numpy(zero_copy_only=False)
    if odd.any():
        out[odd] = python(text[odd]).fillna(False).to_numpy(dtype=bool)
    return out


def _shaped(text: pd.Series, pattern: str) -> np.ndarray:
    """Whether each value is text of the whole ``pattern`` (null: False)."""
    def python(values: pd.Series) -> pd.Series:
        return values.astype("string").str.fullmatch(pattern)

    fast = _re2_matches(text, f"^(?:{pattern})$", python)
    return fast if fast is not None else python(text).fillna(False).to_numpy(dtype=bool)


def _integers(text: pd.Series) -> pd.Series:
    num = pd.to_numeric(text, errors="coerce")
    # Whole numbers that fit in 64 bits; "inf" or 1e30 do not parse as an integer.
    ok = num.isna() | (np.isfinite(num) & (num.abs() < 2**63) & (num == num.round()))
    return num.where(ok).astype("Int64")


def _timestamps(text: pd.Series) -> pd.Series:
    return pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601").where(_shaped(text, ISO_TIMESTAMP))


def _dates(text: pd.Series) -> pd.Series:
    return pd.to_datetime(text, errors="coerce", format="%Y-%m-%d").where(_shaped(text, ISO_DATE))


# How a kind of value is parsed: (the rules, a text form on which Arrow's cast gives the very same
# values, that cast's type). The forms are the common ones and stay inside pandas' nanosecond years;
# integers have at most 15 digits (pandas reads a column with nulls through float64, exact below 2**53).
_PARSERS: dict[str, tuple[Callable[[pd.Series], pd.Series], str, pyarrow.DataType]] = {
    "integer": (_integers, r"^-?[0-9]{1,15}$", pyarrow.int64()),
    "timestamp": (_timestamps, r"^(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z$",
                  pyarrow.timestamp("ns", "UTC")),
    "date": (_dates, r"^(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2}$", pyarrow.timestamp("ns")),
}


def _parsed(text: pd.Series, rules: Callable[[pd.Series], pd.Series], form: str, arrow_type: pyarrow.DataType,
            ) -> pd.Series:
    """``rules(text)``, with the values of the common ``form`` cast by Arrow (vectorised) instead.

    The rules stay the definition: they parse every other value, and all of them when Arrow
    refuses one value of the form (an impossible date such as 2026-02-30), where they give null.
    """
    arr = _text_array(text)
    if arr is None:
        return rules(text)
    fast = pc.match_substring_regex(arr, form).fill_null(False).to_numpy(zero_copy_only=False)
    if not fast.any():
        return rules(text)
    try:
        source = arr.filter(fast)
        cast = pc.cast(source, pyarrow.date32()).cast(arrow_type) if arrow_type == pyarrow.timestamp("ns") \
            else pc.cast(source, arrow_type)
    except pyarrow.ArrowInvalid:
        return rules(text)
    slow = rules(text[~fast])
    quick = pd.Series(cast.to_pandas().array, index=np.flatnonzero(fast)).astype(slow.dtype)
    out = pd.concat([quick, pd.Series(slow.array, index=np.flatnonzero(~fast))]).sort_index()
    out.index = text.index
    return out.rename(text.name)


def parse_events(raw: pd.DataFrame, uc: UseCase) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the text fields; return the typed frame and (index, column, check) of failures."""
    typed = raw.copy()
    failures = []
    for column, kind in parsers(uc).items():
        text = raw[column]
        if kind == "number":  # (no fast path: Arrow rounds some long decimals otherwise than pandas)
            value = pd.to_numeric(text, errors="coerce").astype("float64")
        else:
            value = _parsed(text, *_PARSERS[kind])
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


# Pandera's built-in comparisons, by check name: (operator, statistic).
_COMPARISONS: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    "greater_than_or_equal_to": (operator.ge, "min_value"),
    "greater_than": (operator.gt, "min_value"),
    "less_than_or_equal_to": (operator.le, "max_value"),
    "less_than": (operator.lt, "max_value"),
    "equal_to": (operator.eq, "value"),
    "not_equal_to": (operator.ne, "value"),
}


def _passes(values: pd.Series, check: pa.Check) -> np.ndarray | None:
    """Where ``check`` surely passes (nulls: anything), vectorised; None for a check this does not know."""
    stats = check.statistics or {}
    if check.name in _COMPARISONS:
        op, stat = _COMPARISONS[check.name]
        result = op(values, stats[stat])
    elif check.name == "in_range":
        low = values >= stats["min_value"] if stats.get("include_min", True) else values > stats["min_value"]
        high = values <= stats["max_value"] if stats.get("include_max", True) else values < stats["max_value"]
        result = low & high
    elif check.name in ("isin", "notin"):
        result = values.isin(stats["allowed_values" if check.name == "isin" else "forbidden_values"])
        result = result if check.name == "isin" else ~result
    elif check.name == "str_matches":
        pattern = str(stats["pattern"])
        return _re2_matches(values, f"^(?:{pattern})", lambda v: v.str.match(pattern))
    else:
        return None
    return pd.Series(result).fillna(True).to_numpy(dtype=bool)


def _dtype_fits(values: pd.Series, column: pa.Column) -> bool:
    """Whether pandera's dtype check passes on every row (text: a Python str or null, as pandera's own test)."""
    if str(column.dtype) == "str":
        return _text_array(values) is not None
    return bool(column.dtype.check(pandas_engine.Engine.dtype(values.dtype)))


def rows_to_validate(typed: pd.DataFrame, schema: pa.DataFrameSchema) -> np.ndarray | None:
    """The rows that could fail ``schema`` (a superset, computed vectorised), or None: every row.

    Pandera tests most checks a value at a time in Python (its dtype test of text columns
    alone is a call per value), the largest cost of the contract. Its result on a row
    depends only on that row, so validating just the rows some check may fail gives the
    same failure cases, names included. Every check pandera would run is computed here
    (strictly or more strictly); anything unknown (a check, a dtype that does not fit, a
    whole-frame failure) answers None and pandera validates the whole frame, as before.
    """
    if schema.checks or schema.unique or schema.ordered or not set(schema.columns) <= set(typed.columns):
        return None
    suspect = np.zeros(len(typed), dtype=bool)
    for name, column in schema.columns.items():
        values = typed[name]
        if not _dtype_fits(values, column):
            return None
        missing = values.isna().to_numpy()
        if not column.nullable:
            suspect |= missing
        for check in column.checks:
            try:
                passed = _passes(values, check)
            except (TypeError, ValueError):  # pandera would fail the check as a whole
                return None
            if passed is None:
                return None
            suspect |= ~passed & ~missing
    return suspect


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
    schema = events_contract(day, uc)
    suspect = rows_to_validate(typed, schema)
    try:
        if suspect is None:
            schema.validate(typed, lazy=True)
        elif suspect.any():
            schema.validate(typed[suspect], lazy=True)
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
