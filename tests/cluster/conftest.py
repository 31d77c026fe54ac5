"""Fixtures of the cluster tests: docker-compose.yaml and a twin that is never started.

The twin's environment is computed from the compose file alone, so these fixtures need no
service; the end-to-end loop (test_cluster_loop.py) starts its own twin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.ops.twin import COMPOSE_FILE, Cluster, Compose

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compose() -> Compose:
    return Compose.load(COMPOSE_FILE)


@pytest.fixture(scope="session")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """A twin in a temporary state directory, not started: its environment and command lines."""
    return Cluster(state_dir=tmp_path_factory.mktemp("twin-state"), dotenv=None, inherit_environ=False)
