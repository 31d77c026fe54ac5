"""The names of a use case's DAGs, runs and assets, for the Airflow-facing code (see :mod:`sluice.core.names`)."""

from __future__ import annotations

from sluice.core.names import STAGES, asset_name, dag_id, early_retrain_run_id, tags

__all__ = ["STAGES", "asset_name", "dag_id", "early_retrain_run_id", "tags"]
