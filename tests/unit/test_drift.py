"""Drift report: verdicts on synthetic frames, the summary parser, the early-retraining rule,
alerts posted to a real local HTTP server, and idempotent history rows."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.features import FEATURE_COLUMNS
from sluice.core.lineage import RunContext
from sluice.edges import alerts
from sluice.edges.lake import Lake
from sluice.stages import drift as D
from sluice.tables import DRIFT_HISTORY, PARTITION_COLUMN

SPEND = ["spend_7d", "spend_30d", "spend_90d", "spend_per_order_90d"]


# -- synthetic frames ---------------------------------------------------------------------------
def synthetic(n: int, seed: int, *, spend_factor: float = 1.0, device_missing: float = 0.0) -> pd.DataFrame:
    """``n`` customers with every feature column and a score, shaped like the simulator's."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"customer_id": np.arange(n, dtype=np.int64)})
    engagement = rng.beta(2, 3, n)
    for col in FEATURE_COLUMNS:
        if col in ("plan", "region", "channel", "device"):
            values = {"plan": ["basic", "standard", "premium"], "region": ["na", "eu", "apac", "latam"],
                      "channel": ["organic", "paid_search", "social", "referral", "partner"],
                      "device": ["ios", "android", "web"]}[col]
            frame[col] = rng.choice(values, n).astype(object)
        elif col.startswith("spend"):
            frame[col] = np.round(rng.lognormal(3.0, 0.6, n) * (1 + engagement) * spend_factor, 2)
        elif col.startswith(("sessions_trend",)):
            frame[col] = rng.gamma(4, 0.25, n)
        elif "minutes" in col:
            frame[col] = rng.gamma(2, 20, n) * (1 + engagement)
        else:
            frame[col] = rng.poisson(3 + 10 * engagement).astype(np.int32)
    frame.loc[rng.random(n) < device_missing, "device"] = None
    frame[D.PREDICTION] = 1 / (1 + np.exp(3 * engagement - 1 + rng.normal(0, 0.3, n)))
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return synthetic(3000, seed=1)


@pytest.fixture(scope="module")
def same_report(reference) -> dict:
    return D.run_report(reference, synthetic(3000, seed=2)).dict()


@pytest.fixture(scope="module")
def shifted_report(reference) -> dict:
    """Spend x1.6, device 60 % missing, and scores shifted up by 0.3."""
    current = synthetic(3000, seed=3, spend_factor=1.6, device_missing=0.6)
    current[D.PREDICTION] = np.clip(current[D.PREDICTION] + 0.3, 0, 1)
    return D.run_report(reference, current).dict()


def test_identical_distributions_show_no_drift(same_report) -> None:
    summary = D.drift_summary(same_report)
    assert summary.n_columns == len(FEATURE_COLUMNS) == 23
    assert summary.share == 0.0 and summary.drifted_columns == []
    assert not summary.prediction_drifted
    assert max(summary.scores.values()) < 0.1
    row = D.history_row("2026-03-01", summary, rows=3000, reference_rows=3000, model_version="1",
                        reference_feature_version=7, report_uri="file:///r.html", threshold=0.3)
    assert row["alert"] is False and json.loads(row["drifted_columns"]) == []


def test_shifted_spend_and_a_mostly_missing_device_are_detected(shifted_report) -> None:
    summary = D.drift_summary(shifted_report)
    assert set(summary.drifted_columns) == {*SPEND, "device"}
    assert summary.missing_drifted == ["device"], "device keeps its distribution: the missing share is what moved"
    assert summary.share == pytest.approx(5 / 23)
    assert all(summary.scores[c] > 0.1 for c in SPEND)
    row = D.history_row("2026-03-01", summary, rows=3000, reference_rows=3000, model_version="1",
                        reference_feature_version=7, report_uri="u", threshold=0.2)
    assert row["alert"] is True
    assert D.history_row("2026-03-01", summary, rows=1, reference_rows=1, model_version="1",
                         reference_feature_version=7, report_uri="u", threshold=0.3)["alert"] is False


