"""A use case: the declarative spec a team writes for its own events, loaded and validated.

A use case is a folder with ``usecase.yaml`` (and optionally a Python module for what
YAML cannot say). The spec declares the raw fields and their checks, the running
totals (counters) and the features built from them, who is scored on a day (the
population), the label, the model, the gate, risk bands, publish targets and,
optionally, a simulator. The platform reads the spec and names no use case.

Pure: parsing and validation only; no I/O but reading the spec file itself.
Every error names the file and the key that is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import keyword
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sluice.settings import USE_CASE_SPEC as SPEC_FILE
from sluice.settings import Settings, builtin_use_case_folder, builtin_use_cases
from sluice.tables import PARTITION_COLUMN, Table, partitioned

ACTIVE_DAYS = "active_days"  # the built-in counter: distinct days with at least one event
EXTRA_COLUMN = "extra_fields"  # raw: fields the spec does not declare, kept as JSON
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class UseCaseError(ValueError):
    """A use case spec is missing, unreadable or invalid; the message names the file and key."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FieldType = Literal["string", "integer", "number", "category", "date", "timestamp"]


class FieldSpec(_Spec):
    """One raw field besides the entity key, event id, time and kind, with its checks."""

    type: FieldType
    description: str = ""
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = Field(default=None, description="Allowed values (checked).")
    known: tuple[str, ...] | None = Field(
        default=None, description="Values the model knows (not checked); default: values, else learnt."
    )
    pattern: str | None = None
    not_after_day: bool = Field(default=False, description="A date that may not lie after the partition day.")

    @model_validator(mode="after")
    def _checks_fit_the_type(self) -> FieldSpec:
        numeric = self.type in ("integer", "number")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max apply to integer and number fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        texts = self.values is not None or self.known is not None or self.pattern is not None
        if texts and self.type not in ("string", "category"):
            raise ValueError(f"values/known/pattern apply to string and category fields, not {self.type}")
        if self.not_after_day and self.type not in ("date", "timestamp"):
            raise ValueError("not_after_day applies to date and timestamp fields")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from exc
        return self

    @property
    def vocabulary(self) -> tuple[str, ...] | None:
        return self.known if self.known is not None else self.values


class EntitySpec(_Spec):
    name: str = Field(default="entity", description="What is scored, e.g. customer; names tables.")
    key: str
    type: Literal["integer", "string"] = "integer"
    min: int | None = Field(default=None, description="Lowest valid integer key.")
    pattern: str | None = Field(default=None, description="Pattern a string key must match.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a lower-case identifier")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from exc
        return value


class EventsSpec(_Spec):
    id: str | None = Field(default=None, description="Unique event id field; none: the row's content is its id.")
    time: str
    kind: str | None = Field(default=None, description="The field that says what kind an event is.")
    kinds: tuple[str, ...] = ("event",)

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({k for k in value if value.count(k) > 1})
        if repeated:
            raise ValueError(f"{repeated} appear more than once")
        return value

    @model_validator(mode="after")
    def _kinds(self) -> EventsSpec:
        if not self.kinds:
            raise ValueError("kinds must name at least one kind of event")
        if self.kind is None and len(self.kinds) != 1:
            raise ValueError("without a kind field every event is of one kind: give exactly one in kinds")
        return self


class VolumeSpec(_Spec):
    """How many raw rows a day may have: a band around the median of the trailing days."""

    trailing_days: int = Field(default=28, ge=1, le=366, description="The days before D whose median is the baseline.")
    min_days: int = Field(default=7, ge=1, description="Fewer days with data than this: no baseline, no verdict.")
    max_drop: float = Field(default=0.5, gt=0.0, lt=1.0, description="Alert below (1 - max_drop) x the median.")
    max_rise: float = Field(default=1.0, gt=0.0, description="Alert above (1 + max_rise) x the median.")
    fail: bool = Field(default=False, description="Fail ingest_raw's check_volume (after alerting) instead of only alerting.")

    @model_validator(mode="after")
    def _window(self) -> VolumeSpec:
        if self.min_days > self.trailing_days:
            raise ValueError(f"min_days ({self.min_days}) must be <= trailing_days ({self.trailing_days})")
        return self


class ContractSpec(_Spec):
    max_invalid_share: float = Field(default=0.05, ge=0.0, le=1.0)
    volume: VolumeSpec = VolumeSpec()


