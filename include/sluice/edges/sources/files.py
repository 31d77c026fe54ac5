"""Events from files dropped under a landing prefix: ``<landing>/ds=YYYY-MM-DD/*.{csv,jsonl,json,parquet}``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from sluice.core.usecase import UseCase
from sluice.edges.sources import SourceError, as_text, conform, raw_schema
from sluice.edges.storage import filesystem
from sluice.settings import Settings

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _read_json_lines(data: bytes) -> pa.Table:
    """JSON lines with every value kept as delivered: strings as they are, numbers as their JSON text.

    (pyarrow's JSON reader would infer types, turning "2025-06-01" into a timestamp.)
    """
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {
        name: pa.array(
            [None if row.get(name) is None else row[name] if isinstance(row[name], str) else json.dumps(row[name])
             for row in rows],
            pa.string(),
        )
        for name in names
    }
    return pa.table(columns)


@dataclass(frozen=True)
class FileSource:
    landing_uri: str
    settings: Settings
    use_case: UseCase
    name: str = "files"

    def files_for(self, day: dt.date) -> tuple[pafs.FileSystem, list[str]]:
        fs, base = filesystem(self.settings, f"{self.landing_uri}/ds={day.isoformat()}")
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(SUFFIXES))
        return fs, paths

    def _read(self, fs: pafs.FileSystem, path: str) -> pa.Table:
        with fs.open_input_file(path) as f:
            if path.endswith(".csv"):
                data = f.read()

                def options(names: list[str]) -> pacsv.ConvertOptions:
                    return pacsv.ConvertOptions(
                        column_types={c: pa.string() for c in names},
                        strings_can_be_null=True,
                        null_values=[""],  # an empty field is null; "NA" or "null" stay text for the contract
                    )

                # Every column as text, undeclared ones too: they are kept in extra_fields as
                # delivered ("007" stays "007", not the number 7). The header comes from the first block.
                header = pacsv.open_csv(pa.BufferReader(data), convert_options=options(self.use_case.raw_fields))
                return pacsv.read_csv(pa.BufferReader(data), convert_options=options(header.schema.names))
            if path.endswith((".jsonl", ".json")):
                return _read_json_lines(f.read())
            return pq.read_table(f)

    def extract(self, start: dt.datetime, end: dt.datetime) -> pa.Table:
        """All files landed for each day of [start, end); a file missing a column is refused."""
        tables = []
        day = start.date()
        while dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) < end:
            fs, paths = self.files_for(day)
            for path in paths:
                try:
                    tables.append(conform(self._read(fs, path), f"landing file {path}", self.use_case))
                except (pa.ArrowInvalid, OSError, ValueError, AttributeError) as exc:
                    raise SourceError(f"cannot read landing file {path}: {exc}") from exc
            day += dt.timedelta(days=1)
        return pa.concat_tables(tables) if tables else raw_schema(self.use_case).empty_table()


def read_file(path: str, settings: Settings, uc: UseCase) -> pa.Table:
    """One events file (csv, jsonl/json, parquet) as delivered, declared fields as text."""
    fs, inner = filesystem(settings, path if "://" in path else Path(path).resolve().as_uri())
    if not inner.endswith(SUFFIXES):
        raise SourceError(f"{path}: not a .csv, .jsonl, .json or .parquet file")
    try:
        return FileSource("", settings, uc)._read(fs, inner)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
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