def test_prediction_drift_is_reported_apart_from_the_feature_share(same_report, shifted_report) -> None:
    assert D.drift_summary(shifted_report).prediction_drifted
    assert not D.drift_summary(same_report).prediction_drifted
    assert D.PREDICTION not in D.drift_summary(shifted_report).drifted_columns


# -- the summary parser ----------------------------------------------------------------------
def _test(kind: str, column: str, status: str) -> dict:
    return {"status": status, "metric_config": {"params": {"type": f"evidently:metric_v2:{kind}", "column": column}}}


def test_summary_parser_on_a_hand_written_report() -> None:
    report = {
        "metrics": [{"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a"}, "value": 0.4},
                    {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1.0}}],
        "tests": [
            _test("ValueDrift", "a", "FAIL"),
            _test("ValueDrift", "b", "SUCCESS"),
            _test("ValueDrift", "c", "SUCCESS"),
            _test("ValueDrift", "d", "SUCCESS"),
            _test("ValueDrift", "score", "FAIL"),
            _test("MissingValueCount", "c", "SUCCESS"),
            _test("MissingValueCount", "c", "FAIL"),  # one of its two bounds
            {"status": "FAIL", "metric_config": {"params": {"type": "evidently:metric_v2:DriftedColumnsCount"}}},
        ],
    }
    summary = D.drift_summary(report)
    assert (summary.share, summary.drifted_columns, summary.prediction_drifted) == (0.5, ["a", "c"], True)
    assert summary.n_columns == 4 and summary.scores == {"a": 0.4} and summary.missing_drifted == ["c"]


def test_summary_parser_refuses_a_report_without_verdicts() -> None:
    with pytest.raises(D.DriftError, match="include_tests=True"):
        D.drift_summary({"metrics": [], "tests": []})


# -- reference and sampling -----------------------------------------------------------------------
def test_reference_spec_reads_the_tags_retrain_sets() -> None:
    tags = {"feature_table_version": "41", "training_windows": json.dumps(
        {"train": ["2026-01-01", "2026-01-09"], "validation": ["2026-01-10", "2026-01-12"]})}
    assert D.ReferenceSpec.from_tags("3", tags) == D.ReferenceSpec("3", 41, ("2026-01-01", "2026-01-09"))
    with pytest.raises(D.DriftError, match="does not record its training data"):
        D.ReferenceSpec.from_tags("3", {"feature_table_version": "41"})


def test_allocation_is_proportional_and_sampling_is_seeded() -> None:
    assert D.allocate({"a": 100, "b": 300}, 40) == {"a": 10, "b": 30}
    assert sum(D.allocate({"a": 7, "b": 7, "c": 7}, 10).values()) == 10
    assert D.allocate({"a": 5, "b": 3}, 40) == {"a": 5, "b": 3}
    first, again = D.sample_indices(1000, 50, 0, 9), D.sample_indices(1000, 50, 0, 9)
    assert (first == again).all() and len(set(first.tolist())) == 50
    assert not (first == D.sample_indices(1000, 50, 1, 9)).all()
    ids = D.sample_ids(pa.array([5, 3, 1, 4, 2]), 3, 0)
    assert ids.equals(D.sample_ids(pa.chunked_array([[1, 2], [3, 4, 5]]), 3, 0)), "the order ids come in does not matter"
    assert len(set(ids.to_pylist())) == 3
    assert D.sample_ids(pa.array([2, 1]), 5, 0).to_pylist() == [1, 2]


# -- early retraining ------------------------------------------------------------------------------
TODAY = dt.date(2026, 3, 10)


def _history(shares: dict[int, float]) -> list[dict]:
    """Rows for the days TODAY - offset."""
    return [{PARTITION_COLUMN: (TODAY - dt.timedelta(days=o)).isoformat(), "drift_share": s} for o, s in shares.items()]


