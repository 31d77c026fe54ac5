"""What users pick instead of Sluice's daily ETL: DuckDB and Polars, from raw D to features D.

Each runs the whole day in its own engine, the way a team that picked it would write it,
with every query generated from the use case's spec (as Sluice's own steps are):

1. **contract**: raw D (text) parsed by casts, the spec's checks as one filter (ranges,
   allowed values, patterns, nullability, event times inside the day, dates not after
   it), exact copies dropped and, of the valid rows sharing an event id, the first in
   the canonical order kept (Sluice's rules); curated D written as Parquet. Rejected
   rows are only dropped: no quarantine rows with the checks they failed.
2. **features** of D, written as Parquet:

   * ``duckdb-history``: one SQL query over the curated history (every day up to D).
   * ``duckdb-state``: running totals as Sluice keeps them: one SQL query for
     state(D) = state(D-1) + the activity of D, one for the features, whose windows are
     state(D) - state(D-w) (the states of earlier days are the lake's).
   * ``polars``: one lazy query over the curated history (``scan_parquet``).

They write plain Parquet files (no Delta commit, lineage or quarantine), so they do less
than Sluice does; :func:`differences` is how the benchmark checks that they computed the
same features.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sluice.core.contracts import EVENT_ID_PATTERN
from sluice.core.usecase import ACTIVE_DAYS, UseCase

# What Sluice's contract calls an unnamed string key (events_contract).
DEFAULT_KEY_PATTERN = r"^\S(.{0,126}\S)?$"


def _q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _in(values: tuple[str, ...] | list[str]) -> str:
    return "(" + ", ".join(_q(v) for v in values) + ")"


def _matches(pattern: str) -> str:
    """pandera's str_matches is re.match: anchored at the start only."""
    return f"^(?:{pattern})"


# -- the checks, described once for both engines ------------------------------------------
# Each check is (column, kind, argument); the engines translate them. "parsed" columns are
# cast from text first: a value that does not cast fails the row.


def parsed_types(uc: UseCase) -> dict[str, str]:
    """The columns cast from text, by kind (integer, number, timestamp, date)."""
    out = {uc.key: "integer"} if uc.spec.entity.type == "integer" else {}
    out[uc.event_time] = "timestamp"
    out.update({n: f.type for n, f in uc.spec.fields.items() if f.type in ("integer", "number", "date", "timestamp")})
    return out


def checks(uc: UseCase, day: dt.date) -> list[tuple[str, str, Any]]:
    """Every check of Sluice's contract (events_contract) on the typed values, in a neutral form."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    ev, entity = uc.spec.events, uc.spec.entity
    out: list[tuple[str, str, Any]] = []
    if ev.id:
        out += [(ev.id, "not_null", None), (ev.id, "matches", EVENT_ID_PATTERN)]
    out.append((uc.key, "not_null", None))
    if entity.type == "integer":
        if entity.min is not None:
            out.append((uc.key, "ge", entity.min))
    else:
        out.append((uc.key, "matches", entity.pattern or DEFAULT_KEY_PATTERN))
    out += [(uc.event_time, "not_null", None), (uc.event_time, "ge", start),
            (uc.event_time, "lt", start + dt.timedelta(days=1))]
    if ev.kind:
        out += [(ev.kind, "not_null", None), (ev.kind, "isin", tuple(ev.kinds))]
    for name, f in uc.spec.fields.items():
        if not f.nullable:
            out.append((name, "not_null", None))
        if f.min is not None:
            out.append((name, "ge", f.min))
        if f.max is not None:
            out.append((name, "le", f.max))
        if f.values is not None:
            out.append((name, "isin", tuple(f.values)))
        if f.pattern is not None:
            out.append((name, "matches", f.pattern))
        if f.not_after_day:
            out.append((name, "le", day if f.type == "date" else start + dt.timedelta(days=1)))
    return out


def _double(value: float) -> str:
    """A float literal as a DOUBLE (DuckDB reads 0.233 as a DECIMAL)."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def _value_sql(name: str, counter: Any, kind: str) -> str:
    """A counter's contribution of one event, in integer units (Sluice rounds half to even)."""
    if counter.count is not None:
        return f"CASE WHEN {kind} IN {_in(counter.count)} THEN 1 ELSE 0 END"
    scaled = f"coalesce({counter.sum}, 0) * {10 ** counter.decimals}"
    value = f"CAST(round_even({scaled}, 0) AS BIGINT)"
    return value if counter.kinds is None else f"CASE WHEN {kind} IN {_in(counter.kinds)} THEN {value} ELSE 0 END"


