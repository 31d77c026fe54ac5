"""Which days' state and features are stale, and bringing them up to date (``sluice rebuild --from D``).

The state of day D is built from curated D and the state of D-1 (running totals); the
features of D from the state of D and of D-w. Re-running a past day (a corrected landing
file, a fixed contract) rewrites curated D and state D, and every later day was built on
the old ones. Nothing is recomputed behind anyone's back: the lineage of each commit says
which version of its inputs it read, and a day is **stale** when an input it read has
been rewritten since (its last write is a later version), or when the day before it is.

:func:`stale_days` reads only the tables' logs; :func:`rebuild` runs the same step as
nightly_etl (``build_features_day``) for each stale day, in order.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.core import usecase
from sluice.core.lineage import META_PREFIX, Lineage, RunContext
from sluice.edges.lake import Lake
from sluice.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Write:
    """The last commit that wrote one partition of a table."""

    version: int
    inputs: Mapping[str, int]


def last_writes(history: list[dict[str, Any]]) -> dict[str, Write]:
    """Pure: partition day -> the newest commit that wrote it, from a table's commit history."""
    out: dict[str, Write] = {}
    for entry in sorted(history, key=lambda e: int(e["version"])):
        raw = entry.get(META_PREFIX + "partitions")
        if not raw:
            continue
        lineage = Lineage.from_metadata(entry)
        for day in json.loads(raw):
            out[day] = Write(int(entry["version"]), dict(lineage.inputs) if lineage else {})
    return out


def stale_state(state: Mapping[str, Write], curated: Mapping[str, Write], state_table: str,
                curated_table: str) -> dict[str, str]:
    """Pure: stale state days, each with why, given the last writes of the state and curated tables."""
    stale: dict[str, str] = {}
    for day in sorted(state):
        write = state[day]
        previous = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()
        used_curated = write.inputs.get(curated_table)
        used_state = write.inputs.get(state_table)
        if previous in stale:
            stale[day] = f"built on stale {previous}"
        elif day in curated and used_curated is not None and curated[day].version > used_curated:
            stale[day] = (f"{curated_table} {day} was rewritten (v{curated[day].version}) after it was built "
                          f"from v{used_curated}")
        elif previous in state and (used_state is None or state[previous].version > used_state):
            stale[day] = (f"{state_table} {previous} was rewritten (v{state[previous].version}) after it was "
                          f"built from v{used_state}")
    return stale


def stale_days(settings: Settings, *, last_commits: int | None = None) -> dict[str, str]:
    """Day -> why its state and features are out of date (empty when everything is current).

    ``last_commits`` bounds the log read (each commit is one object to fetch): the view
    looks at the recent commits only, so a re-run long ago that was never rebuilt may go
    unseen there; ``sluice status`` reads the whole log.
    """
    uc = usecase.of(settings)
    lake = Lake(settings)
    state_table, curated_table = uc.tables.state, uc.tables.curated
    if not lake.exists(state_table):
        return {}
    state = last_writes(lake.history(state_table, limit=last_commits))
    curated = last_writes(lake.history(curated_table, limit=last_commits)) if lake.exists(curated_table) else {}
    return stale_state(state, curated, state_table.name, curated_table.name)


def rebuild(settings: Settings, start: dt.date, ctx: RunContext, end: dt.date | None = None) -> list[str]:
    """Rebuild the state and features of every day from ``start`` to the last one (or ``end``), in order.

    The same step as nightly_etl's ``build_features`` (``sluice.stages.etl.build_features_day``);
    each day reads the state its predecessor has just written, so afterwards nothing is stale.
    """
    from sluice.stages.etl import build_features_day

    uc = usecase.of(settings)
    lake = Lake(settings)
    days = [d for d in lake.partitions(uc.tables.state) if d >= start.isoformat()]
    if end is not None:
        days = [d for d in days if d <= end.isoformat()]
    for day in days:
        build_features_day(settings, dt.date.fromisoformat(day), ctx)
        log.info("rebuilt %s %s", uc.tables.state.name, day)
    return days
