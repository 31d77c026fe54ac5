"""``sluice usecase``: list, show and check use cases, and scaffold a new one from a sample.

``list``   the built-in use cases and those of ``SLUICE_USE_CASES``, which are deployed
``show``   what a use case expects (the landing file's fields and checks) and builds
``check``  validate a spec; with ``--sample``, run a sample file through its data contract
``new``    write ``DIR/NAME/usecase.yaml`` guessed from a sample, for a person to finish

Exit codes: 0 ok; 1 a sample lacks fields of the spec (the whole day would be refused);
2 an invalid spec, an unreadable sample or a refused command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

SAMPLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # the spec's rule for a use case name
TOP_FAILURES = 10


# -- reading a sample -----------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def read_sample(path: str | Path) -> pd.DataFrame:
    """A sample file as text columns (every value a str or None), read as a landing file is read:
    CSV with an empty field as null, JSON lines with numbers kept as their JSON text, Parquet with
    timestamps as ISO 8601 in UTC (``Z``) and dates as YYYY-MM-DD."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SAMPLE_SUFFIXES:
        raise ValueError(f"{p}: a sample is {', '.join(SAMPLE_SUFFIXES)}, not {suffix or 'a file without suffix'}")
    if suffix == ".csv":
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    elif suffix in (".jsonl", ".json"):
        text = p.read_text()
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{p}: every JSON line must be an object of fields")
        names = list(dict.fromkeys(k for r in rows for k in r))
        df = pd.DataFrame({n: [_text(r.get(n)) for r in rows] for n in names}, columns=names, dtype=object)
    else:
        df = _parquet_as_text(p)
    df = df.astype(object)
    return df.where(df.notna(), None)


def _parquet_as_text(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns: dict[str, list[str | None]] = {}
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(col.type):
            target = pa.timestamp("us", tz="UTC") if col.type.tz else pa.timestamp("us")
            text = pc.strftime(col.cast(target), format="%Y-%m-%dT%H:%M:%S")
            col = pc.binary_join_element_wise(text, pa.scalar("Z" if col.type.tz else ""), "")
        elif pa.types.is_date(col.type):
            col = pc.strftime(col, format="%Y-%m-%d")
        elif not pa.types.is_string(col.type):
            try:
                col = col.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                columns[name] = [_text(v) for v in col.to_pylist()]
                continue
        columns[name] = col.to_pylist()
    return pd.DataFrame(columns, columns=table.column_names, dtype=object)


# -- helpers --------------------------------------------------------------------------------
def _error(text: str) -> int:
    print(text, file=sys.stderr)
    return 2


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _first_line(text: str, width: int = 90) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


# -- list -----------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> int:
    from sluice.core.usecase import UseCaseError, builtin_names, load_use_case
    from sluice.settings import Settings, use_case_name

    try:
        deployed_refs = list(Settings().use_cases)
    except ValueError as exc:  # a malformed SLUICE_* variable
        return _error(f"error: settings: {exc}")
    builtins = builtin_names()
    entries: dict[str, dict[str, Any]] = {}
    for ref in [*builtins, *deployed_refs]:
        try:
            uc = load_use_case(ref)
        except UseCaseError as exc:
            folder = Path(ref).resolve() if Path(ref).exists() else None
            entries.setdefault(ref, {"name": use_case_name(ref), "folder": str(folder) if folder else None,
                                     "description": "", "error": str(exc), "builtin": ref in builtins,
                                     "deployed": False})
            entries[ref]["deployed"] = entries[ref]["deployed"] or ref in deployed_refs
            continue
        where = str(uc.folder)
        entry = entries.setdefault(where, {"name": uc.name, "folder": where,
                                           "description": _first_line(uc.spec.description, 10**6),
                                           "error": None, "builtin": ref in builtins, "deployed": False})
        entry["deployed"] = entry["deployed"] or ref in deployed_refs
    listed = list(entries.values())
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    rows = [["name", "deployed", "kind", "folder", "description"]]
    for e in listed:
        rows.append([e["name"], "yes" if e["deployed"] else "no", "built-in" if e["builtin"] else "own",
                     e["folder"] or "-", f"ERROR {_first_line(e['error'])}" if e["error"] else _first_line(e["description"])])
    print("\n".join(_table(rows, indent="")))
    print(f"\ndeployed: SLUICE_USE_CASES={','.join(deployed_refs)}"
          + ("" if _env_use_cases() else " (unset: every built-in use case)"))
    return 0


def _env_use_cases() -> str:
    import os

    return os.environ.get("SLUICE_USE_CASES", "").strip()


# -- show -----------------------------------------------------------------------------------
def _show(args: argparse.Namespace) -> int:
    from sluice.core.usecase import UseCaseError, load_use_case

    try:
        uc = load_use_case(args.name)
    except UseCaseError as exc:
        return _error(str(exc))
    d = uc.describe()
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"{d['name']}  ({d['folder']})")
    if d["description"].strip():
        print(f"  {d['description'].strip()}")
    print(f"\nlanding fields ({len(d['landing_fields'])}): a landing file must have these columns; "
          "others are kept in extra_fields")
    print("\n".join(_table([["field", "type", "checks"]]
                           + [[f["field"], f["type"], f["checks"]] for f in d["landing_fields"]])))
    print(f"\nfeatures ({len(d['features'])}):")
    print("\n".join(_table([["name", "type"]] + [[f["name"], f["type"]] for f in d["features"]])))
    print(f"\npopulation: {d['population']}")
    print(f"label: {d['label']}")
    pub = d["publish"]
    extra = ", ".join(f"{k} {v}" for k, v in pub.items() if k not in ("postgres_table", "redis_prefix"))
    print(f"publish: PostgreSQL table {pub['postgres_table']}; Redis hash {pub['redis_prefix']}:<ds> "
          f"(a field per {uc.spec.entity.name}) and {pub['redis_prefix']}:latest" + (f" ({extra})" if extra else ""))
    return 0


