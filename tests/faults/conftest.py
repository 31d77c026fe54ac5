"""Fixtures of the fault tests: the same real services as the integration tests.

Every test here is marked ``faults`` (``make test-faults``; CI runs them after ``make test``).
"""

from __future__ import annotations

import pytest

from integration.conftest import *  # noqa: F403  (the moto S3 server, PostgreSQL, Redis, child processes)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/faults/" in str(item.path):
            item.add_marker(pytest.mark.faults)