def _kind_sql(uc: UseCase) -> str:
    return uc.spec.events.kind or _q(uc.spec.events.kinds[0])


def _features_sql(uc: UseCase, day: dt.date, window: Callable[[str, int], str], first: str, last: str) -> str:
    """The SELECT list of the features, from a window's total (``window(counter, w)``) and the dates."""
    d = f"DATE {_q(day.isoformat())}"
    exprs: dict[str, str] = {}
    for feature in uc.features:
        spec = feature.spec
        if spec.tenure is not None:
            since = first if spec.tenure == "first_event" else spec.tenure
            expr = f"CAST({d} - {since} AS INTEGER)"
        elif spec.recency:
            expr = f"CAST({d} - {last} AS INTEGER)"
        elif spec.window is not None:
            assert feature.window is not None
            expr = window(spec.window, feature.window)
            counter = uc.counters.get(spec.window)
            if feature.dtype == "int32":
                expr = f"CAST({expr} AS INTEGER)"
            else:
                if counter is not None and counter.decimals:
                    expr = f"({expr}) / {_double(10 ** counter.decimals)}"
                if spec.divide != 1:
                    expr = f"({expr}) / {_double(spec.divide)}"
                expr = f"CAST({expr} AS DOUBLE)"
        elif spec.ratio is not None:
            a, b = exprs[spec.ratio[0]], exprs[spec.ratio[1]]
            den = f"({b}) * {_double(spec.scale)}" if spec.scale != 1 else f"({b})"
            expr = f"CASE WHEN {den} > 0 THEN ({a}) / ({den}) ELSE 0.0 END"
        else:
            assert spec.latest is not None
            expr = spec.latest
        exprs[feature.name] = expr
    return ", ".join(f"{e} AS {n}" for n, e in exprs.items())


# -- DuckDB --------------------------------------------------------------------------------


_SQL_OPERATORS = {"ge": ">=", "le": "<=", "lt": "<"}


