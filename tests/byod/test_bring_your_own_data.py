"""Bring your own data: a team with events of a shape no built-in use case has, from a file to scores.

The path the README walks: ``sluice usecase new`` scaffolds a spec from a sample file,
the team edits nothing but that spec (the label above all), ``sluice usecase check``
validates it against the file, ``sluice land`` splits the file by day into the landing
prefix, and the platform's own stages (the code the DAGs run) load the history, train
and gate a model, score a day and report its drift. No line of ``include/sluice`` or of
a built-in use case is involved beyond reading the spec.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sluice.core import usecase
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.edges.registry import CHAMPION, Registry
from sluice.ops.cli import main as sluice
from sluice.settings import Settings
from sluice.stages import etl, retrain, score

START = dt.date(2026, 1, 1)
DAYS = 105  # 30 warm-up days, then 56 matured ones for the purged split (7 + 7 + 14 days, 14 apart), 14 to mature
OSES = ("ios", "android", "harmony")


def telemetry(n_devices: int = 600, seed: int = 3) -> pd.DataFrame:
    """App telemetry: a device uuid, a timestamp, an action, a latency and the device's OS and build.

    Devices go quiet at some point (more often after crashes, on slow builds); the label
    the team wants is "no app open in the next 14 days".
    """
    rng = np.random.default_rng(seed)
    devices = [f"dev-{rng.integers(16**8):08x}-{i:04d}" for i in range(n_devices)]
    os_of = rng.choice(OSES, size=n_devices, p=[0.45, 0.45, 0.10])
    build_of = rng.choice([410, 415, 420], size=n_devices)
    rate = rng.lognormal(np.log(0.5), 0.6, size=n_devices).clip(0.05, 3)
    crashy = rng.random(n_devices) < 0.25
    quit_day = rng.exponential(np.where(crashy | (build_of == 410), 60, 160)).astype(int) + rng.integers(0, 30, n_devices)
    rows = []
    for day in range(DAYS):
        date = pd.Timestamp(START) + pd.Timedelta(days=day)
        alive = day < quit_day
        fading = np.clip((quit_day - day) / 10, 0.2, 1.0)
        n_opens = rng.poisson(rate * fading * alive)
        for i in np.flatnonzero(n_opens):
            for _ in range(int(n_opens[i])):
                ts = date + pd.Timedelta(seconds=int(rng.integers(0, 86_400)))
                latency = float(np.round(rng.lognormal(5 + 0.3 * (build_of[i] == 410), 0.4), 1))
                rows.append((devices[i], ts, "open", latency, os_of[i], int(build_of[i])))
                if rng.random() < (0.3 if crashy[i] else 0.03):
                    rows.append((devices[i], ts + pd.Timedelta(seconds=5), "crash", None, os_of[i], int(build_of[i])))
                if rng.random() < 0.08:
                    rows.append((devices[i], ts + pd.Timedelta(seconds=60), "purchase", latency, os_of[i],
                                 int(build_of[i])))
    frame = pd.DataFrame(rows, columns=["device_uuid", "ts", "action", "latency_ms", "os", "build"])
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame.sort_values(["ts", "device_uuid"], ignore_index=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("byod")


@pytest.fixture(scope="module")
def sample(workspace: Path) -> Path:
    path = workspace / "telemetry.csv"
    telemetry().to_csv(path, index=False)
    return path


def edit_the_spec(folder: Path) -> None:
    """What the team edits after the scaffold: the label, the population, the windows, the warm-up."""
    path = folder / "usecase.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["label"] = {"name": "label_quiet_14d", "when": "no_event", "kinds": ["open"], "horizon_days": 14,
                     "description": "no app open in the 14 days after the day"}
    spec["population"] = {"active_within_days": 14}
    for feature in spec["features"]:
        if feature.get("windows"):
            feature["windows"] = [w for w in feature["windows"] if w <= 30] or [30]
            if len(feature["windows"]) == 1:
                feature["name"] = feature["name"].replace("{w}", str(feature["windows"][0]))
    spec["training"] = {"warmup_days": 30, "max_days": 40}
    spec["gate"] = {"floors": {"roc_auc": 0.6, "pr_auc_lift": 1.1}, "guarded_slices": "all", "slice_min_rows": 100}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture(scope="module")
def scaffolded(workspace: Path, sample: Path) -> Path:
    code = sluice(["usecase", "new", "telemetry", "--sample", str(sample), "--dir", str(workspace / "usecases")])
    assert code == 0
    folder = workspace / "usecases" / "telemetry"
    edit_the_spec(folder)
    return folder


def test_the_scaffold_reads_the_sample_as_it_is(scaffolded: Path) -> None:
    uc = usecase.load_use_case(scaffolded)
    assert uc.key == "device_uuid" and uc.spec.entity.type == "string"
    assert uc.event_time == "ts"
    assert uc.spec.events.kind == "action" and set(uc.spec.events.kinds) == {"open", "crash", "purchase"}
    assert uc.spec.fields["os"].type == "category"
    assert {"latency_ms", "build"} <= set(uc.spec.fields)
    # Nothing of the built-in use cases leaks into a new one.
    assert not {"plan", "region", "channel", "device", "signup_date"} & set(uc.spec.fields)


def test_check_accepts_the_edited_spec_against_its_sample(scaffolded: Path, sample: Path, capsys) -> None:
    assert sluice(["usecase", "check", str(scaffolded), "--sample", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "quarantined" in out


@pytest.fixture(scope="module")
def settings(workspace: Path, scaffolded: Path) -> Settings:
    return Settings(
        lake_uri=str(workspace / "lake"),
        mlflow_tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
        source="files",
        use_cases=[str(scaffolded)],
        use_case=str(scaffolded),
    )


@pytest.fixture(scope="module")
def loaded(settings: Settings, sample: Path, monkeypatch_module) -> list[dict]:
    for key, value in {"SLUICE_LAKE_URI": settings.lake_uri, "SLUICE_SOURCE": "files",
                       "SLUICE_USE_CASES": settings.use_case, "SLUICE_USE_CASE": settings.use_case}.items():
        monkeypatch_module.setenv(key, value)
    assert sluice(["land", str(sample)]) == 0
    return etl.load_history(settings, START, START + dt.timedelta(days=DAYS - 1))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_history_loads_through_the_platforms_stages(loaded: list[dict], settings: Settings, sample: Path) -> None:
    events = pd.read_csv(sample)
    assert sum(d["ingest"]["rows"] for d in loaded) == len(events)
    assert sum(d["curate"]["valid"] + d["curate"]["quarantined"] + d["curate"]["duplicates_removed"]
               for d in loaded) == len(events)
    uc = usecase.of(settings)
    lake = Lake(settings)
    assert lake.root == f"{settings.lake_uri}/telemetry"
    features = lake.read_partition(uc.tables.features, (START + dt.timedelta(days=DAYS - 1)).isoformat()).to_pandas()
    assert features["device_uuid"].str.startswith("dev-").all()
    labelled = lake.read_partition(uc.tables.features, (START + dt.timedelta(days=DAYS - 15)).isoformat()).to_pandas()
    assert labelled["label_quiet_14d"].notna().all()
    # The label means what the spec says: no open in the 14 days after the day.
    day = START + dt.timedelta(days=DAYS - 15)
    ts = pd.to_datetime(events["ts"], utc=True)
    after = events[(events["action"] == "open") & (ts.dt.date > day) & (ts.dt.date <= day + dt.timedelta(days=14))]
    expected = (~labelled["device_uuid"].isin(set(after["device_uuid"]))).astype(int)
    assert (labelled["label_quiet_14d"].astype(int).to_numpy() == expected.to_numpy()).all()
    assert 0.05 < expected.mean() < 0.95


def test_a_model_is_trained_gated_and_scores_the_last_day(loaded: list[dict], settings: Settings) -> None:
    last = START + dt.timedelta(days=DAYS - 1)
    result = retrain.retrain(settings, last - dt.timedelta(days=1), RunContext("byod", "retrain-1"))
    decision_reasons = "; ".join(result["reasons"])
    assert result["promoted"], decision_reasons
    registry = Registry(settings)
    assert registry.name == "sluice-telemetry"
    assert registry.by_alias(CHAMPION) is not None
    scored = score.score_day(settings, last, RunContext("byod", "score-1"))
    uc = usecase.of(settings)
    predictions = Lake(settings).read_partition(uc.tables.predictions, last.isoformat()).to_pandas()
    assert len(predictions) == scored["rows"] > 0
    assert predictions["device_uuid"].str.startswith("dev-").all()
    assert set(predictions["risk_band"]) <= {b.band for b in uc.spec.risk_bands}
    assert predictions["score"].between(0, 1).all()


def test_the_drift_report_of_the_scored_day(loaded: list[dict], settings: Settings) -> None:
    from sluice.stages import monitoring

    last = START + dt.timedelta(days=DAYS - 1)
    if not Lake(settings).has_partition(usecase.of(settings).tables.predictions, last.isoformat()):
        pytest.skip("needs the scores of the previous test")
    summary = monitoring.build_drift_report(settings, last, RunContext("byod", "drift-1"))
    assert summary["ds"] == last.isoformat()
    assert 0 <= summary["drift_share"] <= 1
    assert json.loads(json.dumps(summary, default=str))
