"""The Sluice view: its data functions on a real local lake, its charts and page, and the
plugin's FastAPI app (authentication, report serving, and refusing every path that
would leave the reports prefix)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pytest

from sluice.core import gate
from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.core.volume import check_volume
from sluice.edges.lake import Lake
from sluice.edges.storage import put_object, report_uri
from sluice.settings import Settings, load_settings
from sluice.stages import promotions
from sluice.stages.monitoring.drift import history_row
from sluice.stages.monitoring.report import DriftSummary
from sluice.tables import (
    DRIFT_HISTORY,
    MODEL_DECISIONS,
    PARTITION_COLUMN,
    PERFORMANCE_HISTORY,
    RECORD_TABLES,
    VOLUME_HISTORY,
)
from sluice.ui import view

UC = load_use_case("churn")
RAW_EVENTS = UC.tables.raw

PLUGIN_FILE = Path(__file__).resolve().parents[2] / "plugins" / "sluice_view.py"
HOSTILE = '<script>alert("x")</script>'


# -- records, written as the pipeline writes them ---------------------------------------------------
def _decision(ds: str, run_id: str, *, version: str, champion: str | None, reason_suffix: str = "") -> dict:
    """A decisions row made from a real gate decision (as retrain._finish writes it)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    challenger = np.clip(y * 0.6 + rng.random(600) * 0.4, 0, 1)
    incumbent = None if champion is None else np.clip(y * 0.3 + rng.random(600) * 0.7, 0, 1)
    slices = {"plan": np.array(["basic", "premium"] * 300), "region": np.array(["eu"] * 600)}
    policy = gate.GatePolicy(n_bootstrap=50, guarded_slices=("plan", "region"))  # churn's guarded slices
    decision = gate.decide(y, challenger, incumbent, slices, policy, challenger=version, champion=champion)
    record = json.loads(decision.to_json())
    record["reasons"] = [r + reason_suffix for r in record["reasons"]]
    return {
        "model_version": version, "champion_version": champion, "promote": decision.promote,
        "promoted": decision.promote, "dry_run": False, "forced": False,
        "reason": "; ".join(record["reasons"]), "feature_table_version": 12,
        "decision_json": json.dumps(record), "run_id": run_id,
        "recorded_at": dt.datetime(2026, 2, 9, 1, tzinfo=dt.UTC), PARTITION_COLUMN: ds,
    }


def _write_records(settings: Settings) -> None:
    lake = Lake(settings)
    ctx = RunContext("weekly_retrain", "scheduled__2026-02-09")
    first = _decision("2026-02-08", "scheduled__2026-02-09T00:00:00+00:00", version="1", champion=None)
    second = _decision("2026-02-15", "scheduled__2026-02-16T00:00:00+00:00", version="2", champion="1",
                       reason_suffix=" " + HOSTILE)
    for row in (first, second):
        lake.append_rows(MODEL_DECISIONS, row["ds"], [row], ("model_version", "run_id"), ctx.lineage(row["ds"], {}))
    promotions.record_promotion(lake, "2026-02-08", "1", None, forced=False, reason="clears every floor",
                                ctx=RunContext("weekly_retrain", first["run_id"]), decision_ds="2026-02-08")
    promotions.record_promotion(lake, "2026-02-20", "3", "1", forced=True, reason=f"manual: {HOSTILE}",
                                ctx=RunContext("sluice-cli", "promote-3-abc"))
    summary = DriftSummary(share=0.5, drifted_columns=["spend_7d", "sessions_7d"], prediction_drifted=True,
                           n_columns=4, scores={}, missing_drifted=[])
    calm = DriftSummary(share=0.0, drifted_columns=[], prediction_drifted=False, n_columns=4, scores={},
                        missing_drifted=[])
    for ds, s in (("2026-02-17", calm), ("2026-02-16", summary)):
        row = history_row(ds, s, rows=300, reference_rows=200, model_version="1", reference_feature_version=3,
                          report_uri=report_uri(settings, ds), threshold=0.3)
        lake.write_partition(DRIFT_HISTORY, ds, pa.Table.from_pylist([row], schema=DRIFT_HISTORY.schema),
                             RunContext("drift_report", f"r{ds}").lineage(ds, {}))
    perf = {"model_version": "1", "roc_auc": 0.81, "pr_auc": 0.42, "rows": 250, "positive_rate": 0.1,
            "evaluated_on": "2026-03-18", "alert": False, PARTITION_COLUMN: "2026-02-16"}
    lake.write_partition(PERFORMANCE_HISTORY, "2026-02-16", pa.Table.from_pylist([perf], schema=PERFORMANCE_HISTORY.schema),
                         RunContext("drift_report", "p").lineage("2026-02-16", {}))
    # ingest_raw's volume checks, as check_day_volume records them: a thin day between two normal ones.
    spec = UC.spec.contract.volume
    for ds, rows in (("2026-02-15", 4100), ("2026-02-16", 900), ("2026-02-17", 4000)):
        check = check_volume(ds, rows, {f"2026-02-0{i}": 4000 + 10 * i for i in range(1, 9)}, spec)
        row = {k: v for k, v in check.as_dict().items() if k in VOLUME_HISTORY.schema.names}
        lake.write_partition(VOLUME_HISTORY, ds, pa.Table.from_pylist([row | {"raw_version": 3}],
                                                                      schema=VOLUME_HISTORY.schema),
                             RunContext("ingest_raw", f"v{ds}").lineage(ds, {}))


