"""Events from files dropped under a landing prefix: ``<landing>/ds=YYYY-MM-DD/*.{csv,jsonl,json,parquet}``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from sluice.core.usecase import UseCase
from sluice.edges.sources import SourceError, conform, raw_schema
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
                return pacsv.read_csv(
                    f,
                    convert_options=pacsv.ConvertOptions(
                        column_types={c: pa.string() for c in self.use_case.raw_fields},
                        strings_can_be_null=True,
                        null_values=[""],  # an empty field is null; "NA" or "null" stay text for the contract
                    ),
                )
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
