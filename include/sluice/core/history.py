"""A use case's feature history built in memory: the nightly ETL's fold without a lake.

The same pure steps the ``nightly_etl`` DAG runs for each day (``daily_activity``,
``advance_state``, ``features_as_of``, ``label_snapshot`` of ``sluice.core.features``),
folded over a sequence of days with the states kept in memory. It serves experiments
that need many histories (the model-behaviour suite trains on one per seed, a notebook
tuning a simulator) where writing a lake for each would cost minutes.

Pure: no I/O. Memory holds the states of the longest window's days and the snapshots not
yet labelled, not the whole history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from sluice.core import features as F
from sluice.core.usecase import UseCase


def feature_history(days: Iterable[tuple[dt.date, pd.DataFrame]], uc: UseCase) -> pd.DataFrame:
    """Every snapshot of ``days`` (consecutive days with their typed, valid events), labels
    filled where the horizon has passed within ``days``, unmatured ones left null."""
    keep = max((*uc.windows, 1))
    states: dict[dt.date, pd.DataFrame] = {}
    pending: dict[dt.date, pd.DataFrame] = {}
    done: list[pd.DataFrame] = []
    previous: pd.DataFrame | None = None
    for day, events in days:
        state = F.advance_state(previous, F.daily_activity(events, uc), day, uc)
        states[day] = state
        lagged = {w: states.get(day - dt.timedelta(days=w)) for w in uc.windows}
        pending[day] = F.features_as_of(state, lagged, day, uc)
        labelled = day - dt.timedelta(days=uc.horizon)
        if labelled in pending:
            done.append(F.label_snapshot(pending.pop(labelled), state, labelled, uc))
        states.pop(day - dt.timedelta(days=keep), None)
        previous = state
    frames = done + [pending[d] for d in sorted(pending)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=uc.tables.features.columns)