def _isolated_settings(root: Path) -> Settings:
    """A lake under ``root`` and a tracking store that does not exist (never the developer's .mlflow)."""
    return load_settings(lake_uri=str(root / "lake"), mlflow_tracking_uri=f"sqlite:///{root / 'mlflow' / 'none.db'}",
                         sim_customers=300)


@pytest.fixture
def view_settings(tmp_path: Path) -> Settings:
    return _isolated_settings(tmp_path)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One lake with decisions, promotions, drift and performance records, shared read-only by the module."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("SLUICE_", "AWS_")):
                mp.delenv(key)
        mp.setenv("SLUICE_CODE_VERSION", "unit-test")
        settings = _isolated_settings(tmp_path_factory.mktemp("view"))
        _write_records(settings)
        for ds in ("2026-02-16", "2026-02-17"):
            put_object(settings, report_uri(settings, ds), f"<html><title>report {ds}</title></html>".encode())
            put_object(settings, report_uri(settings, ds, "report.json"), b'{"ds": "%s"}' % ds.encode())
    return settings


# -- the data functions ------------------------------------------------------------------------------
def test_freshness_lists_every_table_with_its_latest_partition(settings, ctx, helpers) -> None:
    for day in helpers.day_range(helpers.DAY, 2):
        helpers.run_day(settings, day, ctx)
    tables = {t["table"]: t for t in view.freshness(settings)}
    # The use case's own tables, then the record tables every use case has.
    assert list(tables) == [t.name for t in (*UC.tables.all(), *RECORD_TABLES)]
    raw = tables[RAW_EVENTS.name]
    rows = Lake(settings).partition_rows(RAW_EVENTS)
    assert raw["latest_partition"] == "2026-03-02" and raw["partitions"] == 2
    assert raw["rows_latest_partition"] == rows["2026-03-02"] > 0 and raw["rows_total"] == sum(rows.values())
    assert raw["version"] == Lake(settings).version(RAW_EVENTS)
    assert raw["last_commit"] == {"dag_id": "unit_test", "run_id": "manual__unit", "ds": "2026-03-02",
                                  "code_version": "unit-test"}
    never = tables[MODEL_DECISIONS.name]
    assert never["version"] is None and never["latest_partition"] is None and never["last_commit"] is None
    json.dumps(view.freshness(settings))  # plain values only


def test_an_empty_lake_gives_empty_sections(view_settings) -> None:
    settings = view_settings
    data = view.overview(settings)
    assert all(data[s]["ok"] for s in ("registry", "champion", "decisions", "drift", "performance", "volume",
                                       "freshness"))
    assert data["registry"]["data"] == {}, "no tracking store: no alias, and none is created to be read"
    assert data["champion"]["data"]["current"] is None and data["champion"]["data"]["history"] == []
    assert data["decisions"]["data"] == [] and data["drift"]["data"]["days"] == []
    assert data["performance"]["data"]["days"] == []
    assert not Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).exists()
    page = view.render_page(data)
    assert "No champion yet" in page and "No drift report yet" in page and "No gate decision yet" in page
    assert data["volume"]["data"]["days"] == [] and "No volume check yet" in page


