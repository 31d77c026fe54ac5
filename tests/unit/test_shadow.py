"""Shadow scoring and shadow evidence: the challenger scored beside the champion, judged on live days.

Real lake (local Delta), real MLflow (SQLite under tmp_path), real LightGBM boosters.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest

from sluice.core.gate import GatePolicy, decide
from sluice.core.lineage import RunContext
from sluice.core.shadow import paired_day, shadow_evidence
from sluice.core.train import DEFAULT_PARAMS, categories, model_matrix
from sluice.core.usecase import load_use_case
from sluice.edges.lake import Lake
from sluice.edges.registry import CHALLENGER, CHAMPION, Registry
from sluice.settings import Settings, load_settings
from sluice.stages import promotions, retrain
from sluice.stages import score as S
from sluice.stages.monitoring import record_performance
from sluice.tables import MODEL_DECISIONS, SHADOW_PERFORMANCE

UC = load_use_case("churn")


# -- the evidence (pure) ----------------------------------------------------------------------
def _days(advantages: list[float], challenger: str = "2", start: dt.date = dt.date(2026, 3, 1)) -> list[dict]:
    rows = []
    for i, a in enumerate(advantages):
        ds = (start + dt.timedelta(days=i)).isoformat()
        rows.append({"ds": ds, "challenger_version": challenger, "champion_version": "1", "champion_roc_auc": 0.80,
                     "challenger_roc_auc": 0.80 + a, "champion_log_loss": 0.40, "challenger_log_loss": 0.40 - a,
                     "champion_pr_auc": 0.5, "challenger_pr_auc": 0.5 + a})
    return rows


def test_a_steady_advantage_over_enough_days_is_better() -> None:
    rng = np.random.default_rng(0)
    e = shadow_evidence(_days(list(0.02 + rng.normal(0, 0.005, 14))), "2")
    assert e.verdict == "better" and e.passes and e.days == 14 and e.wins == 14 and 0 < e.low < e.high
    assert e.describe().startswith("shadow: v2 better than the champion on 14 live days (14 won): roc_auc +0.0")


def test_noise_around_zero_is_no_difference_and_a_steady_loss_is_worse() -> None:
    rng = np.random.default_rng(1)
    noise = shadow_evidence(_days(list(rng.normal(0, 0.01, 20))), "2")
    assert noise.verdict == "no difference" and noise.low < 0 < noise.high and not noise.passes
    assert shadow_evidence(_days(list(-0.02 + rng.normal(0, 0.005, 14))), "2").verdict == "worse"


def test_fewer_days_than_required_is_never_enough_however_good() -> None:
    e = shadow_evidence(_days([0.05] * 13 + [0.06]), "2", min_days=15)
    assert e.verdict == "too few days" and e.days == 14 and not e.passes
    assert e.describe() == "shadow: 14 of 15 matured live days of v2 so far"
    empty = shadow_evidence([], "2")
    assert empty.days == 0 and empty.to_dict()["mean_advantage"] is None  # JSON-safe: no NaN


def test_log_loss_counts_lower_as_better_and_other_challengers_days_are_ignored() -> None:
    rows = _days([0.01, 0.012, 0.011, 0.013, 0.009]) + _days([-0.5] * 5, challenger="3")
    e = shadow_evidence(rows, "2", min_days=5, metric="log_loss")
    assert e.verdict == "better" and e.mean_advantage == pytest.approx(0.011)


def test_paired_day_compares_both_models_on_the_same_rows() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    row = paired_day(y, np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.7]), np.array([0.1, 0.2, 0.6, 0.9, 0.3, 0.8]))
    assert row["rows"] == 6 and row["positive_rate"] == 0.5
    assert row["champion_roc_auc"] == pytest.approx(8 / 9) and row["challenger_roc_auc"] == 1.0
    assert row["challenger_log_loss"] < row["champion_log_loss"]


# -- better offline, worse live ----------------------------------------------------------------
def _population(rng: np.random.Generator, n: int, w_matters: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, w = rng.normal(size=n), rng.normal(size=n)
    z = 1.6 * s + (1.2 * w if w_matters else 0.0) - 1.8
    return s, w, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)


def _champion(s: np.ndarray) -> np.ndarray:  # knows only s
    return 1 / (1 + np.exp(-(1.35 * s - 1.6)))


def _challenger(s: np.ndarray, w: np.ndarray) -> np.ndarray:  # given w, which the champion lacks
    return 1 / (1 + np.exp(-(1.6 * s + 1.2 * w - 1.8)))


@pytest.mark.parametrize("live_drift", [False, True], ids=["live-as-offline", "w-stops-mattering-live"])
def test_a_challenger_better_offline_is_promoted_only_if_the_live_days_agree(live_drift: bool) -> None:
    rng = np.random.default_rng(11)
    s, w, y = _population(rng, 6000, w_matters=True)
    offline = decide(y, _challenger(s, w), _champion(s), {}, GatePolicy(n_bootstrap=200), challenger="2", champion="1")
    assert offline.promote, offline.reasons  # the holdout says: better

    rows = []
    for i in range(14):  # 14 live days; from day 0 the relation of w to churn is gone when live_drift
        s, w, y = _population(rng, 2000, w_matters=not live_drift)
        rows.append(paired_day(y, _champion(s), _challenger(s, w)) | {
            "ds": f"2026-05-{i + 1:02d}", "challenger_version": "2"})
    evidence = shadow_evidence(rows, "2")
    assert evidence.verdict == ("worse" if live_drift else "better"), evidence.describe()


# -- the stages: score in shadow, record the paired days, gate on them -------------------------------
@pytest.fixture
def shadowed(tmp_path: Path) -> Settings:
    """Churn with gate.shadow.required (3 days), its own MLflow; the lake under tmp_path."""
    folder = tmp_path / "shadowed" / "churn"  # (the folder's name is the use case's)
    shutil.copytree(UC.folder, folder)
    spec = folder / "usecase.yaml"
    text = spec.read_text()
    assert "  slice_min_rows: 300\n" in text
    spec.write_text(text.replace("  slice_min_rows: 300\n",
                                 "  slice_min_rows: 300\n  shadow: {required: true, min_days: 3}\n"))
    return load_settings(lake_uri=str(tmp_path / "lake"), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                         use_cases=[str(folder)], use_case=str(folder), sim_customers=300)


def _features(ds: str, rows: int = 300, seed: int = 0, label: np.ndarray | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    schema = UC.tables.features.schema
    cats = categories(UC)
    columns: dict[str, pa.Array] = {UC.key: pa.array(np.arange(rows, dtype=np.int64) + 1)}
    for field in schema:
        if field.name in UC.categorical:
            columns[field.name] = pa.array([cats[field.name][i % len(cats[field.name])]
                                            for i in rng.integers(0, 99, rows)], field.type)
        elif field.name in UC.feature_columns:
            numbers = rng.gamma(2.0, 10.0, rows)
            columns[field.name] = pa.array(numbers if pa.types.is_floating(field.type) else numbers.astype(np.int64),
                                           field.type)
    columns[UC.label] = pa.nulls(rows, pa.int8()) if label is None else pa.array(label, pa.int8())
    columns["ds"] = pa.array([ds] * rows, pa.string())
    return pa.table(columns, schema=schema)


def _register(settings: Settings, seed: int, *, booster: bool = False) -> str:
    """A registered version in the real MLflow: with ``booster``, a small LightGBM model on churn's
    features logged with it (what scoring loads); otherwise a bare version (what the gate's aliases
    and records need), much quicker."""
    import mlflow

    if not booster:
        client = Registry(settings).client
        if not client.search_registered_models(f"name = '{settings.model}'"):
            client.create_registered_model(settings.model)
        return str(client.create_model_version(settings.model, source=f"models-of-test/{seed}").version)
    frame = _features("2026-01-01", seed=seed).to_pandas()
    label = (frame["days_since_last_event"] + seed * frame["sessions_7d"] > 25).astype(int)
    params = {**DEFAULT_PARAMS, **UC.spec.model.params, "min_child_samples": 5, "num_leaves": 7}
    model = lgb.train(params, lgb.Dataset(model_matrix(frame, UC, categories(UC)), label=label), num_boost_round=10)
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()):
        info = mlflow.lightgbm.log_model(model, name="model", registered_model_name=settings.model)
    return str(info.registered_model_version)


def _candidate(version: str, champion: str | None, promote: bool = True) -> retrain.Candidate:
    decision = {"promote": promote, "champion": champion, "challenger": version, "forced": False,
                "reasons": ["improvement: +0.012 over the champion" if promote else "improvement: +0.001 is noise"],
                "checks": []}
    return retrain.Candidate(version=version, mlflow_run_id="r", feature_table_version=0, training_data=f"t{version}",
                             decision=decision, holdout_roc_auc=0.8)


def _finish(settings: Settings, ds: str, candidate: retrain.Candidate, run: str = "w") -> dict:
    return retrain._finish(settings, Lake(settings), Registry(settings), ds, candidate,
                           RunContext("churn__weekly_retrain", f"scheduled__{ds}-{run}"), dry_run=False)


def _seed_shadow_days(settings: Settings, challenger: str, advantage: float, first: dt.date, n: int) -> None:
    lake, ctx = Lake(settings), RunContext("churn__drift_report", "seed")
    for i in range(n):
        ds = (first + dt.timedelta(days=i)).isoformat()
        row = _days([advantage + 0.001 * i], challenger=challenger, start=first + dt.timedelta(days=i))[0]
        row |= {"rows": 500, "positive_rate": 0.1, "evaluated_on": (first + dt.timedelta(days=i + 30)).isoformat()}
        lake.write_partition(SHADOW_PERFORMANCE, ds, pa.Table.from_pylist([row], schema=SHADOW_PERFORMANCE.schema),
                             ctx.lineage(ds, {}))


def test_score_day_shadows_the_challenger_and_the_matured_days_pair_them(shadowed: Settings) -> None:
    lake, ctx = Lake(shadowed), RunContext("churn__batch_score", "t")
    v1, v2 = _register(shadowed, 0, booster=True), _register(shadowed, 1, booster=True)
    first = _finish(shadowed, "2026-02-28", _candidate(v1, None))
    assert first["promoted"] and first["shadow_state"] is None  # a first model: the offline gate alone
    Registry(shadowed).set_alias(CHAMPION, v1)
    second = _finish(shadowed, "2026-03-07", _candidate(v2, v1))
    assert not second["promoted"] and second["shadow_state"] == "challenger"
    assert Registry(shadowed).aliases()[CHALLENGER] == v2

    day = "2026-03-08"
    lake.write_partition(UC.tables.features, day, _features(day, seed=5), ctx.lineage(day, {}))
    summary = S.score_day(shadowed, dt.date.fromisoformat(day), ctx)
    assert summary["model_version"] == v1 and summary["shadow"]["model_version"] == v2
    published = lake.read_partition(UC.tables.predictions, day).to_pandas()
    shadow = lake.read_partition(UC.tables.shadow, day).to_pandas()
    assert set(published["model_version"]) == {v1} and set(shadow["model_version"]) == {v2}
    assert published[UC.key].tolist() == shadow[UC.key].tolist()
    assert not np.allclose(published["score"], shadow["score"])  # two models, two opinions

    # The labels of the day mature 30 days later: both models are judged on the same customers.
    label = (published["score"].to_numpy() > np.median(published["score"])).astype(np.int8)
    lake.write_partition(UC.tables.features, day, _features(day, seed=5, label=label), ctx.lineage(day, {}))
    evaluated = record_performance(shadowed, dt.date(2026, 4, 7), RunContext("churn__drift_report", "d"))
    assert evaluated["evaluated"] and evaluated["roc_auc"] == 1.0
    assert evaluated["shadow"]["champion_roc_auc"] == 1.0 and evaluated["shadow"]["challenger_roc_auc"] < 1.0
    record_performance(shadowed, dt.date(2026, 4, 7), RunContext("churn__drift_report", "d2"))  # a re-run
    rows = lake.read_table(SHADOW_PERFORMANCE).to_pylist()
    assert [(r["ds"], r["champion_version"], r["challenger_version"], r["rows"]) for r in rows] == [
        (day, v1, v2, 300)]

    # Once the challenger is champion, nothing is left to shadow: a re-run clears the day's shadow.
    promotions.record_promotion(lake, day, v2, v1, forced=True, reason="manual: test", ctx=ctx)
    again = S.score_day(shadowed, dt.date.fromisoformat(day), ctx)
    assert again["model_version"] == v2 and again["shadow"] is None
    assert lake.partition_rows(UC.tables.shadow).get(day) is None


@pytest.mark.parametrize(
    ("advantage", "days", "judged", "champion_after"),
    [(0.02, 3, "promoted", "2"), (-0.02, 3, "retired", "1"), (0.02, 2, None, "1")],
    ids=["better-live", "worse-live", "too-few-days"],
)
def test_with_shadow_required_the_live_days_decide(
    shadowed: Settings, advantage: float, days: int, judged: str | None, champion_after: str
) -> None:
    v1, v2, v3 = (_register(shadowed, i) for i in range(3))
    assert (v1, v2, v3) == ("1", "2", "3")
    _finish(shadowed, "2026-02-28", _candidate(v1, None))
    Registry(shadowed).set_alias(CHAMPION, v1)
    _finish(shadowed, "2026-03-07", _candidate(v2, v1))  # better offline: into shadow, not promoted
    lake = Lake(shadowed)
    assert promotions.challenger_on(lake, dt.date(2026, 3, 7)) is None  # the decision takes effect the next day
    assert promotions.challenger_on(lake, dt.date(2026, 3, 8)) == v2
    _seed_shadow_days(shadowed, v2, advantage, dt.date(2026, 3, 8), days)

    week = "2026-04-11"  # the labels of 2026-03-08.. have matured
    outcome = _finish(shadowed, week, _candidate(v3, v1))
    rerun = _finish(shadowed, week, _candidate(v3, v1))  # the same run again: nothing twice
    assert rerun["decided_before"]
    history = promotions.history(lake)
    assert promotions.champion_on(lake, dt.date(2026, 4, 12)) == champion_after
    rows = {r["model_version"]: r for r in lake.read_table(MODEL_DECISIONS).to_pylist() if r["ds"] == week}
    if judged is None:
        assert outcome["shadow"]["verdict"] == "too few days" and outcome["shadow_judged"] is None
        assert outcome["shadow_state"] == "waiting" and "v2 is in shadow (2 of 3 matured live days)" in outcome["reason"]
        assert promotions.challenger_on(lake, dt.date(2026, 4, 12)) == v2  # keeps collecting
        assert list(rows) == [v3]
    else:
        assert rows[v2]["shadow_state"] == judged and outcome["shadow_judged"]["shadow_state"] == judged
        assert json.loads(rows[v2]["shadow_json"])["verdict"] == ("better" if advantage > 0 else "worse")
        assert rows[v2]["reason"].startswith(f"shadow: v2 {'better' if advantage > 0 else 'worse'} than the champion")
    if judged == "promoted":
        assert [(r["ds"], r["model_version"], r["decision_ds"]) for r in history][-1] == ("2026-04-12", v2, week)
        assert len([r for r in history if r["model_version"] == v2]) == 1
        assert Registry(shadowed).aliases()[CHAMPION] == v2
        assert outcome["shadow_state"] == "waiting" and not outcome["promoted"]  # v3 was gated against v1
    if judged == "retired":
        assert [r["model_version"] for r in history] == [v1] and Registry(shadowed).aliases()[CHAMPION] == v1
        assert outcome["shadow_state"] == "challenger"  # v3 takes the freed place
        assert promotions.challenger_on(lake, dt.date(2026, 4, 12)) == v3
    decision = json.loads(rows[v3]["decision_json"])
    assert decision["shadow"]["challenger_version"] == v2 and decision["shadow"]["days"] == days


def test_without_the_requirement_the_offline_gate_decides_and_the_evidence_is_recorded(tmp_path: Path) -> None:
    settings = load_settings(lake_uri=str(tmp_path / "lake"), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                             sim_customers=300)
    assert not load_use_case("churn").spec.gate.shadow.required  # the default
    v1, v2, v3 = (_register(settings, i) for i in range(3))
    _finish(settings, "2026-02-28", _candidate(v1, None))
    Registry(settings).set_alias(CHAMPION, v1)
    _finish(settings, "2026-03-07", _candidate(v2, v1, promote=False))  # not promoted, shadowed all the same
    _seed_shadow_days(settings, v2, -0.03, dt.date(2026, 3, 8), 14)
    early = _finish(settings, "2026-04-11", _candidate(v3, v1, promote=False))
    assert early["shadow"]["days"] == 5, "a decision sees only the days evaluated by its own day"
    v4 = _register(settings, 3)
    outcome = _finish(settings, "2026-04-25", _candidate(v4, v1))
    assert outcome["promoted"] and outcome["shadow_state"] is None
    assert outcome["shadow"]["challenger_version"] == v3 and outcome["shadow"]["days"] == 0  # v3 is in shadow now
    assert promotions.champion_on(Lake(settings), dt.date(2026, 4, 26)) == v4


def test_a_dry_run_with_shadow_required_changes_nothing(shadowed: Settings) -> None:
    v1, v2 = _register(shadowed, 0), _register(shadowed, 1)
    _finish(shadowed, "2026-02-28", _candidate(v1, None))
    Registry(shadowed).set_alias(CHAMPION, v1)
    retrain._finish(shadowed, Lake(shadowed), Registry(shadowed), "2026-03-07", _candidate(v2, v1),
                    RunContext("churn__weekly_retrain", "manual__dry"), dry_run=True)
    assert promotions.challenger_on(Lake(shadowed), dt.date(2026, 3, 8)) is None


def test_the_view_shows_the_shadow_comparison(shadowed: Settings) -> None:
    from sluice.ui.view import shadow

    v1, v2 = _register(shadowed, 0), _register(shadowed, 1)
    _finish(shadowed, "2026-02-28", _candidate(v1, None))
    Registry(shadowed).set_alias(CHAMPION, v1)
    _finish(shadowed, "2026-03-07", _candidate(v2, v1))
    _seed_shadow_days(shadowed, v2, 0.02, dt.date(2026, 3, 8), 4)
    data = shadow(shadowed, today=dt.date(2026, 4, 20))
    assert data["required"] and data["challenger"] == v2 and len(data["days"]) == 4
    assert data["evidence"]["verdict"] == "better" and data["evidence"]["summary"].startswith("shadow: v2 better")
    assert all(math.isfinite(d["challenger_roc_auc"]) for d in data["days"])
    json.dumps(data, allow_nan=False)  # what /api/overview serves



# -- the model card ------------------------------------------------------------------------------
HOSTILE = "<script>alert('card')</script>"


def _register_with_card(settings: Settings, card: str) -> str:
    """A version whose training run logged ``card`` (as retrain logs model_card.md)."""
    import mlflow

    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        mlflow.log_text(card, "model_card.md")
    client = registry.client
    if not client.search_registered_models(f"name = '{settings.model}'"):
        client.create_registered_model(settings.model)
    return str(client.create_model_version(settings.model, source=f"runs:/{run.info.run_id}/model",
                                           run_id=run.info.run_id).version)


def test_the_model_card_carries_its_shadow_results_in_mlflow_and_in_the_view(shadowed: Settings) -> None:
    from sluice.ui import view

    v1 = _register_with_card(shadowed, "# Model card: v1\n\n## Intended use\nchampion\n")
    v2 = _register_with_card(shadowed, f"# Model card: v2\n\n## Intended use\nretention {HOSTILE}\n")
    v3 = _register(shadowed, 9)
    _finish(shadowed, "2026-02-28", _candidate(v1, None))
    _finish(shadowed, "2026-03-07", _candidate(v2, v1))
    before = view.model_card(shadowed, v2)
    assert "## Shadow results\nshadow: 0 of 3 matured live days of v2 so far" not in before["markdown"]
    assert before["markdown"].endswith("## Shadow results\nNever scored in shadow (it was champion from its "
                                       "decision, or is not yet).\n")
    _seed_shadow_days(shadowed, v2, 0.02, dt.date(2026, 3, 8), 3)
    _finish(shadowed, "2026-04-11", _candidate(v3, v1))  # judges v2 on its 3 days: promoted

    in_mlflow = Registry(shadowed).model_card(v2)
    assert in_mlflow is not None and in_mlflow.startswith("# Model card: v2")
    assert "## Shadow results\nshadow: v2 better than the champion on 3 live days (3 won)" in in_mlflow
    assert in_mlflow.count("## Shadow results") == 1 and "| 2026-03-10 | v1 | 500 |" in in_mlflow
    card = view.model_card(shadowed, v2)
    assert card["markdown"] == in_mlflow and card["shadow"]["verdict"] == "better"
    assert card["aliases"] == ["challenger", "champion"]  # (a promoted model keeps the alias it was gated with)
    page = view.render_card(card)
    assert HOSTILE not in page and "&lt;script&gt;" in page and "<table>" in page
    with pytest.raises(view.CardNotFound):
        view.model_card(shadowed, v3)  # a version whose run logged no card
    with pytest.raises(ValueError, match="not a model version"):
        view.model_card(shadowed, "../etc")