def _sql_literal(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return f"TIMESTAMPTZ {_q(value.isoformat())}"
    if isinstance(value, dt.date):
        return f"DATE {_q(value.isoformat())}"
    return repr(value)


def duckdb_contract_sql(uc: UseCase, day: dt.date, raw_files: list[str]) -> str:
    """The valid, typed, de-duplicated rows of raw D (curated D)."""
    casts = {"integer": "BIGINT", "number": "DOUBLE", "timestamp": "TIMESTAMPTZ", "date": "DATE"}
    parsed = parsed_types(uc)
    typed = ", ".join(f"TRY_CAST({c} AS {casts[k]}) AS _t_{c}" for c, k in parsed.items())
    conditions = [f"({c} IS NULL OR _t_{c} IS NOT NULL)" for c in parsed]
    for column, kind, arg in checks(uc, day):
        v = f"_t_{column}" if column in parsed else column
        if kind == "not_null":
            conditions.append(f"{v} IS NOT NULL")
            continue
        if kind == "isin":
            test = f"{v} IN {_in(arg)}"
        elif kind == "matches":
            test = f"regexp_matches({v}, {_q(_matches(arg))})"
        else:
            test = f"{v} {_SQL_OPERATORS[kind]} {_sql_literal(arg)}"
        conditions.append(f"({v} IS NULL OR {test})")
    every = list(uc.raw_fields) + ["extra_fields"]
    ev_id = uc.spec.events.id
    outputs = [f"_t_{c} AS {c}" if c in parsed else c for c in uc.raw_fields if c != ev_id]
    if ev_id:
        event_id = f"{ev_id} AS event_id"
        first_of_id = (f"QUALIFY row_number() OVER (PARTITION BY {ev_id} ORDER BY "
                       + ", ".join(f"{c} NULLS LAST" for c in every) + ") = 1")
    else:  # the content is the id (Sluice hashes it too, with another function)
        event_id = "'h' || md5(concat_ws(chr(31), " + ", ".join(f"coalesce({c}, chr(0))" for c in every) + ")) AS event_id"
        first_of_id = ""
    files = "[" + ", ".join(_q(f) for f in raw_files) + "]"
    return (
        f"WITH raw AS (SELECT DISTINCT {', '.join(every)} FROM read_parquet({files})), "  # exact copies: a redelivery
        f"typed AS (SELECT *, {typed} FROM raw) "
        f"SELECT {event_id}, {', '.join(outputs)} FROM typed WHERE {' AND '.join(conditions)} {first_of_id}"
    )


def _duckdb() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # dates of event times are UTC days, as in Sluice
    return con


def _files_sql(files: list[str]) -> str:
    return "read_parquet([" + ", ".join(_q(f) for f in files) + "])"


def duckdb_history(uc: UseCase, day: dt.date, inputs: dict[str, Any], out: Path) -> dict[str, float]:
    """Contract in SQL, then one SQL query over the curated history."""
    con = _duckdb()
    t0 = time.perf_counter()
    curated = out / "curated.parquet"
    con.execute(f"COPY ({duckdb_contract_sql(uc, day, inputs['raw'])}) TO {_q(str(curated))} (FORMAT parquet)")
    t1 = time.perf_counter()
    key, d = uc.key, f"DATE {_q(day.isoformat())}"
    kind = _kind_sql(uc)
    sums = []
    for w in uc.windows:
        since = f"_d > {d} - INTERVAL {w} DAY"
        for name, counter in uc.counters.items():
            sums.append(f"sum(CASE WHEN {since} THEN {_value_sql(name, counter, kind)} ELSE 0 END) AS w_{name}_{w}")
        sums.append(f"count(DISTINCT CASE WHEN {since} THEN _d END) AS w_{ACTIVE_DAYS}_{w}")
    attrs = ", ".join(uc.attributes)
    history = _files_sql([*inputs["curated_before"], str(curated)])
    end = _sql_literal(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC))
    select = _features_sql(uc, day, lambda c, w: f"w_{c}_{w}", "first_event_date", "last_event_date")
    query = (
        f"WITH e AS (SELECT *, CAST({uc.event_time} AS DATE) AS _d FROM {history} WHERE {uc.event_time} < {end}), "
        f"per AS (SELECT {key}, min(_d) AS first_event_date, max(_d) AS last_event_date, {', '.join(sums)} "
        f"FROM e GROUP BY {key}), "
        f"latest AS (SELECT {key}, {attrs} FROM e QUALIFY row_number() OVER "
        f"(PARTITION BY {key} ORDER BY {uc.event_time} DESC, event_id DESC) = 1) "
        f"SELECT {key}, {select} FROM per JOIN latest USING ({key}) "
        f"WHERE last_event_date > {d} - INTERVAL {uc.spec.population.active_within_days} DAY"
    )
    con.execute(f"COPY ({query}) TO {_q(str(out / 'features.parquet'))} (FORMAT parquet)")
    return {"contract": t1 - t0, "features": time.perf_counter() - t1}


def duckdb_state(uc: UseCase, day: dt.date, inputs: dict[str, Any], out: Path) -> dict[str, float]:
    """Contract in SQL, then the state of D from D-1 (one query) and the features from the states (one query)."""
    con = _duckdb()
    t0 = time.perf_counter()
    curated, state = out / "curated.parquet", out / "state.parquet"
    con.execute(f"COPY ({duckdb_contract_sql(uc, day, inputs['raw'])}) TO {_q(str(curated))} (FORMAT parquet)")
    t1 = time.perf_counter()
    key, d, kind = uc.key, f"DATE {_q(day.isoformat())}", _kind_sql(uc)
    counters = [*uc.counters, ACTIVE_DAYS]
    sums = ", ".join(f"sum({_value_sql(n, c, kind)}) AS {n}" for n, c in uc.counters.items())
    attrs = ", ".join(uc.attributes)
    previous = inputs["state"].get(1)
    prev = _files_sql(previous) if previous else f"(SELECT * FROM {_files_sql([str(curated)])} LIMIT 0)"
    cum = ", ".join(f"coalesce(p.cum_{n}, 0) + coalesce(t.{n}, 0) AS cum_{n}" for n in counters)
    latest_attrs = ", ".join(f"CASE WHEN t.{key} IS NULL THEN p.{a} ELSE t.{a} END AS {a}" for a in uc.attributes)
    state_query = (
        f"WITH e AS (SELECT * FROM {_files_sql([str(curated)])}), "
        f"today AS (SELECT {key}, {sums}, 1 AS {ACTIVE_DAYS} FROM e GROUP BY {key}), "
        f"latest AS (SELECT {key}, {attrs} FROM e QUALIFY row_number() OVER "
        f"(PARTITION BY {key} ORDER BY {uc.event_time} DESC, event_id DESC) = 1), "
        f"t AS (SELECT * FROM today JOIN latest USING ({key})) "
        f"SELECT coalesce(t.{key}, p.{key}) AS {key}, coalesce(p.first_event_date, {d}) AS first_event_date, "
        f"CASE WHEN t.{key} IS NULL THEN p.last_event_date ELSE {d} END AS last_event_date, {cum}, {latest_attrs} "
        f"FROM t FULL OUTER JOIN {prev} AS p ON p.{key} = t.{key}"
    )
    con.execute(f"COPY ({state_query}) TO {_q(str(state))} (FORMAT parquet)")
    joins = []
    for w in uc.windows:
        files = inputs["state"].get(w)
        if files:  # a window reaching before the lake began: all its earlier totals are zero
            joins.append(f"LEFT JOIN (SELECT {key}, {', '.join(f'cum_{n}' for n in counters)} FROM {_files_sql(files)})"
                         f" AS s{w} USING ({key})")

    def window(counter: str, w: int) -> str:
        return f"(s.cum_{counter} - coalesce(s{w}.cum_{counter}, 0))" if inputs["state"].get(w) else f"s.cum_{counter}"

    select = _features_sql(uc, day, window, "s.first_event_date", "s.last_event_date")
    query = (
        f"SELECT s.{key} AS {key}, {select} FROM {_files_sql([str(state)])} AS s {' '.join(joins)} "
        f"WHERE s.last_event_date > {d} - INTERVAL {uc.spec.population.active_within_days} DAY"
    )
    con.execute(f"COPY ({query}) TO {_q(str(out / 'features.parquet'))} (FORMAT parquet)")
    return {"contract": t1 - t0, "features": time.perf_counter() - t1}