# -- check ----------------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> int:
    from sluice.core.usecase import UseCaseError, load_use_case
    from sluice.settings import USE_CASE_SPEC

    try:
        uc = load_use_case(args.path)
    except UseCaseError as exc:
        return _error(str(exc))
    spec_file = uc.folder / USE_CASE_SPEC if uc.folder else args.path
    for where, target in (("simulator.factory", uc.spec.simulator and uc.spec.simulator.factory),
                          ("feature_hook.function", uc.spec.feature_hook and uc.spec.feature_hook.function)):
        if target:
            try:
                uc.resolve(target)
            except Exception as exc:  # an import error, a missing name: the spec names code that is not there
                return _error(f"{spec_file}: {where}: cannot resolve {target!r}: {exc}")
    print(f"ok: {spec_file}: use case {uc.name}: {len(uc.raw_fields)} landing fields, "
          f"{len(uc.feature_columns)} features from {len(uc.counters)} counters, label {uc.label} "
          f"({uc.horizon} days)")
    if not args.sample:
        return 0
    try:
        sample = read_sample(args.sample)
    except (OSError, ValueError) as exc:
        return _error(f"error: cannot read sample {args.sample}: {exc}")
    return _check_sample(uc, sample, args.sample)


def _with_extra(sample: pd.DataFrame, fields: list[str], extra: list[str]) -> pd.DataFrame:
    """The raw frame a source would deliver: the declared fields, the others as JSON per row."""
    from sluice.core.usecase import EXTRA_COLUMN

    raw = sample[fields].copy()
    if extra:
        raw[EXTRA_COLUMN] = [
            json.dumps({n: row[n] for n in extra if row[n] is not None}, sort_keys=True)
            for row in sample[extra].to_dict("records")
        ]
    elif EXTRA_COLUMN in sample.columns:
        raw[EXTRA_COLUMN] = sample[EXTRA_COLUMN]
    else:
        raw[EXTRA_COLUMN] = None
    return raw


def sample_days(sample: pd.DataFrame, time_field: str) -> dict[dt.date, pd.DataFrame]:
    """The rows of a sample by the UTC day of their event time; rows whose time does not parse
    join the first day's, so that the contract reports them (today's if no time parses)."""
    times = pd.to_datetime(sample[time_field], errors="coerce", utc=True, format="ISO8601")
    days = pd.Series(times.dt.date, index=sample.index)
    first = days.dropna().min() if days.notna().any() else dt.datetime.now(dt.UTC).date()
    days = days.where(days.notna(), first)
    return {day: sample[days == day].reset_index(drop=True) for day in sorted(set(days))}


