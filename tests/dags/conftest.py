"""The tests of this folder share one migrated Airflow metadata DB (tests/conftest.py's private AIRFLOW_HOME)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def migrated_db() -> None:
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
