"""A spec guessed from a sample (sluice.core.scaffold): valid, with the right key, time, kinds and
types, written as YAML with comments that round-trips, and accepting the sample it came from."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import yaml

from sluice.core.contracts import split_by_contract
from sluice.core.scaffold import infer, infer_spec, render_yaml
from sluice.core.usecase import EXTRA_COLUMN, UseCase, UseCaseSpec, parse_spec

DEVICES = ["d-1a2b", "d-3c4d", "d-5e6f", "d-7a8b"]
ACTIONS = ["open", "crash", "purchase"]


def telemetry(n: int = 36) -> pd.DataFrame:
    """App telemetry, a shape no built-in has: a string device key, ``ts``, an ``action`` kind,
    latency (none on crashes), the OS and the build, as text."""
    rows = []
    for i in range(n):
        action = ACTIONS[i % 3]
        rows.append({
            "device_uuid": DEVICES[i % 4],
            "ts": f"2026-04-0{1 + i % 3}T{i % 24:02d}:{i % 60:02d}:05.250Z",
            "action": action,
            "latency_ms": None if action == "crash" else f"{12.5 + i * 3:.1f}",
            "os": ("ios", "android", "web")[i % 3 if i % 2 else 0],
            "build": str(1040 + i % 4),
        })
    return pd.DataFrame(rows)


def parsed(spec: dict) -> UseCaseSpec:
    return parse_spec(spec, "scaffold/usecase.yaml")


def by_day(sample: pd.DataFrame, uc: UseCase) -> dict[dt.date, pd.DataFrame]:
    days = pd.to_datetime(sample[uc.event_time], utc=True, format="ISO8601").dt.date
    return {d: sample[days == d].reset_index(drop=True) for d in sorted(set(days))}


def test_telemetry_spec_is_valid_with_the_right_guesses() -> None:
    spec = infer_spec(telemetry(), "telemetry")
    s = parsed(spec)
    assert s.name == "telemetry"
    assert (s.entity.key, s.entity.type, s.entity.name) == ("device_uuid", "string", "device")
    assert s.events.time == "ts"
    assert s.events.kind == "action"
    assert s.events.kinds == ("crash", "open", "purchase")
    assert s.events.id is None  # no column is unique per row
    assert {n: f.type for n, f in s.fields.items()} == {"latency_ms": "number", "os": "category", "build": "integer"}
    latency, os_, build = s.fields["latency_ms"], s.fields["os"], s.fields["build"]
    assert latency.nullable and latency.min == 0 and latency.max == 2000  # max 117.5 -> x10 -> 2000
    assert os_.values == ("android", "ios", "web") and not os_.nullable
    assert build.min == 0 and build.max == 20000 and not build.nullable  # 1043 -> x10 -> 20000
    assert s.simulator is None


def test_telemetry_counters_features_label_publish() -> None:
    s = parsed(infer_spec(telemetry(), "telemetry"))
    counters = {n: c.model_dump(exclude_defaults=True) for n, c in s.counters.items()}
    assert counters == {
        "crash": {"count": ("crash",)},
        "open": {"count": ("open",)},
        "purchase": {"count": ("purchase",)},
        # latency only comes with opens and purchases; its sample has one decimal
        "latency_ms_total": {"sum": "latency_ms", "kinds": ("open", "purchase"), "decimals": 1},
        "build_total": {"sum": "build"},
    }
    uc = UseCase(s)
    cols = uc.feature_columns
    assert cols[:2] == ["days_since_last_event", "tenure_days"]
    assert s.features[0].recency and s.features[1].tenure == "first_event"
    for counter in [*counters, "active_days"]:
        assert [f"{counter}_{w}d" for w in (7, 30, 90)] == [c for c in cols if c.startswith(f"{counter}_")][:3]
    assert cols[-1] == "os" and uc.categorical == ["os"]
    assert uc.windows == (7, 30, 90)
    assert s.population.active_within_days == 30
    assert (s.label.name, s.label.when, s.label.horizon_days, s.label.kinds) == (
        "label_no_event_30d", "no_event", 30, None)
    assert (s.publish.postgres_table, s.publish.redis_prefix) == ("public.telemetry_scores", "sluice:telemetry")


def test_the_sample_passes_its_own_contract() -> None:
    sample = telemetry()
    uc = UseCase(parsed(infer_spec(sample, "telemetry")))
    for day, rows in by_day(sample, uc).items():
        result = split_by_contract(rows.assign(**{EXTRA_COLUMN: None}), day, uc)
        assert result.failures == {} and len(result.valid) == len(rows), day


def test_integer_key_event_id_no_kind_and_dates() -> None:
    rows = []
    for i in range(30):
        rows.append({
            "txn_id": f"t{i:04d}",
            "user_id": str(100 + i % 5),
            "created_at": f"2026-05-{1 + i % 4:02d} {i % 24:02d}:30:00+02:00",
            "amount": f"{(i * 7.25) % 90:.2f}",
            "delta": str(i - 15),
            "signup_date": f"2025-0{1 + i % 5}-15",
            "city": f"city{i}",
            "coupon": None if i % 3 else "SPRING",
        })
    sample = pd.DataFrame(rows)
    inferred = infer(sample, "payments")
    s = parsed(inferred.spec)
    assert (s.entity.key, s.entity.type, s.entity.name) == ("user_id", "integer", "user")
    assert s.events.id == "txn_id"
    assert s.events.time == "created_at"
    assert s.events.kind is None and s.events.kinds == ("event",)
    types = {n: f.type for n, f in s.fields.items()}
    assert types == {"amount": "number", "delta": "integer", "signup_date": "date", "city": "string",
                     "coupon": "category"}
    assert s.fields["amount"].min == 0 and s.fields["amount"].max == 1000  # 87.75 -> x10 -> 1000
    assert s.fields["delta"].min is None and s.fields["delta"].max == 200  # negative values: no min
    assert s.fields["coupon"].nullable and s.fields["coupon"].values == ("SPRING",)
    assert s.fields["city"].values is None  # 30 distinct values in 30 rows: free text
    assert s.counters["events"].count == ("event",)
    assert s.counters["amount_total"].decimals == 2
    uc = UseCase(s)
    assert "events_30d" in uc.feature_columns and "coupon" in uc.categorical
    # The platform's own note on what was guessed, per key
    assert any("user_id" in n for n in inferred.notes["entity"])
    assert any("unique" in n for n in inferred.notes["events.id"])
    for day, day_rows in by_day(sample, uc).items():
        result = split_by_contract(day_rows.assign(**{EXTRA_COLUMN: None}), day, uc)
        assert result.failures == {}, (day, result.failures)


def test_many_categories_are_not_checked_and_rare_ones_are() -> None:
    sample = pd.DataFrame({
        "customer": [f"c{i % 50}" for i in range(1000)],
        "time": [f"2026-01-01T00:{i % 60:02d}:00Z" for i in range(1000)],
        "sku": [f"sku{i % 60}" for i in range(1000)],  # 60 values, repeated: an open category
        "tier": [("gold", "silver")[i % 2] for i in range(1000)],
    })
    s = parsed(infer_spec(sample, "shop"))
    assert s.entity.key == "customer" and s.entity.name == "customer"
    assert s.fields["sku"].type == "category" and s.fields["sku"].values is None
    assert s.fields["tier"].values == ("gold", "silver")


def test_columns_that_cannot_be_fields_are_left_to_extra_fields() -> None:
    sample = telemetry().assign(**{"App Version": "1.2", "ds": "2026-04-01", "cum_x": "1", "class": "a"})
    inferred = infer(sample, "telemetry")
    s = parsed(inferred.spec)
    assert not {"App Version", "ds", "cum_x", "class"} & set(s.fields)
    assert "App Version" in " ".join(inferred.notes["fields"])


def test_columns_can_be_named_instead_of_guessed() -> None:
    sample = telemetry()
    s = parsed(infer_spec(sample, "telemetry", kind=""))
    assert s.events.kind is None and "action" in s.fields and s.counters["events"].count == ("event",)
    s = parsed(infer_spec(sample.rename(columns={"device_uuid": "thing"}), "telemetry", key="thing"))
    assert s.entity.key == "thing" and s.entity.name == "thing"
    with pytest.raises(ValueError, match="no column 'nope'"):
        infer_spec(sample, "telemetry", time="nope")


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        pytest.param(telemetry().drop(columns=["ts"]), "event time", id="no-time"),
        pytest.param(telemetry().drop(columns=["device_uuid"]), "entity key", id="no-key"),
        pytest.param(telemetry().iloc[:0], "no rows", id="empty"),
    ],
)
def test_what_cannot_be_guessed_is_said(sample: pd.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        infer_spec(sample, "telemetry")


def test_the_name_must_be_a_use_case_name() -> None:
    with pytest.raises(ValueError, match="lower-case identifier"):
        infer_spec(telemetry(), "Telemetry")


@pytest.mark.parametrize("with_notes", [True, False])
def test_render_yaml_round_trips_with_comments(with_notes: bool) -> None:
    inferred = infer(telemetry(), "telemetry")
    text = render_yaml(inferred.spec, "telemetry.csv", inferred.notes if with_notes else None)
    assert yaml.safe_load(text) == inferred.spec
    parsed(yaml.safe_load(text))
    lines = text.splitlines()
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    assert lines[0].startswith("# ") and "telemetry.csv" in lines[0]
    assert any("TODO" in ln and "predicted" in ln for ln in comments)  # the label is to be edited
    assert any("sluice usecase check" in ln for ln in comments)
    # a comment is a whole line: no value of the body carries one
    assert all("#" not in ln for ln in lines if not ln.lstrip().startswith("#"))
    if with_notes:
        assert any("device_uuid" in ln and "events each" in ln for ln in comments)
        assert any("max is 10x" in ln for ln in comments)