def test_each_use_case_is_shown_on_its_own_and_the_switch_lists_them_all(recorded) -> None:
    data = view.overview(recorded)
    assert (data["use_case"], data["model_name"], data["lake_uri"]) == ("churn", "sluice-churn", recorded.lake_root)
    assert data["use_cases"] == [
        {"name": "churn", "href": "?use_case=churn", "current": True},
        {"name": "purchases", "href": "?use_case=purchases", "current": False},
    ]
    other = view.for_use_case(recorded, "purchases")
    assert (other.use_case_name, other.lake_root) == ("purchases", f"{recorded.lake_uri}/purchases")
    assert view.for_use_case(recorded, None) is recorded
    # Churn's records are churn's: the other use case's page has none of them.
    purchases = view.overview(other)
    assert purchases["decisions"]["data"] == [] and purchases["drift"]["data"]["days"] == []
    assert purchases["champion"]["data"]["history"] == [] and purchases["model_name"] == "sluice-purchases"
    with pytest.raises(view.UnknownUseCase, match="'fraud' is not a use case of this deployment"):
        view.for_use_case(recorded, "fraud")


def test_decisions_newest_first_with_every_check_its_numbers_and_reasons(recorded) -> None:
    decisions = view.decisions(recorded)
    assert [d["ds"] for d in decisions] == ["2026-02-15", "2026-02-08"]
    latest, first = decisions
    assert [c["name"] for c in latest["checks"]] == ["floors", "improvement", "slices", "calibration"]
    assert [c["name"] for c in first["checks"]] == ["floors"] and first["champion_version"] is None
    assert first["verdict"] == "promoted" and first["checks"][0]["passed"]
    improvement = dict(latest["checks"][1]["numbers"])
    assert {"ci_low", "ci_high", "difference", "margin", "metric"} <= set(improvement)
    slices = dict(latest["checks"][2]["numbers"])
    assert "examined[plan=basic].rows" in slices and slices["examined[plan=basic].rows"] == "300"
    assert all(c["reason"] for c in latest["checks"])
    assert latest["anchor"] == f"decision-2026-02-15-scheduled__2026-02-16T00-00-00-00-00-v{latest['model_version']}"
    json.dumps(decisions)


def test_champion_history_links_each_promotion_to_its_decision(recorded) -> None:
    champion = view.champion(recorded, aliases={"champion": "3", "previous-champion": "1", "challenger": "2"})
    assert (champion["current"], champion["previous"], champion["challenger"]) == ("3", "1", "2")
    history = champion["history"]
    assert [(h["since"], h["model_version"], h["forced"]) for h in history] == [
        ("2026-02-20", "3", True), ("2026-02-08", "1", False)]
    assert history[0]["decision_anchor"] is None, "a promotion by hand has no gate decision"
    decision_anchors = {d["anchor"] for d in view.decisions(recorded)}
    assert history[1]["decision_anchor"] in decision_anchors


def test_drift_and_performance_histories_are_oldest_first_with_report_links(recorded) -> None:
    history = view.drift_history(recorded)
    assert history["threshold"] == 0.3
    assert [(d["ds"], d["drift_share"], d["alert"]) for d in history["days"]] == [
        ("2026-02-16", 0.5, True), ("2026-02-17", 0.0, False)]
    assert history["days"][0]["drifted_columns"] == ["spend_7d", "sessions_7d"]
    assert history["days"][0]["report"] == "reports/2026-02-16/report.html?use_case=churn"  # this use case's
    perf = view.performance_history(recorded)
    assert perf["roc_auc_floor"] == 0.7 and [(p["ds"], p["roc_auc"]) for p in perf["days"]] == [("2026-02-16", 0.81)]


