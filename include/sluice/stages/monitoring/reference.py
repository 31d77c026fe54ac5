"""The reference: a seeded sample of the champion's holdout days, scored by the champion.

Read from the use case's features table at the Delta version and over the holdout window
that the model version records in its registry tags, and scored with that same model, so
that prediction drift compares like with like. It depends only on (model version,
feature version, window, size, seed), so it is computed once and kept next to the reports.

Why the holdout and not the train window: a purged split (``sluice.core.train.SplitPlan``)
puts the train window two purges (two label horizons or more) before the holdout, so scoring in
August compared with April. Seasons and ageing (``tenure_days`` grows by the day) then
drift by themselves, and the report cried wolf before anything changed. The holdout is
the most recent data the model was judged on and passed the gate with: "the world still
looks like the data the champion was proven on" is the question the report answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake, check_day
from sluice.edges.storage import put_object, reports_root
from sluice.settings import Settings
from sluice.stages.monitoring.policy import DriftError, DriftPolicy
from sluice.stages.monitoring.report import PREDICTION
from sluice.stages.monitoring.sampling import allocate, day_seed, read_entities, sample_ids
from sluice.tables import PARTITION_COLUMN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSpec:
    """The data the champion was proven on (its holdout), as recorded on its registry version."""

    model_version: str
    feature_table_version: int
    window: tuple[str, str]

    @classmethod
    def from_tags(cls, version: str, tags: Mapping[str, str]) -> ReferenceSpec:
        """Pure: parse the tags ``sluice.stages.retrain`` sets (``feature_table_version``, ``training_windows``)."""
        try:
            feature_version = int(tags["feature_table_version"])
            start, end = json.loads(tags["training_windows"])["holdout"]
        except (KeyError, ValueError, TypeError) as exc:
            raise DriftError(
                f"model version {version} does not record the data it was judged on (tags feature_table_version "
                f"and training_windows['holdout']): {exc!r}"
            ) from exc
        return cls(str(version), feature_version, (check_day(start), check_day(end)))


def reference_sample(lake: Lake, uc: UseCase, spec: ReferenceSpec, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` rows of the spec's window at the pinned feature version."""
    table = uc.tables.features
    rows = lake.partition_rows(table, version=spec.feature_table_version)
    start, end = spec.window
    counts = {d: r for d, r in rows.items() if start <= d <= end and r > 0}
    if not counts:
        raise DriftError(
            f"{table.name} v{spec.feature_table_version} has no partition in the holdout window "
            f"{start}..{end} of model v{spec.model_version}"
        )
    version = spec.feature_table_version
    parts = []
    for ds, k in allocate(counts, n).items():
        if k == 0:
            continue
        ids = lake.read_partition(table, ds, version=version, columns=[uc.key])
        chosen = sample_ids(ids.column(uc.key), k, seed, day_seed(ds))
        day = read_entities(lake, table, ds, version, [uc.key, *uc.feature_columns], uc.key, chosen)
        parts.append(day.append_column(PARTITION_COLUMN, pa.array([ds] * day.num_rows, pa.string())))
    return pa.concat_tables(parts).sort_by([(PARTITION_COLUMN, "ascending"), (uc.key, "ascending")]).to_pandas()


def reference_uri(settings: Settings, spec: ReferenceSpec, n: int, seed: int) -> str:
    """Where the scored reference of ``spec`` is kept (under the reports, never served by the view)."""
    return (
        f"{reports_root(settings)}/reference/model_version={spec.model_version}/"
        f"features_v{spec.feature_table_version}_{spec.window[0]}_{spec.window[1]}_n{n}_seed{seed}.parquet"
    )


def scored_reference(
    settings: Settings, lake: Lake, uc: UseCase, spec: ReferenceSpec, policy: DriftPolicy
) -> pd.DataFrame:
    """The reference sample with the champion's scores; computed once per model and kept."""
    import pyarrow.parquet as pq

    from sluice.edges.storage import filesystem

    uri = reference_uri(settings, spec, policy.drift_reference_rows, policy.drift_seed)
    fs, path = filesystem(settings, uri)
    if fs.get_file_info(path).is_file:
        log.info("reference of model v%s from %s", spec.model_version, uri)
        with fs.open_input_file(path) as f:
            return pq.read_table(f).to_pandas()
    from sluice.core.train import FittedModel
    from sluice.edges.registry import Registry

    sample = reference_sample(lake, uc, spec, policy.drift_reference_rows, policy.drift_seed)
    model = FittedModel.from_booster(Registry(settings).load_booster(spec.model_version), uc)
    sample[PREDICTION] = model.predict(sample)
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(sample, preserve_index=False), buffer)
    put_object(settings, uri, buffer.getvalue().to_pybytes())
    log.info("reference of model v%s: %d rows sampled and scored, kept at %s", spec.model_version, len(sample), uri)
    return sample