# -- Polars --------------------------------------------------------------------------------


def _polars_value(pl: Any, counter: Any, kind: Any) -> Any:
    if counter.count is not None:
        return kind.is_in(list(counter.count)).cast(pl.Int64)
    value = (pl.col(counter.sum).fill_null(0) * 10 ** counter.decimals).round(0).cast(pl.Int64)
    return value if counter.kinds is None else pl.when(kind.is_in(list(counter.kinds))).then(value).otherwise(0)


def polars_contract(pl: Any, uc: UseCase, day: dt.date, raw_files: list[str]) -> Any:
    """The valid, typed, de-duplicated rows of raw D, lazily."""
    parsed = parsed_types(uc)
    every = list(uc.raw_fields) + ["extra_fields"]
    cast = {
        "integer": lambda c: pl.col(c).cast(pl.Int64, strict=False),
        "number": lambda c: pl.col(c).cast(pl.Float64, strict=False),
        "timestamp": lambda c: pl.col(c).str.to_datetime(time_zone="UTC", time_unit="us", strict=False),
        "date": lambda c: pl.col(c).str.to_date("%Y-%m-%d", strict=False),
    }
    raw = pl.scan_parquet(raw_files).select(every).unique(maintain_order=True)  # exact copies: a redelivery
    typed = raw.with_columns(**{f"_t_{c}": cast[k](c) for c, k in parsed.items()})
    ok = [pl.col(c).is_null() | pl.col(f"_t_{c}").is_not_null() for c in parsed]
    for column, kind, arg in checks(uc, day):
        v = pl.col(f"_t_{column}" if column in parsed else column)
        if kind == "not_null":
            ok.append(v.is_not_null())
            continue
        if kind == "isin":
            test = v.is_in(list(arg))
        elif kind == "matches":
            test = v.str.contains(_matches(arg))
        else:
            test = {"ge": v >= arg, "le": v <= arg, "lt": v < arg}[kind]
        ok.append(v.is_null() | test)
    valid = typed.filter(pl.all_horizontal(ok))
    ev_id = uc.spec.events.id
    if ev_id:  # of the valid rows sharing an id, the first in the canonical order
        valid = valid.sort(every, nulls_last=True).unique(subset=[ev_id], keep="first", maintain_order=True)
        event_id = pl.col(ev_id)
    else:
        event_id = pl.concat_str([pl.col(c).fill_null("\x00") for c in every], separator="\x1f").hash().cast(pl.String)
    outputs = [pl.col(f"_t_{c}").alias(c) if c in parsed else pl.col(c) for c in uc.raw_fields if c != ev_id]
    return valid.select(event_id.alias("event_id"), *outputs)