class CounterSpec(_Spec):
    """A running total per entity: events of some kinds counted, or a numeric field summed."""

    count: tuple[str, ...] | None = Field(default=None, description="Count the events of these kinds.")
    sum: str | None = Field(default=None, description="Sum this numeric field ...")
    kinds: tuple[str, ...] | None = Field(default=None, description="... over events of these kinds (all if unset).")
    decimals: int = Field(default=0, ge=0, le=6, description="Kept exactly as an integer of 10^-decimals units.")

    @field_validator("count", "kinds")
    @classmethod
    def _some(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("name at least one kind")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> CounterSpec:
        if (self.count is None) == (self.sum is None):
            raise ValueError("a counter has exactly one of count (kinds) or sum (a field)")
        if self.count is not None and (self.kinds is not None or self.decimals):
            raise ValueError("kinds and decimals go with sum, not count")
        return self


class FeatureSpec(_Spec):
    """One feature (or one per window when ``name`` holds ``{w}``)."""

    name: str
    window: str | None = Field(default=None, description="A counter (or active_days) over the last w days.")
    windows: tuple[int, ...] | None = None
    divide: float = Field(default=1.0, gt=0)
    ratio: tuple[str, str] | None = Field(default=None, description="Two earlier features: a / (b * scale), 0 if b is 0.")
    scale: float = Field(default=1.0, gt=0)
    recency: bool = Field(default=False, description="Days since the last event.")
    tenure: str | None = Field(default=None, description="Days since a date field, or since first_event.")
    latest: str | None = Field(default=None, description="The latest value of a category field.")

    @model_validator(mode="after")
    def _one_kind(self) -> FeatureSpec:
        kinds = [k for k in ("window", "ratio", "tenure", "latest") if getattr(self, k) is not None]
        kinds += ["recency"] if self.recency else []
        if len(kinds) != 1:
            raise ValueError("a feature is exactly one of window, ratio, recency, tenure or latest")
        if self.window is not None:
            if not self.windows:
                raise ValueError("a window feature needs windows, e.g. [7, 30]")
            if any(w < 1 for w in self.windows):
                raise ValueError("windows are whole days >= 1")
            if len(self.windows) > 1 and "{w}" not in self.name:
                raise ValueError("a feature over several windows needs {w} in its name")
        elif "{w}" in self.name:
            raise ValueError("only window features may have {w} in their name")
        return self

    def expanded(self) -> list[tuple[str, int | None]]:
        if self.window is None:
            return [(self.name, None)]
        return [(self.name.replace("{w}", str(w)), w) for w in self.windows or ()]


class PopulationSpec(_Spec):
    active_within_days: int = Field(ge=1, description="Scored on D: an event in the N days up to D.")


class LabelSpec(_Spec):
    name: str
    when: Literal["no_event", "event"] = Field(description="1 when no event / an event follows within the horizon.")
    kinds: tuple[str, ...] | None = Field(default=None, description="Events of these kinds (any if unset).")
    horizon_days: int = Field(ge=1, le=730)
    description: str = ""

    @field_validator("kinds")
    @classmethod
    def _some(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("name at least one kind, or leave kinds out for any event")
        return value


class ModelSpec(_Spec):
    flavor: Literal["lightgbm"] = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: int = Field(default=400, ge=1)
    early_stopping_rounds: int = Field(default=30, ge=1)


class TrainingSpec(_Spec):
    warmup_days: int | None = Field(default=None, ge=0, description="Default: the longest window.")
    max_days: int = Field(default=60, ge=7, description="At most this many train snapshot days.")
    min_train_days: int = Field(default=14, ge=1, description="Fewer train days: no retraining yet.")
    holdout_days: int = Field(default=7, ge=1)
    validation_days: int = Field(default=7, ge=1)
    purge_days: int | None = Field(
        default=None, ge=1, description="Days between train, validation and holdout; default and least: the horizon."
    )


Floor = Literal["roc_auc", "pr_auc", "pr_auc_lift"]


def _default_floors() -> dict[Floor, float]:
    return {"roc_auc": 0.70, "pr_auc_lift": 1.5}


class ShadowSpec(_Spec):
    """Live evidence a promotion can require: the challenger scored in shadow beside the champion."""

    required: bool = Field(
        default=False,
        description="A challenger that passes the offline gate is promoted only once the live days show it better; "
        "until then it is scored in shadow (never published).",
    )
    min_days: int = Field(default=14, ge=2, description="Matured live days of paired scores the evidence needs.")
    metric: Literal["roc_auc", "pr_auc", "log_loss"] = "roc_auc"
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Of the paired t-interval over the days.")


class ApprovalSpec(_Spec):
    """A person's approval every promotion by weekly_retrain can require (Airflow's Human-in-the-loop)."""

    required: bool = Field(
        default=False,
        description="A model the gate (or a forced run) would promote waits in the retraining's approve_promotion "
        "task until a person approves it (Airflow UI: Required Actions, or the REST API); a rejection or no "
        "answer within timeout_hours keeps the champion.",
    )
    timeout_hours: float = Field(default=72, gt=0, description="No answer by then counts as a rejection.")
    approvers: tuple[str, ...] = Field(
        default=(),
        description="Airflow user ids that may answer (empty: anyone allowed to act on the DAG).",
    )


class GateSpec(_Spec):
    primary_metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    floors: dict[Floor, float] = Field(default_factory=_default_floors)
    min_improvement: float = 0.002
    confidence: float = Field(default=0.95, gt=0, lt=1)
    n_bootstrap: int = Field(default=400, ge=50)
    guarded_slices: tuple[str, ...] | Literal["all"] = "all"
    slice_min_rows: int = Field(default=300, ge=1)
    slice_min_per_class: int = Field(default=10, ge=1, description="A slice with fewer of a class is skipped.")
    slice_tolerance: float = 0.02
    calibration_tolerance: float = 0.02
    calibration_max_ece_ratio: float = Field(
        default=0.5, gt=0, description="The challenger's calibration error may not exceed this share of the base rate."
    )
    shadow: ShadowSpec = Field(default_factory=ShadowSpec)
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec)


class RiskBand(_Spec):
    min: float = Field(ge=0, le=1)
    band: str


class PublishSpec(_Spec):
    postgres_table: str
    redis_prefix: str
    redis_ttl_days: int = Field(default=14, ge=1)

    @field_validator("postgres_table")
    @classmethod
    def _table(cls, value: str) -> str:
        parts = value.split(".")
        if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
            raise ValueError(f"{value!r} is not a table name: use schema.table of identifiers")
        return value


class SimulatorSpec(_Spec):
    factory: str = Field(description="module:callable in the use case folder, called with (use_case, settings).")


class HookSpec(_Spec):
    function: str = Field(description="module:callable(features, state, day) -> the features with its columns added")
    columns: dict[str, Literal["int32", "int64", "float64", "string"]]


class UseCaseSpec(_Spec):
    name: str
    description: str = ""
    intended_use: str = ""
    limitations: tuple[str, ...] = ()
    entity: EntitySpec
    events: EventsSpec
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    contract: ContractSpec = ContractSpec()
    counters: dict[str, CounterSpec] = Field(default_factory=dict)
    features: tuple[FeatureSpec, ...]
    feature_hook: HookSpec | None = None
    population: PopulationSpec
    label: LabelSpec
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    gate: GateSpec = GateSpec()
    risk_bands: tuple[RiskBand, ...] = (RiskBand(min=0.5, band="high"), RiskBand(min=0.2, band="medium"),
                                        RiskBand(min=0.0, band="low"))
    publish: PublishSpec
    simulator: SimulatorSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a lower-case identifier (letters, digits, _; 40 at most)")
        return value

    @model_validator(mode="after")
    def _references(self) -> UseCaseSpec:  # noqa: C901 - one pass over the cross-references
        errors: list[str] = []
        platform = {PARTITION_COLUMN, "first_event_date", "last_event_date", "last_label_event_date", EXTRA_COLUMN}
        taken: dict[str, str] = {}
        for where, name in (("entity.key", self.entity.key), ("events.id", self.events.id),
                            ("events.time", self.events.time), ("events.kind", self.events.kind)):
            if name is None:
                continue
            if not _IDENT.match(name):
                errors.append(f"{where}: {name!r} is not an identifier (letters, digits, _)")
            elif name in platform or (name == "event_id" and where != "events.id"):
                errors.append(f"{where}: {name!r} is a name the platform uses ({sorted(platform)}, and event_id "
                              "but as events.id)")
            elif name in taken:
                errors.append(f"{where}: {name!r} is already {taken[name]}")
            taken.setdefault(name, where)
        if self.entity.type == "integer" and self.entity.pattern is not None:
            errors.append("entity.pattern: applies to a string key (an integer key has min)")
        if self.entity.type == "string" and self.entity.min is not None:
            errors.append("entity.min: applies to an integer key (a string key has pattern)")
        reserved = {self.entity.key, self.events.time, self.events.id, self.events.kind, PARTITION_COLUMN,
                    "event_id", "first_event_date", "last_event_date", "last_label_event_date", EXTRA_COLUMN} - {None}
        for name in self.fields:
            if not _IDENT.match(name) or keyword.iskeyword(name) or name.startswith("cum_"):
                errors.append(f"fields.{name}: not an identifier (or starts with cum_, kept for counters)")
            if name in reserved:
                errors.append(f"fields.{name}: a name the platform uses (the entity key, event id, time, kind, "
                              "first/last_event_date, ds)")
        kinds = set(self.events.kinds)

        def check_kinds(where: str, given: tuple[str, ...] | None) -> None:
            for k in given or ():
                if k not in kinds:
                    errors.append(f"{where}: unknown kind {k!r} (events.kinds: {sorted(kinds)})")

        for name, counter in self.counters.items():
            if not _IDENT.match(name) or name == ACTIVE_DAYS:
                errors.append(f"counters.{name}: not an identifier, or the built-in {ACTIVE_DAYS}")
            check_kinds(f"counters.{name}.count", counter.count)
            check_kinds(f"counters.{name}.kinds", counter.kinds)
            if counter.sum is not None:
                f = self.fields.get(counter.sum)
                if f is None or f.type not in ("integer", "number"):
                    errors.append(f"counters.{name}.sum: {counter.sum!r} is not a numeric field")
        seen: set[str] = set()
        for i, feat in enumerate(self.features):
            where, named = f"features[{i}]", f" ({feat.name})"
            for col, _ in feat.expanded():
                if not _IDENT.match(col) or col in seen or col in (self.entity.key, self.label.name, PARTITION_COLUMN):
                    errors.append(f"{where}.name{named}: {col!r} is not a new identifier")
            if feat.window is not None and feat.window != ACTIVE_DAYS and feat.window not in self.counters:
                errors.append(f"{where}.window{named}: unknown counter {feat.window!r} "
                              f"(counters: {sorted(self.counters)}, or {ACTIVE_DAYS})")
            if feat.ratio is not None:
                for operand in feat.ratio:
                    if operand not in seen:
                        errors.append(f"{where}.ratio{named}: {operand!r} is not a feature defined before it")
            if feat.tenure is not None and feat.tenure != "first_event":
                f = self.fields.get(feat.tenure)
                if f is None or f.type != "date":
                    errors.append(f"{where}.tenure{named}: {feat.tenure!r} is neither a date field nor first_event")
            if feat.latest is not None:
                f = self.fields.get(feat.latest)
                if f is None or f.type not in ("category", "string"):
                    errors.append(f"{where}.latest{named}: {feat.latest!r} is not a category field")
            seen.update(col for col, _ in feat.expanded())
        if self.feature_hook is not None:
            for col in self.feature_hook.columns:
                if col in seen or not _IDENT.match(col):
                    errors.append(f"feature_hook.columns.{col}: not a new identifier")
        check_kinds("label.kinds", self.label.kinds)
        if not _IDENT.match(self.label.name) or self.label.name in self.fields or self.label.name in reserved:
            errors.append(f"label.name: {self.label.name!r} is not a new identifier (a field, the key, the event "
                          "time, kind or id, or a name the platform uses)")
        if self.gate.guarded_slices != "all":
            latest = {f.name for f in self.features if f.latest is not None}
            for s in self.gate.guarded_slices:
                if s not in latest:
                    errors.append(f"gate.guarded_slices: {s!r} is not a category feature (latest: {sorted(latest)})")
        t = self.training
        if t.purge_days is not None and t.purge_days < self.label.horizon_days:
            errors.append(f"training.purge_days: {t.purge_days} is shorter than the label horizon "
                          f"({self.label.horizon_days}): a training label would see the holdout")
        if t.min_train_days > t.max_days:
            errors.append(f"training.min_train_days: {t.min_train_days} is above training.max_days ({t.max_days})")
        bands = [b.min for b in self.risk_bands]
        if not bands or bands != sorted(bands, reverse=True) or len(set(bands)) != len(bands) or bands[-1] != 0:
            errors.append("risk_bands: lower bounds must strictly decrease and end at 0")
        if errors:
            raise ValueError("; ".join(errors))
        return self


@dataclass(frozen=True)
class Feature:
    """One expanded feature column."""

    name: str
    spec: FeatureSpec
    window: int | None
    dtype: str  # arrow type name
    from_hook: bool = False  # added by the use case's feature_hook, not computed from the spec


@dataclass(frozen=True)
class UseCaseTables:
    raw: Table
    quarantine: Table
    curated: Table
    state: Table
    features: Table
    predictions: Table
    shadow: Table

    def all(self) -> tuple[Table, ...]:
        return (self.raw, self.quarantine, self.curated, self.state, self.features, self.predictions, self.shadow)


_ARROW = {"string": "string", "category": "string", "integer": "int64", "number": "float64",
          "date": "date32", "timestamp": "timestamp_utc"}


class UseCase:
    """A loaded, validated use case: the spec plus what the platform derives from it."""

    def __init__(self, spec: UseCaseSpec, folder: Path | None = None):
        self.spec = spec
        self.folder = folder

    def __repr__(self) -> str:
        return f"UseCase({self.name!r}, {self.folder})"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        return self.spec.entity.key

    @property
    def label(self) -> str:
        return self.spec.label.name

    @property
    def horizon(self) -> int:
        return self.spec.label.horizon_days

    @property
    def event_id(self) -> str:
        """The event id column of curated events: the spec's id field renamed, or an id from the content."""
        return "event_id"

    @property
    def event_time(self) -> str:
        return self.spec.events.time

    # -- raw fields -------------------------------------------------------------------
    @cached_property
    def raw_fields(self) -> list[str]:
        """The columns a landing file must have, in order."""
        ev = self.spec.events
        out = ([ev.id] if ev.id else []) + [self.key, ev.time] + ([ev.kind] if ev.kind else [])
        return out + list(self.spec.fields)

    @cached_property
    def categorical_fields(self) -> list[str]:
        return [n for n, f in self.spec.fields.items() if f.type in ("category", "string")]

    @cached_property
    def attributes(self) -> list[str]:
        """Fields whose latest value the state keeps (categories, strings, dates)."""
        return [n for n, f in self.spec.fields.items() if f.type in ("category", "string", "date")]

    # -- features -------------------------------------------------------------------
    @cached_property
    def features(self) -> list[Feature]:
        out: list[Feature] = []
        for spec in self.spec.features:
            for name, w in spec.expanded():
                if spec.latest is not None:
                    dtype = "string"
                elif spec.window is not None:
                    counter = self.spec.counters.get(spec.window)
                    exact = spec.divide == 1 and (counter is None or counter.decimals == 0)
                    dtype = "int32" if exact else "float64"
                elif spec.ratio is not None:
                    dtype = "float64"
                else:
                    dtype = "int32"
                out.append(Feature(name, spec, w, dtype))
        if self.spec.feature_hook is not None:
            for name, dtype in self.spec.feature_hook.columns.items():
                out.append(Feature(name, FeatureSpec(name=name, recency=True), None, dtype, from_hook=True))
        return out

    @cached_property
    def feature_columns(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def categorical(self) -> list[str]:
        """Category features (the latest value of a category field), in feature order."""
        return [f.name for f in self.features if f.spec.latest is not None]

    @cached_property
    def numeric_features(self) -> list[str]:
        return [c for c in self.feature_columns if c not in self.categorical]

    def vocabulary(self, feature: str) -> tuple[str, ...] | None:
        """The fixed categories of a category feature, when the spec gives them."""
        for f in self.features:
            if f.name == feature and f.spec.latest is not None:
                return self.spec.fields[f.spec.latest].vocabulary
        return None

    @cached_property
    def windows(self) -> tuple[int, ...]:
        """Every window a feature reads: the earlier states a day of features needs."""
        return tuple(sorted({f.window for f in self.features if f.window is not None}))

    @cached_property
    def counters(self) -> dict[str, CounterSpec]:
        return dict(self.spec.counters)

    @cached_property
    def label_kinds_column(self) -> str | None:
        """A state column with the last day of an event of the label's kinds (None: any event)."""
        kinds = self.spec.label.kinds
        if kinds is None or set(kinds) == set(self.spec.events.kinds):
            return None
        return "last_label_event_date"

    @cached_property
    def guarded_slices(self) -> tuple[str, ...]:
        g = self.spec.gate.guarded_slices
        return tuple(self.categorical) if g == "all" else tuple(g)

    @property
    def warmup_days(self) -> int:
        w = self.spec.training.warmup_days
        return max(self.windows, default=0) if w is None else w

    # -- tables ---------------------------------------------------------------------
    @cached_property
    def tables(self) -> UseCaseTables:
        entity = self.spec.entity.name
        key_type = "int64" if self.spec.entity.type == "integer" else "string"
        raw = [(n, "string") for n in self.raw_fields] + [(EXTRA_COLUMN, "string")]
        ev = self.spec.events
        curated = [("event_id", "string"), (self.key, key_type), (ev.time, "timestamp_utc")]
        curated += [(ev.kind, "string")] if ev.kind else []
        curated += [(n, _ARROW[f.type]) for n, f in self.spec.fields.items()]
        state = [(self.key, key_type), ("first_event_date", "date32"), ("last_event_date", "date32")]
        if self.label_kinds_column:
            state.append((self.label_kinds_column, "date32"))
        state += [(f"cum_{n}", "int64") for n in self.counters] + [(f"cum_{ACTIVE_DAYS}", "int64")]
        state += [(n, _ARROW[self.spec.fields[n].type]) for n in self.attributes]
        feats = [(self.key, key_type)] + [(f.name, f.dtype) for f in self.features] + [(self.label, "int8")]
        scores = ((self.key, key_type), ("score", "float64"), ("risk_band", "string"), ("model_version", "string"),
                  ("feature_table_version", "int64"))
        return UseCaseTables(
            raw=Table("raw/events", partitioned(*raw), "Events of day ds as extracted from the source, untyped."),
            quarantine=Table(
                "quarantine/events",
                partitioned(*raw, ("failed_columns", "string"), ("failed_checks", "string")),
                "Raw rows of day ds that failed the contract, with the columns and checks they failed.",
            ),
            curated=Table("curated/events", partitioned(*curated), "Valid, typed, de-duplicated events of day ds."),
            state=Table(
                f"state/{entity}_cumulative", partitioned(*state),
                f"Per-{entity} running totals up to and including ds; windows are differences of two days.",
            ),
            features=Table(
                f"features/{entity}_daily", partitioned(*feats),
                f"Point-in-time features of every {entity} in the population of ds; label filled once its "
                f"horizon ({self.horizon} days) closes.",
            ),
            predictions=Table(
                "predictions/scores",
                partitioned(*scores),
                f"Score ({self.label}) of every {entity} in the features of ds, with the model and feature "
                "versions used.",
            ),
            # Its own table, not a role column of predictions/scores: the publishers, the drift
            # report and every reader downstream read that table whole, and a shadow score must
            # never reach them (one forgotten filter would publish it).
            shadow=Table(
                "predictions/shadow_scores",
                partitioned(*scores),
                f"Shadow scores of day ds: the challenger's score ({self.label}) of every {entity} scored by the "
                "champion, never published; compared with the champion's once the labels mature.",
            ),
        )

    # -- code the spec names --------------------------------------------------------
    def resolve(self, target: str) -> Callable[..., Any]:
        """``module:callable`` from the use case's folder (or an importable module)."""
        module_name, _, attr = target.partition(":")
        if not attr:
            raise UseCaseError(f"{self.name}: {target!r} is not module:callable")
        if self.folder is not None and self.folder.parent == builtin_folder():
            # A built-in use case is importable by its package path (include/ is on sys.path).
            module = importlib.import_module(f"{self.folder.parent.name}.{self.folder.name}.{module_name}")
        elif self.folder is not None and (self.folder / f"{module_name}.py").exists():
            qualified = f"sluice_usecase_{self.name}.{module_name}"
            module = _load_module(qualified, self.folder / f"{module_name}.py", self.folder)
        else:
            module = importlib.import_module(module_name)
        found: Any = module
        try:
            for part in attr.split("."):  # Class.method works too
                found = getattr(found, part)
        except AttributeError as exc:
            raise UseCaseError(f"{self.name}: {module_name} has no {attr!r}") from exc
        if not callable(found):
            raise UseCaseError(f"{self.name}: {target} is not callable")
        return found  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        """What `sluice usecase show` prints: the landing file's fields, the features, the label."""
        fields = []
        ev = self.spec.events
        if ev.id:
            fields.append({"field": ev.id, "type": "string", "checks": "unique event id"})
        fields.append({"field": self.key, "type": self.spec.entity.type, "checks": "entity key, not null"})
        fields.append({"field": ev.time, "type": "timestamp", "checks": "ISO 8601, inside the partition day"})
        if ev.kind:
            fields.append({"field": ev.kind, "type": "category", "checks": f"one of {list(ev.kinds)}"})
        for name, f in self.spec.fields.items():
            checks = []
            if f.min is not None or f.max is not None:
                checks.append(f"in [{f.min}, {f.max}]")
            if f.values is not None:
                checks.append(f"one of {list(f.values)}")
            if f.pattern:
                checks.append(f"matches {f.pattern}")
            if f.not_after_day:
                checks.append("not after the day")
            checks.append("nullable" if f.nullable else "not null")
            fields.append({"field": name, "type": f.type, "checks": ", ".join(checks)})
        lab = self.spec.label
        kinds = "event" if lab.kinds is None else "event of kind " + "/".join(lab.kinds)
        return {
            "name": self.name,
            "description": self.spec.description,
            "folder": str(self.folder) if self.folder else None,
            "landing_fields": fields,
            "features": [{"name": f.name, "type": f.dtype} for f in self.features],
            "population": f"{self.spec.entity.name}s with an event in the {self.spec.population.active_within_days} "
                          "days up to the day",
            "label": f"{lab.name} = 1 when there is {'no' if lab.when == 'no_event' else 'an'} {kinds} "
                     f"in the {lab.horizon_days} days after the day",
            "publish": self.spec.publish.model_dump(),
        }


def _load_module(qualified: str, path: Path, folder: Path) -> Any:
    import sys

    if qualified in sys.modules:
        return sys.modules[qualified]
    package = qualified.rpartition(".")[0]
    if package not in sys.modules:
        pkg_spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        assert pkg_spec is not None
        pkg = importlib.util.module_from_spec(pkg_spec)
        pkg.__path__ = [str(folder)]
        sys.modules[package] = pkg
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:
        raise UseCaseError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


# -- finding and loading ------------------------------------------------------------------
def builtin_folder() -> Path:
    return builtin_use_case_folder()


def builtin_names() -> list[str]:
    return builtin_use_cases()


def spec_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The spec file of a built-in use case name, a folder, or a spec file."""
    text = str(name_or_path)
    candidate = Path(text)
    if _NAME.match(text) and not candidate.exists():
        path = builtin_folder() / text / SPEC_FILE
        if not path.exists():
            raise UseCaseError(f"no built-in use case {text!r} (built-in: {builtin_names()}); "
                               "give a folder path for your own")
        return path
    if candidate.is_dir():
        candidate = candidate / SPEC_FILE
    if not candidate.exists():
        raise UseCaseError(f"{candidate}: no such use case spec")
    return candidate.resolve()


def format_errors(path: Path | str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {loc or '(top)'}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Mapping[str, Any], source: str = "usecase.yaml") -> UseCaseSpec:
    try:
        return UseCaseSpec.model_validate(data)
    except ValidationError as err:
        raise UseCaseError(format_errors(source, err)) from None


def load_use_case(name_or_path: str | os.PathLike[str]) -> UseCase:
    """Load and validate a use case; a UseCaseError names the file and every bad key."""
    path = spec_path(name_or_path)
    return _load(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _load(path: str, _mtime: int) -> UseCase:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UseCaseError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UseCaseError(f"{path}: the spec must be a mapping of keys")
    spec = parse_spec(data, path)
    folder = Path(path).parent
    if folder.name != spec.name:
        raise UseCaseError(f"{path}: name: {spec.name!r} differs from its folder {folder.name!r}")
    return UseCase(spec, folder)


def of(settings: Settings) -> UseCase:
    """The use case a settings object works on (``SLUICE_USE_CASE``, else the first of ``SLUICE_USE_CASES``)."""
    if not settings.use_case:
        raise UseCaseError("no use case: set SLUICE_USE_CASES (built-in names or folders) or SLUICE_USE_CASE")
    uc = load_use_case(settings.use_case)
    if uc.name != settings.use_case_name:
        raise UseCaseError(f"{settings.use_case}: its spec is named {uc.name!r}")
    return uc


def all_of(settings: Settings) -> list[UseCase]:
    """Every use case of the deployment, in the order ``SLUICE_USE_CASES`` names them."""
    return [load_use_case(ref) for ref in settings.use_cases]