def test_the_volume_of_each_day_is_shown_against_its_band_and_a_thin_day_stands_out(recorded) -> None:
    volume = view.volume_history(recorded)
    assert (volume["max_drop"], volume["max_rise"], volume["trailing_days"]) == (0.5, 1.0, 28)
    assert [(d["ds"], d["rows"], d["verdict"], d["alert"]) for d in volume["days"]] == [
        ("2026-02-15", 4100, "ok", False), ("2026-02-16", 900, "low", True), ("2026-02-17", 4000, "ok", False)]
    assert volume["outside"] == 1
    data = view.overview(recorded)
    chart = view.charts(data)["volume"]
    [series] = chart["series"]
    assert [p["alert"] for p in series["points"]] == [False, True, False]
    assert chart["reference"]["text"] == "alert below 50%"
    page = view.render_page(data)
    section = page[page.index('id="volume"'):page.index('id="shadow"')]
    assert "<strong>1 day(s)</strong> of the last 3 were outside" in section
    assert '<tr class="alert">' in section and "2026-02-16" in section and "22%" in section, "900 of a median 4,045"
    assert section.count('<span class="badge good">ok</span>') == 2


def test_a_failing_section_shows_its_error_and_the_others_still_render(recorded, monkeypatch) -> None:
    def broken(settings: Settings, lake: object = None) -> dict:
        raise OSError("object store unreachable")

    monkeypatch.setattr(view, "drift_history", broken)
    data = view.overview(recorded)
    assert data["drift"] == {"ok": False, "error": "OSError: object store unreachable"}
    assert data["decisions"]["ok"]
    page = view.render_page(data)
    assert "Could not read this section: OSError: object store unreachable" in page
    assert "Gate decisions" in page and 'id="drift-chart"' not in page


def test_the_page_escapes_every_value(recorded) -> None:
    page = view.render_page(view.overview(recorded))
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<script" not in page.lower(), "the page runs no script at all"
    assert page.count('class="report-link"') == 2
    assert '<a href="reports/2026-02-16/report.html?use_case=churn" class="point-link">' in page
    assert 'id="drift-chart"' in page and 'id="performance-chart"' in page
    assert 'id="decision-2026-02-08-scheduled__2026-02-09T00-00-00-00-00-v1"' in page


# -- charts and formatting ---------------------------------------------------------------------------
def test_line_chart_places_points_by_calendar_day_and_clamps_values() -> None:
    points = [{"ds": "2026-01-01", "value": 0.0}, {"ds": "2026-01-03", "value": 1.5, "href": "r", "alert": True},
              {"ds": "2026-01-11", "value": 0.5}, {"ds": "2026-01-12", "value": float("nan")}]
    chart = view.line_chart([view.Series("s", points)], reference=0.3, percent=True, width=200, height=100)
    left, right, top, bottom = chart["left"], chart["right"], chart["top"], chart["bottom"]
    pts = chart["series"][0]["points"]
    assert [p["ds"] for p in pts] == ["2026-01-01", "2026-01-03", "2026-01-11"], "no value, no point"
    assert pts[0]["x"] == left and pts[1]["x"] == pytest.approx(left + (right - left) * 2 / 11, abs=0.1)
    assert pts[0]["y"] == bottom and pts[1]["y"] == top, "values above the range are drawn at its top"
    assert pts[1]["href"] == "r" and pts[1]["alert"] and pts[1]["label"] == "150%", "the tooltip tells the real value"
    assert chart["series"][0]["path"] == " ".join(
        f"{'M' if i == 0 else 'L'}{p['x']},{p['y']}" for i, p in enumerate(pts))
    assert chart["reference"]["text"] == "30%" and top < chart["reference"]["y"] < bottom
    assert [t["text"] for t in chart["y_ticks"]] == ["0%", "25%", "50%", "75%", "100%"]
    assert not chart["empty"]


def test_line_chart_of_one_day_or_none() -> None:
    one = view.line_chart([view.Series("s", [{"ds": "2026-01-01", "value": 0.2}])], width=300)
    assert one["series"][0]["points"][0]["x"] == (one["left"] + one["right"]) / 2
    assert view.line_chart([view.Series("s", [])])["empty"]
    many = view.line_chart([view.Series("s", [{"ds": f"2026-01-{d:02d}", "value": 0.1} for d in range(1, 31)])],
                           max_x_labels=8)
    assert len(many["x_labels"]) <= 8


def test_numbers_of_a_check_are_flattened_and_formatted() -> None:
    numbers = {"challenger": {"roc_auc": 0.81234, "rows": 1200}, "floors": {"roc_auc": 0.7},
               "examined": [{"slice": "plan=basic", "rows": 300, "challenger": float("nan")}], "big": 12345.6}
    assert view.flatten_numbers(numbers) == [
        ("big", "12,346"), ("challenger.roc_auc", "0.8123"), ("challenger.rows", "1,200"),
        ("examined[plan=basic].challenger", "n/a"), ("examined[plan=basic].rows", "300"), ("floors.roc_auc", "0.7000"),
    ]


