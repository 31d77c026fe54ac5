"""Events from files dropped under a landing prefix: ``<landing>/ds=YYYY-MM-DD/*.{csv,jsonl,json,parquet}``.

A file is read whole into memory, then parsed. A problem of the file itself (not UTF-8, a row
with too few fields, a cut-off quote, a broken JSON line, a corrupt Parquet footer, a missing
or doubled column) is a :class:`SourceError` naming the file and the problem: a retry would
read the same bytes again. An error of the store while reading (an outage) is raised as it is,
and retried.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from sluice.core.usecase import UseCase
from sluice.edges.sources import SourceError, as_text, conform, raw_schema
from sluice.edges.storage import filesystem
from sluice.settings import Settings

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_OTHER_DELIMITERS = {";": "';'", "\t": "a tab", "|": "'|'"}


class _Unreadable(ValueError):
    """What is wrong with a file's bytes; the caller names the file."""


def _is_events_file(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def _is_marker(path: str) -> bool:
    """``_SUCCESS``, ``.crc`` and the like: never events, never reported."""
    return path.rsplit("/", 1)[-1].startswith(("_", "."))


def _utf8(data: bytes) -> str:
    """The text of a file, which must be UTF-8 (a leading byte order mark is dropped)."""
    if data.startswith(_UTF16_BOMS):
        raise _Unreadable("UTF-16 text (it starts with a UTF-16 byte order mark), not UTF-8: save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _Unreadable(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be decoded "
            "(Latin-1 or Windows-1252?); save it as UTF-8"
        ) from None


def _first_bad_row(data: bytes, convert: pacsv.ConvertOptions) -> pacsv.InvalidRow | None:
    """The first row whose number of fields differs from the header's (read again on one thread,
    so that pyarrow knows its line)."""
    seen: list[pacsv.InvalidRow] = []

    def keep(row: pacsv.InvalidRow) -> str:
        seen.append(row)
        return "error"

    try:
        pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(use_threads=False),
                       parse_options=pacsv.ParseOptions(invalid_row_handler=keep), convert_options=convert)
    except pa.ArrowException:
        pass
    return seen[0] if seen else None


