"""The MLflow edge: log a training run, register a version, move aliases, load by alias.

Only aliases are used (stages are deprecated): ``champion`` is the model in
production, ``previous-champion`` the one it replaced (so rollback is one call),
``challenger`` the latest candidate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sluice.settings import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    pass


def _missing(exc: Exception) -> bool:
    """Whether an MLflow error means "no such model, version or alias"."""
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower()


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    def __init__(self, settings: Settings):
        import mlflow
        from mlflow import MlflowClient

        self.settings = settings
        self.name = settings.model
        uri = settings.mlflow_tracking_uri
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if settings.s3_endpoint_url:
            # MLflow's S3 artifact store reads its endpoint from the environment; the settings win.
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.mlflow = mlflow
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.settings.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        artifacts = self.settings.artifacts
        if artifacts.startswith("file://"):
            Path(urlparse(artifacts).path).mkdir(parents=True, exist_ok=True)
        try:
            return str(self.client.create_experiment(self.settings.experiment, artifact_location=artifacts))
        except Exception:  # created concurrently by another run
            exp = self.client.get_experiment_by_name(self.settings.experiment)
            if exp is None:
                raise
            return str(exp.experiment_id)

    # -- versions --------------------------------------------------------------------
    def _ref(self, mv: Any) -> ModelRef:
        return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or "", tags=dict(mv.tags or {}))

    def version(self, version: str) -> ModelRef:
        return self._ref(self.client.get_model_version(self.name, str(version)))

    def by_alias(self, alias: str) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._ref(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise  # a tracking-server error must not look like "no champion"

    def versions(self) -> list[ModelRef]:
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted((self._ref(v) for v in found), key=lambda r: int(r.version))

    def aliases(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return {alias: str(v) for alias, v in self.client.get_registered_model(self.name).aliases.items()}
        except MlflowException as exc:
            if _missing(exc):
                return {}
            raise

    def tag(self, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def promote(self, version: str) -> str | None:
        """Move ``champion`` to ``version``; the former champion keeps ``previous-champion``."""
        current = self.by_alias(CHAMPION)
        if current is not None and current.version == str(version):
            return current.version
        if current is not None:
            self.set_alias(PREVIOUS, current.version)
        self.set_alias(CHAMPION, str(version))
        log.info("champion: %s -> %s", current.version if current else None, version)
        return current.version if current else None

    def rollback(self) -> tuple[str, str]:
        """Make ``previous-champion`` the champion again; returns (from, to)."""
        current, previous = self.by_alias(CHAMPION), self.by_alias(PREVIOUS)
        if previous is None or current is None:
            raise RegistryError("nothing to roll back to: no previous-champion alias")
        self.set_alias(CHAMPION, previous.version)
        self.set_alias(PREVIOUS, current.version)
        return current.version, previous.version

    # -- model cards -----------------------------------------------------------------
    CARD = "model_card.md"

    def model_card(self, version: str) -> str | None:
        """The model card the training run of ``version`` logged (None when it logged none)."""
        from mlflow.exceptions import MlflowException

        run_id = self.version(version).run_id
        if not run_id:
            return None
        try:
            return str(self.mlflow.artifacts.load_text(f"runs:/{run_id}/{self.CARD}"))
        except (MlflowException, OSError) as exc:
            log.info("v%s has no model card: %s", version, exc)
            return None

    def write_model_card(self, version: str, text: str) -> None:
        """Replace the model card of ``version`` in its training run's artifacts."""
        run_id = self.version(version).run_id
        if not run_id:
            raise RegistryError(f"v{version} has no training run to keep its model card")
        self.client.log_text(run_id, text, self.CARD)

    # -- models ----------------------------------------------------------------------
    def load_booster(self, version: str) -> Any:
        import mlflow.lightgbm

        return mlflow.lightgbm.load_model(f"models:/{self.name}/{version}")
