"""Volume check of a day: is its raw row count in the band around the trailing median?

A contract judges every row of a day; it does not see that a day has a fifth of its usual
rows (a source that silently lost a shard, a landing folder half copied). The check
compares the raw rows of day D with the median of the days before it that have data
(``contract.volume`` of the use case: ``trailing_days``, ``min_days``, ``max_drop``,
``max_rise``); a median, not a mean, so that one bad day in the window does not move the
baseline. Pure: the counts in, a verdict out.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sluice.core.contracts import ContractViolation
from sluice.core.usecase import VolumeSpec

Verdict = Literal["ok", "low", "high", "no_baseline"]


class VolumeError(ContractViolation):
    """A day's raw row count is outside its band and the use case says to fail (``contract.volume.fail``)."""


@dataclass(frozen=True)
class VolumeCheck:
    ds: str
    rows: int
    baseline_days: int  # days of the trailing window that had data
    median: float | None
    ratio: float | None  # rows / median
    low: float | None  # the band: alert outside [low, high]
    high: float | None
    verdict: Verdict

    @property
    def alert(self) -> bool:
        return self.verdict in ("low", "high")

    def message(self) -> str:
        if self.median is None:
            return f"{self.rows} raw rows on {self.ds}; no baseline yet ({self.baseline_days} earlier days with data)"
        direction = {"low": "below", "high": "above"}.get(self.verdict, "within")
        return (
            f"{self.rows} raw rows on {self.ds}, {self.ratio:.0%} of the median {self.median:.0f} of the "
            f"{self.baseline_days} days before: {direction} the band [{self.low:.0f}, {self.high:.0f}]"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alert": self.alert, "message": self.message()}


def trailing_counts(counts: Mapping[str, int], day: dt.date, spec: VolumeSpec) -> dict[str, int]:
    """The counts of the ``spec.trailing_days`` days before ``day`` (D itself excluded) that have rows."""
    first = (day - dt.timedelta(days=spec.trailing_days)).isoformat()
    ds = day.isoformat()
    return {d: int(n) for d, n in counts.items() if first <= d < ds and n > 0}


def check_volume(ds: str, rows: int, trailing: Mapping[str, int], spec: VolumeSpec) -> VolumeCheck:
    """The verdict on ``rows`` given the counts of the trailing days (see :func:`trailing_counts`)."""
    if len(trailing) < spec.min_days:
        return VolumeCheck(ds, rows, len(trailing), None, None, None, None, "no_baseline")
    median = float(statistics.median(trailing.values()))
    low, high = (1 - spec.max_drop) * median, (1 + spec.max_rise) * median
    verdict: Verdict = "low" if rows < low else "high" if rows > high else "ok"
    return VolumeCheck(ds, rows, len(trailing), median, rows / median, low, high, verdict)
