"""Lineage of a commit, and who is running: no heavy imports, so DAG files may use it."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sluice import __version__

META_PREFIX = "sluice."
_META_PREFIX = META_PREFIX


def detected_code_version() -> str:
    """SLUICE_CODE_VERSION if set (images set it at build), else the git commit, else the package version."""
    return os.environ.get("SLUICE_CODE_VERSION") or _checkout_version()


@lru_cache(maxsize=1)
def _checkout_version() -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


@dataclass(frozen=True)
class Lineage:
    """What produced a commit: recorded in the Delta commit's metadata."""

    dag_id: str
    run_id: str
    ds: str
    code_version: str
    inputs: dict[str, int] = field(default_factory=dict)  # table name -> version read
    extra: dict[str, Any] = field(default_factory=dict)  # small facts, e.g. row counts

    def to_metadata(self) -> dict[str, str]:
        return {_META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Lineage | None:
        if _META_PREFIX + "dag_id" not in meta:
            return None

        def load(key: str, default: Any) -> Any:
            raw = meta.get(_META_PREFIX + key)
            return json.loads(raw) if isinstance(raw, str) and raw[:1] in "{[" else (raw or default)

        return cls(
            dag_id=meta[_META_PREFIX + "dag_id"],
            run_id=meta.get(_META_PREFIX + "run_id", ""),
            ds=meta.get(_META_PREFIX + "ds", ""),
            code_version=meta.get(_META_PREFIX + "code_version", ""),
            inputs=load("inputs", {}),
            extra=load("extra", {}),
        )



@dataclass(frozen=True)
class RunContext:
    """Who is running: goes into the lineage of every commit."""

    dag_id: str = "manual"
    run_id: str = "manual"

    def lineage(self, ds: str, inputs: dict[str, int], code_version: str | None = None, **extra: Any) -> Lineage:
        return Lineage(
            dag_id=self.dag_id,
            run_id=self.run_id,
            ds=ds,
            code_version=code_version or detected_code_version(),
            inputs=inputs,
            extra=extra,
        )