def _unterminated_quote(text: str) -> int | None:
    """The line where a quoted field opens and never closes (pyarrow would read it to the end of the file)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error:
        return start
    return None


def _read_csv(data: bytes, declared: list[str]) -> pa.Table:
    """Every column as text, undeclared ones too: they are kept in extra_fields as delivered
    ("007" stays "007", not the number 7). An empty field is null; "NA" or "null" stay text."""
    if not data:
        raise _Unreadable("the file is empty (0 bytes): a CSV file needs at least its header line")
    if not data.strip():
        raise _Unreadable("no header line (only blank lines)")
    first = data.lstrip(b"\r\n").split(b"\n", 1)[0]
    header = _utf8(first).strip("\r")
    if "," not in header:
        for delimiter, name in _OTHER_DELIMITERS.items():
            if delimiter in header:
                raise _Unreadable(
                    f"delimited by {name}, not ',': its header is one column {header[:120]!r}; "
                    "a CSV file here is comma-separated"
                )
    if b"\n" not in data and b"\r" not in data:
        data += b"\n"  # a header without a line end: pyarrow would see no header at all

    def options(names: list[str]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(column_types={c: pa.string() for c in names}, strings_can_be_null=True,
                                    null_values=[""])

    try:
        # The header comes from the first block.
        names = pacsv.open_csv(pa.BufferReader(data), convert_options=options(declared)).schema.names
        convert = options(names)
        table = pacsv.read_csv(pa.BufferReader(data), convert_options=convert)
    except pa.ArrowException as exc:  # in memory: the file's, whatever pyarrow calls it
        _utf8(data)  # a byte that is not UTF-8 is the likelier cause: name its line
        bad = _first_bad_row(data, options(declared))
        if bad is not None:
            where = f"line {bad.number}" if bad.number is not None else f"the row {bad.text[:80]!r}"
            raise _Unreadable(
                f"{where} has {bad.actual_columns} field(s) where the header has {bad.expected_columns}: "
                "a truncated file, or a value with an unquoted ','?"
            ) from None
        raise _Unreadable(f"not a readable CSV file: {exc}") from None
    if data.count(b'"') % 2:
        line = _unterminated_quote(_utf8(data))
        if line is not None:
            raise _Unreadable(f"a quoted field opens on line {line} and never closes: a truncated file?")
    repeated = _header_rows(table)
    if repeated:
        raise _Unreadable(
            f"the header comes again as data ({repeated} row(s)): files concatenated? Land them as separate files"
        )
    return table


def _header_rows(table: pa.Table) -> int:
    """Rows whose every field is its column's name (a second header from concatenated files)."""
    if table.num_rows == 0 or table.num_columns == 0:
        return 0
    names = table.column_names  # (by position: a doubled name is refused later, naming it)
    same = pc.equal(table.column(0), names[0])
    for i in range(1, len(names)):
        same = pc.and_kleene(same, pc.equal(table.column(i), names[i]))
    return int(pc.sum(pc.fill_null(same, False)).as_py() or 0)


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _read_json(data: bytes, declared: list[str], array_allowed: bool) -> pa.Table:
    """JSON lines with every value kept as delivered: strings as they are, numbers as their JSON text.

    (pyarrow's JSON reader would infer types, turning "2025-06-01" into a timestamp.) A ``.json``
    file may also be one JSON array of objects.
    """
    if not data:
        raise _Unreadable("the file is empty (0 bytes)")
    text = _utf8(data)
    if not text.strip():
        raise _Unreadable("no JSON line (only blank lines)")
    rows: list[dict[str, object]] = []
    if array_allowed and text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _Unreadable(f"not valid JSON ({exc.msg} on line {exc.lineno}): a truncated file?") from None
        lines = list(enumerate(values if isinstance(values, list) else [values], 1))
        what = "item"
    else:
        # Split on line ends only: str.splitlines would also split at U+2028 or \x85 inside a value.
        lines = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise _Unreadable(
                    f"line {number} is not valid JSON (column {exc.colno}: {exc.msg}): "
                    "a truncated file or a broken line?"
                ) from None
        what = "line"
    for number, value in lines:
        if not isinstance(value, dict):
            raise _Unreadable(f"{what} {number} is {_json_kind(value)}, not an object of fields")
        rows.append(value)
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {
        name: pa.array(
            [None if row.get(name) is None else row[name] if isinstance(row[name], str) else json.dumps(row[name])
             for row in rows],
            pa.string(),
        )
        for name in names
    }
    if not rows:  # an empty array: no rows, like a CSV file with a header only
        return pa.table({n: pa.array([], pa.string()) for n in declared})
    return pa.table(columns)


def _read_parquet(data: bytes) -> pa.Table:
    if not data:
        raise _Unreadable("the file is empty (0 bytes)")
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:  # in memory: an OSError here is the file's (a bad page)
        raise _Unreadable(f"not a readable Parquet file (truncated or corrupt?): {exc}") from None


def parse_events_file(name: str, data: bytes, uc: UseCase) -> pa.Table:
    """The table of one events file's bytes, by the suffix of ``name``; :class:`_Unreadable` says why not."""
    suffix = name.lower()
    if suffix.endswith(".csv"):
        return _read_csv(data, uc.raw_fields)
    if suffix.endswith((".jsonl", ".json")):
        return _read_json(data, uc.raw_fields, array_allowed=suffix.endswith(".json"))
    return _read_parquet(data)