def _check_sample(uc: Any, sample: pd.DataFrame, sample_name: str) -> int:
    from sluice.core.contracts import ContractViolation, split_by_contract
    from sluice.core.usecase import EXTRA_COLUMN

    fields = list(uc.raw_fields)
    extra = [c for c in sample.columns if c not in fields and c != EXTRA_COLUMN]
    missing = [c for c in fields if c not in sample.columns]
    print(f"sample {sample_name}: {len(sample):,} rows, {len(sample.columns)} fields")
    if missing:
        print(f"fields of the spec missing from the sample (the whole day would be refused): {', '.join(missing)}")
        print(f"fields of the sample not in the spec (kept in raw/events.{EXTRA_COLUMN}): "
              f"{', '.join(extra) or 'none'}")
        print("the contract was not run: a landing file without every field of the spec is refused")
        return 1
    limit = uc.spec.contract.max_invalid_share
    totals = {"in": 0, "valid": 0, "quarantined": 0, "duplicates": 0}
    failures: Counter[str] = Counter()
    per_day: list[str] = []
    refused: list[str] = []
    groups = sample_days(sample, uc.event_time)
    for day, rows in groups.items():
        try:
            result = split_by_contract(_with_extra(rows, fields, extra), day, uc)
        except ContractViolation as exc:
            refused.append(f"{day}: {exc}")
            totals["in"] += len(rows)
            continue
        totals["in"] += len(rows)
        totals["valid"] += len(result.valid)
        totals["quarantined"] += len(result.quarantined)
        totals["duplicates"] += result.duplicates
        failures.update(result.failures)
        flag = (f"  above the limit {limit:.1%}: this day would fail" if result.invalid_share > limit else "")
        per_day.append(f"  {day}: {len(rows):,} in, {len(result.valid):,} valid, {len(result.quarantined):,} "
                       f"quarantined ({result.invalid_share:.1%}), {result.duplicates:,} duplicates removed{flag}")
    span = f"{min(groups)}" + (f" to {max(groups)}" if len(groups) > 1 else "")
    share = totals["quarantined"] / max(totals["valid"] + totals["quarantined"], 1)
    print(f"days: {len(groups)} ({span}), by the UTC day of {uc.event_time}")
    print(f"rows in: {totals['in']:,}  valid: {totals['valid']:,}  quarantined: {totals['quarantined']:,} "
          f"({share:.1%})  duplicates removed: {totals['duplicates']:,}")
    if len(groups) > 1 or any("above the limit" in line for line in per_day):
        print("\n".join(per_day))
    for line in refused:
        print(f"  refused {line}")
    if failures:
        print("top failures:")
        for reason, n in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FAILURES]:
            print(f"  {reason} ({n:,} rows)")
        if len(failures) > TOP_FAILURES:
            print(f"  ... {len(failures) - TOP_FAILURES} more")
    else:
        print("top failures: none")
    print(f"fields of the sample not in the spec (kept in raw/events.{EXTRA_COLUMN}): {', '.join(extra) or 'none'}")
    print("fields of the spec missing from the sample (the whole day would be refused): none")
    return 0


