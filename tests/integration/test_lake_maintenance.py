"""lake_maintenance against real services: the lake on an S3 server (moto), the pins read from MLflow.

The features table is rewritten again and again; model versions are registered with the
feature-table version they were trained on (the tag ``sluice.stages.retrain`` sets), three of
them under the aliases champion, previous-champion and challenger, one under none. Maintenance
reads the pins from the registry itself: the aliased versions read back as before, the
unaliased one's files are gone, and the bucket holds fewer objects. With the registry
unreachable it deletes nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
from sluice.settings import Settings, load_settings
from sluice.stages import upkeep as stage
from sluice.tables import PARTITION_COLUMN

pytestmark = pytest.mark.integration

CHURN = load_use_case("churn")
FEATURES = CHURN.tables.features
DAYS = [f"2026-03-{d:02d}" for d in range(1, 6)]


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its schema created (the migration takes seconds): copied per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_registered_models()
    return path


@pytest.fixture
def s3_settings(tmp_path, bucket, s3_endpoint, aws_env, monkeypatch, mlflow_template) -> Settings:
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "unset")  # Registry sets it: removed again at teardown
    for key in list(os.environ):
        if key.startswith(("SLUICE_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLUICE_CODE_VERSION", "integration-test")
    (tmp_path / "mlflow").mkdir()
    shutil.copy(mlflow_template, tmp_path / "mlflow" / "mlflow.db")
    return load_settings(
        lake_uri=f"s3://{bucket}/sluice",
        s3_endpoint_url=s3_endpoint,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        mlflow_artifact_uri=f"s3://{bucket}/mlflow",
        use_case="churn",
    )


def features_of(ds: str, rewrite: int) -> pa.Table:
    """Features of ``ds`` as the rewrite number ``rewrite`` gave them (the other columns null)."""
    rows = [{CHURN.key: k, CHURN.feature_columns[0]: rewrite * 100 + k, PARTITION_COLUMN: ds} for k in range(20)]
    return pa.Table.from_pylist(rows, schema=FEATURES.schema)


def register(registry: Registry, feature_version: int) -> str:
    """A model version that records its training data as sluice.stages.retrain does (no artifacts needed here)."""
    if not registry.client.search_registered_models(f"name='{registry.name}'"):
        registry.client.create_registered_model(registry.name)
    mv = registry.client.create_model_version(
        registry.name, source="s3://nowhere/model", tags={"feature_table_version": str(feature_version)}
    )
    return str(mv.version)


def objects(s3_client, bucket: str, prefix: str) -> set[str]:  # noqa: ANN001
    """The objects under ``prefix``, without the empty directory markers pyarrow's S3 filesystem
    leaves when it deletes a file (``<folder>/``: no data, and no Delta reader lists them as files)."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}


def test_maintenance_on_s3_keeps_what_the_registry_pins(s3_settings, s3_client, bucket, monkeypatch) -> None:
    lake = Lake(s3_settings)
    ctx = RunContext("nightly_etl", "backfill")
    versions = [lake.write_partitions(FEATURES, DAYS, pa.concat_tables([features_of(d, 0) for d in DAYS]),
                                      ctx.lineage(DAYS[-1], {}))]
    for rewrite in range(1, 13):  # the last day, re-run twelve times
        versions.append(lake.write_partition(FEATURES, DAYS[-1], features_of(DAYS[-1], rewrite),
                                             RunContext("nightly_etl", f"manual__{rewrite}").lineage(DAYS[-1], {})))
    registry = Registry(s3_settings)
    pinned = {CHAMPION: versions[3], PREVIOUS: versions[1], CHALLENGER: versions[7]}
    for alias, version in pinned.items():
        registry.set_alias(alias, register(registry, version))
    unaliased = versions[5]
    register(registry, unaliased)  # an old candidate: no alias, no pin
    assert stage.registry_pins(s3_settings) == {FEATURES.name: sorted(pinned.values())}

    before = {v: lake.read_table(FEATURES, version=v) for v in [*pinned.values(), versions[-1]]}
    prefix = f"sluice/churn/{FEATURES.name}/"
    stored_before = objects(s3_client, bucket, prefix)
    day = dt.date.fromisoformat(DAYS[-1])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)

    # The registry unreachable: the run fails before it deletes anything.
    unreachable = s3_settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9/"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises: the point is that nothing moved
        stage.maintain_lake(unreachable, day, RunContext("churn__lake_maintenance", "no_registry"), now=later)
    assert objects(s3_client, bucket, prefix) == stored_before

    done = stage.maintain_lake(s3_settings, day, RunContext("churn__lake_maintenance", "scheduled"), now=later)
    row = next(r for r in done["tables"] if r["table"] == FEATURES.name)
    stored_after = objects(s3_client, bucket, prefix)
    print(f"\n{FEATURES.name} on S3: {row['files_before']} -> {row['files_after']} objects, "
          f"{row['bytes_before']:,} -> {row['bytes_after']:,} bytes, {row['vacuumed_files']} vacuumed")
    assert done["pins"] == {FEATURES.name: sorted(pinned.values())}
    assert row["pinned_versions"] == sorted(pinned.values()) and row["vacuumed_files"] == 12 - 3
    assert len(stored_after) < len(stored_before) and row["files_after"] == len(stored_after)
    fresh = Lake(s3_settings)
    for version, data in before.items():
        assert fresh.read_table(FEATURES, version=version).equals(data), version
    with pytest.raises(OSError):
        fresh.read_partition(FEATURES, DAYS[-1], version=unaliased)
    summary = {s["table"]: s for s in stage.upkeep_summary(s3_settings)}
    assert summary[FEATURES.name]["files"] == len(stored_after)
    assert summary[FEATURES.name]["last_upkeep_ds"] == DAYS[-1]