# -- reading reports ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ds", ["2026-13-45", "yesterday", "..", "../../etc", "2026-02-16/..", "2026-02-16\x00", ""])
def test_read_report_refuses_anything_but_a_day(settings, ds: str) -> None:
    with pytest.raises(ValueError):
        view.read_report(settings, ds)


@pytest.mark.parametrize("name", ["../report.html", "report.parquet", "_delta_log", "..", "report.html/..", ""])
def test_read_report_serves_only_the_report_files(settings, name: str) -> None:
    put_object(settings, report_uri(settings, "2026-02-16"), b"<html>r</html>")
    with pytest.raises(view.ReportNotFound):
        view.read_report(settings, "2026-02-16", name)


def test_read_report_does_not_follow_a_link_out_of_the_reports(settings, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    folder = Path(report_uri(settings, "2026-02-16").removeprefix("file://")).parent
    folder.mkdir(parents=True)
    (folder / "report.html").symlink_to(secret)
    with pytest.raises(view.ReportNotFound, match="outside"):
        view.read_report(settings, "2026-02-16")


# -- the plugin and its app --------------------------------------------------------------------------
def _load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sluice_view_plugin_under_test", PLUGIN_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loading_the_plugin_imports_nothing_heavy_and_builds_nothing() -> None:
    heavy = ("pandas", "pyarrow", "deltalake", "mlflow", "sklearn", "evidently", "boto3", "sluice")
    code = (
        "import runpy, sys\n"
        f"ns = runpy.run_path({str(PLUGIN_FILE)!r})\n"
        "print(ns['app'].cache_info().currsize)\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-2] == "0", "the FastAPI app is built on first use, not at import"
    assert out[-1] == "", f"loading the plugin imports {out[-1]}"


def test_airflow_finds_the_plugin_its_nav_entry_and_its_app() -> None:
    from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory

    plugins, errors = _load_plugins_from_plugin_directory(str(PLUGIN_FILE.parent))
    assert errors == {}
    plugin = next(p for p in plugins if p.name == "sluice_view")
    (nav,) = plugin.external_views
    assert nav["name"] == "Sluice" and nav["url_route"] == "sluice" and not nav["href"].startswith("/")
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/sluice" and app["app"] is plugin.fastapi_apps[0]["app"]


@pytest.fixture(scope="module")
def app(recorded):
    """The plugin's app on the recorded file:// lake, with Airflow's simple auth manager set up as the
    API server sets it up (its get_user dependency checks credentials; no metadata DB needed here)."""
    from airflow.api_fastapi import app as api_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                  "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-secret-" + "x" * 48)
        api_app.purge_cached_app()
        api_app.create_auth_manager()
        try:
            yield _load_plugin().create_app()
        finally:
            api_app.purge_cached_app()


@pytest.fixture
def client(app, recorded, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("SLUICE_LAKE_URI", recorded.lake_uri)
    monkeypatch.setenv("SLUICE_MLFLOW_TRACKING_URI", recorded.mlflow_tracking_uri)
    app.dependency_overrides.clear()
    yield TestClient(app)
    app.dependency_overrides.clear()


def _as(client, role: str | None):
    """Requests from a user the auth manager knows (what get_user returns once a JWT checked out)."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    client.app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="u", role=role)
    return client


ROUTES = ["/", "/api/overview", "/reports/2026-02-16/report.html", "/reports/2026-02-16/report.json", "/icon.svg",
          "/reports/yesterday/report.html", "/cards/1", "/cards/not-a-version"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_request_without_credentials(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    assert "report" not in response.text.replace("detail", "")


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_forged_token(client, path: str) -> None:
    assert client.get(path, headers={"Authorization": "Bearer not.a.jwt"}).status_code == 403
    assert client.get(path, cookies={"_token": "forged"}).status_code == 403


def test_a_user_without_a_role_is_forbidden(client) -> None:
    response = _as(client, None).get("/")
    assert response.status_code == 403 and "read access to DAGs" in response.json()["detail"]


def test_a_viewer_sees_the_page_and_the_data(client) -> None:
    viewer = _as(client, "viewer")
    page = viewer.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert "v3" in page.text and "2026-02-15" in page.text and HOSTILE not in page.text
    data = viewer.get("/api/overview").json()
    assert [d["ds"] for d in data["drift"]["data"]["days"]] == ["2026-02-16", "2026-02-17"]
    assert viewer.get("/icon.svg").headers["content-type"] == "image/svg+xml"


def test_a_model_card_that_does_not_exist_is_a_404_and_a_bad_version_a_400(client) -> None:
    viewer = _as(client, "viewer")
    missing = viewer.get("/cards/41")
    assert missing.status_code == 404 and missing.json() == {"detail": "No such model card"}
    assert viewer.get("/cards/4a").status_code == 400
    assert viewer.get("/cards/..%2f..%2fetc").status_code in (400, 404)
    page = viewer.get("/")
    assert 'href="cards/2?use_case=churn"' in page.text  # each decision links its model card


def test_a_viewer_switches_use_case_with_the_query(client) -> None:
    viewer = _as(client, "viewer")
    churn = viewer.get("/api/overview").json()
    assert churn["use_case"] == "churn" and [d["ds"] for d in churn["decisions"]["data"]] == ["2026-02-15", "2026-02-08"]
    other = viewer.get("/api/overview?use_case=purchases").json()
    assert other["use_case"] == "purchases" and other["decisions"]["data"] == []
    assert viewer.get("/reports/2026-02-16/report.html?use_case=purchases").status_code == 404
    unknown = viewer.get("/?use_case=fraud")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "No such use case"}


def test_a_viewer_opens_a_days_report_from_the_object_store(client) -> None:
    viewer = _as(client, "viewer")
    html = viewer.get("/reports/2026-02-16/report.html")
    assert html.status_code == 200 and html.text == "<html><title>report 2026-02-16</title></html>"
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert html.headers["content-security-policy"].startswith("sandbox"), "the report runs in an opaque origin"
    as_json = viewer.get("/reports/2026-02-17/report.json")
    assert as_json.status_code == 200 and as_json.json() == {"ds": "2026-02-17"}
    missing = viewer.get("/reports/2026-02-18/report.html")
    assert missing.status_code == 404 and missing.json() == {"detail": "No such drift report"}, "no lake path leaks"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/reports/2026-13-45/report.html", 400),
        ("/reports/yesterday/report.html", 400),
        ("/reports/20260216/report.html", 400),
        ("/reports/%2E%2E/report.html", 400),  # ds = ".."
        ("/reports/2026-02-16%00/report.html", 400),
        ("/reports/2026-02-16'%20OR%201=1/report.html", 400),
        ("/reports/..%2F..%2Fraw/report.html", 404),  # an encoded slash is a slash: no route matches
        ("/reports/2026-02-16/..%2F..%2F..%2Fmodels%2Fdecisions", 404),
        ("/reports/2026-02-16/%2E%2E", 404),
        ("/reports/2026-02-16/report.parquet", 404),
        ("/reports/2026-02-16/_delta_log", 404),
        ("/reports/2026-02-16/report.html%00", 404),
        ("/reports/2026-02-16/report.html/..", 404),
        ("/reports/2026-02-16", 404),
        ("/reports/%2Fetc%2Fpasswd/report.html", 404),
        ("/..%2F..%2Fmonitoring/drift_history", 404),
    ],
)
def test_no_path_leaves_the_reports_prefix(client, path: str, status: int) -> None:
    response = _as(client, "viewer").get(path)
    assert response.status_code == status, response.text
    assert "<html" not in response.text


def test_the_report_of_a_day_is_found_on_its_own_prefix_only(client, recorded) -> None:
    """A file next to the reports (here a fake secret under the lake root) is never reachable."""
    root = Path(recorded.lake_uri.removeprefix("file://"))
    (root / "secret.html").write_text("secret")
    viewer = _as(client, "viewer")
    for path in ("/reports/..%2F..%2F..%2Fsecret.html/report.html", "/reports/2026-02-16/..%2F..%2F..%2F..%2Fsecret.html"):
        assert viewer.get(path).status_code == 404
