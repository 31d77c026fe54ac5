"""The thresholds and sample sizes of the monitoring (``Settings.drift``, the one settings root); its error."""

from __future__ import annotations

from typing import Any

from sluice.settings import DriftPolicy

__all__ = ["DriftError", "DriftPolicy", "load_policy"]


class DriftError(RuntimeError):
    """The drift report cannot be built: a missing input, or a report without verdicts."""


def load_policy(**overrides: Any) -> DriftPolicy:
    """Read the drift policy from the environment now (overrides win): what ``load_settings().drift`` holds."""
    return DriftPolicy(**overrides)