@dataclass(frozen=True)
class FileSource:
    landing_uri: str
    settings: Settings
    use_case: UseCase
    name: str = "files"

    def _listing(self, day: dt.date) -> tuple[pafs.FileSystem, str, list[str], list[str]]:
        """The folder of ``day``, its events files and the other files in it (markers left out)."""
        fs, base = filesystem(self.settings, f"{self.landing_uri}/ds={day.isoformat()}")
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not _is_marker(i.path))
        return fs, base, [p for p in files if _is_events_file(p)], [p for p in files if not _is_events_file(p)]

    def files_for(self, day: dt.date) -> tuple[pafs.FileSystem, list[str]]:
        fs, _, paths, _ = self._listing(day)
        return fs, paths

    def _read(self, fs: pafs.FileSystem, path: str) -> pa.Table:
        with fs.open_input_file(path) as f:
            data = f.read()  # an error of the store here (an outage) is raised as it is: retried
        try:
            return parse_events_file(path, data, self.use_case)
        except _Unreadable as exc:
            raise SourceError(f"cannot read landing file {path}: {exc}") from exc

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """All files landed for each day of [start, end).

        A file that cannot be read, or misses a column, refuses the interval; so does a day
        whose files hold no row, or whose only files are of an unknown type.
        """
        tables = []
        day = start.date()
        while dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) < end:
            fs, base, paths, others = self._listing(day)
            names = [p.rsplit("/", 1)[-1] for p in others]
            if others and not paths:
                raise SourceError(
                    f"landing folder {base} has no .csv, .jsonl, .json or .parquet file, only {names}: "
                    "nothing read (an events file of another type?)"
                )
            if others:
                log.warning("landing folder %s: %s ignored (not .csv, .jsonl, .json or .parquet)", base, names)
            read = [conform(self._read(fs, path), f"landing file {path}", self.use_case) for path in paths]
            if paths and not any(t.num_rows for t in read):
                raise SourceError(
                    f"landing files of ds={day.isoformat()} hold no rows (a header at most): "
                    f"{[p.rsplit('/', 1)[-1] for p in paths]} in {base}"
                )
            tables += read
            day += dt.timedelta(days=1)
        return pa.concat_tables(tables) if tables else raw_schema(self.use_case).empty_table()


def read_file(path: str, settings: Settings, uc: UseCase) -> pa.Table:
    """One events file (csv, jsonl/json, parquet) as delivered, declared fields as text."""
    fs, inner = filesystem(settings, path if "://" in path else Path(path).resolve().as_uri())
    if not _is_events_file(inner):
        raise SourceError(f"{path}: not a .csv, .jsonl, .json or .parquet file")
    try:
        with fs.open_input_file(inner) as f:
            data = f.read()
        return parse_events_file(inner, data, uc)
    except _Unreadable as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    except OSError as exc:  # by hand, from the command line: a missing file is the user's to fix
        raise SourceError(f"cannot read {path}: {exc}") from exc


def land_file(path: str, settings: Settings, uc: UseCase) -> dict[str, int]:
    """Split an events file by the UTC day of its event time into the landing prefix.

    Writes ``<landing>/ds=D/<file name>.csv`` for every day D in the file (replacing a
    file of the same name: landing the same file twice changes nothing) and returns the
    rows per day. Rows whose event time does not parse are refused with the count.
    What a team does once with a file of history, before ``sluice load-history``.
    """
    import pandas as pd

    delivered = read_file(path, settings, uc)
    conform(delivered, path, uc)  # refuses a missing or doubled column, naming the file
    table = pa.table({n: as_text(delivered.column(n)) for n in delivered.column_names})
    when = pd.to_datetime(pd.Series(table.column(uc.event_time).to_pylist()), errors="coerce", utc=True,
                          format="ISO8601")
    if when.isna().any():
        bad = int(when.isna().sum())
        raise SourceError(f"{path}: {bad} row(s) have an {uc.event_time} that is not an ISO 8601 time; "
                          "nothing landed")
    days = when.dt.strftime("%Y-%m-%d").to_numpy()
    name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".csv"
    out: dict[str, int] = {}
    for day in sorted(set(days)):
        rows = table.filter(pa.array(days == day))
        fs, base = filesystem(settings, f"{settings.landing}/ds={day}")
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{name}") as stream:
            pacsv.write_csv(rows, stream)
        out[day] = rows.num_rows
    return out
