"""How a use case's DAGs, runs and assets are named: plain strings, no Airflow import.

The CLI and the embedded Airflow use these too, without paying for (or configuring the
logging of) an Airflow import.
"""

from __future__ import annotations

# Every DAG a use case has: the five stages of its loop, and the upkeep of its lake.
STAGES = ("ingest_raw", "nightly_etl", "weekly_retrain", "batch_score", "drift_report", "lake_maintenance")


def dag_id(use_case: str, stage: str) -> str:
    """The id of a use case's DAG for a stage, e.g. ``<use case>__batch_score``: every use case has its own."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    return f"{use_case}__{stage}"


def asset_name(use_case: str, table: str) -> str:
    """The Airflow Asset that marks an update of a use case's table (a role, or a record table's name)."""
    return f"sluice.{use_case}." + table.replace("/", ".")


def tags(use_case: str, *more: str) -> list[str]:
    return ["sluice", f"use_case:{use_case}", *more]


def early_retrain_run_id(ds: str) -> str:
    """The run id of the weekly_retrain run drift_report triggers for day ``ds`` (one per day)."""
    return f"early_retrain__{ds}"