@pytest.mark.parametrize(
    ("shares", "last_trigger", "expected", "why"),
    [
        ({}, None, False, "on 0 of the 5 days"),
        ({0: 0.5, 1: 0.5}, None, False, "on 2 of the 5 days"),
        ({0: 0.5, 2: 0.5, 4: 0.5}, None, True, "on 3 of the 5 days"),
        ({0: 0.5, 1: 0.5, 5: 0.5}, None, False, "on 2 of the 5 days"),  # 5 days ago is outside the window
        ({0: 0.5, 1: 0.3, 2: 0.5, 3: 0.5}, None, True, "on 3 of the 5 days"),  # 0.3 is not over 0.3
        ({0: 0.5, 1: 0.3, 2: 0.5}, None, False, "on 2 of the 5 days"),
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY - dt.timedelta(days=6), False, "cooldown 7 days: not before 2026-03-11"),
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY, False, "triggered on 2026-03-10"),  # a re-run of the day
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY - dt.timedelta(days=7), True, "on 3 of the 5 days"),
    ],
)
def test_should_retrain_early(shares, last_trigger, expected, why) -> None:
    decision = D.should_retrain_early(_history(shares), TODAY, k=3, n=5, cooldown_days=7, last_trigger=last_trigger,
                                      threshold=0.3)
    assert decision.trigger is expected
    assert why in decision.reason


def test_should_retrain_early_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        D.should_retrain_early([], TODAY, k=6, n=5)
    with pytest.raises(ValueError, match="after"):
        D.should_retrain_early([], TODAY, last_trigger=TODAY + dt.timedelta(days=1))


def test_policy_reads_the_environment_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (D.load_policy().drift_share_threshold, D.load_policy().performance_roc_auc_floor) == (0.3, 0.7)
    monkeypatch.setenv("SLUICE_DRIFT_SHARE_THRESHOLD", "0.25")
    monkeypatch.setenv("SLUICE_PERFORMANCE_ROC_AUC_FLOOR", "0.8")
    policy = D.load_policy()
    assert (policy.drift_share_threshold, policy.performance_roc_auc_floor) == (0.25, 0.8)
    monkeypatch.setenv("SLUICE_DRIFT_SHARE_THRESHOLD", "1.5")
    with pytest.raises(ValueError, match="less than or equal to 1"):
        D.load_policy()


# -- alerts -------------------------------------------------------------------------------------
DRIFT = {"ds": "2026-03-10", "drift_share": 0.375, "n_columns": 24, "drifted_columns": ["spend_7d", "device"],
         "prediction_drifted": True, "model_version": "3", "report_uri": "file:///r.html", "threshold": 0.3,
         "alert": True}
PERFORMANCE = {"ds": "2026-02-08", "evaluated_on": "2026-03-10", "evaluated": True, "model_version": "2",
               "roc_auc": 0.61, "pr_auc": 0.2, "rows": 900, "roc_auc_floor": 0.7, "alert": True}


def test_alert_payload_says_why() -> None:
    payload = alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE, run_id="r1")
    assert payload is not None
    assert payload["reasons"] == [
        "data drift on 2026-03-10: 38% of 24 feature columns drifted (threshold 30%): spend_7d, device",
        "realised ROC-AUC 0.610 of model v2 on 2026-02-08 (evaluated on 2026-03-10) is below the floor 0.700",
    ]
    assert payload["text"].startswith("[sluice] drift_report 2026-03-10: data drift")
    assert payload["drift"]["drifted_columns"] == ["spend_7d", "device"] and payload["performance"]["roc_auc"] == 0.61
    assert alerts.alert_payload("2026-03-10", {**DRIFT, "alert": False}, {"evaluated": False}) is None
    only_perf = alerts.alert_payload("2026-03-10", {**DRIFT, "alert": False}, PERFORMANCE)
    assert only_perf is not None and len(only_perf["reasons"]) == 1


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"conn_type": "https", "host": "hooks.example.com", "schema": "services/T0/B0/x"},
         "https://hooks.example.com/services/T0/B0/x"),
        ({"conn_type": "http", "host": "127.0.0.1", "port": 8080, "schema": "alert"}, "http://127.0.0.1:8080/alert"),
        ({"conn_type": "http", "host": "https://hooks.example.com", "schema": "/a/b"}, "https://hooks.example.com/a/b"),
        ({"conn_type": "generic", "host": "x", "extra": {"url": "https://h.example/p?k=1"}}, "https://h.example/p?k=1"),
        ({"conn_type": "generic", "host": "h.example"}, "https://h.example"),
    ],
)
def test_webhook_url_from_connection_fields(fields: dict, url: str) -> None:
    assert alerts.webhook_url(**fields) == url