# -- new ------------------------------------------------------------------------------------
def _new(args: argparse.Namespace) -> int:
    from sluice.core.scaffold import infer, render_yaml
    from sluice.core.usecase import UseCaseError, builtin_names, load_use_case
    from sluice.settings import USE_CASE_SPEC

    name = args.name
    if not _NAME.match(name):
        return _error(f"error: {name!r} is not a use case name: a lower-case identifier "
                      "(a letter, then letters, digits or _; 40 at most)")
    if name in builtin_names():
        return _error(f"error: {name!r} is a built-in use case (its lake prefix, model and DAG ids would clash): "
                      "pick another name")
    folder = Path(args.dir) / name
    if folder.exists():
        return _error(f"error: {folder} exists: refusing to overwrite it (remove it or pick another name)")
    try:
        sample = read_sample(args.sample)
    except (OSError, ValueError) as exc:
        return _error(f"error: cannot read sample {args.sample}: {exc}")
    try:
        inferred = infer(sample, name, key=args.key, time=args.time, kind=args.kind, event_id=args.event_id)
    except ValueError as exc:
        return _error(f"error: {args.sample}: {exc}")
    text = render_yaml(inferred.spec, Path(args.sample).name, inferred.notes)
    folder.mkdir(parents=True)
    spec_file = folder / USE_CASE_SPEC
    spec_file.write_text(text)
    try:
        uc = load_use_case(folder)
    except UseCaseError as exc:
        return _error(f"{exc}\nthe scaffold is invalid (a bug of `sluice usecase new`); "
                      f"it is kept in {spec_file} for a look")
    spec = inferred.spec
    ev = spec["events"]
    times = pd.to_datetime(sample[ev["time"]], errors="coerce", utc=True, format="ISO8601").dropna()
    first, last = (times.min().date(), times.max().date()) if len(times) else ("YYYY-MM-DD", "YYYY-MM-DD")
    q = shlex.quote
    print(f"wrote {spec_file} from {args.sample} ({len(sample):,} rows, {len(sample.columns)} fields)")
    print(f"  entity: {spec['entity']['name']} (key {spec['entity']['key']}, {spec['entity']['type']})")
    print(f"  events: time {ev['time']}, "
          + (f"kind {ev['kind']} in {ev['kinds']}" if "kind" in ev else "one kind (no kind field)")
          + (f", id {ev['id']}" if "id" in ev else ", no id field (a row's content is its id)"))
    typed = ", ".join(f"{n} ({f['type']})" for n, f in spec["fields"].items())
    print(f"  fields: {typed or 'none'}")
    print(f"  {len(uc.counters)} counters, {len(uc.feature_columns)} features; label {uc.label} (a placeholder)")
    print("next steps:")
    print(f"  1. edit {spec_file}: the label (what is predicted), then every guessed check (ranges, values)")
    print(f"  2. sluice usecase check {q(str(folder))} --sample {q(args.sample)}")
    env = f"SLUICE_USE_CASES={q(str(folder))} SLUICE_SOURCE=files"
    print(f"  3. {env} sluice land {q(args.sample)}   (files of history, split by day into the landing prefix)")
    print(f"  4. {env} sluice load-history --from {first} --to {last}")
    return 0


# -- the command ------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Add ``usecase`` (list, show, check, new) to the ``sluice`` command's subparsers."""
    usecase = subparsers.add_parser(
        "usecase", help="use cases: list, show, check a spec (and a sample), scaffold a new one",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = usecase.add_subparsers(dest="usecase_command", required=True)
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("list", _list, "built-in use cases and those of SLUICE_USE_CASES, which are deployed"),
        ("show", _show, "what a use case expects (landing fields, checks) and builds (features, label)"),
        ("check", _check, "validate a spec; with --sample, run a sample through its data contract"),
        ("new", _new, "scaffold DIR/NAME/usecase.yaml from a sample of events"),
    ]
    parsers = {}
    for name, func, text in commands:
        parsers[name] = sub.add_parser(name, help=text, description=text)
        parsers[name].set_defaults(func=func)
    parsers["list"].add_argument("--json", action="store_true", help="print JSON")
    parsers["show"].add_argument("name", help="a built-in name, or a use case folder (or its usecase.yaml)")
    parsers["show"].add_argument("--json", action="store_true", help="print describe() as JSON")
    parsers["check"].add_argument("path", help="a use case folder, its usecase.yaml, or a built-in name")
    parsers["check"].add_argument("--sample", help="a sample of events: .csv, .jsonl/.json (JSON lines), .parquet")
    new = parsers["new"]
    new.add_argument("name", help="the use case's name: a lower-case identifier (also its folder's name)")
    new.add_argument("--sample", required=True, help="a sample of events: .csv, .jsonl/.json, .parquet")
    new.add_argument("--dir", default="usecases", help="where the use case folder goes (default: ./usecases)")
    new.add_argument("--key", help="the entity key column (default: guessed)")
    new.add_argument("--time", help="the event time column (default: guessed)")
    new.add_argument("--kind", help="the event kind column, '' for none (default: guessed)")
    new.add_argument("--event-id", dest="event_id", help="the unique event id column, '' for none (default: guessed)")


def main(argv: list[str] | None = None) -> int:
    """``python -m sluice.ops.usecase_cli usecase ...``: the same command outside ``sluice``."""
    parser = argparse.ArgumentParser(prog="sluice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