def polars_history(uc: UseCase, day: dt.date, inputs: dict[str, Any], out: Path) -> dict[str, float]:
    """Contract as a lazy query sunk to Parquet, then one lazy query over the curated history."""
    import polars as pl

    t0 = time.perf_counter()
    curated = out / "curated.parquet"
    polars_contract(pl, uc, day, inputs["raw"]).sink_parquet(curated)
    t1 = time.perf_counter()
    key, time_col = uc.key, uc.event_time
    kind = pl.col(uc.spec.events.kind) if uc.spec.events.kind else pl.lit(uc.spec.events.kinds[0])
    history = pl.concat([pl.scan_parquet(inputs["curated_before"]), pl.scan_parquet(curated)], how="vertical_relaxed") \
        if inputs["curated_before"] else pl.scan_parquet(curated)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    e = history.filter(pl.col(time_col) < end).with_columns(_d=pl.col(time_col).dt.date())
    aggs = [pl.col("_d").min().alias("first_event_date"), pl.col("_d").max().alias("last_event_date"),
            pl.col(uc.attributes).sort_by([time_col, "event_id"]).last()]
    for w in uc.windows:
        since = pl.col("_d") > day - dt.timedelta(days=w)
        for name, counter in uc.counters.items():
            aggs.append(pl.when(since).then(_polars_value(pl, counter, kind)).otherwise(0).sum().alias(f"w_{name}_{w}"))
        aggs.append(pl.col("_d").filter(since).n_unique().alias(f"w_{ACTIVE_DAYS}_{w}"))
    per = e.group_by(key).agg(aggs).filter(
        pl.col("last_event_date") > day - dt.timedelta(days=uc.spec.population.active_within_days))
    per.select(key, *_polars_features(pl, uc, day)).sink_parquet(out / "features.parquet")
    return {"contract": t1 - t0, "features": time.perf_counter() - t1}


def _polars_features(pl: Any, uc: UseCase, day: dt.date) -> list[Any]:
    exprs: dict[str, Any] = {}
    for feature in uc.features:
        spec = feature.spec
        if spec.tenure is not None or spec.recency:
            since = "last_event_date" if spec.recency else (
                "first_event_date" if spec.tenure == "first_event" else spec.tenure)
            expr = (pl.lit(day) - pl.col(since)).dt.total_days().cast(pl.Int32)
        elif spec.window is not None:
            expr = pl.col(f"w_{spec.window}_{feature.window}")
            counter = uc.counters.get(spec.window)
            if feature.dtype == "int32":
                expr = expr.cast(pl.Int32)
            else:
                if counter is not None and counter.decimals:
                    expr = expr / float(10 ** counter.decimals)
                if spec.divide != 1:
                    expr = expr / float(spec.divide)
                expr = expr.cast(pl.Float64)
        elif spec.ratio is not None:
            a, b = exprs[spec.ratio[0]], exprs[spec.ratio[1]]
            den = b * spec.scale if spec.scale != 1 else b
            expr = pl.when(den > 0).then(a / den).otherwise(0.0)
        else:
            assert spec.latest is not None
            expr = pl.col(spec.latest)
        exprs[feature.name] = expr
    return [e.alias(n) for n, e in exprs.items()]


ALTERNATIVES: dict[str, Callable[[UseCase, dt.date, dict[str, Any], Path], dict[str, float]]] = {
    "duckdb-history": duckdb_history,
    "duckdb-state": duckdb_state,
    "polars": polars_history,
}


# -- the same features? ---------------------------------------------------------------------


def differences(ours: pd.DataFrame, theirs: pd.DataFrame, uc: UseCase) -> list[str]:
    """What differs between two feature frames of a day (sorted by key): empty when they agree.

    Integers and categories must be equal, floats close (``np.isclose``): engines may sum
    in another order.
    """
    key = uc.key
    if len(ours) != len(theirs):
        return [f"{len(ours):,} rows vs {len(theirs):,}"]
    a = ours.sort_values(key, ignore_index=True)
    b = theirs.sort_values(key, ignore_index=True)
    problems = []
    for column in [key, *uc.feature_columns]:
        if column not in b.columns:
            problems.append(f"{column}: missing")
            continue
        x, y = a[column], b[column]
        if pd.api.types.is_float_dtype(x.dtype):
            same = np.isclose(x.to_numpy(float), y.to_numpy(float), equal_nan=True)
        else:
            xs, ys = x.astype(object), y.astype(object)
            same = ((xs == ys) | (xs.isna() & ys.isna())).to_numpy(bool)
        if not same.all():
            first = int(np.flatnonzero(~same)[0])
            problems.append(f"{column}: {int((~same).sum()):,} rows differ, e.g. {key}={a[key].iat[first]}: "
                            f"{x.iat[first]!r} vs {y.iat[first]!r}")
    return problems