def test_webhook_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        alerts.webhook_url(conn_type="generic", host=None, extra={"url": "file:///etc/passwd"})
    with pytest.raises(ValueError, match="neither a host"):
        alerts.webhook_url(conn_type="http", host=None)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list]]:
    """A real HTTP server on 127.0.0.1 that records what is POSTed; /fail answers 500."""
    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(500 if self.path == "/fail" else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_send_alert_posts_json_to_the_webhook(webhook) -> None:
    base, received = webhook
    payload = alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE)
    assert payload is not None
    host, port = base.removeprefix("http://").split(":")
    url = alerts.webhook_url(conn_type="http", host=host, port=int(port), schema="hooks/drift")
    assert alerts.send_alert(url, payload) == 200
    assert received == [("/hooks/drift", "application/json", payload)]
    with pytest.raises(alerts.AlertError, match="answered 500"):
        alerts.send_alert(f"{base}/fail", payload)
    server_gone = f"http://127.0.0.1:{_free_port()}/x"
    with pytest.raises(alerts.AlertError, match="unreachable"):
        alerts.send_alert(server_gone, payload, timeout=2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- history rows ---------------------------------------------------------------------------------
def test_rerunning_a_day_replaces_its_drift_history_row(settings, shifted_report) -> None:
    lake = Lake(settings)
    summary = D.drift_summary(shifted_report)
    ctx = RunContext("drift_report", "scheduled__2026-03-10")

    def write(ds: str, share_threshold: float) -> None:
        row = D.history_row(ds, summary, rows=3000, reference_rows=3000, model_version="3",
                            reference_feature_version=7, report_uri="u", threshold=share_threshold)
        lake.write_partition(DRIFT_HISTORY, ds, pa.Table.from_pylist([row], schema=DRIFT_HISTORY.schema),
                             ctx.lineage(ds, {}))

    write("2026-03-09", 0.3)
    write("2026-03-10", 0.3)
    write("2026-03-10", 0.1)  # re-run with another threshold
    rows = lake.read_table(DRIFT_HISTORY).to_pylist()
    assert sorted((r["ds"], r["alert"]) for r in rows) == [("2026-03-09", False), ("2026-03-10", True)]


# -- reading the lake ---------------------------------------------------------------------------
def _write_features(lake: Lake, ds: str, frame: pd.DataFrame, labels: np.ndarray | None = None) -> int:
    from sluice.tables import FEATURES_CUSTOMER_DAILY

    out = frame.assign(label_churn_30d=pd.array(labels if labels is not None else [None] * len(frame), dtype="Int8"),
                       ds=ds)
    table = pa.Table.from_pandas(out[FEATURES_CUSTOMER_DAILY.columns], schema=FEATURES_CUSTOMER_DAILY.schema,
                                 preserve_index=False)
    return lake.write_partition(FEATURES_CUSTOMER_DAILY, ds, table, RunContext().lineage(ds, {}))


def _write_predictions(lake: Lake, ds: str, frame: pd.DataFrame, feature_version: int, model: str = "1") -> int:
    from sluice.tables import PREDICTIONS_CHURN

    out = pd.DataFrame({"customer_id": frame["customer_id"], "score": frame[D.PREDICTION], "risk_band": "low",
                        "model_version": model, "feature_table_version": feature_version, "ds": ds})
    return lake.write_partition(PREDICTIONS_CHURN, ds, pa.Table.from_pandas(out, schema=PREDICTIONS_CHURN.schema,
                                preserve_index=False), RunContext().lineage(ds, {}))


def test_samples_read_the_scored_and_the_pinned_feature_versions(settings) -> None:
    lake = Lake(settings)
    for i, ds in enumerate(["2026-01-10", "2026-01-11", "2026-01-12"]):
        pinned = _write_features(lake, ds, synthetic(400, seed=10 + i))
    scored = synthetic(500, seed=20)
    scored_version = _write_features(lake, "2026-03-01", scored)
    _write_predictions(lake, "2026-03-01", scored, scored_version)
    _write_features(lake, "2026-01-12", synthetic(900, seed=30))  # rewritten after training: not the snapshot
    _write_features(lake, "2026-03-01", synthetic(500, seed=31, spend_factor=9))  # rewritten after scoring

    current = D.current_sample(lake, "2026-03-01", 200, 0)
    assert (current.rows, len(current.frame), current.model_version, current.feature_table_version) == (
        500, 200, "1", scored_version)
    expected = scored.set_index("customer_id").loc[current.frame["customer_id"]]
    assert np.allclose(current.frame["spend_30d"], expected["spend_30d"]), "features as they were scored"
    assert np.allclose(current.frame[D.PREDICTION], expected[D.PREDICTION]), "each row with its own score"
    assert D.current_sample(lake, "2026-03-01", 200, 0).frame.equals(current.frame), "seeded"

    spec = D.ReferenceSpec("1", pinned, ("2026-01-10", "2026-01-12"))
    reference = D.reference_sample(lake, spec, 600, 0)
    assert len(reference) == 600 and reference.groupby("ds").size().to_dict() == {
        "2026-01-10": 200, "2026-01-11": 200, "2026-01-12": 200}
    assert reference.loc[reference["ds"] == "2026-01-12", "customer_id"].max() < 400, "the pinned version"
    assert reference.equals(D.reference_sample(lake, spec, 600, 0))
    with pytest.raises(D.DriftError, match="no partition in the train window"):
        D.reference_sample(lake, D.ReferenceSpec("1", pinned, ("2025-01-01", "2025-01-31")), 10, 0)
    with pytest.raises(D.DriftError, match="run batch_score for 2026-03-02"):
        D.current_sample(lake, "2026-03-02", 10, 0)


def test_realised_performance_is_recorded_once_labels_matured(settings) -> None:
    from sluice.tables import PERFORMANCE_HISTORY

    lake = Lake(settings)
    day, scored_day = dt.date(2026, 3, 31), "2026-03-01"
    ctx = RunContext("drift_report", "r")
    first = D.record_performance(settings, day, ctx)
    assert not first["evaluated"] and first["reason"] == "2026-03-01 was not scored"

    frame = synthetic(400, seed=5)
    version = _write_features(lake, scored_day, frame)
    _write_predictions(lake, scored_day, frame, version)
    assert "not matured" in D.record_performance(settings, day, ctx)["reason"]

    churned = (frame[D.PREDICTION] > frame[D.PREDICTION].median()).astype(np.int8).to_numpy()
    _write_features(lake, scored_day, frame, labels=churned)  # the label arrives 30 days later
    good = D.record_performance(settings, day, ctx)
    assert good["evaluated"] and good["roc_auc"] == 1.0 and not good["alert"]
    _write_features(lake, scored_day, frame, labels=1 - churned)
    bad = D.record_performance(settings, day, ctx)
    assert bad["roc_auc"] == 0.0 and bad["alert"]
    rows = lake.read_table(PERFORMANCE_HISTORY).to_pylist()
    assert [(r["ds"], r["evaluated_on"], r["alert"], r["rows"]) for r in rows] == [
        ("2026-03-01", "2026-03-31", True, 400)], "the re-run replaced its row"
